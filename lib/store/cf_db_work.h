/* cf_db_work: the coordinator's statements on the work list (the segments
 * table: one row per task of a composition, see sql/030_work.sql).
 *
 * Every statement here is a coordinator write and is fenced by the lease in
 * the same statement: it applies only while coordinator_lease holds exactly
 * FENCE's epoch and holder and has not expired (database clock). A refused
 * write returns CF_DB_STALE and changes nothing, however late it arrives.
 * A worker's result is accepted only with its assignment token (the epoch,
 * attempt and node the task was assigned with); a done task is never
 * written again. Return values are cf_db_rc_t (cf_db.h). */
#ifndef CF_DB_WORK_H
#define CF_DB_WORK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_db.h"

typedef struct {
    int64_t epoch;
    const char *holder; /* the coordinator's node id */
} cf_dbw_fence_t;

typedef struct {
    int index;
    cf_task_kind_t kind;
    int64_t frame_start, frame_end;
} cf_dbw_task_plan_t;

/* queued -> planning for ID, taken by the coordinator (an attempt counted,
 * started_at stamped, a "status" event). CF_DB_ILLEGAL when it is no longer
 * queued (cancelled, taken): drop the queue item. */
int cf_dbw_take(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, char *err, size_t errlen);

/* Stores the plan (PLAN_JSON, ENCODER) and its COUNT tasks (pending) and
 * moves planning -> encoding, in one statement. */
int cf_dbw_plan(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, const char *plan_json,
                const char *encoder, const cf_dbw_task_plan_t *tasks, int count, char *err,
                size_t errlen);

/* One task of a composition in progress, as the coordinator dispatches. */
typedef struct {
    char composition[CF_DB_ID_LEN];
    int index;
    cf_task_kind_t kind;
    int64_t frame_start, frame_end;
    cf_seg_state_t state;
    char *node_id; /* assigned to / encoded by; NULL when never assigned */
    int attempts;
    int64_t epoch; /* of the assignment */
    double progress;
    char *blob_hash; /* done: the result */
    int64_t size_bytes;
    cf_state_t comp_state; /* planning is never listed; encoding or assembling */
    cf_priority_t priority;
    double waiting_s;  /* since the composition was created */
    bool comp_waiting; /* the composition has a waiting reason (wait_reason) */
    char *encoder;     /* the composition's */
    char **excluded;   /* nodes that failed 3 of this composition's tasks */
    int excluded_count;
} cf_dbw_task_t;

/* Every task of every composition in encoding or assembling, by
 * composition (oldest first) then index. Read-only (no fence). */
int cf_dbw_open_tasks(cf_db_t *db, cf_dbw_task_t **tasks_p, int *count_p, char *err, size_t errlen);
void cf_dbw_tasks_free(cf_dbw_task_t **tasks_p, int count);

/* The plan a composition was given (caller frees), or NULL with err set. */
char *cf_dbw_plan_json(cf_db_t *db, const char *id, char *err, size_t errlen);

/* pending -> assigned to NODE (an attempt counted; the token becomes
 * (fence epoch, attempts, NODE)). *attempt_p gets the attempt. */
int cf_dbw_assign(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, int index,
                  const char *node, int *attempt_p, char *err, size_t errlen);

/* The worker's ACCEPT: assigned -> encoding for exactly that token. */
int cf_dbw_accept(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, int index,
                  const char *node, int attempt, char *err, size_t errlen);

/* PROGRESS: the task's fraction done (never goes down). */
int cf_dbw_progress(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, int index,
                    const char *node, int attempt, double progress, char *err, size_t errlen);

/* DONE: assigned/encoding -> done with its result, for exactly that token;
 * write-once. CF_DB_STALE when the token is not the task's (a late DONE of
 * an earlier attempt, a second DONE): discard it. */
int cf_dbw_done(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, int index,
                const char *node, int attempt, const char *blob_hash, int64_t size_bytes,
                double fps, int64_t encode_ms, char *err, size_t errlen);

/* The task goes back to pending (REJECT with COUNTED false: the attempt is
 * not counted; FAILED or a dead node with COUNTED true: a failure of NODE
 * is recorded), or to failed once it has had CF_DBW_MAX_ATTEMPTS counted
 * attempts. Only for that token. *failed_p (may be NULL) says whether it
 * failed for good. */
#define CF_DBW_MAX_ATTEMPTS 3
int cf_dbw_retry(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, int index,
                 const char *node, int attempt, bool counted, const char *reason, bool *failed_p,
                 char *err, size_t errlen);

/* A coordinator taking over: every assigned or encoding task goes back to
 * pending without counting an attempt (the assignments of the old epoch are
 * void), done tasks whose node is not in LIVE_NODES (COUNT ids) are
 * encoded again, and compositions still in planning go back to queued
 * (their ids in *requeued_p, caller frees with cf_db_strings_free). */
int cf_dbw_takeover(cf_db_t *db, const cf_dbw_fence_t *fence, const char *const *live_nodes,
                    int count, char ***requeued_p, int *requeued_count, char *err, size_t errlen);

/* A done segment or audio whose node NODE is gone (its blob with it) goes
 * back to pending, to be encoded again. CF_DB_STALE when it is not that. */
int cf_dbw_lost(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, int index,
                const char *node, const char *reason, char *err, size_t errlen);

/* encoding -> assembling. */
int cf_dbw_assembling(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, char *err,
                      size_t errlen);

/* The composition's progress (never goes down; a "progress" event). */
int cf_dbw_comp_progress(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, double progress,
                         char *err, size_t errlen);

/* assembling -> completed with its output. */
int cf_dbw_complete(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id,
                    const cf_db_output_t *output, char *err, size_t errlen);

/* Any active state -> failed with CODE and MESSAGE; its open tasks fail
 * too. */
int cf_dbw_fail(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, const char *code,
                const char *message, char *err, size_t errlen);

/* Why the composition waits (NULL: it does not). Written only when it
 * changes. */
int cf_dbw_wait_reason(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, const char *reason,
                       char *err, size_t errlen);

/* Compositions cancelled while tasks of theirs were assigned or encoding:
 * the tasks are closed (failed, "cancelled") and *nodes_p gets one
 * "COMPOSITION NODE" string per task that was out (caller frees with
 * cf_db_strings_free), so the coordinator can send CANCEL. */
int cf_dbw_close_cancelled(cf_db_t *db, const cf_dbw_fence_t *fence, char ***nodes_p, int *count_p,
                           char *err, size_t errlen);

#endif
