/* cf_db: PostgreSQL access (libpq). All queries of clipfarm's state live
 * here (the cluster tables have theirs in cf_db_cluster).
 *
 * cf_db_t is a thread-safe connection pool. Every function below takes a
 * connection from the pool, runs one prepared, parameterised statement (never
 * SQL built from strings), and gives the connection back; each statement
 * commits on its own, so when a write function returns CF_DB_OK its effect is
 * durable in Postgres.
 *
 * Results: every function returns a cf_db_rc_t (0 on success, a negative code
 * otherwise) and writes a one-line reason into err. The codes are distinct so
 * callers can map them: CF_DB_NOT_FOUND -> 404, CF_DB_CONFLICT -> 409,
 * CF_DB_ILLEGAL / CF_DB_TERMINAL -> 409, CF_DB_INVALID -> 400,
 * CF_DB_UNAVAILABLE -> 503 (retry later).
 *
 * Postgres restarts: a pooled connection is checked before use (a dead socket
 * is noticed without a round trip) and replaced; while Postgres is down,
 * connecting is retried with exponential backoff until acquire_timeout_ms
 * runs out, then CF_DB_UNAVAILABLE. Reads that fail because the connection
 * broke are retried once on a fresh one. A write whose connection broke
 * after it was sent may or may not have committed:
 *   - state transitions (take, transition, complete, fail, cancel) find out
 *     by themselves (an operation id in their event) and answer as if the
 *     connection had not broken, unless Postgres stays away past the timeout;
 *     then a retry with the same caller-supplied operation id (cf_db_as_t,
 *     cf_db_claim_t) recognises the earlier attempt;
 *   - creation with an idempotency key: repeat it, the key answers;
 *   - progress and output updates are idempotent: repeat them;
 *   - creation without a key, cf_db_segments_create (repeat answers
 *     CF_DB_CONFLICT: check the segments), event appends (may duplicate) and
 *     API key inserts (CF_DB_CONFLICT) report CF_DB_UNAVAILABLE with the
 *     outcome unknown. */
#ifndef CF_DB_H
#define CF_DB_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_rc.h"
#include "cf_state.h"

/* Opens one connection to URL, waiting at most timeout_s to connect.
 * Returns the connection, or NULL with a one-line reason in err. */
PGconn *cf_db_connect(const char *url, int timeout_s, char *err, size_t errlen);

/* Copies the first line of libpq's message for CONN (or RES when not NULL)
 * into err. Returns err. */
char *cf_db_errstr(PGconn *conn, const PGresult *res, char *err, size_t errlen);

/* ------------------------------------------------------------------ results */

typedef enum {
    CF_DB_OK = CF_RC_OK,
    CF_DB_ERROR = CF_RC_ERROR, /* anything else (a bug, a constraint the input broke) */
    CF_DB_NOT_FOUND = -2,      /* no such composition / key / segment (a malformed id too) */
    CF_DB_CONFLICT = -3,       /* idempotency key reused with another body; id already exists;
                                  segments already planned */
    CF_DB_ILLEGAL = -4,        /* status transition not allowed from the current state */
    CF_DB_TERMINAL = -5,       /* cancel/fail of a composition already completed, failed or
                                  cancelled */
    CF_DB_UNAVAILABLE =
        CF_RC_UNAVAILABLE, /* Postgres unreachable, restarting, or statement timeout */
    CF_DB_INVALID = -7,    /* bad argument: malformed cursor, limit out of range, bad status
                              filter, malformed JSON */
    CF_DB_STALE = -8,      /* fenced: the writer's epoch no longer holds the lease, a newer
                              epoch already wrote this segment, a worker's result is for an
                              assignment that was replaced, or the caller's claim on the
                              composition no longer holds */
} cf_db_rc_t;

/* "ok", "error", "not found", "conflict", "illegal transition", "already terminal",
 * "database unavailable", "invalid argument", "stale epoch". */
const char *cf_db_rc_name(int rc);

/* Length of a composition id (canonical UUID text) including the NUL. */
#define CF_DB_ID_LEN 37

/* Retention defaults (the origin's result_ttl / failure_ttl for outputs). */
#define CF_DB_KEEP_COMPLETED_S (7 * 24 * 3600)
#define CF_DB_KEEP_FAILED_S    (24 * 3600)
/* An Idempotency-Key is honoured at least this long after the request that
 * first used it: retention keeps its composition (README, openapi.json). */
