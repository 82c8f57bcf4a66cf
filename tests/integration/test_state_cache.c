/* Integration test of lib/store/cf_cache against real Redis and Postgres: the
 * read-through cache never returns a value older than a write that returned
 * before the read started (sequential, the adversarial late fill, and under
 * concurrency), TTLs by state, progress pub/sub, and Redis being away. */
#define _GNU_SOURCE
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cf_cache.h"
#include "cf_db.h"
#include "cf_redis.h"
#include "cf_testutil.h"

static char s_db_url[512];
static const char *s_redis_url;
static char s_prefix[64];

static int s_setup(void **state)
{
    s_redis_url = cf_test_require_env("CF_TEST_REDIS_URL");
    cf_test_fresh_database("cf_cache", s_db_url, sizeof s_db_url);
    return 0;
}

static int s_before(void **state)
{
    static int n;
    snprintf(s_prefix, sizeof s_prefix, "cf:ctest:%d:%d:", (int)getpid(), ++n);
    return 0;
}

static int s_after(void **state)
{
    cf_test_redis_delete_prefix(s_redis_url, s_prefix);
    return 0;
}

static cf_db_t *s_pool(void)
{
    cf_db_options_t opts;
    cf_db_options_default(&opts);
    opts.url = s_db_url;
    opts.pool_size = 8;
    char err[256];
    cf_db_t *db = cf_db_new(&opts, err, sizeof err);
    assert_non_null(db);
    return db;
}

static cf_cache_t *s_cache(const char *url)
{
    cf_cache_options_t opts;
    cf_cache_options_default(&opts);
    opts.url = url;
    opts.prefix = s_prefix;
    opts.active_ttl_ms = 60000; /* long: staleness would show, not expire */
    opts.terminal_ttl_ms = 300000;
    char err[256];
    cf_cache_t *cache = cf_cache_new(&opts, err, sizeof err);
    assert_non_null(cache);
    return cache;
}

/* The "version" field of a composition's JSON. */
static int64_t s_version_of(const char *json)
{
    const char *v = strstr(json, "\"version\" : ");
    assert_non_null(v);
    return strtoll(v + strlen("\"version\" : "), NULL, 10);
}

/* noinline: gcc 12's -Wdangling-pointer misreads the inlined copy (the
 * returned pointer is heap memory, not the local that held it). */
__attribute__((noinline)) static char *s_read(cf_cache_t *cache, cf_db_t *db, const char *id,
                                              bool *hit)
{
    char err[256], *json = NULL;
    if (cf_cache_composition_json(cache, db, id, &json, hit, err, sizeof err) != CF_DB_OK)
        fail_msg("read %s: %s", id, err);
    return json;
}

static void test_read_after_write_sequential(void **state)
{
    cf_db_t *db = s_pool();
    cf_cache_t *cache = s_cache(s_redis_url);
    cf_cache_attach(cache, db);
    char err[256], id[CF_DB_ID_LEN];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, id);
    bool hit = true;
    char *json = s_read(cache, db, id, &hit);
    assert_false(hit);
    free(json);
    json = s_read(cache, db, id, &hit);
    assert_true(hit);
    assert_non_null(strstr(json, "\"status\" : \"queued\""));
    free(json);

    /* Every kind of write, each followed by a read that must see it. */
    assert_int_equal(cf_db_composition_take(db, id, "t", err, sizeof err), CF_DB_OK);
    json = s_read(cache, db, id, &hit);
    assert_false(hit);
    assert_non_null(strstr(json, "\"stage\" : \"planning\""));
    free(json);
    for (int i = 1; i <= 50; i++) {
        assert_int_equal(cf_db_composition_set_progress(db, id, i / 100.0, err, sizeof err),
                         CF_DB_OK);
        json = s_read(cache, db, id, &hit);
        char want[64];
        snprintf(want, sizeof want, "\"progress\" : %g,", i / 100.0);
        if (!strstr(json, want))
            fail_msg("after progress %d: %s", i, json);
        free(json);
        json = s_read(cache, db, id, &hit); /* and the next read is a hit */
        assert_true(hit);
        free(json);
    }
    assert_int_equal(cf_db_composition_transition(db, id, CF_STATE_ENCODING, NULL, err, sizeof err),
                     CF_DB_OK);
    json = s_read(cache, db, id, &hit);
    assert_non_null(strstr(json, "\"stage\" : \"encoding\""));
    free(json);
    assert_int_equal(cf_db_composition_cancel(db, id, NULL, err, sizeof err), CF_DB_OK);
    json = s_read(cache, db, id, &hit);
    assert_non_null(strstr(json, "\"status\" : \"cancelled\""));
    free(json);

    /* Terminal entries live longer than active ones. */
    char key[160];
    snprintf(key, sizeof key, "%sc:%s", s_prefix, id);
    redisContext *ctx = cf_redis_connect(s_redis_url, 2000, err, sizeof err);
    redisReply *ttl = redisCommand(ctx, "PTTL %s", key);
    assert_true(ttl->integer > 60000 && ttl->integer <= 300000);
    freeReplyObject(ttl);
    char active[CF_DB_ID_LEN];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, active);
    free(s_read(cache, db, active, &hit));
    snprintf(key, sizeof key, "%sc:%s", s_prefix, active);
    ttl = redisCommand(ctx, "PTTL %s", key);
    assert_true(ttl->integer > 0 && ttl->integer <= 60000);
    freeReplyObject(ttl);
    redisFree(ctx);

    /* Unknown ids are not found, through the cache too. */
    char *none = NULL;
    assert_int_equal(cf_cache_composition_json(cache, db, "00000000-0000-0000-0000-000000000000",
                                               &none, &hit, err, sizeof err),
                     CF_DB_NOT_FOUND);
    cf_db_set_write_hook(db, NULL, NULL);
    cf_cache_destroy(&cache);
    cf_db_destroy(&db);
}

