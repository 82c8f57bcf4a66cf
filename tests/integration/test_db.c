/* Integration test of lib/store/cf_db against the real Postgres that tests/run
 * starts: compositions, the state machine (every transition, table-driven),
 * pagination, segments, events, API keys, retention, and the query plans. */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cf_db.h"
#include "cf_testutil.h"

static char s_url[512];
static PGconn *s_raw; /* direct connection for setup and checks */

/* A fresh database with the built-in migrations applied. */
static int s_setup(void **state)
{
    char err[512];
    cf_test_fresh_database("cf_db", s_url, sizeof s_url);
    s_raw = cf_db_connect(s_url, 10, err, sizeof err);
    if (!s_raw)
        fail_msg("connect: %s", err);
    return 0;
}

static int s_teardown(void **state)
{
    PQfinish(s_raw);
    return 0;
}

static cf_db_t *s_pool(void)
{
    cf_db_options_t opts;
    cf_db_options_default(&opts);
    opts.url = s_url;
    opts.pool_size = 4;
    opts.max_overflow = 2;
    char err[256];
    cf_db_t *db = cf_db_new(&opts, err, sizeof err);
    assert_non_null(db);
    return db;
}

static void s_sql(const char *sql)
{
    PGresult *res = PQexec(s_raw, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
}

/* The first column of the first row of a one-parameter query. */
static char *s_value(const char *sql, const char *param)
{
    const char *params[] = {param};
    PGresult *res = PQexecParams(s_raw, sql, param ? 1 : 0, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    char *value = PQntuples(res) ? strdup(PQgetvalue(res, 0, 0)) : NULL;
    PQclear(res);
    return value;
}

static void s_create(cf_db_t *db, cf_state_t initial, char id[CF_DB_ID_LEN])
{
    char err[256];
    cf_db_composition_new_t c = {.title = "t",
                                 .priority = CF_PRIORITY_DEFAULT,
                                 .spec_json = "{\"clips\":[]}",
                                 .initial_state = initial};
    int rc = cf_db_composition_create(db, &c, id, NULL, err, sizeof err);
    if (rc != CF_DB_OK)
        fail_msg("create: %s", err);
}

static cf_state_t s_state_of(const char *id)
{
    char *state = s_value("SELECT cf_state(status, stage) FROM compositions WHERE id = $1", id);
    assert_non_null(state);
    cf_state_t parsed;
    assert_int_equal(cf_state_parse(state, &parsed), 0);
    free(state);
    return parsed;
}

static void test_create_get_idempotency(void **state)
{
    cf_db_t *db = s_pool();
    char err[256], id[CF_DB_ID_LEN], again[CF_DB_ID_LEN], other[CF_DB_ID_LEN];
    bool existed = true;
    cf_db_composition_new_t c = {.title = "holiday",
                                 .priority = CF_PRIORITY_HIGH,
                                 .spec_json = "{\"clips\":[{\"src\":\"a.mp4\"}]}",
                                 .api_key_id = "key1",
                                 .idempotency_key = "req-1",
                                 .request_hash = "hash-a",
                                 .initial_state = CF_STATE_QUEUED};
    assert_int_equal(cf_db_composition_create(db, &c, id, &existed, err, sizeof err), CF_DB_OK);
    assert_false(existed);
    /* Same key, same body: the same composition. */
    assert_int_equal(cf_db_composition_create(db, &c, again, &existed, err, sizeof err), CF_DB_OK);
    assert_true(existed);
    assert_string_equal(id, again);
    /* Same key, other body: conflict. */
    c.request_hash = "hash-b";
    assert_int_equal(cf_db_composition_create(db, &c, other, &existed, err, sizeof err),
                     CF_DB_CONFLICT);
    assert_non_null(strstr(err, "req-1"));
    /* The same idempotency key under another API key is another request. */
    c.api_key_id = "key2";
    assert_int_equal(cf_db_composition_create(db, &c, other, &existed, err, sizeof err), CF_DB_OK);
    assert_false(existed);
    assert_string_not_equal(id, other);
    char *n = s_value("SELECT count(*) FROM compositions WHERE idempotency_key = $1", "req-1");
    assert_string_equal(n, "2");
    free(n);

    char *json = NULL;
    int64_t version = 0;
    assert_int_equal(cf_db_composition_get_json(db, id, &json, &version, err, sizeof err),
                     CF_DB_OK);
    assert_non_null(strstr(json, "\"status\" : \"queued\""));
    assert_non_null(strstr(json, "\"priority\" : \"high\""));
    assert_non_null(strstr(json, "\"title\" : \"holiday\""));
    assert_non_null(strstr(json, "a.mp4"));
    assert_int_equal(version, 1);
    free(json);

    cf_db_composition_t comp;
    assert_int_equal(cf_db_composition_get(db, id, &comp, err, sizeof err), CF_DB_OK);
    assert_int_equal(comp.state, CF_STATE_QUEUED);
    assert_int_equal(comp.priority, CF_PRIORITY_HIGH);
    assert_string_equal(comp.api_key_id, "key1");
    cf_db_composition_clear(&comp);

    /* Unknown and malformed ids are "not found". */
    assert_int_equal(cf_db_composition_get_json(db, "00000000-0000-0000-0000-000000000000", &json,
                                                NULL, err, sizeof err),
                     CF_DB_NOT_FOUND);
    assert_int_equal(
        cf_db_composition_get_json(db, "'; DROP TABLE x", &json, NULL, err, sizeof err),
        CF_DB_NOT_FOUND);
    /* Malformed JSON is refused by Postgres as invalid input. */
    c.spec_json = "{not json";
    c.idempotency_key = NULL;
    assert_int_equal(cf_db_composition_create(db, &c, other, NULL, err, sizeof err), CF_DB_INVALID);
    cf_db_destroy(&db);
}

/* The path from pending to each state, through legal transitions only. */
static const cf_state_t s_path[CF_STATE_COUNT][6] = {
    [CF_STATE_PENDING] = {CF_STATE_COUNT},
    [CF_STATE_QUEUED] = {CF_STATE_QUEUED, CF_STATE_COUNT},
    [CF_STATE_PLANNING] = {CF_STATE_QUEUED, CF_STATE_PLANNING, CF_STATE_COUNT},
    [CF_STATE_ENCODING] = {CF_STATE_QUEUED, CF_STATE_PLANNING, CF_STATE_ENCODING, CF_STATE_COUNT},
    [CF_STATE_ASSEMBLING] = {CF_STATE_QUEUED, CF_STATE_PLANNING, CF_STATE_ENCODING,
                             CF_STATE_ASSEMBLING, CF_STATE_COUNT},
    [CF_STATE_COMPLETED] = {CF_STATE_QUEUED, CF_STATE_PLANNING, CF_STATE_ENCODING,
                            CF_STATE_ASSEMBLING, CF_STATE_COMPLETED, CF_STATE_COUNT},
    [CF_STATE_FAILED] = {CF_STATE_QUEUED, CF_STATE_FAILED, CF_STATE_COUNT},
    [CF_STATE_CANCELLED] = {CF_STATE_CANCELLED, CF_STATE_COUNT},
};

/* The state machine, written out independently of the SQL table:
 * legal[from][to]. */
static const bool s_legal[CF_STATE_COUNT][CF_STATE_COUNT] = {
    [CF_STATE_PENDING] = {[CF_STATE_QUEUED] = 1, [CF_STATE_FAILED] = 1, [CF_STATE_CANCELLED] = 1},
    [CF_STATE_QUEUED] = {[CF_STATE_PLANNING] = 1, [CF_STATE_FAILED] = 1, [CF_STATE_CANCELLED] = 1},
    /* Back to queued from every processing stage: a claim expired or was
     * handed back (issue 12). */
    [CF_STATE_PLANNING] = {[CF_STATE_QUEUED] = 1,
                           [CF_STATE_ENCODING] = 1,
                           [CF_STATE_FAILED] = 1,
                           [CF_STATE_CANCELLED] = 1},
    [CF_STATE_ENCODING] = {[CF_STATE_QUEUED] = 1,
                           [CF_STATE_ASSEMBLING] = 1,
                           [CF_STATE_FAILED] = 1,
                           [CF_STATE_CANCELLED] = 1},
    [CF_STATE_ASSEMBLING] = {[CF_STATE_QUEUED] = 1,
                             [CF_STATE_COMPLETED] = 1,
                             [CF_STATE_FAILED] = 1,
                             [CF_STATE_CANCELLED] = 1},
};

static void test_every_transition(void **state)
{
    cf_db_t *db = s_pool();
    char err[256];
    int refused = 0, applied = 0;
    for (int from = 0; from < CF_STATE_COUNT; from++) {
        for (int to = 0; to < CF_STATE_COUNT; to++) {
            char id[CF_DB_ID_LEN];
            s_create(db, CF_STATE_PENDING, id);
            for (int i = 0; s_path[from][i] != CF_STATE_COUNT; i++) {
                int rc =
                    cf_db_composition_transition(db, id, s_path[from][i], NULL, err, sizeof err);
                if (rc != CF_DB_OK)
                    fail_msg("path to %s: %s", cf_state_name(from), err);
            }
            assert_int_equal(s_state_of(id), from);
            char *version_before = s_value("SELECT version FROM compositions WHERE id = $1", id);
            cf_state_t seen = CF_STATE_COUNT;
            int rc = cf_db_composition_transition(db, id, to, &seen, err, sizeof err);
            char *version_after = s_value("SELECT version FROM compositions WHERE id = $1", id);
            if (s_legal[from][to]) {
                if (rc != CF_DB_OK)
                    fail_msg("%s -> %s refused: %s", cf_state_name(from), cf_state_name(to), err);
                assert_int_equal(s_state_of(id), to);
                applied++;
            } else {
                if (rc != CF_DB_ILLEGAL)
                    fail_msg("%s -> %s gave %d (%s), expected illegal", cf_state_name(from),
                             cf_state_name(to), rc, err);
                assert_int_equal(seen, from);
                assert_non_null(strstr(err, cf_state_name(from)));
                /* Refused means nothing changed, not even the version. */
                assert_int_equal(s_state_of(id), from);
                assert_string_equal(version_before, version_after);
                refused++;
            }
            free(version_before);
            free(version_after);
        }
    }
    assert_int_equal(applied, 18);
    assert_int_equal(refused, CF_STATE_COUNT * CF_STATE_COUNT - 18);

    /* The trigger refuses an illegal move even from SQL written elsewhere. */
    char id[CF_DB_ID_LEN];
    s_create(db, CF_STATE_QUEUED, id);
    const char *params[] = {id};
    PGresult *res =
        PQexecParams(s_raw, "UPDATE compositions SET status = 'completed' WHERE id = $1", 1, NULL,
                     params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(res), PGRES_FATAL_ERROR);
    assert_string_equal(PQresultErrorField(res, PG_DIAG_SQLSTATE), "CF001");
    PQclear(res);
    assert_int_equal(s_state_of(id), CF_STATE_QUEUED);

    /* Unknown composition. */
    assert_int_equal(cf_db_composition_transition(db, "00000000-0000-0000-0000-000000000001",
                                                  CF_STATE_QUEUED, NULL, err, sizeof err),
                     CF_DB_NOT_FOUND);
    cf_db_destroy(&db);
}

static void test_take_cancel_fail_progress_output(void **state)
{
    cf_db_t *db = s_pool();
    char err[256], id[CF_DB_ID_LEN];
    s_create(db, CF_STATE_QUEUED, id);
    /* Progress only while processing. */
    assert_int_equal(cf_db_composition_set_progress(db, id, 0.5, err, sizeof err), CF_DB_ILLEGAL);
    assert_int_equal(cf_db_composition_take(db, id, "consumer-a", err, sizeof err), CF_DB_OK);
    /* Taking again is refused, by anyone (a duplicate queue item reaching
     * the same consumer too): idempotent. */
    assert_int_equal(cf_db_composition_take(db, id, "consumer-b", err, sizeof err), CF_DB_ILLEGAL);
    assert_int_equal(cf_db_composition_take(db, id, "consumer-a", err, sizeof err), CF_DB_ILLEGAL);
    assert_int_equal(cf_db_composition_take(db, id, "", err, sizeof err), CF_DB_INVALID);
    /* Each transition's event carries its own operation id. */
    char *ops = s_value("SELECT count(DISTINCT payload->>'op') || '/' || count(*) FROM events"
                        " WHERE composition_id = $1 AND type = 'status'",
                        id);
    assert_string_equal(ops, "1/1");
    free(ops);
    char *attempts = s_value("SELECT attempts FROM compositions WHERE id = $1", id);
    assert_string_equal(attempts, "1");
    free(attempts);
    char *by = s_value("SELECT string_agg(payload->>'by', ',') FROM events WHERE composition_id = "
                       "$1 AND type = 'status'",
                       id);
    assert_string_equal(by, "consumer-a");
    free(by);
    assert_int_equal(cf_db_composition_set_progress(db, id, 0.5, err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_db_composition_set_progress(db, id, 0.25, err, sizeof err), CF_DB_OK);
    char *progress = s_value("SELECT progress FROM compositions WHERE id = $1", id);
    assert_string_equal(progress, "0.5"); /* never goes down */
    free(progress);
    assert_int_equal(cf_db_composition_set_progress(db, id, 1.5, err, sizeof err), CF_DB_INVALID);
    assert_int_equal(cf_db_composition_transition(db, id, CF_STATE_ENCODING, NULL, err, sizeof err),
                     CF_DB_OK);
    assert_int_equal(
        cf_db_composition_transition(db, id, CF_STATE_ASSEMBLING, NULL, err, sizeof err), CF_DB_OK);
    cf_db_output_t out = {"/data/out/x.mp4", 12345, 2.5, "abcd"};
    assert_int_equal(cf_db_composition_complete(db, id, &out, err, sizeof err), CF_DB_OK);
    cf_db_composition_t comp;
    assert_int_equal(cf_db_composition_get(db, id, &comp, err, sizeof err), CF_DB_OK);
    assert_int_equal(comp.state, CF_STATE_COMPLETED);
    assert_string_equal(comp.output_location, "/data/out/x.mp4");
    assert_int_equal(comp.output_size_bytes, 12345);
    assert_true(comp.progress == 1.0);
    cf_db_composition_clear(&comp);

    /* Cancel of a terminal composition: a distinct result, nothing changed. */
    cf_state_t from;
    assert_int_equal(cf_db_composition_cancel(db, id, &from, err, sizeof err), CF_DB_TERMINAL);
    assert_int_equal(from, CF_STATE_COMPLETED);
    assert_int_equal(cf_db_composition_fail(db, id, "x", "y", err, sizeof err), CF_DB_TERMINAL);
    assert_int_equal(s_state_of(id), CF_STATE_COMPLETED);

    /* Fail records the error; then cancel is terminal too. */
    char id2[CF_DB_ID_LEN];
    s_create(db, CF_STATE_QUEUED, id2);
    assert_int_equal(cf_db_composition_fail(db, id2, "source_unreachable", "HTTP 404 for a.mp4",
                                            err, sizeof err),
                     CF_DB_OK);
    char *json = NULL;
    assert_int_equal(cf_db_composition_get_json(db, id2, &json, NULL, err, sizeof err), CF_DB_OK);
    assert_non_null(strstr(json, "\"code\" : \"source_unreachable\""));
    assert_non_null(strstr(json, "HTTP 404 for a.mp4"));
    free(json);
    assert_int_equal(cf_db_composition_cancel(db, id2, &from, err, sizeof err), CF_DB_TERMINAL);
    assert_int_equal(from, CF_STATE_FAILED);

    /* Cancel from pending works; output only while processing. */
    char id3[CF_DB_ID_LEN];
    s_create(db, CF_STATE_PENDING, id3);
    assert_int_equal(cf_db_composition_set_output(db, id3, &out, err, sizeof err), CF_DB_ILLEGAL);
    assert_int_equal(cf_db_composition_cancel(db, id3, &from, err, sizeof err), CF_DB_OK);
    assert_int_equal(from, CF_STATE_PENDING);
    cf_db_destroy(&db);
}

static void test_list_pagination(void **state)
{
    cf_db_t *db = s_pool();
    char err[256], ids[25][CF_DB_ID_LEN];
    s_sql("DELETE FROM compositions");
    for (int i = 0; i < 25; i++) {
        s_create(db, i % 5 == 0 ? CF_STATE_PENDING : CF_STATE_QUEUED, ids[i]);
        /* Spread created_at, with ties every other row to exercise the id
         * tie-break. */
        char seconds[16];
        snprintf(seconds, sizeof seconds, "%d", i / 2);
        const char *params[] = {seconds, ids[i]};
        PGresult *res =
            PQexecParams(s_raw,
                         "UPDATE compositions SET created_at = '2024-01-01'::timestamptz"
                         " + $1::int * interval '1 second' WHERE id = $2",
                         2, NULL, params, NULL, NULL, 0);
        assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
        PQclear(res);
    }
    /* Walk every page of 7 and check newest-first order without gaps. */
    char *cursor = NULL, *json = NULL, *next = NULL;
    int pages = 0, seen = 0;
    char last_seen[CF_DB_ID_LEN] = "";
    do {
        assert_int_equal(cf_db_composition_list(db, NULL, 7, cursor, &json, &next, err, sizeof err),
                         CF_DB_OK);
        pages++;
        for (const char *p = json; (p = strstr(p, "\"id\" : \"")); p += 8) {
            seen++;
            snprintf(last_seen, sizeof last_seen, "%.36s", p + 8);
        }
        assert_null(strstr(json, "\"spec\""));
        free(json);
        free(cursor);
        cursor = next;
    } while (cursor);
    assert_int_equal(pages, 4);
    assert_int_equal(seen, 25);
    /* The oldest row is last; order of the full walk matches SQL's. */
    char *oldest = s_value("SELECT id FROM compositions ORDER BY created_at, id LIMIT 1", NULL);
    assert_string_equal(last_seen, oldest);
    free(oldest);

    /* Status filter. */
    assert_int_equal(
        cf_db_composition_list(db, "pending", 100, NULL, &json, &next, err, sizeof err), CF_DB_OK);
    int pending = 0;
    for (const char *p = json; (p = strstr(p, "\"status\" : \"pending\"")); p++)
        pending++;
    assert_int_equal(pending, 5);
    assert_null(next);
    free(json);
    assert_int_equal(
        cf_db_composition_list(db, "completed", 10, NULL, &json, &next, err, sizeof err), CF_DB_OK);
    assert_string_equal(json, "[]");
    free(json);

    /* Bad inputs. */
    assert_int_equal(
        cf_db_composition_list(db, NULL, 10, "garbage!", &json, &next, err, sizeof err),
        CF_DB_INVALID);
    assert_string_equal(err, "invalid cursor");
    assert_int_equal(cf_db_composition_list(db, NULL, 10, "djE6MTIzOm5vdC1hLXV1aWQ", &json, &next,
                                            err, sizeof err),
                     CF_DB_INVALID);
    assert_int_equal(cf_db_composition_list(db, NULL, 101, NULL, &json, &next, err, sizeof err),
                     CF_DB_INVALID);
    assert_int_equal(cf_db_composition_list(db, NULL, 0, NULL, &json, &next, err, sizeof err),
                     CF_DB_INVALID);
    assert_int_equal(
        cf_db_composition_list(db, "planning", 10, NULL, &json, &next, err, sizeof err),
        CF_DB_INVALID);

    int64_t counts[CF_STATE_COUNT];
    assert_int_equal(cf_db_composition_counts(db, counts, err, sizeof err), CF_DB_OK);
    assert_int_equal(counts[CF_STATE_PENDING], 5);
    assert_int_equal(counts[CF_STATE_QUEUED], 20);
    assert_int_equal(counts[CF_STATE_COMPLETED], 0);

    cf_db_queued_t *queued = NULL;
    int n = 0;
    assert_int_equal(cf_db_composition_queued(db, 1000, &queued, &n, err, sizeof err), CF_DB_OK);
    assert_int_equal(n, 20);
    free(queued);
    cf_db_destroy(&db);
}

static void test_segments_events(void **state)
{
    cf_db_t *db = s_pool();
    char err[256], id[CF_DB_ID_LEN];
    s_create(db, CF_STATE_QUEUED, id);
    cf_db_segment_plan_t plan[3] = {
        {0, 0, 250, "[{\"source\":0,\"in\":0,\"out\":250}]"},
        {1, 250, 500, NULL},
        {2, 500, 610, "[]"},
    };
    /* The local renderer writes at epoch 0; a coordinator's epoch must come
     * with its fence (test_fencing.c). */
    assert_int_equal(cf_db_segments_create(db, id, 7, plan, 3, err, sizeof err), CF_DB_INVALID);
    assert_int_equal(cf_db_segments_create(db, id, 0, plan, 3, err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_db_segments_create(db, id, 0, plan, 3, err, sizeof err), CF_DB_CONFLICT);
    assert_int_equal(cf_db_segments_create(db, "00000000-0000-0000-0000-000000000009", 0, plan, 3,
                                           err, sizeof err),
                     CF_DB_NOT_FOUND);
    cf_db_segment_update_t up = {
        .fields = CF_SEG_F_STATE | CF_SEG_F_NODE, .state = CF_SEG_ASSIGNED, .node_id = "node-a"};
    assert_int_equal(cf_db_segment_update(db, id, 1, 7, &up, err, sizeof err), CF_DB_INVALID);
    assert_int_equal(cf_db_segment_update(db, id, 1, 0, &up, err, sizeof err), CF_DB_OK);
    up = (cf_db_segment_update_t){.fields = CF_SEG_F_STATE | CF_SEG_F_BLOB | CF_SEG_F_FPS |
                                            CF_SEG_F_TIMINGS,
                                  .state = CF_SEG_DONE,
                                  .blob_hash = "b2b",
                                  .size_bytes = 999,
                                  .encode_fps = 123.5,
                                  .fetch_ms = 10,
                                  .encode_ms = 2000};
    assert_int_equal(cf_db_segment_update(db, id, 1, 0, &up, err, sizeof err), CF_DB_OK);
    /* Done is final: neither its state nor its result changes again (the
     * same done repeated, a lost answer, is no error). */
    up.fields = CF_SEG_F_STATE | CF_SEG_F_BLOB;
    assert_int_equal(cf_db_segment_update(db, id, 1, 0, &up, err, sizeof err), CF_DB_OK);
    up.blob_hash = "other";
    assert_int_equal(cf_db_segment_update(db, id, 1, 0, &up, err, sizeof err), CF_DB_ILLEGAL);
    up = (cf_db_segment_update_t){.fields = CF_SEG_F_STATE, .state = CF_SEG_PENDING};
    assert_int_equal(cf_db_segment_update(db, id, 1, 0, &up, err, sizeof err), CF_DB_ILLEGAL);
    up = (cf_db_segment_update_t){
        .fields = CF_SEG_F_STATE | CF_SEG_F_NODE, .state = CF_SEG_ASSIGNED, .node_id = "node-b"};
    assert_int_equal(cf_db_segment_update(db, id, 0, 0, &up, err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_db_segment_update(db, id, 9, 0, &up, err, sizeof err), CF_DB_NOT_FOUND);

    cf_db_segment_t *segs = NULL;
    int n = 0;
    assert_int_equal(cf_db_segments_list(db, id, &segs, &n, err, sizeof err), CF_DB_OK);
    assert_int_equal(n, 3);
    assert_int_equal(segs[0].epoch, 0);
    assert_string_equal(segs[0].node_id, "node-b");
    assert_int_equal(segs[0].attempts, 1);
    assert_int_equal(segs[1].state, CF_SEG_DONE);
    assert_string_equal(segs[1].blob_hash, "b2b");
    assert_int_equal(segs[1].size_bytes, 999);
    assert_true(segs[1].encode_fps > 123.4 && segs[1].encode_fps < 123.6);
    assert_int_equal(segs[1].encode_ms, 2000);
    assert_non_null(segs[1].finished_at);
    assert_true(segs[1].progress == 1.0);
    assert_int_equal(segs[2].frame_start, 500);
    assert_int_equal(segs[2].frame_end, 610);
    assert_non_null(strstr(segs[0].sources_json, "\"source\": 0"));
    cf_db_segments_free(&segs, n);

    /* Events: the creation, then appended ones; resume after an id. */
    int64_t first = 0, second = 0;
    assert_int_equal(cf_db_event_append(db, id, "note", "{\"a\":1}", &first, err, sizeof err),
                     CF_DB_OK);
    assert_int_equal(cf_db_event_append(db, id, "note", NULL, &second, err, sizeof err), CF_DB_OK);
    assert_true(second > first);
    cf_db_event_t *events = NULL;
    assert_int_equal(cf_db_events_since(db, id, 0, 100, &events, &n, err, sizeof err), CF_DB_OK);
    assert_int_equal(n, 3);
    assert_string_equal(events[0].type, "created");
    assert_string_equal(events[1].payload_json, "{\"a\": 1}");
    assert_string_equal(events[2].payload_json, "null");
    cf_db_events_free(&events, n);
    assert_int_equal(cf_db_events_since(db, id, first, 100, &events, &n, err, sizeof err),
                     CF_DB_OK);
    assert_int_equal(n, 1);
    assert_int_equal(events[0].id, second);
    cf_db_events_free(&events, n);
    assert_int_equal(cf_db_event_append(db, "00000000-0000-0000-0000-000000000009", "x", NULL, NULL,
                                        err, sizeof err),
                     CF_DB_NOT_FOUND);
    cf_db_destroy(&db);
}

static void test_api_keys(void **state)
{
    cf_db_t *db = s_pool();
    char err[256];
    unsigned char hash[32];
    for (int i = 0; i < 32; i++)
        hash[i] = (unsigned char)(i * 7); /* includes a zero byte: binary-safe */
    assert_int_equal(cf_db_api_key_insert(db, "cfk_1", "ci", hash, 32, err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_db_api_key_insert(db, "cfk_1", "ci", hash, 32, err, sizeof err),
                     CF_DB_CONFLICT);
    assert_int_equal(cf_db_api_key_insert(db, "cfk_2", "dev", hash, 16, err, sizeof err), CF_DB_OK);
    cf_db_api_key_t key;
    assert_int_equal(cf_db_api_key_find(db, "cfk_1", &key, err, sizeof err), CF_DB_OK);
    assert_int_equal(key.hash_len, 32);
    assert_memory_equal(key.hash, hash, 32);
    assert_null(key.revoked_at);
    cf_db_api_key_clear(&key);
    assert_int_equal(cf_db_api_key_revoke(db, "cfk_1", err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_db_api_key_revoke(db, "cfk_1", err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_db_api_key_revoke(db, "nope", err, sizeof err), CF_DB_NOT_FOUND);
    assert_int_equal(cf_db_api_key_find(db, "cfk_1", &key, err, sizeof err), CF_DB_OK);
    assert_non_null(key.revoked_at);
    cf_db_api_key_clear(&key);
    assert_int_equal(cf_db_api_key_find(db, "nope", &key, err, sizeof err), CF_DB_NOT_FOUND);
    cf_db_api_key_t *keys = NULL;
    int n = 0;
    assert_int_equal(cf_db_api_key_list(db, &keys, &n, err, sizeof err), CF_DB_OK);
    assert_int_equal(n, 2);
    assert_string_equal(keys[0].id, "cfk_1");
    assert_null(keys[0].hash);
    cf_db_api_keys_free(&keys, n);
    cf_db_destroy(&db);
}

static void test_retention_purge(void **state)
{
    cf_db_t *db = s_pool();
    char err[256], done_old[CF_DB_ID_LEN], done_new[CF_DB_ID_LEN], failed_old[CF_DB_ID_LEN],
        failed_new[CF_DB_ID_LEN], active[CF_DB_ID_LEN];
    const cf_state_t to_done[] = {CF_STATE_PLANNING, CF_STATE_ENCODING, CF_STATE_ASSEMBLING};
    char *done_ids[] = {done_old, done_new};
    for (int k = 0; k < 2; k++) {
        s_create(db, CF_STATE_QUEUED, done_ids[k]);
        for (int i = 0; i < 3; i++)
            assert_int_equal(
                cf_db_composition_transition(db, done_ids[k], to_done[i], NULL, err, sizeof err),
                CF_DB_OK);
        cf_db_output_t out = {k ? "/out/new.mp4" : "/out/old.mp4", 1, 1, "h"};
        assert_int_equal(cf_db_composition_complete(db, done_ids[k], &out, err, sizeof err),
                         CF_DB_OK);
    }
    s_create(db, CF_STATE_QUEUED, failed_old);
    s_create(db, CF_STATE_QUEUED, failed_new);
    s_create(db, CF_STATE_QUEUED, active);
    assert_int_equal(cf_db_composition_fail(db, failed_old, "e", "m", err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_db_composition_fail(db, failed_new, "e", "m", err, sizeof err), CF_DB_OK);
    /* Age them: completed 8 days (past 7), 6 days (kept); failed 25 h (past
     * 24 h), 23 h (kept). The trigger allows same-state updates. */
    const char *ages[][2] = {{done_old, "8 days"},
                             {done_new, "6 days"},
                             {failed_old, "25 hours"},
                             {failed_new, "23 hours"}};
    for (int i = 0; i < 4; i++) {
        const char *params[] = {ages[i][0], ages[i][1]};
        PGresult *res = PQexecParams(
            s_raw, "UPDATE compositions SET finished_at = now() - $2::interval WHERE id = $1", 2,
            NULL, params, NULL, NULL, 0);
        assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
        PQclear(res);
    }
    cf_db_segment_plan_t plan = {0, 0, 10, NULL};
    assert_int_equal(cf_db_segments_create(db, done_old, 0, &plan, 1, err, sizeof err), CF_DB_OK);
    cf_db_purged_t *purged = NULL;
    int n = 0;
    assert_int_equal(cf_db_purge_expired(db, CF_DB_KEEP_COMPLETED_S, CF_DB_KEEP_FAILED_S,
                                         CF_DB_IDEMPOTENCY_KEEP_S, 100, &purged, &n, err,
                                         sizeof err),
                     CF_DB_OK);
    assert_int_equal(n, 2);
    bool saw_done = false, saw_failed = false;
    for (int i = 0; i < n; i++) {
        if (!strcmp(purged[i].id, done_old)) {
            saw_done = true;
            assert_int_equal(purged[i].state, CF_STATE_COMPLETED);
            assert_string_equal(purged[i].output_location, "/out/old.mp4");
        }
        if (!strcmp(purged[i].id, failed_old)) {
            saw_failed = true;
            assert_null(purged[i].output_location);
        }
    }
    assert_true(saw_done && saw_failed);
    cf_db_purged_free(&purged, n);
    char *left = s_value("SELECT count(*) FROM compositions WHERE id IN ($1::uuid)", done_old);
    assert_string_equal(left, "0");
    free(left);
    left = s_value("SELECT count(*) FROM segments WHERE composition_id = $1", done_old);
    assert_string_equal(left, "0");
    free(left);
    left = s_value("SELECT count(*) FROM events WHERE composition_id = $1", done_old);
    assert_string_equal(left, "0");
    free(left);
    assert_int_equal(s_state_of(done_new), CF_STATE_COMPLETED);
    assert_int_equal(s_state_of(failed_new), CF_STATE_FAILED);
    assert_int_equal(s_state_of(active), CF_STATE_QUEUED);
    cf_db_destroy(&db);
}

/* EXPLAIN of the real prepared statements on tables of realistic size: each
 * must use its index and never scan a whole table; the paged lists must also
 * read the index in order (no sort: the cost of a page stays flat however
 * deep the cursor). */
static void s_expect_plan(cf_db_t *db, const char *stmt, int nparams, const char *const *params,
                          const char *index, bool sort_ok)
{
    char err[256], *plan = NULL;
    if (cf_db_explain(db, stmt, nparams, params, &plan, err, sizeof err) != CF_DB_OK)
        fail_msg("explain %s: %s", stmt, err);
    if (!strstr(plan, index) || strstr(plan, "Seq Scan") || (!sort_ok && strstr(plan, "Sort")))
        fail_msg("%s does not use %s without sorting:\n%s", stmt, index, plan);
    print_message("%s:\n%s", stmt, plan);
    free(plan);
}

static void test_query_plans(void **state)
{
    cf_db_t *db = s_pool();
    s_sql("DELETE FROM compositions");
    /* Like a real history: mostly completed, a few failed, queued and
     * processing (a status filter is selective only for those). */
    s_sql("INSERT INTO compositions (spec, status, stage, created_at, finished_at)"
          " SELECT '{}', CASE i % 50 WHEN 0 THEN 'failed' WHEN 1 THEN 'queued'"
          " WHEN 2 THEN 'processing' ELSE 'completed' END,"
          " CASE WHEN i % 50 = 2 THEN 'encoding' END,"
          " now() - i * interval '1 minute',"
          " CASE WHEN i % 50 NOT IN (1, 2) THEN now() - i * interval '1 minute' END"
          " FROM generate_series(1, 40000) i");
    s_sql("INSERT INTO segments (composition_id, idx, frame_start, frame_end, epoch)"
          " SELECT c.id, g, g * 100, g * 100 + 100, 1 FROM"
          " (SELECT id FROM compositions LIMIT 2000) c, generate_series(0, 9) g");
    s_sql("INSERT INTO events (composition_id, type) SELECT c.id, 'x' FROM"
          " (SELECT id FROM compositions LIMIT 5000) c, generate_series(1, 4)");
    s_sql("ANALYZE");
    char *some_id = s_value("SELECT composition_id FROM segments LIMIT 1", NULL);
    char *cursor_us = s_value("SELECT (extract(epoch FROM created_at) * 1000000)::bigint FROM "
                              "compositions ORDER BY created_at DESC OFFSET 500 LIMIT 1",
                              NULL);
    const char *list[] = {"51"};
    s_expect_plan(db, "composition_list", 1, list, "compositions_created_idx", false);
    const char *list_after[] = {cursor_us, "ffffffff-ffff-ffff-ffff-ffffffffffff", "51"};
    s_expect_plan(db, "composition_list_after", 3, list_after, "compositions_created_idx", false);
    const char *by_status[] = {"failed", "51"};
    s_expect_plan(db, "composition_list_status", 2, by_status, "compositions_status_created_idx",
                  false);
    const char *by_status_after[] = {"failed", cursor_us, "ffffffff-ffff-ffff-ffff-ffffffffffff",
                                     "51"};
    s_expect_plan(db, "composition_list_status_after", 4, by_status_after,
                  "compositions_status_created_idx", false);
    /* All queued rows, oldest first: the partial index finds them; sorting
     * that small set is cheaper than walking an index in order. */
    const char *queued[] = {"100000"};
    s_expect_plan(db, "composition_queued", 1, queued, "compositions_active_idx", true);
    const char *by_comp[] = {some_id};
    s_expect_plan(db, "segments_list", 1, by_comp, "segments_pkey", true);
    const char *events[] = {some_id, "0", "100"};
    s_expect_plan(db, "events_since", 3, events, "events_composition_idx", true);
    const char *get[] = {some_id};
    s_expect_plan(db, "composition_get_json", 1, get, "compositions_pkey", true);
    const char *purge[] = {"604800", "86400", "100", "86400"};
    s_expect_plan(db, "composition_purge", 4, purge, "compositions_finished_idx", true);
    /* The claim sweep and a node's renewal read the processing rows only. */
    const char *sweep[] = {"sweeper", "3", "500"};
    s_expect_plan(db, "claims_expire", 3, sweep, "compositions_claim_expiry_idx", true);
    const char *renew[] = {"node-1", "{a,b}", "30000"};
    s_expect_plan(db, "claims_renew", 3, renew, "compositions_", true);
    free(some_id);
    free(cursor_us);
    s_sql("DELETE FROM compositions");
    cf_db_destroy(&db);
}

static void test_statement_timeout(void **state)
{
    cf_db_options_t opts;
    cf_db_options_default(&opts);
    opts.url = s_url;
    opts.pool_size = 1;
    opts.statement_timeout_ms = 300;
    char err[256], id[CF_DB_ID_LEN];
    cf_db_t *db = cf_db_new(&opts, err, sizeof err);
    assert_non_null(db);
    s_create(db, CF_STATE_QUEUED, id);
    /* Another session holds the row: the cancel waits, then Postgres stops
     * it at the pool's statement_timeout. */
    s_sql("BEGIN");
    const char *params[] = {id};
    PGresult *res = PQexecParams(s_raw, "SELECT 1 FROM compositions WHERE id = $1 FOR UPDATE", 1,
                                 NULL, params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    PQclear(res);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = cf_db_composition_cancel(db, id, NULL, err, sizeof err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    s_sql("COMMIT");
    assert_int_equal(rc, CF_DB_UNAVAILABLE);
    assert_non_null(strstr(err, "statement timeout"));
    double waited = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    assert_true(waited >= 0.25 && waited < 5);
    assert_int_equal(s_state_of(id), CF_STATE_QUEUED); /* nothing applied */
    /* The connection is still good for the next statement. */
    assert_int_equal(cf_db_composition_cancel(db, id, NULL, err, sizeof err), CF_DB_OK);
    cf_db_destroy(&db);
}

static void test_unreachable(void **state)
{
    cf_db_options_t opts;
    cf_db_options_default(&opts);
    opts.url = "postgresql://postgres@127.0.0.1:1/none";
    opts.acquire_timeout_ms = 300;
    opts.connect_timeout_ms = 1000;
    char err[256];
    cf_db_t *db = cf_db_new(&opts, err, sizeof err);
    assert_non_null(db);
    char *json = NULL;
    assert_int_equal(cf_db_composition_get_json(db, "00000000-0000-0000-0000-000000000000", &json,
                                                NULL, err, sizeof err),
                     CF_DB_UNAVAILABLE);
    assert_non_null(strstr(err, "database unavailable"));
    assert_int_equal(cf_db_ping(db, err, sizeof err), CF_DB_UNAVAILABLE);
    cf_db_stats_t stats;
    cf_db_stats(db, &stats);
    assert_true(stats.failures >= 1);
    assert_int_equal(stats.open, 0);
    cf_db_destroy(&db);
    opts.pool_size = 0;
    assert_null(cf_db_new(&opts, err, sizeof err));
}

int main(void)
{
    srandom((unsigned)getpid());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_get_idempotency),
        cmocka_unit_test(test_every_transition),
        cmocka_unit_test(test_take_cancel_fail_progress_output),
        cmocka_unit_test(test_list_pagination),
        cmocka_unit_test(test_segments_events),
        cmocka_unit_test(test_api_keys),
        cmocka_unit_test(test_retention_purge),
        cmocka_unit_test(test_query_plans),
        cmocka_unit_test(test_statement_timeout),
        cmocka_unit_test(test_unreachable),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
