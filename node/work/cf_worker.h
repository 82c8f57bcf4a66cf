/* cf_worker: the single-node renderer. Until distributed rendering lands,
 * a node with free slots takes compositions from the intake queue and
 * renders them itself with the media engine (the `clipfarm render` path):
 *
 *   take an id (by priority and age, cf_queue.h) -> queued -> planning in
 *   Postgres with this node's claim (idempotent: a composition someone
 *   else took is dropped) ->
 *   plan and record the segments -> encoding (segment and composition
 *   progress, events) -> assembling -> store the output as a blob of the
 *   node's store (DATA_DIR/blobs) -> completed with location, size,
 *   duration and hash; or failed with a code and message; or stopped when
 *   cancelled.
 *
 * Each slot is one thread that owns its queue connection and does every
 * Postgres and Redis call; the libav work runs in the renderer's own
 * threads, never on HTTP threads.
 *
 * Claims (sql/023_claims.sql): a take records this node as the owner with
 * an expiry; a claims thread renews the claims of the renders in progress
 * every third of claim_ttl_ms, and every write of the owner names its claim
 * (nothing is written once it is gone) and an operation id made from it,
 * the same on every retry, so a take or a transition whose answer was lost
 * is recognised when tried again. A render whose claim was lost (not
 * renewed in time: the coordinator's sweep requeued it) stops and writes
 * nothing. A node that dies mid-render stops renewing: the sweep requeues
 * its work. The state keeper (lib/store/cf_state_keeper.h, run by the
 * composition root) does the reaping, reconciling, sweeping and purging.
 *
 * Output locations read "clipfarm://NODE_ID/RELATIVE_PATH": the node that
 * holds the file and its path under that node's data dir. */
#ifndef CF_WORKER_H
#define CF_WORKER_H

#include <stdbool.h>
#include <stddef.h>

typedef struct cf_s3_t cf_s3_t;

typedef struct cf_worker_t cf_worker_t;
typedef struct cf_db cf_db_t;
typedef struct cf_metrics_t cf_metrics_t;
typedef struct cf_blob_store_t cf_blob_store_t;
typedef struct cf_source_policy_t cf_source_policy_t;
typedef struct cf_source_cache_t cf_source_cache_t;

typedef struct {
    cf_db_t *db;              /* required, borrowed */
    cf_metrics_t *metrics;    /* required, borrowed */
    cf_blob_store_t *blobs;   /* required: blob: sources, and outputs are stored there */
    const char *redis_url;    /* required */
    const char *redis_prefix; /* default "cf:" */
    const char *data_dir;     /* required: outputs and render workspaces */
    const char *node_id;      /* required: names this node in locations and events */
    int slots;                /* compositions rendered at once (default 1) */
    /* The cluster renders (coordinator and executor): run the housekeeping
     * only, take nothing from the queue. */
    bool maintenance_only;
    /* Told the free slots and renders in flight after every change (may be
     * NULL), e.g. cf_node_set_load for heartbeats. */
    void (*on_load)(void *arg, int free_slots, int in_flight);
    void *on_load_arg;
    int render_jobs;       /* encoder threads per render (0: the renderer's default) */
    int claim_ttl_ms;      /* a claim's lifetime, renewed every third of it (default
                              CF_DB_CLAIM_TTL_MS) */
    int priority_aging_ms; /* the queue's aging (default CF_QUEUE_AGING_MS, cf_queue.h) */
    /* What the compositions' sources may reach (borrowed; NULL: anything). */
    const cf_source_policy_t *policy;
    cf_s3_t *s3; /* s3:// sources and S3 destinations (NULL: refused) */
    /* The node's source cache, handed to every render (borrowed; NULL:
     * each render downloads into its own workspace). */
    cf_source_cache_t *source_cache;
} cf_worker_options_t;

void cf_worker_options_default(cf_worker_options_t *opts);

/* Starts the slot threads and the maintenance thread. Returns NULL with a
 * one-line reason in err. */
cf_worker_t *cf_worker_new(const cf_worker_options_t *opts, char *err, size_t errlen);

/* Stops taking work, cancels renders in progress and hands their
 * compositions back (queued again, with a "status" event whose reason is
 * "node_stopped", and pushed on the queue: the next node to take work
 * renders them), joins every thread and frees. Safe on NULL; NULLs
 * *self_p. */
void cf_worker_destroy(cf_worker_t **self_p);

#endif