#define CF_DB_IDEMPOTENCY_KEEP_S (24 * 3600)
/* Default lifetime of a claim (the owner renews it every third of this). */
#define CF_DB_CLAIM_TTL_MS 30000
/* Longest operation id or claim token: 1..64 of [0-9A-Za-z_.:-]. */
#define CF_DB_OP_MAX 64

/* ------------------------------------------------------------------ pool */

typedef struct cf_db cf_db_t;

typedef struct {
    const char *url;          /* postgresql://... (copied) */
    int pool_size;            /* connections kept open when idle (default 30: origin pool_size) */
    int max_overflow;         /* extra connections under load, closed when given back
                                 (default 20: origin max_overflow) */
    int acquire_timeout_ms;   /* longest wait for a connection, including reconnecting while
                                 Postgres is down (default 30000: origin pool_timeout) */
    int connect_timeout_ms;   /* one connection attempt (default 5000) */
    int statement_timeout_ms; /* server-side statement_timeout of every statement
                                 (default 30000; 0 = none) */
    int recycle_s;            /* replace connections older than this (default 3600: origin
                                 pool_recycle) */
    int backoff_initial_ms;   /* delay after the first failed connect (default 50) */
    int backoff_max_ms;       /* delays double up to this (default 2000) */
} cf_db_options_t;

/* Fills OPTS with the defaults above (url NULL). */
void cf_db_options_default(cf_db_options_t *opts);

/* Creates a pool. Connects nothing yet (the first call does; cf_db_ping to
 * check now). Returns NULL with a reason in err when an option is out of
 * range. */
cf_db_t *cf_db_new(const cf_db_options_t *opts, char *err, size_t errlen);

/* Closes every connection and frees the pool. Safe on NULL; NULLs *self_p.
 * No other thread may be using the pool. */
void cf_db_destroy(cf_db_t **self_p);

/* Runs a trivial statement. CF_DB_OK or CF_DB_UNAVAILABLE. */
int cf_db_ping(cf_db_t *db, char *err, size_t errlen);

typedef struct {
    int open;           /* connections open now */
    int in_use;         /* of which lent out */
    uint64_t connects;  /* successful connects since cf_db_new */
    uint64_t failures;  /* failed connects */
    uint64_t discarded; /* connections found broken and replaced */
    uint64_t waits;     /* acquisitions that had to wait for a free connection */
} cf_db_stats_t;

/* Pool counters for /metrics. */
void cf_db_stats(cf_db_t *db, cf_db_stats_t *stats);

/* Called after every committed write to a composition, on the writer's thread
 * (cf_cache_attach installs one that invalidates the cache and publishes
 * progress). version is the row's new version (it grows by one with every
 * update); event is "created", "status", "progress", "output" or "error". */
typedef struct {
    const char *id;
    int64_t version;
    cf_state_t state;
    double progress;
    const char *event;
} cf_db_write_t;
typedef void (*cf_db_write_hook_t)(void *arg, const cf_db_write_t *write);

/* Installs HOOK (NULL removes it). Set it before other threads use DB. */
void cf_db_set_write_hook(cf_db_t *db, cf_db_write_hook_t hook, void *arg);

/* ------------------------------------------------------------------ compositions */

typedef struct {
    const char *title; /* may be NULL */
    cf_priority_t priority;
    const char *spec_json;       /* the validated composition; stored as jsonb */
    const char *api_key_id;      /* the submitting key, or NULL */
    const char *idempotency_key; /* NULL: no deduplication */
    const char *request_hash;    /* hash of the request body (any text, e.g. hex);
                                    required with idempotency_key */
    cf_state_t initial_state;    /* CF_STATE_PENDING or CF_STATE_QUEUED */
} cf_db_composition_new_t;

/* Stores a new composition and writes its id into id_out. With an
 * idempotency key already used by the same API key: the same request_hash
 * returns the existing composition's id with *existed = true; another hash
 * returns CF_DB_CONFLICT. existed may be NULL. */
int cf_db_composition_create(cf_db_t *db, const cf_db_composition_new_t *comp,
                             char id_out[CF_DB_ID_LEN], bool *existed, char *err, size_t errlen);

/* The composition as a JSON object, ready to serve:
 *   {"id","title","status","stage","priority","progress","spec","error":{"code","message"}|null,
 *    "output":{"location","size_bytes","duration_s","hash"}|null,"attempts","version",
 *    "created_at","updated_at","started_at","finished_at"}
 * (timestamps RFC 3339 UTC with microseconds, or null). *json_p is the
 * caller's; version_p may be NULL. */
