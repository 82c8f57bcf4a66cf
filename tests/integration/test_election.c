/* Integration test of lib/store/cf_db_cluster against the Postgres that tests/run
 * starts: the coordinator lease (acquire increments the epoch, renew keeps
 * it, expiry, release, one winner among racing nodes), the fence on
 * coordinator writes, the node registry, and the deadline on every call
 * when the server does not answer. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cf_db.h"
#include "cf_db_cluster.h"
#include "cf_migrate.h"
#include "cf_testutil.h"

static char s_url[512];
static PGconn *s_raw;

static const char *S_A = "aaaaaaaa-0000-4000-8000-000000000001";
static const char *S_B = "bbbbbbbb-0000-4000-8000-000000000002";
static const char *S_C = "cccccccc-0000-4000-8000-000000000003";

static int s_setup(void **state)
{
    const char *base = cf_test_require_env("CF_TEST_DATABASE_URL");
    char err[512], name[64], sql[128];
    PGconn *admin = cf_db_connect(base, 10, err, sizeof err);
    assert_non_null(admin);
    srandom((unsigned)time(NULL) ^ (unsigned)getpid());
    snprintf(name, sizeof name, "cf_election_%d_%ld", (int)getpid(), (long)random() % 100000);
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
    PGresult *res = PQexec(admin, sql);
    assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    PQfinish(admin);
    snprintf(s_url, sizeof s_url, "%.*s/%s", (int)(strrchr(base, '/') - base), base, name);
    s_raw = cf_db_connect(s_url, 10, err, sizeof err);
    assert_non_null(s_raw);
    cf_migrate_report_t report;
    if (cf_migrate_run(s_raw, NULL, &report, err, sizeof err) < 0)
        fail_msg("migrate: %s", err);
    return 0;
}

static int s_teardown(void **state)
{
    PQfinish(s_raw);
    return 0;
}

static void s_reset_lease(void)
{
    cf_test_sql_exec(
        s_raw, "UPDATE coordinator_lease SET holder = NULL, epoch = 0, expires_at = '-infinity'");
}

static void s_lease_lifecycle(void **state)
{
    s_reset_lease();
    cf_db_cluster_t *a = cf_db_cluster_new(s_url), *b = cf_db_cluster_new(s_url);
    cf_db_lease_t lease;
    char err[512];

    /* A free lease: A takes it at epoch 1. */
    assert_int_equal(cf_db_cluster_lease_acquire(a, S_A, 0, 2000, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_true(lease.held);
    assert_string_equal(lease.holder, S_A);
    assert_int_equal(lease.epoch, 1);
    assert_true(lease.remaining_ms > 1500 && lease.remaining_ms <= 2000);

    /* Renewing keeps the epoch; B cannot take a live lease. */
    assert_int_equal(cf_db_cluster_lease_acquire(a, S_A, 1, 2000, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_true(lease.held);
    assert_int_equal(lease.epoch, 1);
    assert_int_equal(cf_db_cluster_lease_acquire(b, S_B, 0, 2000, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_false(lease.held);
    assert_string_equal(lease.holder, S_A);
    assert_int_equal(lease.epoch, 1);
    assert_true(lease.remaining_ms > 0);
    /* Another process of node A (another token) cannot renew A's lease. */
    cf_db_cluster_t *a2 = cf_db_cluster_new(s_url);
    assert_string_not_equal(cf_db_cluster_token(a), cf_db_cluster_token(a2));
    assert_int_equal(cf_db_cluster_lease_acquire(a2, S_A, 1, 2000, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_false(lease.held);
    assert_string_equal(lease.holder, S_A);
    cf_db_cluster_destroy(&a2);

    /* Once it expires, B takes it and the epoch goes up; A's renewal fails. */
    assert_int_equal(cf_db_cluster_lease_acquire(a, S_A, 1, 300, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_true(lease.held);
    /* B gets it once the 300 ms have run out (asked until then, with a
     * deadline; never before: A held it). */
    for (int tries = 0; tries < 250; tries++) {
        assert_int_equal(
            cf_db_cluster_lease_acquire(b, S_B, 0, 2000, &lease, 3000, err, sizeof err), CF_DBC_OK);
        if (lease.held)
            break;
        assert_string_equal(lease.holder, S_A);
        usleep(20 * 1000);
    }
    assert_true(lease.held);
    assert_int_equal(lease.epoch, 2);
    assert_int_equal(cf_db_cluster_lease_acquire(a, S_A, 1, 2000, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_false(lease.held);
    assert_string_equal(lease.holder, S_B);

    /* Release: only by the holder at its epoch; the epoch survives it. */
    bool released = true;
    assert_int_equal(cf_db_cluster_lease_release(a, S_A, 1, &released, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_false(released);
    assert_int_equal(cf_db_cluster_lease_release(b, S_B, 2, &released, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_true(released);
    assert_int_equal(cf_db_cluster_lease_get(a, &lease, 3000, err, sizeof err), CF_DBC_OK);
    assert_string_equal(lease.holder, "");
    assert_int_equal(lease.epoch, 2);
    assert_int_equal(cf_db_cluster_lease_acquire(a, S_A, 0, 2000, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_true(lease.held);
    assert_int_equal(lease.epoch, 3);

    /* A holder that lost track of its epoch (a renewal not confirmed)
     * renews its unexpired lease by its token, whatever epoch it thought. */
    assert_int_equal(cf_db_cluster_lease_acquire(a, S_A, 0, 2000, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_true(lease.held);
    assert_int_equal(lease.epoch, 3);
    /* One that has seen a higher epoch in use is bumped above it. */
    assert_int_equal(cf_db_cluster_lease_acquire(a, S_A, 7, 2000, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_true(lease.held);
    assert_int_equal(lease.epoch, 8);
    cf_db_cluster_destroy(&a);
    cf_db_cluster_destroy(&b);
}

/* Many nodes race for an expired lease: exactly one wins, once. */
typedef struct {
    char id[37];
    pthread_barrier_t *start;
    bool held;
    int64_t epoch;
    int rc;
} s_racer_t;

static void *s_race(void *arg)
{
    s_racer_t *r = arg;
    cf_db_cluster_t *db = cf_db_cluster_new(s_url);
    cf_db_lease_t lease;
    char err[256];
    /* Connect first, so the race is between statements. */
    cf_db_cluster_lease_get(db, &lease, 3000, err, sizeof err);
    pthread_barrier_wait(r->start);
    r->rc = cf_db_cluster_lease_acquire(db, r->id, 0, 5000, &lease, 5000, err, sizeof err);
    r->held = lease.held;
    r->epoch = lease.epoch;
    cf_db_cluster_destroy(&db);
    return NULL;
}

static void s_one_winner(void **state)
{
    for (int round = 0; round < 5; round++) {
        s_reset_lease();
        enum { N = 8 };
        s_racer_t racers[N];
        pthread_t threads[N];
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, N);
        for (int i = 0; i < N; i++) {
            memset(&racers[i], 0, sizeof racers[i]);
            snprintf(racers[i].id, sizeof racers[i].id, "%08d-0000-4000-8000-%012d", round, i);
            racers[i].start = &start;
            pthread_create(&threads[i], NULL, s_race, &racers[i]);
        }
        int winners = 0;
        for (int i = 0; i < N; i++) {
            pthread_join(threads[i], NULL);
            assert_int_equal(racers[i].rc, CF_DBC_OK);
            if (racers[i].held) {
                winners++;
                assert_int_equal(racers[i].epoch, 1);
            }
        }
        pthread_barrier_destroy(&start);
        assert_int_equal(winners, 1);
        char *epoch = cf_test_sql_value(s_raw, "SELECT epoch FROM coordinator_lease");
        assert_string_equal(epoch, "1");
        free(epoch);
    }
}

static void s_upsert(cf_db_cluster_t *db, const char *id, bool first)
{
    char err[512];
    cf_db_node_t node = {.control_endpoint = "tcp://127.0.0.1:7070",
                         .http_endpoint = "http://127.0.0.1:8080",
                         .capabilities = "{\"cores\": 4}",
                         .free_slots = 2};
    snprintf(node.id, sizeof node.id, "%s", id);
    memset(node.public_key, 'k', 40);
    memset(node.mac, 'a', 64);
    if (cf_db_cluster_node_upsert(db, &node, first, 3000, err, sizeof err) != CF_DBC_OK)
        fail_msg("upsert: %s", err);
}

static void s_registry(void **state)
{
    cf_db_cluster_t *db = cf_db_cluster_new(s_url);
    char err[512];
    s_upsert(db, S_A, true);
    s_upsert(db, S_B, true);
    s_upsert(db, S_C, true);
    s_upsert(db, S_A, false);
    cf_db_node_t *rows = NULL;
    int count = 0;
    assert_int_equal(cf_db_cluster_peers(db, S_A, 10000, &rows, &count, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_int_equal(count, 2); /* not itself */
    assert_string_equal(rows[0].id, S_B);
    assert_string_equal(rows[1].id, S_C);
    assert_string_equal(rows[0].control_endpoint, "tcp://127.0.0.1:7070");
    assert_string_equal(rows[0].state, "up");
    assert_int_equal(rows[0].free_slots, 2);
    assert_non_null(strstr(rows[0].capabilities, "\"cores\": 4"));
    assert_true(rows[0].age_ms >= 0 && rows[0].age_ms < 5000);
    cf_db_cluster_nodes_free(&rows, count);

    /* Left rows and rows not seen lately are not peers. */
    assert_int_equal(cf_db_cluster_node_leave(db, S_B, 3000, err, sizeof err), CF_DBC_OK);
    cf_test_sql_exec(s_raw, "UPDATE nodes SET last_seen = now() - interval '1 minute' "
                            "WHERE id = 'cccccccc-0000-4000-8000-000000000003'");
    assert_int_equal(cf_db_cluster_peers(db, S_A, 10000, &rows, &count, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_int_equal(count, 0);
    cf_db_cluster_nodes_free(&rows, count);
    /* A restart brings B back up. */
    s_upsert(db, S_B, true);
    cf_db_node_t one;
    int64_t gone_epoch = -1;
    assert_int_equal(cf_db_cluster_node_get(db, S_B, &one, &gone_epoch, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_string_equal(one.state, "up");
    assert_int_equal(gone_epoch, 0);
    cf_db_cluster_node_clear(&one);
    assert_int_equal(cf_db_cluster_node_get(db, "dddddddd-0000-4000-8000-000000000004", &one, NULL,
                                            3000, err, sizeof err),
                     CF_DBC_ERROR);
    cf_db_cluster_destroy(&db);
}

static void s_fenced_writes(void **state)
{
    s_reset_lease();
    cf_db_cluster_t *db = cf_db_cluster_new(s_url), *b_db = cf_db_cluster_new(s_url);
    char err[512];
    s_upsert(db, S_B, false);
    s_upsert(db, S_C, false);
    /* C stopped heartbeating: its row is older than its grace. */
    cf_test_sql_exec(s_raw, "UPDATE nodes SET last_seen = now() - interval '1 minute' "
                            "WHERE id = 'cccccccc-0000-4000-8000-000000000003'");
    cf_db_lease_t lease;
    /* A holds epoch 1, then B takes over at epoch 2 after expiry. */
    assert_int_equal(cf_db_cluster_lease_acquire(db, S_A, 0, 200, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_int_equal(lease.epoch, 1);
    cf_fence_token_t a1 = {.epoch = 1}, a2 = {.epoch = 2}, b2 = {.epoch = 2};
    snprintf(a1.holder, sizeof a1.holder, "%s", S_A);
    snprintf(a2.holder, sizeof a2.holder, "%s", S_A);
    snprintf(b2.holder, sizeof b2.holder, "%s", S_B);
    cf_dbc_fence_t fence;
    char *gone = NULL;
    assert_int_equal(cf_db_cluster_sweep_gone(db, &a1, &fence, &gone, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_int_equal(fence, CF_DBC_FENCE_PASSED);
    assert_non_null(gone);
    assert_string_equal(gone, S_C);
    free(gone);
    /* Its absence is recorded once, however often coordinators sweep. */
    assert_int_equal(cf_db_cluster_sweep_gone(db, &a1, &fence, &gone, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_int_equal(fence, CF_DBC_FENCE_PASSED);
    assert_null(gone);
    s_upsert(db, S_C, false); /* C comes back: up by the database clock */
    cf_db_node_t one;
    assert_int_equal(cf_db_cluster_node_get(db, S_C, &one, NULL, 3000, err, sizeof err), CF_DBC_OK);
    assert_string_equal(one.state, "up");
    cf_db_cluster_node_clear(&one);
    /* ... and goes away again: its grace is 100 ms, it falls silent. */
    cf_test_sql_exec(
        s_raw, "UPDATE nodes SET grace_ms = 100 WHERE id = 'cccccccc-0000-4000-8000-000000000003'");
    usleep(300 * 1000);
    /* A's lease expired: even unchallenged, its token no longer writes. */
    assert_int_equal(cf_db_cluster_publish_view(db, &a1, "{}", &fence, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_int_equal(fence, CF_DBC_FENCE_STALE);
    assert_int_equal(cf_db_cluster_lease_acquire(b_db, S_B, 0, 5000, &lease, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_int_equal(lease.epoch, 2);

    /* A's late sweep under epoch 1 is refused. */
    assert_int_equal(cf_db_cluster_sweep_gone(db, &a1, &fence, &gone, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_int_equal(fence, CF_DBC_FENCE_STALE);
    assert_null(gone);
    char *state_c = cf_test_sql_value(s_raw, "SELECT gone_epoch FROM nodes "
                                             "WHERE id = 'cccccccc-0000-4000-8000-000000000003'");
    assert_string_equal(state_c, "1");
    free(state_c);
    assert_int_equal(cf_db_cluster_publish_view(db, &a1, "{}", &fence, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_int_equal(fence, CF_DBC_FENCE_STALE);
    /* Nor can anyone write under the right epoch in another's name. */
    assert_int_equal(cf_db_cluster_publish_view(db, &a2, "{}", &fence, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_int_equal(fence, CF_DBC_FENCE_STALE);

    /* B's writes under epoch 2 go through; the view is the registry's. */
    assert_int_equal(
        cf_db_cluster_publish_view(db, &b2, "{\"bbbbbbbb-0000-4000-8000-000000000002\": \"self\"}",
                                   &fence, 3000, err, sizeof err),
        CF_DBC_OK);
    assert_int_equal(fence, CF_DBC_FENCE_PASSED);
    cf_db_view_t view;
    assert_int_equal(cf_db_cluster_view_get(db, &view, 3000, err, sizeof err), CF_DBC_OK);
    assert_string_equal(view.coordinator, S_B);
    assert_int_equal(view.epoch, 2);
    /* C is gone by the database clock: not a member. */
    assert_null(strstr(view.members, S_C));
    assert_non_null(strstr(view.members, "\"link\": \"self\""));
    free(view.members);
    assert_int_equal(cf_db_cluster_sweep_gone(db, &b2, &fence, &gone, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_int_equal(fence, CF_DBC_FENCE_PASSED);
    assert_string_equal(gone, S_C);
    free(gone);
    state_c =
        cf_test_sql_value(s_raw, "SELECT state || ' ' || gone_epoch || ' ' || gone_by FROM nodes "
                                 "WHERE id = 'cccccccc-0000-4000-8000-000000000003'");
    /* The stored state stays the node's own word: liveness is computed. */
    assert_string_equal(state_c, "up 2 bbbbbbbb-0000-4000-8000-000000000002");
    free(state_c);
    int64_t gone_epoch = 0;
    assert_int_equal(cf_db_cluster_node_get(db, S_C, &one, &gone_epoch, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_string_equal(one.state, "gone");
    assert_int_equal(gone_epoch, 2);
    cf_db_cluster_node_clear(&one);
    /* Its own heartbeat brings it back without touching the record. */
    s_upsert(db, S_C, false);
    assert_int_equal(cf_db_cluster_node_get(db, S_C, &one, &gone_epoch, 3000, err, sizeof err),
                     CF_DBC_OK);
    assert_string_equal(one.state, "up");
    assert_int_equal(gone_epoch, 2);
    cf_db_cluster_node_clear(&one);
    cf_db_cluster_destroy(&db);
    cf_db_cluster_destroy(&b_db);
}

static int64_t s_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A "server" that accepts TCP connections and never says a word: every call
 * must give up at its deadline instead of waiting for TCP. */
static void s_deadlines(void **state)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
    char url[128], err[512];
    snprintf(url, sizeof url, "postgresql://postgres@127.0.0.1:%d/clipfarm", ntohs(addr.sin_port));
    cf_db_cluster_t *db = cf_db_cluster_new(url);
    cf_db_lease_t lease;
    for (int i = 0; i < 2; i++) {
        int64_t t0 = s_ms();
        int rc = cf_db_cluster_lease_acquire(db, S_A, 0, 2000, &lease, 300, err, sizeof err);
        int64_t took = s_ms() - t0;
        assert_int_equal(rc, CF_DBC_UNAVAILABLE);
        assert_non_null(strstr(err, "timed out"));
        assert_true(took >= 250 && took < 1500);
        assert_false(cf_db_cluster_connected(db));
    }
    /* A signalled interrupt ends a call at once, then can be turned off. */
    int stop = eventfd(0, EFD_CLOEXEC);
    cf_db_cluster_set_interrupt(db, stop);
    assert_int_equal(eventfd_write(stop, 1), 0);
    int64_t t0 = s_ms();
    assert_int_equal(cf_db_cluster_lease_get(db, &lease, 5000, err, sizeof err),
                     CF_DBC_UNAVAILABLE);
    assert_string_equal(err, "interrupted");
    assert_true(s_ms() - t0 < 500);
    cf_db_cluster_set_interrupt(db, -1);
    t0 = s_ms();
    assert_int_equal(cf_db_cluster_lease_get(db, &lease, 300, err, sizeof err), CF_DBC_UNAVAILABLE);
    assert_true(s_ms() - t0 >= 250);
    close(stop);
    cf_db_cluster_destroy(&db);
    close(fd);

    /* On a working server too. */
    db = cf_db_cluster_new(s_url);
    stop = eventfd(0, EFD_CLOEXEC);
    assert_int_equal(cf_db_cluster_lease_get(db, &lease, 3000, err, sizeof err), CF_DBC_OK);
    cf_db_cluster_set_interrupt(db, stop);
    eventfd_write(stop, 1);
    assert_int_equal(cf_db_cluster_lease_get(db, &lease, 3000, err, sizeof err),
                     CF_DBC_UNAVAILABLE);
    cf_db_cluster_set_interrupt(db, -1);
    assert_int_equal(cf_db_cluster_lease_get(db, &lease, 3000, err, sizeof err), CF_DBC_OK);
    close(stop);
    cf_db_cluster_destroy(&db);

    /* Nothing listening at all: refused at once. */
    db = cf_db_cluster_new(url);
    t0 = s_ms();
    assert_int_equal(cf_db_cluster_lease_get(db, &lease, 2000, err, sizeof err),
                     CF_DBC_UNAVAILABLE);
    assert_true(s_ms() - t0 < 1500);
    cf_db_cluster_destroy(&db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(s_lease_lifecycle), cmocka_unit_test(s_one_winner),
        cmocka_unit_test(s_registry),        cmocka_unit_test(s_fenced_writes),
        cmocka_unit_test(s_deadlines),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
