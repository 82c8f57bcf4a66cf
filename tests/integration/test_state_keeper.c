/* Integration test of lib/store/cf_state_keeper: retention purge removes expired
 * compositions and only their local output files under the output root, but
 * never one whose idempotency key is still inside its window; the keeper's
 * thread reconciles a queue Redis never saw and reaps a consumer that went
 * away holding an item; the coordinator's steps (claim sweep, reconcile) run
 * only while the node is the coordinator. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cf_blob.h"
#include "cf_db.h"
#include "cf_queue.h"
#include "cf_redis.h"
#include "cf_state_keeper.h"
#include "cf_testutil.h"

static char s_db_url[512];
static const char *s_redis_url;
static char s_prefix[64];
static PGconn *s_raw;

static int s_setup(void **state)
{
    s_redis_url = cf_test_require_env("CF_TEST_REDIS_URL");
    char err[512];
    cf_test_fresh_database("cf_keeper", s_db_url, sizeof s_db_url);
    s_raw = cf_db_connect(s_db_url, 10, err, sizeof err);
    if (!s_raw)
        fail_msg("connect: %s", err);
    snprintf(s_prefix, sizeof s_prefix, "cf:ktest:%d:", (int)getpid());
    return 0;
}

static int s_teardown(void **state)
{
    cf_test_redis_delete_prefix(s_redis_url, s_prefix);
    PQfinish(s_raw);
    return 0;
}

static cf_db_t *s_pool(void)
{
    cf_db_options_t opts;
    cf_db_options_default(&opts);
    opts.url = s_db_url;
    opts.pool_size = 4;
    char err[256];
    cf_db_t *db = cf_db_new(&opts, err, sizeof err);
    assert_non_null(db);
    return db;
}

/* A composition completed with OUTPUT, finished AGE ago. */
static void s_completed(cf_db_t *db, const char *output, const char *age, char id[CF_DB_ID_LEN])
{
    char err[256];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, id);
    const cf_state_t path[] = {CF_STATE_PLANNING, CF_STATE_ENCODING, CF_STATE_ASSEMBLING};
    for (int i = 0; i < 3; i++)
        assert_int_equal(cf_db_composition_transition(db, id, path[i], NULL, err, sizeof err),
                         CF_DB_OK);
    cf_db_output_t out = {output, 10, 1.0, "h"};
    assert_int_equal(cf_db_composition_complete(db, id, &out, err, sizeof err), CF_DB_OK);
    const char *params[] = {id, age};
    PGresult *res = PQexecParams(
        s_raw, "UPDATE compositions SET finished_at = now() - $2::interval WHERE id = $1", 2, NULL,
        params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
}

static bool s_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static int s_count(const char *sql)
{
    PGresult *res = PQexec(s_raw, sql);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    int n = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    return n;
}

/* The node's own outputs ("clipfarm://THIS_NODE/outputs/...", under its data
 * dir) are removed at retention, another node's are left to it; uploads of
 * this node that nothing names any more leave the blob store. */
