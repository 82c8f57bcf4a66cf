/* Integration test of lib/store/cf_queue with lib/store/cf_db against real Redis and
 * Postgres: priority order and its aging (a low item is served under a steady
 * load of high work), 4 producers + 4 consumers moving 10,000 compositions
 * exactly once, a consumer SIGKILLed mid-item (before its commit: the item
 * comes back; after it: its claim expires and the composition is taken
 * again), reaper and reconcile.
 *
 * Run with arguments it is also the workload that queue_chaos.sh drives
 * while it flushes and restarts the servers:
 *   integration_test_queue workload --db URL --redis URL --prefix P --count N
 *       [--producers 4] [--consumers 4] [--rate PER_S] [--work-ms MS]
 *       [--full] [--ttl-ms MS] [--timeout-s S] [--status-file F]
 *       [--reconcile-every-ms MS]
 * --reconcile-every-ms 0 reconciles only when Redis lost its data (the
 * marker key is gone): then every repair counts as one of a loss.
 * It exits 0 once every composition was processed, 1 on timeout. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <pthread.h>

#include "cf_db.h"
#include "cf_queue.h"
#include "cf_redis.h"
#include "cf_testutil.h"

/* ====================================================================== helpers */

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static cf_db_t *s_pool(const char *url, int size)
{
    cf_db_options_t opts;
    cf_db_options_default(&opts);
    opts.url = url;
    opts.pool_size = size;
    opts.max_overflow = 0;
    /* A restart takes a second or two: callers retry on CF_DB_UNAVAILABLE. */
    opts.acquire_timeout_ms = 2000;
    opts.connect_timeout_ms = 2000;
    char err[256];
    cf_db_t *db = cf_db_new(&opts, err, sizeof err);
    if (!db) {
        fprintf(stderr, "cf_db_new: %s\n", err);
        abort();
    }
    return db;
}

static int s_aging_ms = CF_QUEUE_AGING_MS; /* what s_queue gives its clients */

static cf_queue_t *s_queue(const char *url, const char *prefix, const char *consumer, int ttl_ms)
{
    cf_queue_options_t opts;
    cf_queue_options_default(&opts);
    opts.url = url;
    opts.prefix = prefix;
    opts.consumer = consumer;
    opts.heartbeat_ttl_ms = ttl_ms;
    opts.aging_ms = s_aging_ms;
    opts.timeout_ms = 2000;
    opts.backoff_max_ms = 200;
    char err[256];
    cf_queue_t *q = cf_queue_new(&opts, err, sizeof err);
    if (!q) {
        fprintf(stderr, "cf_queue_new: %s\n", err);
        abort();
    }
    return q;
}

static char *s_sql_value(const char *url, const char *sql)
{
    char err[256];
    PGconn *conn = cf_db_connect(url, 10, err, sizeof err);
    if (!conn)
        fail_msg("connect: %s", err);
    PGresult *res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    char *value = strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    PQfinish(conn);
    return value;
}

static void s_expect_sql(const char *url, const char *sql, const char *want)
{
    char *got = s_sql_value(url, sql);
    if (strcmp(got, want))
        fail_msg("%s: got %s, expected %s", sql, got, want);
    free(got);
}

static long long s_redis_int(const char *url, const char *fmt, const char *arg)
{
    char err[256];
    redisContext *ctx = cf_redis_connect(url, 2000, err, sizeof err);
    assert_non_null(ctx);
    redisReply *reply = redisCommand(ctx, fmt, arg);
    assert_non_null(reply);
    long long value = reply->type == REDIS_REPLY_INTEGER ? reply->integer : -1;
    freeReplyObject(reply);
    redisFree(ctx);
    return value;
}

/* ====================================================================== consumer steps */

/* Takes a composition in Postgres, retrying while the database is away.
 * Returns 1 when this consumer owns it (cf_db_composition_take answers OK
 * again to the same taker when an attempt committed but its answer was
 * lost), 0 when another consumer had it, -1 when it never got through. */
static int s_take_in_db(cf_db_t *db, const char *id, const char *me, int64_t deadline_ms,
                        atomic_int *retries)
{
    char err[256];
    for (;;) {
        int rc = cf_db_composition_take(db, id, me, err, sizeof err);
        if (rc == CF_DB_OK)
            return 1;
        if (rc == CF_DB_ILLEGAL)
            return 0;
        if (rc != CF_DB_UNAVAILABLE || s_now_ms() > deadline_ms) {
            fprintf(stderr, "take %s: %s\n", id, err);
            return -1;
        }
        atomic_fetch_add(retries, 1);
        s_sleep_ms(50);
    }
}

/* Moves a composition this consumer owns to TO, retrying while the database
 * is away; a refusal after an unanswered attempt that shows the composition
 * already in TO means that attempt committed. */
