#define _GNU_SOURCE
#include "cf_json.h"
#include "cf_db.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cf_log.h"

/* ====================================================================== one connection */

char *cf_db_errstr(PGconn *conn, const PGresult *res, char *err, size_t errlen)
{
    const char *msg = res ? PQresultErrorMessage(res) : NULL;
    if (!msg || !*msg)
        msg = conn ? PQerrorMessage(conn) : "no connection";
    /* libpq messages span lines ("connection to server ... failed: \n ..."):
     * join them into one line. */
    size_t out = 0;
    for (const char *p = msg; *p && out + 1 < errlen; p++) {
        char c = (*p == '\n' || *p == '\t') ? ' ' : *p;
        if (c == ' ' && (out == 0 || err[out - 1] == ' '))
            continue;
        err[out++] = c;
    }
    while (out > 0 && err[out - 1] == ' ')
        out--;
    err[out] = '\0';
    return err;
}

static void s_ignore_notice(void *arg, const char *message)
{
}

PGconn *cf_db_connect(const char *url, int timeout_s, char *err, size_t errlen)
{
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%d", timeout_s > 0 ? timeout_s : 10);
    const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
    const char *values[] = {url, timeout, "clipfarm", NULL};
    PGconn *conn = PQconnectdbParams(keys, values, 1 /* expand dbname as a URL */);
    if (!conn) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        cf_db_errstr(conn, NULL, err, errlen);
        PQfinish(conn);
        return NULL;
    }
    /* Notices (e.g. "relation already exists, skipping") are not errors. */
    PQsetNoticeProcessor(conn, s_ignore_notice, NULL);
    return conn;
}

const char *cf_db_rc_name(int rc)
{
    switch (rc) {
        case CF_DB_OK:
            return "ok";
        case CF_DB_NOT_FOUND:
            return "not found";
        case CF_DB_CONFLICT:
            return "conflict";
        case CF_DB_ILLEGAL:
            return "illegal transition";
        case CF_DB_TERMINAL:
            return "already terminal";
        case CF_DB_UNAVAILABLE:
            return "database unavailable";
        case CF_DB_INVALID:
            return "invalid argument";
        case CF_DB_STALE:
            return "stale epoch";
        default:
            return "error";
    }
}

/* ====================================================================== statements */

/* Timestamps as RFC 3339 UTC with microseconds. */
#define S_TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* The JSON object of a composition (without spec), in a stable key order
 * (json_build_object keeps the order; jsonb would sort the keys). */
#define S_COMPOSITION_FIELDS                                                                       \
    "'id', c.id, 'title', c.title, 'status', c.status, 'stage', c.stage, "                         \
    "'priority', c.priority, 'progress', c.progress, 'attempts', c.attempts, "                     \
    "'api_key_id', c.api_key_id, "                                                                 \
    "'error', CASE WHEN c.error_code IS NULL THEN NULL ELSE json_build_object("                    \
    "'code', c.error_code, 'message', c.error_message) END, "                                      \
    "'output', CASE WHEN c.output_location IS NULL THEN NULL ELSE json_build_object("              \
    "'location', c.output_location, 's3', c.output_s3_location, "                                  \
    "'size_bytes', c.output_size_bytes, "                                                          \
    "'duration_s', c.output_duration_s, 'hash', c.output_hash) END, "                              \
    "'version', c.version, 'created_at', " S_TS(                                                   \
        "c.created_at") ", "                                                                       \
                        "'updated_at', " S_TS("c.updated_at") ", 'started_at', " S_TS(             \
                            "c.started_at") ", "                                                   \
                                            "'finished_at', " S_TS("c.finished_at")

/* The keyset cursor's position: microseconds since the epoch (exact: extract
 * returns numeric) and id. */
#define S_CURSOR_COLUMNS "(extract(epoch FROM c.created_at) * 1000000)::bigint, c.id"
#define S_CURSOR_BEFORE                                                                            \
    "(c.created_at, c.id) < (timestamptz 'epoch' + $%d::bigint * interval '1 microsecond', "       \
    "$%d::uuid)"

#define S_LIST_SELECT                                                                              \
    "SELECT json_build_object(" S_COMPOSITION_FIELDS ")::text, " S_CURSOR_COLUMNS                  \
    " FROM compositions c "
#define S_LIST_ORDER " ORDER BY c.created_at DESC, c.id DESC LIMIT "

/* One statement for every transition: $1 id, $2 target state, $3 its status,
 * $4 its stage, $5 who (event payload), $6/$7 error code/message,
 * $8..$11 output, $12 this call's operation id (event payload: tells after
 * a lost answer whether the statement committed). The EXISTS is re-evaluated on the newest row
 * version when a concurrent update got there first, so a transition is only ever applied from a
 * state the table allows. prev reports the state before. */
#define S_TRANSITION_SQL                                                                           \
    "WITH prev AS (SELECT cf_state(status, stage) AS state FROM compositions WHERE id = "          \
    "$1::uuid),"                                                                                   \
    " upd AS (UPDATE compositions c SET status = $3::text, stage = $4::text,"                      \
    "  attempts = c.attempts + CASE WHEN $2::text = 'planning' THEN 1 ELSE 0 END,"                 \
    "  started_at = CASE WHEN $2::text = 'planning' THEN now() ELSE c.started_at END,"             \
    "  finished_at = CASE WHEN $2::text IN ('completed', 'failed', 'cancelled') THEN now()"        \
    "                ELSE c.finished_at END,"                                                      \
    "  progress = CASE WHEN $2::text = 'completed' THEN 1 ELSE c.progress END,"                    \
    "  error_code = coalesce($6::text, c.error_code),"                                             \
    "  error_message = coalesce($7::text, c.error_message),"                                       \
    "  output_location = coalesce($8::text, c.output_location),"                                   \
    "  output_size_bytes = coalesce($9::bigint, c.output_size_bytes),"                             \
    "  output_duration_s = coalesce($10::float8, c.output_duration_s),"                            \
    "  output_hash = coalesce($11::text, c.output_hash)"                                           \
    "  WHERE c.id = $1::uuid AND EXISTS (SELECT 1 FROM composition_transitions t"                  \
    "   WHERE t.from_state = cf_state(c.status, c.stage) AND t.to_state = $2::text)"               \
    "  RETURNING c.id, c.version, c.progress),"                                                    \
    " ev AS (INSERT INTO events (composition_id, type, payload)"                                   \
    "  SELECT upd.id, 'status', jsonb_strip_nulls(jsonb_build_object('from', (SELECT state FROM "  \
    "prev), 'to', $2::text, 'by', $5::text, 'error', $6::text, 'op', $12::text)) FROM upd)"        \
    " SELECT (SELECT state FROM prev), upd.version, upd.progress"                                  \
    " FROM (SELECT 1) one LEFT JOIN upd ON true"

typedef enum {
    S_PING,
    S_CREATE,
    S_FIND_IDEMPOTENT,
    S_GET_JSON,
    S_GET,
    S_LIST,
    S_LIST_AFTER,
    S_LIST_STATUS,
    S_LIST_STATUS_AFTER,
    S_TRANSITION,
    S_PROGRESS,
    S_OUTPUT,
    S_COUNTS,
    S_QUEUED,
    S_PURGE,
    S_SEGMENTS_CREATE,
    S_SEGMENT_UPDATE,
    S_SEGMENTS_LIST,
    S_EVENT_APPEND,
    S_EVENTS_SINCE,
    S_KEY_INSERT,
    S_KEY_FIND,
    S_KEY_REVOKE,
    S_KEY_LIST,
    S_OP_APPLIED,
    S_LIST_OWNED,
    S_LIST_OWNED_AFTER,
    S_LIST_OWNED_STATUS,
    S_LIST_OWNED_STATUS_AFTER,
    S_OWNER,
    S_KEY_INSERT_SCOPED,
    S_BLOB_RECORD,
    S_BLOB_USAGE,
    S_BLOB_OWNED,
    S_BLOB_GC,
    S_S3_LOCATION,
    S_WEBHOOK_CLAIM,
    S_WEBHOOK_DONE,
    S_WEBHOOK_RETRY,
    S_COUNT
} s_stmt_t;

typedef struct {
    const char *name;
    const char *sql;
    bool readonly; /* safe to run again after the connection broke mid-statement */
} s_stmt_def_t;

