/* A coordinator's writes to segments and compositions, fenced by its lease in
 * the statement itself, and the fence actor that carries them, against the
 * Postgres that tests/run starts:
 *   - segment plans, assignments and updates, and composition transitions,
 *     pass under a token that holds the lease and are refused (nothing
 *     changed) once it does not: expired, another holder, another epoch;
 *   - a worker's result is accepted only with the assignment token of the
 *     segment's current assignment; done is write-once;
 *   - a fenced write waiting for a row lock does not hold the lease meanwhile
 *     (renewal goes on), and is refused if the lease ran out while it waited;
 *   - the fence actor drops a deposed coordinator's queued writes and gives
 *     up retrying when the lease's deadline passes: nothing lands late. */
#define _GNU_SOURCE
#include <czmq.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cf_db.h"
#include "cf_db_cluster.h"
#include "cf_election.h"
#include "cf_election_fence.h"
#include "cf_test_proxy.h"
#include "cf_testutil.h"

static char s_url[512];
static PGconn *s_raw;

static const char *S_A = "aaaaaaaa-0000-4000-8000-0000000000f1";
static const char *S_B = "bbbbbbbb-0000-4000-8000-0000000000f2";

static int s_setup(void **state)
{
    cf_test_fresh_database("cf_fencing", s_url, sizeof s_url);
    char err[512];
    s_raw = cf_db_connect(s_url, 10, err, sizeof err);
    assert_non_null(s_raw);
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
    char err[256];
    cf_db_t *db = cf_db_new(&opts, err, sizeof err);
    assert_non_null(db);
    return db;
}

/* NODE acquires the free or expired lease for TTL_MS through DBC; its token. */
static cf_fence_token_t s_acquire(cf_db_cluster_t *dbc, const char *node, int ttl_ms)
{
    cf_db_lease_t lease;
    char err[512];
    for (int tries = 0; tries < 200; tries++) {
        assert_int_equal(
            cf_db_cluster_lease_acquire(dbc, node, 0, ttl_ms, &lease, 3000, err, sizeof err),
            CF_DBC_OK);
        if (lease.held)
            break;
        usleep(20 * 1000);
    }
    assert_true(lease.held);
    cf_fence_token_t token = {.epoch = lease.epoch};
    snprintf(token.holder, sizeof token.holder, "%s", node);
    return token;
}

static void s_expire_lease(void)
{
    cf_test_sql_exec(s_raw,
                     "UPDATE coordinator_lease SET expires_at = now() - interval '1 second'");
}

static char *s_segment(const char *id, int idx)
{
    return cf_test_sql_value(
        s_raw,
        "SELECT status || ' ' || epoch || ' ' || coalesce(node_id, '-') || ' ' ||"
        " attempts || ' ' || coalesce(blob_hash, '-') FROM segments"
        " WHERE composition_id = '%s' AND idx = %d",
        id, idx);
}