static int s_advance(cf_db_t *db, const char *id, cf_state_t to, int64_t deadline_ms,
                     atomic_int *retries)
{
    bool uncertain = false;
    char err[256];
    for (;;) {
        cf_state_t from = CF_STATE_PENDING;
        int rc = to == CF_STATE_COMPLETED
                     ? cf_db_composition_complete(
                           db, id, &(cf_db_output_t){"/out/x.mp4", 1, 1.0, "h"}, err, sizeof err)
                     : cf_db_composition_transition(db, id, to, &from, err, sizeof err);
        if (rc == CF_DB_OK)
            return 0;
        if (rc == CF_DB_UNAVAILABLE && s_now_ms() < deadline_ms) {
            uncertain = true;
            atomic_fetch_add(retries, 1);
            s_sleep_ms(50);
            continue;
        }
        if (rc == CF_DB_ILLEGAL && uncertain) {
            cf_db_composition_t comp;
            if (cf_db_composition_get(db, id, &comp, err, sizeof err) == CF_DB_OK) {
                bool there = comp.state == to;
                cf_db_composition_clear(&comp);
                if (there)
                    return 0;
            }
        }
        fprintf(stderr, "advance %s to %s: %s\n", id, cf_state_name(to), err);
        return -1;
    }
}

/* ====================================================================== workload */

typedef struct {
    const char *db_url;
    const char *redis_url;
    const char *prefix;
    int count;
    int producers;
    int consumers;
    int rate;               /* creations per second in total; 0 = as fast as possible */
    int work_ms;            /* simulated work per item */
    bool full;              /* take -> encoding -> assembling -> completed, not only take */
    int ttl_ms;             /* consumer heartbeat TTL */
    int timeout_s;          /* give up after this */
    int reconcile_every_ms; /* periodic reconcile; 0: only after a loss */
    const char *status_file;
    cf_db_t *db;
    atomic_int next_index;
    atomic_int created;
    atomic_int processed;
    atomic_int foreign;
    atomic_int failed;
    atomic_int db_retries;
    atomic_int push_failures;
    atomic_int reaped;
    atomic_int reconciled;         /* pushed by every reconcile */
    atomic_int reconciled_on_loss; /* pushed by reconciles after Redis lost its data */
    atomic_int producers_left;
    atomic_bool stop;
    int64_t deadline_ms;
} s_workload_t;

typedef struct {
    s_workload_t *w;
    int index;
} s_worker_arg_t;

static void *s_producer(void *arg)
{
    s_worker_arg_t *a = arg;
    s_workload_t *w = a->w;
    cf_queue_t *q = s_queue(w->redis_url, w->prefix, NULL, w->ttl_ms);
    int64_t started = s_now_ms();
    int mine = 0;
    for (;;) {
        int i = atomic_fetch_add(&w->next_index, 1);
        if (i >= w->count)
            break;
        if (w->rate > 0) {
            /* Pace: item number i is due at i / rate seconds. */
            int64_t due = started + (int64_t)i * 1000 / w->rate;
            int64_t now = s_now_ms();
            if (due > now)
                s_sleep_ms((int)(due - now));
        }
        char key[32], hash[32], id[CF_DB_ID_LEN], err[256];
        snprintf(key, sizeof key, "wl-%d", i);
        snprintf(hash, sizeof hash, "body-%d", i);
        cf_db_composition_new_t c = {.title = key,
                                     .priority = (cf_priority_t)(i % CF_PRIORITY_COUNT),
                                     .spec_json = "{\"clips\":[]}",
                                     .api_key_id = "workload",
                                     .idempotency_key = key,
                                     .request_hash = hash,
                                     .initial_state = CF_STATE_QUEUED};
        /* Like an API client: retry with the same idempotency key until the
         * database accepts (a lost answer returns the same composition). */
        int rc;
        while ((rc = cf_db_composition_create(w->db, &c, id, NULL, err, sizeof err)) ==
                   CF_DB_UNAVAILABLE &&
               s_now_ms() < w->deadline_ms) {
            atomic_fetch_add(&w->db_retries, 1);
            s_sleep_ms(50);
        }
        if (rc != CF_DB_OK) {
            fprintf(stderr, "create %s: %s\n", key, err);
            atomic_fetch_add(&w->failed, 1);
            continue;
        }
        atomic_fetch_add(&w->created, 1);
        mine++;
        /* Accepted: like the API, push once. Without a periodic reconcile
         * (--reconcile-every-ms 0) nothing would repair a push that fails
         * after the repair of a loss (the client's reconnect backoff
         * outlasts Redis' restart): then retry it here. */
        while (cf_queue_push(q, id, c.priority, err, sizeof err) < 0) {
            atomic_fetch_add(&w->push_failures, 1);
            if (w->reconcile_every_ms > 0 || s_now_ms() > w->deadline_ms)
                break;
            s_sleep_ms(50);
        }
    }
    cf_queue_destroy(&q);
    atomic_fetch_sub(&w->producers_left, 1);
    return NULL;
}

