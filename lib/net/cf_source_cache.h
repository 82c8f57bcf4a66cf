/* cf_source_cache: the node's downloaded sources, one directory shared by
 * every render and every segment on the node, so a clip used by many
 * segments (or many compositions) is downloaded once per node.
 *
 * An entry is keyed by the source URL plus its validator (an HTTP ETag or
 * Last-Modified, an S3 object's ETag): a cached file is used again only
 * after the origin confirms it has not changed (a conditional request), and
 * a changed source is downloaded again under a new entry. The cache is
 * bounded in bytes: least recently used entries are removed first, never
 * one that a render holds (a pin). Entries survive a restart (the index is
 * rebuilt from the directory).
 *
 * Safe to use from several threads: concurrent requests for the same key
 * wait for one download instead of starting their own. */
#ifndef CF_SOURCE_CACHE_H
#define CF_SOURCE_CACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct cf_source_cache_t cf_source_cache_t;
typedef struct cf_source_pin_t cf_source_pin_t;

typedef struct {
    uint64_t hits;      /* served from the cache after revalidation */
    uint64_t misses;    /* downloaded */
    uint64_t evictions; /* entries removed to stay under the bound */
    uint64_t bytes;     /* held now */
    uint64_t entries;   /* held now */
    uint64_t max_bytes; /* the bound */
} cf_source_cache_stats_t;

/* Opens (creating as needed) the cache in DIR holding at most MAX_BYTES
 * (0: 20 GiB); removes partial downloads left by a crash. Returns NULL with
 * a reason in err. */
cf_source_cache_t *cf_source_cache_new(const char *dir, uint64_t max_bytes, char *err,
                                       size_t errlen);
void cf_source_cache_destroy(cf_source_cache_t **self_p);

void cf_source_cache_stats(cf_source_cache_t *self, cf_source_cache_stats_t *stats);

/* Releases a pin returned by cf_fetch_source (the entry may then be
 * evicted); safe on NULL, NULLs the caller's pointer. */
void cf_source_pin_release(cf_source_pin_t **pin_p);

#endif