static void s_segments_and_transitions_fenced(void **state)
{
    cf_db_t *db = s_pool();
    cf_db_cluster_t *a_dbc = cf_db_cluster_new(s_url), *b_dbc = cf_db_cluster_new(s_url);
    char err[512], id[CF_DB_ID_LEN];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, id);
    s_expire_lease();
    cf_fence_token_t a = s_acquire(a_dbc, S_A, 60000);
    cf_db_segment_plan_t plan[2] = {{0, 0, 100, NULL}, {1, 100, 200, NULL}};

    /* A token that does not hold the lease changes nothing. */
    cf_fence_token_t forged = a;
    snprintf(forged.holder, sizeof forged.holder, "%s", S_B);
    assert_int_equal(cf_db_segments_create_fenced(db, &forged, id, plan, 2, err, sizeof err),
                     CF_DB_STALE);
    cf_fence_token_t other_epoch = a;
    other_epoch.epoch++;
    assert_int_equal(cf_db_segments_create_fenced(db, &other_epoch, id, plan, 2, err, sizeof err),
                     CF_DB_STALE);
    char *n =
        cf_test_sql_value(s_raw, "SELECT count(*) FROM segments WHERE composition_id = '%s'", id);
    assert_string_equal(n, "0");
    free(n);

    /* A's plan, assignment and transition pass. */
    assert_int_equal(cf_db_segments_create_fenced(db, &a, id, plan, 2, err, sizeof err), CF_DB_OK);
    cf_db_assignment_t assigned;
    assert_int_equal(
        cf_db_segment_assign_fenced(db, &a, id, 0, "node-x", &assigned, err, sizeof err), CF_DB_OK);
    assert_int_equal(assigned.epoch, a.epoch);
    assert_int_equal(assigned.attempt, 1);
    assert_string_equal(assigned.node, "node-x");
    assert_int_equal(cf_db_composition_transition_fenced(db, &a, id, CF_STATE_PLANNING, NULL, NULL,
                                                         NULL, NULL, err, sizeof err),
                     CF_DB_OK);
    char *ev = cf_test_sql_value(
        s_raw,
        "SELECT payload->>'epoch' || ' ' || (payload->>'by') FROM events"
        " WHERE composition_id = '%s' AND type = 'status' ORDER BY id DESC LIMIT 1",
        id);
    char expect[128];
    snprintf(expect, sizeof expect, "%" PRId64 " %s", a.epoch, S_A);
    assert_string_equal(ev, expect);
    free(ev);

    /* A's lease runs out (nobody took it yet): its writes stop at once. */
    s_expire_lease();
    cf_db_segment_update_t up = {.fields = CF_SEG_F_STATE, .state = CF_SEG_PENDING};
    assert_int_equal(cf_db_segment_update_fenced(db, &a, id, 0, &up, err, sizeof err), CF_DB_STALE);
    assert_int_equal(
        cf_db_segment_assign_fenced(db, &a, id, 1, "node-x", &assigned, err, sizeof err),
        CF_DB_STALE);
    cf_state_t from;
    assert_int_equal(cf_db_composition_transition_fenced(db, &a, id, CF_STATE_ENCODING, NULL, NULL,
                                                         NULL, &from, err, sizeof err),
                     CF_DB_STALE);
    char *seg = s_segment(id, 0);
    snprintf(expect, sizeof expect, "assigned %" PRId64 " node-x 1 -", a.epoch);
    assert_string_equal(seg, expect);
    free(seg);
    seg = s_segment(id, 1);
    snprintf(expect, sizeof expect, "pending %" PRId64 " - 0 -", a.epoch);
    assert_string_equal(seg, expect);
    free(seg);
    char *st = cf_test_sql_value(
        s_raw, "SELECT cf_state(status, stage) FROM compositions WHERE id = '%s'", id);
    assert_string_equal(st, "planning");
    free(st);

    /* B takes over: its writes pass, A's (however late) never do. */
    cf_fence_token_t b = s_acquire(b_dbc, S_B, 60000);
    assert_true(b.epoch > a.epoch);
    assert_int_equal(
        cf_db_segment_assign_fenced(db, &b, id, 0, "node-y", &assigned, err, sizeof err), CF_DB_OK);
    assert_int_equal(assigned.attempt, 2);
    assert_int_equal(cf_db_composition_transition_fenced(db, &b, id, CF_STATE_ENCODING, NULL, NULL,
                                                         NULL, NULL, err, sizeof err),
                     CF_DB_OK);
    assert_int_equal(
        cf_db_segment_assign_fenced(db, &a, id, 0, "node-x", &assigned, err, sizeof err),
        CF_DB_STALE);
    assert_int_equal(cf_db_composition_transition_fenced(db, &a, id, CF_STATE_FAILED, NULL, "late",
                                                         "x", NULL, err, sizeof err),
                     CF_DB_STALE);
    st = cf_test_sql_value(s_raw,
                           "SELECT cf_state(status, stage) FROM compositions WHERE id = '%s'", id);
    assert_string_equal(st, "encoding");
    free(st);
    /* An illegal transition under a valid token is illegal, not stale. */
    assert_int_equal(cf_db_composition_transition_fenced(db, &b, id, CF_STATE_PLANNING, NULL, NULL,
                                                         NULL, &from, err, sizeof err),
                     CF_DB_ILLEGAL);
    assert_int_equal(from, CF_STATE_ENCODING);
    /* The unfenced, local path cannot write a coordinator's segment. */
    up = (cf_db_segment_update_t){.fields = CF_SEG_F_PROGRESS, .progress = 0.5};
    assert_int_equal(cf_db_segment_update(db, id, 0, 0, &up, err, sizeof err), CF_DB_STALE);
    assert_int_equal(cf_db_segment_update(db, id, 0, b.epoch, &up, err, sizeof err), CF_DB_INVALID);

    cf_db_cluster_destroy(&a_dbc);
    cf_db_cluster_destroy(&b_dbc);
    cf_db_destroy(&db);
}