static void *s_consumer(void *arg)
{
    s_worker_arg_t *a = arg;
    s_workload_t *w = a->w;
    char me[64], err[256];
    snprintf(me, sizeof me, "consumer-%d-%d", (int)getpid(), a->index);
    cf_queue_t *q = s_queue(w->redis_url, w->prefix, me, w->ttl_ms);
    while (!atomic_load(&w->stop)) {
        cf_queue_item_t item;
        int got = cf_queue_take(q, 200, &item, err, sizeof err);
        if (got < 0) {
            s_sleep_ms(20);
            continue;
        }
        if (got == 0)
            continue;
        int mine = s_take_in_db(w->db, item.id, me, w->deadline_ms, &w->db_retries);
        if (mine == 1) {
            if (w->work_ms)
                s_sleep_ms(w->work_ms);
            bool ok = true;
            if (w->full) {
                const cf_state_t steps[] = {CF_STATE_ENCODING, CF_STATE_ASSEMBLING,
                                            CF_STATE_COMPLETED};
                for (int s = 0; s < 3 && ok; s++)
                    ok = s_advance(w->db, item.id, steps[s], w->deadline_ms, &w->db_retries) == 0;
            }
            atomic_fetch_add(ok ? &w->processed : &w->failed, 1);
        } else if (mine == 0) {
            atomic_fetch_add(&w->foreign, 1);
        } else {
            atomic_fetch_add(&w->failed, 1);
        }
        /* Only now, with the effect committed, does the item leave Redis. */
        for (int tries = 0; tries < 40 && cf_queue_ack(q, &item, err, sizeof err) < 0; tries++)
            s_sleep_ms(50);
    }
    cf_queue_destroy(&q);
    return NULL;
}

/* The queue library's housekeeping as a node would drive it: reap dead
 * consumers, reconcile Redis with Postgres when Redis lost its data, and
 * every reconcile_every_ms anyway (when > 0). (The node's own loop, in
 * node/work/cf_worker.c, is tested by worker_maintenance.sh.) */
static void *s_housekeeper(void *arg)
{
    s_workload_t *w = arg;
    cf_queue_t *q = s_queue(w->redis_url, w->prefix, NULL, w->ttl_ms);
    int64_t last_reconcile = s_now_ms();
    char err[256];
    while (!atomic_load(&w->stop)) {
        int returned = 0, pushed = 0;
        bool needed = false;
        if (cf_queue_reap(q, &returned, err, sizeof err) == 0)
            atomic_fetch_add(&w->reaped, returned);
        bool lost = cf_queue_needs_reconcile(q, &needed, err, sizeof err) == 0 && needed;
        if (lost ||
            (w->reconcile_every_ms > 0 && s_now_ms() - last_reconcile > w->reconcile_every_ms)) {
            if (cf_queue_reconcile(q, w->db, &pushed, err, sizeof err) == 0) {
                atomic_fetch_add(&w->reconciled, pushed);
                if (lost)
                    atomic_fetch_add(&w->reconciled_on_loss, pushed);
                last_reconcile = s_now_ms();
            }
        }
        s_sleep_ms(100);
    }
    cf_queue_destroy(&q);
    return NULL;
}

static void s_write_status(const s_workload_t *w)
{
    if (!w->status_file)
        return;
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s.tmp", w->status_file);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    fprintf(f, "created=%d processed=%d reconciled_on_loss=%d\n", atomic_load(&w->created),
            atomic_load(&w->processed), atomic_load(&w->reconciled_on_loss));
    fclose(f);
    rename(tmp, w->status_file);
}

/* Runs the workload; returns 0 when every composition was processed. */
static int s_workload_run(s_workload_t *w)
{
    w->db = s_pool(w->db_url, w->producers + w->consumers + 1);
    w->deadline_ms = s_now_ms() + (int64_t)w->timeout_s * 1000;
    atomic_store(&w->producers_left, w->producers);
    int threads = w->producers + w->consumers;
    pthread_t *tids = calloc((size_t)threads + 1, sizeof *tids);
    s_worker_arg_t *args = calloc((size_t)threads, sizeof *args);
    pthread_t keeper;
    pthread_create(&keeper, NULL, s_housekeeper, w);
    for (int i = 0; i < threads; i++) {
        args[i] = (s_worker_arg_t){w, i};
        pthread_create(&tids[i], NULL, i < w->producers ? s_producer : s_consumer, &args[i]);
    }
    int64_t started = s_now_ms();
    while (s_now_ms() < w->deadline_ms &&
           (atomic_load(&w->producers_left) > 0 ||
            atomic_load(&w->processed) + atomic_load(&w->failed) < w->count)) {
        s_write_status(w);
        s_sleep_ms(100);
    }
    s_write_status(w);
    /* A reconcile that ran between a creation and its push queued the id
     * twice: consumers drop the second copy (foreign). Let them drain those
     * before stopping, so "nothing left in Redis" holds. */
    cf_queue_t *observer = s_queue(w->redis_url, w->prefix, NULL, w->ttl_ms);
    for (int64_t until = s_now_ms() + 30000; s_now_ms() < until;) {
        int64_t depth[CF_PRIORITY_COUNT];
        char err[256];
        if (cf_queue_depth(observer, depth, err, sizeof err) == 0 &&
            depth[0] + depth[1] + depth[2] == 0)
            break;
        s_sleep_ms(50);
    }
    cf_queue_destroy(&observer);
    atomic_store(&w->stop, true);
    for (int i = 0; i < threads; i++)
        pthread_join(tids[i], NULL);
    pthread_join(keeper, NULL);
    cf_db_stats_t stats;
    cf_db_stats(w->db, &stats);
    printf("workload: created=%d processed=%d foreign=%d failed=%d in %.1f s; db retries=%d "
           "push failures=%d reaped=%d reconciled=%d reconciled_on_loss=%d; pool connects=%llu "
           "discarded=%llu failures=%llu\n",
           atomic_load(&w->created), atomic_load(&w->processed), atomic_load(&w->foreign),
           atomic_load(&w->failed), (double)(s_now_ms() - started) / 1000,
           atomic_load(&w->db_retries), atomic_load(&w->push_failures), atomic_load(&w->reaped),
           atomic_load(&w->reconciled), atomic_load(&w->reconciled_on_loss),
           (unsigned long long)stats.connects, (unsigned long long)stats.discarded,
           (unsigned long long)stats.failures);
    fflush(stdout);
    cf_db_destroy(&w->db);
    free(tids);
    free(args);
    return atomic_load(&w->processed) == w->count && atomic_load(&w->failed) == 0 ? 0 : 1;
}

