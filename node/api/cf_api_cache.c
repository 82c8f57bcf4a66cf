/* cf_localcache (cf_api_cache.h): the node's in-process composition cache.
 *
 * Coherence: every committed write to a composition, on any node, publishes
 * on PREFIX progress:ID (cf_cache's write hook). The cache's own thread
 * subscribes to PREFIX progress:* and drops the entry of every id it hears
 * about, so an entry outlives a write elsewhere by the time the message
 * takes to arrive (well under a millisecond on a LAN). Writes this node makes
 * itself (cancel) drop the entry before answering (cf_localcache_forget), so
 * a client reads its own writes here. While the subscription is down nothing
 * is cached, and every entry also expires after S_TTL_MS whatever happens.
 *
 * A reader that misses fetches from cf_cache and stores what it got only if
 * no invalidation arrived meanwhile (a global sequence number), so a late
 * store cannot bring back a value older than an invalidation it raced. */
#define _GNU_SOURCE
#include "cf_api_cache.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cf_cache.h"
#include "cf_db.h"
#include "cf_log.h"
#include "cf_metrics.h"
#include "cf_redis.h"

#define S_TTL_MS 2000
#define S_SLOTS  4096

typedef struct {
    char id[40];
    char *json;
    size_t len;
    int64_t expires_ms; /* monotonic */
} s_entry_t;

struct cf_localcache_t {
    char *redis_url;
    char *redis_prefix;
    cf_cache_t *cache;
    cf_db_t *db;
    cf_metric_t *reads;

    pthread_rwlock_t lock; /* read: look up and copy; write: store, drop */
    s_entry_t *slots;      /* S_SLOTS entries, under lock */
    uint64_t seq;          /* grows with every invalidation */
    bool coherent;         /* subscribed to invalidations: entries may be kept */
    redisContext *ctx;     /* the subscriber's connection, for destroy to wake it */

    pthread_t thread;
    bool started;
    atomic_bool stopping;
};

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static unsigned s_slot(const char *id)
{
    unsigned h = 2166136261u;
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h % S_SLOTS;
}

static void s_entry_clear(s_entry_t *entry)
{
    free(entry->json);
    memset(entry, 0, sizeof *entry);
}

void cf_localcache_forget(cf_localcache_t *self, const char *id)
{
    pthread_rwlock_wrlock(&self->lock);
    self->seq++;
    s_entry_t *entry = &self->slots[s_slot(id)];
    if (!strcmp(entry->id, id))
        s_entry_clear(entry);
    pthread_rwlock_unlock(&self->lock);
}

static void s_forget_all(cf_localcache_t *self, bool coherent)
{
    pthread_rwlock_wrlock(&self->lock);
    self->seq++;
    for (int i = 0; i < S_SLOTS; i++)
        if (self->slots[i].json)
            s_entry_clear(&self->slots[i]);
    self->coherent = coherent;
    pthread_rwlock_unlock(&self->lock);
}

/* Keeps COPY (taken) as ID's entry, unless an invalidation came after the
 * look-up that read SEQ or the subscription went down since: then the copy
 * may be older than what others wrote, and is freed instead. */
static void s_put(cf_localcache_t *self, const char *id, char *copy, size_t len, uint64_t seq)
{
    pthread_rwlock_wrlock(&self->lock);
    if (self->seq == seq && self->coherent) {
        s_entry_t *entry = &self->slots[s_slot(id)];
        s_entry_clear(entry);
        snprintf(entry->id, sizeof entry->id, "%s", id);
        entry->json = copy;
        entry->len = len;
        entry->expires_ms = s_now_ms() + S_TTL_MS;
        copy = NULL;
    }
    pthread_rwlock_unlock(&self->lock);
    free(copy);
}

int cf_localcache_get(cf_localcache_t *self, const char *id, char **json_p, size_t *len_p,
                      char *err, size_t errlen)
{
    *json_p = NULL;
    int64_t now = s_now_ms();
    pthread_rwlock_rdlock(&self->lock);
    s_entry_t *entry = &self->slots[s_slot(id)];
    if (entry->json && !strcmp(entry->id, id) && entry->expires_ms > now) {
        *json_p = malloc(entry->len + 1);
        if (*json_p) {
            memcpy(*json_p, entry->json, entry->len + 1);
            *len_p = entry->len;
        }
    }
    uint64_t seq = self->seq;
    bool coherent = self->coherent;
    pthread_rwlock_unlock(&self->lock);
    const char *result[] = {*json_p ? "hit" : coherent ? "miss" : "bypass"};
    cf_metric_inc(self->reads, result, 1);
    if (*json_p)
        return CF_DB_OK;

    char *json = NULL;
    int rc = cf_cache_composition_json(self->cache, self->db, id, &json, NULL, err, errlen);
    if (rc != CF_DB_OK)
        return rc;
    size_t len = strlen(json);
    char *copy = coherent ? malloc(len + 1) : NULL;
    if (copy) {
        memcpy(copy, json, len + 1);
        s_put(self, id, copy, len, seq);
    }
    *json_p = json;
    *len_p = len;
    return CF_DB_OK;
}

