/* The coordinator's work-list statements (lib/store/cf_db_work) against the
 * real Postgres: a composition taken, planned into tasks, assigned,
 * accepted, done; every write fenced by the lease in the statement (a
 * deposed coordinator's writes change nothing, checked in the rows), a
 * result accepted only with its assignment token and only once, retries
 * counted up to the limit, and a takeover that voids the old epoch's
 * assignments and sends planning compositions back to the intake. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_db.h"
#include "cf_db_work.h"
#include "cf_testutil.h"

#define S_HOLDER    "11111111-1111-4111-8111-111111111111"
#define S_SUCCESSOR "22222222-2222-4222-8222-222222222222"
#define S_NODE_A    "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
#define S_NODE_B    "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"

static char s_url[512];
static PGconn *s_raw;
static cf_db_t *s_db;

static void s_sql(const char *sql)
{
    PGresult *res = PQexec(s_raw, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
}

/* The first value of a query with one parameter (caller frees). */
static char *s_value(const char *sql, const char *param)
{
    const char *params[] = {param};
    PGresult *res = PQexecParams(s_raw, sql, param ? 1 : 0, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    char *v = PQntuples(res) ? strdup(PQgetvalue(res, 0, 0)) : strdup("");
    PQclear(res);
    return v;
}

static void s_expect(const char *sql, const char *param, const char *want)
{
    char *got = s_value(sql, param);
    if (strcmp(got, want))
        fail_msg("%s (%s): got '%s', want '%s'", sql, param ? param : "", got, want);
    free(got);
}

static void s_lease(const char *holder, int epoch)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "UPDATE coordinator_lease SET holder = '%s', epoch = %d,"
             " expires_at = now() + interval '1 hour'",
             holder, epoch);
    s_sql(sql);
}

static int s_setup(void **state)
{
    (void)state;
    char err[512];
    cf_test_fresh_database("cf_work", s_url, sizeof s_url);
    s_raw = cf_db_connect(s_url, 10, err, sizeof err);
    if (!s_raw)
        fail_msg("connect: %s", err);
    cf_db_options_t opts;
    cf_db_options_default(&opts);
    opts.url = s_url;
    opts.pool_size = 2;
    s_db = cf_db_new(&opts, err, sizeof err);
    assert_non_null(s_db);
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    cf_db_destroy(&s_db);
    PQfinish(s_raw);
    return 0;
}

/* A composition taken and planned into 2 segments + audio + assembly. */
static void s_planned(const cf_dbw_fence_t *fence, char id[CF_DB_ID_LEN])
{
    char err[512];
    cf_test_create_queued(s_db, CF_PRIORITY_DEFAULT, id);
    assert_int_equal(cf_dbw_take(s_db, fence, id, err, sizeof err), CF_DB_OK);
    cf_dbw_task_plan_t tasks[] = {{0, CF_TASK_SEGMENT, 0, 50},
                                  {1, CF_TASK_SEGMENT, 50, 100},
                                  {2, CF_TASK_AUDIO, 0, 100},
                                  {3, CF_TASK_ASSEMBLE, 0, 100}};
    if (cf_dbw_plan(s_db, fence, id, "{\"segments\": []}", "libx264", tasks, 4, err, sizeof err) !=
        CF_DB_OK)
        fail_msg("plan: %s", err);
}