static int s_workload_main(int argc, char **argv)
{
    s_workload_t w = {.prefix = "cf:",
                      .producers = 4,
                      .consumers = 4,
                      .ttl_ms = 3000,
                      .timeout_s = 120,
                      .reconcile_every_ms = 1000};
    for (int i = 2; i < argc; i++) {
        const char *opt = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(opt, "--full")) {
            w.full = true;
            continue;
        }
        if (!val) {
            fprintf(stderr, "%s needs a value\n", opt);
            return 2;
        }
        i++;
        if (!strcmp(opt, "--db"))
            w.db_url = val;
        else if (!strcmp(opt, "--redis"))
            w.redis_url = val;
        else if (!strcmp(opt, "--prefix"))
            w.prefix = val;
        else if (!strcmp(opt, "--count"))
            w.count = atoi(val);
        else if (!strcmp(opt, "--producers"))
            w.producers = atoi(val);
        else if (!strcmp(opt, "--consumers"))
            w.consumers = atoi(val);
        else if (!strcmp(opt, "--rate"))
            w.rate = atoi(val);
        else if (!strcmp(opt, "--work-ms"))
            w.work_ms = atoi(val);
        else if (!strcmp(opt, "--ttl-ms"))
            w.ttl_ms = atoi(val);
        else if (!strcmp(opt, "--timeout-s"))
            w.timeout_s = atoi(val);
        else if (!strcmp(opt, "--status-file"))
            w.status_file = val;
        else if (!strcmp(opt, "--reconcile-every-ms"))
            w.reconcile_every_ms = atoi(val);
        else {
            fprintf(stderr, "unknown option %s\n", opt);
            return 2;
        }
    }
    if (!w.db_url || !w.redis_url || w.count < 1 || w.producers < 1 || w.consumers < 1) {
        fprintf(stderr, "workload needs --db, --redis, --count\n");
        return 2;
    }
    return s_workload_run(&w);
}

/* ====================================================================== tests */

static char s_db_url[512];
static char s_prefix[64];
static const char *s_redis_url;

static int s_setup(void **state)
{
    s_redis_url = cf_test_require_env("CF_TEST_REDIS_URL");
    cf_test_fresh_database("cf_queue", s_db_url, sizeof s_db_url);
    return 0;
}

/* Each test: its own key prefix, and an empty compositions table. */
static int s_before(void **state)
{
    static int n;
    snprintf(s_prefix, sizeof s_prefix, "cf:test:%d:%d:", (int)getpid(), ++n);
    char err[256];
    PGconn *conn = cf_db_connect(s_db_url, 10, err, sizeof err);
    if (!conn)
        fail_msg("connect: %s", err);
    PGresult *res = PQexec(conn, "DELETE FROM compositions");
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        fail_msg("DELETE FROM compositions: %s", PQresultErrorMessage(res));
    PQclear(res);
    PQfinish(conn);
    return 0;
}

static int s_after(void **state)
{
    cf_test_redis_delete_prefix(s_redis_url, s_prefix);
    return 0;
}