/* The race a plain delete-on-write cache loses: a reader reads the old row,
 * the writer commits and invalidates, then the reader fills with the old
 * row. Here the late fill is refused. */
static void test_late_fill_of_old_value_refused(void **state)
{
    cf_db_t *db = s_pool();
    cf_cache_t *cache = s_cache(s_redis_url);
    cf_cache_attach(cache, db);
    char err[256], id[CF_DB_ID_LEN];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, id);
    /* The slow reader's Postgres read. */
    char *old_json = NULL;
    int64_t old_version = 0;
    assert_int_equal(cf_db_composition_get_json(db, id, &old_json, &old_version, err, sizeof err),
                     CF_DB_OK);
    /* The write commits; its hook invalidates. */
    assert_int_equal(cf_db_composition_cancel(db, id, NULL, err, sizeof err), CF_DB_OK);
    /* The reader's late fill. */
    assert_int_equal(cf_cache_fill(cache, id, old_version, old_json, err, sizeof err), 0);
    bool hit = true;
    char *json = s_read(cache, db, id, &hit);
    assert_false(hit);
    assert_non_null(strstr(json, "\"status\" : \"cancelled\""));
    assert_true(s_version_of(json) > old_version);
    /* Once the new value is cached, the old one cannot replace it either. */
    assert_int_equal(cf_cache_fill(cache, id, old_version, old_json, err, sizeof err), 0);
    free(json);
    json = s_read(cache, db, id, &hit);
    assert_true(hit);
    assert_non_null(strstr(json, "\"status\" : \"cancelled\""));
    free(json);
    free(old_json);
    cf_cache_stats_t stats;
    cf_cache_stats(cache, &stats);
    assert_true(stats.refused_fills >= 2);
    cf_db_set_write_hook(db, NULL, NULL);
    cf_cache_destroy(&cache);
    cf_db_destroy(&db);
}

typedef struct {
    cf_db_t *db;
    cf_cache_t *cache;
    char id[CF_DB_ID_LEN];
    atomic_llong committed; /* version of the last write that returned */
    atomic_bool done;
    atomic_int stale;
    atomic_int reads;
    atomic_int hits;
} s_race_t;

static void *s_reader(void *arg)
{
    s_race_t *r = arg;
    while (!atomic_load(&r->done)) {
        long long floor = atomic_load(&r->committed);
        bool hit = false;
        char *json = s_read(r->cache, r->db, r->id, &hit);
        if (s_version_of(json) < floor)
            atomic_fetch_add(&r->stale, 1);
        atomic_fetch_add(&r->reads, 1);
        if (hit)
            atomic_fetch_add(&r->hits, 1);
        free(json);
    }
    return NULL;
}