static void test_purge_node_locations_and_uploads(void **state)
{
    cf_db_t *db = s_pool();
    char *data = cf_test_mkdtemp("keeper-data");
    char outputs[600], mine_path[700], blobs_dir[600], err[512];
    snprintf(outputs, sizeof outputs, "%s/outputs", data);
    assert_int_equal(mkdir(outputs, 0755), 0);
    snprintf(mine_path, sizeof mine_path, "%s/mine.mp4", outputs);
    cf_test_write_file(mine_path, "x");
    char theirs_path[700];
    snprintf(theirs_path, sizeof theirs_path, "%s/theirs.mp4", outputs);
    cf_test_write_file(theirs_path, "x");
    char a[CF_DB_ID_LEN], b[CF_DB_ID_LEN];
    s_completed(db, "clipfarm://node-1/outputs/mine.mp4", "8 days", a);
    s_completed(db, "clipfarm://node-2/outputs/theirs.mp4", "8 days", b);

    snprintf(blobs_dir, sizeof blobs_dir, "%s/blobs", data);
    cf_blob_store_t *blobs = cf_blob_store_new(blobs_dir, err, sizeof err);
    assert_non_null(blobs);
    char upload[700], hex[CF_BLOB_HEX_SIZE], blob_path[800];
    snprintf(upload, sizeof upload, "%s/upload.bin", data);
    cf_test_write_file(upload, "uploaded bytes");
    assert_int_equal(cf_blob_put_file(blobs, upload, hex, err, sizeof err), 0);
    assert_int_equal(cf_db_blob_record(db, hex, "k1", "node-1", 14, err, sizeof err), CF_DB_OK);
    PQclear(PQexec(s_raw, "UPDATE blob_uploads SET created_at = now() - interval '8 days'"));
    assert_int_equal(cf_blob_path(blobs, hex, blob_path, sizeof blob_path, err, sizeof err), 0);

    cf_state_keeper_options_t opts;
    cf_state_keeper_options_default(&opts);
    opts.db = db;
    opts.redis_url = s_redis_url;
    opts.redis_prefix = s_prefix;
    opts.node_id = "node-1";
    opts.data_dir = data;
    opts.blobs = blobs;
    opts.start_thread = false;
    cf_state_keeper_t *keeper = cf_state_keeper_new(&opts, err, sizeof err);
    assert_non_null(keeper);
    cf_state_keeper_stats_t done = {0};
    assert_int_equal(cf_state_keeper_run_once(keeper, &done, err, sizeof err), 0);
    assert_int_equal(done.purged, 2);
    assert_int_equal(done.files_removed, 1);
    assert_false(s_exists(mine_path));
    assert_true(s_exists(theirs_path)); /* node-2 removes its own */
    assert_int_equal(done.blobs_removed, 1);
    assert_false(s_exists(blob_path));
    assert_int_equal(s_count("SELECT count(*) FROM blob_uploads"), 0);
    cf_state_keeper_destroy(&keeper);
    cf_blob_store_destroy(&blobs);
    cf_db_destroy(&db);
    cf_test_rmtree(data);
    free(data);
}

/* Equal outputs are one blob: purging one composition keeps the file while
 * another still has it as its output, and the last one takes it along. */
static void test_purge_keeps_shared_output_blob(void **state)
{
    cf_db_t *db = s_pool();
    char *data = cf_test_mkdtemp("keeper-shared");
    char blobs_dir[600], err[512], src[700], hex[CF_BLOB_HEX_SIZE], path[800], rel[200],
        location[400];
    snprintf(blobs_dir, sizeof blobs_dir, "%s/blobs", data);
    cf_blob_store_t *blobs = cf_blob_store_new(blobs_dir, err, sizeof err);
    assert_non_null(blobs);
    snprintf(src, sizeof src, "%s/out.mp4", data);
    cf_test_write_file(src, "rendered bytes");
    assert_int_equal(cf_blob_adopt_file(blobs, src, hex, NULL, err, sizeof err), 0);
    assert_false(s_exists(src)); /* moved, not copied */
    assert_int_equal(cf_blob_path(blobs, hex, path, sizeof path, err, sizeof err), 0);
    assert_int_equal(cf_blob_relpath(hex, rel, sizeof rel), 0);
    snprintf(location, sizeof location, "clipfarm://node-1/blobs/%s", rel);
    char a[CF_DB_ID_LEN], b[CF_DB_ID_LEN], c[CF_DB_ID_LEN];
    s_completed(db, location, "8 days", a);
    s_completed(db, location, "8 days", b);
    s_completed(db, location, "1 day", c);

    cf_state_keeper_options_t opts;
    cf_state_keeper_options_default(&opts);
    opts.db = db;
    opts.redis_url = s_redis_url;
    opts.redis_prefix = s_prefix;
    opts.node_id = "node-1";
    opts.data_dir = data;
    opts.blobs = blobs;
    opts.start_thread = false;
    cf_state_keeper_t *keeper = cf_state_keeper_new(&opts, err, sizeof err);
    assert_non_null(keeper);
    cf_state_keeper_stats_t done = {0};
    /* a and b go together; c still names the blob. */
    assert_int_equal(cf_state_keeper_run_once(keeper, &done, err, sizeof err), 0);
    assert_int_equal(done.purged, 2);
    assert_int_equal(done.files_removed, 0);
    assert_true(s_exists(path));
    bool used = false;
    assert_int_equal(cf_db_output_referenced(db, location, &used, err, sizeof err), CF_DB_OK);
    assert_true(used);
    /* c expires too: the last reference takes the blob with it. */
    const char *params[] = {c};
    PQclear(PQexecParams(s_raw,
                         "UPDATE compositions SET finished_at = now() - interval '8 days'"
                         " WHERE id = $1",
                         1, NULL, params, NULL, NULL, 0));
    cf_state_keeper_stats_t again = {0};
    assert_int_equal(cf_state_keeper_run_once(keeper, &again, err, sizeof err), 0);
    assert_int_equal(again.purged, 1);
    assert_int_equal(again.files_removed, 1);
    assert_false(s_exists(path));
    assert_int_equal(cf_db_output_referenced(db, location, &used, err, sizeof err), CF_DB_OK);
    assert_false(used);
    cf_state_keeper_destroy(&keeper);
    cf_blob_store_destroy(&blobs);
    cf_db_destroy(&db);
    cf_test_rmtree(data);
    free(data);
}

