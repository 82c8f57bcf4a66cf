/* cf_source_cache: the node's downloaded sources, one directory shared by
 * every render and every segment on the node, so a clip used by many
 * segments (or many compositions) is downloaded once per node.
 *
 * An entry is keyed by the source URL plus its validator (an HTTP ETag or
 * Last-Modified, an S3 object's ETag): a cached file is used again only
 * after the origin confirms it has not changed (a conditional request), and
 * a changed source is downloaded again under a new entry; the old entry is
 * removed as soon as no render holds it. The cache is bounded in bytes:
 * least recently used entries are removed first, never one that a render
 * holds (a pin); while every entry is pinned the cache may exceed the
 * bound, and it comes back under it as pins are released (a file larger
 * than the bound is used, then removed). A download counts once complete.
 * Entries survive a restart (the index is rebuilt from the directory).
 *
 * A source whose origin names no validator cannot be revalidated: its entry
 * serves only while some render holds it (several clips of one render,
 * renders running at once) and is removed when the last pin goes, so each
 * later render downloads it again.
 *
 * Safe to use from several threads: concurrent requests for the same URL
 * wait for one download (or one revalidation) instead of starting their
 * own. A failed download is not remembered: the next request tries again.
 *
 * On disk (DIR), per entry: the file ("<urlhash>-<random>.<ext>", the URL
 * path's extension kept for demuxers that probe by name) and beside it a
 * small meta file ("<same>.meta": URL, validators, size) from which the
 * index is rebuilt at open; the meta file's mtime is the entry's last use.
 * Downloads in progress are "<file>.part". One process owns DIR at a time
 * (an exclusive lock on DIR/lock). */
#ifndef CF_SOURCE_CACHE_H
#define CF_SOURCE_CACHE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cf_source_cache_t cf_source_cache_t;
typedef struct cf_source_pin_t cf_source_pin_t;

typedef struct {
    uint64_t hits;      /* served from the cache (revalidated, or shared while held) */
    uint64_t misses;    /* downloaded */
    uint64_t evictions; /* entries removed to stay under the bound */
    uint64_t bytes;     /* held now */
    uint64_t entries;   /* held now */
    uint64_t max_bytes; /* the bound */
} cf_source_cache_stats_t;

#define CF_SOURCE_CACHE_DEFAULT_BYTES (20ULL << 30)

/* Opens (creating as needed) the cache in DIR holding at most MAX_BYTES
 * (0: CF_SOURCE_CACHE_DEFAULT_BYTES); removes partial downloads left by a
 * crash and entries whose file is missing or of the wrong size, then evicts
 * down to the bound. Returns NULL with a reason in err (DIR unusable, or
 * held by another process). */
cf_source_cache_t *cf_source_cache_new(const char *dir, uint64_t max_bytes, char *err,
                                       size_t errlen);

/* Frees the index (the files stay for the next open). Pins still held keep
 * the memory alive until they are released. Safe on NULL; NULLs *self_p. */
void cf_source_cache_destroy(cf_source_cache_t **self_p);

void cf_source_cache_stats(cf_source_cache_t *self, cf_source_cache_stats_t *stats);

/* Releases a pin returned by cf_fetch_source (the entry may then be
 * evicted); safe on NULL, NULLs the caller's pointer. */
void cf_source_pin_release(cf_source_pin_t **pin_p);

/* ------------------------------------------------------------------------
 * The seam to the transports (cf_fetch.c implements the http(s) and s3
 * origins; a later one, e.g. segments fetched from peers, plugs in here). */

/* What the origin said about a version of a source. Empty strings: absent. */
typedef struct {
    char etag[256];
    char last_modified[64];
} cf_source_validator_t;

/* Asks the origin for the source. HAVE is the validator of the entry the
 * cache holds (NULL: none, download unconditionally). Either sets
 * *not_modified (HAVE is still current; nothing is written) or downloads
 * the whole source to PART and fills GOT (empty when the origin named no
 * validator). Returns 0, or -1 with a one-line reason in err that names the
 * source; PART must not exist after a failure. */
typedef int (*cf_source_origin_fn)(void *arg, const cf_source_validator_t *have, const char *part,
                                   cf_source_validator_t *got, bool *not_modified, char *err,
                                   size_t errlen);

typedef struct {
    const char *url;        /* the key (with the validator); names errors */
    const void *policy_key; /* requests with another key never share a download */
    uint64_t max_bytes;     /* a held entry larger than this is refused (0: no limit) */
    atomic_bool *cancel;    /* checked while waiting for another's download */
    /* Called about once a second while waiting for another request's
     * download (the origin calls it while downloading itself). */
    void (*tick)(void *arg, uint64_t bytes, uint64_t total);
    void *tick_arg;
    cf_source_origin_fn origin;
    void *origin_arg;
} cf_source_request_t;

/* Resolves REQ to a cached file: an entry revalidated with the origin (or
 * shared with a request in flight), or a fresh download. Returns 0 with
 * *path_p (the caller frees it) and *pin_p (release with
 * cf_source_pin_release when done with the file), or -1 with a reason in
 * err ("URL: cancelled" when REQ's cancel flag was set while waiting). */
int cf_source_cache_get(cf_source_cache_t *self, const cf_source_request_t *req, char **path_p,
                        cf_source_pin_t **pin_p, char *err, size_t errlen);

/* Writes URL's path extension (".mp4", at most 10 alphanumerics; "" when it
 * has none) to EXT: cached files keep it for demuxers that probe by name. */
void cf_source_url_ext(const char *url, char *ext, size_t extlen);

#endif
