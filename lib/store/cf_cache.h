/* cf_cache: read-through Redis cache of composition JSON, and progress
 * pub/sub.
 *
 * A cached entry is PREFIX c:ID = "VERSION JSON", where VERSION is the
 * composition row's version (Postgres bumps it on every update). Writers
 * invalidate after commit by storing a tombstone "VERSION" (no JSON) for the
 * version they committed; readers fill the cache with a guarded SET (a Lua
 * script) that only stores a version newer than or equal to what is there,
 * tombstone included. So a reader that read an old row before a write and
 * fills late cannot bring the old value back: a read that starts after a
 * write has returned never sees the old value. A reader that took longer
 * than fill_window_ms between its Postgres read and its SET does not fill at
 * all (the tombstone's TTL is longer than that window).
 *
 * TTLs: active_ttl_ms while the composition can still change, terminal_ttl_ms
 * once it is completed, failed or cancelled.
 *
 * Thread-safe: a small set of Redis connections is shared under a lock. When
 * Redis is unreachable, reads go straight to Postgres. */
#ifndef CF_CACHE_H
#define CF_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_db.h"

typedef struct cf_cache cf_cache_t;

typedef struct {
    const char *url;      /* redis://... (copied) */
    const char *prefix;   /* key prefix (default "cf:") */
    int timeout_ms;       /* connect and command timeout (default 1000) */
    int connections;      /* Redis connections shared by threads (default 4) */
    int active_ttl_ms;    /* TTL while pending/queued/processing (default 2000) */
    int terminal_ttl_ms;  /* TTL once terminal (default 300000: the origin's 5 minutes) */
    int tombstone_ttl_ms; /* how long an invalidation is remembered (default 60000) */
    int fill_window_ms;   /* a reader slower than this does not fill (default 10000) */
} cf_cache_options_t;

void cf_cache_options_default(cf_cache_options_t *opts);

/* Creates the cache. NULL with a reason in err when an option is invalid; an
 * unreachable Redis is not an error (the cache is bypassed until it is back). */
cf_cache_t *cf_cache_new(const cf_cache_options_t *opts, char *err, size_t errlen);

/* Frees the cache. Safe on NULL; NULLs *self_p. Detach it from any pool first
 * (cf_db_set_write_hook(db, NULL, NULL)). */
void cf_cache_destroy(cf_cache_t **self_p);

/* Installs the write hook on DB: after every committed composition write,
 * the entry is invalidated (tombstone with the new version) and a progress
 * message {"id","status","stage","progress","version","event"} is published
 * on PREFIX progress:ID. */
void cf_cache_attach(cf_cache_t *cache, cf_db_t *db);

/* Read-through: the composition's JSON (cf_db_composition_get_json's shape)
 * from the cache, or from DB on a miss (then filled). *hit_p (may be NULL)
 * says whether the cache answered. Returns cf_db_rc_t codes (CF_DB_NOT_FOUND,
 * CF_DB_UNAVAILABLE...). *json_p is the caller's. */
int cf_cache_composition_json(cf_cache_t *cache, cf_db_t *db, const char *id, char **json_p,
                              bool *hit_p, char *err, size_t errlen);

/* Stores JSON, read from Postgres at VERSION, unless the entry holds a newer
 * version or a newer invalidation (e.g. to warm the cache with what a write
 * returned). Returns 1 stored, 0 refused, -1 when Redis is unreachable. */
int cf_cache_fill(cf_cache_t *cache, const char *id, int64_t version, const char *json, char *err,
                  size_t errlen);

/* Invalidates ID's entry for VERSION (the committed row version). Returns 0,
 * or -1 when Redis is unreachable. */
int cf_cache_invalidate(cf_cache_t *cache, const char *id, int64_t version, char *err,
                        size_t errlen);

/* Publishes MESSAGE on ID's progress channel. Returns 0 or -1. */
int cf_cache_publish(cf_cache_t *cache, const char *id, const char *message, char *err,
                     size_t errlen);

typedef struct {
    uint64_t hits, misses, fills, refused_fills, errors;
} cf_cache_stats_t;

void cf_cache_stats(cf_cache_t *cache, cf_cache_stats_t *stats);

/* A subscription to one composition's update channel (its own Redis
 * connection; one thread): every write to the composition publishes there
 * (cf_cache_attach's write hook). Named "updates" so that "progress" means
 * the terminal bar (lib/core/cf_progress.h) alone. */
typedef struct cf_updates cf_updates_t;

cf_updates_t *cf_updates_subscribe(const char *url, const char *prefix, const char *id, char *err,
                                   size_t errlen);

/* Waits up to timeout_ms for the next message. Returns 1 with *message_p
 * (caller's), 0 on timeout, -1 when the connection failed. */
int cf_updates_next(cf_updates_t *sub, int timeout_ms, char **message_p, char *err, size_t errlen);

void cf_updates_destroy(cf_updates_t **self_p);

#endif