static void test_purge_removes_output_files(void **state)
{
    cf_db_t *db = s_pool();
    char *root = cf_test_mkdtemp("keeper-root");
    char *elsewhere = cf_test_mkdtemp("keeper-elsewhere");
    char inside[512], outside[512], inside_url[600], recent_file[512];
    snprintf(inside, sizeof inside, "%s/old.mp4", root);
    snprintf(inside_url, sizeof inside_url, "file://%s/old2.mp4", root);
    snprintf(outside, sizeof outside, "%s/not-ours.mp4", elsewhere);
    snprintf(recent_file, sizeof recent_file, "%s/recent.mp4", root);
    cf_test_write_file(inside, "x");
    cf_test_write_file(inside_url + 7, "x");
    cf_test_write_file(outside, "x");
    cf_test_write_file(recent_file, "x");
    char a[CF_DB_ID_LEN], b[CF_DB_ID_LEN], c[CF_DB_ID_LEN], d[CF_DB_ID_LEN], e[CF_DB_ID_LEN],
        f[CF_DB_ID_LEN];
    s_completed(db, inside, "8 days", a);
    s_completed(db, inside_url, "8 days", b);
    s_completed(db, outside, "8 days", c);
    s_completed(db, "s3://bucket/out.mp4", "8 days", d);
    s_completed(db, recent_file, "1 day", e);
    char err[256];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, f);
    assert_int_equal(cf_db_composition_fail(db, f, "x", "y", err, sizeof err), CF_DB_OK);
    PQclear(PQexec(s_raw, "UPDATE compositions SET finished_at = now() - interval '2 days' "
                          "WHERE status = 'failed'"));

    cf_state_keeper_options_t opts;
    cf_state_keeper_options_default(&opts);
    opts.db = db;
    opts.redis_url = s_redis_url;
    opts.redis_prefix = s_prefix;
    opts.output_root = root;
    opts.start_thread = false;
    cf_state_keeper_t *keeper = cf_state_keeper_new(&opts, err, sizeof err);
    assert_non_null(keeper);
    cf_state_keeper_stats_t done = {0};
    assert_int_equal(cf_state_keeper_run_once(keeper, &done, err, sizeof err), 0);
    assert_int_equal(done.purged, 5);        /* 4 old completed + the old failed one */
    assert_int_equal(done.files_removed, 2); /* the two under the root */
    assert_int_equal(done.files_kept, 2);    /* the one elsewhere, the S3 object */
    assert_false(s_exists(inside));
    assert_false(s_exists(inside_url + 7));
    assert_true(s_exists(outside));
    assert_true(s_exists(recent_file));
    assert_int_equal(s_count("SELECT count(*) FROM compositions"), 1);
    /* Nothing more to do on the next pass. */
    memset(&done, 0, sizeof done);
    assert_int_equal(cf_state_keeper_run_once(keeper, &done, err, sizeof err), 0);
    assert_int_equal(done.purged, 0);

    /* An output root that does not exist is refused. */
    opts.output_root = "/nonexistent/clipfarm-root";
    assert_null(cf_state_keeper_new(&opts, err, sizeof err));
    assert_non_null(strstr(err, "output root"));
    cf_state_keeper_destroy(&keeper);
    cf_db_destroy(&db);
    cf_test_rmtree(root);
    cf_test_rmtree(elsewhere);
    free(root);
    free(elsewhere);
}

