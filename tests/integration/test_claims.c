/* Integration test of the claims on processing compositions (lib/store/
 * cf_db_claims.c, the claim side of cf_db_compositions.c, sql/023_claims.sql)
 * against a real Postgres, judged by reading the rows and events back:
 *   - a take records its owner, token and an expiry by the database clock;
 *     a retry with the same token is recognised (once applied, one event),
 *     one with another token is refused;
 *   - the owner's writes name the claim: refused (CF_DB_STALE) once it is
 *     gone; a caller's operation id makes a retried transition answer its
 *     earlier outcome instead of CF_DB_ILLEGAL;
 *   - renewal extends a claim that holds and never revives an expired one;
 *   - the sweep sends an expired claim's composition back to queued (event
 *     with the sweeper, the owner and the reason, progress 0) and fails it
 *     after too many expiries;
 *   - hand-back and a cancel end the claim. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cf_db.h"
#include "cf_testutil.h"

static char s_db_url[512];
static PGconn *s_raw;

static int s_setup(void **state)
{
    char err[512];
    cf_test_fresh_database("cf_claims", s_db_url, sizeof s_db_url);
    s_raw = cf_db_connect(s_db_url, 10, err, sizeof err);
    if (!s_raw)
        fail_msg("connect: %s", err);
    return 0;
}

static int s_teardown(void **state)
{
    PQfinish(s_raw);
    return 0;
}

/* Each test starts with no compositions: the sweep sees only its own. */
static int s_before(void **state)
{
    PQclear(PQexec(s_raw, "DELETE FROM compositions"));
    return 0;
}

static cf_db_t *s_pool(void)
{
    cf_db_options_t opts;
    cf_db_options_default(&opts);
    opts.url = s_db_url;
    opts.pool_size = 2;
    char err[256];
    cf_db_t *db = cf_db_new(&opts, err, sizeof err);
    assert_non_null(db);
    return db;
}

/* The first value of SQL with $1 = ID (caller frees). */
static char *s_value(const char *sql, const char *id)
{
    const char *params[] = {id};
    PGresult *res = PQexecParams(s_raw, sql, id ? 1 : 0, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1)
        fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    char *value = strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    return value;
}

static void s_expect(const char *sql, const char *id, const char *want)
{
    char *got = s_value(sql, id);
    if (strcmp(got, want))
        fail_msg("%s: got '%s', expected '%s'", sql, got, want);
    free(got);
}

/* Waits (up to 10 s) until the claim of ID has expired by the database
 * clock. */
static void s_wait_expired(const char *id)
{
    for (int i = 0; i < 500; i++) {
        char *v =
            s_value("SELECT (claim_expires_at < now())::text FROM compositions WHERE id = $1", id);
        bool expired = !strcmp(v, "true");
        free(v);
        if (expired)
            return;
        usleep(20 * 1000);
    }
    fail_msg("the claim of %s never expired", id);
}

static void test_take_records_claim_and_recognises_retry(void **state)
{
    cf_db_t *db = s_pool();
    char id[CF_DB_ID_LEN], err[256];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, id);
    cf_db_claim_t claim = {
        .owner = "node-a", .taker = "node-a-0", .token = "tok1", .ttl_ms = 60000};
    assert_int_equal(cf_db_composition_claim(db, id, &claim, err, sizeof err), CF_DB_OK);
    s_expect("SELECT claimed_by || ' ' || claim_op || ' ' || attempts || ' ' ||"
             " (claim_expires_at BETWEEN now() + interval '50 s' AND now() + interval '61 s')"
             " FROM compositions WHERE id = $1",
             id, "node-a tok1 1 true");
    /* The same take again (its answer was lost): recognised, not applied. */
    assert_int_equal(cf_db_composition_claim(db, id, &claim, err, sizeof err), CF_DB_OK);
    s_expect("SELECT attempts || ' ' || (SELECT count(*) FROM events WHERE composition_id = c.id"
             " AND type = 'status') FROM compositions c WHERE id = $1",
             id, "1 1");
    s_expect("SELECT payload->>'by' || ' ' || (payload->>'op') FROM events WHERE"
             " composition_id = $1 AND type = 'status'",
             id, "node-a-0 tok1");
    /* Another take (another queue item, another node): refused. */
    cf_db_claim_t other = {.owner = "node-b", .token = "tok2", .ttl_ms = 60000};
    assert_int_equal(cf_db_composition_claim(db, id, &other, err, sizeof err), CF_DB_ILLEGAL);
    /* The plain take of before keeps its meaning: refused too. */
    assert_int_equal(cf_db_composition_take(db, id, "node-a", err, sizeof err), CF_DB_ILLEGAL);
    /* Tokens are checked. */
    cf_db_claim_t bad = {.owner = "node-a", .token = "a,b", .ttl_ms = 1000};
    assert_int_equal(cf_db_composition_claim(db, id, &bad, err, sizeof err), CF_DB_INVALID);
    cf_db_destroy(&db);
}

