#define _GNU_SOURCE
#include "cf_cache.h"

#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cf_log.h"
#include "cf_redis.h"

/* Stores ARGV[2] under KEYS[1] with TTL ARGV[3] ms unless the entry there
 * already holds a newer version than ARGV[1]. Values start with their
 * version: "VERSION JSON" (an entry) or "VERSION" (a tombstone). */
static const char s_guarded_set_script[] = "local cur = redis.call('GET', KEYS[1])\n"
                                           "if cur then\n"
                                           "  local v = tonumber(string.match(cur, '^(%d+)'))\n"
                                           "  if v and v > tonumber(ARGV[1]) then return 0 end\n"
                                           "end\n"
                                           "redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])\n"
                                           "return 1\n";

typedef struct {
    redisContext *ctx;
    bool busy;
} s_slot_t;

struct cf_cache {
    cf_cache_options_t opts;
    char *url;
    char *prefix;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    s_slot_t *slots;
    int64_t next_attempt_ms; /* while Redis is unreachable: when to try again */
    int backoff_ms;
    cf_cache_stats_t stats;
};

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void cf_cache_options_default(cf_cache_options_t *opts)
{
    *opts = (cf_cache_options_t){
        .url = NULL,
        .prefix = "cf:",
        .timeout_ms = 1000,
        .connections = 4,
        .active_ttl_ms = 2000,
        .terminal_ttl_ms = 300000,
        .tombstone_ttl_ms = 60000,
        .fill_window_ms = 10000,
    };
}