static void test_priority_order_and_depth(void **state)
{
    cf_db_t *db = s_pool(s_db_url, 2);
    cf_queue_t *producer = s_queue(s_redis_url, s_prefix, NULL, 3000);
    cf_queue_t *consumer = s_queue(s_redis_url, s_prefix, "solo", 3000);
    char err[256], low[CF_DB_ID_LEN], def[CF_DB_ID_LEN], high1[CF_DB_ID_LEN], high2[CF_DB_ID_LEN];
    cf_test_create_queued(db, CF_PRIORITY_LOW, low);
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, def);
    cf_test_create_queued(db, CF_PRIORITY_HIGH, high1);
    cf_test_create_queued(db, CF_PRIORITY_HIGH, high2);
    assert_int_equal(cf_queue_push(producer, low, CF_PRIORITY_LOW, err, sizeof err), 0);
    assert_int_equal(cf_queue_push(producer, def, CF_PRIORITY_DEFAULT, err, sizeof err), 0);
    assert_int_equal(cf_queue_push(producer, high1, CF_PRIORITY_HIGH, err, sizeof err), 0);
    assert_int_equal(cf_queue_push(producer, high2, CF_PRIORITY_HIGH, err, sizeof err), 0);
    int64_t depth[CF_PRIORITY_COUNT];
    assert_int_equal(cf_queue_depth(producer, depth, err, sizeof err), 0);
    assert_int_equal(depth[CF_PRIORITY_HIGH], 2);
    assert_int_equal(depth[CF_PRIORITY_DEFAULT], 1);
    assert_int_equal(depth[CF_PRIORITY_LOW], 1);
    /* High first (FIFO within a priority), then default, then low. */
    const char *expected[] = {high1, high2, def, low};
    for (int i = 0; i < 4; i++) {
        cf_queue_item_t item;
        assert_int_equal(cf_queue_take(consumer, 1000, &item, err, sizeof err), 1);
        assert_string_equal(item.id, expected[i]);
        assert_int_equal(cf_queue_ack(consumer, &item, err, sizeof err), 0);
    }
    assert_int_equal(cf_queue_depth(producer, depth, err, sizeof err), 0);
    assert_int_equal(depth[0] + depth[1] + depth[2], 0);
    /* Empty: take times out. */
    cf_queue_item_t item;
    int64_t t0 = s_now_ms();
    assert_int_equal(cf_queue_take(consumer, 300, &item, err, sizeof err), 0);
    assert_true(s_now_ms() - t0 >= 250);
    /* A blocked consumer wakes at once when a low-priority item arrives. */
    pid_t child = fork();
    if (child == 0) {
        s_sleep_ms(300);
        cf_queue_t *p = s_queue(s_redis_url, s_prefix, NULL, 3000);
        cf_queue_push(p, low, CF_PRIORITY_LOW, err, sizeof err);
        cf_queue_destroy(&p);
        _exit(0);
    }
    t0 = s_now_ms();
    assert_int_equal(cf_queue_take(consumer, 5000, &item, err, sizeof err), 1);
    assert_string_equal(item.id, low);
    assert_true(s_now_ms() - t0 < 2000);
    waitpid(child, NULL, 0);
    assert_int_equal(cf_queue_ack(consumer, &item, err, sizeof err), 0);

    /* Node heartbeats expire. */
    bool alive = false;
    assert_int_equal(cf_queue_node_heartbeat(producer, "node-1", "{}", 300, err, sizeof err), 0);
    assert_int_equal(cf_queue_node_alive(producer, "node-1", &alive, err, sizeof err), 0);
    assert_true(alive);
    /* Gone once its 300 ms TTL ran out: waited for, with a deadline. */
    for (int64_t until = s_now_ms() + 5000; alive && s_now_ms() < until;) {
        s_sleep_ms(20);
        assert_int_equal(cf_queue_node_alive(producer, "node-1", &alive, err, sizeof err), 0);
    }
    assert_false(alive);
    cf_queue_destroy(&producer);
    cf_queue_destroy(&consumer);
    cf_db_destroy(&db);
}

static void test_ten_thousand_exactly_once(void **state)
{
    s_workload_t w = {.db_url = s_db_url,
                      .redis_url = s_redis_url,
                      .prefix = s_prefix,
                      .count = 10000,
                      .producers = 4,
                      .consumers = 4,
                      .ttl_ms = 5000,
                      .timeout_s = 240,
                      .reconcile_every_ms = 1000};
    assert_int_equal(s_workload_run(&w), 0);
    /* Checked in Postgres: each one taken once, by one consumer. */
    s_expect_sql(s_db_url, "SELECT count(*) FROM compositions", "10000");
    s_expect_sql(s_db_url,
                 "SELECT count(*) FROM compositions WHERE status = 'processing' AND stage = "
                 "'planning' AND attempts = 1",
                 "10000");
    s_expect_sql(s_db_url,
                 "SELECT count(*) || '/' || count(DISTINCT composition_id) FROM events"
                 " WHERE type = 'status' AND payload->>'to' = 'planning'",
                 "10000/10000");
    s_expect_sql(s_db_url, "SELECT count(DISTINCT idempotency_key) FROM compositions", "10000");
    /* Every consumer did part of the work. */
    s_expect_sql(s_db_url,
                 "SELECT count(DISTINCT payload->>'by') FROM events WHERE type = 'status'", "4");
    /* Nothing left in Redis. */
    char key[128];
    const char *lists[] = {"high", "default", "low"};
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof key, "%sq:%s", s_prefix, lists[i]);
        assert_int_equal(s_redis_int(s_redis_url, "LLEN %s", key), 0);
    }
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof key, "%sq:proc:consumer-%d-%d", s_prefix, (int)getpid(), 4 + i);
        assert_int_equal(s_redis_int(s_redis_url, "LLEN %s", key), 0);
    }
}

/* A consumer process that takes one item, optionally commits its effect in
 * Postgres, reports the id on FD and hangs: the test SIGKILLs it there. */
static pid_t s_spawn_victim(bool commit, int fd)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    cf_db_t *db = s_pool(s_db_url, 1);
    cf_queue_t *q = s_queue(s_redis_url, s_prefix, "victim", 600);
    char err[256];
    cf_queue_item_t item;
    if (cf_queue_take(q, 5000, &item, err, sizeof err) != 1)
        _exit(3);
    /* A claim of 1.5 s that the victim never lives to renew. */
    cf_db_claim_t claim = {.owner = "victim", .token = "victim-claim", .ttl_ms = 1500};
    if (commit && cf_db_composition_claim(db, item.id, &claim, err, sizeof err) != CF_DB_OK)
        _exit(4);
    if (write(fd, item.id, CF_DB_ID_LEN) != CF_DB_ID_LEN)
        _exit(5);
    for (;;)
        pause();
}

