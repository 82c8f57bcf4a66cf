/* cf_state_keeper: the state layer's housekeeping, one thread per node:
 *   - reaper: returns the items of dead queue consumers (cf_queue_reap);
 *   - reconcile: pushes queued compositions no Redis list holds, at once when
 *     Redis lost its data, else every reconcile_interval_ms;
 *   - retention: deletes compositions past their retention (completed after
 *     keep_completed_s, failed and cancelled after keep_failed_s: the
 *     origin's 7 days and 24 h) and removes their output files;
 *   - uploads: removes this node's uploads no stored composition names any
 *     more, blob_keep_s after they were made (cf_db_blob_gc).
 * Any node may run one; every step is safe to run on many nodes at once
 * (the reaper is one atomic script, reconcile's duplicates are refused by
 * Postgres, purge skips rows another node is deleting). */
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
    int blob_keep_s;   /* default 7 days */
    bool start_thread; /* false: nothing runs until cf_state_keeper_run_once */
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