int cf_db_composition_get_json(cf_db_t *db, const char *id, char **json_p, int64_t *version_p,
                               char *err, size_t errlen);

typedef struct {
    char id[CF_DB_ID_LEN];
    char *title;
    cf_state_t state;
    cf_priority_t priority;
    char *spec_json;
    double progress;
    int attempts;
    int64_t version;
    char *api_key_id;
    char *error_code;
    char *error_message;
    char *output_location;
    int64_t output_size_bytes;
    double output_duration_s;
    char *output_hash;
} cf_db_composition_t;

/* The composition as a struct (for the coordinator). Free with
 * cf_db_composition_clear. */
int cf_db_composition_get(cf_db_t *db, const char *id, cf_db_composition_t *comp, char *err,
                          size_t errlen);
void cf_db_composition_clear(cf_db_composition_t *comp);

#define CF_DB_LIST_MAX 100

/* Lists compositions newest first (created_at, then id, descending) as a JSON
 * array of the objects cf_db_composition_get_json makes, without "spec".
 * status: a status column value (cf_status_is_valid) or NULL for all.
 * limit: 1..CF_DB_LIST_MAX. cursor: NULL for the first page, else a
 * *next_cursor_p from the previous page (opaque; a malformed one is
 * CF_DB_INVALID). *next_cursor_p is NULL after the last page. Both outputs
 * are the caller's. */
int cf_db_composition_list(cf_db_t *db, const char *status, int limit, const char *cursor,
                           char **json_array_p, char **next_cursor_p, char *err, size_t errlen);

/* The list cursor, base64url of "v1:<microseconds since the epoch>:<uuid>":
 * opaque to clients, read only here and by its fuzz target. Encode returns
 * a new string (NULL when out of memory or too long); decode returns 0 with
 * both parts, or -1 for anything this module did not make. */
char *cf_db_cursor_encode(const char *epoch_us, const char *id);
int cf_db_cursor_decode(const char *cursor, char epoch_us[24], char id[CF_DB_ID_LEN]);

/* cf_db_composition_list of the compositions owned by API key OWNER only
 * (NULL: everyone's, as cf_db_composition_list). */
int cf_db_composition_list_owned(cf_db_t *db, const char *owner, const char *status, int limit,
                                 const char *cursor, char **json_array_p, char **next_cursor_p,
                                 char *err, size_t errlen);

/* Lost answers: every transition below (take, complete, fail, cancel too)
 * records an operation id in its event. When the connection breaks after
 * the statement was sent, the function waits for Postgres (up to the
 * acquire timeout), looks the id up, and answers CF_DB_OK when its statement
 * had committed (*from_p is then CF_STATE_COUNT: unknown), or runs it again
 * when it had not. When Postgres stays away longer it answers
 * CF_DB_UNAVAILABLE with the outcome unknown: call again with the SAME
 * operation id (cf_db_as_t.op_id) and the next call recognises an earlier
 * attempt that committed, answering CF_DB_OK instead of refusing it. Calls
 * without an operation id get a fresh one each: there a retry that is
 * refused may mean the first attempt succeeded (check the state).
 *
 * Moves a composition to state TO when the transition from its current state
 * is legal (the table in sql/001_schema.sql and sql/023_claims.sql):
 *   pending -> queued; queued -> planning; planning -> encoding;
 *   encoding -> assembling; assembling -> completed;
 *   planning, encoding, assembling -> queued (a claim expired or was
 *   handed back);
 *   every non-terminal state -> failed, cancelled.
 * started_at is set on entering planning, finished_at on a terminal state;
 * leaving processing ends the claim, and a composition back in queued has
 * progress 0. Returns CF_DB_ILLEGAL (nothing changed) otherwise, with the
 * current state in *from_p (may be NULL). A "status" event records each
 * applied transition. */
int cf_db_composition_transition(cf_db_t *db, const char *id, cf_state_t to, cf_state_t *from_p,
                                 char *err, size_t errlen);

/* Who makes a transition, for the owner of a claim (cf_db_composition_claim)
 * and for callers that retry. */