static void s_killed_consumer(bool victim_committed)
{
    cf_db_t *db = s_pool(s_db_url, 2);
    cf_queue_t *producer = s_queue(s_redis_url, s_prefix, NULL, 600);
    cf_queue_t *reaper = s_queue(s_redis_url, s_prefix, NULL, 600);
    cf_queue_t *survivor = s_queue(s_redis_url, s_prefix, "survivor", 600);
    char err[256], id[CF_DB_ID_LEN], other[CF_DB_ID_LEN];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, id);
    cf_test_create_queued(db, CF_PRIORITY_LOW, other);
    assert_int_equal(cf_queue_push(producer, id, CF_PRIORITY_DEFAULT, err, sizeof err), 0);

    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t victim = s_spawn_victim(victim_committed, fds[1]);
    char taken[CF_DB_ID_LEN];
    assert_int_equal(read(fds[0], taken, sizeof taken), CF_DB_ID_LEN);
    assert_string_equal(taken, id);
    close(fds[0]);
    close(fds[1]);

    /* The survivor holds another item meanwhile: alive, it is never reaped. */
    assert_int_equal(cf_queue_push(producer, other, CF_PRIORITY_LOW, err, sizeof err), 0);
    cf_queue_item_t held;
    assert_int_equal(cf_queue_take(survivor, 1000, &held, err, sizeof err), 1);
    assert_string_equal(held.id, other);

    kill(victim, SIGKILL);
    int status = 0;
    waitpid(victim, &status, 0);
    assert_true(WIFSIGNALED(status));

    /* While the victim's heartbeat lives, the reaper leaves it alone; after
     * its TTL the item goes back to the intake list. */
    int returned = 0;
    assert_int_equal(cf_queue_reap(reaper, &returned, err, sizeof err), 0);
    assert_int_equal(returned, 0);
    int64_t deadline = s_now_ms() + 5000;
    while (returned == 0 && s_now_ms() < deadline) {
        assert_int_equal(cf_queue_heartbeat(survivor, err, sizeof err), 0);
        s_sleep_ms(100);
        assert_int_equal(cf_queue_reap(reaper, &returned, err, sizeof err), 0);
    }
    assert_int_equal(returned, 1);
    char key[128];
    snprintf(key, sizeof key, "%sq:proc:survivor", s_prefix);
    assert_int_equal(s_redis_int(s_redis_url, "LLEN %s", key), 1); /* untouched */
    assert_int_equal(cf_queue_ack(survivor, &held, err, sizeof err), 0);

    /* Another consumer gets it. */
    cf_queue_item_t item;
    assert_int_equal(cf_queue_take(survivor, 1000, &item, err, sizeof err), 1);
    assert_string_equal(item.id, id);
    int rc = cf_db_composition_take(db, item.id, "survivor", err, sizeof err);
    /* Before its commit: the survivor takes it, once. After its commit:
     * refused for now (the victim's claim still holds), dropped. */
    assert_int_equal(rc, victim_committed ? CF_DB_ILLEGAL : CF_DB_OK);
    assert_int_equal(cf_queue_ack(survivor, &item, err, sizeof err), 0);
    if (victim_committed) {
        /* The victim's claim expires (database clock) unrenewed: the sweep
         * sends the composition back to queued, it is pushed, and the
         * survivor takes it (a second attempt). */
        int swept = 0;
        for (int64_t until = s_now_ms() + 10000; swept == 0 && s_now_ms() < until;) {
            cf_db_expired_t *expired = NULL;
            assert_int_equal(
                cf_db_claims_expire(db, "sweeper", 3, 100, &expired, &swept, err, sizeof err),
                CF_DB_OK);
            if (swept == 1) {
                assert_string_equal(expired[0].id, id);
                assert_int_equal(expired[0].state, CF_STATE_QUEUED);
                assert_string_equal(expired[0].owner, "victim");
                assert_int_equal(
                    cf_queue_push(producer, expired[0].id, expired[0].priority, err, sizeof err),
                    0);
            }
            free(expired);
            if (swept == 0)
                s_sleep_ms(100);
        }
        assert_int_equal(swept, 1);
        assert_int_equal(cf_queue_take(survivor, 1000, &item, err, sizeof err), 1);
        assert_string_equal(item.id, id);
        assert_int_equal(cf_db_composition_take(db, item.id, "survivor", err, sizeof err),
                         CF_DB_OK);
        assert_int_equal(cf_queue_ack(survivor, &item, err, sizeof err), 0);
    }

    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT attempts || ' ' || (SELECT string_agg(payload->>'by', ',') FROM events e"
             " WHERE e.composition_id = c.id AND payload->>'to' = 'planning')"
             " FROM compositions c WHERE id = '%s'",
             id);
    if (!victim_committed) {
        s_expect_sql(s_db_url, sql, "1 survivor");
    } else {
        /* Reclaimed, not stranded: taken twice, by the victim then the
         * survivor, with the expiry recorded between them, and now the
         * survivor's. */
        s_expect_sql(s_db_url, sql, "2 victim,survivor");
        snprintf(sql, sizeof sql,
                 "SELECT status || '/' || stage || ' ' || claimed_by || ' ' ||"
                 " (SELECT string_agg(payload->>'from' || '>' || (payload->>'to') || ':' ||"
                 "  (payload->>'reason'), ',') FROM events e WHERE e.composition_id = c.id"
                 "  AND payload ? 'reason') FROM compositions c WHERE id = '%s'",
                 id);
        s_expect_sql(s_db_url, sql, "processing/planning survivor planning>queued:claim_expired");
    }
    snprintf(key, sizeof key, "%sq:proc:victim", s_prefix);
    assert_int_equal(s_redis_int(s_redis_url, "LLEN %s", key), 0);
    int64_t depth[CF_PRIORITY_COUNT];
    assert_int_equal(cf_queue_depth(producer, depth, err, sizeof err), 0);
    assert_int_equal(depth[0] + depth[1] + depth[2], 0);
    cf_queue_destroy(&producer);
    cf_queue_destroy(&reaper);
    cf_queue_destroy(&survivor);
    cf_db_destroy(&db);
}