/* Worker results: only with the current assignment's token; done once. */
static void s_results_need_the_assignment_token(void **state)
{
    cf_db_t *db = s_pool();
    cf_db_cluster_t *dbc = cf_db_cluster_new(s_url);
    char err[512], id[CF_DB_ID_LEN];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, id);
    s_expire_lease();
    cf_fence_token_t c = s_acquire(dbc, S_A, 60000);
    cf_db_segment_plan_t plan = {0, 0, 100, NULL};
    assert_int_equal(cf_db_segments_create_fenced(db, &c, id, &plan, 1, err, sizeof err), CF_DB_OK);
    cf_db_assignment_t first, second;
    assert_int_equal(cf_db_segment_assign_fenced(db, &c, id, 0, "node-x", &first, err, sizeof err),
                     CF_DB_OK);
    cf_db_segment_update_t encoding = {
        .fields = CF_SEG_F_STATE | CF_SEG_F_PROGRESS, .state = CF_SEG_ENCODING, .progress = 0.25};
    assert_int_equal(cf_db_segment_report(db, NULL, &first, id, 0, &encoding, err, sizeof err),
                     CF_DB_OK);
    /* The coordinator gives the segment to another node (x seemed dead). */
    assert_int_equal(cf_db_segment_assign_fenced(db, &c, id, 0, "node-y", &second, err, sizeof err),
                     CF_DB_OK);
    assert_int_equal(second.attempt, 2);
    /* x finishes after all: its result is for a replaced assignment. */
    cf_db_segment_update_t done = {.fields = CF_SEG_F_STATE | CF_SEG_F_BLOB,
                                   .state = CF_SEG_DONE,
                                   .blob_hash = "hash-x",
                                   .size_bytes = 10};
    assert_int_equal(cf_db_segment_report(db, NULL, &first, id, 0, &done, err, sizeof err),
                     CF_DB_STALE);
    /* A forged token (right attempt, wrong node or epoch) is no better. */
    cf_db_assignment_t forged = second;
    snprintf(forged.node, sizeof forged.node, "node-x");
    assert_int_equal(cf_db_segment_report(db, NULL, &forged, id, 0, &done, err, sizeof err),
                     CF_DB_STALE);
    forged = second;
    forged.epoch++;
    assert_int_equal(cf_db_segment_report(db, NULL, &forged, id, 0, &done, err, sizeof err),
                     CF_DB_STALE);
    /* y's result counts. */
    done.blob_hash = "hash-y";
    assert_int_equal(cf_db_segment_report(db, NULL, &second, id, 0, &done, err, sizeof err),
                     CF_DB_OK);
    char *seg = s_segment(id, 0);
    char expect[128];
    snprintf(expect, sizeof expect, "done %" PRId64 " node-y 2 hash-y", c.epoch);
    assert_string_equal(seg, expect);
    free(seg);
    /* Done is write-once: the same done again is no error and writes
     * nothing; another blob, a new state or a new assignment is refused. */
    assert_int_equal(cf_db_segment_report(db, NULL, &second, id, 0, &done, err, sizeof err),
                     CF_DB_OK);
    done.blob_hash = "hash-z";
    assert_int_equal(cf_db_segment_report(db, NULL, &second, id, 0, &done, err, sizeof err),
                     CF_DB_ILLEGAL);
    cf_db_segment_update_t failed = {.fields = CF_SEG_F_STATE, .state = CF_SEG_FAILED};
    assert_int_equal(cf_db_segment_report(db, NULL, &second, id, 0, &failed, err, sizeof err),
                     CF_DB_ILLEGAL);
    cf_db_segment_update_t requeue = {
        .fields = CF_SEG_F_STATE | CF_SEG_F_BLOB, .state = CF_SEG_DONE, .blob_hash = "hash-c"};
    assert_int_equal(cf_db_segment_update_fenced(db, &c, id, 0, &requeue, err, sizeof err),
                     CF_DB_ILLEGAL);
    cf_db_assignment_t third;
    assert_int_equal(cf_db_segment_assign_fenced(db, &c, id, 0, "node-z", &third, err, sizeof err),
                     CF_DB_ILLEGAL);
    seg = s_segment(id, 0);
    assert_string_equal(seg, expect);
    free(seg);
    /* A worker reports encoding, done or failed only; a relayed result is
     * fenced by the relaying coordinator's lease too. */
    cf_db_segment_update_t assign = {.fields = CF_SEG_F_STATE, .state = CF_SEG_ASSIGNED};
    assert_int_equal(cf_db_segment_report(db, NULL, &second, id, 0, &assign, err, sizeof err),
                     CF_DB_INVALID);
    cf_db_segment_plan_t plan2 = {1, 100, 200, NULL};
    char id2[CF_DB_ID_LEN];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, id2);
    assert_int_equal(cf_db_segments_create_fenced(db, &c, id2, &plan2, 1, err, sizeof err),
                     CF_DB_OK);
    cf_db_assignment_t relay;
    assert_int_equal(cf_db_segment_assign_fenced(db, &c, id2, 1, "node-x", &relay, err, sizeof err),
                     CF_DB_OK);
    s_expire_lease();
    assert_int_equal(cf_db_segment_report(db, &c, &relay, id2, 1, &encoding, err, sizeof err),
                     CF_DB_STALE);
    /* The worker's own report does not depend on a coordinator's lease. */
    assert_int_equal(cf_db_segment_report(db, NULL, &relay, id2, 1, &encoding, err, sizeof err),
                     CF_DB_OK);
    cf_db_cluster_destroy(&dbc);
    cf_db_destroy(&db);
}

