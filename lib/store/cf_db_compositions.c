/* cf_db_compositions: the compositions table: create, get, list, state
 * transitions (with their lost-answer check, claims and the caller's
 * operation ids), cancel, progress, output, counts, the queued list and the
 * retention purge. */
#define _GNU_SOURCE
#include "cf_db.h"
#include "cf_db_internal.h"

#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cf_db_composition_create(cf_db_t *db, const cf_db_composition_new_t *comp,
                             char id_out[CF_DB_ID_LEN], bool *existed, char *err, size_t errlen)
{
    if (existed)
        *existed = false;
    const char *priority = cf_priority_name(comp->priority);
    if (!priority) {
        snprintf(err, errlen, "invalid priority");
        return CF_DB_INVALID;
    }
    if (comp->initial_state != CF_STATE_PENDING && comp->initial_state != CF_STATE_QUEUED) {
        snprintf(err, errlen, "a new composition is pending or queued");
        return CF_DB_INVALID;
    }
    if (!comp->spec_json) {
        snprintf(err, errlen, "no composition spec");
        return CF_DB_INVALID;
    }
    if (comp->idempotency_key && !comp->request_hash) {
        snprintf(err, errlen, "an idempotency key needs the request hash");
        return CF_DB_INVALID;
    }
    const char *params[] = {comp->title,
                            priority,
                            comp->spec_json,
                            comp->api_key_id,
                            comp->idempotency_key,
                            comp->request_hash,
                            cf_state_status(comp->initial_state)};
    /* Twice at most: an idempotent twin can be deleted (retention) between
     * our conflicting insert and the lookup. */
    for (int attempt = 0; attempt < 2; attempt++) {
        PGresult *res = NULL;
        int rc = cf_dbi_exec(db, CF_DBI_CREATE, 7, params, NULL, NULL, &res, err, errlen);
        if (rc < 0)
            return rc;
        if (PQntuples(res) == 1) {
            snprintf(id_out, CF_DB_ID_LEN, "%s", PQgetvalue(res, 0, 0));
            int64_t version = cf_dbi_int64(res, 0, 1);
            PQclear(res);
            cf_dbi_notify(db, id_out, version, comp->initial_state, 0, "created");
            return CF_DB_OK;
        }
        PQclear(res);
        /* The key was taken (ON CONFLICT waited for that transaction to
         * commit, so a new statement sees the row). */
        const char *find[] = {comp->api_key_id, comp->idempotency_key};
        rc = cf_dbi_exec(db, CF_DBI_FIND_IDEMPOTENT, 2, find, NULL, NULL, &res, err, errlen);
        if (rc < 0)
            return rc;
        if (PQntuples(res) == 1) {
            bool same = !strcmp(PQgetvalue(res, 0, 1), comp->request_hash);
            snprintf(id_out, CF_DB_ID_LEN, "%s", PQgetvalue(res, 0, 0));
            PQclear(res);
            if (!same) {
                snprintf(err, errlen,
                         "idempotency key '%.64s' was already used with a different request",
                         comp->idempotency_key);
                return CF_DB_CONFLICT;
            }
            if (existed)
                *existed = true;
            return CF_DB_OK;
        }
        PQclear(res);
    }
    snprintf(err, errlen, "idempotency key '%.64s' is contended", comp->idempotency_key);
    return CF_DB_CONFLICT;
}

int cf_db_composition_get_json(cf_db_t *db, const char *id, char **json_p, int64_t *version_p,
                               char *err, size_t errlen)
{
    *json_p = NULL;
    if (!cf_dbi_valid_uuid(id))
        return cf_dbi_not_found("composition", id, err, errlen);
    PGresult *res = NULL;
    const char *params[] = {id};
    int rc = cf_dbi_exec(db, CF_DBI_GET_JSON, 1, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return cf_dbi_not_found("composition", id, err, errlen);
    }
    *json_p = strdup(PQgetvalue(res, 0, 0));
    if (version_p)
        *version_p = cf_dbi_int64(res, 0, 1);
    PQclear(res);
    return *json_p ? CF_DB_OK : CF_DB_ERROR;
}

