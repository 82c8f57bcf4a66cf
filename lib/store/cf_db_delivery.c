/* cf_db_delivery: where a finished output went and who is told: the S3
 * location of an output and the webhook delivery queue (claim, finish). */
#define _GNU_SOURCE
#include "cf_db.h"
#include "cf_db_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cf_db_composition_set_s3_location(cf_db_t *db, const char *id, const char *location, char *err,
                                      size_t errlen)
{
    const char *params[] = {id, location};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_S3_LOCATION, 2, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    PQclear(res);
    if (rows != 1) {
        snprintf(err, errlen, "composition %s is no longer processing", id);
        return CF_DB_ILLEGAL;
    }
    return CF_DB_OK;
}

int cf_db_output_referenced(cf_db_t *db, const char *location, bool *used_p, char *err,
                            size_t errlen)
{
    const char *params[] = {location};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_OUTPUT_REFERENCED, 1, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    *used_p = PQntuples(res) == 1 && !strcmp(PQgetvalue(res, 0, 0), "t");
    PQclear(res);
    return CF_DB_OK;
}

int cf_db_webhook_claim(cf_db_t *db, const char *holder, int lease_s, int max,
                        cf_db_webhook_t **items_p, int *count_p, char *err, size_t errlen)
{
    *items_p = NULL;
    *count_p = 0;
    char lease[16], limit[16];
    snprintf(lease, sizeof lease, "%d", lease_s);
    snprintf(limit, sizeof limit, "%d", max);
    const char *params[] = {holder, lease, limit};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_WEBHOOK_CLAIM, 3, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    cf_db_webhook_t *items = calloc((size_t)rows + 1, sizeof *items);
    if (!items) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    for (int i = 0; i < rows; i++) {
        items[i].id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        snprintf(items[i].composition_id, sizeof items[i].composition_id, "%s",
                 PQgetvalue(res, i, 1));
        items[i].api_key_id = strdup(PQgetvalue(res, i, 2));
        items[i].url = strdup(PQgetvalue(res, i, 3));
        items[i].body = strdup(PQgetvalue(res, i, 4));
        items[i].attempts = (int)strtol(PQgetvalue(res, i, 5), NULL, 10);
        items[i].age_s = strtod(PQgetvalue(res, i, 6), NULL);
    }
    PQclear(res);
    *items_p = items;
    *count_p = rows;
    for (int i = 0; i < rows; i++) {
        if (!items[i].api_key_id || !items[i].url || !items[i].body) {
            cf_db_webhooks_free(items_p, rows);
            *count_p = 0;
            snprintf(err, errlen, "out of memory");
            return CF_DB_ERROR;
        }
    }
    return CF_DB_OK;
}

void cf_db_webhooks_free(cf_db_webhook_t **items_p, int count)
{
    if (!items_p || !*items_p)
        return;
    for (int i = 0; i < count; i++) {
        free((*items_p)[i].api_key_id);
        free((*items_p)[i].url);
        free((*items_p)[i].body);
    }
    free(*items_p);
    *items_p = NULL;
}

int cf_db_webhook_finish(cf_db_t *db, int64_t id, const char *holder, bool delivered,
                         int64_t retry_in_ms, bool give_up, char *err, size_t errlen)
{
    char idtext[24], delay[24];
    snprintf(idtext, sizeof idtext, "%lld", (long long)id);
    snprintf(delay, sizeof delay, "%lld", (long long)retry_in_ms);
    PGresult *res = NULL;
    int rc;
    if (delivered || give_up) {
        const char *params[] = {idtext, delivered ? "delivered" : "abandoned", holder};
        rc = cf_dbi_exec(db, CF_DBI_WEBHOOK_DONE, 3, params, NULL, NULL, &res, err, errlen);
    } else {
        const char *params[] = {idtext, delay, holder};
        rc = cf_dbi_exec(db, CF_DBI_WEBHOOK_RETRY, 3, params, NULL, NULL, &res, err, errlen);
    }
    if (rc < 0)
        return rc;
    PQclear(res);
    return CF_DB_OK;
}