cf_cache_t *cf_cache_new(const cf_cache_options_t *opts, char *err, size_t errlen)
{
    if (!opts->url || !*opts->url) {
        snprintf(err, errlen, "no Redis URL");
        return NULL;
    }
    if (opts->connections < 1 || opts->connections > 256 || opts->timeout_ms < 1 ||
        opts->active_ttl_ms < 1 || opts->terminal_ttl_ms < 1 || opts->fill_window_ms < 1 ||
        opts->tombstone_ttl_ms <= opts->fill_window_ms) {
        snprintf(err, errlen,
                 "cache options out of range (the tombstone TTL must exceed the fill window)");
        return NULL;
    }
    cf_cache_t *cache = calloc(1, sizeof *cache);
    if (!cache) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    cache->opts = *opts;
    cache->url = strdup(opts->url);
    cache->prefix = strdup(opts->prefix ? opts->prefix : "cf:");
    cache->slots = calloc((size_t)opts->connections, sizeof *cache->slots);
    if (!cache->url || !cache->prefix || !cache->slots) {
        free(cache->url);
        free(cache->prefix);
        free(cache->slots);
        free(cache);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    cache->opts.url = cache->url;
    cache->opts.prefix = cache->prefix;
    cache->backoff_ms = 50;
    pthread_mutex_init(&cache->lock, NULL);
    pthread_cond_init(&cache->cond, NULL);
    return cache;
}

void cf_cache_destroy(cf_cache_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_cache_t *cache = *self_p;
    for (int i = 0; i < cache->opts.connections; i++)
        if (cache->slots[i].ctx)
            redisFree(cache->slots[i].ctx);
    free(cache->slots);
    free(cache->url);
    free(cache->prefix);
    pthread_mutex_destroy(&cache->lock);
    pthread_cond_destroy(&cache->cond);
    free(cache);
    *self_p = NULL;
}

/* Lends a connected slot, or NULL (err set) while Redis is unreachable:
 * then callers skip the cache rather than wait for it. */
static s_slot_t *s_acquire(cf_cache_t *cache, char *err, size_t errlen)
{
    pthread_mutex_lock(&cache->lock);
    s_slot_t *slot = NULL;
    for (;;) {
        for (int i = 0; i < cache->opts.connections && !slot; i++)
            if (!cache->slots[i].busy)
                slot = &cache->slots[i];
        if (slot)
            break;
        pthread_cond_wait(&cache->cond, &cache->lock);
    }
    slot->busy = true;
    bool try_connect = !slot->ctx && s_now_ms() >= cache->next_attempt_ms;
    pthread_mutex_unlock(&cache->lock);
    if (slot->ctx)
        return slot;
    if (try_connect) {
        slot->ctx = cf_redis_connect(cache->url, cache->opts.timeout_ms, err, errlen);
        pthread_mutex_lock(&cache->lock);
        if (slot->ctx) {
            cache->backoff_ms = 50;
            cache->next_attempt_ms = 0;
        } else {
            cache->next_attempt_ms = s_now_ms() + cache->backoff_ms;
            cache->backoff_ms = cache->backoff_ms >= 2000 ? 2000 : cache->backoff_ms * 2;
        }
        pthread_mutex_unlock(&cache->lock);
        if (slot->ctx)
            return slot;
    } else {
        snprintf(err, errlen, "Redis unavailable");
    }
    pthread_mutex_lock(&cache->lock);
    slot->busy = false;
    cache->stats.errors++;
    pthread_cond_signal(&cache->cond);
    pthread_mutex_unlock(&cache->lock);
    return NULL;
}

/* Gives a slot back; after an I/O error (BROKEN) its context is dropped. */
static void s_release(cf_cache_t *cache, s_slot_t *slot, bool broken)
{
    if (broken && slot->ctx) {
        redisFree(slot->ctx);
        slot->ctx = NULL;
    }
    pthread_mutex_lock(&cache->lock);
    slot->busy = false;
    if (broken)
        cache->stats.errors++;
    pthread_cond_signal(&cache->cond);
    pthread_mutex_unlock(&cache->lock);
}

static void s_count(cf_cache_t *cache, uint64_t *counter)
{
    pthread_mutex_lock(&cache->lock);
    (*counter)++;
    pthread_mutex_unlock(&cache->lock);
}

static void s_entry_key(const cf_cache_t *cache, const char *id, char *key, size_t len)
{
    snprintf(key, len, "%sc:%s", cache->prefix, id);
}

/* The guarded SET, and when CHANNEL is not NULL a PUBLISH of MESSAGE in the
 * same round trip (pipelined). Returns 1 stored, 0 refused (newer there), -1
 * error. */
static int s_guarded_set(cf_cache_t *cache, const char *id, int64_t version, const char *value,
                         int ttl_ms, const char *channel, const char *message, char *err,
                         size_t errlen)
{
    s_slot_t *slot = s_acquire(cache, err, errlen);
    if (!slot)
        return -1;
    char key[256], ver[24], ttl[16];
    s_entry_key(cache, id, key, sizeof key);
    snprintf(ver, sizeof ver, "%" PRId64, version);
    snprintf(ttl, sizeof ttl, "%d", ttl_ms);
    const char *argv[] = {"EVAL", s_guarded_set_script, "1", key, ver, value, ttl};
    redisAppendCommandArgv(slot->ctx, 7, argv, NULL);
    if (channel) {
        const char *publish[] = {"PUBLISH", channel, message};
        redisAppendCommandArgv(slot->ctx, 3, publish, NULL);
    }
    int rc = -1;
    for (int i = 0; i < (channel ? 2 : 1); i++) {
        void *r = NULL;
        if (redisGetReply(slot->ctx, &r) != REDIS_OK || !r) {
            snprintf(err, errlen, "Redis: %s", slot->ctx->errstr);
            s_release(cache, slot, true);
            return -1;
        }
        redisReply *reply = r;
        if (i == 0 && reply->type == REDIS_REPLY_INTEGER)
            rc = (int)reply->integer;
        else if (reply->type == REDIS_REPLY_ERROR)
            snprintf(err, errlen, "Redis: %s", reply->str);
        freeReplyObject(reply);
    }
    s_release(cache, slot, false);
    return rc;
}

int cf_cache_invalidate(cf_cache_t *cache, const char *id, int64_t version, char *err,
                        size_t errlen)
{
    char value[24];
    snprintf(value, sizeof value, "%" PRId64, version);
    return s_guarded_set(cache, id, version, value, cache->opts.tombstone_ttl_ms, NULL, NULL, err,
                         errlen) < 0
               ? -1
               : 0;
}

/* Whether the composition JSON (cf_db's json_build_object text, keys in
 * fixed order with " : ") has a terminal status. The first '"status" : "'
 * is the top-level key: the title before it is a JSON string, where a quote
 * is always escaped, and spec (jsonb text, '": "') comes after it. */
static bool s_json_is_terminal(const char *json)
{
    const char *status = strstr(json, "\"status\" : \"");
    if (!status)
        return false;
    status += strlen("\"status\" : \"");
    return !strncmp(status, "completed\"", 10) || !strncmp(status, "failed\"", 7) ||
           !strncmp(status, "cancelled\"", 10);
}

int cf_cache_fill(cf_cache_t *cache, const char *id, int64_t version, const char *json, char *err,
                  size_t errlen)
{
    char *value = NULL;
    if (asprintf(&value, "%" PRId64 " %s", version, json) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int ttl = s_json_is_terminal(json) ? cache->opts.terminal_ttl_ms : cache->opts.active_ttl_ms;
    int stored = s_guarded_set(cache, id, version, value, ttl, NULL, NULL, err, errlen);
    free(value);
    s_count(cache, stored == 1 ? &cache->stats.fills : &cache->stats.refused_fills);
    return stored;
}

int cf_cache_composition_json(cf_cache_t *cache, cf_db_t *db, const char *id, char **json_p,
                              bool *hit_p, char *err, size_t errlen)
{
    *json_p = NULL;
    if (hit_p)
        *hit_p = false;
    char key[256], why[256];
    s_entry_key(cache, id ? id : "", key, sizeof key);
    s_slot_t *slot = id && strlen(id) < 64 ? s_acquire(cache, why, sizeof why) : NULL;
    if (slot) {
        const char *argv[] = {"GET", key};
        redisReply *reply = redisCommandArgv(slot->ctx, 2, argv, NULL);
        bool broken = !reply;
        if (reply && reply->type == REDIS_REPLY_STRING) {
            const char *space = memchr(reply->str, ' ', reply->len);
            if (space) {
                *json_p = strdup(space + 1);
                if (hit_p)
                    *hit_p = true;
            }
        }
        freeReplyObject(reply);
        s_release(cache, slot, broken);
        if (*json_p) {
            s_count(cache, &cache->stats.hits);
            return CF_DB_OK;
        }
    }
    s_count(cache, &cache->stats.misses);
    int64_t started = s_now_ms(), version = 0;
    int rc = cf_db_composition_get_json(db, id, json_p, &version, err, errlen);
    if (rc < 0)
        return rc;
    /* A reader slower than the fill window might be older than a tombstone
     * that already expired: it serves what it read but does not fill. */
    if (s_now_ms() - started > cache->opts.fill_window_ms) {
        s_count(cache, &cache->stats.refused_fills);
        return CF_DB_OK;
    }
    cf_cache_fill(cache, id, version, *json_p, why, sizeof why);
    return CF_DB_OK;
}

int cf_cache_publish(cf_cache_t *cache, const char *id, const char *message, char *err,
                     size_t errlen)
{
    s_slot_t *slot = s_acquire(cache, err, errlen);
    if (!slot)
        return -1;
    char channel[256];
    snprintf(channel, sizeof channel, "%sprogress:%s", cache->prefix, id);
    const char *argv[] = {"PUBLISH", channel, message};
    redisReply *reply = redisCommandArgv(slot->ctx, 3, argv, NULL);
    bool ok = reply && reply->type == REDIS_REPLY_INTEGER;
    if (!ok)
        snprintf(err, errlen, "Redis PUBLISH: %s",
                 reply && reply->type == REDIS_REPLY_ERROR ? reply->str : slot->ctx->errstr);
    bool broken = !reply;
    freeReplyObject(reply);
    s_release(cache, slot, broken);
    return ok ? 0 : -1;
}

/* After a committed write: tombstone for the new version and the progress
 * message, in one round trip. */
static void s_on_write(void *arg, const cf_db_write_t *write)
{
    cf_cache_t *cache = arg;
    /* Nothing can be cached or subscribed for an id that did not exist
     * before this write: skip the round trip. */
    if (!strcmp(write->event, "created"))
        return;
    char err[256], channel[256], tombstone[24], message[512];
    const char *stage = cf_state_stage(write->state);
    snprintf(message, sizeof message,
             "{\"id\":\"%s\",\"status\":\"%s\",\"stage\":%s%s%s,\"progress\":%.4f,"
             "\"version\":%" PRId64 ",\"event\":\"%s\"}",
             write->id, cf_state_status(write->state), stage ? "\"" : "", stage ? stage : "null",
             stage ? "\"" : "", write->progress, write->version, write->event);
    snprintf(channel, sizeof channel, "%sprogress:%s", cache->prefix, write->id);
    snprintf(tombstone, sizeof tombstone, "%" PRId64, write->version);
    if (s_guarded_set(cache, write->id, write->version, tombstone, cache->opts.tombstone_ttl_ms,
                      channel, message, err, sizeof err) < 0)
        cf_log_debug("cache", "invalidating %s v%" PRId64 ": %s", write->id, write->version, err);
}

void cf_cache_attach(cf_cache_t *cache, cf_db_t *db)
{
    cf_db_set_write_hook(db, s_on_write, cache);
}

void cf_cache_stats(cf_cache_t *cache, cf_cache_stats_t *stats)
{
    pthread_mutex_lock(&cache->lock);
    *stats = cache->stats;
    pthread_mutex_unlock(&cache->lock);
}

/* ====================================================================== subscriber */

struct cf_updates {
    redisContext *ctx;
};

cf_updates_t *cf_updates_subscribe(const char *url, const char *prefix, const char *id, char *err,
                                   size_t errlen)
{
    redisContext *ctx = cf_redis_connect(url, 2000, err, errlen);
    if (!ctx)
        return NULL;
    char channel[256];
    snprintf(channel, sizeof channel, "%sprogress:%s", prefix ? prefix : "cf:", id);
    const char *argv[] = {"SUBSCRIBE", channel};
    redisReply *reply = redisCommandArgv(ctx, 2, argv, NULL);
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "Redis SUBSCRIBE failed: %s",
                 reply && reply->type == REDIS_REPLY_ERROR ? reply->str : ctx->errstr);
        freeReplyObject(reply);
        redisFree(ctx);
        return NULL;
    }
    freeReplyObject(reply);
    cf_updates_t *sub = calloc(1, sizeof *sub);
    if (!sub) {
        redisFree(ctx);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    sub->ctx = ctx;
    return sub;
}

int cf_updates_next(cf_updates_t *sub, int timeout_ms, char **message_p, char *err, size_t errlen)
{
    *message_p = NULL;
    int64_t deadline = s_now_ms() + timeout_ms;
    for (;;) {
        /* A hiredis read that times out leaves the context unusable, so wait
         * with poll() and let hiredis read only what has arrived. */
        void *r = NULL;
        if (redisGetReplyFromReader(sub->ctx, &r) != REDIS_OK) {
            snprintf(err, errlen, "Redis subscription: %s", sub->ctx->errstr);
            return -1;
        }
        if (r) {
            redisReply *reply = r;
            if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3 &&
                reply->element[0]->type == REDIS_REPLY_STRING &&
                !strcmp(reply->element[0]->str, "message") &&
                reply->element[2]->type == REDIS_REPLY_STRING) {
                *message_p = strdup(reply->element[2]->str);
                freeReplyObject(reply);
                return *message_p ? 1 : -1;
            }
            freeReplyObject(reply);
            continue;
        }
        int64_t left = deadline - s_now_ms();
        if (left < 0)
            return 0; /* a timeout of 0 still looks at the socket once */
        struct pollfd p = {.fd = sub->ctx->fd, .events = POLLIN};
        int n = poll(&p, 1, (int)left);
        if (n < 0)
            continue;
        if (n == 0)
            return 0;
        if (redisBufferRead(sub->ctx) != REDIS_OK) {
            snprintf(err, errlen, "Redis subscription: %s", sub->ctx->errstr);
            return -1;
        }
    }
}

void cf_updates_destroy(cf_updates_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    redisFree((*self_p)->ctx);
    free(*self_p);
    *self_p = NULL;
}