static const s_stmt_def_t s_stmts[S_COUNT] = {
    [S_PING] = {"ping", "SELECT 1", true},
    [S_CREATE] = {"composition_create",
                  "WITH ins AS (INSERT INTO compositions"
                  " (title, priority, spec, api_key_id, idempotency_key, request_hash, status)"
                  " VALUES ($1::text, $2::text, $3::jsonb, $4::text, $5::text, $6::text, $7::text)"
                  " ON CONFLICT ((coalesce(api_key_id, '')), idempotency_key)"
                  " WHERE idempotency_key IS NOT NULL DO NOTHING"
                  " RETURNING id, version, status),"
                  " ev AS (INSERT INTO events (composition_id, type, payload)"
                  " SELECT id, 'created', jsonb_build_object('status', status) FROM ins)"
                  " SELECT id, version FROM ins",
                  false},
    [S_FIND_IDEMPOTENT] = {"composition_find_idempotent",
                           "SELECT id, request_hash FROM compositions"
                           " WHERE coalesce(api_key_id, '') = coalesce($1::text, '')"
                           " AND idempotency_key = $2::text",
                           true},
    [S_GET_JSON] = {"composition_get_json",
                    "SELECT json_build_object(" S_COMPOSITION_FIELDS ", 'spec', c.spec)::text,"
                    " c.version FROM compositions c WHERE c.id = $1::uuid",
                    true},
    [S_GET] = {"composition_get",
               "SELECT c.title, c.status, c.stage, c.priority, c.spec::text, c.progress,"
               " c.attempts, c.version, c.api_key_id, c.error_code, c.error_message,"
               " c.output_location, c.output_size_bytes, c.output_duration_s, c.output_hash"
               " FROM compositions c WHERE c.id = $1::uuid",
               true},
    [S_LIST] = {"composition_list", S_LIST_SELECT S_LIST_ORDER "$1::int", true},
    /* S_LIST_AFTER, S_LIST_STATUS_AFTER: built in s_stmt_sql (parameter
     * numbers differ). */
    [S_LIST_AFTER] = {"composition_list_after", NULL, true},
    [S_LIST_STATUS] = {"composition_list_status",
                       S_LIST_SELECT "WHERE c.status = $1::text" S_LIST_ORDER "$2::int", true},
    [S_LIST_STATUS_AFTER] = {"composition_list_status_after", NULL, true},
    [S_TRANSITION] = {"composition_transition", S_TRANSITION_SQL, false},
    [S_PROGRESS] = {"composition_progress",
                    "WITH upd AS (UPDATE compositions c"
                    " SET progress = greatest(c.progress, $2::float8)"
                    " WHERE c.id = $1::uuid AND c.status = 'processing'"
                    " RETURNING c.id, c.version, c.progress, cf_state(c.status, c.stage) AS state),"
                    " ev AS (INSERT INTO events (composition_id, type, payload)"
                    " SELECT id, 'progress', jsonb_build_object('progress', progress) FROM upd)"
                    " SELECT (SELECT cf_state(status, stage) FROM compositions"
                    " WHERE id = $1::uuid), upd.version, upd.progress, upd.state"
                    " FROM (SELECT 1) one LEFT JOIN upd ON true",
                    false},
    [S_OUTPUT] = {"composition_output",
                  "WITH upd AS (UPDATE compositions c SET output_location = $2::text,"
                  " output_size_bytes = $3::bigint, output_duration_s = $4::float8,"
                  " output_hash = $5::text"
                  " WHERE c.id = $1::uuid AND c.status = 'processing'"
                  " RETURNING c.id, c.version, c.progress, cf_state(c.status, c.stage) AS state)"
                  " SELECT (SELECT cf_state(status, stage) FROM compositions"
                  " WHERE id = $1::uuid), upd.version, upd.progress, upd.state"
                  " FROM (SELECT 1) one LEFT JOIN upd ON true",
                  false},
    [S_COUNTS] = {"composition_counts",
                  "SELECT cf_state(status, stage), count(*) FROM compositions GROUP BY 1", true},
    [S_QUEUED] = {"composition_queued",
                  "SELECT id, priority FROM compositions WHERE status = 'queued'"
                  " ORDER BY created_at LIMIT $1::int",
                  true},
    [S_PURGE] = {"composition_purge",
                 "DELETE FROM compositions c WHERE c.id IN (SELECT id FROM compositions"
                 " WHERE finished_at < now() - least($1::bigint, $2::bigint) * interval '1 second'"
                 " AND ("
                 " (status = 'completed'"
                 "  AND finished_at < now() - $1::bigint * interval '1 second')"
                 " OR (status IN ('failed', 'cancelled')"
                 "  AND finished_at < now() - $2::bigint * interval '1 second'))"
                 " ORDER BY finished_at LIMIT $3::int FOR UPDATE SKIP LOCKED)"
                 " RETURNING c.id, cf_state(c.status, c.stage), c.output_location",
                 false},
    [S_SEGMENTS_CREATE] = {"segments_create",
                           "WITH comp AS (SELECT id FROM compositions WHERE id = $1::uuid),"
                           " ins AS (INSERT INTO segments"
                           " (composition_id, idx, frame_start, frame_end, sources, epoch)"
                           " SELECT comp.id, s.idx, s.frame_start, s.frame_end,"
                           " coalesce(s.sources, '[]'), $2::bigint"
                           " FROM comp, jsonb_to_recordset($3::jsonb)"
                           " AS s(idx int, frame_start bigint, frame_end bigint, sources jsonb)"
                           " RETURNING 1)"
                           " SELECT (SELECT count(*) FROM comp), (SELECT count(*) FROM ins)",
                           false},
    [S_SEGMENT_UPDATE] =
        {"segment_update",
         "WITH prev AS (SELECT epoch, status FROM segments"
         "  WHERE composition_id = $1::uuid AND idx = $2::int),"
         " upd AS (UPDATE segments s SET"
         "  status = coalesce($4::text, s.status),"
         "  progress = coalesce($5::float8, CASE WHEN $4::text = 'done' THEN 1 ELSE s.progress "
         "END),"
         "  node_id = coalesce($6::text, s.node_id),"
         "  blob_hash = coalesce($7::text, s.blob_hash),"
         "  size_bytes = coalesce($8::bigint, s.size_bytes),"
         "  encode_fps = coalesce($9::float8, s.encode_fps),"
         "  fetch_ms = coalesce($10::bigint, s.fetch_ms),"
         "  encode_ms = coalesce($11::bigint, s.encode_ms),"
         "  attempts = s.attempts + CASE WHEN $4::text = 'assigned' THEN 1 ELSE 0 END,"
         "  assigned_at = CASE WHEN $4::text = 'assigned' THEN now() ELSE s.assigned_at END,"
         "  started_at = CASE WHEN $4::text = 'encoding' THEN now() ELSE s.started_at END,"
         "  finished_at = CASE WHEN $4::text IN ('done', 'failed') THEN now()"
         "                WHEN $4::text IS NOT NULL THEN NULL ELSE s.finished_at END,"
         "  epoch = $3::bigint"
         "  WHERE s.composition_id = $1::uuid AND s.idx = $2::int AND s.epoch <= $3::bigint"
         "  AND ($4::text IS NULL OR s.status <> 'done' OR $4::text = 'done')"
         "  RETURNING 1)"
         " SELECT prev.epoch, prev.status, (SELECT count(*) FROM upd) FROM prev",
         false},
    [S_SEGMENTS_LIST] = {"segments_list",
                         "SELECT idx, frame_start, frame_end, sources::text, status, progress,"
                         " node_id, attempts, epoch, blob_hash, size_bytes, encode_fps,"
                         " fetch_ms, encode_ms, " S_TS("assigned_at") ", " S_TS(
                             "started_at") ", " S_TS("finished_at") " FROM segments"
                                                                    " WHERE composition_id = "
                                                                    "$1::uuid ORDER BY idx",
                         true},
    [S_EVENT_APPEND] = {"event_append",
                        "INSERT INTO events (composition_id, type, payload)"
                        " VALUES ($1::uuid, $2::text, $3::jsonb) RETURNING id",
                        false},
    [S_EVENTS_SINCE] = {"events_since",
                        "SELECT id, type, coalesce(payload::text, 'null'), " S_TS(
                            "at") " FROM events WHERE composition_id = $1::uuid AND id > "
                                  "$2::bigint ORDER BY id LIMIT $3::int",
                        true},
    [S_KEY_INSERT] = {"api_key_insert",
                      "INSERT INTO api_keys (id, name, secret_hash) VALUES ($1::text, $2::text, "
                      "$3::bytea)",
                      false},
    [S_KEY_FIND] = {"api_key_find",
                    "SELECT id, name, secret_hash, " S_TS("created_at") ", " S_TS(
                        "revoked_at") ", admin FROM api_keys WHERE id = $1::text",
                    true},
    [S_KEY_REVOKE] = {"api_key_revoke",
                      "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
                      " WHERE id = $1::text RETURNING 1",
                      false},
    [S_KEY_LIST] = {"api_key_list",
                    "SELECT id, name, NULL, " S_TS("created_at") ", " S_TS(
                        "revoked_at") ", admin FROM api_keys ORDER BY created_at, id",
                    true},
    [S_OP_APPLIED] = {"composition_op_applied",
                      "SELECT c.version, c.progress, cf_state(c.status, c.stage)"
                      " FROM events e JOIN compositions c ON c.id = e.composition_id"
                      " WHERE e.composition_id = $1::uuid AND e.type = 'status'"
                      " AND e.payload->>'op' = $2::text LIMIT 1",
                      true},
    /* One key's compositions ($1 the key id); the _AFTER and _STATUS forms
     * are built in s_build_sql. */
    [S_LIST_OWNED] = {"composition_list_owned",
                      S_LIST_SELECT "WHERE c.api_key_id = $1::text" S_LIST_ORDER "$2::int", true},
    [S_LIST_OWNED_AFTER] = {"composition_list_owned_after", NULL, true},
    [S_LIST_OWNED_STATUS] = {"composition_list_owned_status",
                             S_LIST_SELECT
                             "WHERE c.api_key_id = $1::text AND c.status = $2::text" S_LIST_ORDER
                             "$3::int",
                             true},
    [S_LIST_OWNED_STATUS_AFTER] = {"composition_list_owned_status_after", NULL, true},
    [S_OWNER] = {"composition_owner",
                 "SELECT coalesce(api_key_id, '') FROM compositions WHERE id = $1::uuid", true},
    [S_KEY_INSERT_SCOPED] = {"api_key_insert_scoped",
                             "INSERT INTO api_keys (id, name, secret_hash, admin)"
                             " VALUES ($1::text, $2::text, $3::bytea, $4::boolean)",
                             false},
    [S_BLOB_RECORD] = {"blob_record",
                       "INSERT INTO blob_uploads (hash, api_key_id, node_id, size_bytes)"
                       " VALUES ($1::text, $2::text, $3::text, $4::bigint)"
                       " ON CONFLICT (hash, api_key_id) DO UPDATE SET created_at = now(),"
                       " node_id = excluded.node_id",
                       false},
    [S_BLOB_USAGE] = {"blob_usage",
                      "SELECT coalesce(sum(size_bytes), 0)::bigint FROM blob_uploads"
                      " WHERE api_key_id = $1::text",
                      true},
    [S_BLOB_OWNED] = {"blob_owned",
                      "SELECT 1 FROM blob_uploads WHERE hash = $1::text AND api_key_id = $2::text",
                      true},
    /* Uploads of node $1 older than $2 seconds that no composition names as
     * a source; answers the hashes no upload row of this node keeps. */
    [S_BLOB_GC] = {"blob_gc",
                   "WITH gone AS (DELETE FROM blob_uploads b WHERE b.ctid IN ("
                   " SELECT o.ctid FROM blob_uploads o WHERE o.node_id = $1::text"
                   " AND o.created_at < now() - $2::bigint * interval '1 second'"
                   " AND NOT EXISTS (SELECT 1 FROM compositions c WHERE c.spec->'clips' @>"
                   "  jsonb_build_array(jsonb_build_object('source', 'blob:' || o.hash)))"
                   " LIMIT $3::int FOR UPDATE SKIP LOCKED)"
                   " RETURNING b.hash, b.api_key_id)"
                   " SELECT DISTINCT g.hash FROM gone g WHERE NOT EXISTS ("
                   " SELECT 1 FROM blob_uploads k WHERE k.hash = g.hash AND k.node_id = $1::text"
                   " AND NOT EXISTS (SELECT 1 FROM gone g2"
                   "  WHERE g2.hash = k.hash AND g2.api_key_id = k.api_key_id))",
                   false},
    [S_S3_LOCATION] = {"composition_s3_location",
                       "UPDATE compositions SET output_s3_location = $2::text"
                       " WHERE id = $1::uuid AND status = 'processing' RETURNING 1",
                       false},
    /* Due deliveries nobody holds, claimed by $1 for $2 seconds. */
    [S_WEBHOOK_CLAIM] =
        {"webhook_claim",
         "UPDATE webhook_deliveries d SET claimed_by = $1::text,"
         " claimed_until = now() + $2::int * interval '1 second',"
         " attempts = d.attempts + 1"
         " WHERE d.id IN (SELECT id FROM webhook_deliveries"
         "  WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_at <= now()"
         "  AND (claimed_until IS NULL OR claimed_until < now())"
         "  ORDER BY next_at LIMIT $3::int FOR UPDATE SKIP LOCKED)"
         " RETURNING d.id, d.composition_id, coalesce(d.api_key_id, ''), d.url,"
         " d.body, d.attempts,"
         " extract(epoch FROM now() - d.created_at)::float8",
         false},
    /* $2: 'delivered' or 'abandoned'; only the claim's holder ($3) ends it. */
    [S_WEBHOOK_DONE] = {"webhook_done",
                        "UPDATE webhook_deliveries SET claimed_until = NULL,"
                        " delivered_at = CASE WHEN $2::text = 'delivered' THEN now() END,"
                        " abandoned_at = CASE WHEN $2::text = 'abandoned' THEN now() END"
                        " WHERE id = $1::bigint AND claimed_by = $3::text"
                        " AND delivered_at IS NULL AND abandoned_at IS NULL RETURNING 1",
                        false},
    [S_WEBHOOK_RETRY] = {"webhook_retry",
                         "UPDATE webhook_deliveries SET claimed_until = NULL,"
                         " next_at = now() + $2::bigint * interval '1 millisecond'"
                         " WHERE id = $1::bigint AND claimed_by = $3::text"
                         " AND delivered_at IS NULL RETURNING 1",
                         false},
};

