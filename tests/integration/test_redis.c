/* Integration test against the real Redis that tests/run starts. */
#include <stdio.h>
#include <string.h>

#include "cf_redis.h"
#include "cf_testutil.h"

static void test_connect_ping_roundtrip(void **state)
{
    const char *url = cf_test_require_env("CF_TEST_REDIS_URL");
    char err[256];
    redisContext *ctx = cf_redis_connect(url, 2000, err, sizeof err);
    assert_non_null(ctx);
    assert_int_equal(cf_redis_ping(ctx, err, sizeof err), 0);
    redisReply *reply = redisCommand(ctx, "SET cf:test:key %s", "value");
    assert_non_null(reply);
    freeReplyObject(reply);
    reply = redisCommand(ctx, "GET cf:test:key");
    assert_non_null(reply);
    assert_int_equal(reply->type, REDIS_REPLY_STRING);
    assert_string_equal(reply->str, "value");
    freeReplyObject(reply);
    freeReplyObject(redisCommand(ctx, "DEL cf:test:key"));
    redisFree(ctx);
}

static void test_select_database(void **state)
{
    const char *url = cf_test_require_env("CF_TEST_REDIS_URL");
    char base[256], err[256];
    /* Same server, database 5: a key set there is not visible in the URL's db. */
    snprintf(base, sizeof base, "%.*s/5", (int)(strrchr(url, '/') - url), url);
    redisContext *db5 = cf_redis_connect(base, 2000, err, sizeof err);
    redisContext *db0 = cf_redis_connect(url, 2000, err, sizeof err);
    assert_non_null(db5);
    assert_non_null(db0);
    freeReplyObject(redisCommand(db5, "SET cf:test:db %s", "five"));
    /* The key is there in database 5 (else the check below proves nothing)... */
    redisReply *reply = redisCommand(db5, "GET cf:test:db");
    assert_non_null(reply);
    assert_int_equal(reply->type, REDIS_REPLY_STRING);
    assert_string_equal(reply->str, "five");
    freeReplyObject(reply);
    /* ...and not in the URL's database. */
    reply = redisCommand(db0, "EXISTS cf:test:db");
    assert_non_null(reply);
    assert_int_equal(reply->integer, 0);
    freeReplyObject(reply);
    freeReplyObject(redisCommand(db5, "DEL cf:test:db"));
    redisFree(db5);
    redisFree(db0);
}

static void test_errors(void **state)
{
    const char *url = cf_test_require_env("CF_TEST_REDIS_URL");
    char err[256], with_password[256];
    assert_null(cf_redis_connect("redis://127.0.0.1:1/0", 500, err, sizeof err));
    assert_non_null(strstr(err, "cannot connect to Redis at 127.0.0.1:1"));
    assert_null(cf_redis_connect("http://x", 500, err, sizeof err));
    assert_string_equal(err, "malformed Redis URL 'http://x'");
    /* The test server has no password: AUTH is refused with Redis's reason. */
    snprintf(with_password, sizeof with_password, "redis://:wrong@%s", strstr(url, "://") + 3);
    assert_null(cf_redis_connect(with_password, 500, err, sizeof err));
    assert_non_null(strstr(err, "Redis AUTH failed"));
    /* A malformed URL is echoed without its password. */
    assert_null(cf_redis_connect("http://user:hunter2@x", 500, err, sizeof err));
    assert_null(strstr(err, "hunter2"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connect_ping_roundtrip),
        cmocka_unit_test(test_select_database),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