void cf_db_composition_clear(cf_db_composition_t *comp)
{
    if (!comp)
        return;
    free(comp->title);
    free(comp->spec_json);
    free(comp->api_key_id);
    free(comp->error_code);
    free(comp->error_message);
    free(comp->output_location);
    free(comp->output_hash);
    memset(comp, 0, sizeof *comp);
}

int cf_db_composition_get(cf_db_t *db, const char *id, cf_db_composition_t *comp, char *err,
                          size_t errlen)
{
    memset(comp, 0, sizeof *comp);
    if (!cf_dbi_valid_uuid(id))
        return cf_dbi_not_found("composition", id, err, errlen);
    PGresult *res = NULL;
    const char *params[] = {id};
    int rc = cf_dbi_exec(db, CF_DBI_GET, 1, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return cf_dbi_not_found("composition", id, err, errlen);
    }
    snprintf(comp->id, sizeof comp->id, "%s", id);
    comp->title = cf_dbi_strdup_or_null(res, 0, 0);
    if (cf_state_from_columns(PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2), &comp->state) < 0 ||
        cf_priority_parse(PQgetvalue(res, 0, 3), &comp->priority) < 0) {
        PQclear(res);
        cf_db_composition_clear(comp);
        snprintf(err, errlen, "composition '%s' has an unknown status or priority", id);
        return CF_DB_ERROR;
    }
    comp->spec_json = cf_dbi_strdup_or_null(res, 0, 4);
    comp->progress = cf_dbi_double(res, 0, 5);
    comp->attempts = (int)cf_dbi_int64(res, 0, 6);
    comp->version = cf_dbi_int64(res, 0, 7);
    comp->api_key_id = cf_dbi_strdup_or_null(res, 0, 8);
    comp->error_code = cf_dbi_strdup_or_null(res, 0, 9);
    comp->error_message = cf_dbi_strdup_or_null(res, 0, 10);
    comp->output_location = cf_dbi_strdup_or_null(res, 0, 11);
    comp->output_size_bytes = cf_dbi_int64(res, 0, 12);
    comp->output_duration_s = cf_dbi_double(res, 0, 13);
    comp->output_hash = cf_dbi_strdup_or_null(res, 0, 14);
    PQclear(res);
    return CF_DB_OK;
}

/* Cursor: base64url of "v1:<microseconds since epoch>:<uuid>". Opaque to
 * clients; only this module reads it. */