static void test_owner_writes_name_the_claim(void **state)
{
    cf_db_t *db = s_pool();
    char id[CF_DB_ID_LEN], err[256];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, id);
    cf_db_claim_t claim = {.owner = "node-a", .token = "c1", .ttl_ms = 60000};
    assert_int_equal(cf_db_composition_claim(db, id, &claim, err, sizeof err), CF_DB_OK);
    /* Another claim's writes are refused: fenced. */
    cf_db_as_t wrong = {.claim = "c0", .op_id = "c0.encoding"};
    assert_int_equal(
        cf_db_composition_transition_as(db, id, CF_STATE_ENCODING, &wrong, NULL, err, sizeof err),
        CF_DB_STALE);
    s_expect("SELECT cf_state(status, stage) FROM compositions WHERE id = $1", id, "planning");
    /* The owner's: applied; the same operation again answers its outcome
     * (OK), applied once; another operation to the same state is illegal. */
    cf_db_as_t as = {.claim = "c1", .op_id = "c1.encoding"};
    assert_int_equal(
        cf_db_composition_transition_as(db, id, CF_STATE_ENCODING, &as, NULL, err, sizeof err),
        CF_DB_OK);
    assert_int_equal(
        cf_db_composition_transition_as(db, id, CF_STATE_ENCODING, &as, NULL, err, sizeof err),
        CF_DB_OK);
    s_expect("SELECT count(*) FROM events WHERE composition_id = $1 AND type = 'status'"
             " AND payload->>'to' = 'encoding'",
             id, "1");
    cf_db_as_t fresh = {.claim = "c1", .op_id = "c1.encoding.2"};
    assert_int_equal(
        cf_db_composition_transition_as(db, id, CF_STATE_ENCODING, &fresh, NULL, err, sizeof err),
        CF_DB_ILLEGAL);
    cf_db_as_t asm_as = {.claim = "c1", .op_id = "c1.assembling"};
    assert_int_equal(cf_db_composition_transition_as(db, id, CF_STATE_ASSEMBLING, &asm_as, NULL,
                                                     err, sizeof err),
                     CF_DB_OK);
    cf_db_output_t out = {"/out/x.mp4", 10, 1.0, "h"};
    cf_db_as_t done = {.claim = "c1", .op_id = "c1.completed"};
    assert_int_equal(cf_db_composition_complete_as(db, id, &out, &done, err, sizeof err), CF_DB_OK);
    /* Completed: the claim ended with it; a retry of the completion still
     * answers OK (its own earlier outcome). */
    s_expect("SELECT status || ' ' || coalesce(claimed_by, '-') || ' ' || coalesce(claim_op, '-')"
             " || ' ' || coalesce(claim_expires_at::text, '-') FROM compositions WHERE id = $1",
             id, "completed - - -");
    assert_int_equal(cf_db_composition_complete_as(db, id, &out, &done, err, sizeof err), CF_DB_OK);
    cf_db_destroy(&db);
}