/* SQL of statements whose text needs parameter numbers filled in. Built once
 * from constant fragments (no user data ever goes into SQL text). */
static char s_list_after_sql[4096];
static char s_list_status_after_sql[4096];
static char s_list_owned_after_sql[4096];
static char s_list_owned_status_after_sql[4096];
static pthread_once_t s_sql_once = PTHREAD_ONCE_INIT;

static void s_build_sql(void)
{
    char where[256];
    snprintf(where, sizeof where, "WHERE " S_CURSOR_BEFORE, 1, 2);
    snprintf(s_list_after_sql, sizeof s_list_after_sql, "%s%s%s$3::int", S_LIST_SELECT, where,
             S_LIST_ORDER);
    snprintf(where, sizeof where, "WHERE c.status = $1::text AND " S_CURSOR_BEFORE, 2, 3);
    snprintf(s_list_status_after_sql, sizeof s_list_status_after_sql, "%s%s%s$4::int",
             S_LIST_SELECT, where, S_LIST_ORDER);
    snprintf(where, sizeof where, "WHERE c.api_key_id = $1::text AND " S_CURSOR_BEFORE, 2, 3);
    snprintf(s_list_owned_after_sql, sizeof s_list_owned_after_sql, "%s%s%s$4::int", S_LIST_SELECT,
             where, S_LIST_ORDER);
    snprintf(where, sizeof where,
             "WHERE c.api_key_id = $1::text AND c.status = $2::text AND " S_CURSOR_BEFORE, 3, 4);
    snprintf(s_list_owned_status_after_sql, sizeof s_list_owned_status_after_sql, "%s%s%s$5::int",
             S_LIST_SELECT, where, S_LIST_ORDER);
}

static const char *s_stmt_sql(s_stmt_t stmt)
{
    pthread_once(&s_sql_once, s_build_sql);
    if (stmt == S_LIST_AFTER)
        return s_list_after_sql;
    if (stmt == S_LIST_STATUS_AFTER)
        return s_list_status_after_sql;
    if (stmt == S_LIST_OWNED_AFTER)
        return s_list_owned_after_sql;
    if (stmt == S_LIST_OWNED_STATUS_AFTER)
        return s_list_owned_status_after_sql;
    return s_stmts[stmt].sql;
}

/* ====================================================================== pool */

typedef struct {
    PGconn *conn;
    uint64_t prepared; /* bit per s_stmt_t prepared on this connection */
    int64_t born_ms;
} s_conn_t;

struct cf_db {
    cf_db_options_t opts;
    char *url;
    char conninfo_options[64]; /* "-c statement_timeout=N" */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    s_conn_t **idle; /* stack of idle connections, pool_size + max_overflow slots */
    int idle_count;
    int open; /* connections open or being opened */
    /* Reconnect backoff while Postgres is unreachable. */
    bool down;
    bool connecting; /* a thread is trying to connect while down */
    int backoff_ms;
    int64_t next_attempt_ms;
    char last_error[256];
    cf_db_stats_t stats;
    cf_db_write_hook_t hook;
    void *hook_arg;
};

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_deadline_ts(int64_t deadline_ms, struct timespec *ts)
{
    /* pthread_cond_timedwait uses CLOCK_REALTIME unless told otherwise; the
     * condition variable is set to CLOCK_MONOTONIC in cf_db_new. */
    ts->tv_sec = deadline_ms / 1000;
    ts->tv_nsec = (deadline_ms % 1000) * 1000000;
}

void cf_db_options_default(cf_db_options_t *opts)
{
    *opts = (cf_db_options_t){
        .url = NULL,
        .pool_size = 30,
        .max_overflow = 20,
        .acquire_timeout_ms = 30000,
        .connect_timeout_ms = 5000,
        .statement_timeout_ms = 30000,
        .recycle_s = 3600,
        .backoff_initial_ms = 50,
        .backoff_max_ms = 2000,
    };
}

cf_db_t *cf_db_new(const cf_db_options_t *opts, char *err, size_t errlen)
{
    if (!opts->url || !*opts->url) {
        snprintf(err, errlen, "no database URL");
        return NULL;
    }
    if (opts->pool_size < 1 || opts->pool_size > 1000 || opts->max_overflow < 0 ||
        opts->max_overflow > 1000) {
        snprintf(err, errlen, "pool size must be 1..1000 and overflow 0..1000");
        return NULL;
    }
    if (opts->acquire_timeout_ms < 0 || opts->connect_timeout_ms < 1000 ||
        opts->statement_timeout_ms < 0 || opts->recycle_s < 1 || opts->backoff_initial_ms < 1 ||
        opts->backoff_max_ms < opts->backoff_initial_ms) {
        snprintf(err, errlen,
                 "invalid pool timeouts (connect >= 1000 ms, others >= 0, backoff max >= "
                 "initial)");
        return NULL;
    }
    if (sodium_init() < 0) {
        snprintf(err, errlen, "libsodium failed to initialise");
        return NULL;
    }
    cf_db_t *db = calloc(1, sizeof *db);
    if (!db) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    db->opts = *opts;
    db->url = strdup(opts->url);
    db->opts.url = db->url;
    db->idle = calloc((size_t)(opts->pool_size + opts->max_overflow), sizeof *db->idle);
    if (!db->url || !db->idle) {
        free(db->url);
        free(db->idle);
        free(db);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(db->conninfo_options, sizeof db->conninfo_options, "-c statement_timeout=%d",
             opts->statement_timeout_ms);
    db->backoff_ms = opts->backoff_initial_ms;
    pthread_mutex_init(&db->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&db->cond, &attr);
    pthread_condattr_destroy(&attr);
    return db;
}

void cf_db_destroy(cf_db_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_db_t *db = *self_p;
    for (int i = 0; i < db->idle_count; i++) {
        PQfinish(db->idle[i]->conn);
        free(db->idle[i]);
    }
    free(db->idle);
    free(db->url);
    pthread_mutex_destroy(&db->lock);
    pthread_cond_destroy(&db->cond);
    free(db);
    *self_p = NULL;
}

void cf_db_set_write_hook(cf_db_t *db, cf_db_write_hook_t hook, void *arg)
{
    pthread_mutex_lock(&db->lock);
    db->hook = hook;
    db->hook_arg = arg;
    pthread_mutex_unlock(&db->lock);
}

void cf_db_stats(cf_db_t *db, cf_db_stats_t *stats)
{
    pthread_mutex_lock(&db->lock);
    *stats = db->stats;
    stats->open = db->open;
    stats->in_use = db->open - db->idle_count;
    pthread_mutex_unlock(&db->lock);
}

/* Opens a connection with the pool's settings: statement_timeout is a
 * connection option, so no SQL runs to set it up. */
static s_conn_t *s_conn_open(cf_db_t *db, int timeout_ms, char *err, size_t errlen)
{
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%d", (timeout_ms + 999) / 1000);
    const char *keys[] = {"dbname",     "connect_timeout", "application_name",    "options",
                          "keepalives", "keepalives_idle", "keepalives_interval", NULL};
    const char *values[] = {db->url, timeout, "clipfarm", db->conninfo_options,
                            "1",     "30",    "10",       NULL};
    PGconn *conn = PQconnectdbParams(keys, values, 1);
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        if (conn)
            cf_db_errstr(conn, NULL, err, errlen);
        else
            snprintf(err, errlen, "out of memory");
        PQfinish(conn);
        return NULL;
    }
    PQsetNoticeProcessor(conn, s_ignore_notice, NULL);
    s_conn_t *c = calloc(1, sizeof *c);
    if (!c) {
        PQfinish(conn);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->conn = conn;
    c->born_ms = s_now_ms();
    return c;
}

/* A pooled connection is usable when libpq thinks so and the server has sent
 * nothing since it went idle: an idle connection that became readable was
 * closed by the server (restart, idle timeout, pg_terminate_backend: all
 * send a FATAL message, then EOF). This costs no round trip. */
static bool s_conn_usable(const cf_db_t *db, const s_conn_t *c)
{
    if (PQstatus(c->conn) != CONNECTION_OK || PQtransactionStatus(c->conn) != PQTRANS_IDLE)
        return false;
    if (s_now_ms() - c->born_ms > (int64_t)db->opts.recycle_s * 1000)
        return false;
    struct pollfd p = {.fd = PQsocket(c->conn), .events = POLLIN};
    int n = poll(&p, 1, 0);
    return n == 0;
}

static void s_conn_close(s_conn_t *c)
{
    if (c) {
        PQfinish(c->conn);
        free(c);
    }
}

/* Takes a connection: an idle one that is still usable, else a new one while
 * the pool has room. While Postgres is down only one thread at a time tries
 * to connect, at growing intervals; the others wait for it. Gives up at
 * deadline_ms with CF_DB_UNAVAILABLE. */
static int s_acquire(cf_db_t *db, int64_t deadline_ms, s_conn_t **conn_p, char *err, size_t errlen)
{
    int max_open = db->opts.pool_size + db->opts.max_overflow;
    bool waited = false;
    pthread_mutex_lock(&db->lock);
    for (;;) {
        if (db->idle_count > 0) {
            s_conn_t *c = db->idle[--db->idle_count];
            if (s_conn_usable(db, c)) {
                pthread_mutex_unlock(&db->lock);
                *conn_p = c;
                return CF_DB_OK;
            }
            db->open--;
            db->stats.discarded++;
            pthread_mutex_unlock(&db->lock);
            s_conn_close(c);
            pthread_mutex_lock(&db->lock);
            continue;
        }
        int64_t now = s_now_ms();
        bool may_connect = db->open < max_open && !(db->down && db->connecting) &&
                           !(db->down && now < db->next_attempt_ms);
        if (may_connect) {
            db->open++;
            db->connecting = db->down;
            bool was_down = db->down;
            pthread_mutex_unlock(&db->lock);
            char why[256];
            int timeout_ms = db->opts.connect_timeout_ms;
            s_conn_t *c = s_conn_open(db, timeout_ms, why, sizeof why);
            pthread_mutex_lock(&db->lock);
            if (was_down)
                db->connecting = false;
            if (c) {
                db->stats.connects++;
                if (db->down)
                    cf_log_info("db", "connected to Postgres again");
                db->down = false;
                db->backoff_ms = db->opts.backoff_initial_ms;
                pthread_cond_broadcast(&db->cond);
                pthread_mutex_unlock(&db->lock);
                *conn_p = c;
                return CF_DB_OK;
            }
            db->open--;
            db->stats.failures++;
            if (!db->down)
                cf_log_warn("db", "cannot connect to Postgres: %s", why);
            db->down = true;
            snprintf(db->last_error, sizeof db->last_error, "%s", why);
            db->next_attempt_ms = s_now_ms() + db->backoff_ms;
            db->backoff_ms = db->backoff_ms * 2 > db->opts.backoff_max_ms ? db->opts.backoff_max_ms
                                                                          : db->backoff_ms * 2;
            pthread_cond_broadcast(&db->cond);
            continue;
        }
        now = s_now_ms();
        if (now >= deadline_ms) {
            if (db->down)
                snprintf(err, errlen, "database unavailable: %s", db->last_error);
            else
                snprintf(err, errlen, "database unavailable: no free connection within %d ms",
                         db->opts.acquire_timeout_ms);
            pthread_mutex_unlock(&db->lock);
            return CF_DB_UNAVAILABLE;
        }
        /* Wait for a connection to come back, or for the next attempt. */
        int64_t until = deadline_ms;
        if (db->down && !db->connecting && db->next_attempt_ms < until)
            until = db->next_attempt_ms;
        if (!waited && !db->down) {
            db->stats.waits++;
            waited = true;
        }
        struct timespec ts;
        s_deadline_ts(until, &ts);
        pthread_cond_timedwait(&db->cond, &db->lock, &ts);
    }
}

/* Gives a connection back; BROKEN ones and those over pool_size are closed. */
static void s_release(cf_db_t *db, s_conn_t *c, bool broken)
{
    if (!c)
        return;
    pthread_mutex_lock(&db->lock);
    if (broken || PQstatus(c->conn) != CONNECTION_OK || db->idle_count >= db->opts.pool_size) {
        db->open--;
        if (broken)
            db->stats.discarded++;
        pthread_cond_broadcast(&db->cond);
        pthread_mutex_unlock(&db->lock);
        s_conn_close(c);
        return;
    }
    db->idle[db->idle_count++] = c;
    pthread_cond_signal(&db->cond);
    pthread_mutex_unlock(&db->lock);
}

/* Maps a failed result to a cf_db_rc_t. *broken: the connection is unusable. */
static int s_classify(PGconn *conn, const PGresult *res, bool *broken, char *err, size_t errlen)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    char why[512];
    cf_db_errstr(conn, res, why, sizeof why);
    *broken = PQstatus(conn) != CONNECTION_OK;
    if (*broken || !state || !strncmp(state, "08", 2) || !strcmp(state, "57P01") ||
        !strcmp(state, "57P02") || !strcmp(state, "57P03") || !strcmp(state, "53300")) {
        *broken = true;
        snprintf(err, errlen, "database unavailable: %s", why);
        return CF_DB_UNAVAILABLE;
    }
    if (!strcmp(state, "57014")) {
        snprintf(err, errlen, "database unavailable: statement timeout: %s", why);
        return CF_DB_UNAVAILABLE;
    }
    snprintf(err, errlen, "%s", why);
    if (!strcmp(state, "CF001"))
        return CF_DB_ILLEGAL;
    if (!strcmp(state, "23505"))
        return CF_DB_CONFLICT;
    if (!strcmp(state, "23503"))
        return CF_DB_NOT_FOUND;
    if (!strncmp(state, "22", 2) || !strcmp(state, "23514"))
        return CF_DB_INVALID;
    return CF_DB_ERROR;
}

