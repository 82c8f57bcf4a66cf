/* Unit tests for lib/store/cf_apikey.c: format, keyed hash, verification. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_apikey.h"
#include "cf_testutil.h"

static void test_generate_and_parse(void **state)
{
    char key[CF_APIKEY_TEXT_SIZE], id[CF_APIKEY_ID_CHARS + 1], parsed[CF_APIKEY_ID_CHARS + 1];
    char err[256];
    assert_int_equal(cf_apikey_generate(key, id), 0);
    assert_int_equal(strlen(key), CF_APIKEY_TEXT_SIZE - 1);
    assert_int_equal(strncmp(key, "cf_", 3), 0);
    assert_int_equal(strlen(id), CF_APIKEY_ID_CHARS);
    assert_int_equal(cf_apikey_parse(key, parsed, err, sizeof err), 0);
    assert_string_equal(parsed, id);

    char other[CF_APIKEY_TEXT_SIZE], other_id[CF_APIKEY_ID_CHARS + 1];
    assert_int_equal(cf_apikey_generate(other, other_id), 0);
    assert_string_not_equal(key, other);
    assert_string_not_equal(id, other_id);
}

static void test_parse_rejects(void **state)
{
    char id[CF_APIKEY_ID_CHARS + 1], err[256], key[CF_APIKEY_TEXT_SIZE];
    assert_int_equal(cf_apikey_generate(key, id), 0);
    const char *bad[] = {"", "cf_", "Bearer x", "cf_0123456789abcdef_short"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(cf_apikey_parse(bad[i], id, err, sizeof err), -1);
        assert_string_equal(err, "not a clipfarm API key (expected cf_<id>_<secret>)");
    }
    char mutated[CF_APIKEY_TEXT_SIZE];
    memcpy(mutated, key, sizeof mutated);
    mutated[5] = 'G'; /* not hex */
    assert_int_equal(cf_apikey_parse(mutated, id, err, sizeof err), -1);
    assert_string_equal(err, "not a clipfarm API key (bad id)");
    memcpy(mutated, key, sizeof mutated);
    mutated[CF_APIKEY_TEXT_SIZE - 3] = '/'; /* not base64url */
    assert_int_equal(cf_apikey_parse(mutated, id, err, sizeof err), -1);
    assert_string_equal(err, "not a clipfarm API key (bad secret)");
    assert_int_equal(cf_apikey_parse(NULL, id, err, sizeof err), -1);
}

static void test_keyed_hash(void **state)
{
    char key[CF_APIKEY_TEXT_SIZE], id[CF_APIKEY_ID_CHARS + 1];
    uint8_t hk_a[CF_APIKEY_HASHKEY_BYTES], hk_a2[CF_APIKEY_HASHKEY_BYTES],
        hk_b[CF_APIKEY_HASHKEY_BYTES], hk_none[CF_APIKEY_HASHKEY_BYTES];
    assert_int_equal(cf_apikey_generate(key, id), 0);
    cf_apikey_hashkey_derive("secret-a", 8, hk_a);
    cf_apikey_hashkey_derive("  secret-a\n", 11, hk_a2); /* whitespace around it is ignored */
    cf_apikey_hashkey_derive("secret-b", 8, hk_b);
    cf_apikey_hashkey_derive(NULL, 0, hk_none);
    assert_memory_equal(hk_a, hk_a2, sizeof hk_a);
    assert_memory_not_equal(hk_a, hk_b, sizeof hk_a);
    assert_memory_not_equal(hk_a, hk_none, sizeof hk_a);

    uint8_t stored[CF_APIKEY_HASH_BYTES], again[CF_APIKEY_HASH_BYTES];
    cf_apikey_hash(hk_a, key, stored);
    cf_apikey_hash(hk_a, key, again);
    assert_memory_equal(stored, again, sizeof stored);
    /* The stored hash is not the key, nor a plain hash of it. */
    assert_null(memmem(stored, sizeof stored, key + 3, 8));
    assert_true(cf_apikey_verify(hk_a, key, stored, sizeof stored));
    assert_false(cf_apikey_verify(hk_b, key, stored, sizeof stored));     /* other secret */
    assert_false(cf_apikey_verify(hk_a, key, stored, sizeof stored - 1)); /* truncated */
    char wrong[CF_APIKEY_TEXT_SIZE];
    memcpy(wrong, key, sizeof wrong);
    wrong[CF_APIKEY_TEXT_SIZE - 2] = wrong[CF_APIKEY_TEXT_SIZE - 2] == 'A' ? 'B' : 'A';
    assert_false(cf_apikey_verify(hk_a, wrong, stored, sizeof stored));
    assert_false(cf_apikey_verify(hk_a, NULL, stored, sizeof stored));
}