static void test_lifecycle_and_tokens(void **state)
{
    (void)state;
    s_lease(S_HOLDER, 5);
    cf_dbw_fence_t fence = {5, S_HOLDER};
    char id[CF_DB_ID_LEN], err[512];
    s_planned(&fence, id);
    s_expect("SELECT cf_state(status, stage) || ' ' || encoder FROM compositions WHERE id = $1", id,
             "encoding libx264");
    s_expect("SELECT string_agg(kind || ':' || status, ',' ORDER BY idx) FROM segments"
             " WHERE composition_id = $1",
             id, "segment:pending,segment:pending,audio:pending,assemble:pending");
    char *plan = cf_dbw_plan_json(s_db, id, err, sizeof err);
    assert_non_null(plan);
    assert_non_null(strstr(plan, "segments"));
    free(plan);

    cf_dbw_task_t *tasks = NULL;
    int count = 0;
    assert_int_equal(cf_dbw_open_tasks(s_db, &tasks, &count, err, sizeof err), CF_DB_OK);
    assert_int_equal(count, 4);
    assert_int_equal(tasks[2].kind, CF_TASK_AUDIO);
    assert_string_equal(tasks[0].encoder, "libx264");
    assert_int_equal(tasks[0].comp_state, CF_STATE_ENCODING);
    cf_dbw_tasks_free(&tasks, count);

    int attempt = 0;
    assert_int_equal(cf_dbw_assign(s_db, &fence, id, 0, S_NODE_A, &attempt, err, sizeof err),
                     CF_DB_OK);
    assert_int_equal(attempt, 1);
    /* Assigning what is not pending is refused. */
    assert_int_equal(cf_dbw_assign(s_db, &fence, id, 0, S_NODE_B, &attempt, err, sizeof err),
                     CF_DB_STALE);
    /* Another node's ACCEPT, or another attempt's, is not the token. */
    assert_int_equal(cf_dbw_accept(s_db, &fence, id, 0, S_NODE_B, 1, err, sizeof err), CF_DB_STALE);
    assert_int_equal(cf_dbw_accept(s_db, &fence, id, 0, S_NODE_A, 2, err, sizeof err), CF_DB_STALE);
    assert_int_equal(cf_dbw_accept(s_db, &fence, id, 0, S_NODE_A, 1, err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_dbw_progress(s_db, &fence, id, 0, S_NODE_A, 1, 0.5, err, sizeof err),
                     CF_DB_OK);
    assert_int_equal(cf_dbw_progress(s_db, &fence, id, 0, S_NODE_A, 1, 0.2, err, sizeof err),
                     CF_DB_OK);
    s_expect("SELECT progress FROM segments WHERE composition_id = $1 AND idx = 0", id, "0.5");
    const char *hash = "ab00000000000000000000000000000000000000000000000000000000000000";
    assert_int_equal(
        cf_dbw_done(s_db, &fence, id, 0, S_NODE_A, 1, hash, 1000, 50.0, 900, err, sizeof err),
        CF_DB_OK);
    /* Write-once: a second DONE (a duplicate, or another node's late one)
     * changes nothing. */
    const char *other = "cd00000000000000000000000000000000000000000000000000000000000000";
    assert_int_equal(
        cf_dbw_done(s_db, &fence, id, 0, S_NODE_A, 1, other, 7, 1.0, 1, err, sizeof err),
        CF_DB_STALE);
    s_expect("SELECT status || ' ' || blob_hash || ' ' || size_bytes FROM segments"
             " WHERE composition_id = $1 AND idx = 0",
             id, "done ab00000000000000000000000000000000000000000000000000000000000000 1000");

    /* Segment 1 fails on A three times: failed for good, A excluded. */
    bool failed = false;
    for (int i = 1; i <= 3; i++) {
        assert_int_equal(cf_dbw_assign(s_db, &fence, id, 1, S_NODE_A, &attempt, err, sizeof err),
                         CF_DB_OK);
        assert_int_equal(attempt, i);
        assert_int_equal(cf_dbw_retry(s_db, &fence, id, 1, S_NODE_A, attempt, true, "boom", &failed,
                                      err, sizeof err),
                         CF_DB_OK);
        assert_int_equal(failed, i == 3);
    }
    s_expect("SELECT status || ' ' || error FROM segments WHERE composition_id = $1 AND idx = 1",
             id, "failed boom");
    s_expect("SELECT failures FROM segment_failures WHERE composition_id = $1", id, "3");
    assert_int_equal(cf_dbw_open_tasks(s_db, &tasks, &count, err, sizeof err), CF_DB_OK);
    assert_int_equal(tasks[1].excluded_count, 1);
    assert_string_equal(tasks[1].excluded[0], S_NODE_A);
    cf_dbw_tasks_free(&tasks, count);

    /* A REJECT does not count: the audio is rejected twice then taken. */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(cf_dbw_assign(s_db, &fence, id, 2, S_NODE_B, &attempt, err, sizeof err),
                         CF_DB_OK);
        assert_int_equal(attempt, 1);
        assert_int_equal(cf_dbw_retry(s_db, &fence, id, 2, S_NODE_B, attempt, false, "busy",
                                      &failed, err, sizeof err),
                         CF_DB_OK);
        assert_false(failed);
    }
    assert_int_equal(
        cf_dbw_fail(s_db, &fence, id, "segment_failed", "segment 1 failed", err, sizeof err),
        CF_DB_OK);
    s_expect("SELECT status || ' ' || error_code FROM compositions WHERE id = $1", id,
             "failed segment_failed");
}