/* ------------------------------------------------------------ short fences */

typedef struct {
    cf_db_t *db;
    cf_fence_token_t token;
    char id[CF_DB_ID_LEN];
    cf_state_t to;
    int rc;
} s_writer_t;

static void *s_write_transition(void *arg)
{
    s_writer_t *w = arg;
    char err[256];
    w->rc = cf_db_composition_transition_fenced(w->db, &w->token, w->id, w->to, NULL, NULL, NULL,
                                                NULL, err, sizeof err);
    return NULL;
}

/* A fenced write waiting for its composition's row lock (another writer
 * holds it) holds no lock on the lease: the coordinator renews meanwhile.
 * When the row frees up it checks the lease then: still held, it passes;
 * run out while it waited, it is refused. */
static void s_fenced_waits_do_not_block_renewal(void **state)
{
    cf_db_t *db = s_pool();
    cf_db_cluster_t *dbc = cf_db_cluster_new(s_url);
    char err[512];
    s_writer_t w = {.db = db, .to = CF_STATE_PLANNING};
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, w.id);
    s_expire_lease();
    w.token = s_acquire(dbc, S_A, 60000);
    PGconn *locker = cf_db_connect(s_url, 10, err, sizeof err);
    char sql[160];
    snprintf(sql, sizeof sql, "BEGIN; SELECT 1 FROM compositions WHERE id = '%s' FOR UPDATE", w.id);
    PGresult *res = PQexec(locker, sql);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    PQclear(res);
    pthread_t thread;
    pthread_create(&thread, NULL, s_write_transition, &w);
    usleep(300 * 1000); /* it waits for the row */
    cf_db_lease_t lease;
    assert_int_equal(
        cf_db_cluster_lease_acquire(dbc, S_A, w.token.epoch, 60000, &lease, 500, err, sizeof err),
        CF_DBC_OK);
    assert_true(lease.held);
    res = PQexec(locker, "COMMIT");
    PQclear(res);
    pthread_join(thread, NULL);
    assert_int_equal(w.rc, CF_DB_OK);

    /* Again, but the lease runs out while the write waits. */
    res = PQexec(locker, sql);
    PQclear(res);
    w.to = CF_STATE_ENCODING;
    pthread_create(&thread, NULL, s_write_transition, &w);
    usleep(300 * 1000);
    s_expire_lease();
    res = PQexec(locker, "COMMIT");
    PQclear(res);
    pthread_join(thread, NULL);
    assert_int_equal(w.rc, CF_DB_STALE);
    char *st = cf_test_sql_value(
        s_raw, "SELECT cf_state(status, stage) FROM compositions WHERE id = '%s'", w.id);
    assert_string_equal(st, "planning");
    free(st);
    PQfinish(locker);
    cf_db_cluster_destroy(&dbc);
    cf_db_destroy(&db);
}

/* ------------------------------------------------------------ the fence actor */

/* Waits for the actor's next FENCE answer; its verdict (caller frees), or
 * NULL after TIMEOUT_MS. KIND_P (may be NULL) gets its kind. */
static char *s_verdict(zactor_t *fence, int timeout_ms, char **kind_p)
{
    zpoller_t *poller = zpoller_new(fence, NULL);
    char *verdict = NULL;
    if (zpoller_wait(poller, timeout_ms)) {
        char *command = NULL, *kind = NULL, *subject = NULL;
        uint64_t epoch = 0;
        zsock_recv(fence, "sss8s", &command, &kind, &verdict, &epoch, &subject);
        free(command);
        free(subject);
        if (kind_p)
            *kind_p = kind;
        else
            free(kind);
    }
    zpoller_destroy(&poller);
    return verdict;
}

static void s_fence_lease(zactor_t *fence, const cf_fence_token_t *token, int64_t deadline)
{
    zsock_send(fence, "s8s8", "LEASE", (uint64_t)token->epoch, token->holder, (uint64_t)deadline);
}

