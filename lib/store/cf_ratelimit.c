#include "cf_ratelimit.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* KEYS[1] bucket; ARGV rate, burst, wanted. Returns {granted,
 * retry_after_seconds}: up to `wanted` whole tokens, and when none could be
 * granted the seconds until one is there (a string: Lua numbers become
 * integers in replies). */
static const char s_script[] =
    "local rate = tonumber(ARGV[1])\n"
    "local burst = tonumber(ARGV[2])\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"
    "local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')\n"
    "local tokens = tonumber(state[1]) or burst\n"
    "local ts = tonumber(state[2]) or now\n"
    "if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate) end\n"
    "local want = tonumber(ARGV[3])\n"
    "local granted = math.min(want, math.floor(tokens))\n"
    "local retry = 0\n"
    "if granted >= 1 then\n"
    "  tokens = tokens - granted\n"
    "else\n"
    "  granted = 0\n"
    "  retry = (1 - tokens) / rate\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),\n"
    "           'ts', string.format('%.6f', now))\n"
    "redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)\n"
    "return {granted, string.format('%.6f', retry)}\n";

static pthread_mutex_t s_sha_lock = PTHREAD_MUTEX_INITIALIZER;
static char s_sha[41]; /* SHA1 of s_script once Redis told us */

int cf_ratelimit_take(redisContext *ctx, const char *key, double rate, double burst,
                      double *retry_after_s, char *err, size_t errlen)
{
    int granted = 0;
    int rc = cf_ratelimit_take_n(ctx, key, rate, burst, 1, &granted, retry_after_s, err, errlen);
    if (rc < 0)
        return CF_RATELIMIT_ERROR;
    return granted ? CF_RATELIMIT_ALLOWED : CF_RATELIMIT_LIMITED;
}

int cf_ratelimit_take_n(redisContext *ctx, const char *key, double rate, double burst, int want,
                        int *granted, double *retry_after_s, char *err, size_t errlen)
{
    *granted = 0;
    if (want < 1)
        want = 1;
    if (!(rate > 0) || !(burst >= 1)) {
        snprintf(err, errlen, "rate limit needs rate > 0 and burst >= 1");
        return CF_RATELIMIT_ERROR;
    }
    char rate_text[32], burst_text[32], want_text[16];
    const char *bucket = key;
    snprintf(want_text, sizeof want_text, "%d", want);
    snprintf(rate_text, sizeof rate_text, "%.6f", rate);
    snprintf(burst_text, sizeof burst_text, "%.6f", burst);
    /* EVALSHA keeps the request small; after SCRIPT FLUSH or a failover to a
     * server that never saw the script, NOSCRIPT sends the whole text once. */
    char sha[41];
    pthread_mutex_lock(&s_sha_lock);
    memcpy(sha, s_sha, sizeof sha);
    pthread_mutex_unlock(&s_sha_lock);
    if (!sha[0]) {
        redisReply *loaded = redisCommand(ctx, "SCRIPT LOAD %s", s_script);
        if (loaded && loaded->type == REDIS_REPLY_STRING && loaded->len == 40) {
            memcpy(sha, loaded->str, sizeof sha);
            pthread_mutex_lock(&s_sha_lock);
            memcpy(s_sha, sha, sizeof sha);
            pthread_mutex_unlock(&s_sha_lock);
        }
        freeReplyObject(loaded);
    }
    const char *argv[] = {"EVALSHA", sha, "1", bucket, rate_text, burst_text, want_text};
    size_t lens[] = {7,
                     strlen(sha),
                     1,
                     strlen(bucket),
                     strlen(rate_text),
                     strlen(burst_text),
                     strlen(want_text)};
    redisReply *reply = sha[0] ? redisCommandArgv(ctx, 7, argv, lens) : NULL;
    if (!sha[0] ||
        (reply && reply->type == REDIS_REPLY_ERROR && !strncmp(reply->str, "NOSCRIPT", 8))) {
        freeReplyObject(reply);
        argv[0] = "EVAL";
        lens[0] = 4;
        argv[1] = s_script;
        lens[1] = sizeof s_script - 1;
        reply = redisCommandArgv(ctx, 7, argv, lens);
    }
    int rc = -1;
    if (!reply) {
        snprintf(err, errlen, "rate limit: Redis: %s", ctx->errstr[0] ? ctx->errstr : "no reply");
    } else if (reply->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "rate limit: Redis: %s", reply->str);
    } else if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
               reply->element[0]->type != REDIS_REPLY_INTEGER ||
               reply->element[1]->type != REDIS_REPLY_STRING) {
        snprintf(err, errlen, "rate limit: unexpected reply from Redis");
    } else {
        *granted = (int)reply->element[0]->integer;
        rc = 0;
        if (retry_after_s)
            *retry_after_s = strtod(reply->element[1]->str, NULL);
    }
    freeReplyObject(reply);
    return rc;
}