static void test_read_after_write_concurrent(void **state)
{
    s_race_t r = {.db = s_pool()};
    r.cache = s_cache(s_redis_url);
    cf_cache_attach(r.cache, r.db);
    char err[256];
    cf_test_create_queued(r.db, CF_PRIORITY_DEFAULT, r.id);
    assert_int_equal(cf_db_composition_take(r.db, r.id, "t", err, sizeof err), CF_DB_OK);
    pthread_t readers[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&readers[i], NULL, s_reader, &r);
    for (int i = 1; i <= 300; i++) {
        assert_int_equal(cf_db_composition_set_progress(r.db, r.id, i / 1000.0, err, sizeof err),
                         CF_DB_OK);
        /* The write has returned: learn its version (only this thread
         * writes, so Postgres's current version is it). */
        char *json = NULL;
        int64_t version = 0;
        assert_int_equal(cf_db_composition_get_json(r.db, r.id, &json, &version, err, sizeof err),
                         CF_DB_OK);
        free(json);
        atomic_store(&r.committed, version);
        if (i % 3 == 0)
            usleep(2000); /* let readers hit the cache between writes */
    }
    atomic_store(&r.done, true);
    for (int i = 0; i < 4; i++)
        pthread_join(readers[i], NULL);
    print_message("reads=%d hits=%d stale=%d\n", atomic_load(&r.reads), atomic_load(&r.hits),
                  atomic_load(&r.stale));
    assert_int_equal(atomic_load(&r.stale), 0);
    assert_true(atomic_load(&r.hits) > 0);
    assert_true(atomic_load(&r.reads) > atomic_load(&r.hits));
    cf_db_set_write_hook(r.db, NULL, NULL);
    cf_cache_destroy(&r.cache);
    cf_db_destroy(&r.db);
}

static void test_progress_pubsub(void **state)
{
    cf_db_t *db = s_pool();
    cf_cache_t *cache = s_cache(s_redis_url);
    cf_cache_attach(cache, db);
    char err[256], id[CF_DB_ID_LEN];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, id);
    cf_updates_t *sub = cf_updates_subscribe(s_redis_url, s_prefix, id, err, sizeof err);
    assert_non_null(sub);
    char *message = NULL;
    assert_int_equal(cf_updates_next(sub, 100, &message, err, sizeof err), 0);
    assert_int_equal(cf_db_composition_take(db, id, "t", err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_db_composition_set_progress(db, id, 0.25, err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_updates_next(sub, 2000, &message, err, sizeof err), 1);
    assert_non_null(strstr(message, "\"status\":\"processing\""));
    assert_non_null(strstr(message, "\"stage\":\"planning\""));
    assert_non_null(strstr(message, "\"event\":\"status\""));
    free(message);
    assert_int_equal(cf_updates_next(sub, 2000, &message, err, sizeof err), 1);
    assert_non_null(strstr(message, "\"progress\":0.2500"));
    assert_non_null(strstr(message, "\"event\":\"progress\""));
    assert_non_null(strstr(message, id));
    free(message);
    cf_updates_destroy(&sub);
    cf_db_set_write_hook(db, NULL, NULL);
    cf_cache_destroy(&cache);
    cf_db_destroy(&db);
}

static void test_redis_away_reads_postgres(void **state)
{
    cf_db_t *db = s_pool();
    cf_cache_t *cache = s_cache("redis://127.0.0.1:1/0");
    cf_cache_attach(cache, db);
    char err[256], id[CF_DB_ID_LEN];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, id);
    bool hit = true;
    char *json = s_read(cache, db, id, &hit);
    assert_false(hit);
    assert_non_null(strstr(json, id));
    free(json);
    /* Writes still succeed; their invalidation simply fails. */
    assert_int_equal(cf_db_composition_cancel(db, id, NULL, err, sizeof err), CF_DB_OK);
    json = s_read(cache, db, id, &hit);
    assert_non_null(strstr(json, "cancelled"));
    free(json);
    cf_cache_stats_t stats;
    cf_cache_stats(cache, &stats);
    assert_true(stats.errors > 0);
    assert_int_equal(stats.hits, 0);
    cf_db_set_write_hook(db, NULL, NULL);
    cf_cache_destroy(&cache);
    cf_db_destroy(&db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_read_after_write_sequential, s_before, s_after),
        cmocka_unit_test_setup_teardown(test_late_fill_of_old_value_refused, s_before, s_after),
        cmocka_unit_test_setup_teardown(test_read_after_write_concurrent, s_before, s_after),
        cmocka_unit_test_setup_teardown(test_progress_pubsub, s_before, s_after),
        cmocka_unit_test_setup_teardown(test_redis_away_reads_postgres, s_before, s_after),
    };
    return cmocka_run_group_tests(tests, s_setup, NULL);
}
