/* lib/store/cf_identity.c and `clipfarm secret generate`: the node identity is
 * created once with mode 0600 and reloaded, refused when exposed or
 * inconsistent; the cluster secret loads strictly and keys the MACs. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cf_identity.h"
#include "cf_testutil.h"

static char *s_dir;

static int s_setup(void **state)
{
    s_dir = cf_test_mkdtemp("identity");
    return s_dir ? 0 : -1;
}

static int s_teardown(void **state)
{
    cf_test_rmtree(s_dir);
    free(s_dir);
    return 0;
}

static void s_created_once_and_reloaded(void **state)
{
    char data_dir[1024], path[1100], err[512];
    snprintf(data_dir, sizeof data_dir, "%s/data/node", s_dir);
    cf_identity_t *first = cf_identity_load(data_dir, err, sizeof err);
    if (!first)
        fail_msg("%s", err);
    assert_true(cf_identity_created(first));

    struct stat st;
    assert_int_equal(stat(data_dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    snprintf(path, sizeof path, "%s/identity", data_dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    const char *id = cf_identity_node_id(first);
    assert_int_equal(strlen(id), 36);
    assert_int_equal(id[14], '4'); /* UUID version 4 */
    assert_int_equal(strlen(cf_identity_public_z85(first)), 40);
    assert_int_equal(strlen(cf_identity_secret_z85(first)), 40);
    assert_string_not_equal(cf_identity_public_z85(first), cf_identity_secret_z85(first));

    /* The public key belongs to the secret key. */
    uint8_t secret[32], derived[32], decoded[32];
    assert_int_equal(cf_key_from_z85(cf_identity_secret_z85(first), secret), 0);
    assert_int_equal(crypto_scalarmult_base(derived, secret), 0);
    assert_memory_equal(derived, cf_identity_public_key(first), 32);
    assert_int_equal(cf_key_from_z85(cf_identity_public_z85(first), decoded), 0);
    assert_memory_equal(decoded, derived, 32);

    cf_identity_t *second = cf_identity_load(data_dir, err, sizeof err);
    assert_non_null(second);
    assert_false(cf_identity_created(second));
    assert_string_equal(cf_identity_node_id(second), cf_identity_node_id(first));
    assert_string_equal(cf_identity_public_z85(second), cf_identity_public_z85(first));
    assert_string_equal(cf_identity_secret_z85(second), cf_identity_secret_z85(first));
    cf_identity_destroy(&first);
    cf_identity_destroy(&second);
    assert_null(first);
    cf_identity_destroy(&first); /* safe on NULL */
}

static void s_refuses_exposed_or_broken(void **state)
{
    char data_dir[1024], path[1100], err[512];
    snprintf(data_dir, sizeof data_dir, "%s/exposed", s_dir);
    cf_identity_t *id = cf_identity_load(data_dir, err, sizeof err);
    assert_non_null(id);
    cf_identity_destroy(&id);
    snprintf(path, sizeof path, "%s/identity", data_dir);

    assert_int_equal(chmod(path, 0644), 0);
    assert_null(cf_identity_load(data_dir, err, sizeof err));
    assert_non_null(strstr(err, "chmod 600"));
    assert_int_equal(chmod(path, 0600), 0);
    id = cf_identity_load(data_dir, err, sizeof err);
    assert_non_null(id);

    /* A public key that is not the secret key's. */
    char other_pub[CF_IDENTITY_Z85_LEN];
    uint8_t pk[32], sk[32];
    crypto_box_keypair(pk, sk);
    cf_key_to_z85(pk, other_pub);
    char text[512];
    snprintf(text, sizeof text, "node-id = %s\npublic-key = %s\nsecret-key = %s\n",
             cf_identity_node_id(id), other_pub, cf_identity_secret_z85(id));
    cf_identity_destroy(&id);
    cf_test_write_file(path, text);
    chmod(path, 0600);
    assert_null(cf_identity_load(data_dir, err, sizeof err));
    assert_non_null(strstr(err, "does not match"));

    cf_test_write_file(path, "node-id = nope\n");
    chmod(path, 0600);
    assert_null(cf_identity_load(data_dir, err, sizeof err));
    cf_test_write_file(path, "garbage\n");
    assert_null(cf_identity_load(data_dir, err, sizeof err));
}

/* Nodes started at once on the same data dir agree on one identity. */
static void s_concurrent_first_start(void **state)
{
    char data_dir[1024];
    snprintf(data_dir, sizeof data_dir, "%s/race", s_dir);
    int fds[8][2];
    pid_t pids[8];
    for (int i = 0; i < 8; i++) {
        assert_int_equal(pipe(fds[i]), 0);
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            char err[512];
            cf_identity_t *id = cf_identity_load(data_dir, err, sizeof err);
            const char *text = id ? cf_identity_node_id(id) : "failed";
            if (write(fds[i][1], text, strlen(text)) < 0)
                _exit(2);
            _exit(id ? 0 : 1);
        }
        close(fds[i][1]);
    }
    char first[64] = "";
    for (int i = 0; i < 8; i++) {
        char got[64] = "";
        ssize_t n = read(fds[i][0], got, sizeof got - 1);
        assert_true(n > 0);
        close(fds[i][0]);
        int status;
        waitpid(pids[i], &status, 0);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        if (!first[0])
            strcpy(first, got);
        assert_string_equal(got, first);
    }
}