static void s_fence_actor_drops_late_writes(void **state)
{
    cf_db_t *db = s_pool();
    cf_db_cluster_t *dbc = cf_db_cluster_new(s_url);
    cf_test_proxy_t proxy;
    cf_test_proxy_start(&proxy, s_url);
    char url[600], id[CF_DB_ID_LEN];
    cf_test_proxy_url(&proxy, s_url, url, sizeof url);
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, id);
    s_expire_lease();
    /* A holds the lease for 1.5 s in Postgres; its node's deadline is 1 s. */
    cf_fence_token_t a = s_acquire(dbc, S_A, 1500);
    cf_election_fence_args_t args = {.database_url = url, .pool = db, .interrupt_fd = -1};
    zactor_t *fence = cf_election_fence_new(&args);
    assert_non_null(fence);

    /* Writes under a valid lease pass: through the fence actor's own
     * connection (view) and the state pool (state). */
    s_fence_lease(fence, &a, cf_election_clock_ms() + 1000);
    zsock_send(fence, "s8ss", "VIEW", (uint64_t)a.epoch, a.holder, "{}");
    char json[256];
    snprintf(json, sizeof json, "{\"composition\": \"%s\", \"to\": \"planning\"}", id);
    zsock_send(fence, "s8ss", "STATE", (uint64_t)a.epoch, a.holder, json);
    char *kind = NULL, *verdict = s_verdict(fence, 3000, &kind);
    assert_string_equal(kind, "view");
    assert_string_equal(verdict, "passed");
    free(kind);
    free(verdict);
    verdict = s_verdict(fence, 3000, &kind);
    assert_string_equal(kind, "state");
    assert_string_equal(verdict, "passed");
    free(kind);
    free(verdict);
    cf_test_sql_exec(s_raw,
                     "UPDATE cluster_view SET epoch = 0, coordinator = NULL, updated_at = NULL");

    /* Postgres goes silent. The writes wait, then are given up at the
     * lease's deadline (never retried for minutes). */
    atomic_store(&proxy.silent, true);
    int64_t deadline = cf_election_clock_ms() + 800;
    s_fence_lease(fence, &a, deadline);
    zsock_send(fence, "s8ss", "VIEW", (uint64_t)a.epoch, a.holder, "{}");
    zsock_send(fence, "s8ss", "SWEEP", (uint64_t)a.epoch, a.holder, "");
    verdict = s_verdict(fence, 5000, &kind);
    assert_non_null(verdict);
    assert_string_equal(verdict, "expired");
    int64_t answered = cf_election_clock_ms();
    free(kind);
    free(verdict);
    verdict = s_verdict(fence, 3000, NULL);
    assert_string_equal(verdict, "expired");
    free(verdict);
    assert_true(answered - deadline < 2000);
    /* Postgres answers again, with A's lease row still unexpired or just
     * run out and nobody else holding it: nothing of A's lands. */
    atomic_store(&proxy.silent, false);
    usleep(1500 * 1000);
    char *view = cf_test_sql_value(s_raw, "SELECT epoch FROM cluster_view");
    assert_string_equal(view, "0");
    free(view);

    /* Deposed: the node's lease moves on (or ends), and writes queued under
     * the old epoch are dropped at once, unsent. */
    a = s_acquire(dbc, S_A, 60000);
    atomic_store(&proxy.silent, true);
    s_fence_lease(fence, &a, cf_election_clock_ms() + 60000);
    zsock_send(fence, "s8ss", "VIEW", (uint64_t)a.epoch, a.holder, "{}");
    usleep(200 * 1000);
    cf_fence_token_t none = {0};
    s_fence_lease(fence, &none, 0);
    verdict = s_verdict(fence, 3000, NULL);
    assert_string_equal(verdict, "dropped");
    free(verdict);
    /* A write made after stepping down is dropped too. */
    zsock_send(fence, "s8ss", "STATE", (uint64_t)a.epoch, a.holder, json);
    verdict = s_verdict(fence, 3000, NULL);
    assert_string_equal(verdict, "dropped");
    free(verdict);
    atomic_store(&proxy.silent, false);
    usleep(500 * 1000);
    view = cf_test_sql_value(s_raw, "SELECT epoch FROM cluster_view");
    assert_string_equal(view, "0");
    free(view);

    zactor_destroy(&fence);
    cf_test_proxy_stop(&proxy);
    cf_db_cluster_destroy(&dbc);
    cf_db_destroy(&db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(s_segments_and_transitions_fenced),
        cmocka_unit_test(s_results_need_the_assignment_token),
        cmocka_unit_test(s_fenced_waits_do_not_block_renewal),
        cmocka_unit_test(s_fence_actor_drops_late_writes),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
