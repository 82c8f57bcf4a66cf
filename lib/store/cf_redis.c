#include "cf_redis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "cf_url.h"

/* Runs a command expecting a status reply; on failure writes err. */
static int s_expect_ok(redisContext *ctx, redisReply *reply, const char *what, char *err,
                       size_t errlen)
{
    int ok = reply && reply->type != REDIS_REPLY_ERROR;
    if (!ok)
        snprintf(err, errlen, "%s: %s", what,
                 reply ? reply->str : (ctx->errstr[0] ? ctx->errstr : "no reply"));
    freeReplyObject(reply);
    return ok ? 0 : -1;
}

redisContext *cf_redis_connect(const char *url, int timeout_ms, char *err, size_t errlen)
{
    cf_url_t parsed;
    char why[256];
    if (cf_url_parse(url, &parsed, why, sizeof why) < 0 || strcmp(parsed.scheme, "redis")) {
        char masked[512]; /* errors end up in logs: never with the password */
        snprintf(err, errlen, "malformed Redis URL '%s'",
                 cf_url_mask_password(url, masked, sizeof masked));
        return NULL;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *ctx = redisConnectWithTimeout(parsed.host, parsed.port ? parsed.port : 6379, tv);
    if (!ctx || ctx->err) {
        snprintf(err, errlen, "cannot connect to Redis at %s:%d: %s", parsed.host,
                 parsed.port ? parsed.port : 6379, ctx ? ctx->errstr : "out of memory");
        redisFree(ctx);
        return NULL;
    }
    redisSetTimeout(ctx, tv);
    if (parsed.password[0]) {
        redisReply *reply = parsed.user[0]
                                ? redisCommand(ctx, "AUTH %s %s", parsed.user, parsed.password)
                                : redisCommand(ctx, "AUTH %s", parsed.password);
        if (s_expect_ok(ctx, reply, "Redis AUTH failed", err, errlen) < 0)
            goto fail;
    }
    if (parsed.path[0] && strcmp(parsed.path, "/")) {
        char *end = NULL;
        long db = strtol(parsed.path + 1, &end, 10);
        if (end == parsed.path + 1 || *end || db < 0 || db > 15) {
            snprintf(err, errlen, "malformed Redis URL: database '%s' is not 0..15",
                     parsed.path + 1);
            goto fail;
        }
        redisReply *reply = redisCommand(ctx, "SELECT %ld", db);
        if (s_expect_ok(ctx, reply, "Redis SELECT failed", err, errlen) < 0)
            goto fail;
    }
    return ctx;
fail:
    redisFree(ctx);
    return NULL;
}

int cf_redis_ping(redisContext *ctx, char *err, size_t errlen)
{
    redisReply *reply = redisCommand(ctx, "PING");
    int ok = reply && reply->type == REDIS_REPLY_STATUS && !strcmp(reply->str, "PONG");
    if (!ok)
        snprintf(err, errlen, "Redis PING failed: %s",
                 reply && reply->str ? reply->str : ctx->errstr);
    freeReplyObject(reply);
    return ok ? 0 : -1;
}
