/* cf_db_statements: the table of cf_db's prepared statements, all of the
 * module's SQL (constant text, parameterised; see cf_db_internal.h). */
#include "cf_db_internal.h"

#include <pthread.h>
#include <stdio.h>

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
    "'waiting', c.wait_reason, "                                                                   \
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
 * a lost answer whether the statement committed; a take's is also its claim
 * token), $13 the claim the caller holds (NULL: no check), $14/$15 a take's
 * owner and claim lifetime in ms, $16 the event's reason. The EXISTS and
 * the claim check are re-evaluated on the newest row version when a
 * concurrent update got there first, so a transition is only ever applied
 * from a state the table allows. prev reports the state (and claim) before;
 * the trigger of sql/023_claims.sql ends the claim when the composition
 * leaves processing. */
#define S_TRANSITION_SQL                                                                           \
    "WITH prev AS (SELECT cf_state(status, stage) AS state, claim_op FROM compositions"            \
    " WHERE id = $1::uuid),"                                                                       \
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
    "  output_hash = coalesce($11::text, c.output_hash),"                                          \
    "  claimed_by = CASE WHEN $2::text = 'planning' THEN $14::text ELSE c.claimed_by END,"         \
    "  claim_op = CASE WHEN $2::text = 'planning' THEN $12::text ELSE c.claim_op END,"             \
    "  claim_expires_at = CASE WHEN $2::text = 'planning'"                                         \
    "   THEN now() + $15::int * interval '1 millisecond' ELSE c.claim_expires_at END"              \
    "  WHERE c.id = $1::uuid AND EXISTS (SELECT 1 FROM composition_transitions t"                  \
    "   WHERE t.from_state = cf_state(c.status, c.stage) AND t.to_state = $2::text)"               \
    "  AND ($13::text IS NULL OR c.claim_op = $13::text)"                                          \
    "  RETURNING c.id, c.version, c.progress),"                                                    \
    " ev AS (INSERT INTO events (composition_id, type, payload)"                                   \
    "  SELECT upd.id, 'status', jsonb_strip_nulls(jsonb_build_object('from', (SELECT state FROM "  \
    "prev), 'to', $2::text, 'by', $5::text, 'error', $6::text, 'op', $12::text,"                   \
    " 'reason', $16::text)) FROM upd)"                                                             \
    " SELECT (SELECT state FROM prev), upd.version, upd.progress, (SELECT claim_op FROM prev)"     \
    " FROM (SELECT 1) one LEFT JOIN upd ON true"

/* The coordinator's fence, in the statement itself: the lease row holds
 * exactly this epoch ($E) and holder ($H) and has not expired when it is
 * locked (clock_timestamp()). FOR SHARE serialises with an acquirer's row
 * lock. An uncorrelated EXISTS: checked once, before the target rows are
 * locked (S_FENCE locks them first, then the lease); the share lock keeps
 * a successor out until the write commits either way. */
#define S_WFENCE(E, H)                                                                             \
    "(SELECT 1 FROM coordinator_lease l WHERE l.epoch = $" #E "::bigint"                           \
    " AND l.holder = $" #H "::text::uuid AND l.expires_at > clock_timestamp() FOR SHARE)"

/* A task's assignment token: $1 composition, $2 idx, $3 node, $4 attempt,
 * $5 epoch (the fence's: assignments of another epoch are void). */
#define S_TOKEN                                                                                    \
    " s.composition_id = $1::uuid AND s.idx = $2::int AND s.node_id = $3::text"                    \
    " AND s.attempts = $4::int AND s.epoch = $5::bigint"
/* The fence of a coordinator's write: the lease row, locked FOR SHARE until
 * the statement commits, carries the writer's epoch (EPOCH) and holder
 * (HOLDER) and has not expired. clock_timestamp(), not now(): the check is
 * made when the lease row is locked, which is after the rows the write
 * changes were locked (AFTER names the CTE that locks them), so time spent
 * waiting for those rows counts and the lease is held only for the write
 * itself. A successor's acquire waits for the lock, so a write that passed
 * the fence commits before any newer epoch begins. With EPOCH or HOLDER
 * NULL it matches nothing and locks nothing (the caller's own check). */
#define S_FENCE(epoch, holder, after)                                                              \
    "SELECT 1 FROM coordinator_lease WHERE id = 1 AND epoch = " epoch "::bigint"                   \
    " AND holder = " holder "::uuid AND expires_at > clock_timestamp()"                            \
    " AND EXISTS (SELECT 1 FROM " after ") FOR SHARE"
/* cf_db_segment_update and cf_db_segment_update_fenced: $1 composition, $2
 * index, $3 epoch (0: the local renderer), $4 state, $5 progress, $6 node,
 * $7/$8 blob and size, $9 fps, $10/$11 timings, $12 the coordinator's
 * holder id (NULL: no fence, epoch 0). The segment's row is locked first
 * (tgt), then the lease; a done segment changes no more. */
