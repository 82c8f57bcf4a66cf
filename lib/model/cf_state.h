/* cf_state: the composition state machine's names, shared by the data layer
 * (lib/store/cf_db), the queue, the REST API and the coordinator.
 *
 * A composition moves
 *     pending -> queued -> processing(planning -> encoding -> assembling)
 *             -> completed | failed | cancelled
 * and from any processing stage back to queued when its claim expires or
 * its renderer hands it back (sql/023_claims.sql).
 * Postgres stores the state as two columns, status (pending, queued,
 * processing, completed, failed, cancelled) and stage (planning, encoding,
 * assembling; NULL unless processing). cf_state_t names the eight combined
 * states. Which transitions are legal is decided by Postgres (the
 * composition_transitions table of sql/001_schema.sql and a trigger that
 * refuses anything else); this module only names and parses. */
#ifndef CF_STATE_H
#define CF_STATE_H

#include <stdbool.h>

typedef enum {
    CF_STATE_PENDING = 0,
    CF_STATE_QUEUED,
    CF_STATE_PLANNING,   /* status "processing", stage "planning" */
    CF_STATE_ENCODING,   /* status "processing", stage "encoding" */
    CF_STATE_ASSEMBLING, /* status "processing", stage "assembling" */
    CF_STATE_COMPLETED,
    CF_STATE_FAILED,
    CF_STATE_CANCELLED,
    CF_STATE_COUNT
} cf_state_t;

typedef enum {
    CF_PRIORITY_HIGH = 0,
    CF_PRIORITY_DEFAULT,
    CF_PRIORITY_LOW,
    CF_PRIORITY_COUNT
} cf_priority_t;

/* Segment (job) states. */
typedef enum {
    CF_SEG_PENDING = 0, /* planned, not yet assigned */
    CF_SEG_ASSIGNED,    /* sent to a node; attempts counts these */
    CF_SEG_ENCODING,    /* the node started encoding */
    CF_SEG_DONE,        /* encoded and stored as a blob (final) */
    CF_SEG_FAILED,      /* this attempt failed; may be assigned again */
    CF_SEG_COUNT
} cf_seg_state_t;

/* The state's own name: "pending", "queued", "planning", "encoding",
 * "assembling", "completed", "failed", "cancelled". NULL when out of range. */
const char *cf_state_name(cf_state_t state);

/* The status column / API "status" field: "processing" for the three
 * processing stages, otherwise the state's name. NULL when out of range. */
const char *cf_state_status(cf_state_t state);

/* The stage column / API "stage" field: "planning", "encoding" or
 * "assembling" for the processing states, NULL for the others. */
const char *cf_state_stage(cf_state_t state);

/* Parses a state name (cf_state_name's names). Returns 0, or -1 when NAME is
 * not one of them. */
int cf_state_parse(const char *name, cf_state_t *state);

/* Maps the two columns back to a state (stage may be NULL or ""). Returns 0,
 * or -1 for a combination the schema does not allow. */
int cf_state_from_columns(const char *status, const char *stage, cf_state_t *state);

/* True for completed, failed and cancelled: nothing changes them any more. */
bool cf_state_is_terminal(cf_state_t state);

/* True for the values of the status column (a list filter accepts these):
 * pending, queued, processing, completed, failed, cancelled. */
bool cf_status_is_valid(const char *status);

/* "high", "default", "low"; NULL when out of range. */
const char *cf_priority_name(cf_priority_t priority);

/* Parses "high", "default" or "low". Returns 0, or -1. */
int cf_priority_parse(const char *name, cf_priority_t *priority);

/* "pending", "assigned", "encoding", "done", "failed"; NULL when out of range. */
const char *cf_seg_state_name(cf_seg_state_t state);

/* Parses a segment state name. Returns 0, or -1. */
int cf_seg_state_parse(const char *name, cf_seg_state_t *state);

/* The tasks of a composition planned for the cluster: its segments, the
 * timeline's audio (once) and the assembly. Numbered as on the wire
 * (ASSIGN's kind). */
typedef enum { CF_TASK_SEGMENT = 0, CF_TASK_AUDIO = 1, CF_TASK_ASSEMBLE = 2 } cf_task_kind_t;

/* "segment", "audio", "assemble" (NULL for another value). */
const char *cf_task_kind_name(cf_task_kind_t kind);

/* Parses a kind name. Returns 0, or -1 when NAME is none of them. */
int cf_task_kind_parse(const char *name, cf_task_kind_t *kind);

#endif
