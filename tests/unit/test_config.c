/* Unit tests for node/cf_config.c and lib/core/cf_url.c. */
#include <stdlib.h>
#include <string.h>

#include "cf_config.h"
#include "cf_testutil.h"
#include "cf_url.h"

static void test_url_parse(void **state)
{
    cf_url_t url;
    char err[256];
    assert_int_equal(cf_url_parse("redis://:pw@host:6380/3", &url, err, sizeof err), 0);
    assert_string_equal(url.scheme, "redis");
    assert_string_equal(url.password, "pw");
    assert_string_equal(url.host, "host");
    assert_int_equal(url.port, 6380);
    assert_string_equal(url.path, "/3");

    assert_int_equal(
        cf_url_parse("postgresql://u:p@[::1]:5432/db?sslmode=disable", &url, err, sizeof err), 0);
    assert_string_equal(url.user, "u");
    assert_string_equal(url.host, "::1");
    assert_string_equal(url.query, "sslmode=disable");

    assert_int_equal(cf_url_parse("no-scheme", &url, err, sizeof err), -1);
    assert_int_equal(cf_url_parse("redis://:0", &url, err, sizeof err), -1);
    assert_string_equal(err, "missing host");
    assert_int_equal(cf_url_parse("redis://h:70000", &url, err, sizeof err), -1);
    assert_int_equal(cf_url_parse("http://h:12a", &url, err, sizeof err), -1);
}

static void test_hostport(void **state)
{
    char host[64], err[128];
    int port;
    assert_int_equal(cf_hostport_parse("127.0.0.1:8080", host, sizeof host, &port, err, sizeof err),
                     0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 8080);
    assert_int_equal(cf_hostport_parse("[::1]:7070", host, sizeof host, &port, err, sizeof err), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(cf_hostport_parse("localhost", host, sizeof host, &port, err, sizeof err), -1);
    assert_string_equal(err, "missing port (expected host:port)");
    assert_int_equal(cf_hostport_parse(":80", host, sizeof host, &port, err, sizeof err), -1);
    /* Port 0 is no address to reach; only one to listen on (any free port). */
    assert_int_equal(cf_hostport_parse("127.0.0.1:0", host, sizeof host, &port, err, sizeof err),
                     -1);
    assert_string_equal(err, "port must be a number from 1 to 65535");
    port = -1;
    assert_int_equal(
        cf_hostport_parse_listen("127.0.0.1:0", host, sizeof host, &port, err, sizeof err), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 0);
    assert_int_equal(
        cf_hostport_parse_listen("[::1]:8080", host, sizeof host, &port, err, sizeof err), 0);
    assert_int_equal(port, 8080);
    assert_int_equal(
        cf_hostport_parse_listen("127.0.0.1:65536", host, sizeof host, &port, err, sizeof err), -1);
    assert_string_equal(err, "port must be a number from 0 to 65535");
    assert_int_equal(
        cf_hostport_parse_listen("127.0.0.1", host, sizeof host, &port, err, sizeof err), -1);
}

static void test_mask(void **state)
{
    char out[256];
    assert_string_equal(cf_url_mask_password("postgresql://u:secret@h/db", out, sizeof out),
                        "postgresql://u:***@h/db");
    assert_string_equal(cf_url_mask_password("redis://h:6379/0", out, sizeof out),
                        "redis://h:6379/0");
    assert_string_equal(cf_url_mask_password(NULL, out, sizeof out), "(unset)");
}

static int s_parse(cf_config_t *cfg, int groups, char **argv, char *err)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    bool help;
    return cf_config_parse(cfg, groups, NULL, argc, argv, &help, err, 512);
}

static void test_flags_win_over_env(void **state)
{
    setenv("CF_REDIS_URL", "redis://env-host:1/0", 1);
    setenv("CF_SLOTS", "3", 1);
    char err[512];
    cf_config_t cfg;
    char *argv[] = {"node", "--redis-url", "redis://flag-host:2/1", "pos", NULL};
    assert_int_equal(s_parse(&cfg, CF_OPTS_REDIS | CF_OPTS_NODE, argv, err), 0);
    assert_string_equal(cfg.redis_url, "redis://flag-host:2/1");
    assert_int_equal(cfg.slots, 3);
    assert_int_equal(cfg.arg_count, 1);
    assert_string_equal(cfg.args[0], "pos");
    cf_config_free(&cfg, NULL);
    unsetenv("CF_REDIS_URL");
    unsetenv("CF_SLOTS");
}