static int64_t s_depth(cf_queue_t *q)
{
    char err[256];
    int64_t depth[CF_PRIORITY_COUNT];
    assert_int_equal(cf_queue_depth(q, depth, err, sizeof err), 0);
    return depth[0] + depth[1] + depth[2];
}

static bool s_wait_depth(cf_queue_t *q, int64_t want, int timeout_ms)
{
    for (int waited = 0; waited < timeout_ms; waited += 50) {
        if (s_depth(q) == want)
            return true;
        usleep(50000);
    }
    return s_depth(q) == want;
}

static void test_thread_reconciles_and_reaps(void **state)
{
    cf_db_t *db = s_pool();
    PQclear(PQexec(s_raw, "DELETE FROM compositions"));
    char ids[5][CF_DB_ID_LEN], err[256];
    for (int i = 0; i < 5; i++)
        cf_test_create_queued(db, CF_PRIORITY_DEFAULT,
                              ids[i]); /* queued in Postgres, never pushed */
    cf_queue_options_t qo;
    cf_queue_options_default(&qo);
    qo.url = s_redis_url;
    qo.prefix = s_prefix;
    cf_queue_t *observer = cf_queue_new(&qo, err, sizeof err);
    assert_non_null(observer);
    assert_int_equal(s_depth(observer), 0);

    cf_state_keeper_options_t opts;
    cf_state_keeper_options_default(&opts);
    opts.db = db;
    opts.redis_url = s_redis_url;
    opts.redis_prefix = s_prefix;
    opts.reap_interval_ms = 50;
    opts.reconcile_interval_ms = 100000; /* only on lost data: the first pass */
    cf_state_keeper_t *keeper = cf_state_keeper_new(&opts, err, sizeof err);
    assert_non_null(keeper);
    assert_true(s_wait_depth(observer, 5, 3000));

    /* A consumer takes an item and vanishes without acking it. */
    qo.consumer = "gone";
    qo.heartbeat_ttl_ms = 300;
    cf_queue_t *gone = cf_queue_new(&qo, err, sizeof err);
    cf_queue_item_t item;
    assert_int_equal(cf_queue_take(gone, 1000, &item, err, sizeof err), 1);
    cf_queue_destroy(&gone);
    assert_int_equal(s_depth(observer), 4);
    assert_true(s_wait_depth(observer, 5, 3000)); /* after its heartbeat expired */
    /* The keeper counts a reap after Redis moved the item back: the depth
     * can show 5 a moment before the count says 1, so wait for the count. */
    cf_state_keeper_stats_t stats;
    for (int waited = 0; waited < 3000; waited += 20) {
        cf_state_keeper_stats(keeper, &stats);
        if (stats.reaped >= 1)
            break;
        usleep(20000);
    }
    assert_int_equal(stats.reaped, 1); /* the one item "gone" held */
    assert_int_equal(stats.reconciled, 5);
    assert_true(stats.passes > 2);
    cf_state_keeper_destroy(&keeper);
    assert_null(keeper);
    cf_queue_destroy(&observer);
    cf_db_destroy(&db);
}

static bool s_coordinator_flag;

static bool s_is_coordinator(void *arg)
{
    (void)arg;
    return s_coordinator_flag;
}