typedef struct {
    /* The claim token cf_db_composition_claim was given: the transition
     * applies only while that claim holds (CF_DB_STALE when it expired,
     * was handed back, or another take replaced it). NULL: no check (the
     * API's cancel, tests). */
    const char *claim;
    /* This operation's id, the same on every retry of it (1..CF_DB_OP_MAX
     * of [0-9A-Za-z_.:-], unique per composition). NULL: a fresh one per
     * call. */
    const char *op_id;
    /* The event's "reason" (a short token, e.g. "node_stopped"); may be
     * NULL. */
    const char *reason;
} cf_db_as_t;

/* cf_db_composition_transition on behalf of AS (may be NULL). CF_DB_STALE
 * when AS names a claim that no longer holds. */
int cf_db_composition_transition_as(cf_db_t *db, const char *id, cf_state_t to,
                                    const cf_db_as_t *as, cf_state_t *from_p, char *err,
                                    size_t errlen);

/* A claim: who takes a composition, and for how long. */
typedef struct {
    const char *owner; /* the node that renders it (claimed_by): renewals name it */
    const char *taker; /* recorded as "by" in the status event (e.g. a slot's consumer
                          name); NULL: the owner */
    /* The take's operation id, which is also the claim's token: give the
     * same on every retry of this take, and to every later write of the
     * owner (cf_db_as_t.claim). 1..CF_DB_OP_MAX of [0-9A-Za-z_.:-]. */
    const char *token;
    int ttl_ms; /* the claim expires this long after the take (database clock) unless
                   renewed; 0: CF_DB_CLAIM_TTL_MS */
} cf_db_claim_t;

/* The queue consumer's step: queued -> planning, attempts + 1, recording
 * the claim. CF_DB_OK when this call took it or an earlier call with the
 * same token did and the claim still holds (a lost answer); CF_DB_ILLEGAL
 * when it is not queued (another consumer took it, a duplicate queue item,
 * cancelled): drop the item. */
int cf_db_composition_claim(cf_db_t *db, const char *id, const cf_db_claim_t *claim, char *err,
                            size_t errlen);

/* cf_db_composition_claim by TAKER (owner and taker), with a fresh token and
 * the default TTL: a retry after CF_DB_UNAVAILABLE cannot recognise an
 * earlier attempt (use cf_db_composition_claim for that). */
int cf_db_composition_take(cf_db_t *db, const char *id, const char *taker, char *err,
                           size_t errlen);

/* Extends by TTL_MS (from now, database clock) the claims of OWNER whose
 * tokens are TOKENS[0..COUNT-1], each only while it still holds (not
 * expired, not replaced, still processing): an expired claim is never
 * revived. held[i] (may be NULL) tells whether TOKENS[i] was renewed; one
 * that was not is lost: stop working on it. */
int cf_db_claims_renew(cf_db_t *db, const char *owner, const char *const *tokens, int count,
                       int ttl_ms, bool *held, char *err, size_t errlen);

typedef struct {
    char id[CF_DB_ID_LEN];
    cf_priority_t priority;
    cf_state_t state; /* CF_STATE_QUEUED (push it again) or CF_STATE_FAILED */
    char owner[64];   /* whose claim expired ("" when unknown) */
} cf_db_expired_t;

/* The claim sweep (the coordinator's housekeeping): every processing
 * composition whose claim expired (database clock) goes back to queued, or
 * to failed with code "claim_expired" when this makes MAX_EXPIRIES expiries
 * of its claims (0: never), ending the claim; a "status" event records it
 * ("by": SWEEPER, "reason": "claim_expired", "owner"). At most MAX_ROWS per
 * call; *items_p (caller's, free()) lists what it did so the caller pushes
 * the queued ones on the queue. */
int cf_db_claims_expire(cf_db_t *db, const char *sweeper, int max_expiries, int max_rows,
                        cf_db_expired_t **items_p, int *count_p, char *err, size_t errlen);

/* Sets progress (0..1; never goes down) while processing; CF_DB_ILLEGAL in
 * any other state, CF_DB_INVALID outside 0..1. Appends a "progress" event. */
int cf_db_composition_set_progress(cf_db_t *db, const char *id, double progress, char *err,
                                   size_t errlen);

typedef struct {
    const char *location; /* path or URL of the output file */
    int64_t size_bytes;
    double duration_s;
    const char *hash; /* content hash (hex) */
} cf_db_output_t;

/* Records the output while processing; CF_DB_ILLEGAL in any other state. */
int cf_db_composition_set_output(cf_db_t *db, const char *id, const cf_db_output_t *output,
                                 char *err, size_t errlen);