static void test_errors_name_option(void **state)
{
    char err[512];
    cf_config_t cfg;
    struct {
        char *argv[4];
        const char *expect;
    } cases[] = {
        {{"node", "--nope", NULL}, "--nope: unknown option (try --help)"},
        {{"node", "--slots", "0", NULL}, "--slots: must be a number from 1 to 256, got '0'"},
        {{"node", "--slots=x", NULL}, "--slots: must be a number from 1 to 256, got 'x'"},
        {{"node", "--beacon-port", "65536", NULL},
         "--beacon-port: must be a port number from 1 to 65535, got '65536'"},
        {{"node", "--http-addr", "nohost", NULL},
         "--http-addr: invalid address 'nohost' (missing port (expected host:port))"},
        {{"node", "--log-level", "loud", NULL},
         "--log-level: unknown level 'loud' (expected debug, info, warn or error)"},
        {{"node", "--database-url", "mysql://x", NULL},
         "--database-url: malformed URL 'mysql://x' (expected postgresql://user@host[:port]/db)"},
        {{"node", "--database-url", "mysql://u:hunter2@x/db", NULL},
         "--database-url: malformed URL 'mysql://u:***@x/db' (expected "
         "postgresql://user@host[:port]/db)"},
        {{"node", "--redis-url", "redis://:hunter2@x/99", NULL},
         "--redis-url: malformed URL 'redis://:***@x/99' (database must be 0..15)"},
        {{"node", "--beacon-iface", "nosuchif0", NULL},
         "--beacon-iface: no such network interface 'nosuchif0'"},
        {{"node", "--tag", "bad tag", NULL}, "--tag: invalid character ' ' in tag 'bad tag'"},
        {{"node", "--slots", NULL}, "--slots: missing value"},
        {{"node", "-x", NULL}, "-x: unknown option (try --help)"},
        {{"node", "--server", "http://x", NULL}, "--server: unknown option (try --help)"},
        /* Control bytes in a quoted value (found by fuzz_config): one line. */
        {{"node", "--log-level", "lo\nud\x1b[2J", NULL},
         "--log-level: unknown level 'lo?ud?[2J' (expected debug, info, warn or error)"},
    };
    int groups = CF_OPTS_LOG | CF_OPTS_DB | CF_OPTS_REDIS | CF_OPTS_NODE;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(s_parse(&cfg, groups, cases[i].argv, err), -1);
        assert_string_equal(err, cases[i].expect);
        cf_config_free(&cfg, NULL);
    }
    setenv("CF_SLOTS", "-1", 1);
    char *argv[] = {"node", NULL};
    assert_int_equal(s_parse(&cfg, groups, argv, err), -1);
    assert_string_equal(err, "CF_SLOTS: must be a number from 1 to 256, got '-1'");
    cf_config_free(&cfg, NULL);
    unsetenv("CF_SLOTS");
}

static void test_tags(void **state)
{
    char err[512];
    cf_config_t cfg;
    setenv("CF_TAGS", "gpu,site=lab", 1);
    char *env_only[] = {"node", NULL};
    assert_int_equal(s_parse(&cfg, CF_OPTS_NODE, env_only, err), 0);
    assert_int_equal(cfg.tag_count, 2);
    assert_string_equal(cfg.tags[1], "site=lab");
    cf_config_free(&cfg, NULL);
    /* Flags replace the environment's tags. */
    char *flags[] = {"node", "--tag", "a", "--tag=b", NULL};
    assert_int_equal(s_parse(&cfg, CF_OPTS_NODE, flags, err), 0);
    assert_int_equal(cfg.tag_count, 2);
    assert_string_equal(cfg.tags[0], "a");
    assert_string_equal(cfg.tags[1], "b");
    cf_config_free(&cfg, NULL);
    unsetenv("CF_TAGS");
}

static void test_extra_options(void **state)
{
    int jobs = 1;
    bool wait = false;
    char *out = NULL;
    const cf_option_t extra[] = {
        {"jobs", NULL, CF_OPT_INT, &jobs, 1, 64, "workers", "N"},
        {"wait", NULL, CF_OPT_FLAG, &wait, 0, 0, "wait", NULL},
        {"out", NULL, CF_OPT_STRING, &out, 0, 0, "output", "FILE"},
        {0},
    };
    char *argv[] = {"render", "--jobs", "4", "--wait", "--out=x.mp4", "--", "--literal", NULL};
    cf_config_t cfg;
    bool help;
    char err[256];
    assert_int_equal(cf_config_parse(&cfg, CF_OPTS_LOG, extra, 7, argv, &help, err, sizeof err), 0);
    assert_int_equal(jobs, 4);
    assert_true(wait);
    assert_string_equal(out, "x.mp4");
    assert_int_equal(cfg.arg_count, 1);
    assert_string_equal(cfg.args[0], "--literal");
    cf_config_free(&cfg, extra);
    assert_null(out);
    char *bad[] = {"render", "--jobs", "65", NULL};
    assert_int_equal(cf_config_parse(&cfg, CF_OPTS_LOG, extra, 3, bad, &help, err, sizeof err), -1);
    assert_string_equal(err, "--jobs: must be a whole number from 1 to 64, got '65'");
    cf_config_free(&cfg, extra);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_parse),
        cmocka_unit_test(test_hostport),
        cmocka_unit_test(test_mask),
        cmocka_unit_test(test_flags_win_over_env),
        cmocka_unit_test(test_errors_name_option),
        cmocka_unit_test(test_tags),
        cmocka_unit_test(test_extra_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
