/* Unit tests of lib/core/cf_source_policy: which addresses count as internal (in
 * every textual form a resolver accepts), operator-allowed networks, media
 * roots with "..", symlinks and %-escapes, and the open policy of
 * `clipfarm render`. Expectations come from the RFCs' ranges, written out
 * here, not from the code under test. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cf_source_policy.h"
#include "cf_testutil.h"

static struct sockaddr_storage s_addr(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, text, &in->sin_addr) == 1)
        in->sin_family = AF_INET;
    else if (inet_pton(AF_INET6, text, &in6->sin6_addr) == 1)
        in6->sin6_family = AF_INET6;
    else
        fail_msg("bad address in test: %s", text);
    return ss;
}

static void test_internal_addresses(void **state)
{
    static const char *const internal[] = {
        "127.0.0.1",
        "127.255.255.254",
        "10.0.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.254",
        "0.0.0.0",
        "224.0.0.251",
        "239.255.255.250",
        "255.255.255.255",
        "240.0.0.1",
        "192.0.0.170",
        "198.18.0.1",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "64:ff9b::7f00:1",
        "64:ff9b:1::1",
        "2002:7f00:1::",
        "2002:c0a8:101::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fec0::1",
        "ff02::1",
        "2001:db8::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "100::1",
    };
    static const char *const external[] = {
        "8.8.8.8",        "1.1.1.1",          "172.32.0.1",      "172.15.255.255",  "100.128.0.1",
        "169.253.0.1",    "192.169.0.1",      "11.0.0.1",        "2606:4700::1111", "2a00:1450::1",
        "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
    };
    for (size_t i = 0; i < sizeof internal / sizeof internal[0]; i++) {
        struct sockaddr_storage ss = s_addr(internal[i]);
        if (!cf_source_addr_is_internal((struct sockaddr *)&ss))
            fail_msg("%s should be internal", internal[i]);
    }
    for (size_t i = 0; i < sizeof external / sizeof external[0]; i++) {
        struct sockaddr_storage ss = s_addr(external[i]);
        if (cf_source_addr_is_internal((struct sockaddr *)&ss))
            fail_msg("%s should not be internal", external[i]);
    }
}

static void test_allowed_networks(void **state)
{
    cf_source_policy_t *p = cf_source_policy_new();
    char err[256];
    assert_int_equal(
        cf_source_policy_add_nets(p, "10.2.0.0/16,fd00:1::/32\n127.0.0.2", ",\n", err, sizeof err),
        0);
    struct {
        const char *addr;
        bool allowed;
    } cases[] = {
        {"10.2.3.4", true},   {"10.3.0.1", false},     {"::ffff:10.2.9.9", true},
        {"fd00:1::5", true},  {"fd00:2::5", false},    {"127.0.0.2", true},
        {"127.0.0.1", false}, {"93.184.216.34", true}, /* public: allowed by default */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct sockaddr_storage ss = s_addr(cases[i].addr);
        if (cf_source_policy_addr_allowed(p, (struct sockaddr *)&ss) != cases[i].allowed)
            fail_msg("%s: expected %s", cases[i].addr, cases[i].allowed ? "allowed" : "refused");
    }
    assert_int_equal(cf_source_policy_add_net(p, "10.0.0.0/33", err, sizeof err), -1);
    assert_non_null(strstr(err, "prefix"));
    assert_int_equal(cf_source_policy_add_net(p, "example.com/8", err, sizeof err), -1);
    assert_int_equal(cf_source_policy_add_net(p, "2130706433", err, sizeof err), -1);
    cf_source_policy_destroy(&p);
    assert_null(p);
}