/* The stored hash against an independent BLAKE2b (Python's hashlib):
 * hashkey = BLAKE2b-256("clipfarm api key hashing v1\0" || secret, unkeyed),
 * stored = BLAKE2b-256(key, keyed with hashkey). A fixed vector (computed
 * with hashlib when this test was written), then a fresh key checked by
 * hashlib at test time. */
static void s_expect_hex(const uint8_t *bytes, size_t len, const char *want_hex)
{
    char hex[2 * 64 + 1];
    for (size_t i = 0; i < len; i++)
        snprintf(hex + 2 * i, 3, "%02x", bytes[i]);
    assert_string_equal(hex, want_hex);
}

static void test_keyed_hash_independent(void **state)
{
    uint8_t hk[CF_APIKEY_HASHKEY_BYTES], hash[CF_APIKEY_HASH_BYTES];
    cf_apikey_hashkey_derive("secret-a", 8, hk);
    s_expect_hex(hk, sizeof hk, "3a4b9a7ecb7470bf16f859c4f317378e9c9f525fbd52e53f62291ea3ec0b94a8");
    cf_apikey_hash(hk, "cf_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", hash);
    s_expect_hex(hash, sizeof hash,
                 "55e98c214a576fface10b32cd7231f17b3279259f085ace9a497faf759d30d79");

    char key[CF_APIKEY_TEXT_SIZE], id[CF_APIKEY_ID_CHARS + 1];
    assert_int_equal(cf_apikey_generate(key, id), 0);
    cf_apikey_hashkey_derive(" another secret\n", 16, hk);
    cf_apikey_hash(hk, key, hash);
    const char *script = "import hashlib, sys\n"
                         "hk = hashlib.blake2b(b'clipfarm api key hashing v1\\0' + "
                         "sys.argv[1].strip().encode(), digest_size=32).digest()\n"
                         "print(hashlib.blake2b(sys.argv[2].encode(), digest_size=32, "
                         "key=hk).hexdigest())\n";
    cf_test_proc_t proc =
        cf_test_runl("python3", "-c", script, " another secret\n", key, (char *)NULL);
    cf_test_expect_success(&proc, "python3 hashlib");
    proc.out[strcspn(proc.out, "\n")] = '\0';
    s_expect_hex(hash, sizeof hash, proc.out);
    cf_test_proc_free(&proc);
}

static void test_hashkey_load(void **state)
{
    char err[256];
    char *dir = cf_test_mkdtemp("apikey");
    char path[512];
    snprintf(path, sizeof path, "%s/secret", dir);
    cf_test_write_file(path, "secret-a\n");
    uint8_t loaded[CF_APIKEY_HASHKEY_BYTES], derived[CF_APIKEY_HASHKEY_BYTES];
    assert_int_equal(cf_apikey_hashkey_load(path, loaded, err, sizeof err), 0);
    cf_apikey_hashkey_derive("secret-a", 8, derived);
    assert_memory_equal(loaded, derived, sizeof loaded);
    assert_int_equal(cf_apikey_hashkey_load(NULL, loaded, err, sizeof err), 0);
    cf_apikey_hashkey_derive(NULL, 0, derived);
    assert_memory_equal(loaded, derived, sizeof loaded);

    snprintf(path, sizeof path, "%s/empty", dir);
    cf_test_write_file(path, "");
    assert_int_equal(cf_apikey_hashkey_load(path, loaded, err, sizeof err), -1);
    assert_non_null(strstr(err, "is empty"));
    snprintf(path, sizeof path, "%s/missing", dir);
    assert_int_equal(cf_apikey_hashkey_load(path, loaded, err, sizeof err), -1);
    assert_non_null(strstr(err, "No such file"));
    cf_test_rmtree(dir);
    free(dir);
}

static void test_bearer(void **state)
{
    assert_string_equal(cf_apikey_from_bearer("Bearer abc"), "abc");
    assert_string_equal(cf_apikey_from_bearer("bearer   abc"), "abc");
    assert_null(cf_apikey_from_bearer("Basic abc"));
    assert_null(cf_apikey_from_bearer("Bearer "));
    assert_null(cf_apikey_from_bearer(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generate_and_parse), cmocka_unit_test(test_parse_rejects),
        cmocka_unit_test(test_keyed_hash),         cmocka_unit_test(test_keyed_hash_independent),
        cmocka_unit_test(test_hashkey_load),       cmocka_unit_test(test_bearer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
