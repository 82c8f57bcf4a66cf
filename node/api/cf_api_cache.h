/* cf_localcache: a small in-process cache of composition JSON in front of
 * the shared Redis cache (cf_cache), so that the hottest request, polling a
 * composition, needs no network round trip. It owns one thread, which keeps
 * it coherent with writes made anywhere in the cluster (cf_api_cache.c says
 * how); it knows nothing of the API that holds it.
 *
 * Ids are looked up as given: callers pass canonical (lower-case) ids, the
 * spelling writers publish invalidations under (cf_ids.h). */
#ifndef CF_API_CACHE_H
#define CF_API_CACHE_H

#include <stddef.h>

typedef struct cf_localcache_t cf_localcache_t;
typedef struct cf_cache cf_cache_t;
typedef struct cf_db cf_db_t;
typedef struct cf_metric_t cf_metric_t;

typedef struct {
    const char *redis_url;    /* where invalidations are published (required) */
    const char *redis_prefix; /* cf_cache's key prefix (default "cf:") */
    /* Where misses are read from, borrowed for the cache's lifetime. */
    cf_cache_t *cache;
    cf_db_t *db;
    /* Counter labelled {result}: hit, miss, or bypass (while the
     * invalidation subscription is down). Borrowed; NULL: not counted. */
    cf_metric_t *reads;
} cf_localcache_options_t;

/* Creates an empty cache and starts its invalidation subscriber; nothing is
 * kept until the subscription is up. Returns NULL with a one-line reason in
 * err (a missing option, out of memory, no thread). */
cf_localcache_t *cf_localcache_new(const cf_localcache_options_t *opts, char *err, size_t errlen);

/* Stops the subscriber (waits for it) and frees every entry. Safe on NULL;
 * NULLs the caller's pointer. No other call may be running. */
void cf_localcache_destroy(cf_localcache_t **self_p);

/* Composition ID's JSON: a copy of the entry when there is a fresh one,
 * else read through cf_cache (Redis, then Postgres) and kept (put) unless
 * an invalidation arrived during the read. Returns cf_db_rc_t codes (a miss
 * in Postgres is CF_DB_NOT_FOUND), with a reason in err on failure; on
 * CF_DB_OK *json_p (NUL-terminated, *len_p bytes) is the caller's. */
int cf_localcache_get(cf_localcache_t *self, const char *id, char **json_p, size_t *len_p,
                      char *err, size_t errlen);

/* Drops ID's entry, and makes any read in flight not keep what it got: a
 * writer on this node calls it before answering, so that its client reads
 * its own write. */
void cf_localcache_forget(cf_localcache_t *self, const char *id);

#endif
