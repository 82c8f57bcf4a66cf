/* cf_state_keeper: the state layer's housekeeping, one thread per node:
 *   - reaper: returns the items of dead queue consumers (cf_queue_reap);
 *   - retention: deletes compositions past their retention (completed after
 *     keep_completed_s, failed and cancelled after keep_failed_s: the
 *     origin's 7 days and 24 h; never one whose idempotency key is younger
 *     than idempotency_keep_s) and removes their output files;
 *   - uploads: removes this node's uploads no stored composition names any
 *     more, blob_keep_s after they were made (cf_db_blob_gc);
 * and, only while this node is the coordinator (is_coordinator; a node
 * without one is its own coordinator), so that one node in the cluster
 * does them and they never race each other:
 *   - claims: every processing composition whose claim expired (its
 *     renderer died, hung, or lost the database for longer than the claim's
 *     lifetime) goes back to queued and is pushed on the queue, or fails
 *     with "claim_expired" after claim_max_expiries expiries
 *     (cf_db_claims_expire);
 *   - reconcile: pushes queued compositions no Redis list holds, at once when
 *     Redis lost its data, else every reconcile_interval_ms.
 * The other steps are safe on many nodes at once (the reaper is one atomic
 * script, purge skips rows another node is deleting). */
#ifndef CF_STATE_KEEPER_H
#define CF_STATE_KEEPER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_db.h"

typedef struct cf_state_keeper cf_state_keeper_t;

typedef struct {
    cf_db_t *db;               /* borrowed; must outlive the keeper */
    const char *redis_url;     /* copied */
    const char *redis_prefix;  /* the queue's key prefix (default "cf:") */
    int reap_interval_ms;      /* default 1000 */
    int reconcile_interval_ms; /* default 10000 */
    int purge_interval_ms;     /* default 60000 */
    int keep_completed_s;      /* default CF_DB_KEEP_COMPLETED_S (7 days) */
    int keep_failed_s;         /* default CF_DB_KEEP_FAILED_S (24 h) */
    /* Output files are removed only when they are inside this directory
     * (a local path or file:// URL); anything else (s3://, https://, a path
     * elsewhere) is left alone and counted as kept. NULL: remove none. */
    const char *output_root;
    /* Outputs recorded as "clipfarm://NODE_ID/PATH" (cf_locations.h) are
     * removed when NODE_ID is this node's, from under its data dir; other
     * nodes' are left to them. Both NULL: none of these is removed. */
    const char *node_id;
    const char *data_dir;
    /* The node's blob store for the uploads step (NULL: no such step). */
    struct cf_blob_store_t *blobs;
    int blob_keep_s;        /* default 7 days */
    bool start_thread;      /* false: nothing runs until cf_state_keeper_run_once */
    int idempotency_keep_s; /* default CF_DB_IDEMPOTENCY_KEEP_S (24 h) */
    int claim_max_expiries; /* expired claims after which a composition fails (default 3;
                               0: requeue for ever) */
    /* Whether this node is the coordinator now (called on the keeper's
     * thread every pass; NULL: always). */
    bool (*is_coordinator)(void *arg);
    void *coordinator_arg;
} cf_state_keeper_options_t;

void cf_state_keeper_options_default(cf_state_keeper_options_t *opts);

typedef struct {
    uint64_t passes;
    uint64_t reaped;        /* queue items returned from dead consumers */
    uint64_t reconciled;    /* compositions pushed again */
    uint64_t purged;        /* compositions deleted by retention */
    uint64_t files_removed; /* their output files removed */
    uint64_t files_kept;    /* outputs not removed (remote or outside output_root) */
    uint64_t blobs_removed; /* uploads removed from the blob store */
    uint64_t requeued;      /* compositions whose claim expired, back in the queue */
    uint64_t abandoned;     /* compositions failed after too many expired claims */
    uint64_t coordinating;  /* passes that ran the coordinator's steps */
    uint64_t errors;
} cf_state_keeper_stats_t;

/* Creates the keeper and, with start_thread, starts its thread. Returns NULL
 * with a reason in err on bad options. */
cf_state_keeper_t *cf_state_keeper_new(const cf_state_keeper_options_t *opts, char *err,
                                       size_t errlen);

/* Stops the thread (waiting for the pass in progress) and frees the keeper.
 * Safe on NULL; NULLs *self_p. */
void cf_state_keeper_destroy(cf_state_keeper_t **self_p);

/* Runs every step once now, whatever the intervals (for a keeper without
 * thread: tests, a CLI). Adds what it did to *done (may be NULL). Returns 0,
 * or -1 with the first failure in err (the other steps still ran). */
int cf_state_keeper_run_once(cf_state_keeper_t *keeper, cf_state_keeper_stats_t *done, char *err,
                             size_t errlen);

/* Totals since cf_state_keeper_new, for metrics. Thread-safe. */
void cf_state_keeper_stats(cf_state_keeper_t *keeper, cf_state_keeper_stats_t *stats);

#endif