static void *s_subscriber_main(void *arg)
{
    cf_localcache_t *self = arg;
    char err[256], pattern[160];
    snprintf(pattern, sizeof pattern, "%sprogress:*", self->redis_prefix);
    size_t channel_prefix = strlen(self->redis_prefix) + strlen("progress:");
    while (!atomic_load(&self->stopping)) {
        redisContext *ctx = cf_redis_connect(self->redis_url, 2000, err, sizeof err);
        if (ctx) {
            pthread_rwlock_wrlock(&self->lock);
            self->ctx = ctx;
            pthread_rwlock_unlock(&self->lock);
        }
        redisReply *reply = ctx ? redisCommand(ctx, "PSUBSCRIBE %s", pattern) : NULL;
        if (reply && reply->type == REDIS_REPLY_ARRAY) {
            /* Then blocking reads without a timeout: cf_localcache_destroy
             * wakes us by shutting the socket down. It sets stopping before
             * it looks for the context under the lock, and we check stopping
             * after publishing the context under the lock and before the
             * first read: either it finds the context or we see stopping. */
            struct timeval none = {0, 0};
            redisSetTimeout(ctx, none);
            /* Subscribed: from now on we hear about every write. */
            s_forget_all(self, true);
            freeReplyObject(reply);
            while (!atomic_load(&self->stopping)) {
                reply = NULL;
                if (redisGetReply(ctx, (void **)&reply) != REDIS_OK)
                    break;
                /* ["pmessage", pattern, channel, message] */
                if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 4 &&
                    reply->element[2]->type == REDIS_REPLY_STRING &&
                    reply->element[2]->len > channel_prefix)
                    cf_localcache_forget(self, reply->element[2]->str + channel_prefix);
                freeReplyObject(reply);
            }
        } else {
            freeReplyObject(reply);
        }
        s_forget_all(self, false);
        pthread_rwlock_wrlock(&self->lock);
        self->ctx = NULL;
        pthread_rwlock_unlock(&self->lock);
        redisFree(ctx);
        if (!atomic_load(&self->stopping)) {
            cf_log_debug("api", "cache invalidations: %s; local cache off until back",
                         ctx ? "connection lost" : err);
            for (int i = 0; i < 10 && !atomic_load(&self->stopping); i++)
                usleep(100 * 1000);
        }
    }
    return NULL;
}

cf_localcache_t *cf_localcache_new(const cf_localcache_options_t *opts, char *err, size_t errlen)
{
    if (!opts->redis_url || !opts->cache || !opts->db) {
        snprintf(err, errlen, "local cache: Redis URL, cache and database are required");
        return NULL;
    }
    cf_localcache_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_rwlock_init(&self->lock, NULL);
    self->redis_url = strdup(opts->redis_url);
    self->redis_prefix = strdup(opts->redis_prefix ? opts->redis_prefix : "cf:");
    self->cache = opts->cache;
    self->db = opts->db;
    self->reads = opts->reads;
    self->slots = calloc(S_SLOTS, sizeof *self->slots);
    if (!self->redis_url || !self->redis_prefix || !self->slots) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (pthread_create(&self->thread, NULL, s_subscriber_main, self) != 0) {
        snprintf(err, errlen, "cannot start the cache invalidation thread");
        goto fail;
    }
    self->started = true;
    return self;
fail:
    cf_localcache_destroy(&self);
    return NULL;
}

void cf_localcache_destroy(cf_localcache_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_localcache_t *self = *self_p;
    if (self->started) {
        atomic_store(&self->stopping, true);
        pthread_rwlock_wrlock(&self->lock);
        if (self->ctx)
            shutdown(self->ctx->fd, SHUT_RDWR);
        pthread_rwlock_unlock(&self->lock);
        pthread_join(self->thread, NULL);
    }
    if (self->slots) {
        s_forget_all(self, false);
        free(self->slots);
    }
    pthread_rwlock_destroy(&self->lock);
    free(self->redis_url);
    free(self->redis_prefix);
    free(self);
    *self_p = NULL;
}
