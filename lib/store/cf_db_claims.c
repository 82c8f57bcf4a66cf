/* cf_db_claims: claims on processing compositions (sql/023_claims.sql):
 * the owner's renewal and the coordinator's expiry sweep. Taking (which
 * makes a claim) is a transition, in cf_db_compositions.c. */
#define _GNU_SOURCE
#include "cf_db.h"
#include "cf_db_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A token goes into a text[] literal unquoted: only characters that need
 * no quoting there (the cf_db_as_t alphabet, no comma, brace or quote). */
static bool s_valid_token(const char *token)
{
    size_t n = token ? strlen(token) : 0;
    if (n < 1 || n > CF_DB_OP_MAX)
        return false;
    for (const char *p = token; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              *p == '_' || *p == '.' || *p == ':' || *p == '-'))
            return false;
    return true;
}

int cf_db_claims_renew(cf_db_t *db, const char *owner, const char *const *tokens, int count,
                       int ttl_ms, bool *held, char *err, size_t errlen)
{
    for (int i = 0; held && i < count; i++)
        held[i] = false;
    if (!owner || !*owner || count < 0 || ttl_ms < 1) {
        snprintf(err, errlen, "a renewal needs the owner and a positive lifetime");
        return CF_DB_INVALID;
    }
    if (count == 0)
        return CF_DB_OK;
    /* {a,b,c}: tokens are checked to need no quoting. */
    size_t len = 3;
    for (int i = 0; i < count; i++) {
        if (!s_valid_token(tokens[i])) {
            snprintf(err, errlen, "invalid claim token");
            return CF_DB_INVALID;
        }
        len += strlen(tokens[i]) + 1;
    }
    char *array = malloc(len);
    if (!array) {
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    size_t at = 0;
    array[at++] = '{';
    for (int i = 0; i < count; i++) {
        if (i)
            array[at++] = ',';
        size_t n = strlen(tokens[i]);
        memcpy(array + at, tokens[i], n);
        at += n;
    }
    array[at++] = '}';
    array[at] = '\0';
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%d", ttl_ms);
    const char *params[] = {owner, array, ttl};
    PGresult *res = NULL;
    /* Renewing again after a lost answer is harmless: the statement only
     * moves an unexpired claim's expiry later. */
    int rc = cf_dbi_exec(db, CF_DBI_CLAIMS_RENEW, 3, params, NULL, NULL, &res, err, errlen);
    free(array);
    if (rc < 0)
        return rc;
    for (int r = 0; held && r < PQntuples(res); r++) {
        const char *renewed = PQgetvalue(res, r, 0);
        for (int i = 0; i < count; i++)
            if (!strcmp(renewed, tokens[i]))
                held[i] = true;
    }
    PQclear(res);
    return CF_DB_OK;
}

int cf_db_claims_expire(cf_db_t *db, const char *sweeper, int max_expiries, int max_rows,
                        cf_db_expired_t **items_p, int *count_p, char *err, size_t errlen)
{
    *items_p = NULL;
    *count_p = 0;
    if (!sweeper || !*sweeper || max_expiries < 0 || max_rows < 1) {
        snprintf(err, errlen, "the sweep needs its name, max_expiries >= 0 and max_rows >= 1");
        return CF_DB_INVALID;
    }
    char expiries[16], limit[16];
    snprintf(expiries, sizeof expiries, "%d", max_expiries);
    snprintf(limit, sizeof limit, "%d", max_rows);
    const char *params[] = {sweeper, expiries, limit};
    PGresult *res = NULL;
    /* A lost answer leaves the outcome unknown (CF_DB_UNAVAILABLE): what it
     * requeued is queued in Postgres, and the reconcile pushes it. */
    int rc = cf_dbi_exec(db, CF_DBI_CLAIMS_EXPIRE, 3, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    cf_db_expired_t *items = calloc((size_t)rows + 1, sizeof *items);
    if (!items) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    for (int i = 0; i < rows; i++) {
        cf_db_expired_t *e = &items[i];
        snprintf(e->id, sizeof e->id, "%s", PQgetvalue(res, i, 0));
        if (cf_priority_parse(PQgetvalue(res, i, 1), &e->priority) < 0)
            e->priority = CF_PRIORITY_DEFAULT;
        if (cf_state_parse(PQgetvalue(res, i, 2), &e->state) < 0)
            e->state = CF_STATE_QUEUED;
        snprintf(e->owner, sizeof e->owner, "%s", PQgetvalue(res, i, 5));
        cf_dbi_notify(db, e->id, cf_dbi_int64(res, i, 3), e->state, cf_dbi_double(res, i, 4),
                      "status");
    }
    PQclear(res);
    *items_p = items;
    *count_p = rows;
    return CF_DB_OK;
}