#define S_SEGMENT_UPDATE_SQL                                                                       \
    "WITH tgt AS (SELECT epoch, status, blob_hash FROM segments"                                   \
    "  WHERE composition_id = $1::uuid AND idx = $2::int FOR UPDATE),"                             \
    " fence AS (" S_FENCE(                                                                         \
        "$3", "$12",                                                                               \
        "tgt") "),"                                                                                \
               " upd AS (UPDATE segments s SET"                                                    \
               "  status = coalesce($4::text, s.status),"                                          \
               "  progress = coalesce($5::float8, CASE WHEN $4::text = 'done' THEN 1 ELSE "        \
               "s.progress END),"                                                                  \
               "  node_id = coalesce($6::text, s.node_id),"                                        \
               "  blob_hash = coalesce($7::text, s.blob_hash),"                                    \
               "  size_bytes = coalesce($8::bigint, s.size_bytes),"                                \
               "  encode_fps = coalesce($9::float8, s.encode_fps),"                                \
               "  fetch_ms = coalesce($10::bigint, s.fetch_ms),"                                   \
               "  encode_ms = coalesce($11::bigint, s.encode_ms),"                                 \
               "  attempts = s.attempts + CASE WHEN $4::text = 'assigned' THEN 1 ELSE 0 END,"      \
               "  assigned_at = CASE WHEN $4::text = 'assigned' THEN now() ELSE s.assigned_at "    \
               "END,"                                                                              \
               "  started_at = CASE WHEN $4::text = 'encoding' THEN now() ELSE s.started_at END,"  \
               "  finished_at = CASE WHEN $4::text IN ('done', 'failed') THEN now()"               \
               "                WHEN $4::text IS NOT NULL THEN NULL ELSE s.finished_at END,"       \
               "  epoch = $3::bigint"                                                              \
               "  WHERE s.composition_id = $1::uuid AND s.idx = $2::int AND s.epoch <= $3::bigint" \
               "  AND s.status <> 'done' AND EXISTS (SELECT 1 FROM tgt)"                           \
               "  AND ($12::uuid IS NULL OR EXISTS (SELECT 1 FROM fence))"                         \
               "  RETURNING 1)"                                                                    \
               " SELECT tgt.epoch, tgt.status, (SELECT count(*) FROM upd), (SELECT count(*) FROM " \
               "fence),"                                                                           \
               " ($7::text IS NULL OR tgt.blob_hash IS NOT DISTINCT FROM $7::text) FROM tgt"

