/* Unit tests for lib/model/cf_state.c: names, parsing, the two-column mapping and
 * the option checks of the pools (no servers needed). */
#include <string.h>

#include "cf_cache.h"
#include "cf_db.h"
#include "cf_queue.h"
#include "cf_state.h"
#include "cf_testutil.h"

static void test_state_names_roundtrip(void **state)
{
    for (int i = 0; i < CF_STATE_COUNT; i++) {
        cf_state_t parsed;
        assert_int_equal(cf_state_parse(cf_state_name((cf_state_t)i), &parsed), 0);
        assert_int_equal(parsed, i);
        /* The two columns map back to the same state. */
        assert_int_equal(cf_state_from_columns(cf_state_status((cf_state_t)i),
                                               cf_state_stage((cf_state_t)i), &parsed),
                         0);
        assert_int_equal(parsed, i);
    }
    assert_string_equal(cf_state_status(CF_STATE_ENCODING), "processing");
    assert_string_equal(cf_state_stage(CF_STATE_ENCODING), "encoding");
    assert_null(cf_state_stage(CF_STATE_QUEUED));
    assert_null(cf_state_name(CF_STATE_COUNT));
    cf_state_t s;
    assert_int_equal(cf_state_parse("processing", &s), -1);
    assert_int_equal(cf_state_parse(NULL, &s), -1);
    assert_int_equal(cf_state_from_columns("processing", NULL, &s), -1);
    assert_int_equal(cf_state_from_columns("processing", "queued", &s), -1);
    assert_int_equal(cf_state_from_columns("queued", "planning", &s), -1);
    assert_int_equal(cf_state_from_columns("planning", "", &s), -1);
    assert_int_equal(cf_state_from_columns("queued", "", &s), 0);
    assert_int_equal(s, CF_STATE_QUEUED);
}

static void test_terminal_and_status_filter(void **state)
{
    int terminal = 0;
    for (int i = 0; i < CF_STATE_COUNT; i++)
        terminal += cf_state_is_terminal((cf_state_t)i);
    assert_int_equal(terminal, 3);
    assert_true(cf_state_is_terminal(CF_STATE_CANCELLED));
    assert_false(cf_state_is_terminal(CF_STATE_ASSEMBLING));
    const char *valid[] = {"pending", "queued", "processing", "completed", "failed", "cancelled"};
    for (size_t i = 0; i < sizeof valid / sizeof *valid; i++)
        assert_true(cf_status_is_valid(valid[i]));
    assert_false(cf_status_is_valid("planning"));
    assert_false(cf_status_is_valid(""));
    assert_false(cf_status_is_valid(NULL));
    assert_false(cf_status_is_valid("QUEUED"));
}

static void test_priorities_and_segments(void **state)
{
    cf_priority_t p;
    assert_int_equal(cf_priority_parse("high", &p), 0);
    assert_int_equal(p, CF_PRIORITY_HIGH);
    assert_int_equal(cf_priority_parse("low", &p), 0);
    assert_int_equal(p, CF_PRIORITY_LOW);
    assert_int_equal(cf_priority_parse("urgent", &p), -1);
    assert_string_equal(cf_priority_name(CF_PRIORITY_DEFAULT), "default");
    assert_null(cf_priority_name(CF_PRIORITY_COUNT));
    cf_seg_state_t s;
    for (int i = 0; i < CF_SEG_COUNT; i++) {
        assert_int_equal(cf_seg_state_parse(cf_seg_state_name((cf_seg_state_t)i), &s), 0);
        assert_int_equal(s, i);
    }
    assert_int_equal(cf_seg_state_parse("queued", &s), -1);
}

static void test_result_names(void **state)
{
    assert_string_equal(cf_db_rc_name(CF_DB_UNAVAILABLE), "database unavailable");
    assert_string_equal(cf_db_rc_name(CF_DB_ILLEGAL), "illegal transition");
    assert_string_equal(cf_db_rc_name(CF_DB_TERMINAL), "already terminal");
    assert_string_equal(cf_db_rc_name(42), "error");
    /* Every failure code is negative and distinct. */
    int codes[] = {CF_DB_ERROR,    CF_DB_NOT_FOUND,   CF_DB_CONFLICT, CF_DB_ILLEGAL,
                   CF_DB_TERMINAL, CF_DB_UNAVAILABLE, CF_DB_INVALID,  CF_DB_STALE};
    for (size_t i = 0; i < sizeof codes / sizeof *codes; i++) {
        assert_true(codes[i] < 0);
        for (size_t j = 0; j < i; j++)
            assert_int_not_equal(codes[i], codes[j]);
    }
}

static void test_option_checks(void **state)
{
    char err[256];
    cf_db_options_t db;
    cf_db_options_default(&db);
    assert_int_equal(db.pool_size, 30);
    assert_int_equal(db.max_overflow, 20);
    assert_int_equal(db.acquire_timeout_ms, 30000);
    assert_int_equal(db.recycle_s, 3600);
    assert_null(cf_db_new(&db, err, sizeof err));
    assert_string_equal(err, "no database URL");
    db.url = "postgresql://x/y";
    db.backoff_max_ms = 1;
    assert_null(cf_db_new(&db, err, sizeof err));
    cf_db_options_default(&db);
    db.url = "postgresql://x/y";
    cf_db_t *pool = cf_db_new(&db, err, sizeof err); /* connects nothing yet */
    assert_non_null(pool);
    cf_db_stats_t stats;
    cf_db_stats(pool, &stats);
    assert_int_equal(stats.open, 0);
    cf_db_destroy(&pool);
    assert_null(pool);
    cf_db_destroy(&pool);

    cf_queue_options_t q;
    cf_queue_options_default(&q);
    q.url = "redis://127.0.0.1:1/0";
    q.consumer = "has space";
    assert_null(cf_queue_new(&q, err, sizeof err));
    q.consumer = "ok";
    cf_queue_t *queue = cf_queue_new(&q, err, sizeof err);
    assert_non_null(queue);
    /* A malformed id is refused before any Redis call. */
    assert_int_equal(cf_queue_push(queue, "not-an-id", CF_PRIORITY_LOW, err, sizeof err), -1);
    assert_non_null(strstr(err, "invalid queue item"));
    /* Unreachable Redis (a closed port): a valid push really tries to
     * connect and fails with the connection's error; the next call, inside
     * the reconnect backoff, fails at once and says so. */
    const char *id = "00000000-0000-4000-8000-000000000001";
    assert_int_equal(cf_queue_push(queue, id, CF_PRIORITY_LOW, err, sizeof err), -1);
    if (!strstr(err, "Connection refused"))
        fail_msg("push to a closed port: %s", err);
    assert_int_equal(cf_queue_push(queue, id, CF_PRIORITY_LOW, err, sizeof err), -1);
    if (!strstr(err, "Redis unavailable (next reconnect in"))
        fail_msg("push inside the backoff: %s", err);
    cf_queue_destroy(&queue);

    cf_cache_options_t c;
    cf_cache_options_default(&c);
    c.url = "redis://127.0.0.1:1/0";
    c.tombstone_ttl_ms = c.fill_window_ms;
    assert_null(cf_cache_new(&c, err, sizeof err));
    assert_non_null(strstr(err, "tombstone"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state_names_roundtrip),
        cmocka_unit_test(test_terminal_and_status_filter),
        cmocka_unit_test(test_priorities_and_segments),
        cmocka_unit_test(test_result_names),
        cmocka_unit_test(test_option_checks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