/* assembling -> completed, recording OUTPUT (may be NULL when set_output ran
 * before) and progress 1, in one statement. */
int cf_db_composition_complete(cf_db_t *db, const char *id, const cf_db_output_t *output, char *err,
                               size_t errlen);

/* Whether any composition has LOCATION as its output (*used_p): equal
 * outputs are one blob, removed only when none is left pointing at it. */
int cf_db_output_referenced(cf_db_t *db, const char *location, bool *used_p, char *err,
                            size_t errlen);

/* Any non-terminal state -> failed with the error CODE (short machine token,
 * e.g. "source_unreachable") and MESSAGE. CF_DB_TERMINAL when already
 * completed, failed or cancelled. */
int cf_db_composition_fail(cf_db_t *db, const char *id, const char *code, const char *message,
                           char *err, size_t errlen);

/* cf_db_composition_complete and cf_db_composition_fail on behalf of AS
 * (may be NULL; see cf_db_composition_transition_as): CF_DB_STALE when its
 * claim no longer holds. */
int cf_db_composition_complete_as(cf_db_t *db, const char *id, const cf_db_output_t *output,
                                  const cf_db_as_t *as, char *err, size_t errlen);
int cf_db_composition_fail_as(cf_db_t *db, const char *id, const char *code, const char *message,
                              const cf_db_as_t *as, char *err, size_t errlen);

/* Any non-terminal state -> cancelled. CF_DB_TERMINAL (nothing changed) when
 * already completed, failed or cancelled; *from_p gets the state it was in
 * (may be NULL). */
int cf_db_composition_cancel(cf_db_t *db, const char *id, cf_state_t *from_p, char *err,
                             size_t errlen);

/* Number of compositions in each state, for metrics. */
int cf_db_composition_counts(cf_db_t *db, int64_t counts[CF_STATE_COUNT], char *err, size_t errlen);

typedef struct {
    char id[CF_DB_ID_LEN];
    cf_priority_t priority;
} cf_db_queued_t;

/* The queued compositions, oldest first, at most MAX (the reconcile loop
 * pushes those no Redis list holds). *items_p is the caller's (free()). */
int cf_db_composition_queued(cf_db_t *db, int max, cf_db_queued_t **items_p, int *count_p,
                             char *err, size_t errlen);

typedef struct {
    char id[CF_DB_ID_LEN];
    cf_state_t state;
    char *output_location; /* NULL when it had none */
} cf_db_purged_t;

/* Deletes compositions (with their segments and events) that finished more
 * than completed_keep_s (completed) or failed_keep_s (failed, cancelled) ago,
 * at most MAX_ROWS per call, and returns what it deleted so the caller
 * removes the output files. A composition made with an idempotency key is
 * kept until idempotency_keep_s after its creation too, however short its
 * retention: a client retrying within that window gets it back, never a
 * second composition. Free with cf_db_purged_free. */
int cf_db_purge_expired(cf_db_t *db, int completed_keep_s, int failed_keep_s,
                        int idempotency_keep_s, int max_rows, cf_db_purged_t **purged_p,
                        int *count_p, char *err, size_t errlen);
void cf_db_purged_free(cf_db_purged_t **purged_p, int count);

/* ------------------------------------------------------------------ segments */

typedef struct {
    int index;                /* 0-based position in the output */
    int64_t frame_start;      /* first output frame */
    int64_t frame_end;        /* one past the last output frame */
    const char *sources_json; /* JSON array of source ranges (may be NULL: []) */
} cf_db_segment_plan_t;

/* Stores the plan's COUNT segments (state pending) for a composition, all in
 * one statement: the local renderer's record (EPOCH must be 0; a
 * coordinator plans with cf_db_segments_create_fenced, anything else is
 * CF_DB_INVALID). CF_DB_CONFLICT when the composition already has segments,
 * CF_DB_NOT_FOUND when it does not exist. */
int cf_db_segments_create(cf_db_t *db, const char *composition_id, int64_t epoch,
                          const cf_db_segment_plan_t *plan, int count, char *err, size_t errlen);

/* Fields of cf_db_segment_update_t to write. */
enum {
    CF_SEG_F_STATE = 1 << 0,
    CF_SEG_F_PROGRESS = 1 << 1,
    CF_SEG_F_NODE = 1 << 2,
    CF_SEG_F_BLOB = 1 << 3, /* blob_hash and size_bytes */
    CF_SEG_F_FPS = 1 << 4,
    CF_SEG_F_TIMINGS = 1 << 5, /* fetch_ms and encode_ms */
};