const cf_dbi_stmt_def_t cf_dbi_stmts[CF_DBI_STMT_COUNT] = {
    [CF_DBI_PING] = {"ping", "SELECT 1", true},
    [CF_DBI_CREATE] =
        {"composition_create",
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
    [CF_DBI_FIND_IDEMPOTENT] = {"composition_find_idempotent",
                                "SELECT id, request_hash FROM compositions"
                                " WHERE coalesce(api_key_id, '') = coalesce($1::text, '')"
                                " AND idempotency_key = $2::text",
                                true},
    [CF_DBI_GET_JSON] = {"composition_get_json",
                         "SELECT json_build_object(" S_COMPOSITION_FIELDS ", 'spec', c.spec)::text,"
                         " c.version FROM compositions c WHERE c.id = $1::uuid",
                         true},
    [CF_DBI_GET] = {"composition_get",
                    "SELECT c.title, c.status, c.stage, c.priority, c.spec::text, c.progress,"
                    " c.attempts, c.version, c.api_key_id, c.error_code, c.error_message,"
                    " c.output_location, c.output_size_bytes, c.output_duration_s, c.output_hash"
                    " FROM compositions c WHERE c.id = $1::uuid",
                    true},
    [CF_DBI_LIST] = {"composition_list", S_LIST_SELECT S_LIST_ORDER "$1::int", true},
    /* CF_DBI_LIST_AFTER, CF_DBI_LIST_STATUS_AFTER: built in cf_dbi_stmt_sql (parameter
     * numbers differ). */
    [CF_DBI_LIST_AFTER] = {"composition_list_after", NULL, true},
    [CF_DBI_LIST_STATUS] = {"composition_list_status",
                            S_LIST_SELECT "WHERE c.status = $1::text" S_LIST_ORDER "$2::int", true},
    [CF_DBI_LIST_STATUS_AFTER] = {"composition_list_status_after", NULL, true},
    [CF_DBI_TRANSITION] = {"composition_transition", S_TRANSITION_SQL, false},
    [CF_DBI_PROGRESS] =
        {"composition_progress",
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
    [CF_DBI_OUTPUT] =
        {"composition_output",
         "WITH upd AS (UPDATE compositions c SET output_location = $2::text,"
         " output_size_bytes = $3::bigint, output_duration_s = $4::float8,"
         " output_hash = $5::text"
         " WHERE c.id = $1::uuid AND c.status = 'processing'"
         " RETURNING c.id, c.version, c.progress, cf_state(c.status, c.stage) AS state)"
         " SELECT (SELECT cf_state(status, stage) FROM compositions"
         " WHERE id = $1::uuid), upd.version, upd.progress, upd.state"
         " FROM (SELECT 1) one LEFT JOIN upd ON true",
         false},
    [CF_DBI_COUNTS] = {"composition_counts",
                       "SELECT cf_state(status, stage), count(*) FROM compositions GROUP BY 1",
                       true},
    [CF_DBI_QUEUED] = {"composition_queued",
                       "SELECT id, priority FROM compositions WHERE status = 'queued'"
                       " ORDER BY created_at LIMIT $1::int",
                       true},
    [CF_DBI_PURGE] =
        {"composition_purge",
         /* An output location another composition still has (equal bytes
          * are one blob) comes back NULL: its file must stay. */
         "WITH gone AS (DELETE FROM compositions c WHERE c.id IN (SELECT id FROM compositions"
         " WHERE finished_at < now() - least($1::bigint, $2::bigint) * interval '1 second'"
         " AND (idempotency_key IS NULL"
         "  OR created_at < now() - $4::bigint * interval '1 second')"
         " AND ("
         " (status = 'completed'"
         "  AND finished_at < now() - $1::bigint * interval '1 second')"
         " OR (status IN ('failed', 'cancelled')"
         "  AND finished_at < now() - $2::bigint * interval '1 second'))"
         " ORDER BY finished_at LIMIT $3::int FOR UPDATE SKIP LOCKED)"
         " RETURNING c.id, cf_state(c.status, c.stage) AS state, c.output_location)"
         " SELECT g.id, g.state, CASE WHEN NOT EXISTS (SELECT 1 FROM compositions o"
         "  WHERE o.output_location = g.output_location"
         "  AND o.id NOT IN (SELECT id FROM gone)) THEN g.output_location END"
         " FROM gone g",
         false},
    [CF_DBI_SEGMENTS_CREATE] =
        {"segments_create",
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
    [CF_DBI_SEGMENT_UPDATE] = {"segment_update", S_SEGMENT_UPDATE_SQL, false},
    [CF_DBI_SEGMENTS_LIST] =
        {"segments_list",
         "SELECT idx, frame_start, frame_end, sources::text, status, progress,"
         " node_id, attempts, epoch, blob_hash, size_bytes, encode_fps,"
         " fetch_ms, encode_ms, " S_TS("assigned_at") ", " S_TS("started_at") ", " S_TS(
             "finished_at") ", assigned_epoch, kind, error"
                            " FROM segments"
                            " WHERE composition_id = "
                            "$1::uuid ORDER BY idx",
         true},
    /* A coordinator's writes (cf_db_fenced.c), each checking its lease with
     * S_FENCE. */
    [CF_DBI_SEGMENTS_CREATE_FENCED] =
        {"segments_create_fenced",
         "WITH comp AS (SELECT id FROM compositions WHERE id = $1::uuid FOR KEY SHARE),"
         " fence AS (" S_FENCE(
             "$2", "$4",
             "comp") "),"
                     " ins AS (INSERT INTO segments"
                     " (composition_id, idx, frame_start, frame_end, sources, epoch)"
                     " SELECT comp.id, s.idx, s.frame_start, s.frame_end,"
                     " coalesce(s.sources, '[]'), $2::bigint"
                     " FROM comp, fence, jsonb_to_recordset($3::jsonb)"
                     " AS s(idx int, frame_start bigint, frame_end bigint, sources jsonb)"
                     " RETURNING 1)"
                     " SELECT (SELECT count(*) FROM comp), (SELECT count(*) FROM fence),"
                     " (SELECT count(*) FROM ins)",
         false},
    /* $1 composition, $2 index, $3 epoch, $4 holder, $5 node: the segment
     * becomes that node's next attempt, under the coordinator's epoch. */
    [CF_DBI_SEGMENT_ASSIGN_FENCED] =
        {"segment_assign_fenced",
         "WITH tgt AS (SELECT epoch, status FROM segments"
         "  WHERE composition_id = $1::uuid AND idx = $2::int FOR UPDATE),"
         " fence AS (" S_FENCE(
             "$3", "$4",
             "tgt") "),"
                    " upd AS (UPDATE segments s SET status = 'assigned', node_id = $5::text,"
                    "  attempts = s.attempts + 1, assigned_epoch = $3::bigint, epoch = $3::bigint,"
                    "  progress = 0, blob_hash = NULL, size_bytes = NULL, assigned_at = now(),"
                    "  started_at = NULL, finished_at = NULL"
                    "  WHERE s.composition_id = $1::uuid AND s.idx = $2::int AND s.status <> 'done'"
                    "  AND s.epoch <= $3::bigint AND EXISTS (SELECT 1 FROM fence)"
                    "  RETURNING s.attempts)"
                    " SELECT tgt.epoch, tgt.status, (SELECT count(*) FROM fence),"
                    " (SELECT attempts FROM upd) FROM tgt",
         false},
    /* A worker's result: $1 composition, $2 index, $3..$5 the assignment
     * token (epoch, attempt, node), $6 state (encoding, done or failed; NULL
     * keeps it), $7 progress, $8 blob, $9 size, $10 fps, $11/$12 timings,
     * $13/$14 the relaying coordinator's fence (both NULL: none). Applied
     * only to the current, unfinished assignment; done is write-once. */
    [CF_DBI_SEGMENT_REPORT] =
        {"segment_report",
         "WITH tgt AS (SELECT status, assigned_epoch, attempts, node_id, blob_hash FROM segments"
         "  WHERE composition_id = $1::uuid AND idx = $2::int FOR UPDATE),"
         " fence AS (" S_FENCE(
             "$13", "$14",
             "tgt") "),"
                    " upd AS (UPDATE segments s SET"
                    "  status = coalesce($6::text, s.status),"
                    "  progress = coalesce($7::float8, CASE WHEN $6::text = 'done' THEN 1 ELSE "
                    "s.progress "
                    "END),"
                    "  blob_hash = coalesce($8::text, s.blob_hash),"
                    "  size_bytes = coalesce($9::bigint, s.size_bytes),"
                    "  encode_fps = coalesce($10::float8, s.encode_fps),"
                    "  fetch_ms = coalesce($11::bigint, s.fetch_ms),"
                    "  encode_ms = coalesce($12::bigint, s.encode_ms),"
                    "  started_at = CASE WHEN $6::text = 'encoding' THEN now() ELSE s.started_at "
                    "END,"
                    "  finished_at = CASE WHEN $6::text IN ('done', 'failed') THEN now()"
                    "                ELSE s.finished_at END"
                    "  WHERE s.composition_id = $1::uuid AND s.idx = $2::int"
                    "  AND s.status IN ('assigned', 'encoding') AND s.assigned_epoch = $3::bigint"
                    "  AND s.attempts = $4::int AND s.node_id = $5::text AND EXISTS (SELECT 1 FROM "
                    "tgt)"
                    "  AND ($13::bigint IS NULL OR EXISTS (SELECT 1 FROM fence))"
                    "  RETURNING 1)"
                    " SELECT tgt.status, (tgt.assigned_epoch IS NOT DISTINCT FROM $3::bigint"
                    "  AND tgt.attempts = $4::int AND tgt.node_id IS NOT DISTINCT FROM $5::text),"
                    " ($8::text IS NULL OR tgt.blob_hash IS NOT DISTINCT FROM $8::text),"
                    " (SELECT count(*) FROM fence), (SELECT count(*) FROM upd) FROM tgt",
         false},
    /* S_TRANSITION_SQL made by a coordinator: $1 id, $2 target state, $3 its
     * status, $4 its stage, $5 epoch, $6 holder, $7/$8 error code/message,
     * $9..$12 output, $13 operation id. The composition's row is locked
     * before the lease is (the lease is held only for the write itself). */
    [CF_DBI_TRANSITION_FENCED] =
        {"composition_transition_fenced",
         "WITH tgt AS (SELECT cf_state(status, stage) AS state FROM compositions"
         "  WHERE id = $1::uuid FOR NO KEY UPDATE),"
         " fence AS (" S_FENCE(
             "$5", "$6",
             "tgt") "),"
                    " upd AS (UPDATE compositions c SET status = $3::text, stage = $4::text,"
                    "  attempts = c.attempts + CASE WHEN $2::text = 'planning' THEN 1 ELSE 0 END,"
                    "  started_at = CASE WHEN $2::text = 'planning' THEN now() ELSE c.started_at "
                    "END,"
                    "  finished_at = CASE WHEN $2::text IN ('completed', 'failed', 'cancelled') "
                    "THEN now()"
                    "                ELSE c.finished_at END,"
                    "  progress = CASE WHEN $2::text = 'completed' THEN 1"
                    "             WHEN $2::text = 'queued' THEN 0 ELSE c.progress END,"
                    "  wait_reason = NULL,"
                    "  error_code = coalesce($7::text, c.error_code),"
                    "  error_message = coalesce($8::text, c.error_message),"
                    "  output_location = coalesce($9::text, c.output_location),"
                    "  output_size_bytes = coalesce($10::bigint, c.output_size_bytes),"
                    "  output_duration_s = coalesce($11::float8, c.output_duration_s),"
                    "  output_hash = coalesce($12::text, c.output_hash)"
                    "  WHERE c.id = $1::uuid AND EXISTS (SELECT 1 FROM fence)"
                    "  AND EXISTS (SELECT 1 FROM composition_transitions t"
                    "   WHERE t.from_state = cf_state(c.status, c.stage) AND t.to_state = $2::text)"
                    "  RETURNING c.id, c.version, c.progress),"
                    " ev AS (INSERT INTO events (composition_id, type, payload)"
                    "  SELECT upd.id, 'status', jsonb_strip_nulls(jsonb_build_object('from',"
                    "  (SELECT state FROM tgt), 'to', $2::text, 'by', $6::text, 'epoch', "
                    "$5::bigint,"
                    "  'error', $7::text, 'op', $13::text)) FROM upd)"
                    " SELECT (SELECT state FROM tgt), (SELECT count(*) FROM fence), upd.version,"
                    " upd.progress FROM (SELECT 1) one LEFT JOIN upd ON true",
         false},
    [CF_DBI_EVENT_APPEND] = {"event_append",
                             "INSERT INTO events (composition_id, type, payload)"
                             " VALUES ($1::uuid, $2::text, $3::jsonb) RETURNING id",
                             false},
    [CF_DBI_EVENTS_SINCE] = {"events_since",
                             "SELECT id, type, coalesce(payload::text, 'null'), " S_TS(
                                 "at") " FROM events WHERE composition_id = $1::uuid AND id > "
                                       "$2::bigint ORDER BY id LIMIT $3::int",
                             true},
    [CF_DBI_KEY_INSERT] =
        {"api_key_insert",
         "INSERT INTO api_keys (id, name, secret_hash) VALUES ($1::text, $2::text, "
         "$3::bytea)",
         false},
    [CF_DBI_KEY_FIND] = {"api_key_find",
                         "SELECT id, name, secret_hash, " S_TS("created_at") ", " S_TS(
                             "revoked_at") ", admin FROM api_keys WHERE id = $1::text",
                         true},
    [CF_DBI_KEY_REVOKE] = {"api_key_revoke",
                           "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
                           " WHERE id = $1::text RETURNING 1",
                           false},
    [CF_DBI_KEY_LIST] = {"api_key_list",
                         "SELECT id, name, NULL, " S_TS("created_at") ", " S_TS(
                             "revoked_at") ", admin FROM api_keys ORDER BY created_at, id",
                         true},
    [CF_DBI_OP_APPLIED] = {"composition_op_applied",
                           "SELECT c.version, c.progress, cf_state(c.status, c.stage), c.claim_op"
                           " FROM events e JOIN compositions c ON c.id = e.composition_id"
                           " WHERE e.composition_id = $1::uuid AND e.type = 'status'"
                           " AND e.payload->>'op' = $2::text LIMIT 1",
                           true},
    /* One key's compositions ($1 the key id); the _AFTER and _STATUS forms
     * are built in s_build_sql. */
    [CF_DBI_LIST_OWNED] = {"composition_list_owned",
                           S_LIST_SELECT "WHERE c.api_key_id = $1::text" S_LIST_ORDER "$2::int",
                           true},
    [CF_DBI_LIST_OWNED_AFTER] = {"composition_list_owned_after", NULL, true},
    [CF_DBI_LIST_OWNED_STATUS] =
        {"composition_list_owned_status",
         S_LIST_SELECT "WHERE c.api_key_id = $1::text AND c.status = $2::text" S_LIST_ORDER
                       "$3::int",
         true},
    [CF_DBI_LIST_OWNED_STATUS_AFTER] = {"composition_list_owned_status_after", NULL, true},
    [CF_DBI_OWNER] = {"composition_owner",
                      "SELECT coalesce(api_key_id, '') FROM compositions WHERE id = $1::uuid",
                      true},
    [CF_DBI_KEY_INSERT_SCOPED] = {"api_key_insert_scoped",
                                  "INSERT INTO api_keys (id, name, secret_hash, admin)"
                                  " VALUES ($1::text, $2::text, $3::bytea, $4::boolean)",
                                  false},
    [CF_DBI_BLOB_RECORD] = {"blob_record",
                            "INSERT INTO blob_uploads (hash, api_key_id, node_id, size_bytes)"
                            " VALUES ($1::text, $2::text, $3::text, $4::bigint)"
                            " ON CONFLICT (hash, api_key_id) DO UPDATE SET created_at = now(),"
                            " node_id = excluded.node_id",
                            false},
    [CF_DBI_BLOB_USAGE] = {"blob_usage",
                           "SELECT coalesce(sum(size_bytes), 0)::bigint FROM blob_uploads"
                           " WHERE api_key_id = $1::text",
                           true},
    [CF_DBI_BLOB_OWNED] =
        {"blob_owned", "SELECT 1 FROM blob_uploads WHERE hash = $1::text AND api_key_id = $2::text",
         true},
    /* Uploads of node $1 older than $2 seconds that no composition names as
     * a source; answers the hashes no upload row of this node keeps. */
    [CF_DBI_BLOB_GC] =
        {"blob_gc",
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
    [CF_DBI_S3_LOCATION] = {"composition_s3_location",
                            "UPDATE compositions SET output_s3_location = $2::text"
                            " WHERE id = $1::uuid AND status = 'processing' RETURNING 1",
                            false},
    /* Due deliveries nobody holds, claimed by $1 for $2 seconds. */
    [CF_DBI_WEBHOOK_CLAIM] =
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
    [CF_DBI_WEBHOOK_DONE] = {"webhook_done",
                             "UPDATE webhook_deliveries SET claimed_until = NULL,"
                             " delivered_at = CASE WHEN $2::text = 'delivered' THEN now() END,"
                             " abandoned_at = CASE WHEN $2::text = 'abandoned' THEN now() END"
                             " WHERE id = $1::bigint AND claimed_by = $3::text"
                             " AND delivered_at IS NULL AND abandoned_at IS NULL RETURNING 1",
                             false},
    [CF_DBI_WEBHOOK_RETRY] = {"webhook_retry",
                              "UPDATE webhook_deliveries SET claimed_until = NULL,"
                              " next_at = now() + $2::bigint * interval '1 millisecond'"
                              " WHERE id = $1::bigint AND claimed_by = $3::text"
                              " AND delivered_at IS NULL RETURNING 1",
                              false},
    /* ---- the coordinator's work list (cf_db_work.c); fenced by $5/$6 or
     * $13/$14 unless read-only. */
    [CF_DBI_W_PLAN] =
        {"work_plan",
         "WITH f AS " S_WFENCE(
             2, 3) ","
                   " c AS (UPDATE compositions SET plan = $4::jsonb, encoder = $5::text, stage = "
                   "'encoding',"
                   "  wait_reason = NULL"
                   "  WHERE id = $1::uuid AND status = 'processing' AND stage = 'planning'"
                   "  AND EXISTS (SELECT 1 FROM f) RETURNING id, version, progress),"
                   " ins AS (INSERT INTO segments (composition_id, idx, kind, frame_start, "
                   "frame_end, epoch)"
                   "  SELECT c.id, t.idx, t.kind, t.frame_start, t.frame_end, $2::bigint"
                   "  FROM c, jsonb_to_recordset($6::jsonb)"
                   "  AS t(idx int, kind text, frame_start bigint, frame_end bigint) RETURNING 1),"
                   " ev AS (INSERT INTO events (composition_id, type, payload)"
                   "  SELECT id, 'status', jsonb_build_object('from', 'planning', 'to', 'encoding',"
                   "  'by', $3::text) FROM c)"
                   " SELECT (SELECT count(*) FROM f), c.version, c.progress, (SELECT count(*) FROM "
                   "ins)"
                   " FROM (SELECT 1) one LEFT JOIN c ON true",
         false},
    [CF_DBI_W_OPEN] =
        {"work_open",
         "SELECT s.composition_id, s.idx, s.kind, s.frame_start, s.frame_end, s.status,"
         " s.node_id, s.attempts, s.epoch, s.progress, s.blob_hash, coalesce(s.size_bytes, 0),"
         " c.stage, c.priority, extract(epoch FROM now() - c.created_at), c.encoder,"
         " coalesce((SELECT jsonb_agg(x.node_id) FROM segment_failures x"
         "  WHERE x.composition_id = c.id AND x.failures >= 3), '[]'),"
         " c.wait_reason IS NOT NULL"
         " FROM compositions c JOIN segments s ON s.composition_id = c.id"
         " WHERE c.status = 'processing' AND c.stage IN ('encoding', 'assembling')"
         " ORDER BY c.created_at, c.id, s.idx",
         true},
    [CF_DBI_W_PLAN_JSON] = {"work_plan_json",
                            "SELECT plan::text FROM compositions WHERE id = $1::uuid", true},
    [CF_DBI_W_ASSIGN] =
        {"work_assign",
         "UPDATE segments s SET status = 'assigned', node_id = $3::text,"
         " attempts = s.attempts + 1, epoch = $4::bigint, assigned_at = now(), started_at = NULL,"
         " finished_at = NULL, progress = 0, error = NULL"
         " WHERE s.composition_id = $1::uuid AND s.idx = $2::int AND s.status = 'pending'"
         " AND EXISTS " S_WFENCE(4, 5) " RETURNING s.attempts",
         false},
    [CF_DBI_W_ACCEPT] = {"work_accept",
                         "UPDATE segments s SET status = 'encoding', started_at = now()"
                         " WHERE " S_TOKEN " AND s.status = 'assigned'"
                         " AND EXISTS " S_WFENCE(5, 6) " RETURNING 1",
                         false},
    [CF_DBI_W_PROGRESS] = {"work_progress",
                           "UPDATE segments s SET progress = greatest(s.progress, $7::float8)"
                           " WHERE " S_TOKEN " AND s.status IN ('assigned', 'encoding')"
                           " AND EXISTS " S_WFENCE(5, 6) " RETURNING 1",
                           false},
    [CF_DBI_W_DONE] = {"work_done",
                       "UPDATE segments s SET status = 'done', progress = 1, blob_hash = $7::text,"
                       " size_bytes = $8::bigint, encode_fps = $9::float8, encode_ms = $10::bigint,"
                       " finished_at = now(), started_at = coalesce(s.started_at, now())"
                       " WHERE " S_TOKEN " AND s.status IN ('assigned', 'encoding')"
                       " AND EXISTS " S_WFENCE(5, 6) " RETURNING 1",
                       false},
    [CF_DBI_W_RETRY] =
        {"work_retry",
         "WITH f AS " S_WFENCE(
             5, 6) ","
                   " upd AS (UPDATE segments s SET"
                   "  attempts = s.attempts - CASE WHEN $7::bool THEN 0 ELSE 1 END,"
                   "  status = CASE WHEN $7::bool AND s.attempts >= $9::int THEN 'failed' ELSE "
                   "'pending' END,"
                   "  error = left($8::text, 1024), progress = 0,"
                   "  finished_at = CASE WHEN $7::bool AND s.attempts >= $9::int THEN now() END"
                   "  WHERE " S_TOKEN " AND s.status IN ('assigned', 'encoding')"
                   "  AND EXISTS (SELECT 1 FROM f) RETURNING s.status),"
                   " bad AS (INSERT INTO segment_failures (composition_id, node_id, failures)"
                   "  SELECT $1::uuid, $3::text, 1 FROM upd WHERE $7::bool"
                   "  ON CONFLICT (composition_id, node_id)"
                   "  DO UPDATE SET failures = segment_failures.failures + 1)"
                   " SELECT (SELECT count(*) FROM f), (SELECT status FROM upd)",
         false},
    [CF_DBI_W_TAKEOVER] =
        {"work_takeover",
         "WITH f AS " S_WFENCE(
             1,
             2) ","
                " open AS (UPDATE segments s SET status = 'pending', progress = 0,"
                "  attempts = greatest(s.attempts - 1, 0)"
                "  FROM compositions c WHERE c.id = s.composition_id AND c.status = 'processing'"
                "  AND s.status IN ('assigned', 'encoding') AND EXISTS (SELECT 1 FROM f) RETURNING "
                "1),"
                " lost AS (UPDATE segments s SET status = 'pending', progress = 0, blob_hash = "
                "NULL,"
                "  size_bytes = NULL, finished_at = NULL"
                "  FROM compositions c WHERE c.id = s.composition_id AND c.status = 'processing'"
                "  AND c.stage = 'encoding' AND s.status = 'done' AND s.kind <> 'assemble'"
                "  AND NOT (s.node_id = ANY ($3::text[])) AND EXISTS (SELECT 1 FROM f) RETURNING "
                "1),"
                " back AS (UPDATE compositions c SET status = 'queued', stage = NULL, progress = 0"
                "  WHERE c.status = 'processing' AND c.stage = 'planning' AND EXISTS (SELECT 1 "
                "FROM f)"
                "  RETURNING c.id),"
                " ev AS (INSERT INTO events (composition_id, type, payload)"
                "  SELECT id, 'status', jsonb_build_object('from', 'planning', 'to', 'queued',"
                "  'by', $2::text, 'reason', 'coordinator changed') FROM back)"
                " SELECT (SELECT count(*) FROM f), (SELECT count(*) FROM open),"
                " (SELECT count(*) FROM lost), (SELECT coalesce(array_agg(id::text), '{}') FROM "
                "back)",
         false},
    [CF_DBI_W_COMP_PROGRESS] =
        {"work_comp_progress",
         "WITH upd AS (UPDATE compositions c SET progress = greatest(c.progress, $2::float8)"
         " WHERE c.id = $1::uuid AND c.status = 'processing' AND c.progress < $2::float8"
         " AND EXISTS " S_WFENCE(
             3, 4) " RETURNING c.id, c.version, c.progress,"
                   " cf_state(c.status, c.stage) AS state),"
                   " ev AS (INSERT INTO events (composition_id, type, payload)"
                   " SELECT id, 'progress', jsonb_build_object('progress', progress) FROM upd)"
                   " SELECT upd.version, upd.progress, upd.state FROM upd",
         false},
    [CF_DBI_W_WAIT_REASON] =
        {"work_wait_reason",
         "UPDATE compositions c SET wait_reason = $2::text"
         " WHERE c.id = $1::uuid AND c.status IN ('queued', 'processing')"
         " AND c.wait_reason IS DISTINCT FROM $2::text AND EXISTS " S_WFENCE(
             3, 4) " RETURNING c.version, c.progress, cf_state(c.status, c.stage)",
         false},
    /* A finished piece whose node is gone: its blob went with it. */
    [CF_DBI_W_LOST] =
        {"work_lost",
         "UPDATE segments s SET status = 'pending', progress = 0, blob_hash = NULL,"
         " size_bytes = NULL, finished_at = NULL, error = $4::text"
         " WHERE s.composition_id = $1::uuid AND s.idx = $2::int AND s.node_id = $3::text"
         " AND s.status = 'done' AND s.kind <> 'assemble' AND EXISTS " S_WFENCE(5,
                                                                                6) " RETURNING 1",
         false},
    /* Per node, the segments it finished in the last 10 minutes and their
     * mean frames/s (the cluster view's "recent" figures). */
    [CF_DBI_NODE_RATES] = {"node_rates",
                           "SELECT node_id, count(*), coalesce(avg(encode_fps), 0) FROM segments"
                           " WHERE kind = 'segment' AND status = 'done' AND node_id IS NOT NULL"
                           " AND finished_at > now() - interval '10 minutes' GROUP BY node_id",
                           true},
    [CF_DBI_W_CLOSE_CANCELLED] =
        {"work_close_cancelled",
         "UPDATE segments s SET status = 'failed', error = 'cancelled', finished_at = now()"
         " FROM compositions c WHERE c.id = s.composition_id"
         " AND c.status IN ('cancelled', 'failed') AND s.status IN ('pending', 'assigned', "
         "'encoding')"
         " AND EXISTS " S_WFENCE(
             1, 2) " RETURNING s.composition_id::text || ' ' || coalesce(s.node_id, '')",
         false},
    [CF_DBI_OUTPUT_REFERENCED] = {"output_referenced",
                                  "SELECT EXISTS (SELECT 1 FROM compositions"
                                  " WHERE output_location = $1::text)",
                                  true},
    /* Owner $1 renews the claims whose tokens are in $2 by $3 ms, each
     * only while it holds. */
    [CF_DBI_CLAIMS_RENEW] = {"claims_renew",
                             "UPDATE compositions SET"
                             " claim_expires_at = now() + $3::int * interval '1 millisecond'"
                             " WHERE status = 'processing' AND claimed_by = $1::text"
                             " AND claim_op = ANY($2::text[]) AND claim_expires_at > now()"
                             " RETURNING claim_op",
                             false},
    /* The sweep: $1 who sweeps, $2 expiries after which it fails (0:
     * never), $3 rows at most. The rows are locked by due, so what it read
     * (the stage, the owner) is what the update changes. */
    [CF_DBI_CLAIMS_EXPIRE] =
        {"claims_expire",
         "WITH due AS (SELECT id, cf_state(status, stage) AS from_state, claimed_by"
         "  FROM compositions WHERE status = 'processing' AND claim_expires_at < now()"
         "  ORDER BY claim_expires_at LIMIT $3::int FOR UPDATE SKIP LOCKED),"
         " upd AS (UPDATE compositions c SET"
         "  status = CASE WHEN $2::int > 0 AND c.claim_expiries + 1 >= $2::int"
         "   THEN 'failed' ELSE 'queued' END,"
         "  stage = NULL,"
         "  claim_expiries = c.claim_expiries + 1,"
         "  finished_at = CASE WHEN $2::int > 0 AND c.claim_expiries + 1 >= $2::int"
         "   THEN now() ELSE c.finished_at END,"
         "  error_code = CASE WHEN $2::int > 0 AND c.claim_expiries + 1 >= $2::int"
         "   THEN 'claim_expired' ELSE c.error_code END,"
         "  error_message = CASE WHEN $2::int > 0 AND c.claim_expiries + 1 >= $2::int"
         "   THEN 'its claim expired ' || (c.claim_expiries + 1) || ' times: the nodes rendering"
         " it stopped, or lost the database, before finishing' ELSE c.error_message END"
         "  FROM due WHERE c.id = due.id"
         "  RETURNING c.id, c.priority, cf_state(c.status, c.stage) AS state, c.version,"
         "  c.progress, due.from_state, due.claimed_by),"
         " ev AS (INSERT INTO events (composition_id, type, payload)"
         "  SELECT id, 'status', jsonb_strip_nulls(jsonb_build_object('from', from_state,"
         "  'to', state, 'by', $1::text, 'reason', 'claim_expired', 'owner', claimed_by))"
         "  FROM upd)"
         " SELECT id, priority, state, version, progress, coalesce(claimed_by, '') FROM upd",
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

const char *cf_dbi_stmt_sql(cf_dbi_stmt_t stmt)
{
    pthread_once(&s_sql_once, s_build_sql);
    if (stmt == CF_DBI_LIST_AFTER)
        return s_list_after_sql;
    if (stmt == CF_DBI_LIST_STATUS_AFTER)
        return s_list_status_after_sql;
    if (stmt == CF_DBI_LIST_OWNED_AFTER)
        return s_list_owned_after_sql;
    if (stmt == CF_DBI_LIST_OWNED_STATUS_AFTER)
        return s_list_owned_status_after_sql;
    return cf_dbi_stmts[stmt].sql;
}