char *cf_db_cursor_encode(const char *epoch_us, const char *id)
{
    char plain[128];
    int n = snprintf(plain, sizeof plain, "v1:%s:%s", epoch_us, id);
    if (n < 0 || (size_t)n >= sizeof plain)
        return NULL;
    size_t len = sodium_base64_encoded_len((size_t)n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    char *out = malloc(len);
    if (out)
        sodium_bin2base64(out, len, (const unsigned char *)plain, (size_t)n,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return out;
}

int cf_db_cursor_decode(const char *cursor, char epoch_us[24], char id[CF_DB_ID_LEN])
{
    unsigned char plain[128];
    size_t len = 0;
    if (strlen(cursor) > 160 ||
        sodium_base642bin(plain, sizeof plain - 1, cursor, strlen(cursor), NULL, &len, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0)
        return -1;
    plain[len] = '\0';
    const char *text = (const char *)plain;
    if (strncmp(text, "v1:", 3) || strlen(text) != len)
        return -1;
    const char *num = text + 3;
    const char *colon = strchr(num, ':');
    if (!colon || colon == num || colon - num > 19)
        return -1;
    for (const char *p = num; p < colon; p++)
        if ((*p < '0' || *p > '9') && !(p == num && *p == '-'))
            return -1;
    if (!cf_dbi_valid_uuid(colon + 1))
        return -1;
    snprintf(epoch_us, 24, "%.*s", (int)(colon - num), num);
    snprintf(id, CF_DB_ID_LEN, "%s", colon + 1);
    return 0;
}

int cf_db_composition_list(cf_db_t *db, const char *status, int limit, const char *cursor,
                           char **json_array_p, char **next_cursor_p, char *err, size_t errlen)
{
    return cf_db_composition_list_owned(db, NULL, status, limit, cursor, json_array_p,
                                        next_cursor_p, err, errlen);
}

int cf_db_composition_list_owned(cf_db_t *db, const char *owner, const char *status, int limit,
                                 const char *cursor, char **json_array_p, char **next_cursor_p,
                                 char *err, size_t errlen)
{
    *json_array_p = NULL;
    *next_cursor_p = NULL;
    if (limit < 1 || limit > CF_DB_LIST_MAX) {
        snprintf(err, errlen, "limit must be 1..%d", CF_DB_LIST_MAX);
        return CF_DB_INVALID;
    }
    if (status && !cf_status_is_valid(status)) {
        snprintf(err, errlen,
                 "unknown status '%.32s' (pending, queued, processing, completed, failed, "
                 "cancelled)",
                 status);
        return CF_DB_INVALID;
    }
    char epoch_us[24], after_id[CF_DB_ID_LEN];
    if (cursor && cf_db_cursor_decode(cursor, epoch_us, after_id) < 0) {
        snprintf(err, errlen, "invalid cursor");
        return CF_DB_INVALID;
    }
    /* One row more than asked tells whether another page exists. */
    char fetch[16];
    snprintf(fetch, sizeof fetch, "%d", limit + 1);
    const char *params[5];
    int n = 0;
    cf_dbi_stmt_t stmt;
    if (owner)
        params[n++] = owner;
    if (status)
        params[n++] = status;
    if (cursor) {
        params[n++] = epoch_us;
        params[n++] = after_id;
    }
    params[n++] = fetch;
    if (owner)
        stmt = status ? (cursor ? CF_DBI_LIST_OWNED_STATUS_AFTER : CF_DBI_LIST_OWNED_STATUS)
                      : (cursor ? CF_DBI_LIST_OWNED_AFTER : CF_DBI_LIST_OWNED);
    else
        stmt = status ? (cursor ? CF_DBI_LIST_STATUS_AFTER : CF_DBI_LIST_STATUS)
                      : (cursor ? CF_DBI_LIST_AFTER : CF_DBI_LIST);
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, stmt, n, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    int shown = rows > limit ? limit : rows;
    size_t len = 0;
    FILE *out = open_memstream(json_array_p, &len);
    if (!out) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    fputc('[', out);
    for (int i = 0; i < shown; i++) {
        if (i)
            fputc(',', out);
        fputs(PQgetvalue(res, i, 0), out);
    }
    fputc(']', out);
    fclose(out);
    if (rows > limit)
        *next_cursor_p =
            cf_db_cursor_encode(PQgetvalue(res, shown - 1, 1), PQgetvalue(res, shown - 1, 2));
    PQclear(res);
    if (!*json_array_p || (rows > limit && !*next_cursor_p)) {
        free(*json_array_p);
        *json_array_p = NULL;
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    return CF_DB_OK;
}

typedef struct {
    const char *taker;
    const char *error_code;
    const char *error_message;
    const cf_db_output_t *output;
    const cf_db_as_t *as;       /* claim, caller's op id, reason (may be NULL) */
    const cf_db_claim_t *claim; /* a take's claim (may be NULL) */
} s_transition_extra_t;

static bool s_valid_op(const char *op)
{
    size_t n = op ? strlen(op) : 0;
    if (n < 1 || n > CF_DB_OP_MAX)
        return false;
    for (const char *p = op; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              *p == '_' || *p == '.' || *p == ':' || *p == '-'))
            return false;
    return true;
}

/* Asks whether operation OP committed on composition ID. Returns 1 (yes:
 * *version_p, *progress_p, *now_p and CLAIM_OP (the claim it holds now, ""
 * for none) are set), 0 (no), or -1 (could not tell). */
static int s_op_applied(cf_db_t *db, const char *id, const char *op, int64_t *version_p,
                        double *progress_p, cf_state_t *now_p, char claim_op[CF_DB_OP_MAX + 1])
{
    const char *lookup[] = {id, op};
    PGresult *found = NULL;
    char why[256];
    if (cf_dbi_exec(db, CF_DBI_OP_APPLIED, 2, lookup, NULL, NULL, &found, why, sizeof why) < 0)
        return -1;
    if (PQntuples(found) != 1) {
        PQclear(found);
        return 0;
    }
    *version_p = cf_dbi_int64(found, 0, 0);
    *progress_p = cf_dbi_double(found, 0, 1);
    cf_state_parse(PQgetvalue(found, 0, 2), now_p);
    snprintf(claim_op, CF_DB_OP_MAX + 1, "%s", PQgetvalue(found, 0, 3));
    PQclear(found);
    return 1;
}

/* Runs CF_DBI_TRANSITION. Returns CF_DB_OK, CF_DB_NOT_FOUND, CF_DB_STALE (the
 * caller's claim does not hold), or CF_DB_ILLEGAL with *from_p set. */
static int s_transition(cf_db_t *db, const char *id, cf_state_t to,
                        const s_transition_extra_t *extra, cf_state_t *from_p, char *err,
                        size_t errlen)
{
    if (!cf_dbi_valid_uuid(id))
        return cf_dbi_not_found("composition", id, err, errlen);
    if (!cf_state_name(to)) {
        snprintf(err, errlen, "invalid target state");
        return CF_DB_INVALID;
    }
    const cf_db_as_t *as = extra ? extra->as : NULL;
    const cf_db_claim_t *claim = extra ? extra->claim : NULL;
    const char *caller_op = claim ? claim->token : as ? as->op_id : NULL;
    if ((caller_op && !s_valid_op(caller_op)) || (as && as->claim && !s_valid_op(as->claim))) {
        snprintf(err, errlen, "an operation id or claim is 1 to %d of [0-9A-Za-z_.:-]",
                 CF_DB_OP_MAX);
        return CF_DB_INVALID;
    }
    char size[24] = "", duration[32] = "", ttl[16] = "";
    const cf_db_output_t *out = extra ? extra->output : NULL;
    if (out) {
        snprintf(size, sizeof size, "%" PRId64, out->size_bytes);
        snprintf(duration, sizeof duration, "%.6f", out->duration_s);
    }
    /* Nothing is processing without an expiry: a plain transition to
     * planning gets an ownerless claim of the default lifetime. */
    if (to == CF_STATE_PLANNING)
        snprintf(ttl, sizeof ttl, "%d",
                 claim && claim->ttl_ms > 0 ? claim->ttl_ms : CF_DB_CLAIM_TTL_MS);
    const char *params[16] = {
        id,
        cf_state_name(to),
        cf_state_status(to),
        cf_state_stage(to),
        extra ? extra->taker : NULL,
        extra ? extra->error_code : NULL,
        extra ? extra->error_message : NULL,
        out ? out->location : NULL,
        out ? size : NULL,
        out ? duration : NULL,
        out ? out->hash : NULL,
        NULL,
        as ? as->claim : NULL,
        claim ? claim->owner : NULL,
        ttl[0] ? ttl : NULL,
        as ? as->reason : NULL,
    };
    /* Without the caller's id, a fresh one per call: a repeated delivery of
     * the same queue item is a new call and is refused, while this call can
     * tell its own commit. With it, a retry of the caller's operation is
     * recognised below. */
    char op[CF_DB_OP_MAX + 1];
    if (caller_op) {
        snprintf(op, sizeof op, "%s", caller_op);
    } else {
        unsigned char raw[8];
        randombytes_buf(raw, sizeof raw);
        sodium_bin2hex(op, sizeof op, raw, sizeof raw);
    }
    params[11] = op;
    PGresult *res = NULL;
    bool maybe_applied = false;
    int64_t version = 0;
    double progress = 0;
    cf_state_t now = to;
    char held[CF_DB_OP_MAX + 1];
    int rc = cf_dbi_exec_ex(db, CF_DBI_TRANSITION, 16, params, NULL, NULL, &res, &maybe_applied,
                            err, errlen);
    /* The connection broke after the statement was sent: did it commit?
     * Ask (cf_dbi_exec waits for Postgres to come back, up to the acquire
     * timeout); if not, it can run again, still as this call. */
    for (int tries = 0; rc == CF_DB_UNAVAILABLE && maybe_applied && tries < 3; tries++) {
        int applied = s_op_applied(db, id, op, &version, &progress, &now, held);
        if (applied < 0)
            break; /* still unknown: CF_DB_UNAVAILABLE */
        if (applied) {
            if (from_p)
                *from_p = CF_STATE_COUNT; /* unknown: the answer was lost */
            cf_dbi_notify(db, id, version, now, progress, "status");
            return CF_DB_OK;
        }
        rc = cf_dbi_exec_ex(db, CF_DBI_TRANSITION, 16, params, NULL, NULL, &res, &maybe_applied,
                            err, errlen);
    }
    if (rc == CF_DB_ILLEGAL) {
        /* The trigger refused (only reachable through a race the WHERE
         * clause did not see): same answer as the WHERE clause gives. */
        return rc;
    }
    if (rc < 0)
        return rc;
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        PQclear(res);
        return cf_dbi_not_found("composition", id, err, errlen);
    }
    cf_state_t from = CF_STATE_PENDING;
    cf_state_parse(PQgetvalue(res, 0, 0), &from);
    if (from_p)
        *from_p = from;
    if (PQgetisnull(res, 0, 1)) {
        bool claim_lost = as && as->claim && strcmp(PQgetvalue(res, 0, 3), as->claim);
        PQclear(res);
        /* Refused: was it the caller's own earlier attempt, whose answer
         * was lost? Then that is this call's outcome. A take counts only
         * while the claim it made still holds. */
        if (caller_op) {
            int applied = s_op_applied(db, id, op, &version, &progress, &now, held);
            if (applied > 0 && (!claim || !strcmp(held, op))) {
                cf_dbi_notify(db, id, version, now, progress, "status");
                return CF_DB_OK;
            }
        }
        if (claim_lost) {
            snprintf(err, errlen, "claim lost: composition %s is %s and no longer claimed as %s",
                     id, cf_state_name(from), as->claim);
            return CF_DB_STALE;
        }
        snprintf(err, errlen, "illegal transition: composition %s is %s, cannot become %s", id,
                 cf_state_name(from), cf_state_name(to));
        return CF_DB_ILLEGAL;
    }
    version = cf_dbi_int64(res, 0, 1);
    progress = cf_dbi_double(res, 0, 2);
    PQclear(res);
    cf_dbi_notify(db, id, version, to, progress, "status");
    return CF_DB_OK;
}

int cf_db_composition_transition(cf_db_t *db, const char *id, cf_state_t to, cf_state_t *from_p,
                                 char *err, size_t errlen)
{
    return s_transition(db, id, to, NULL, from_p, err, errlen);
}

int cf_db_composition_transition_as(cf_db_t *db, const char *id, cf_state_t to,
                                    const cf_db_as_t *as, cf_state_t *from_p, char *err,
                                    size_t errlen)
{
    if (to == CF_STATE_PLANNING) {
        snprintf(err, errlen, "taking a composition is cf_db_composition_claim");
        return CF_DB_INVALID;
    }
    s_transition_extra_t extra = {.as = as};
    return s_transition(db, id, to, &extra, from_p, err, errlen);
}

int cf_db_composition_claim(cf_db_t *db, const char *id, const cf_db_claim_t *claim, char *err,
                            size_t errlen)
{
    if (!claim || !claim->owner || !*claim->owner || !claim->token || claim->ttl_ms < 0) {
        snprintf(err, errlen, "a claim needs an owner, a token and a lifetime >= 0");
        return CF_DB_INVALID;
    }
    s_transition_extra_t extra = {
        .taker = claim->taker && *claim->taker ? claim->taker : claim->owner, .claim = claim};
    return s_transition(db, id, CF_STATE_PLANNING, &extra, NULL, err, errlen);
}

int cf_db_composition_take(cf_db_t *db, const char *id, const char *taker, char *err, size_t errlen)
{
    if (!taker || !*taker) {
        snprintf(err, errlen, "a take needs the taker's name");
        return CF_DB_INVALID;
    }
    unsigned char raw[8];
    char token[17];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(token, sizeof token, raw, sizeof raw);
    cf_db_claim_t claim = {.owner = taker, .taker = taker, .token = token};
    return cf_db_composition_claim(db, id, &claim, err, errlen);
}

int cf_db_composition_complete(cf_db_t *db, const char *id, const cf_db_output_t *output, char *err,
                               size_t errlen)
{
    return cf_db_composition_complete_as(db, id, output, NULL, err, errlen);
}

int cf_db_composition_complete_as(cf_db_t *db, const char *id, const cf_db_output_t *output,
                                  const cf_db_as_t *as, char *err, size_t errlen)
{
    s_transition_extra_t extra = {.output = output, .as = as};
    return s_transition(db, id, CF_STATE_COMPLETED, &extra, NULL, err, errlen);
}

int cf_db_composition_fail(cf_db_t *db, const char *id, const char *code, const char *message,
                           char *err, size_t errlen)
{
    return cf_db_composition_fail_as(db, id, code, message, NULL, err, errlen);
}

int cf_db_composition_fail_as(cf_db_t *db, const char *id, const char *code, const char *message,
                              const cf_db_as_t *as, char *err, size_t errlen)
{
    if (!code || !*code) {
        snprintf(err, errlen, "an error code is required");
        return CF_DB_INVALID;
    }
    s_transition_extra_t extra = {
        .error_code = code, .error_message = message ? message : "", .as = as};
    cf_state_t from;
    int rc = s_transition(db, id, CF_STATE_FAILED, &extra, &from, err, errlen);
    if (rc == CF_DB_ILLEGAL && cf_state_is_terminal(from))
        rc = CF_DB_TERMINAL;
    return rc;
}

int cf_db_composition_cancel(cf_db_t *db, const char *id, cf_state_t *from_p, char *err,
                             size_t errlen)
{
    cf_state_t from = CF_STATE_PENDING;
    int rc = s_transition(db, id, CF_STATE_CANCELLED, NULL, &from, err, errlen);
    if (from_p)
        *from_p = from;
    if (rc == CF_DB_ILLEGAL && cf_state_is_terminal(from)) {
        snprintf(err, errlen, "composition %s is already %s", id, cf_state_name(from));
        rc = CF_DB_TERMINAL;
    }
    return rc;
}

/* Result of CF_DBI_PROGRESS / CF_DBI_OUTPUT: (state before, new version, progress,
 * state after). */
static int s_processing_update(cf_db_t *db, cf_dbi_stmt_t stmt, const char *id, int nparams,
                               const char *const *params, const char *event, char *err,
                               size_t errlen)
{
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, stmt, nparams, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        PQclear(res);
        return cf_dbi_not_found("composition", id, err, errlen);
    }
    if (PQgetisnull(res, 0, 1)) {
        snprintf(err, errlen, "composition %s is %s, not processing", id, PQgetvalue(res, 0, 0));
        PQclear(res);
        return CF_DB_ILLEGAL;
    }
    cf_state_t state = CF_STATE_PLANNING;
    cf_state_parse(PQgetvalue(res, 0, 3), &state);
    int64_t version = cf_dbi_int64(res, 0, 1);
    double progress = cf_dbi_double(res, 0, 2);
    PQclear(res);
    cf_dbi_notify(db, id, version, state, progress, event);
    return CF_DB_OK;
}

int cf_db_composition_set_progress(cf_db_t *db, const char *id, double progress, char *err,
                                   size_t errlen)
{
    if (!cf_dbi_valid_uuid(id))
        return cf_dbi_not_found("composition", id, err, errlen);
    if (!(progress >= 0 && progress <= 1)) {
        snprintf(err, errlen, "progress must be within 0..1");
        return CF_DB_INVALID;
    }
    char value[32];
    snprintf(value, sizeof value, "%.6f", progress);
    const char *params[] = {id, value};
    return s_processing_update(db, CF_DBI_PROGRESS, id, 2, params, "progress", err, errlen);
}

int cf_db_composition_set_output(cf_db_t *db, const char *id, const cf_db_output_t *output,
                                 char *err, size_t errlen)
{
    if (!cf_dbi_valid_uuid(id))
        return cf_dbi_not_found("composition", id, err, errlen);
    if (!output || !output->location) {
        snprintf(err, errlen, "an output location is required");
        return CF_DB_INVALID;
    }
    char size[24], duration[32];
    snprintf(size, sizeof size, "%" PRId64, output->size_bytes);
    snprintf(duration, sizeof duration, "%.6f", output->duration_s);
    const char *params[] = {id, output->location, size, duration, output->hash};
    return s_processing_update(db, CF_DBI_OUTPUT, id, 5, params, "output", err, errlen);
}

int cf_db_composition_counts(cf_db_t *db, int64_t counts[CF_STATE_COUNT], char *err, size_t errlen)
{
    for (int i = 0; i < CF_STATE_COUNT; i++)
        counts[i] = 0;
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_COUNTS, 0, NULL, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    for (int i = 0; i < PQntuples(res); i++) {
        cf_state_t state;
        if (cf_state_parse(PQgetvalue(res, i, 0), &state) == 0)
            counts[state] = cf_dbi_int64(res, i, 1);
    }
    PQclear(res);
    return CF_DB_OK;
}

int cf_db_composition_queued(cf_db_t *db, int max, cf_db_queued_t **items_p, int *count_p,
                             char *err, size_t errlen)
{
    *items_p = NULL;
    *count_p = 0;
    if (max < 1) {
        snprintf(err, errlen, "max must be positive");
        return CF_DB_INVALID;
    }
    char limit[16];
    snprintf(limit, sizeof limit, "%d", max);
    const char *params[] = {limit};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_QUEUED, 1, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    cf_db_queued_t *items = calloc((size_t)rows + 1, sizeof *items);
    if (!items) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    for (int i = 0; i < rows; i++) {
        snprintf(items[i].id, sizeof items[i].id, "%s", PQgetvalue(res, i, 0));
        if (cf_priority_parse(PQgetvalue(res, i, 1), &items[i].priority) < 0)
            items[i].priority = CF_PRIORITY_DEFAULT;
    }
    PQclear(res);
    *items_p = items;
    *count_p = rows;
    return CF_DB_OK;
}

int cf_db_purge_expired(cf_db_t *db, int completed_keep_s, int failed_keep_s,
                        int idempotency_keep_s, int max_rows, cf_db_purged_t **purged_p,
                        int *count_p, char *err, size_t errlen)
{
    *purged_p = NULL;
    *count_p = 0;
    if (completed_keep_s < 0 || failed_keep_s < 0 || idempotency_keep_s < 0 || max_rows < 1) {
        snprintf(err, errlen, "retention times must be >= 0 and max_rows positive");
        return CF_DB_INVALID;
    }
    char keep_completed[16], keep_failed[16], limit[16];
    snprintf(keep_completed, sizeof keep_completed, "%d", completed_keep_s);
    snprintf(keep_failed, sizeof keep_failed, "%d", failed_keep_s);
    snprintf(limit, sizeof limit, "%d", max_rows);
    char keep_keys[16];
    snprintf(keep_keys, sizeof keep_keys, "%d", idempotency_keep_s);
    const char *params[] = {keep_completed, keep_failed, limit, keep_keys};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_PURGE, 4, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    cf_db_purged_t *purged = calloc((size_t)rows + 1, sizeof *purged);
    if (!purged) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    for (int i = 0; i < rows; i++) {
        snprintf(purged[i].id, sizeof purged[i].id, "%s", PQgetvalue(res, i, 0));
        cf_state_parse(PQgetvalue(res, i, 1), &purged[i].state);
        purged[i].output_location = cf_dbi_strdup_or_null(res, i, 2);
    }
    PQclear(res);
    *purged_p = purged;
    *count_p = rows;
    return CF_DB_OK;
}

void cf_db_purged_free(cf_db_purged_t **purged_p, int count)
{
    if (!purged_p || !*purged_p)
        return;
    for (int i = 0; i < count; i++)
        free((*purged_p)[i].output_location);
    free(*purged_p);
    *purged_p = NULL;
}
