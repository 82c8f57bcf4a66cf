/* Unit tests for lib/store/cf_blob.c: streamed writes, content addresses, limits,
 * crash leftovers. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cf_blob.h"
#include "cf_testutil.h"

/* BLAKE2b-256("abc"), from the BLAKE2 reference implementation. */
#define ABC_HEX "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319"

static int s_count_files(const char *dir)
{
    int n = 0;
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));)
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

static void test_streamed_write(void **state)
{
    char err[256], hex[CF_BLOB_HEX_SIZE], path[1024], dir[1024];
    char *tmp = cf_test_mkdtemp("blob");
    snprintf(dir, sizeof dir, "%s/data/blobs", tmp); /* parents are created */
    cf_blob_store_t *store = cf_blob_store_new(dir, err, sizeof err);
    assert_non_null(store);

    cf_blob_writer_t *w = cf_blob_writer_new(store, 0, err, sizeof err);
    assert_non_null(w);
    assert_int_equal(cf_blob_writer_write(w, "a", 1, err, sizeof err), CF_BLOB_OK);
    assert_int_equal(cf_blob_writer_write(w, "bc", 2, err, sizeof err), CF_BLOB_OK);
    assert_int_equal(cf_blob_writer_size(w), 3);
    assert_int_equal(cf_blob_writer_commit(&w, hex, err, sizeof err), 0);
    assert_null(w);
    assert_string_equal(hex, ABC_HEX);

    assert_int_equal(cf_blob_path(store, "blob:" ABC_HEX, path, sizeof path, err, sizeof err), 0);
    char expected[1200];
    snprintf(expected, sizeof expected, "%s/bd/%s", dir, ABC_HEX);
    assert_string_equal(path, expected);
    FILE *f = fopen(path, "r");
    char content[8] = {0};
    assert_int_equal(fread(content, 1, sizeof content, f), 3);
    fclose(f);
    assert_string_equal(content, "abc");

    /* The same bytes again: same address, one file. */
    char src[1200], hex2[CF_BLOB_HEX_SIZE];
    snprintf(src, sizeof src, "%s/abc.txt", tmp);
    cf_test_write_file(src, "abc");
    assert_int_equal(cf_blob_put_file(store, src, hex2, err, sizeof err), 0);
    assert_string_equal(hex2, ABC_HEX);
    char sub[1200];
    snprintf(sub, sizeof sub, "%s/bd", dir);
    assert_int_equal(s_count_files(sub), 1);
    char tmpdir[1200];
    snprintf(tmpdir, sizeof tmpdir, "%s/tmp", dir);
    assert_int_equal(s_count_files(tmpdir), 0);

    /* A large blob written in many pieces. */
    w = cf_blob_writer_new(store, 0, err, sizeof err);
    char chunk[4096];
    for (int i = 0; i < 512; i++) {
        memset(chunk, i & 0xff, sizeof chunk);
        assert_int_equal(cf_blob_writer_write(w, chunk, sizeof chunk, err, sizeof err), CF_BLOB_OK);
    }
    assert_int_equal(cf_blob_writer_commit(&w, hex, err, sizeof err), 0);
    assert_int_equal(cf_blob_path(store, hex, path, sizeof path, err, sizeof err), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 512 * 4096);

    cf_blob_store_destroy(&store);
    assert_null(store);
    cf_test_rmtree(tmp);
    free(tmp);
}

static void test_limit_and_abort(void **state)
{
    char err[256], path[1024], tmpdir[1200];
    char *tmp = cf_test_mkdtemp("blob");
    cf_blob_store_t *store = cf_blob_store_new(tmp, err, sizeof err);
    snprintf(tmpdir, sizeof tmpdir, "%s/tmp", tmp);

    cf_blob_writer_t *w = cf_blob_writer_new(store, 10, err, sizeof err);
    assert_int_equal(cf_blob_writer_write(w, "0123456789", 10, err, sizeof err), CF_BLOB_OK);
    assert_int_equal(cf_blob_writer_write(w, "x", 1, err, sizeof err), CF_BLOB_TOO_LARGE);
    assert_string_equal(err, "blob larger than 10 bytes");
    assert_int_equal(s_count_files(tmpdir), 1);
    cf_blob_writer_abort(&w);
    assert_null(w);
    assert_int_equal(s_count_files(tmpdir), 0);
    cf_blob_writer_abort(&w); /* safe on NULL */

    /* A crash leaves a temporary file; the next open removes it. */
    w = cf_blob_writer_new(store, 0, err, sizeof err);
    assert_int_equal(cf_blob_writer_write(w, "partial", 7, err, sizeof err), CF_BLOB_OK);
    cf_blob_store_t *again = cf_blob_store_new(tmp, err, sizeof err);
    assert_non_null(again);
    assert_int_equal(s_count_files(tmpdir), 0);
    cf_blob_writer_abort(&w);
    cf_blob_store_destroy(&again);

    assert_int_equal(cf_blob_path(store, "blob:nothex", path, sizeof path, err, sizeof err), -1);
    assert_string_equal(err, "'blob:nothex' is not a blob reference (blob:<64 hex>)");
    assert_int_equal(cf_blob_path(store, "blob:" ABC_HEX, path, sizeof path, err, sizeof err), -1);
    assert_string_equal(err, "blob:" ABC_HEX " is not in this node's blob store");
    char hex[CF_BLOB_HEX_SIZE];
    assert_int_equal(cf_blob_parse_ref(ABC_HEX, hex), 0);
    assert_int_equal(cf_blob_parse_ref("blob:" ABC_HEX "0", hex), -1);
    assert_int_equal(
        cf_blob_parse_ref("blob:BDDD813C634239723171EF3FEE98579B94964E3BB1CB3E427262C8C068D52319",
                          hex),
        -1);
    cf_blob_store_destroy(&store);
    cf_test_rmtree(tmp);
    free(tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_streamed_write),
        cmocka_unit_test(test_limit_and_abort),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