static void s_secret_files(void **state)
{
    char hex[CF_SECRET_HEX_LEN], hex2[CF_SECRET_HEX_LEN], path[1100], text[512], err[512];
    cf_secret_generate_hex(hex);
    cf_secret_generate_hex(hex2);
    assert_int_equal(strlen(hex), 64);
    assert_int_equal(strspn(hex, "0123456789abcdef"), 64);
    assert_string_not_equal(hex, hex2);

    snprintf(path, sizeof path, "%s/secret", s_dir);
    snprintf(text, sizeof text, "# cluster lab\n\n  %s  \n", hex);
    cf_test_write_file(path, text);
    chmod(path, 0600);
    bool loose = true;
    cf_secret_t *secret = cf_secret_load(path, &loose, err, sizeof err);
    if (!secret)
        fail_msg("%s", err);
    assert_false(loose);
    uint8_t expect[32];
    sodium_hex2bin(expect, 32, hex, 64, NULL, NULL, NULL);
    assert_memory_equal(cf_secret_key(secret), expect, 32);

    /* MACs verify under the same secret only, and only for the same data. */
    char mac[CF_MAC_HEX_LEN];
    cf_secret_mac_hex(secret, "node-row", 8, mac);
    assert_int_equal(strlen(mac), 64);
    assert_true(cf_secret_verify_hex(secret, "node-row", 8, mac));
    assert_false(cf_secret_verify_hex(secret, "node-rox", 8, mac));
    assert_false(cf_secret_verify_hex(secret, "node-row", 8, "zz"));
    assert_false(cf_secret_verify_hex(secret, "node-row", 8, NULL));
    snprintf(text, sizeof text, "%s\n", hex2);
    cf_test_write_file(path, text);
    chmod(path, 0644);
    cf_secret_t *other = cf_secret_load(path, &loose, err, sizeof err);
    assert_non_null(other);
    assert_true(loose); /* readable by others: the caller warns */
    assert_false(cf_secret_verify_hex(other, "node-row", 8, mac));
    cf_secret_destroy(&other);
    cf_secret_destroy(&secret);
    assert_null(secret);

    const char *bad[] = {"", "abc\n", "zz" /* filled below */, NULL};
    char nonhex[80];
    memset(nonhex, 'g', 64);
    nonhex[64] = '\0';
    bad[2] = nonhex;
    for (int i = 0; i < 3; i++) {
        cf_test_write_file(path, bad[i]);
        assert_null(cf_secret_load(path, NULL, err, sizeof err));
        assert_non_null(strstr(err, "64 hex digits"));
    }
    snprintf(text, sizeof text, "%s\n%s\n", hex, hex2);
    cf_test_write_file(path, text);
    assert_null(cf_secret_load(path, NULL, err, sizeof err));
    assert_null(cf_secret_load(s_dir, NULL, err, sizeof err)); /* a directory */
    snprintf(path, sizeof path, "%s/missing", s_dir);
    assert_null(cf_secret_load(path, NULL, err, sizeof err));
    assert_non_null(strstr(err, "cannot read"));
}

static void s_secret_command(void **state)
{
    const char *bin = cf_test_bin();
    char *gen[] = {(char *)bin, "secret", "generate", NULL};
    cf_test_proc_t a = cf_test_run(gen, NULL);
    cf_test_proc_t b = cf_test_run(gen, NULL);
    assert_int_equal(a.status, 0);
    assert_int_equal(cf_test_count_lines(a.out), 1);
    assert_int_equal(strlen(a.out), 65);
    assert_int_equal(strspn(a.out, "0123456789abcdef"), 64);
    assert_string_not_equal(a.out, b.out);

    /* What it prints loads as a secret. */
    char path[1100], err[512];
    snprintf(path, sizeof path, "%s/generated", s_dir);
    cf_test_write_file(path, a.out);
    cf_secret_t *secret = cf_secret_load(path, NULL, err, sizeof err);
    assert_non_null(secret);
    cf_secret_destroy(&secret);
    cf_test_proc_free(&a);
    cf_test_proc_free(&b);

    char *bad[] = {(char *)bin, "secret", "rotate", NULL};
    cf_test_proc_t c = cf_test_run(bad, NULL);
    assert_int_equal(c.status, 2);
    assert_int_equal(cf_test_count_lines(c.err), 1);
    assert_non_null(strstr(c.err, "clipfarm secret:"));
    cf_test_proc_free(&c);
    char *none[] = {(char *)bin, "secret", NULL};
    cf_test_proc_t d = cf_test_run(none, NULL);
    assert_int_equal(d.status, 2);
    cf_test_proc_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(s_created_once_and_reloaded),
        cmocka_unit_test(s_refuses_exposed_or_broken),
        cmocka_unit_test(s_concurrent_first_start),
        cmocka_unit_test(s_secret_files),
        cmocka_unit_test(s_secret_command),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