static void test_url_literals(void **state)
{
    cf_source_policy_t *p = cf_source_policy_new();
    char err[256];
    static const char *const refused[] = {
        "http://127.0.0.1/a.mp4",
        "http://127.1/a.mp4",
        "http://2130706433/a.mp4",
        "http://0x7f000001/a.mp4",
        "http://0x7f.1/a.mp4",
        "http://017700000001/a.mp4",
        "http://[::1]:8080/a.mp4",
        "https://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://user:pw@10.0.0.1/a.mp4",
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1./a.mp4",
        "http://[fe80::1%25eth0]/a.mp4",
        "http://0/a.mp4",
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        err[0] = '\0';
        if (cf_source_policy_check_source(p, refused[i], err, sizeof err) != -1 ||
            !strstr(err, "source address not allowed"))
            fail_msg("%s should be refused at submit (%s)", refused[i], err);
    }
    /* Names are judged at connect time, public literals pass. */
    assert_int_equal(cf_source_policy_check_source(p, "http://localhost/a.mp4", err, sizeof err),
                     0);
    assert_int_equal(cf_source_policy_check_source(p, "https://93.184.216.34/a", err, sizeof err),
                     0);
    /* The open policy of `clipfarm render` refuses nothing. */
    assert_int_equal(
        cf_source_policy_check_source(cf_source_policy_open(), refused[0], err, sizeof err), 0);
    assert_int_equal(cf_source_policy_check_source(cf_source_policy_open(), "file:///etc/passwd",
                                                   err, sizeof err),
                     0);
    cf_source_policy_destroy(&p);
}

static void test_media_roots(void **state)
{
    char *dir = cf_test_mkdtemp("roots");
    char root[PATH_MAX], path[PATH_MAX + 64], url[PATH_MAX + 64], resolved[PATH_MAX], err[256];
    snprintf(root, sizeof root, "%s/media", dir);
    assert_int_equal(mkdir(root, 0755), 0);
    snprintf(path, sizeof path, "%s/a.mp4", root);
    cf_test_write_file(path, "x");
    snprintf(path, sizeof path, "%s/secret", dir);
    cf_test_write_file(path, "x");
    snprintf(path, sizeof path, "%s/out", root);
    char target[PATH_MAX + 16];
    snprintf(target, sizeof target, "%s/secret", dir);
    assert_int_equal(symlink(target, path), 0);

    cf_source_policy_t *p = cf_source_policy_new();
    snprintf(url, sizeof url, "file://%s/a.mp4", root);
    assert_int_equal(cf_source_policy_check_source(p, url, err, sizeof err), -1);
    assert_non_null(strstr(err, "--media-root"));
    assert_int_equal(cf_source_policy_add_root(p, root, err, sizeof err), 0);
    assert_int_equal(cf_source_policy_check_source(p, url, err, sizeof err), 0);
    /* Not there yet: allowed at submit (-2 from the strict check). */
    snprintf(path, sizeof path, "%s/later.mp4", root);
    assert_int_equal(
        cf_source_policy_check_path(p, path, resolved, sizeof resolved, err, sizeof err), -2);
    snprintf(url, sizeof url, "file://%s/later.mp4", root);
    assert_int_equal(cf_source_policy_check_source(p, url, err, sizeof err), 0);

    const char *escapes[] = {"/../secret",     "/./../secret",        "/out",
                             "/%2e%2e/secret", "/x/..%2f..%2fsecret", "/../media-evil/a.mp4"};
    for (size_t i = 0; i < sizeof escapes / sizeof escapes[0]; i++) {
        snprintf(url, sizeof url, "file://%s%s", root, escapes[i]);
        err[0] = '\0';
        if (cf_source_policy_check_source(p, url, err, sizeof err) != -1 ||
            strcmp(err, "outside the media roots"))
            fail_msg("%s should be outside the roots (%s)", url, err);
    }
    /* A sibling whose name starts like the root is not inside it. */
    snprintf(path, sizeof path, "%s/media-evil", dir);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(url, sizeof url, "file://%s/media-evil/x", dir);
    assert_int_equal(cf_source_policy_check_source(p, url, err, sizeof err), -1);
    /* The root itself is a directory, not a source. */
    assert_int_equal(
        cf_source_policy_check_path(p, root, resolved, sizeof resolved, err, sizeof err), -1);
    assert_int_equal(cf_source_policy_add_root(p, "/no/such/dir", err, sizeof err), -1);
    cf_source_policy_destroy(&p);
    cf_test_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_internal_addresses),
        cmocka_unit_test(test_allowed_networks),
        cmocka_unit_test(test_url_literals),
        cmocka_unit_test(test_media_roots),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
