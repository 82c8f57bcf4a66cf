/* Integration test of lib/store/cf_ratelimit.c against the real Redis that
 * tests/run starts: bucket arithmetic, refill, independence of keys, the
 * script surviving SCRIPT FLUSH (on a private server: the flush would hit
 * every test sharing that Redis), and atomicity under concurrent takers. */
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cf_ratelimit.h"
#include "cf_redis.h"
#include "cf_testutil.h"

static redisContext *s_connect(void)
{
    char err[256];
    redisContext *ctx =
        cf_redis_connect(cf_test_require_env("CF_TEST_REDIS_URL"), 2000, err, sizeof err);
    if (!ctx)
        fail_msg("redis: %s", err);
    return ctx;
}

static void s_unique(char *out, size_t len, const char *what)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(out, len, "test:%s:%d:%ld", what, (int)getpid(), ts.tv_nsec);
}

static void test_burst_then_limited(void **state)
{
    redisContext *ctx = s_connect();
    char key[128], err[256];
    s_unique(key, sizeof key, "burst");
    double retry = -1;
    for (int i = 0; i < 5; i++)
        assert_int_equal(cf_ratelimit_take(ctx, key, 2, 5, &retry, err, sizeof err),
                         CF_RATELIMIT_ALLOWED);
    assert_int_equal(cf_ratelimit_take(ctx, key, 2, 5, &retry, err, sizeof err),
                     CF_RATELIMIT_LIMITED);
    /* One token refills in 0.5 s at 2/s; a little already passed. */
    assert_true(retry > 0.2 && retry <= 0.5);
    /* Another key has its own bucket. */
    char other[128];
    s_unique(other, sizeof other, "other");
    assert_int_equal(cf_ratelimit_take(ctx, other, 2, 5, &retry, err, sizeof err),
                     CF_RATELIMIT_ALLOWED);
    /* After the refill time one more request passes, then the bucket is dry. */
    usleep(600 * 1000);
    assert_int_equal(cf_ratelimit_take(ctx, key, 2, 5, &retry, err, sizeof err),
                     CF_RATELIMIT_ALLOWED);
    assert_int_equal(cf_ratelimit_take(ctx, key, 2, 5, &retry, err, sizeof err),
                     CF_RATELIMIT_LIMITED);
    /* The bucket key expires by itself. */
    redisReply *ttl = redisCommand(ctx, "PTTL %s", key);
    assert_int_equal(ttl->type, REDIS_REPLY_INTEGER);
    assert_true(ttl->integer > 0 && ttl->integer <= 3600 * 1000);
    freeReplyObject(ttl);
    redisFree(ctx);
}

/* A private redis-server on a Unix socket in DIR (no TCP port: nothing to
 * race for); returns its pid and a connection to it. */
static pid_t s_private_redis(const char *dir, redisContext **ctx_p)
{
    char sock[600];
    snprintf(sock, sizeof sock, "%s/redis.sock", dir);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", sock, "--dir", dir,
               "--save", "", "--appendonly", "no", "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    redisContext *ctx = NULL;
    for (int waited = 0; waited < 10000; waited += 20) {
        ctx = redisConnectUnix(sock);
        if (ctx && !ctx->err)
            break;
        redisFree(ctx);
        ctx = NULL;
        usleep(20 * 1000);
    }
    if (!ctx)
        fail_msg("private redis-server on %s did not answer", sock);
    *ctx_p = ctx;
    return pid;
}

/* SCRIPT FLUSH drops every script of a server, for every client: run on a
 * private server, never on the one the other tests share. */
static void test_survives_script_flush(void **state)
{
    char *dir = cf_test_mkdtemp("ratelimit-redis");
    redisContext *ctx = NULL;
    pid_t redis = s_private_redis(dir, &ctx);
    char key[128], err[256];
    s_unique(key, sizeof key, "flush");
    double retry;
    assert_int_equal(cf_ratelimit_take(ctx, key, 1, 3, &retry, err, sizeof err),
                     CF_RATELIMIT_ALLOWED);
    freeReplyObject(redisCommand(ctx, "SCRIPT FLUSH"));
    assert_int_equal(cf_ratelimit_take(ctx, key, 1, 3, &retry, err, sizeof err),
                     CF_RATELIMIT_ALLOWED);
    assert_int_equal(cf_ratelimit_take(ctx, key, 1, 3, &retry, err, sizeof err),
                     CF_RATELIMIT_ALLOWED);
    assert_int_equal(cf_ratelimit_take(ctx, key, 1, 3, &retry, err, sizeof err),
                     CF_RATELIMIT_LIMITED);
    assert_int_equal(cf_ratelimit_take(ctx, key, 0, 3, &retry, err, sizeof err),
                     CF_RATELIMIT_ERROR);
    kill(redis, SIGTERM);
    waitpid(redis, NULL, 0);
    redisFree(ctx);
    cf_test_rmtree(dir);
    free(dir);
}

static void test_unreachable(void **state)
{
    char err[256];
    redisContext *ctx = s_connect();
    /* Closing the socket under hiredis: the next command fails cleanly. */
    close(ctx->fd);
    double retry;
    assert_int_equal(cf_ratelimit_take(ctx, "x", 1, 1, &retry, err, sizeof err),
                     CF_RATELIMIT_ERROR);
    assert_non_null(strstr(err, "rate limit: Redis:"));
    ctx->fd = -1;
    redisFree(ctx);
}

static void test_take_many(void **state)
{
    redisContext *ctx = s_connect();
    char key[128], err[256];
    s_unique(key, sizeof key, "many");
    int granted = -1;
    double retry = 0;
    /* A bucket of 10 that barely refills, taken 4 at a time: 4, 4, 2, 0. */
    int want[] = {4, 4, 4, 4};
    int expect[] = {4, 4, 2, 0};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(
            cf_ratelimit_take_n(ctx, key, 0.001, 10, want[i], &granted, &retry, err, sizeof err),
            0);
        assert_int_equal(granted, expect[i]);
    }
    assert_true(retry > 100); /* one token at 0.001/s is ~1000 s away */
    redisFree(ctx);
}

typedef struct {
    const char *key;
    int allowed;
} s_taker_t;

static void *s_taker(void *arg)
{
    s_taker_t *t = arg;
    redisContext *ctx = s_connect();
    char err[256];
    double retry;
    for (int i = 0; i < 100; i++)
        if (cf_ratelimit_take(ctx, t->key, 0.001, 120, &retry, err, sizeof err) ==
            CF_RATELIMIT_ALLOWED)
            t->allowed++;
    redisFree(ctx);
    return NULL;
}

static void test_concurrent_takers_share_one_bucket(void **state)
{
    char key[128];
    s_unique(key, sizeof key, "race");
    s_taker_t takers[4];
    pthread_t threads[4];
    for (int i = 0; i < 4; i++) {
        takers[i] = (s_taker_t){key, 0};
        assert_int_equal(pthread_create(&threads[i], NULL, s_taker, &takers[i]), 0);
    }
    int allowed = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(threads[i], NULL);
        allowed += takers[i].allowed;
    }
    /* 400 attempts on a bucket of 120 that barely refills (0.001/s). */
    assert_int_equal(allowed, 120);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_limited),
        cmocka_unit_test(test_survives_script_flush),
        cmocka_unit_test(test_unreachable),
        cmocka_unit_test(test_take_many),
        cmocka_unit_test(test_concurrent_takers_share_one_bucket),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