static void test_renew_never_revives(void **state)
{
    cf_db_t *db = s_pool();
    char a[CF_DB_ID_LEN], b[CF_DB_ID_LEN], err[256];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, a);
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, b);
    cf_db_claim_t ca = {.owner = "node-a", .token = "ra", .ttl_ms = 400};
    cf_db_claim_t cb = {.owner = "node-a", .token = "rb", .ttl_ms = 60000};
    assert_int_equal(cf_db_composition_claim(db, a, &ca, err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_db_composition_claim(db, b, &cb, err, sizeof err), CF_DB_OK);
    s_wait_expired(a);
    const char *tokens[] = {"ra", "rb", "unknown"};
    bool held[3] = {true, false, true};
    assert_int_equal(cf_db_claims_renew(db, "node-a", tokens, 3, 120000, held, err, sizeof err),
                     CF_DB_OK);
    assert_false(held[0]); /* expired: not revived */
    assert_true(held[1]);
    assert_false(held[2]);
    s_expect("SELECT (claim_expires_at < now())::text FROM compositions WHERE id = $1", a, "true");
    s_expect("SELECT (claim_expires_at > now() + interval '100 s')::text FROM compositions"
             " WHERE id = $1",
             b, "true");
    /* Another owner cannot renew it. */
    const char *theirs[] = {"rb"};
    assert_int_equal(cf_db_claims_renew(db, "node-b", theirs, 1, 1000, held, err, sizeof err),
                     CF_DB_OK);
    assert_false(held[0]);
    cf_db_destroy(&db);
}

static void test_sweep_requeues_then_fails(void **state)
{
    cf_db_t *db = s_pool();
    char id[CF_DB_ID_LEN], live[CF_DB_ID_LEN], err[256];
    cf_test_create_queued(db, CF_PRIORITY_LOW, id);
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, live);
    cf_db_claim_t c1 = {.owner = "node-a", .token = "s1", .ttl_ms = 300};
    cf_db_claim_t keep = {.owner = "node-a", .token = "s9", .ttl_ms = 60000};
    assert_int_equal(cf_db_composition_claim(db, id, &c1, err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_db_composition_claim(db, live, &keep, err, sizeof err), CF_DB_OK);
    cf_db_as_t enc = {.claim = "s1", .op_id = "s1.encoding"};
    assert_int_equal(
        cf_db_composition_transition_as(db, id, CF_STATE_ENCODING, &enc, NULL, err, sizeof err),
        CF_DB_OK);
    assert_int_equal(cf_db_composition_set_progress(db, id, 0.5, err, sizeof err), CF_DB_OK);
    s_wait_expired(id);
    cf_db_expired_t *items = NULL;
    int n = -1;
    assert_int_equal(cf_db_claims_expire(db, "sweeper-x", 2, 100, &items, &n, err, sizeof err),
                     CF_DB_OK);
    assert_int_equal(n, 1);
    assert_string_equal(items[0].id, id);
    assert_int_equal(items[0].state, CF_STATE_QUEUED);
    assert_int_equal(items[0].priority, CF_PRIORITY_LOW);
    assert_string_equal(items[0].owner, "node-a");
    free(items);
    s_expect("SELECT cf_state(status, stage) || ' ' || progress || ' ' || claim_expiries || ' ' ||"
             " coalesce(claimed_by, '-') FROM compositions WHERE id = $1",
             id, "queued 0 1 -");
    s_expect("SELECT payload::text FROM events WHERE composition_id = $1 AND type = 'status'"
             " ORDER BY id DESC LIMIT 1",
             id,
             "{\"by\": \"sweeper-x\", \"to\": \"queued\", \"from\": \"encoding\", \"owner\": "
             "\"node-a\", \"reason\": \"claim_expired\"}");
    /* The live claim was not touched; nothing more to sweep. */
    s_expect("SELECT claimed_by FROM compositions WHERE id = $1", live, "node-a");
    assert_int_equal(cf_db_claims_expire(db, "sweeper-x", 2, 100, &items, &n, err, sizeof err),
                     CF_DB_OK);
    assert_int_equal(n, 0);
    free(items);
    /* The old owner wakes up: its writes are refused. */
    cf_db_as_t late = {.claim = "s1", .op_id = "s1.assembling"};
    assert_int_equal(
        cf_db_composition_transition_as(db, id, CF_STATE_ASSEMBLING, &late, NULL, err, sizeof err),
        CF_DB_STALE);
    cf_db_output_t out = {"/out/late.mp4", 1, 1, "h"};
    cf_db_as_t late_done = {.claim = "s1", .op_id = "s1.completed"};
    assert_int_equal(cf_db_composition_complete_as(db, id, &out, &late_done, err, sizeof err),
                     CF_DB_STALE);
    /* Taken again, by another node; its claim expires too: that is the
     * second expiry, the limit (2): failed. */
    cf_db_claim_t c2 = {.owner = "node-b", .token = "s2", .ttl_ms = 300};
    assert_int_equal(cf_db_composition_claim(db, id, &c2, err, sizeof err), CF_DB_OK);
    s_expect("SELECT attempts::text FROM compositions WHERE id = $1", id, "2");
    s_wait_expired(id);
    assert_int_equal(cf_db_claims_expire(db, "sweeper-y", 2, 100, &items, &n, err, sizeof err),
                     CF_DB_OK);
    assert_int_equal(n, 1);
    assert_int_equal(items[0].state, CF_STATE_FAILED);
    free(items);
    s_expect("SELECT status || ' ' || error_code || ' ' || (finished_at IS NOT NULL)"
             " FROM compositions WHERE id = $1",
             id, "failed claim_expired true");
    cf_db_destroy(&db);
}

