/* bench_state: throughput of clipfarm's state layer against real servers.
 *
 *   bench_state --db URL --redis URL [--threads N] [--seconds S]
 *
 * Phases, each N threads for S seconds:
 *   intake   cf_db_composition_create (queued, idempotency key) + cf_queue_push:
 *            what accepting one composition costs
 *   status   cf_db_composition_take / transition / complete on the
 *            compositions intake created: one status update per operation
 *   cached   cf_cache_composition_json on 100 compositions (cache hits)
 * Prints one "name=value" line per figure; benchmarks/state compares them
 * with pgbench and redis-benchmark on the same servers.
 * BENCH_NO_HOOK=1 leaves the cache hook off (what invalidation costs). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cf_cache.h"
#include "cf_db.h"
#include "cf_queue.h"

typedef struct {
    const char *db_url;
    const char *redis_url;
    int threads;
    int seconds;
    cf_db_t *db;
    cf_cache_t *cache;
    cf_db_queued_t *queued; /* for the status phase */
    int queued_count;
    atomic_int next;
    atomic_llong ops;
    atomic_llong errors;
    atomic_bool stop;
} s_bench_t;

typedef struct {
    s_bench_t *b;
    int index;
} s_arg_t;

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *s_intake(void *arg)
{
    s_arg_t *a = arg;
    s_bench_t *b = a->b;
    cf_queue_options_t qo;
    cf_queue_options_default(&qo);
    qo.url = b->redis_url;
    qo.prefix = "bench:";
    char err[256];
    cf_queue_t *q = cf_queue_new(&qo, err, sizeof err);
    if (!q) {
        fprintf(stderr, "queue: %s\n", err);
        return NULL;
    }
    for (long i = 0; !atomic_load(&b->stop); i++) {
        char key[64], hash[64], id[CF_DB_ID_LEN];
        snprintf(key, sizeof key, "bench-%d-%ld", a->index, i);
        snprintf(hash, sizeof hash, "h-%d-%ld", a->index, i);
        cf_db_composition_new_t c = {
            .title = key,
            .priority = (cf_priority_t)(i % CF_PRIORITY_COUNT),
            .spec_json = "{\"clips\":[{\"source\":\"https://example.invalid/a.mp4\","
                         "\"in\":0,\"out\":10}],\"output\":{\"width\":1280,\"height\":720}}",
            .api_key_id = "bench",
            .idempotency_key = key,
            .request_hash = hash,
            .initial_state = CF_STATE_QUEUED};
        if (cf_db_composition_create(b->db, &c, id, NULL, err, sizeof err) != CF_DB_OK ||
            cf_queue_push(q, id, c.priority, err, sizeof err) < 0) {
            atomic_fetch_add(&b->errors, 1);
            continue;
        }
        atomic_fetch_add(&b->ops, 1);
    }
    cf_queue_destroy(&q);
    return NULL;
}

static void *s_status(void *arg)
{
    s_arg_t *a = arg;
    s_bench_t *b = a->b;
    char err[256];
    while (!atomic_load(&b->stop)) {
        int i = atomic_fetch_add(&b->next, 1);
        if (i >= b->queued_count)
            break;
        const char *id = b->queued[i].id;
        const cf_state_t steps[] = {CF_STATE_PLANNING, CF_STATE_ENCODING, CF_STATE_ASSEMBLING,
                                    CF_STATE_COMPLETED};
        for (int s = 0; s < 4 && !atomic_load(&b->stop); s++) {
            int rc;
            if (steps[s] == CF_STATE_PLANNING)
                rc = cf_db_composition_take(b->db, id, "bench", err, sizeof err);
            else if (steps[s] == CF_STATE_COMPLETED)
                rc = cf_db_composition_complete(
                    b->db, id, &(cf_db_output_t){"/out/bench.mp4", 1000, 10.0, "h"}, err,
                    sizeof err);
            else
                rc = cf_db_composition_transition(b->db, id, steps[s], NULL, err, sizeof err);
            atomic_fetch_add(rc == CF_DB_OK ? &b->ops : &b->errors, 1);
        }
    }
    return NULL;
}

