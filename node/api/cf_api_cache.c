/* cf_api_cache: a small in-process cache of composition JSON in front of
 * the shared Redis cache (cf_cache), so that the hottest request, polling a
 * composition, needs no network round trip.
 *
 * Coherence: every committed write to a composition, on any node, publishes
 * on PREFIX progress:ID (cf_cache's write hook). One thread per node
 * subscribes to PREFIX progress:* and drops the entry of every id it hears
 * about, so an entry outlives a write elsewhere by the time the message
 * takes to arrive (well under a millisecond on a LAN). Writes this node's API
 * makes itself (cancel) drop the entry before answering, so a client reads
 * its own writes here. While the subscription is down nothing is cached,
 * and every entry also expires after S_TTL_MS whatever happens.
 *
 * A reader that misses fetches from cf_cache and stores what it got only if
 * no invalidation arrived meanwhile (a global sequence number), so a late
 * store cannot bring back a value older than an invalidation it raced. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cf_api_internal.h"
#include "cf_cache.h"
#include "cf_db.h"
#include "cf_log.h"
#include "cf_redis.h"

#define S_TTL_MS 2000

static unsigned s_slot(const char *id)
{
    unsigned h = 2166136261u;
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h % CF_API_LOCAL_SLOTS;
}

static void s_entry_clear(cf_api_local_entry_t *entry)
{
    free(entry->json);
    memset(entry, 0, sizeof *entry);
}

void cf_api_cache_forget(cf_api_t *api, const char *id)
{
    pthread_rwlock_wrlock(&api->local_lock);
    api->local_seq++;
    cf_api_local_entry_t *entry = &api->local[s_slot(id)];
    if (!strcmp(entry->id, id))
        s_entry_clear(entry);
    pthread_rwlock_unlock(&api->local_lock);
}

static void s_forget_all(cf_api_t *api, bool coherent)
{
    pthread_rwlock_wrlock(&api->local_lock);
    api->local_seq++;
    for (int i = 0; i < CF_API_LOCAL_SLOTS; i++)
        if (api->local[i].json)
            s_entry_clear(&api->local[i]);
    api->local_coherent = coherent;
    pthread_rwlock_unlock(&api->local_lock);
}

int cf_api_composition_json(cf_api_t *api, const char *id, char **json_p, size_t *len_p, char *err,
                            size_t errlen)
{
    *json_p = NULL;
    int64_t now = cf_api_now_ms();
    pthread_rwlock_rdlock(&api->local_lock);
    cf_api_local_entry_t *entry = &api->local[s_slot(id)];
    if (entry->json && !strcmp(entry->id, id) && entry->expires_ms > now) {
        *json_p = malloc(entry->len + 1);
        if (*json_p) {
            memcpy(*json_p, entry->json, entry->len + 1);
            *len_p = entry->len;
        }
    }
    uint64_t seq = api->local_seq;
    bool coherent = api->local_coherent;
    pthread_rwlock_unlock(&api->local_lock);
    const char *result[] = {*json_p ? "hit" : coherent ? "miss" : "bypass"};
    cf_metric_inc(api->m_local_cache, result, 1);
    if (*json_p)
        return CF_DB_OK;

    char *json = NULL;
    int rc = cf_cache_composition_json(api->opts.cache, api->opts.db, id, &json, NULL, err, errlen);
    if (rc != CF_DB_OK)
        return rc;
    size_t len = strlen(json);
    char *copy = coherent ? malloc(len + 1) : NULL;
    if (copy) {
        memcpy(copy, json, len + 1);
        pthread_rwlock_wrlock(&api->local_lock);
        if (api->local_seq == seq && api->local_coherent) {
            entry = &api->local[s_slot(id)];
            s_entry_clear(entry);
            snprintf(entry->id, sizeof entry->id, "%s", id);
            entry->json = copy;
            entry->len = len;
            entry->expires_ms = cf_api_now_ms() + S_TTL_MS;
            copy = NULL;
        }
        pthread_rwlock_unlock(&api->local_lock);
        free(copy);
    }
    *json_p = json;
    *len_p = len;
    return CF_DB_OK;
}

static void *s_subscriber_main(void *arg)
{
    cf_api_t *api = arg;
    char err[256], pattern[160];
    snprintf(pattern, sizeof pattern, "%sprogress:*", api->redis_prefix);
    size_t channel_prefix = strlen(api->redis_prefix) + strlen("progress:");
    while (!atomic_load(&api->stopping)) {
        redisContext *ctx = cf_redis_connect(api->redis_url, 2000, err, sizeof err);
        if (ctx) {
            pthread_rwlock_wrlock(&api->local_lock);
            api->local_ctx = ctx;
            pthread_rwlock_unlock(&api->local_lock);
        }
        redisReply *reply = ctx ? redisCommand(ctx, "PSUBSCRIBE %s", pattern) : NULL;
        if (reply && reply->type == REDIS_REPLY_ARRAY) {
            /* Then blocking reads without a timeout: cf_api_cache_stop wakes
             * us by shutting the socket down. */
            struct timeval none = {0, 0};
            redisSetTimeout(ctx, none);
            /* Subscribed: from now on we hear about every write. */
            s_forget_all(api, true);
            freeReplyObject(reply);
            while (!atomic_load(&api->stopping)) {
                reply = NULL;
                if (redisGetReply(ctx, (void **)&reply) != REDIS_OK)
                    break;
                /* ["pmessage", pattern, channel, message] */
                if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 4 &&
                    reply->element[2]->type == REDIS_REPLY_STRING &&
                    reply->element[2]->len > channel_prefix)
                    cf_api_cache_forget(api, reply->element[2]->str + channel_prefix);
                freeReplyObject(reply);
            }
        } else {
            freeReplyObject(reply);
        }
        s_forget_all(api, false);
        pthread_rwlock_wrlock(&api->local_lock);
        api->local_ctx = NULL;
        pthread_rwlock_unlock(&api->local_lock);
        redisFree(ctx);
        if (!atomic_load(&api->stopping)) {
            cf_log_debug("api", "cache invalidations: %s; local cache off until back",
                         ctx ? "connection lost" : err);
            for (int i = 0; i < 10 && !atomic_load(&api->stopping); i++)
                usleep(100 * 1000);
        }
    }
    return NULL;
}

int cf_api_cache_start(cf_api_t *api, char *err, size_t errlen)
{
    pthread_rwlock_init(&api->local_lock, NULL);
    api->local_coherent = false;
    if (pthread_create(&api->local_thread, NULL, s_subscriber_main, api) != 0) {
        snprintf(err, errlen, "cannot start the cache invalidation thread");
        return -1;
    }
    api->local_started = true;
    return 0;
}

void cf_api_cache_stop(cf_api_t *api)
{
    if (!api->local_started)
        return;
    atomic_store(&api->stopping, true);
    pthread_rwlock_wrlock(&api->local_lock);
    if (api->local_ctx)
        shutdown(api->local_ctx->fd, SHUT_RDWR);
    pthread_rwlock_unlock(&api->local_lock);
    pthread_join(api->local_thread, NULL);
    api->local_started = false;
    s_forget_all(api, false);
    pthread_rwlock_destroy(&api->local_lock);
}