/* Not the coordinator: the expired claim stays, the queue is not rebuilt.
 * The coordinator: the composition goes back to queued (event by this
 * node, reason claim_expired) and is pushed; the reconcile pushes the rest. */
static void test_coordinator_steps_only_on_the_coordinator(void **state)
{
    cf_db_t *db = s_pool();
    PQclear(PQexec(s_raw, "DELETE FROM compositions"));
    char prefix[96], ids[3][CF_DB_ID_LEN], claimed[CF_DB_ID_LEN], err[256];
    snprintf(prefix, sizeof prefix, "%scoord:", s_prefix);
    for (int i = 0; i < 3; i++)
        cf_test_create_queued(db, CF_PRIORITY_DEFAULT, ids[i]);
    cf_test_create_queued(db, CF_PRIORITY_HIGH, claimed);
    cf_db_claim_t claim = {.owner = "node-dead", .token = "dead1", .ttl_ms = 300};
    assert_int_equal(cf_db_composition_claim(db, claimed, &claim, err, sizeof err), CF_DB_OK);
    for (int i = 0; i < 500 && s_count("SELECT count(*) FROM compositions WHERE"
                                       " claim_expires_at < now()") == 0;
         i++)
        usleep(20000);
    assert_int_equal(s_count("SELECT count(*) FROM compositions WHERE claim_expires_at < now()"),
                     1);

    cf_queue_options_t qo;
    cf_queue_options_default(&qo);
    qo.url = s_redis_url;
    qo.prefix = prefix;
    cf_queue_t *observer = cf_queue_new(&qo, err, sizeof err);
    assert_non_null(observer);
    cf_state_keeper_options_t opts;
    cf_state_keeper_options_default(&opts);
    opts.db = db;
    opts.redis_url = s_redis_url;
    opts.redis_prefix = prefix;
    opts.node_id = "node-1";
    opts.start_thread = false;
    opts.is_coordinator = s_is_coordinator;
    s_coordinator_flag = false;
    cf_state_keeper_t *keeper = cf_state_keeper_new(&opts, err, sizeof err);
    assert_non_null(keeper);
    cf_state_keeper_stats_t done = {0};
    assert_int_equal(cf_state_keeper_run_once(keeper, &done, err, sizeof err), 0);
    assert_int_equal(done.coordinating, 0);
    assert_int_equal(done.reconciled, 0);
    assert_int_equal(done.requeued, 0);
    assert_int_equal(s_depth(observer), 0);
    assert_int_equal(s_count("SELECT count(*) FROM compositions WHERE status = 'processing'"), 1);

    s_coordinator_flag = true;
    memset(&done, 0, sizeof done);
    assert_int_equal(cf_state_keeper_run_once(keeper, &done, err, sizeof err), 0);
    assert_int_equal(done.coordinating, 1);
    assert_int_equal(done.requeued, 1);
    assert_int_equal(done.reconciled, 3); /* the swept one was pushed by the sweep */
    assert_int_equal(s_depth(observer), 4);
    assert_int_equal(s_count("SELECT count(*) FROM compositions WHERE status = 'queued'"), 4);
    assert_int_equal(s_count("SELECT count(*) FROM events WHERE type = 'status' AND"
                             " payload->>'by' = 'node-1' AND payload->>'reason' = 'claim_expired'"
                             " AND payload->>'owner' = 'node-dead'"),
                     1);
    /* The item is where its priority says. */
    cf_queue_item_t item;
    qo.consumer = "coord-consumer";
    cf_queue_t *consumer = cf_queue_new(&qo, err, sizeof err);
    assert_int_equal(cf_queue_take(consumer, 1000, &item, err, sizeof err), 1);
    assert_string_equal(item.id, claimed);
    assert_int_equal(item.priority, CF_PRIORITY_HIGH);
    cf_queue_destroy(&consumer);
    cf_state_keeper_destroy(&keeper);
    cf_queue_destroy(&observer);
    cf_db_destroy(&db);
}

/* Creates a composition with idempotency key KEY (NULL: none), fails it,
 * and ages it: created CREATED ago, finished FINISHED ago. */