/* Runs prepared statement STMT with text parameters (lengths/formats may be
 * NULL; binary ones for bytea). *res_p gets the result on CF_DB_OK (caller
 * PQclear's it). Read-only statements are retried once on a fresh connection
 * when the first one broke under them. *maybe_applied (may be NULL) is set
 * when a write failed after it was sent: it may have committed. */
static int s_exec_ex(cf_db_t *db, s_stmt_t stmt, int nparams, const char *const *values,
                     const int *lengths, const int *formats, PGresult **res_p, bool *maybe_applied,
                     char *err, size_t errlen)
{
    int64_t deadline = s_now_ms() + db->opts.acquire_timeout_ms;
    if (maybe_applied)
        *maybe_applied = false;
    for (int attempt = 0;; attempt++) {
        s_conn_t *c = NULL;
        int rc = s_acquire(db, deadline, &c, err, errlen);
        if (rc < 0)
            return rc;
        bool broken = false;
        if (!(c->prepared & (UINT64_C(1) << stmt))) {
            PGresult *prep = PQprepare(c->conn, s_stmts[stmt].name, s_stmt_sql(stmt), 0, NULL);
            if (PQresultStatus(prep) != PGRES_COMMAND_OK) {
                rc = s_classify(c->conn, prep, &broken, err, errlen);
                PQclear(prep);
                s_release(db, c, broken);
                /* Nothing ran: safe to retry on a new connection. */
                if (broken && attempt == 0)
                    continue;
                return rc;
            }
            PQclear(prep);
            c->prepared |= UINT64_C(1) << stmt;
        }
        PGresult *res =
            PQexecPrepared(c->conn, s_stmts[stmt].name, nparams, values, lengths, formats, 0);
        ExecStatusType status = PQresultStatus(res);
        if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) {
            s_release(db, c, false);
            *res_p = res;
            return CF_DB_OK;
        }
        rc = s_classify(c->conn, res, &broken, err, errlen);
        PQclear(res);
        s_release(db, c, broken);
        if (broken && attempt == 0 && s_stmts[stmt].readonly)
            continue;
        if (broken && maybe_applied && !s_stmts[stmt].readonly)
            *maybe_applied = true;
        return rc;
    }
}

static int s_exec(cf_db_t *db, s_stmt_t stmt, int nparams, const char *const *values,
                  const int *lengths, const int *formats, PGresult **res_p, char *err,
                  size_t errlen)
{
    return s_exec_ex(db, stmt, nparams, values, lengths, formats, res_p, NULL, err, errlen);
}

int cf_db_ping(cf_db_t *db, char *err, size_t errlen)
{
    PGresult *res = NULL;
    int rc = s_exec(db, S_PING, 0, NULL, NULL, NULL, &res, err, errlen);
    PQclear(res);
    return rc;
}

int cf_db_explain(cf_db_t *db, const char *name, int nparams, const char *const *params,
                  char **plan_p, char *err, size_t errlen)
{
    int stmt = -1;
    for (int i = 0; i < S_COUNT; i++)
        if (!strcmp(s_stmts[i].name, name))
            stmt = i;
    if (stmt < 0) {
        snprintf(err, errlen, "no statement named '%s'", name);
        return CF_DB_INVALID;
    }
    s_conn_t *c = NULL;
    int rc = s_acquire(db, s_now_ms() + db->opts.acquire_timeout_ms, &c, err, errlen);
    if (rc < 0)
        return rc;
    /* Constant SQL text with "EXPLAIN " in front; parameters stay bound. */
    char *sql = NULL;
    if (asprintf(&sql, "EXPLAIN %s", s_stmt_sql((s_stmt_t)stmt)) < 0) {
        s_release(db, c, false);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    PGresult *res = PQexecParams(c->conn, sql, nparams, NULL, params, NULL, NULL, 0);
    free(sql);
    bool broken = false;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = s_classify(c->conn, res, &broken, err, errlen);
        PQclear(res);
        s_release(db, c, broken);
        return rc;
    }
    size_t len = 0;
    FILE *out = open_memstream(plan_p, &len);
    for (int i = 0; out && i < PQntuples(res); i++)
        fprintf(out, "%s\n", PQgetvalue(res, i, 0));
    if (out)
        fclose(out);
    PQclear(res);
    s_release(db, c, false);
    return *plan_p ? CF_DB_OK : CF_DB_ERROR;
}

/* ====================================================================== helpers */

/* Canonical UUID text: 8-4-4-4-12 hex digits. Anything else names nothing. */
static bool s_valid_uuid(const char *id)
{
    if (!id || strlen(id) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        char ch = id[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (ch != '-')
                return false;
        } else if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') ||
                     (ch >= 'A' && ch <= 'F'))) {
            return false;
        }
    }
    return true;
}

static int s_not_found(const char *what, const char *id, char *err, size_t errlen)
{
    snprintf(err, errlen, "no %s '%.64s'", what, id ? id : "(null)");
    return CF_DB_NOT_FOUND;
}

static char *s_strdup_or_null(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : strdup(PQgetvalue(res, row, col));
}

