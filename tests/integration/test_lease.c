/* The coordinator lease when answers are lost or late, and when its row goes
 * backwards, against the Postgres that tests/run starts:
 *   - an acquire whose answer is held back past the caller's deadline is
 *     adopted by its author at its next call (its token is in the row), by
 *     the bare call and by the election actor: not orphaned until expiry;
 *   - a statement stuck on a lock is cancelled by the server before the
 *     caller's deadline, so an acquire given up on never commits later;
 *   - a lease row reset to a lower epoch never makes an epoch repeat. */
#define _GNU_SOURCE
#include <czmq.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cf_db.h"
#include "cf_db_cluster.h"
#include "cf_election.h"
#include "cf_migrate.h"
#include "cf_test_proxy.h"
#include "cf_testutil.h"

static char s_url[512];
static PGconn *s_raw;

static const char *S_A = "aaaaaaaa-0000-4000-8000-00000000000a";
static const char *S_B = "bbbbbbbb-0000-4000-8000-00000000000b";

static int s_setup(void **state)
{
    cf_test_fresh_database("cf_lease", s_url, sizeof s_url);
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

static void s_reset_lease(void)
{
    cf_test_sql_exec(s_raw,
                     "UPDATE coordinator_lease SET holder = NULL, holder_token = NULL, epoch = 0,"
                     " expires_at = '-infinity'");
    cf_test_sql_exec(s_raw, "UPDATE cluster_view SET epoch = 0, coordinator = NULL");
}

static int64_t s_ms(void)
{
    return cf_election_clock_ms();
}

/* The answer to A's acquire is held back until A gives up (it committed).
 * A's next call adopts the lease at once: same epoch, long before the row
 * would have expired. B cannot take it meanwhile; the lease is not
 * orphaned. */
static void s_held_answer_adopted(void **state)
{
    s_reset_lease();
    cf_test_proxy_t proxy;
    cf_test_proxy_start(&proxy, s_url);
    char url[600], err[512];
    cf_test_proxy_url(&proxy, s_url, url, sizeof url);
    cf_db_cluster_t *a = cf_db_cluster_new(url), *b = cf_db_cluster_new(s_url);
    cf_db_lease_t lease;
    /* Connected (and the statement timeout set) before the answers stop. */
    assert_int_equal(cf_db_cluster_lease_get(a, &lease, 400, err, sizeof err), CF_DBC_OK);
    atomic_store(&proxy.hold_answers, true);
    int64_t t0 = s_ms();
    assert_int_equal(cf_db_cluster_lease_acquire(a, S_A, 0, 10000, &lease, 400, err, sizeof err),
                     CF_DBC_UNAVAILABLE);
    assert_true(s_ms() - t0 < 2000);
    assert_true(atomic_load(&proxy.held) >= 1);
    /* It committed: the row names A, with A's token. */
    char *row =
        cf_test_sql_value(s_raw, "SELECT holder || ' ' || epoch || ' ' || holder_token FROM "
                                 "coordinator_lease");
    char expect[160];
    snprintf(expect, sizeof expect, "%s 1 %s", S_A, cf_db_cluster_token(a));
    assert_string_equal(row, expect);
    free(row);
    /* B sees it held (no second holder)... */
    assert_int_equal(cf_db_cluster_lease_acquire(b, S_B, 0, 10000, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_false(lease.held);
    assert_string_equal(lease.holder, S_A);
    /* ... and A, answered again, adopts it: epoch 1, not a new one after
     * expiry (10 s away). */
    atomic_store(&proxy.hold_answers, false);
    assert_int_equal(cf_db_cluster_lease_acquire(a, S_A, 0, 10000, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_true(lease.held);
    assert_int_equal(lease.epoch, 1);
    assert_true(lease.remaining_ms > 8000);
    cf_db_cluster_destroy(&a);
    cf_db_cluster_destroy(&b);
    cf_test_proxy_stop(&proxy);
}

/* The same through the election actor, which gives up after TTL/2: the
 * node is coordinator at the epoch its lost acquire committed, well before
 * that lease would have expired. */
static void s_election_adopts(void **state)
{
    s_reset_lease();
    cf_test_proxy_t proxy;
    cf_test_proxy_start(&proxy, s_url);
    char url[600];
    cf_test_proxy_url(&proxy, s_url, url, sizeof url);
    atomic_store(&proxy.hold_answers, true);
    enum { TTL_MS = 6000 };
    cf_election_args_t args = {
        .database_url = url, .node_id = S_A, .ttl_ms = TTL_MS, .interrupt_fd = -1};
    int64_t t0 = s_ms();
    zactor_t *election = cf_election_new(&args);
    assert_non_null(election);
    /* Its first acquire commits; the answer is held until it gave up. */
    char *row = NULL;
    for (int i = 0; i < 200; i++) {
        free(row);
        row = cf_test_sql_value(
            s_raw, "SELECT coalesce(holder::text, '') || ' ' || epoch FROM coordinator_lease");
        if (atomic_load(&proxy.held) >= 1 && strstr(row, S_A))
            break;
        usleep(20 * 1000);
    }
    char expect[64];
    snprintf(expect, sizeof expect, "%s 1", S_A);
    assert_string_equal(row, expect);
    free(row);
    usleep((TTL_MS / 2 + 200) * 1000); /* past its deadline for that call */
    atomic_store(&proxy.hold_answers, false);
    /* Its next attempt (TTL/3 after the failure) adopts epoch 1. */
    bool held = false;
    uint64_t epoch = 0;
    zpoller_t *poller = zpoller_new(election, NULL);
    while (!held && s_ms() - t0 < 3 * TTL_MS) {
        if (!zpoller_wait(poller, 200))
            continue;
        zmsg_t *msg = zmsg_recv(election);
        char *command = zmsg_popstr(msg);
        if (command && !strcmp(command, "LEASE")) {
            char *flag = zmsg_popstr(msg), *holder = zmsg_popstr(msg), *ep = zmsg_popstr(msg);
            held = flag && flag[0] == '1';
            epoch = ep ? strtoull(ep, NULL, 10) : 0;
            free(flag);
            free(holder);
            free(ep);
        }
        free(command);
        zmsg_destroy(&msg);
    }
    int64_t took = s_ms() - t0;
    assert_true(held);
    assert_int_equal(epoch, 1); /* adopted, not re-acquired after expiry */
    assert_true(took < TTL_MS); /* the first lease (6 s from its commit) had not expired */
    row = cf_test_sql_value(s_raw, "SELECT epoch FROM coordinator_lease");
    assert_string_equal(row, "1");
    free(row);
    zpoller_destroy(&poller);
    zactor_destroy(&election);
    cf_test_proxy_stop(&proxy);
}

/* The lease row is locked (a slow transaction elsewhere) while A acquires
 * with a 300 ms deadline: the server cancels A's statement before A gives
 * up, so when the lock goes 1 s later nothing of A's commits. */
static void s_statement_timeout_below_deadline(void **state)
{
    s_reset_lease();
    assert_true(cf_db_cluster_statement_timeout_ms(300) < 300);
    assert_true(cf_db_cluster_statement_timeout_ms(2000) <= 1500);
    assert_true(cf_db_cluster_statement_timeout_ms(20) > 0);
    char err[512];
    PGconn *locker = cf_db_connect(s_url, 10, err, sizeof err);
    assert_non_null(locker);
    PGresult *res = PQexec(locker, "BEGIN; SELECT 1 FROM coordinator_lease FOR UPDATE");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    PQclear(res);
    cf_db_cluster_t *a = cf_db_cluster_new(s_url);
    cf_db_lease_t lease;
    int64_t t0 = s_ms();
    assert_int_equal(cf_db_cluster_lease_acquire(a, S_A, 0, 5000, &lease, 300, err, sizeof err),
                     CF_DBC_UNAVAILABLE);
    assert_true(s_ms() - t0 < 1000);
    usleep(1000 * 1000);
    res = PQexec(locker, "COMMIT");
    PQclear(res);
    usleep(300 * 1000);
    char *row =
        cf_test_sql_value(s_raw, "SELECT coalesce(holder::text, 'none') || ' ' || epoch FROM "
                                 "coordinator_lease");
    assert_string_equal(row, "none 0");
    free(row);
    /* The same handle works right after. */
    assert_int_equal(cf_db_cluster_lease_acquire(a, S_A, 0, 5000, &lease, 300, err, sizeof err),
                     CF_DBC_OK);
    assert_true(lease.held);
    cf_db_cluster_destroy(&a);
    PQfinish(locker);
}

/* A lease row reset below epochs in use (a point-in-time restore, a lossy
 * failover) never hands out one of them again. */
static void s_reset_row_never_repeats(void **state)
{
    s_reset_lease();
    cf_db_cluster_t *a = cf_db_cluster_new(s_url), *b = cf_db_cluster_new(s_url);
    char err[512];
    cf_db_lease_t lease;
    assert_int_equal(cf_db_cluster_lease_acquire(a, S_A, 0, 5000, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_int_equal(lease.epoch, 1);
    /* Epochs 1..6 were in use; the row goes back to 2, still A's. A, which
     * saw 6, is bumped above it instead of renewing 2. */
    cf_test_sql_exec(s_raw, "UPDATE coordinator_lease SET epoch = 2");
    assert_int_equal(cf_db_cluster_lease_acquire(a, S_A, 6, 5000, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_true(lease.held);
    assert_int_equal(lease.epoch, 7);
    /* Restored to a free lease at epoch 3: whoever takes it gets above
     * what it saw... */
    cf_test_sql_exec(s_raw,
                     "UPDATE coordinator_lease SET epoch = 3, holder = NULL, expires_at = now()");
    assert_int_equal(cf_db_cluster_lease_acquire(b, S_B, 7, 5000, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_true(lease.held);
    assert_int_equal(lease.epoch, 8);
    /* ... or above the published view's epoch, even when it saw nothing. */
    cf_test_sql_exec(s_raw, "UPDATE cluster_view SET epoch = 20");
    cf_test_sql_exec(s_raw,
                     "UPDATE coordinator_lease SET epoch = 3, holder = NULL, expires_at = now()");
    assert_int_equal(cf_db_cluster_lease_acquire(a, S_A, 0, 5000, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_true(lease.held);
    assert_int_equal(lease.epoch, 21);
    /* A release keeps the epoch; the next holder is above it. */
    bool released = false;
    assert_int_equal(cf_db_cluster_lease_release(b, S_A, 21, &released, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_false(released); /* another handle's lease */
    assert_int_equal(cf_db_cluster_lease_release(a, S_A, 21, &released, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_true(released);
    assert_int_equal(cf_db_cluster_lease_acquire(b, S_B, 0, 5000, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_int_equal(lease.epoch, 22);
    cf_db_cluster_destroy(&a);
    cf_db_cluster_destroy(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(s_held_answer_adopted),
        cmocka_unit_test(s_election_adopts),
        cmocka_unit_test(s_statement_timeout_below_deadline),
        cmocka_unit_test(s_reset_row_never_repeats),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
