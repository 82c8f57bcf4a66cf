/* cf_executor: runs the tasks the coordinator assigns to this node (every
 * node has one, the coordinator's included).
 *
 * It answers every ASSIGN explicitly: ACCEPT when a slot is free and the
 * node offers the task's encoder, else REJECT with the reason. An accepted
 * task runs on a thread of its own, off the control plane: it fetches the
 * sources the task uses into the node-wide source cache (blob: sources and
 * the assembly's pieces are pulled from the peers that hold them over the
 * data plane), then runs the render stage in a child process (cf_task:
 * limits, no network, no secrets), sends PROGRESS at least once a second
 * and DONE (its result stored as a blob in the node's store) or FAILED with
 * the reason. CANCEL stops a composition's tasks within the child's grace
 * and removes their files. */
#ifndef CF_EXECUTOR_H
#define CF_EXECUTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_peer_auth.h"
#include "cf_render.h"
#include "cf_task.h"

typedef struct cf_executor_t cf_executor_t;
typedef struct cf_node_t cf_node_t;
typedef struct cf_blob_store_t cf_blob_store_t;

typedef struct {
    cf_node_t *node;         /* required: id, the work bus, load reports */
    cf_blob_store_t *blobs;  /* required: results go here */
    const char *blob_dir;    /* required: that store's directory */
    const char *work_parent; /* required: task scratch (best on the store's file system) */
    int slots;               /* tasks at once (default 1) */
    /* Encoders this node offers (NULL: every one it can open); an ASSIGN
     * for another is rejected. */
    const char *const *encoders;
    int encoder_count;
    /* Fetching: policy, S3, the source cache (blob_resolver is the
     * executor's own). */
    cf_render_opts_t fetch;
    const cf_peer_auth_t *peer_auth; /* signs pulls from peers */
    const char *binary;              /* the child (NULL: this program) */
    cf_task_limits_t limits;
    int threads; /* encoder threads per task (0: cores / slots) */
    void (*on_load)(void *arg, int free_slots, int in_flight);
    void *on_load_arg;
    /* Registers active_segments, segments_total{status},
     * segment_encode_seconds{encoder} and renders_total{result} here (may
     * be NULL). */
    struct cf_metrics_t *metrics;
} cf_executor_options_t;

void cf_executor_options_default(cf_executor_options_t *opts);

cf_executor_t *cf_executor_new(const cf_executor_options_t *opts, char *err, size_t errlen);

/* Cancels what runs (children killed after their grace), joins every task
 * thread. Safe on NULL; NULLs *self_p. */
void cf_executor_destroy(cf_executor_t **self_p);

typedef struct {
    uint64_t accepted, rejected, done, failed, cancelled;
    int running;
} cf_executor_stats_t;

void cf_executor_stats(cf_executor_t *self, cf_executor_stats_t *stats);

#endif