static void test_hand_back_and_cancel_end_the_claim(void **state)
{
    cf_db_t *db = s_pool();
    char id[CF_DB_ID_LEN], other[CF_DB_ID_LEN], err[256];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, id);
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, other);
    cf_db_claim_t c = {.owner = "node-a", .token = "h1", .ttl_ms = 60000};
    assert_int_equal(cf_db_composition_claim(db, id, &c, err, sizeof err), CF_DB_OK);
    cf_db_as_t back = {.claim = "h1", .op_id = "h1.queued", .reason = "node_stopped"};
    assert_int_equal(
        cf_db_composition_transition_as(db, id, CF_STATE_QUEUED, &back, NULL, err, sizeof err),
        CF_DB_OK);
    s_expect("SELECT status || ' ' || coalesce(claimed_by, '-') FROM compositions WHERE id = $1",
             id, "queued -");
    s_expect("SELECT payload->>'from' || ' ' || (payload->>'reason') FROM events WHERE"
             " composition_id = $1 AND type = 'status' ORDER BY id DESC LIMIT 1",
             id, "planning node_stopped");
    /* Taken again: a new claim (attempts 2). */
    cf_db_claim_t again = {.owner = "node-b", .token = "h2", .ttl_ms = 60000};
    assert_int_equal(cf_db_composition_claim(db, id, &again, err, sizeof err), CF_DB_OK);
    s_expect("SELECT claimed_by || ' ' || attempts FROM compositions WHERE id = $1", id,
             "node-b 2");
    /* A cancel from the API (no claim) ends it too. */
    cf_db_claim_t c3 = {.owner = "node-a", .token = "h3", .ttl_ms = 60000};
    assert_int_equal(cf_db_composition_claim(db, other, &c3, err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_db_composition_cancel(db, other, NULL, err, sizeof err), CF_DB_OK);
    s_expect("SELECT status || ' ' || coalesce(claim_op, '-') FROM compositions WHERE id = $1",
             other, "cancelled -");
    cf_db_destroy(&db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_take_records_claim_and_recognises_retry, s_before),
        cmocka_unit_test_setup(test_owner_writes_name_the_claim, s_before),
        cmocka_unit_test_setup(test_renew_never_revives, s_before),
        cmocka_unit_test_setup(test_sweep_requeues_then_fails, s_before),
        cmocka_unit_test_setup(test_hand_back_and_cancel_end_the_claim, s_before),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