typedef struct {
    unsigned fields; /* CF_SEG_F_* bits: which members below to write */
    cf_seg_state_t state;
    double progress;
    const char *node_id;
    const char *blob_hash;
    int64_t size_bytes;
    double encode_fps;
    int64_t fetch_ms;
    int64_t encode_ms;
} cf_db_segment_update_t;

/* Updates one segment as the local renderer (EPOCH must be 0; a
 * coordinator uses cf_db_segment_update_fenced, anything else is
 * CF_DB_INVALID). CF_DB_STALE when a coordinator's epoch wrote it.
 * Entering assigned counts an attempt and stamps assigned_at; encoding
 * stamps started_at; done/failed stamp finished_at. Done is write-once: a
 * done segment changes no more (CF_DB_ILLEGAL), except that repeating its
 * done with the same blob (or none) answers CF_DB_OK and writes nothing. */
int cf_db_segment_update(cf_db_t *db, const char *composition_id, int index, int64_t epoch,
                         const cf_db_segment_update_t *update, char *err, size_t errlen);

typedef struct {
    int index;
    int64_t frame_start, frame_end;
    char *sources_json;
    cf_seg_state_t state;
    double progress;
    char *node_id; /* NULL when never assigned */
    int attempts;
    int64_t epoch;          /* the coordinator epoch of the last write (0: local) */
    int64_t assigned_epoch; /* the epoch that assigned it; 0 when never */
    char *blob_hash;        /* NULL until done */
    int64_t size_bytes;
    double encode_fps;
    int64_t fetch_ms, encode_ms;
    char *assigned_at, *started_at, *finished_at; /* RFC 3339, or NULL */
    cf_task_kind_t kind; /* segment, or the audio / assembly task (sql/030_work.sql) */
    char *error;         /* the last attempt's failure, or NULL */
} cf_db_segment_t;

/* The segments of a composition in index order. Free with
 * cf_db_segments_free. An unknown composition gives zero segments. */
int cf_db_segments_list(cf_db_t *db, const char *composition_id, cf_db_segment_t **segs_p,
                        int *count_p, char *err, size_t errlen);
void cf_db_segments_free(cf_db_segment_t **segs_p, int count);

typedef struct {
    char node_id[64];
    int64_t segments; /* finished in the last 10 minutes */
    double fps;       /* their mean encode frames/s */
} cf_db_node_rate_t;

/* What each node encoded lately (caller frees *rates_p). */
int cf_db_node_rates(cf_db_t *db, cf_db_node_rate_t **rates_p, int *count_p, char *err,
                     size_t errlen);
/* ------------------------------------------------------------------ fenced writes */

/* A coordinator's fence token: the epoch at which HOLDER (its node id) holds
 * the coordinator lease (coordinator_lease, see cf_db_cluster.h). */
typedef struct {
    int64_t epoch;
    char holder[CF_DB_ID_LEN];
} cf_fence_token_t;

/* The writes a coordinator makes to segments and compositions. Each is one
 * statement that first locks the rows it changes, then checks the lease:
 * it changes something only while the lease row carries TOKEN's epoch and
 * holder and has not expired by the database clock, and returns
 * CF_DB_STALE, changing nothing, otherwise. The lease row stays locked (FOR
 * SHARE) until the statement commits, so a successor's acquire waits for it
 * and no write of an epoch lands after the next epoch began. */

/* cf_db_segments_create by a coordinator: the segments carry TOKEN's epoch. */
int cf_db_segments_create_fenced(cf_db_t *db, const cf_fence_token_t *token,
                                 const char *composition_id, const cf_db_segment_plan_t *plan,
                                 int count, char *err, size_t errlen);

/* cf_db_segment_update by a coordinator (TOKEN's epoch becomes the
 * segment's; CF_DB_STALE also when a newer epoch wrote it). */
int cf_db_segment_update_fenced(cf_db_t *db, const cf_fence_token_t *token,
                                const char *composition_id, int index,
                                const cf_db_segment_update_t *update, char *err, size_t errlen);

/* An assignment token: which assignment of a segment a worker works on. */
typedef struct {
    int64_t epoch; /* the coordinator epoch that assigned it */
    int attempt;   /* the segment's attempt number (attempts after assigning) */
    char node[64]; /* the worker's node id */
} cf_db_assignment_t;

