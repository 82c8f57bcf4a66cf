/* Unit tests for lib/store/cf_peer_auth.c: the credential nodes present to
 * each other's API (its format, what it is bound to, the clock window). */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>

#include "cf_peer_auth.h"
#include "cf_testutil.h"

static void s_auth(cf_peer_auth_t *auth, const char *secret)
{
    uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES];
    cf_apikey_hashkey_derive(secret, strlen(secret), hashkey);
    assert_int_equal(cf_peer_auth_init(auth, hashkey), 0);
}

/* The header's value: what follows "Name: ". */
static const char *s_value(const char *line)
{
    return line + strlen(CF_PEER_AUTH_HEADER ": ");
}

static void test_line_and_verify(void **state)
{
    (void)state;
    cf_peer_auth_t auth, other;
    s_auth(&auth, "the cluster secret of these tests, long enough");
    s_auth(&other, "another cluster's secret, just as long as that");
    char line[CF_PEER_AUTH_LINE_SIZE];
    const char *path = "/internal/v1/blobs/00ff";
    long long now = 1700000000;
    assert_int_equal(cf_peer_auth_line(&auth, "GET", path, now, line, sizeof line), 0);
    char expected_start[64];
    snprintf(expected_start, sizeof expected_start, CF_PEER_AUTH_HEADER ": v1 %lld ", now);
    assert_int_equal(strncmp(line, expected_start, strlen(expected_start)), 0);
    assert_int_equal(strlen(line), strlen(expected_start) + 64);
    const char *value = s_value(line);
    assert_true(cf_peer_auth_verify(&auth, value, "GET", path, now));
    /* Bound to the key, the method, the path. */
    assert_false(cf_peer_auth_verify(&other, value, "GET", path, now));
    assert_false(cf_peer_auth_verify(&auth, value, "HEAD", path, now));
    assert_false(cf_peer_auth_verify(&auth, value, "GET", "/internal/v1/blobs/00fe", now));
    /* The clock window, both ways, edges included. */
    assert_true(cf_peer_auth_verify(&auth, value, "GET", path, now + CF_PEER_AUTH_MAX_SKEW_S));
    assert_true(cf_peer_auth_verify(&auth, value, "GET", path, now - CF_PEER_AUTH_MAX_SKEW_S));
    assert_false(cf_peer_auth_verify(&auth, value, "GET", path, now + CF_PEER_AUTH_MAX_SKEW_S + 1));
    assert_false(cf_peer_auth_verify(&auth, value, "GET", path, now - CF_PEER_AUTH_MAX_SKEW_S - 1));
    /* One flipped character of the MAC. */
    char tampered[CF_PEER_AUTH_LINE_SIZE];
    snprintf(tampered, sizeof tampered, "%s", value);
    size_t last = strlen(tampered) - 1;
    tampered[last] = tampered[last] == '0' ? '1' : '0';
    assert_false(cf_peer_auth_verify(&auth, tampered, "GET", path, now));
}

static void test_malformed(void **state)
{
    (void)state;
    cf_peer_auth_t auth;
    s_auth(&auth, "the cluster secret of these tests, long enough");
    const char *bad[] = {"",
                         "v1",
                         "v2 1700000000 00",
                         "v1 1700000000 short",
                         "v1 -9223372036854775808 "
                         "0000000000000000000000000000000000000000000000000000000000000000",
                         "v1 99999999999999999999999 "
                         "0000000000000000000000000000000000000000000000000000000000000000"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(cf_peer_auth_verify(&auth, bad[i], "GET", "/", 1700000000));
    assert_false(cf_peer_auth_verify(&auth, NULL, "GET", "/", 1700000000));
}

static void test_no_secret(void **state)
{
    (void)state;
    uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES];
    cf_apikey_hashkey_derive(NULL, 0, hashkey);
    cf_peer_auth_t auth;
    assert_int_equal(cf_peer_auth_init(&auth, hashkey), -1);
    assert_false(auth.set);
    char line[CF_PEER_AUTH_LINE_SIZE];
    assert_int_equal(cf_peer_auth_line(&auth, "GET", "/", 1700000000, line, sizeof line), -1);
    assert_int_equal(cf_peer_auth_sign(&auth, "GET", "/", line, sizeof line), -1);
    /* An all-zero credential key made by hand still verifies nothing. */
    assert_false(cf_peer_auth_verify(&auth, "v1 1700000000 00", "GET", "/", 1700000000));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_line_and_verify),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_no_secret),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
