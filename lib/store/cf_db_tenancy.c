/* cf_db_tenancy: who owns what: API keys, the key a composition belongs to,
 * and the blob uploads each key holds (quota, ownership, garbage). */
#define _GNU_SOURCE
#include "cf_db.h"
#include "cf_db_internal.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ====================================================================== api keys */

int cf_db_api_key_insert(cf_db_t *db, const char *id, const char *name, const unsigned char *hash,
                         size_t hash_len, char *err, size_t errlen)
{
    return cf_db_api_key_insert_scoped(db, id, name, hash, hash_len, false, err, errlen);
}

int cf_db_api_key_insert_scoped(cf_db_t *db, const char *id, const char *name,
                                const unsigned char *hash, size_t hash_len, bool admin, char *err,
                                size_t errlen)
{
    if (!id || !*id || !name || !hash || hash_len == 0 || hash_len > 1024) {
        snprintf(err, errlen, "an API key needs an id, a name and a hash");
        return CF_DB_INVALID;
    }
    const char *params[] = {id, name, (const char *)hash, admin ? "true" : "false"};
    int lengths[] = {0, 0, (int)hash_len, 0};
    int formats[] = {0, 0, 1, 0};
    PGresult *res = NULL;
    int rc =
        cf_dbi_exec(db, CF_DBI_KEY_INSERT_SCOPED, 4, params, lengths, formats, &res, err, errlen);
    if (rc == CF_DB_CONFLICT) {
        snprintf(err, errlen, "API key '%.64s' already exists", id);
        return rc;
    }
    if (rc < 0)
        return rc;
    PQclear(res);
    return CF_DB_OK;
}

static int s_key_from_row(const PGresult *res, int row, cf_db_api_key_t *key)
{
    memset(key, 0, sizeof *key);
    key->id = cf_dbi_strdup_or_null(res, row, 0);
    key->name = cf_dbi_strdup_or_null(res, row, 1);
    if (!PQgetisnull(res, row, 2)) {
        size_t len = 0;
        unsigned char *raw = PQunescapeBytea((const unsigned char *)PQgetvalue(res, row, 2), &len);
        if (raw) {
            key->hash = malloc(len ? len : 1);
            if (key->hash)
                memcpy(key->hash, raw, len);
            key->hash_len = len;
            PQfreemem(raw);
        }
    }
    key->created_at = cf_dbi_strdup_or_null(res, row, 3);
    key->revoked_at = cf_dbi_strdup_or_null(res, row, 4);
    key->admin = PQnfields(res) > 5 && !strcmp(PQgetvalue(res, row, 5), "t");
    return key->id && key->name ? 0 : -1;
}

void cf_db_api_key_clear(cf_db_api_key_t *key)
{
    if (!key)
        return;
    free(key->id);
    free(key->name);
    if (key->hash)
        sodium_memzero(key->hash, key->hash_len);
    free(key->hash);
    free(key->created_at);
    free(key->revoked_at);
    memset(key, 0, sizeof *key);
}

int cf_db_api_key_find(cf_db_t *db, const char *id, cf_db_api_key_t *key, char *err, size_t errlen)
{
    memset(key, 0, sizeof *key);
    if (!id)
        return cf_dbi_not_found("API key", id, err, errlen);
    const char *params[] = {id};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_KEY_FIND, 1, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return cf_dbi_not_found("API key", id, err, errlen);
    }
    if (s_key_from_row(res, 0, key) < 0 || !key->hash) {
        PQclear(res);
        cf_db_api_key_clear(key);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    PQclear(res);
    return CF_DB_OK;
}

int cf_db_api_key_revoke(cf_db_t *db, const char *id, char *err, size_t errlen)
{
    if (!id)
        return cf_dbi_not_found("API key", id, err, errlen);
    const char *params[] = {id};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_KEY_REVOKE, 1, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    PQclear(res);
    return rows == 1 ? CF_DB_OK : cf_dbi_not_found("API key", id, err, errlen);
}

int cf_db_api_key_list(cf_db_t *db, cf_db_api_key_t **keys_p, int *count_p, char *err,
                       size_t errlen)
{
    *keys_p = NULL;
    *count_p = 0;
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_KEY_LIST, 0, NULL, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    cf_db_api_key_t *keys = calloc((size_t)rows + 1, sizeof *keys);
    if (!keys) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    for (int i = 0; i < rows; i++) {
        if (s_key_from_row(res, i, &keys[i]) < 0) {
            PQclear(res);
            cf_db_api_keys_free(&keys, rows);
            snprintf(err, errlen, "out of memory");
            return CF_DB_ERROR;
        }
    }
    PQclear(res);
    *keys_p = keys;
    *count_p = rows;
    return CF_DB_OK;
}

void cf_db_api_keys_free(cf_db_api_key_t **keys_p, int count)
{
    if (!keys_p || !*keys_p)
        return;
    for (int i = 0; i < count; i++)
        cf_db_api_key_clear(&(*keys_p)[i]);
    free(*keys_p);
    *keys_p = NULL;
}

/* ====================================================================== tenancy */

int cf_db_composition_owner(cf_db_t *db, const char *id, char *owner, size_t ownerlen, char *err,
                            size_t errlen)
{
    const char *params[] = {id};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_OWNER, 1, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return cf_dbi_not_found("composition", id, err, errlen);
    }
    snprintf(owner, ownerlen, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return CF_DB_OK;
}

int cf_db_blob_record(cf_db_t *db, const char *hash, const char *key_id, const char *node_id,
                      int64_t size_bytes, char *err, size_t errlen)
{
    char size[24];
    snprintf(size, sizeof size, "%lld", (long long)size_bytes);
    const char *params[] = {hash, key_id ? key_id : "", node_id, size};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_BLOB_RECORD, 4, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    PQclear(res);
    return CF_DB_OK;
}

int cf_db_blob_usage(cf_db_t *db, const char *key_id, int64_t *bytes_p, char *err, size_t errlen)
{
    *bytes_p = 0;
    const char *params[] = {key_id ? key_id : ""};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_BLOB_USAGE, 1, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) == 1)
        *bytes_p = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return CF_DB_OK;
}

int cf_db_blob_owned(cf_db_t *db, const char *hash, const char *key_id, bool *owned_p, char *err,
                     size_t errlen)
{
    *owned_p = false;
    const char *params[] = {hash, key_id ? key_id : ""};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_BLOB_OWNED, 2, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    *owned_p = PQntuples(res) > 0;
    PQclear(res);
    return CF_DB_OK;
}

int cf_db_blob_gc(cf_db_t *db, const char *node_id, int keep_s, int max_rows, char ***hashes_p,
                  int *count_p, char *err, size_t errlen)
{
    *hashes_p = NULL;
    *count_p = 0;
    char keep[24], max[16];
    snprintf(keep, sizeof keep, "%d", keep_s);
    snprintf(max, sizeof max, "%d", max_rows);
    const char *params[] = {node_id, keep, max};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_BLOB_GC, 3, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    char **hashes = calloc((size_t)rows + 1, sizeof *hashes);
    if (!hashes) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    for (int i = 0; i < rows; i++)
        hashes[i] = strdup(PQgetvalue(res, i, 0));
    PQclear(res);
    *hashes_p = hashes;
    *count_p = rows;
    return CF_DB_OK;
}

void cf_db_strings_free(char ***items_p, int count)
{
    if (!items_p || !*items_p)
        return;
    for (int i = 0; i < count; i++)
        free((*items_p)[i]);
    free(*items_p);
    *items_p = NULL;
}