/* Assigns segment INDEX (not done) to NODE as its next attempt (state
 * assigned, attempts + 1, progress and blob cleared), under TOKEN; the
 * assignment token the worker's result must carry goes to *assignment.
 * CF_DB_ILLEGAL when the segment is done. */
int cf_db_segment_assign_fenced(cf_db_t *db, const cf_fence_token_t *token,
                                const char *composition_id, int index, const char *node,
                                cf_db_assignment_t *assignment, char *err, size_t errlen);

/* A worker's result for ASSIGNMENT: UPDATE's state (encoding, done or failed
 * only; CF_DB_INVALID otherwise), progress, blob, fps and timings (its
 * node field is not used). Applied only while ASSIGNMENT is the segment's
 * current assignment and it is assigned or encoding: the result of an
 * assignment replaced since (reassigned, requeued, another epoch) is
 * CF_DB_STALE. Done is write-once: a done segment changes no more
 * (CF_DB_ILLEGAL), except that its own assignment repeating done with the
 * same blob answers CF_DB_OK (a lost answer). TOKEN: the coordinator that
 * relays the result (its lease is checked too), or NULL when the worker
 * writes it itself. */
int cf_db_segment_report(cf_db_t *db, const cf_fence_token_t *token,
                         const cf_db_assignment_t *assignment, const char *composition_id,
                         int index, const cf_db_segment_update_t *update, char *err, size_t errlen);

/* cf_db_composition_transition by a coordinator (its "status" event records
 * the token's epoch and holder). OUTPUT (completion; may be NULL), CODE and
 * MESSAGE (failure; may be NULL) as in cf_db_composition_complete / _fail.
 * CF_DB_STALE when the fence refused; CF_DB_ILLEGAL, with the current state
 * in *from_p (may be NULL), when the transition is not legal. A lost answer
 * is resolved as in cf_db_composition_transition. */
int cf_db_composition_transition_fenced(cf_db_t *db, const cf_fence_token_t *token, const char *id,
                                        cf_state_t to, const cf_db_output_t *output,
                                        const char *code, const char *message, cf_state_t *from_p,
                                        char *err, size_t errlen);

/* ------------------------------------------------------------------ events */

/* Appends an event (TYPE: short token; PAYLOAD_JSON: a JSON value or NULL)
 * to a composition's trail; *id_p (may be NULL) gets its id, which grows
 * with every event. */
int cf_db_event_append(cf_db_t *db, const char *composition_id, const char *type,
                       const char *payload_json, int64_t *id_p, char *err, size_t errlen);

typedef struct {
    int64_t id;
    char *type;
    char *payload_json; /* "null" when it had none */
    char *at;           /* RFC 3339 */
} cf_db_event_t;

/* The composition's events with id > AFTER_ID in id order, at most LIMIT
 * (1..1000): a Server-Sent Events stream resumes from Last-Event-ID. Free
 * with cf_db_events_free. The events that transitions and progress
 * updates append are made while that write holds the composition's row lock,
 * so they commit in id order and a reader never skips one; events from
 * concurrent cf_db_event_append calls on one composition may commit out of
 * id order. */
int cf_db_events_since(cf_db_t *db, const char *composition_id, int64_t after_id, int limit,
                       cf_db_event_t **events_p, int *count_p, char *err, size_t errlen);
void cf_db_events_free(cf_db_event_t **events_p, int count);

/* ------------------------------------------------------------------ api keys */

/* Stores an API key: ID (public part, the API module's format), NAME, and the
 * keyed hash of its secret (never the secret). CF_DB_CONFLICT when ID exists. */
int cf_db_api_key_insert(cf_db_t *db, const char *id, const char *name, const unsigned char *hash,
                         size_t hash_len, char *err, size_t errlen);

typedef struct {
    char *id;
    char *name;
    unsigned char *hash; /* NULL in cf_db_api_key_list's results */
    size_t hash_len;
    char *created_at;
    char *revoked_at; /* NULL while valid */
    bool admin;       /* sees and manages every key's compositions */
} cf_db_api_key_t;

/* cf_db_api_key_insert (which makes an ordinary key) with its scope. */
int cf_db_api_key_insert_scoped(cf_db_t *db, const char *id, const char *name,
                                const unsigned char *hash, size_t hash_len, bool admin, char *err,
                                size_t errlen);