static void s_failed_keyed(cf_db_t *db, const char *key, const char *created, const char *finished,
                           char id[CF_DB_ID_LEN])
{
    char err[256];
    cf_db_composition_new_t c = {.priority = CF_PRIORITY_DEFAULT,
                                 .spec_json = "{}",
                                 .api_key_id = "k1",
                                 .idempotency_key = key,
                                 .request_hash = key ? "body-hash" : NULL,
                                 .initial_state = CF_STATE_QUEUED};
    assert_int_equal(cf_db_composition_create(db, &c, id, NULL, err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_db_composition_fail(db, id, "x", "y", err, sizeof err), CF_DB_OK);
    const char *params[] = {id, created, finished};
    PGresult *res = PQexecParams(s_raw,
                                 "UPDATE compositions SET created_at = now() - $2::interval,"
                                 " finished_at = now() - $3::interval WHERE id = $1",
                                 3, NULL, params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
}

/* Retention shorter than the idempotency window (24 h): a composition whose
 * key is younger is kept, so a client retrying gets it back, never a second
 * one; once the key is older, it goes. */
static void test_purge_keeps_idempotency_keys_for_their_window(void **state)
{
    cf_db_t *db = s_pool();
    PQclear(PQexec(s_raw, "DELETE FROM compositions"));
    char young[CF_DB_ID_LEN], plain[CF_DB_ID_LEN], old[CF_DB_ID_LEN], err[256];
    s_failed_keyed(db, "key-young", "2 hours", "1 hour", young);
    s_failed_keyed(db, NULL, "2 hours", "1 hour", plain);
    s_failed_keyed(db, "key-old", "25 hours", "24 hours", old);
    cf_state_keeper_options_t opts;
    cf_state_keeper_options_default(&opts);
    opts.db = db;
    opts.redis_url = s_redis_url;
    opts.redis_prefix = s_prefix;
    opts.keep_failed_s = 60; /* far below the window */
    opts.start_thread = false;
    cf_state_keeper_t *keeper = cf_state_keeper_new(&opts, err, sizeof err);
    assert_non_null(keeper);
    cf_state_keeper_stats_t done = {0};
    assert_int_equal(cf_state_keeper_run_once(keeper, &done, err, sizeof err), 0);
    assert_int_equal(done.purged, 2);
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM compositions WHERE id = '%s'", young);
    assert_int_equal(s_count(sql), 1);
    assert_int_equal(s_count("SELECT count(*) FROM compositions"), 1);
    /* The client retries: the same composition, not a new one. */
    cf_db_composition_new_t again = {.priority = CF_PRIORITY_DEFAULT,
                                     .spec_json = "{}",
                                     .api_key_id = "k1",
                                     .idempotency_key = "key-young",
                                     .request_hash = "body-hash",
                                     .initial_state = CF_STATE_QUEUED};
    char id[CF_DB_ID_LEN];
    bool existed = false;
    assert_int_equal(cf_db_composition_create(db, &again, id, &existed, err, sizeof err), CF_DB_OK);
    assert_true(existed);
    assert_string_equal(id, young);
    cf_state_keeper_destroy(&keeper);
    /* The window is the option's: 0 lets retention alone decide. */
    opts.idempotency_keep_s = 0;
    keeper = cf_state_keeper_new(&opts, err, sizeof err);
    memset(&done, 0, sizeof done);
    assert_int_equal(cf_state_keeper_run_once(keeper, &done, err, sizeof err), 0);
    assert_int_equal(done.purged, 1);
    cf_state_keeper_destroy(&keeper);
    cf_db_destroy(&db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_purge_removes_output_files),
        cmocka_unit_test(test_purge_node_locations_and_uploads),
        cmocka_unit_test(test_purge_keeps_shared_output_blob),
        cmocka_unit_test(test_thread_reconciles_and_reaps),
        cmocka_unit_test(test_coordinator_steps_only_on_the_coordinator),
        cmocka_unit_test(test_purge_keeps_idempotency_keys_for_their_window),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
