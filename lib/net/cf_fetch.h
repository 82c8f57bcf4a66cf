/* cf_fetch: turns a clip's source reference into a local file.
 *
 *   file:///abs/path   used in place (percent-escapes decoded); must exist,
 *                      and under a policy lie in one of its media roots
 *   http(s)://...      streamed with libcurl into the node-wide cache
 *                      (revalidated there with a conditional GET) or a
 *                      private cache directory (never held in memory),
 *                      written to a temporary name and renamed when
 *                      complete; HTTP errors, refused connections and
 *                      stalls are errors; https verifies against the
 *                      system's CAs or the PEM file named by the
 *                      environment variable CF_CA_FILE
 *   s3://BUCKET/KEY    downloaded with the node's S3 client into the cache
 *                      (revalidated by HEAD and ETag in the node-wide one;
 *                      resumed after a break, capped, cancellable)
 *   blob:HEX           asked of a resolver (the node's blob store); without
 *                      one, a clear error
 */
#ifndef CF_FETCH_H
#define CF_FETCH_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_source_cache.h"
#include "cf_source_policy.h"

typedef struct cf_s3_t cf_s3_t;

/* Maps REF ("blob:<hex>") to a local file path. Returns 0, or -1 with a
 * reason in err. cf_blob_path(store, ...) has this shape with ARG = store. */
typedef int (*cf_fetch_blob_fn)(void *arg, const char *ref, char *path, size_t pathlen, char *err,
                                size_t errlen);

typedef struct {
    /* The node-wide cache http(s) and s3 downloads go through (NULL: use
     * cache_dir, a private directory, as `clipfarm render` does). */
    cf_source_cache_t *cache;
    const char *cache_dir;          /* where http(s) downloads go without a cache */
    cf_fetch_blob_fn blob_resolver; /* NULL: blob: sources are an error */
    void *blob_arg;
    atomic_bool *cancel;     /* checked while downloading (may be NULL) */
    long connect_timeout_ms; /* 0: 10 s */
    long stall_timeout_s;    /* no byte for this long fails (0: 60 s) */
    uint64_t max_bytes;      /* 0: 64 GiB */
    long timeout_s;          /* whole download, redirects included (0: none) */
    /* What sources may be read and which addresses reached (NULL: any, as
     * for `clipfarm render`). Its limits override max_bytes/timeout_s. */
    const cf_source_policy_t *policy;
    /* Called about once a second while a download runs (may be NULL), on
     * the downloading thread: keeps heartbeats and cancel checks going. */
    void (*tick)(void *arg, uint64_t bytes, uint64_t total);
    void *tick_arg;
    /* s3://BUCKET/KEY sources (NULL: refused): fetched into the cache like
     * http ones, with the node's endpoint and default credentials. */
    cf_s3_t *s3;
} cf_fetch_opts_t;

/* Resolves SOURCE to a local, readable file. Returns 0 with *path_p set (the
 * caller frees it) and, when the file is a cache entry, *pin_p holding it
 * until cf_source_pin_release (otherwise *pin_p is NULL); or -1 with a
 * one-line reason in err that names the source. With opts->cache, every
 * use of a cached http(s) source is one conditional request and of an s3
 * one a HEAD (cf_source_cache.h); the policy, caps, timeouts, cancel and
 * tick apply to those requests and to downloads alike. Without it,
 * downloads land in opts->cache_dir, named after the URL, so the same URL
 * twice is fetched once. */
int cf_fetch_source(const char *source, const cf_fetch_opts_t *opts, char **path_p,
                    cf_source_pin_t **pin_p, char *err, size_t errlen);

/* Downloads URL (http or https only) to DEST, via DEST.part. Returns 0 or -1
 * with a reason in err; nothing is left at DEST or DEST.part on failure. */
int cf_fetch_url(const char *url, const char *dest, const cf_fetch_opts_t *opts, char *err,
                 size_t errlen);

#endif