static void test_consumer_killed_before_commit(void **state)
{
    s_killed_consumer(false);
}

/* The victim committed its take, then died: its claim expires and the
 * composition is taken again (it used to stay processing for ever). */
static void test_consumer_killed_after_commit_reclaimed(void **state)
{
    s_killed_consumer(true);
}

/* The aging rule, item by item (aging 1 s): a low item pushed at t competes
 * as a high item pushed at t + 2 s. Only "at least" waits decide. */
static void test_aging_rule(void **state)
{
    s_aging_ms = 1000;
    cf_db_t *db = s_pool(s_db_url, 2);
    cf_queue_t *producer = s_queue(s_redis_url, s_prefix, NULL, 3000);
    cf_queue_t *consumer = s_queue(s_redis_url, s_prefix, "aging", 3000);
    char err[256], low[CF_DB_ID_LEN], high[CF_DB_ID_LEN], def[CF_DB_ID_LEN];
    cf_test_create_queued(db, CF_PRIORITY_LOW, low);
    cf_test_create_queued(db, CF_PRIORITY_HIGH, high);
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, def);
    cf_queue_item_t item;
    /* Young: strict order, high before low. */
    assert_int_equal(cf_queue_push(producer, low, CF_PRIORITY_LOW, err, sizeof err), 0);
    assert_int_equal(cf_queue_push(producer, high, CF_PRIORITY_HIGH, err, sizeof err), 0);
    assert_int_equal(cf_queue_take(consumer, 1000, &item, err, sizeof err), 1);
    assert_string_equal(item.id, high);
    assert_true(item.pushed_ms > 0);
    assert_int_equal(cf_queue_ack(consumer, &item, err, sizeof err), 0);
    assert_int_equal(cf_queue_take(consumer, 1000, &item, err, sizeof err), 1);
    assert_string_equal(item.id, low);
    assert_int_equal(cf_queue_ack(consumer, &item, err, sizeof err), 0);
    /* Pushed at t: low (due as high at t + 2 s) and default (due at
     * t + 1 s); then at t + 2.5 s a high item: default, low, high. */
    assert_int_equal(cf_queue_push(producer, low, CF_PRIORITY_LOW, err, sizeof err), 0);
    assert_int_equal(cf_queue_push(producer, def, CF_PRIORITY_DEFAULT, err, sizeof err), 0);
    s_sleep_ms(2500);
    assert_int_equal(cf_queue_push(producer, high, CF_PRIORITY_HIGH, err, sizeof err), 0);
    const char *order[] = {def, low, high};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(cf_queue_take(consumer, 1000, &item, err, sizeof err), 1);
        if (strcmp(item.id, order[i]))
            fail_msg("take %d: got %s, expected %s", i, item.id, order[i]);
        assert_int_equal(cf_queue_ack(consumer, &item, err, sizeof err), 0);
    }
    /* Items without a push time (written by something older) are read,
     * served as the oldest, and acked by their own text. */
    char key[128], text[64];
    snprintf(key, sizeof key, "%sq:low", s_prefix);
    snprintf(text, sizeof text, "l:%s", low);
    redisContext *ctx = cf_redis_connect(s_redis_url, 2000, err, sizeof err);
    assert_non_null(ctx);
    freeReplyObject(redisCommand(ctx, "LPUSH %s %s", key, text));
    redisFree(ctx);
    assert_int_equal(cf_queue_push(producer, high, CF_PRIORITY_HIGH, err, sizeof err), 0);
    assert_int_equal(cf_queue_take(consumer, 1000, &item, err, sizeof err), 1);
    assert_string_equal(item.id, low);
    assert_int_equal(item.pushed_ms, 0);
    assert_int_equal(cf_queue_ack(consumer, &item, err, sizeof err), 0);
    snprintf(key, sizeof key, "%sq:proc:aging", s_prefix);
    assert_int_equal(s_redis_int(s_redis_url, "LLEN %s", key), 0);
    cf_queue_destroy(&producer);
    cf_queue_destroy(&consumer);
    cf_db_destroy(&db);
    s_aging_ms = CF_QUEUE_AGING_MS;
}

/* Starvation: a consumer that always has high work waiting (a producer
 * keeps five high items queued) still serves the one low item, after the
 * high items pushed before it. With strict priority it never would. */