static void *s_cached(void *arg)
{
    s_arg_t *a = arg;
    s_bench_t *b = a->b;
    char err[256];
    int n = b->queued_count < 100 ? b->queued_count : 100;
    for (long i = a->index; !atomic_load(&b->stop); i++) {
        char *json = NULL;
        if (cf_cache_composition_json(b->cache, b->db, b->queued[i % n].id, &json, NULL, err,
                                      sizeof err) == CF_DB_OK)
            atomic_fetch_add(&b->ops, 1);
        else
            atomic_fetch_add(&b->errors, 1);
        free(json);
    }
    return NULL;
}

/* Runs FN on the bench's threads for its seconds; prints name=ops/s. */
static void s_phase(s_bench_t *b, const char *name, void *(*fn)(void *))
{
    atomic_store(&b->ops, 0);
    atomic_store(&b->errors, 0);
    atomic_store(&b->stop, false);
    atomic_store(&b->next, 0);
    pthread_t *tids = calloc((size_t)b->threads, sizeof *tids);
    s_arg_t *args = calloc((size_t)b->threads, sizeof *args);
    double started = s_now();
    for (int i = 0; i < b->threads; i++) {
        args[i] = (s_arg_t){b, i};
        pthread_create(&tids[i], NULL, fn, &args[i]);
    }
    while (s_now() - started < b->seconds) {
        struct timespec ts = {0, 20 * 1000000};
        nanosleep(&ts, NULL);
        if (fn == s_status && atomic_load(&b->next) >= b->queued_count + b->threads)
            break; /* ran out of compositions */
    }
    atomic_store(&b->stop, true);
    for (int i = 0; i < b->threads; i++)
        pthread_join(tids[i], NULL);
    double elapsed = s_now() - started;
    printf("%s_ops_per_s=%.0f\n%s_errors=%lld\n", name, (double)atomic_load(&b->ops) / elapsed,
           name, (long long)atomic_load(&b->errors));
    fflush(stdout);
    free(tids);
    free(args);
}

int main(int argc, char **argv)
{
    s_bench_t b = {.threads = 4, .seconds = 10};
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--db"))
            b.db_url = argv[i + 1];
        else if (!strcmp(argv[i], "--redis"))
            b.redis_url = argv[i + 1];
        else if (!strcmp(argv[i], "--threads"))
            b.threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds"))
            b.seconds = atoi(argv[i + 1]);
    }
    if (!b.db_url || !b.redis_url || b.threads < 1 || b.seconds < 1) {
        fprintf(stderr, "usage: bench_state --db URL --redis URL [--threads N] [--seconds S]\n");
        return 2;
    }
    char err[256];
    cf_db_options_t dbo;
    cf_db_options_default(&dbo);
    dbo.url = b.db_url;
    dbo.pool_size = b.threads;
    b.db = cf_db_new(&dbo, err, sizeof err);
    cf_cache_options_t co;
    cf_cache_options_default(&co);
    co.url = b.redis_url;
    co.prefix = "bench:";
    co.connections = b.threads;
    co.active_ttl_ms = 600000;
    co.terminal_ttl_ms = 600000;
    b.cache = cf_cache_new(&co, err, sizeof err);
    if (!b.db || !b.cache || cf_db_ping(b.db, err, sizeof err) != CF_DB_OK) {
        fprintf(stderr, "bench_state: %s\n", err);
        return 1;
    }
    /* Writes invalidate the cache, as in a node. */
    if (!getenv("BENCH_NO_HOOK"))
        cf_cache_attach(b.cache, b.db);

    s_phase(&b, "intake", s_intake);
    if (cf_db_composition_queued(b.db, 10000000, &b.queued, &b.queued_count, err, sizeof err) < 0) {
        fprintf(stderr, "bench_state: %s\n", err);
        return 1;
    }
    s_phase(&b, "status", s_status);
    s_phase(&b, "cached_read", s_cached);

    cf_db_set_write_hook(b.db, NULL, NULL);
    free(b.queued);
    cf_cache_destroy(&b.cache);
    cf_db_destroy(&b.db);
    return 0;
}