static int64_t s_int64(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static double s_double(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtod(PQgetvalue(res, row, col), NULL);
}

static void s_notify(cf_db_t *db, const char *id, int64_t version, cf_state_t state,
                     double progress, const char *event)
{
    pthread_mutex_lock(&db->lock);
    cf_db_write_hook_t hook = db->hook;
    void *arg = db->hook_arg;
    pthread_mutex_unlock(&db->lock);
    if (hook) {
        cf_db_write_t write = {id, version, state, progress, event};
        hook(arg, &write);
    }
}

/* ====================================================================== compositions */

int cf_db_composition_create(cf_db_t *db, const cf_db_composition_new_t *comp,
                             char id_out[CF_DB_ID_LEN], bool *existed, char *err, size_t errlen)
{
    if (existed)
        *existed = false;
    const char *priority = cf_priority_name(comp->priority);
    if (!priority) {
        snprintf(err, errlen, "invalid priority");
        return CF_DB_INVALID;
    }
    if (comp->initial_state != CF_STATE_PENDING && comp->initial_state != CF_STATE_QUEUED) {
        snprintf(err, errlen, "a new composition is pending or queued");
        return CF_DB_INVALID;
    }
    if (!comp->spec_json) {
        snprintf(err, errlen, "no composition spec");
        return CF_DB_INVALID;
    }
    if (comp->idempotency_key && !comp->request_hash) {
        snprintf(err, errlen, "an idempotency key needs the request hash");
        return CF_DB_INVALID;
    }
    const char *params[] = {comp->title,
                            priority,
                            comp->spec_json,
                            comp->api_key_id,
                            comp->idempotency_key,
                            comp->request_hash,
                            cf_state_status(comp->initial_state)};
    /* Twice at most: an idempotent twin can be deleted (retention) between
     * our conflicting insert and the lookup. */
    for (int attempt = 0; attempt < 2; attempt++) {
        PGresult *res = NULL;
        int rc = s_exec(db, S_CREATE, 7, params, NULL, NULL, &res, err, errlen);
        if (rc < 0)
            return rc;
        if (PQntuples(res) == 1) {
            snprintf(id_out, CF_DB_ID_LEN, "%s", PQgetvalue(res, 0, 0));
            int64_t version = s_int64(res, 0, 1);
            PQclear(res);
            s_notify(db, id_out, version, comp->initial_state, 0, "created");
            return CF_DB_OK;
        }
        PQclear(res);
        /* The key was taken (ON CONFLICT waited for that transaction to
         * commit, so a new statement sees the row). */
        const char *find[] = {comp->api_key_id, comp->idempotency_key};
        rc = s_exec(db, S_FIND_IDEMPOTENT, 2, find, NULL, NULL, &res, err, errlen);
        if (rc < 0)
            return rc;
        if (PQntuples(res) == 1) {
            bool same = !strcmp(PQgetvalue(res, 0, 1), comp->request_hash);
            snprintf(id_out, CF_DB_ID_LEN, "%s", PQgetvalue(res, 0, 0));
            PQclear(res);
            if (!same) {
                snprintf(err, errlen,
                         "idempotency key '%.64s' was already used with a different request",
                         comp->idempotency_key);
                return CF_DB_CONFLICT;
            }
            if (existed)
                *existed = true;
            return CF_DB_OK;
        }
        PQclear(res);
    }
    snprintf(err, errlen, "idempotency key '%.64s' is contended", comp->idempotency_key);
    return CF_DB_CONFLICT;
}

int cf_db_composition_get_json(cf_db_t *db, const char *id, char **json_p, int64_t *version_p,
                               char *err, size_t errlen)
{
    *json_p = NULL;
    if (!s_valid_uuid(id))
        return s_not_found("composition", id, err, errlen);
    PGresult *res = NULL;
    const char *params[] = {id};
    int rc = s_exec(db, S_GET_JSON, 1, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return s_not_found("composition", id, err, errlen);
    }
    *json_p = strdup(PQgetvalue(res, 0, 0));
    if (version_p)
        *version_p = s_int64(res, 0, 1);
    PQclear(res);
    return *json_p ? CF_DB_OK : CF_DB_ERROR;
}

void cf_db_composition_clear(cf_db_composition_t *comp)
{
    if (!comp)
        return;
    free(comp->title);
    free(comp->spec_json);
    free(comp->api_key_id);
    free(comp->error_code);
    free(comp->error_message);
    free(comp->output_location);
    free(comp->output_hash);
    memset(comp, 0, sizeof *comp);
}

int cf_db_composition_get(cf_db_t *db, const char *id, cf_db_composition_t *comp, char *err,
                          size_t errlen)
{
    memset(comp, 0, sizeof *comp);
    if (!s_valid_uuid(id))
        return s_not_found("composition", id, err, errlen);
    PGresult *res = NULL;
    const char *params[] = {id};
    int rc = s_exec(db, S_GET, 1, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return s_not_found("composition", id, err, errlen);
    }
    snprintf(comp->id, sizeof comp->id, "%s", id);
    comp->title = s_strdup_or_null(res, 0, 0);
    if (cf_state_from_columns(PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2), &comp->state) < 0 ||
        cf_priority_parse(PQgetvalue(res, 0, 3), &comp->priority) < 0) {
        PQclear(res);
        cf_db_composition_clear(comp);
        snprintf(err, errlen, "composition '%s' has an unknown status or priority", id);
        return CF_DB_ERROR;
    }
    comp->spec_json = s_strdup_or_null(res, 0, 4);
    comp->progress = s_double(res, 0, 5);
    comp->attempts = (int)s_int64(res, 0, 6);
    comp->version = s_int64(res, 0, 7);
    comp->api_key_id = s_strdup_or_null(res, 0, 8);
    comp->error_code = s_strdup_or_null(res, 0, 9);
    comp->error_message = s_strdup_or_null(res, 0, 10);
    comp->output_location = s_strdup_or_null(res, 0, 11);
    comp->output_size_bytes = s_int64(res, 0, 12);
    comp->output_duration_s = s_double(res, 0, 13);
    comp->output_hash = s_strdup_or_null(res, 0, 14);
    PQclear(res);
    return CF_DB_OK;
}

/* Cursor: base64url of "v1:<microseconds since epoch>:<uuid>". Opaque to
 * clients; only this module reads it. */