static void test_low_served_under_steady_high_load(void **state)
{
    s_aging_ms = 300;
    cf_db_t *db = s_pool(s_db_url, 2);
    cf_queue_t *producer = s_queue(s_redis_url, s_prefix, NULL, 3000);
    cf_queue_t *consumer = s_queue(s_redis_url, s_prefix, "steady", 3000);
    char err[256], low[CF_DB_ID_LEN], high[CF_DB_ID_LEN];
    cf_test_create_queued(db, CF_PRIORITY_LOW, low);
    cf_test_create_queued(db, CF_PRIORITY_HIGH, high);
    for (int i = 0; i < 5; i++)
        assert_int_equal(cf_queue_push(producer, high, CF_PRIORITY_HIGH, err, sizeof err), 0);
    assert_int_equal(cf_queue_push(producer, low, CF_PRIORITY_LOW, err, sizeof err), 0);
    int highs_before = 0;
    bool served = false;
    /* Generous: the rule serves it after about 0.6 s of high work. */
    for (int64_t until = s_now_ms() + 30000; !served && s_now_ms() < until;) {
        cf_queue_item_t item;
        assert_int_equal(cf_queue_take(consumer, 1000, &item, err, sizeof err), 1);
        assert_int_equal(cf_queue_ack(consumer, &item, err, sizeof err), 0);
        if (!strcmp(item.id, low)) {
            served = true;
            break;
        }
        highs_before++;
        /* The high load never lets up: one in for every one out. */
        assert_int_equal(cf_queue_push(producer, high, CF_PRIORITY_HIGH, err, sizeof err), 0);
        s_sleep_ms(5);
    }
    if (!served)
        fail_msg("the low item was never served under steady high load (%d high items served)",
                 highs_before);
    /* The five high items pushed before it went first: priority still
     * counts while the low one is young. */
    assert_true(highs_before >= 5);
    int64_t depth[CF_PRIORITY_COUNT];
    assert_int_equal(cf_queue_depth(producer, depth, err, sizeof err), 0);
    assert_int_equal(depth[CF_PRIORITY_HIGH], 5);
    print_message("low served after %d high items under steady high load\n", highs_before);
    cf_queue_destroy(&producer);
    cf_queue_destroy(&consumer);
    cf_db_destroy(&db);
    s_aging_ms = CF_QUEUE_AGING_MS;
}

static void test_reconcile_restores_lost_items(void **state)
{
    cf_db_t *db = s_pool(s_db_url, 2);
    cf_queue_t *q = s_queue(s_redis_url, s_prefix, NULL, 3000);
    cf_queue_t *consumer = s_queue(s_redis_url, s_prefix, "c1", 3000);
    char err[256], ids[30][CF_DB_ID_LEN];
    bool needed = false;
    assert_int_equal(cf_queue_needs_reconcile(q, &needed, err, sizeof err), 0);
    assert_true(needed); /* never reconciled under this prefix */
    for (int i = 0; i < 30; i++)
        cf_test_create_queued(db, (cf_priority_t)(i % 3), ids[i]);
    /* 10 pushed, of which 1 is in a consumer's hands; 20 never pushed. */
    for (int i = 0; i < 10; i++)
        assert_int_equal(cf_queue_push(q, ids[i], (cf_priority_t)(i % 3), err, sizeof err), 0);
    cf_queue_item_t item;
    assert_int_equal(cf_queue_take(consumer, 1000, &item, err, sizeof err), 1);
    int pushed = -1;
    assert_int_equal(cf_queue_reconcile(q, db, &pushed, err, sizeof err), 0);
    assert_int_equal(pushed, 20);
    assert_int_equal(cf_queue_needs_reconcile(q, &needed, err, sizeof err), 0);
    assert_false(needed);
    /* A second pass finds nothing to do. */
    assert_int_equal(cf_queue_reconcile(q, db, &pushed, err, sizeof err), 0);
    assert_int_equal(pushed, 0);
    int64_t depth[CF_PRIORITY_COUNT];
    assert_int_equal(cf_queue_depth(q, depth, err, sizeof err), 0);
    assert_int_equal(depth[0] + depth[1] + depth[2], 29);
    /* Priorities survive reconcile: 10 per priority, less the one taken. */
    assert_int_equal(depth[CF_PRIORITY_LOW], 10);
    cf_queue_destroy(&q);
    cf_queue_destroy(&consumer);
    cf_db_destroy(&db);
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "workload"))
        return s_workload_main(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_priority_order_and_depth, s_before, s_after),
        cmocka_unit_test_setup_teardown(test_consumer_killed_before_commit, s_before, s_after),
        cmocka_unit_test_setup_teardown(test_consumer_killed_after_commit_reclaimed, s_before,
                                        s_after),
        cmocka_unit_test_setup_teardown(test_aging_rule, s_before, s_after),
        cmocka_unit_test_setup_teardown(test_low_served_under_steady_high_load, s_before, s_after),
        cmocka_unit_test_setup_teardown(test_reconcile_restores_lost_items, s_before, s_after),
        cmocka_unit_test_setup_teardown(test_ten_thousand_exactly_once, s_before, s_after),
    };
    return cmocka_run_group_tests(tests, s_setup, NULL);
}