/* ------------------------------------------------------------------ tenancy */

/* Copies the id of the API key that created composition ID into OWNER (""
 * when it was created without one). CF_DB_NOT_FOUND. */
int cf_db_composition_owner(cf_db_t *db, const char *id, char *owner, size_t ownerlen, char *err,
                            size_t errlen);

/* Records that KEY_ID ("" without auth) uploaded blob HASH (64 hex) of
 * SIZE_BYTES to NODE_ID (again: refreshes the row's age). */
int cf_db_blob_record(cf_db_t *db, const char *hash, const char *key_id, const char *node_id,
                      int64_t size_bytes, char *err, size_t errlen);

/* Bytes of uploads KEY_ID holds (for --upload-quota-bytes). */
int cf_db_blob_usage(cf_db_t *db, const char *key_id, int64_t *bytes_p, char *err, size_t errlen);

/* Whether KEY_ID uploaded blob HASH (a blob: source is the uploader's). */
int cf_db_blob_owned(cf_db_t *db, const char *hash, const char *key_id, bool *owned_p, char *err,
                     size_t errlen);

/* Drops at most MAX_ROWS upload rows of NODE_ID older than KEEP_S seconds
 * that no stored composition names as a clip source, and answers the
 * hashes of blobs no upload row of this node keeps any more (their files
 * may go). Free *hashes_p with cf_db_strings_free. */
int cf_db_blob_gc(cf_db_t *db, const char *node_id, int keep_s, int max_rows, char ***hashes_p,
                  int *count_p, char *err, size_t errlen);
void cf_db_strings_free(char ***items_p, int count);

/* ------------------------------------------------------------------ s3, webhooks */

/* Records where the output was uploaded ("s3://BUCKET/KEY") while the
 * composition is processing (before it completes); CF_DB_ILLEGAL after. */
int cf_db_composition_set_s3_location(cf_db_t *db, const char *id, const char *location, char *err,
                                      size_t errlen);

/* A webhook to deliver (made by a trigger when a composition with a
 * webhook_url reaches a terminal status; see sql/021_s3_webhooks.sql). */
typedef struct {
    int64_t id;
    char composition_id[CF_DB_ID_LEN];
    char *api_key_id; /* whose secret signs it ("" without auth) */
    char *url;
    char *body;   /* the same bytes on every attempt */
    int attempts; /* including this one */
    double age_s; /* since the terminal status */
} cf_db_webhook_t;

/* Claims at most MAX due deliveries nobody holds for LEASE_S seconds as
 * HOLDER (counting the attempt). Free with cf_db_webhooks_free. */
int cf_db_webhook_claim(cf_db_t *db, const char *holder, int lease_s, int max,
                        cf_db_webhook_t **items_p, int *count_p, char *err, size_t errlen);
void cf_db_webhooks_free(cf_db_webhook_t **items_p, int count);

/* Ends HOLDER's attempt at delivery ID: delivered, given up, or due again
 * in RETRY_IN_MS. */
int cf_db_webhook_finish(cf_db_t *db, int64_t id, const char *holder, bool delivered,
                         int64_t retry_in_ms, bool give_up, char *err, size_t errlen);

/* Finds a key by id (revoked ones too: check revoked_at). Free with
 * cf_db_api_key_clear. */
int cf_db_api_key_find(cf_db_t *db, const char *id, cf_db_api_key_t *key, char *err, size_t errlen);
void cf_db_api_key_clear(cf_db_api_key_t *key);

/* Revokes a key (revoking a revoked key is CF_DB_OK). CF_DB_NOT_FOUND. */
int cf_db_api_key_revoke(cf_db_t *db, const char *id, char *err, size_t errlen);

/* All keys, oldest first, without hashes. Free with cf_db_api_keys_free. */
int cf_db_api_key_list(cf_db_t *db, cf_db_api_key_t **keys_p, int *count_p, char *err,
                       size_t errlen);
void cf_db_api_keys_free(cf_db_api_key_t **keys_p, int count);

/* ------------------------------------------------------------------ tests */

/* Runs EXPLAIN on the pool's prepared statement NAME (see cf_db.c) with
 * PARAMS and returns the plan text (caller's). For tests that check which
 * index a query uses. */
int cf_db_explain(cf_db_t *db, const char *name, int nparams, const char *const *params,
                  char **plan_p, char *err, size_t errlen);

#endif