static char *s_cursor_encode(const char *epoch_us, const char *id)
{
    char plain[128];
    int n = snprintf(plain, sizeof plain, "v1:%s:%s", epoch_us, id);
    if (n < 0 || (size_t)n >= sizeof plain)
        return NULL;
    size_t len = sodium_base64_encoded_len((size_t)n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    char *out = malloc(len);
    if (out)
        sodium_bin2base64(out, len, (const unsigned char *)plain, (size_t)n,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return out;
}

static int s_cursor_decode(const char *cursor, char epoch_us[24], char id[CF_DB_ID_LEN])
{
    unsigned char plain[128];
    size_t len = 0;
    if (strlen(cursor) > 160 ||
        sodium_base642bin(plain, sizeof plain - 1, cursor, strlen(cursor), NULL, &len, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0)
        return -1;
    plain[len] = '\0';
    const char *text = (const char *)plain;
    if (strncmp(text, "v1:", 3) || strlen(text) != len)
        return -1;
    const char *num = text + 3;
    const char *colon = strchr(num, ':');
    if (!colon || colon == num || colon - num > 19)
        return -1;
    for (const char *p = num; p < colon; p++)
        if ((*p < '0' || *p > '9') && !(p == num && *p == '-'))
            return -1;
    if (!s_valid_uuid(colon + 1))
        return -1;
    snprintf(epoch_us, 24, "%.*s", (int)(colon - num), num);
    snprintf(id, CF_DB_ID_LEN, "%s", colon + 1);
    return 0;
}

int cf_db_composition_list(cf_db_t *db, const char *status, int limit, const char *cursor,
                           char **json_array_p, char **next_cursor_p, char *err, size_t errlen)
{
    return cf_db_composition_list_owned(db, NULL, status, limit, cursor, json_array_p,
                                        next_cursor_p, err, errlen);
}

int cf_db_composition_list_owned(cf_db_t *db, const char *owner, const char *status, int limit,
                                 const char *cursor, char **json_array_p, char **next_cursor_p,
                                 char *err, size_t errlen)
{
    *json_array_p = NULL;
    *next_cursor_p = NULL;
    if (limit < 1 || limit > CF_DB_LIST_MAX) {
        snprintf(err, errlen, "limit must be 1..%d", CF_DB_LIST_MAX);
        return CF_DB_INVALID;
    }
    if (status && !cf_status_is_valid(status)) {
        snprintf(err, errlen,
                 "unknown status '%.32s' (pending, queued, processing, completed, failed, "
                 "cancelled)",
                 status);
        return CF_DB_INVALID;
    }
    char epoch_us[24], after_id[CF_DB_ID_LEN];
    if (cursor && s_cursor_decode(cursor, epoch_us, after_id) < 0) {
        snprintf(err, errlen, "invalid cursor");
        return CF_DB_INVALID;
    }
    /* One row more than asked tells whether another page exists. */
    char fetch[16];
    snprintf(fetch, sizeof fetch, "%d", limit + 1);
    const char *params[5];
    int n = 0;
    s_stmt_t stmt;
    if (owner)
        params[n++] = owner;
    if (status)
        params[n++] = status;
    if (cursor) {
        params[n++] = epoch_us;
        params[n++] = after_id;
    }
    params[n++] = fetch;
    if (owner)
        stmt = status ? (cursor ? S_LIST_OWNED_STATUS_AFTER : S_LIST_OWNED_STATUS)
                      : (cursor ? S_LIST_OWNED_AFTER : S_LIST_OWNED);
    else
        stmt = status ? (cursor ? S_LIST_STATUS_AFTER : S_LIST_STATUS)
                      : (cursor ? S_LIST_AFTER : S_LIST);
    PGresult *res = NULL;
    int rc = s_exec(db, stmt, n, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    int shown = rows > limit ? limit : rows;
    size_t len = 0;
    FILE *out = open_memstream(json_array_p, &len);
    if (!out) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    fputc('[', out);
    for (int i = 0; i < shown; i++) {
        if (i)
            fputc(',', out);
        fputs(PQgetvalue(res, i, 0), out);
    }
    fputc(']', out);
    fclose(out);
    if (rows > limit)
        *next_cursor_p =
            s_cursor_encode(PQgetvalue(res, shown - 1, 1), PQgetvalue(res, shown - 1, 2));
    PQclear(res);
    if (!*json_array_p || (rows > limit && !*next_cursor_p)) {
        free(*json_array_p);
        *json_array_p = NULL;
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    return CF_DB_OK;
}

typedef struct {
    const char *taker;
    const char *error_code;
    const char *error_message;
    const cf_db_output_t *output;
} s_transition_extra_t;

/* Runs S_TRANSITION. Returns CF_DB_OK, CF_DB_NOT_FOUND, or CF_DB_ILLEGAL
 * with *from_p set. */
static int s_transition(cf_db_t *db, const char *id, cf_state_t to,
                        const s_transition_extra_t *extra, cf_state_t *from_p, char *err,
                        size_t errlen)
{
    if (!s_valid_uuid(id))
        return s_not_found("composition", id, err, errlen);
    if (!cf_state_name(to)) {
        snprintf(err, errlen, "invalid target state");
        return CF_DB_INVALID;
    }
    char size[24] = "", duration[32] = "";
    const cf_db_output_t *out = extra ? extra->output : NULL;
    if (out) {
        snprintf(size, sizeof size, "%" PRId64, out->size_bytes);
        snprintf(duration, sizeof duration, "%.6f", out->duration_s);
    }
    const char *params[12] = {
        id,
        cf_state_name(to),
        cf_state_status(to),
        cf_state_stage(to),
        extra ? extra->taker : NULL,
        extra ? extra->error_code : NULL,
        extra ? extra->error_message : NULL,
        out ? out->location : NULL,
        out ? size : NULL,
        out ? duration : NULL,
        out ? out->hash : NULL,
    };
    /* A fresh id per call: a repeated delivery of the same queue item is a
     * new call and is refused, while this call can tell its own commit. */
    unsigned char raw[8];
    char op[17];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(op, sizeof op, raw, sizeof raw);
    params[11] = op;
    PGresult *res = NULL;
    bool maybe_applied = false;
    int rc = s_exec_ex(db, S_TRANSITION, 12, params, NULL, NULL, &res, &maybe_applied, err, errlen);
    /* The connection broke after the statement was sent: did it commit?
     * Ask (s_exec waits for Postgres to come back, up to the acquire
     * timeout); if not, it can run again, still as this call. */
    for (int tries = 0; rc == CF_DB_UNAVAILABLE && maybe_applied && tries < 3; tries++) {
        const char *lookup[] = {id, op};
        PGresult *found = NULL;
        char why[256];
        if (s_exec(db, S_OP_APPLIED, 2, lookup, NULL, NULL, &found, why, sizeof why) < 0)
            break; /* still unknown: CF_DB_UNAVAILABLE */
        if (PQntuples(found) == 1) {
            int64_t version = s_int64(found, 0, 0);
            double progress = s_double(found, 0, 1);
            cf_state_t now = to;
            cf_state_parse(PQgetvalue(found, 0, 2), &now);
            PQclear(found);
            if (from_p)
                *from_p = CF_STATE_COUNT; /* unknown: the answer was lost */
            s_notify(db, id, version, now, progress, "status");
            return CF_DB_OK;
        }
        PQclear(found);
        rc = s_exec_ex(db, S_TRANSITION, 12, params, NULL, NULL, &res, &maybe_applied, err, errlen);
    }
    if (rc == CF_DB_ILLEGAL) {
        /* The trigger refused (only reachable through a race the WHERE
         * clause did not see): same answer as the WHERE clause gives. */
        return rc;
    }
    if (rc < 0)
        return rc;
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        PQclear(res);
        return s_not_found("composition", id, err, errlen);
    }
    cf_state_t from = CF_STATE_PENDING;
    cf_state_parse(PQgetvalue(res, 0, 0), &from);
    if (from_p)
        *from_p = from;
    if (PQgetisnull(res, 0, 1)) {
        PQclear(res);
        snprintf(err, errlen, "illegal transition: composition %s is %s, cannot become %s", id,
                 cf_state_name(from), cf_state_name(to));
        return CF_DB_ILLEGAL;
    }
    int64_t version = s_int64(res, 0, 1);
    double progress = s_double(res, 0, 2);
    PQclear(res);
    s_notify(db, id, version, to, progress, "status");
    return CF_DB_OK;
}

int cf_db_composition_transition(cf_db_t *db, const char *id, cf_state_t to, cf_state_t *from_p,
                                 char *err, size_t errlen)
{
    return s_transition(db, id, to, NULL, from_p, err, errlen);
}

int cf_db_composition_take(cf_db_t *db, const char *id, const char *taker, char *err, size_t errlen)
{
    if (!taker || !*taker) {
        snprintf(err, errlen, "a take needs the taker's name");
        return CF_DB_INVALID;
    }
    s_transition_extra_t extra = {.taker = taker};
    return s_transition(db, id, CF_STATE_PLANNING, &extra, NULL, err, errlen);
}

int cf_db_composition_complete(cf_db_t *db, const char *id, const cf_db_output_t *output, char *err,
                               size_t errlen)
{
    s_transition_extra_t extra = {.output = output};
    return s_transition(db, id, CF_STATE_COMPLETED, &extra, NULL, err, errlen);
}

int cf_db_composition_fail(cf_db_t *db, const char *id, const char *code, const char *message,
                           char *err, size_t errlen)
{
    if (!code || !*code) {
        snprintf(err, errlen, "an error code is required");
        return CF_DB_INVALID;
    }
    s_transition_extra_t extra = {.error_code = code, .error_message = message ? message : ""};
    cf_state_t from;
    int rc = s_transition(db, id, CF_STATE_FAILED, &extra, &from, err, errlen);
    if (rc == CF_DB_ILLEGAL && cf_state_is_terminal(from))
        rc = CF_DB_TERMINAL;
    return rc;
}

int cf_db_composition_cancel(cf_db_t *db, const char *id, cf_state_t *from_p, char *err,
                             size_t errlen)
{
    cf_state_t from = CF_STATE_PENDING;
    int rc = s_transition(db, id, CF_STATE_CANCELLED, NULL, &from, err, errlen);
    if (from_p)
        *from_p = from;
    if (rc == CF_DB_ILLEGAL && cf_state_is_terminal(from)) {
        snprintf(err, errlen, "composition %s is already %s", id, cf_state_name(from));
        rc = CF_DB_TERMINAL;
    }
    return rc;
}

/* Result of S_PROGRESS / S_OUTPUT: (state before, new version, progress,
 * state after). */
static int s_processing_update(cf_db_t *db, s_stmt_t stmt, const char *id, int nparams,
                               const char *const *params, const char *event, char *err,
                               size_t errlen)
{
    PGresult *res = NULL;
    int rc = s_exec(db, stmt, nparams, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        PQclear(res);
        return s_not_found("composition", id, err, errlen);
    }
    if (PQgetisnull(res, 0, 1)) {
        snprintf(err, errlen, "composition %s is %s, not processing", id, PQgetvalue(res, 0, 0));
        PQclear(res);
        return CF_DB_ILLEGAL;
    }
    cf_state_t state = CF_STATE_PLANNING;
    cf_state_parse(PQgetvalue(res, 0, 3), &state);
    int64_t version = s_int64(res, 0, 1);
    double progress = s_double(res, 0, 2);
    PQclear(res);
    s_notify(db, id, version, state, progress, event);
    return CF_DB_OK;
}

int cf_db_composition_set_progress(cf_db_t *db, const char *id, double progress, char *err,
                                   size_t errlen)
{
    if (!s_valid_uuid(id))
        return s_not_found("composition", id, err, errlen);
    if (!(progress >= 0 && progress <= 1)) {
        snprintf(err, errlen, "progress must be within 0..1");
        return CF_DB_INVALID;
    }
    char value[32];
    snprintf(value, sizeof value, "%.6f", progress);
    const char *params[] = {id, value};
    return s_processing_update(db, S_PROGRESS, id, 2, params, "progress", err, errlen);
}

int cf_db_composition_set_output(cf_db_t *db, const char *id, const cf_db_output_t *output,
                                 char *err, size_t errlen)
{
    if (!s_valid_uuid(id))
        return s_not_found("composition", id, err, errlen);
    if (!output || !output->location) {
        snprintf(err, errlen, "an output location is required");
        return CF_DB_INVALID;
    }
    char size[24], duration[32];
    snprintf(size, sizeof size, "%" PRId64, output->size_bytes);
    snprintf(duration, sizeof duration, "%.6f", output->duration_s);
    const char *params[] = {id, output->location, size, duration, output->hash};
    return s_processing_update(db, S_OUTPUT, id, 5, params, "output", err, errlen);
}

int cf_db_composition_counts(cf_db_t *db, int64_t counts[CF_STATE_COUNT], char *err, size_t errlen)
{
    for (int i = 0; i < CF_STATE_COUNT; i++)
        counts[i] = 0;
    PGresult *res = NULL;
    int rc = s_exec(db, S_COUNTS, 0, NULL, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    for (int i = 0; i < PQntuples(res); i++) {
        cf_state_t state;
        if (cf_state_parse(PQgetvalue(res, i, 0), &state) == 0)
            counts[state] = s_int64(res, i, 1);
    }
    PQclear(res);
    return CF_DB_OK;
}

int cf_db_composition_queued(cf_db_t *db, int max, cf_db_queued_t **items_p, int *count_p,
                             char *err, size_t errlen)
{
    *items_p = NULL;
    *count_p = 0;
    if (max < 1) {
        snprintf(err, errlen, "max must be positive");
        return CF_DB_INVALID;
    }
    char limit[16];
    snprintf(limit, sizeof limit, "%d", max);
    const char *params[] = {limit};
    PGresult *res = NULL;
    int rc = s_exec(db, S_QUEUED, 1, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    cf_db_queued_t *items = calloc((size_t)rows + 1, sizeof *items);
    if (!items) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    for (int i = 0; i < rows; i++) {
        snprintf(items[i].id, sizeof items[i].id, "%s", PQgetvalue(res, i, 0));
        if (cf_priority_parse(PQgetvalue(res, i, 1), &items[i].priority) < 0)
            items[i].priority = CF_PRIORITY_DEFAULT;
    }
    PQclear(res);
    *items_p = items;
    *count_p = rows;
    return CF_DB_OK;
}

int cf_db_purge_expired(cf_db_t *db, int completed_keep_s, int failed_keep_s, int max_rows,
                        cf_db_purged_t **purged_p, int *count_p, char *err, size_t errlen)
{
    *purged_p = NULL;
    *count_p = 0;
    if (completed_keep_s < 0 || failed_keep_s < 0 || max_rows < 1) {
        snprintf(err, errlen, "retention times must be >= 0 and max_rows positive");
        return CF_DB_INVALID;
    }
    char keep_completed[16], keep_failed[16], limit[16];
    snprintf(keep_completed, sizeof keep_completed, "%d", completed_keep_s);
    snprintf(keep_failed, sizeof keep_failed, "%d", failed_keep_s);
    snprintf(limit, sizeof limit, "%d", max_rows);
    const char *params[] = {keep_completed, keep_failed, limit};
    PGresult *res = NULL;
    int rc = s_exec(db, S_PURGE, 3, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    cf_db_purged_t *purged = calloc((size_t)rows + 1, sizeof *purged);
    if (!purged) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    for (int i = 0; i < rows; i++) {
        snprintf(purged[i].id, sizeof purged[i].id, "%s", PQgetvalue(res, i, 0));
        cf_state_parse(PQgetvalue(res, i, 1), &purged[i].state);
        purged[i].output_location = s_strdup_or_null(res, i, 2);
    }
    PQclear(res);
    *purged_p = purged;
    *count_p = rows;
    return CF_DB_OK;
}

void cf_db_purged_free(cf_db_purged_t **purged_p, int count)
{
    if (!purged_p || !*purged_p)
        return;
    for (int i = 0; i < count; i++)
        free((*purged_p)[i].output_location);
    free(*purged_p);
    *purged_p = NULL;
}

/* ====================================================================== segments */

int cf_db_segments_create(cf_db_t *db, const char *composition_id, int64_t epoch,
                          const cf_db_segment_plan_t *plan, int count, char *err, size_t errlen)
{
    if (!s_valid_uuid(composition_id))
        return s_not_found("composition", composition_id, err, errlen);
    if (count < 1) {
        snprintf(err, errlen, "a plan has at least one segment");
        return CF_DB_INVALID;
    }
    json_t *rows = json_array();
    for (int i = 0; rows && i < count; i++) {
        json_t *sources = NULL;
        if (plan[i].sources_json) {
            json_error_t jerr;
            sources = cf_json_loads(plan[i].sources_json, JSON_DECODE_ANY, &jerr);
            if (!sources) {
                json_decref(rows);
                snprintf(err, errlen, "segment %d: sources are not JSON: %s", plan[i].index,
                         jerr.text);
                return CF_DB_INVALID;
            }
        }
        json_array_append_new(rows, json_pack("{s:i, s:I, s:I, s:o}", "idx", plan[i].index,
                                              "frame_start", (json_int_t)plan[i].frame_start,
                                              "frame_end", (json_int_t)plan[i].frame_end, "sources",
                                              sources ? sources : json_array()));
    }
    char *rows_json = rows ? json_dumps(rows, JSON_COMPACT) : NULL;
    json_decref(rows);
    if (!rows_json) {
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    char epoch_text[24];
    snprintf(epoch_text, sizeof epoch_text, "%" PRId64, epoch);
    const char *params[] = {composition_id, epoch_text, rows_json};
    PGresult *res = NULL;
    int rc = s_exec(db, S_SEGMENTS_CREATE, 3, params, NULL, NULL, &res, err, errlen);
    free(rows_json);
    if (rc == CF_DB_CONFLICT) {
        snprintf(err, errlen, "composition %s already has segments (or a plan repeats an index)",
                 composition_id);
        return rc;
    }
    if (rc < 0)
        return rc;
    bool found = s_int64(res, 0, 0) == 1;
    PQclear(res);
    return found ? CF_DB_OK : s_not_found("composition", composition_id, err, errlen);
}

int cf_db_segment_update(cf_db_t *db, const char *composition_id, int index, int64_t epoch,
                         const cf_db_segment_update_t *update, char *err, size_t errlen)
{
    if (!s_valid_uuid(composition_id))
        return s_not_found("composition", composition_id, err, errlen);
    unsigned f = update->fields;
    if ((f & CF_SEG_F_STATE) && !cf_seg_state_name(update->state)) {
        snprintf(err, errlen, "invalid segment state");
        return CF_DB_INVALID;
    }
    if ((f & CF_SEG_F_PROGRESS) && !(update->progress >= 0 && update->progress <= 1)) {
        snprintf(err, errlen, "progress must be within 0..1");
        return CF_DB_INVALID;
    }
    char idx[16], ep[24], progress[32], size[24], fps[32], fetch[24], encode[24];
    snprintf(idx, sizeof idx, "%d", index);
    snprintf(ep, sizeof ep, "%" PRId64, epoch);
    snprintf(progress, sizeof progress, "%.6f", update->progress);
    snprintf(size, sizeof size, "%" PRId64, update->size_bytes);
    snprintf(fps, sizeof fps, "%.3f", update->encode_fps);
    snprintf(fetch, sizeof fetch, "%" PRId64, update->fetch_ms);
    snprintf(encode, sizeof encode, "%" PRId64, update->encode_ms);
    const char *params[11] = {
        composition_id,
        idx,
        ep,
        (f & CF_SEG_F_STATE) ? cf_seg_state_name(update->state) : NULL,
        (f & CF_SEG_F_PROGRESS) ? progress : NULL,
        (f & CF_SEG_F_NODE) ? update->node_id : NULL,
        (f & CF_SEG_F_BLOB) ? update->blob_hash : NULL,
        (f & CF_SEG_F_BLOB) ? size : NULL,
        (f & CF_SEG_F_FPS) ? fps : NULL,
        (f & CF_SEG_F_TIMINGS) ? fetch : NULL,
        (f & CF_SEG_F_TIMINGS) ? encode : NULL,
    };
    PGresult *res = NULL;
    int rc = s_exec(db, S_SEGMENT_UPDATE, 11, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        snprintf(err, errlen, "no segment %d of composition %s", index, composition_id);
        return CF_DB_NOT_FOUND;
    }
    if (s_int64(res, 0, 2) == 1) {
        PQclear(res);
        return CF_DB_OK;
    }
    int64_t seg_epoch = s_int64(res, 0, 0);
    if (seg_epoch > epoch) {
        snprintf(err, errlen, "segment %d of %s belongs to epoch %" PRId64 ", not %" PRId64, index,
                 composition_id, seg_epoch, epoch);
        rc = CF_DB_STALE;
    } else {
        snprintf(err, errlen, "segment %d of %s is %s: its state is final", index, composition_id,
                 PQgetvalue(res, 0, 1));
        rc = CF_DB_ILLEGAL;
    }
    PQclear(res);
    return rc;
}

int cf_db_segments_list(cf_db_t *db, const char *composition_id, cf_db_segment_t **segs_p,
                        int *count_p, char *err, size_t errlen)
{
    *segs_p = NULL;
    *count_p = 0;
    if (!s_valid_uuid(composition_id))
        return CF_DB_OK;
    const char *params[] = {composition_id};
    PGresult *res = NULL;
    int rc = s_exec(db, S_SEGMENTS_LIST, 1, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    cf_db_segment_t *segs = calloc((size_t)rows + 1, sizeof *segs);
    if (!segs) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    for (int i = 0; i < rows; i++) {
        cf_db_segment_t *s = &segs[i];
        s->index = (int)s_int64(res, i, 0);
        s->frame_start = s_int64(res, i, 1);
        s->frame_end = s_int64(res, i, 2);
        s->sources_json = s_strdup_or_null(res, i, 3);
        cf_seg_state_parse(PQgetvalue(res, i, 4), &s->state);
        s->progress = s_double(res, i, 5);
        s->node_id = s_strdup_or_null(res, i, 6);
        s->attempts = (int)s_int64(res, i, 7);
        s->epoch = s_int64(res, i, 8);
        s->blob_hash = s_strdup_or_null(res, i, 9);
        s->size_bytes = s_int64(res, i, 10);
        s->encode_fps = s_double(res, i, 11);
        s->fetch_ms = s_int64(res, i, 12);
        s->encode_ms = s_int64(res, i, 13);
        s->assigned_at = s_strdup_or_null(res, i, 14);
        s->started_at = s_strdup_or_null(res, i, 15);
        s->finished_at = s_strdup_or_null(res, i, 16);
    }
    PQclear(res);
    *segs_p = segs;
    *count_p = rows;
    return CF_DB_OK;
}

void cf_db_segments_free(cf_db_segment_t **segs_p, int count)
{
    if (!segs_p || !*segs_p)
        return;
    for (int i = 0; i < count; i++) {
        cf_db_segment_t *s = &(*segs_p)[i];
        free(s->sources_json);
        free(s->node_id);
        free(s->blob_hash);
        free(s->assigned_at);
        free(s->started_at);
        free(s->finished_at);
    }
    free(*segs_p);
    *segs_p = NULL;
}

/* ====================================================================== events */

int cf_db_event_append(cf_db_t *db, const char *composition_id, const char *type,
                       const char *payload_json, int64_t *id_p, char *err, size_t errlen)
{
    if (!s_valid_uuid(composition_id))
        return s_not_found("composition", composition_id, err, errlen);
    if (!type || !*type) {
        snprintf(err, errlen, "an event needs a type");
        return CF_DB_INVALID;
    }
    const char *params[] = {composition_id, type, payload_json};
    PGresult *res = NULL;
    int rc = s_exec(db, S_EVENT_APPEND, 3, params, NULL, NULL, &res, err, errlen);
    if (rc == CF_DB_NOT_FOUND)
        return s_not_found("composition", composition_id, err, errlen);
    if (rc < 0)
        return rc;
    if (id_p)
        *id_p = s_int64(res, 0, 0);
    PQclear(res);
    return CF_DB_OK;
}

int cf_db_events_since(cf_db_t *db, const char *composition_id, int64_t after_id, int limit,
                       cf_db_event_t **events_p, int *count_p, char *err, size_t errlen)
{
    *events_p = NULL;
    *count_p = 0;
    if (limit < 1 || limit > 1000) {
        snprintf(err, errlen, "limit must be 1..1000");
        return CF_DB_INVALID;
    }
    if (!s_valid_uuid(composition_id))
        return CF_DB_OK;
    char after[24], lim[16];
    snprintf(after, sizeof after, "%" PRId64, after_id);
    snprintf(lim, sizeof lim, "%d", limit);
    const char *params[] = {composition_id, after, lim};
    PGresult *res = NULL;
    int rc = s_exec(db, S_EVENTS_SINCE, 3, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    cf_db_event_t *events = calloc((size_t)rows + 1, sizeof *events);
    if (!events) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    for (int i = 0; i < rows; i++) {
        events[i].id = s_int64(res, i, 0);
        events[i].type = s_strdup_or_null(res, i, 1);
        events[i].payload_json = s_strdup_or_null(res, i, 2);
        events[i].at = s_strdup_or_null(res, i, 3);
    }
    PQclear(res);
    *events_p = events;
    *count_p = rows;
    return CF_DB_OK;
}

void cf_db_events_free(cf_db_event_t **events_p, int count)
{
    if (!events_p || !*events_p)
        return;
    for (int i = 0; i < count; i++) {
        free((*events_p)[i].type);
        free((*events_p)[i].payload_json);
        free((*events_p)[i].at);
    }
    free(*events_p);
    *events_p = NULL;
}

/* ====================================================================== api keys */

int cf_db_api_key_insert(cf_db_t *db, const char *id, const char *name, const unsigned char *hash,
                         size_t hash_len, char *err, size_t errlen)
{
    return cf_db_api_key_insert_scoped(db, id, name, hash, hash_len, false, err, errlen);
}

int cf_db_api_key_insert_scoped(cf_db_t *db, const char *id, const char *name,
                                const unsigned char *hash, size_t hash_len, bool admin, char *err,
                                size_t errlen)
{
    if (!id || !*id || !name || !hash || hash_len == 0 || hash_len > 1024) {
        snprintf(err, errlen, "an API key needs an id, a name and a hash");
        return CF_DB_INVALID;
    }
    const char *params[] = {id, name, (const char *)hash, admin ? "true" : "false"};
    int lengths[] = {0, 0, (int)hash_len, 0};
    int formats[] = {0, 0, 1, 0};
    PGresult *res = NULL;
    int rc = s_exec(db, S_KEY_INSERT_SCOPED, 4, params, lengths, formats, &res, err, errlen);
    if (rc == CF_DB_CONFLICT) {
        snprintf(err, errlen, "API key '%.64s' already exists", id);
        return rc;
    }
    if (rc < 0)
        return rc;
    PQclear(res);
    return CF_DB_OK;
}

static int s_key_from_row(const PGresult *res, int row, cf_db_api_key_t *key)
{
    memset(key, 0, sizeof *key);
    key->id = s_strdup_or_null(res, row, 0);
    key->name = s_strdup_or_null(res, row, 1);
    if (!PQgetisnull(res, row, 2)) {
        size_t len = 0;
        unsigned char *raw = PQunescapeBytea((const unsigned char *)PQgetvalue(res, row, 2), &len);
        if (raw) {
            key->hash = malloc(len ? len : 1);
            if (key->hash)
                memcpy(key->hash, raw, len);
            key->hash_len = len;
            PQfreemem(raw);
        }
    }
    key->created_at = s_strdup_or_null(res, row, 3);
    key->revoked_at = s_strdup_or_null(res, row, 4);
    key->admin = PQnfields(res) > 5 && !strcmp(PQgetvalue(res, row, 5), "t");
    return key->id && key->name ? 0 : -1;
}

void cf_db_api_key_clear(cf_db_api_key_t *key)
{
    if (!key)
        return;
    free(key->id);
    free(key->name);
    if (key->hash)
        sodium_memzero(key->hash, key->hash_len);
    free(key->hash);
    free(key->created_at);
    free(key->revoked_at);
    memset(key, 0, sizeof *key);
}

int cf_db_api_key_find(cf_db_t *db, const char *id, cf_db_api_key_t *key, char *err, size_t errlen)
{
    memset(key, 0, sizeof *key);
    if (!id)
        return s_not_found("API key", id, err, errlen);
    const char *params[] = {id};
    PGresult *res = NULL;
    int rc = s_exec(db, S_KEY_FIND, 1, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return s_not_found("API key", id, err, errlen);
    }
    if (s_key_from_row(res, 0, key) < 0 || !key->hash) {
        PQclear(res);
        cf_db_api_key_clear(key);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    PQclear(res);
    return CF_DB_OK;
}

int cf_db_api_key_revoke(cf_db_t *db, const char *id, char *err, size_t errlen)
{
    if (!id)
        return s_not_found("API key", id, err, errlen);
    const char *params[] = {id};
    PGresult *res = NULL;
    int rc = s_exec(db, S_KEY_REVOKE, 1, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    PQclear(res);
    return rows == 1 ? CF_DB_OK : s_not_found("API key", id, err, errlen);
}

int cf_db_api_key_list(cf_db_t *db, cf_db_api_key_t **keys_p, int *count_p, char *err,
                       size_t errlen)
{
    *keys_p = NULL;
    *count_p = 0;
    PGresult *res = NULL;
    int rc = s_exec(db, S_KEY_LIST, 0, NULL, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    cf_db_api_key_t *keys = calloc((size_t)rows + 1, sizeof *keys);
    if (!keys) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    for (int i = 0; i < rows; i++) {
        if (s_key_from_row(res, i, &keys[i]) < 0) {
            PQclear(res);
            cf_db_api_keys_free(&keys, rows);
            snprintf(err, errlen, "out of memory");
            return CF_DB_ERROR;
        }
    }
    PQclear(res);
    *keys_p = keys;
    *count_p = rows;
    return CF_DB_OK;
}

void cf_db_api_keys_free(cf_db_api_key_t **keys_p, int count)
{
    if (!keys_p || !*keys_p)
        return;
    for (int i = 0; i < count; i++)
        cf_db_api_key_clear(&(*keys_p)[i]);
    free(*keys_p);
    *keys_p = NULL;
}

/* ====================================================================== tenancy */

int cf_db_composition_owner(cf_db_t *db, const char *id, char *owner, size_t ownerlen, char *err,
                            size_t errlen)
{
    const char *params[] = {id};
    PGresult *res = NULL;
    int rc = s_exec(db, S_OWNER, 1, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return s_not_found("composition", id, err, errlen);
    }
    snprintf(owner, ownerlen, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return CF_DB_OK;
}

int cf_db_blob_record(cf_db_t *db, const char *hash, const char *key_id, const char *node_id,
                      int64_t size_bytes, char *err, size_t errlen)
{
    char size[24];
    snprintf(size, sizeof size, "%lld", (long long)size_bytes);
    const char *params[] = {hash, key_id ? key_id : "", node_id, size};
    PGresult *res = NULL;
    int rc = s_exec(db, S_BLOB_RECORD, 4, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    PQclear(res);
    return CF_DB_OK;
}

int cf_db_blob_usage(cf_db_t *db, const char *key_id, int64_t *bytes_p, char *err, size_t errlen)
{
    *bytes_p = 0;
    const char *params[] = {key_id ? key_id : ""};
    PGresult *res = NULL;
    int rc = s_exec(db, S_BLOB_USAGE, 1, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) == 1)
        *bytes_p = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return CF_DB_OK;
}

int cf_db_blob_owned(cf_db_t *db, const char *hash, const char *key_id, bool *owned_p, char *err,
                     size_t errlen)
{
    *owned_p = false;
    const char *params[] = {hash, key_id ? key_id : ""};
    PGresult *res = NULL;
    int rc = s_exec(db, S_BLOB_OWNED, 2, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    *owned_p = PQntuples(res) > 0;
    PQclear(res);
    return CF_DB_OK;
}

int cf_db_blob_gc(cf_db_t *db, const char *node_id, int keep_s, int max_rows, char ***hashes_p,
                  int *count_p, char *err, size_t errlen)
{
    *hashes_p = NULL;
    *count_p = 0;
    char keep[24], max[16];
    snprintf(keep, sizeof keep, "%d", keep_s);
    snprintf(max, sizeof max, "%d", max_rows);
    const char *params[] = {node_id, keep, max};
    PGresult *res = NULL;
    int rc = s_exec(db, S_BLOB_GC, 3, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    char **hashes = calloc((size_t)rows + 1, sizeof *hashes);
    if (!hashes) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    for (int i = 0; i < rows; i++)
        hashes[i] = strdup(PQgetvalue(res, i, 0));
    PQclear(res);
    *hashes_p = hashes;
    *count_p = rows;
    return CF_DB_OK;
}

void cf_db_strings_free(char ***items_p, int count)
{
    if (!items_p || !*items_p)
        return;
    for (int i = 0; i < count; i++)
        free((*items_p)[i]);
    free(*items_p);
    *items_p = NULL;
}

/* ====================================================================== s3, webhooks */

int cf_db_composition_set_s3_location(cf_db_t *db, const char *id, const char *location, char *err,
                                      size_t errlen)
{
    const char *params[] = {id, location};
    PGresult *res = NULL;
    int rc = s_exec(db, S_S3_LOCATION, 2, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    PQclear(res);
    if (rows != 1) {
        snprintf(err, errlen, "composition %s is no longer processing", id);
        return CF_DB_ILLEGAL;
    }
    return CF_DB_OK;
}

int cf_db_webhook_claim(cf_db_t *db, const char *holder, int lease_s, int max,
                        cf_db_webhook_t **items_p, int *count_p, char *err, size_t errlen)
{
    *items_p = NULL;
    *count_p = 0;
    char lease[16], limit[16];
    snprintf(lease, sizeof lease, "%d", lease_s);
    snprintf(limit, sizeof limit, "%d", max);
    const char *params[] = {holder, lease, limit};
    PGresult *res = NULL;
    int rc = s_exec(db, S_WEBHOOK_CLAIM, 3, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    cf_db_webhook_t *items = calloc((size_t)rows + 1, sizeof *items);
    if (!items) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    for (int i = 0; i < rows; i++) {
        items[i].id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        snprintf(items[i].composition_id, sizeof items[i].composition_id, "%s",
                 PQgetvalue(res, i, 1));
        items[i].api_key_id = strdup(PQgetvalue(res, i, 2));
        items[i].url = strdup(PQgetvalue(res, i, 3));
        items[i].body = strdup(PQgetvalue(res, i, 4));
        items[i].attempts = (int)strtol(PQgetvalue(res, i, 5), NULL, 10);
        items[i].age_s = strtod(PQgetvalue(res, i, 6), NULL);
    }
    PQclear(res);
    *items_p = items;
    *count_p = rows;
    for (int i = 0; i < rows; i++) {
        if (!items[i].api_key_id || !items[i].url || !items[i].body) {
            cf_db_webhooks_free(items_p, rows);
            *count_p = 0;
            snprintf(err, errlen, "out of memory");
            return CF_DB_ERROR;
        }
    }
    return CF_DB_OK;
}

void cf_db_webhooks_free(cf_db_webhook_t **items_p, int count)
{
    if (!items_p || !*items_p)
        return;
    for (int i = 0; i < count; i++) {
        free((*items_p)[i].api_key_id);
        free((*items_p)[i].url);
        free((*items_p)[i].body);
    }
    free(*items_p);
    *items_p = NULL;
}

int cf_db_webhook_finish(cf_db_t *db, int64_t id, const char *holder, bool delivered,
                         int64_t retry_in_ms, bool give_up, char *err, size_t errlen)
{
    char idtext[24], delay[24];
    snprintf(idtext, sizeof idtext, "%lld", (long long)id);
    snprintf(delay, sizeof delay, "%lld", (long long)retry_in_ms);
    PGresult *res = NULL;
    int rc;
    if (delivered || give_up) {
        const char *params[] = {idtext, delivered ? "delivered" : "abandoned", holder};
        rc = s_exec(db, S_WEBHOOK_DONE, 3, params, NULL, NULL, &res, err, errlen);
    } else {
        const char *params[] = {idtext, delay, holder};
        rc = s_exec(db, S_WEBHOOK_RETRY, 3, params, NULL, NULL, &res, err, errlen);
    }
    if (rc < 0)
        return rc;
    PQclear(res);
    return CF_DB_OK;
}