/* A coordinator paused past its lease: its successor holds epoch 8, and
 * every write of epoch 7 is refused and changes nothing. */
static void test_deposed_writes_change_nothing(void **state)
{
    (void)state;
    s_lease(S_HOLDER, 7);
    cf_dbw_fence_t old = {7, S_HOLDER};
    char id[CF_DB_ID_LEN], queued[CF_DB_ID_LEN], err[512];
    s_planned(&old, id);
    int attempt = 0;
    assert_int_equal(cf_dbw_assign(s_db, &old, id, 0, S_NODE_A, &attempt, err, sizeof err),
                     CF_DB_OK);
    cf_test_create_queued(s_db, CF_PRIORITY_DEFAULT, queued);
    char *before = s_value("SELECT string_agg(s::text, '|' ORDER BY idx) FROM segments s"
                           " WHERE composition_id = $1",
                           id);
    char *comp_before = s_value("SELECT c::text FROM compositions c WHERE id = $1", id);

    s_lease(S_SUCCESSOR, 8);
    const char *hash = "ef00000000000000000000000000000000000000000000000000000000000000";
    assert_int_equal(cf_dbw_take(s_db, &old, queued, err, sizeof err), CF_DB_STALE);
    assert_int_equal(cf_dbw_accept(s_db, &old, id, 0, S_NODE_A, attempt, err, sizeof err),
                     CF_DB_STALE);
    assert_int_equal(cf_dbw_progress(s_db, &old, id, 0, S_NODE_A, attempt, 0.9, err, sizeof err),
                     CF_DB_STALE);
    assert_int_equal(
        cf_dbw_done(s_db, &old, id, 0, S_NODE_A, attempt, hash, 10, 1, 1, err, sizeof err),
        CF_DB_STALE);
    assert_int_equal(cf_dbw_assign(s_db, &old, id, 1, S_NODE_B, &attempt, err, sizeof err),
                     CF_DB_STALE);
    assert_int_equal(cf_dbw_retry(s_db, &old, id, 0, S_NODE_A, 1, true, "x", NULL, err, sizeof err),
                     CF_DB_STALE);
    assert_int_equal(cf_dbw_comp_progress(s_db, &old, id, 0.7, err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_dbw_assembling(s_db, &old, id, err, sizeof err), CF_DB_STALE);
    cf_db_output_t out = {"clipfarm://x/blobs/ef/ef", 10, 1.0, hash};
    assert_int_equal(cf_dbw_complete(s_db, &old, id, &out, err, sizeof err), CF_DB_STALE);
    assert_int_equal(cf_dbw_fail(s_db, &old, id, "x", "y", err, sizeof err), CF_DB_STALE);
    assert_int_equal(cf_dbw_wait_reason(s_db, &old, id, "waiting", err, sizeof err), CF_DB_OK);
    char **items = NULL;
    int n = 0;
    assert_int_equal(cf_dbw_takeover(s_db, &old, NULL, 0, &items, &n, err, sizeof err),
                     CF_DB_STALE);
    assert_int_equal(cf_dbw_close_cancelled(s_db, &old, &items, &n, err, sizeof err), CF_DB_OK);
    assert_int_equal(n, 0);
    cf_db_strings_free(&items, n);
    /* Checked in the rows, not in what the calls said. */
    s_expect("SELECT string_agg(s::text, '|' ORDER BY idx) FROM segments s"
             " WHERE composition_id = $1",
             id, before);
    s_expect("SELECT c::text FROM compositions c WHERE id = $1", id, comp_before);
    s_expect("SELECT status FROM compositions WHERE id = $1", queued, "queued");
    /* An expired lease fences its own holder too. */
    s_sql("UPDATE coordinator_lease SET expires_at = now() - interval '1 second'");
    cf_dbw_fence_t successor = {8, S_SUCCESSOR};
    assert_int_equal(cf_dbw_assign(s_db, &successor, id, 1, S_NODE_B, &attempt, err, sizeof err),
                     CF_DB_STALE);
    free(before);
    free(comp_before);
}

/* Each half of the fence counts on its own: the same node at a newer epoch
 * (it lost and won the lease again) refuses its old epoch's writes, and a
 * writer naming the current epoch with another holder is refused too. */
static void test_fence_epoch_and_holder(void **state)
{
    (void)state;
    s_lease(S_HOLDER, 20);
    cf_dbw_fence_t old = {20, S_HOLDER};
    char id[CF_DB_ID_LEN], err[512];
    s_planned(&old, id);
    int attempt = 0;
    s_lease(S_HOLDER, 21);
    assert_int_equal(cf_dbw_assign(s_db, &old, id, 0, S_NODE_A, &attempt, err, sizeof err),
                     CF_DB_STALE);
    cf_dbw_fence_t forged = {21, S_SUCCESSOR};
    assert_int_equal(cf_dbw_assign(s_db, &forged, id, 0, S_NODE_A, &attempt, err, sizeof err),
                     CF_DB_STALE);
    s_expect("SELECT status FROM segments WHERE composition_id = $1 AND idx = 0", id, "pending");
    cf_dbw_fence_t current = {21, S_HOLDER};
    assert_int_equal(cf_dbw_assign(s_db, &current, id, 0, S_NODE_A, &attempt, err, sizeof err),
                     CF_DB_OK);
}

/* The successor takes over: the old epoch's assignment is void (pending,
 * not counted), a done segment on a node that is gone is encoded again, one
 * on a live node is kept, and a composition left in planning goes back to
 * the intake with an event. */
static void test_takeover(void **state)
{
    (void)state;
    s_sql("DELETE FROM compositions");
    s_lease(S_HOLDER, 10);
    cf_dbw_fence_t old = {10, S_HOLDER};
    char id[CF_DB_ID_LEN], planning[CF_DB_ID_LEN], err[512];
    s_planned(&old, id);
    int attempt = 0;
    const char *hash = "0100000000000000000000000000000000000000000000000000000000000000";
    assert_int_equal(cf_dbw_assign(s_db, &old, id, 0, S_NODE_A, &attempt, err, sizeof err), 0);
    assert_int_equal(cf_dbw_done(s_db, &old, id, 0, S_NODE_A, 1, hash, 5, 1, 1, err, sizeof err),
                     0);
    assert_int_equal(cf_dbw_assign(s_db, &old, id, 1, S_NODE_B, &attempt, err, sizeof err), 0);
    assert_int_equal(cf_dbw_done(s_db, &old, id, 1, S_NODE_B, 1, hash, 5, 1, 1, err, sizeof err),
                     0);
    assert_int_equal(cf_dbw_assign(s_db, &old, id, 2, S_NODE_A, &attempt, err, sizeof err), 0);
    cf_test_create_queued(s_db, CF_PRIORITY_DEFAULT, planning);
    assert_int_equal(cf_dbw_take(s_db, &old, planning, err, sizeof err), CF_DB_OK);

    s_lease(S_SUCCESSOR, 11);
    cf_dbw_fence_t fence = {11, S_SUCCESSOR};
    const char *live[] = {S_NODE_A, S_SUCCESSOR};
    char **requeued = NULL;
    int n = 0;
    assert_int_equal(cf_dbw_takeover(s_db, &fence, live, 2, &requeued, &n, err, sizeof err),
                     CF_DB_OK);
    assert_int_equal(n, 1);
    assert_string_equal(requeued[0], planning);
    cf_db_strings_free(&requeued, n);
    s_expect("SELECT string_agg(status || ':' || attempts, ',' ORDER BY idx) FROM segments"
             " WHERE composition_id = $1",
             id, "done:1,pending:1,pending:0,pending:0");
    s_expect("SELECT status FROM compositions WHERE id = $1", planning, "queued");
    s_expect("SELECT payload->>'to' FROM events WHERE composition_id = $1 ORDER BY id DESC LIMIT 1",
             planning, "queued");
    /* The old epoch's late DONE for the audio is refused. */
    assert_int_equal(cf_dbw_done(s_db, &old, id, 2, S_NODE_A, 1, hash, 5, 1, 1, err, sizeof err),
                     CF_DB_STALE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lifecycle_and_tokens),
        cmocka_unit_test(test_deposed_writes_change_nothing),
        cmocka_unit_test(test_fence_epoch_and_holder),
        cmocka_unit_test(test_takeover),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
