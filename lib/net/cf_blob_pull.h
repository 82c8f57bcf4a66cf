/* cf_blob_pull: copies a blob another node holds into this node's store,
 * the data plane's one way of moving bytes between nodes (a `blob:` source,
 * an encoded segment, the audio track; only compressed data crosses the
 * network).
 *
 * The peer serves GET /internal/v1/blobs/{hash} (node/api/cf_api_blobs.c),
 * open only to the cluster's own credential: the caller passes a signer
 * that makes that header for each request (cf_peer_auth_sign in
 * lib/store/cf_peer_auth.h, with the node's cf_peer_auth_t). The bytes
 * stream into a cf_blob_writer as they arrive, never whole in memory. A
 * transfer cut short is resumed with Range from the bytes already
 * received (the partial data is kept, and so is the running hash); the
 * blob is stored only when its BLAKE2b-256 is the name asked for.
 * Connection errors, stalls, cut bodies, 429 and 5xx are retried with
 * exponential backoff and jitter up to max_tries; 404, 401 and 403 are not.
 *
 * Blocking: run it off the control-plane thread. Any thread may pull; two
 * pulls of one blob at once both download it and store one file. */
#ifndef CF_BLOB_PULL_H
#define CF_BLOB_PULL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_blob.h"
#include "cf_metrics.h"

/* Writes the authentication header line ("Name: value", no CRLF) of a
 * request METHOD PATH into OUT. Returns 0, or -1 when it cannot. */
typedef int(cf_blob_pull_sign_fn)(void *arg, const char *method, const char *path, char *out,
                                  size_t outlen);

typedef struct {
    const char *base_url;       /* the peer's API: "http://host:port" (required) */
    cf_blob_pull_sign_fn *sign; /* the peer credential (required) */
    void *sign_arg;
    int connect_timeout_ms;    /* default 5000 */
    int stall_timeout_ms;      /* no byte for this long: the try fails (default 30000) */
    int max_tries;             /* requests in all, the first included (default 5) */
    int backoff_base_ms;       /* wait before the second try; doubles each try (default 200) */
    int backoff_max_ms;        /* longest wait between tries (default 10000) */
    uint64_t max_bytes;        /* refuse a larger blob (0: no limit) */
    const atomic_bool *cancel; /* ends the pull within about a second (NULL: never) */
    /* Counter blob_pull_events_total{event} (cf_blob_pull_metric_add) or
     * NULL: pulled, local, resumed, retried, restarted, corrupt,
     * not_found, refused, too_large, cancelled, failed. */
    cf_metric_t *metric;
} cf_blob_pull_opts_t;

/* What one pull did, for logs, tests and benchmarks. */
typedef struct {
    int tries;               /* requests sent */
    int resumes;             /* of them with Range, continuing from a cut */
    int restarts;            /* partial data dropped (the peer ignored Range) */
    uint64_t bytes_received; /* body bytes over the network, every try */
    uint64_t size;           /* the blob's size, once stored */
    bool local;              /* already in the store: no request at all */
    long http_status;        /* the last answer's status (0: none) */
} cf_blob_pull_stats_t;

/* Results of cf_blob_pull. */
enum {
    CF_BLOB_PULL_OK = 0,
    CF_BLOB_PULL_FAILED = -1,    /* tries exhausted, or a local error (disk, memory) */
    CF_BLOB_PULL_NOT_FOUND = -2, /* the peer does not hold it (404): ask another holder */
    CF_BLOB_PULL_REFUSED = -3,   /* the peer refused the credential (401/403) */
    CF_BLOB_PULL_CORRUPT = -4,   /* the bytes do not hash to the name: nothing stored */
    CF_BLOB_PULL_TOO_LARGE = -5, /* over max_bytes */
    CF_BLOB_PULL_CANCELLED = -7, /* -6 is CF_RC_UNAVAILABLE's everywhere (cf_rc.h) */
};

/* Fills OPTS with the defaults above (pointers NULL). */
void cf_blob_pull_options_default(cf_blob_pull_opts_t *opts);

/* Registers blob_pull_events_total{event} in M. Returns it, or NULL with a
 * reason in err (the name already taken). */
cf_metric_t *cf_blob_pull_metric_add(cf_metrics_t *m, char *err, size_t errlen);

/* Makes the blob named HEX ("blob:<hex>" or the bare hash) present in
 * STORE, pulling it from OPTS->base_url unless it is there already.
 * STATS (may be NULL) says what it took. Returns CF_BLOB_PULL_OK, or one of
 * the errors above with a one-line reason in err; nothing is left in the
 * store (or its temporary directory) after an error. */
int cf_blob_pull(const cf_blob_pull_opts_t *opts, cf_blob_store_t *store, const char *hex,
                 cf_blob_pull_stats_t *stats, char *err, size_t errlen);

/* The name of a result ("ok", "not_found"...). */
const char *cf_blob_pull_result_name(int rc);

#endif
