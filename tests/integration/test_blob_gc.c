/* Integration test of upload ownership and garbage collection (real
 * Postgres): cf_db_blob_record / usage / owned, and cf_db_blob_gc, which
 * frees only uploads past their keep time that no stored composition names
 * as a source, and reports a file free only when no other key's upload of
 * the same bytes keeps it. Judged with psql-level queries on the tables. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_db.h"
#include "cf_testutil.h"

static char s_db_url[512];
static PGconn *s_raw;

static void s_sql(const char *sql)
{
    PGresult *res = PQexec(s_raw, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(s_raw));
    PQclear(res);
}

static long s_count(const char *sql)
{
    PGresult *res = PQexec(s_raw, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(s_raw));
    long n = strtol(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return n;
}

static void test_ownership_and_gc(void **state)
{
    char err[512];
    cf_test_fresh_database("cf_blobgc", s_db_url, sizeof s_db_url);
    s_raw = cf_db_connect(s_db_url, 10, err, sizeof err);
    assert_non_null(s_raw);
    cf_db_options_t opts;
    cf_db_options_default(&opts);
    opts.url = s_db_url;
    cf_db_t *db = cf_db_new(&opts, err, sizeof err);
    assert_non_null(db);

    char h1[65], h2[65], h3[65];
    memset(h1, 'a', 64), h1[64] = 0;
    memset(h2, 'b', 64), h2[64] = 0;
    memset(h3, 'c', 64), h3[64] = 0;
    assert_int_equal(cf_db_blob_record(db, h1, "keyA", "n1", 1000, err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_db_blob_record(db, h2, "keyA", "n1", 500, err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_db_blob_record(db, h2, "keyB", "n1", 500, err, sizeof err), CF_DB_OK);
    assert_int_equal(cf_db_blob_record(db, h3, "keyB", "n2", 70, err, sizeof err), CF_DB_OK);
    /* Uploading again refreshes the row, never counts twice. */
    assert_int_equal(cf_db_blob_record(db, h1, "keyA", "n1", 1000, err, sizeof err), CF_DB_OK);
    int64_t used = 0;
    assert_int_equal(cf_db_blob_usage(db, "keyA", &used, err, sizeof err), CF_DB_OK);
    assert_int_equal(used, 1500);
    assert_int_equal(cf_db_blob_usage(db, "nobody", &used, err, sizeof err), CF_DB_OK);
    assert_int_equal(used, 0);
    bool owned = false;
    assert_int_equal(cf_db_blob_owned(db, h1, "keyA", &owned, err, sizeof err), CF_DB_OK);
    assert_true(owned);
    assert_int_equal(cf_db_blob_owned(db, h1, "keyB", &owned, err, sizeof err), CF_DB_OK);
    assert_false(owned);
    /* A malformed hash never gets in (the schema checks it). */
    assert_int_not_equal(cf_db_blob_record(db, "XYZ", "keyA", "n1", 1, err, sizeof err), CF_DB_OK);

    /* Fresh uploads stay. */
    char **hashes = NULL;
    int count = -1;
    assert_int_equal(cf_db_blob_gc(db, "n1", 3600, 100, &hashes, &count, err, sizeof err),
                     CF_DB_OK);
    assert_int_equal(count, 0);
    cf_db_strings_free(&hashes, count);

    /* Age them all; h1 is still named by a composition. */
    s_sql("UPDATE blob_uploads SET created_at = now() - interval '2 hours'");
    char spec[256];
    snprintf(spec, sizeof spec,
             "INSERT INTO compositions (spec, api_key_id) VALUES "
             "('{\"clips\": [{\"source\": \"blob:%s\"}]}', 'keyA')",
             h1);
    s_sql(spec);
    assert_int_equal(cf_db_blob_gc(db, "n1", 3600, 100, &hashes, &count, err, sizeof err),
                     CF_DB_OK);
    /* h2's two rows (keyA, keyB) go and its file is free; h1 is in use;
     * h3 lives on another node. */
    assert_int_equal(count, 1);
    assert_string_equal(hashes[0], h2);
    cf_db_strings_free(&hashes, count);
    assert_int_equal(s_count("SELECT count(*) FROM blob_uploads WHERE node_id = 'n1'"), 1);
    assert_int_equal(s_count("SELECT count(*) FROM blob_uploads WHERE node_id = 'n2'"), 1);

    /* Once the composition is gone, h1 goes too. */
    s_sql("DELETE FROM compositions");
    assert_int_equal(cf_db_blob_gc(db, "n1", 3600, 100, &hashes, &count, err, sizeof err),
                     CF_DB_OK);
    assert_int_equal(count, 1);
    assert_string_equal(hashes[0], h1);
    cf_db_strings_free(&hashes, count);
    assert_int_equal(s_count("SELECT count(*) FROM blob_uploads WHERE node_id = 'n1'"), 0);

    /* Existing keys became admins in the migration; new ones are not. */
    unsigned char hash[32] = {1};
    assert_int_equal(cf_db_api_key_insert(db, "k_plain", "plain", hash, 32, err, sizeof err),
                     CF_DB_OK);
    assert_int_equal(
        cf_db_api_key_insert_scoped(db, "k_admin", "boss", hash, 32, true, err, sizeof err),
        CF_DB_OK);
    cf_db_api_key_t key;
    assert_int_equal(cf_db_api_key_find(db, "k_plain", &key, err, sizeof err), CF_DB_OK);
    assert_false(key.admin);
    cf_db_api_key_clear(&key);
    assert_int_equal(cf_db_api_key_find(db, "k_admin", &key, err, sizeof err), CF_DB_OK);
    assert_true(key.admin);
    cf_db_api_key_clear(&key);
    assert_int_equal(s_count("SELECT count(*) FROM api_keys WHERE admin"), 1);

    cf_db_destroy(&db);
    PQfinish(s_raw);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ownership_and_gc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
