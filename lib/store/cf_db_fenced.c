/* cf_db_fenced: a coordinator's writes to segments and compositions, each
 * fenced by its lease in the statement itself (S_FENCE in
 * cf_db_statements.c), and a worker's results, checked against the
 * assignment token. See "fenced writes" in cf_db.h. */
#define _GNU_SOURCE
#include "cf_db.h"
#include "cf_db_internal.h"

#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A token names an epoch (>= 1) and a node id (a UUID). */
static bool s_token_valid(const cf_fence_token_t *token, char *err, size_t errlen)
{
    if (token && token->epoch >= 1 && cf_dbi_valid_uuid(token->holder))
        return true;
    snprintf(err, errlen, "a fence token needs an epoch >= 1 and the holder's node id");
    return false;
}

static int s_stale(const cf_fence_token_t *token, char *err, size_t errlen)
{
    snprintf(err, errlen, "epoch %" PRId64 " of %s no longer holds the coordinator lease",
             token->epoch, token->holder);
    return CF_DB_STALE;
}

int cf_db_segments_create_fenced(cf_db_t *db, const cf_fence_token_t *token,
                                 const char *composition_id, const cf_db_segment_plan_t *plan,
                                 int count, char *err, size_t errlen)
{
    if (!s_token_valid(token, err, errlen))
        return CF_DB_INVALID;
    if (!cf_dbi_valid_uuid(composition_id))
        return cf_dbi_not_found("composition", composition_id, err, errlen);
    char *rows_json = NULL;
    int rc = cf_dbi_plan_json(plan, count, &rows_json, err, errlen);
    if (rc < 0)
        return rc;
    char epoch[24];
    snprintf(epoch, sizeof epoch, "%" PRId64, token->epoch);
    const char *params[] = {composition_id, epoch, rows_json, token->holder};
    PGresult *res = NULL;
    rc = cf_dbi_exec(db, CF_DBI_SEGMENTS_CREATE_FENCED, 4, params, NULL, NULL, &res, err, errlen);
    free(rows_json);
    if (rc == CF_DB_CONFLICT) {
        snprintf(err, errlen, "composition %s already has segments (or a plan repeats an index)",
                 composition_id);
        return rc;
    }
    if (rc < 0)
        return rc;
    bool found = cf_dbi_int64(res, 0, 0) == 1, fenced = cf_dbi_int64(res, 0, 1) == 1;
    PQclear(res);
    if (!found)
        return cf_dbi_not_found("composition", composition_id, err, errlen);
    return fenced ? CF_DB_OK : s_stale(token, err, errlen);
}

int cf_db_segment_update_fenced(cf_db_t *db, const cf_fence_token_t *token,
                                const char *composition_id, int index,
                                const cf_db_segment_update_t *update, char *err, size_t errlen)
{
    if (!s_token_valid(token, err, errlen))
        return CF_DB_INVALID;
    return cf_dbi_segment_update(db, composition_id, index, token->epoch, token->holder, update,
                                 err, errlen);
}

int cf_db_segment_assign_fenced(cf_db_t *db, const cf_fence_token_t *token,
                                const char *composition_id, int index, const char *node,
                                cf_db_assignment_t *assignment, char *err, size_t errlen)
{
    memset(assignment, 0, sizeof *assignment);
    if (!s_token_valid(token, err, errlen))
        return CF_DB_INVALID;
    if (!node || !*node || strlen(node) >= sizeof assignment->node) {
        snprintf(err, errlen, "an assignment needs the node's id");
        return CF_DB_INVALID;
    }
    if (!cf_dbi_valid_uuid(composition_id))
        return cf_dbi_not_found("composition", composition_id, err, errlen);
    char idx[16], epoch[24];
    snprintf(idx, sizeof idx, "%d", index);
    snprintf(epoch, sizeof epoch, "%" PRId64, token->epoch);
    const char *params[] = {composition_id, idx, epoch, token->holder, node};
    PGresult *res = NULL;
    int rc =
        cf_dbi_exec(db, CF_DBI_SEGMENT_ASSIGN_FENCED, 5, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        snprintf(err, errlen, "no segment %d of composition %s", index, composition_id);
        return CF_DB_NOT_FOUND;
    }
    /* (segment epoch, status, fence passed, attempts after) */
    int64_t seg_epoch = cf_dbi_int64(res, 0, 0);
    bool done = !strcmp(PQgetvalue(res, 0, 1), "done");
    bool fenced = cf_dbi_int64(res, 0, 2) == 1;
    bool assigned = !PQgetisnull(res, 0, 3);
    int attempt = (int)cf_dbi_int64(res, 0, 3);
    PQclear(res);
    if (assigned) {
        *assignment = (cf_db_assignment_t){.epoch = token->epoch, .attempt = attempt};
        snprintf(assignment->node, sizeof assignment->node, "%s", node);
        return CF_DB_OK;
    }
    if (!fenced)
        return s_stale(token, err, errlen);
    if (done) {
        snprintf(err, errlen, "segment %d of %s is done", index, composition_id);
        return CF_DB_ILLEGAL;
    }
    snprintf(err, errlen, "segment %d of %s belongs to epoch %" PRId64 ", not %" PRId64, index,
             composition_id, seg_epoch, token->epoch);
    return CF_DB_STALE;
}

int cf_db_segment_report(cf_db_t *db, const cf_fence_token_t *token,
                         const cf_db_assignment_t *assignment, const char *composition_id,
                         int index, const cf_db_segment_update_t *update, char *err, size_t errlen)
{
    if (token && !s_token_valid(token, err, errlen))
        return CF_DB_INVALID;
    if (!assignment || assignment->epoch < 1 || assignment->attempt < 1 || !assignment->node[0]) {
        snprintf(err, errlen, "a result needs its assignment token (epoch, attempt, node)");
        return CF_DB_INVALID;
    }
    unsigned f = update->fields;
    if ((f & CF_SEG_F_STATE) && update->state != CF_SEG_ENCODING && update->state != CF_SEG_DONE &&
        update->state != CF_SEG_FAILED) {
        snprintf(err, errlen, "a worker reports encoding, done or failed");
        return CF_DB_INVALID;
    }
    if ((f & CF_SEG_F_PROGRESS) && !(update->progress >= 0 && update->progress <= 1)) {
        snprintf(err, errlen, "progress must be within 0..1");
        return CF_DB_INVALID;
    }
    if (!cf_dbi_valid_uuid(composition_id))
        return cf_dbi_not_found("composition", composition_id, err, errlen);
    char idx[16], a_epoch[24], attempt[16], progress[32], size[24], fps[32], fetch[24], encode[24],
        f_epoch[24] = "";
    snprintf(idx, sizeof idx, "%d", index);
    snprintf(a_epoch, sizeof a_epoch, "%" PRId64, assignment->epoch);
    snprintf(attempt, sizeof attempt, "%d", assignment->attempt);
    snprintf(progress, sizeof progress, "%.6f", update->progress);
    snprintf(size, sizeof size, "%" PRId64, update->size_bytes);
    snprintf(fps, sizeof fps, "%.3f", update->encode_fps);
    snprintf(fetch, sizeof fetch, "%" PRId64, update->fetch_ms);
    snprintf(encode, sizeof encode, "%" PRId64, update->encode_ms);
    if (token)
        snprintf(f_epoch, sizeof f_epoch, "%" PRId64, token->epoch);
    const char *params[14] = {
        composition_id,
        idx,
        a_epoch,
        attempt,
        assignment->node,
        (f & CF_SEG_F_STATE) ? cf_seg_state_name(update->state) : NULL,
        (f & CF_SEG_F_PROGRESS) ? progress : NULL,
        (f & CF_SEG_F_BLOB) ? update->blob_hash : NULL,
        (f & CF_SEG_F_BLOB) ? size : NULL,
        (f & CF_SEG_F_FPS) ? fps : NULL,
        (f & CF_SEG_F_TIMINGS) ? fetch : NULL,
        (f & CF_SEG_F_TIMINGS) ? encode : NULL,
        token ? f_epoch : NULL,
        token ? token->holder : NULL,
    };
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_SEGMENT_REPORT, 14, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        snprintf(err, errlen, "no segment %d of composition %s", index, composition_id);
        return CF_DB_NOT_FOUND;
    }
    /* (status, token is the current assignment, same blob, fence passed, updated) */
    bool done = !strcmp(PQgetvalue(res, 0, 0), "done");
    bool current = !strcmp(PQgetvalue(res, 0, 1), "t");
    bool same_blob = !strcmp(PQgetvalue(res, 0, 2), "t");
    bool fenced = cf_dbi_int64(res, 0, 3) == 1;
    bool updated = cf_dbi_int64(res, 0, 4) == 1;
    PQclear(res);
    if (updated)
        return CF_DB_OK;
    if (token && !fenced)
        return s_stale(token, err, errlen);
    if (done) {
        if (current && (f & CF_SEG_F_STATE) && update->state == CF_SEG_DONE && same_blob)
            return CF_DB_OK; /* its own done again: nothing to write */
        snprintf(err, errlen, "segment %d of %s is done: its result is final", index,
                 composition_id);
        return CF_DB_ILLEGAL;
    }
    snprintf(err, errlen,
             "segment %d of %s: the result of attempt %d (epoch %" PRId64
             ", node %s) is not for its current assignment",
             index, composition_id, assignment->attempt, assignment->epoch, assignment->node);
    return CF_DB_STALE;
}

int cf_db_composition_transition_fenced(cf_db_t *db, const cf_fence_token_t *token, const char *id,
                                        cf_state_t to, const cf_db_output_t *output,
                                        const char *code, const char *message, cf_state_t *from_p,
                                        char *err, size_t errlen)
{
    if (from_p)
        *from_p = CF_STATE_COUNT;
    if (!s_token_valid(token, err, errlen))
        return CF_DB_INVALID;
    if (!cf_dbi_valid_uuid(id))
        return cf_dbi_not_found("composition", id, err, errlen);
    if (!cf_state_name(to)) {
        snprintf(err, errlen, "invalid target state");
        return CF_DB_INVALID;
    }
    char epoch[24], size[24] = "", duration[32] = "";
    snprintf(epoch, sizeof epoch, "%" PRId64, token->epoch);
    if (output) {
        snprintf(size, sizeof size, "%" PRId64, output->size_bytes);
        snprintf(duration, sizeof duration, "%.6f", output->duration_s);
    }
    /* An operation id per call: after a lost answer, this call can tell
     * its own commit from anyone else's. */
    unsigned char raw[8];
    char op[17];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(op, sizeof op, raw, sizeof raw);
    const char *params[13] = {
        id,
        cf_state_name(to),
        cf_state_status(to),
        cf_state_stage(to),
        epoch,
        token->holder,
        code,
        code ? (message ? message : "") : NULL,
        output ? output->location : NULL,
        output ? size : NULL,
        output ? duration : NULL,
        output ? output->hash : NULL,
        op,
    };
    PGresult *res = NULL;
    bool maybe_applied = false;
    int rc = cf_dbi_exec_ex(db, CF_DBI_TRANSITION_FENCED, 13, params, NULL, NULL, &res,
                            &maybe_applied, err, errlen);
    for (int tries = 0; rc == CF_DB_UNAVAILABLE && maybe_applied && tries < 3; tries++) {
        const char *lookup[] = {id, op};
        PGresult *found = NULL;
        char why[256];
        if (cf_dbi_exec(db, CF_DBI_OP_APPLIED, 2, lookup, NULL, NULL, &found, why, sizeof why) < 0)
            break; /* still unknown: CF_DB_UNAVAILABLE */
        if (PQntuples(found) == 1) {
            int64_t version = cf_dbi_int64(found, 0, 0);
            double progress = cf_dbi_double(found, 0, 1);
            cf_state_t now = to;
            cf_state_parse(PQgetvalue(found, 0, 2), &now);
            PQclear(found);
            cf_dbi_notify(db, id, version, now, progress, "status");
            return CF_DB_OK;
        }
        PQclear(found);
        /* Not committed: run it again (it checks the lease again). */
        rc = cf_dbi_exec_ex(db, CF_DBI_TRANSITION_FENCED, 13, params, NULL, NULL, &res,
                            &maybe_applied, err, errlen);
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
    bool fenced = cf_dbi_int64(res, 0, 1) == 1;
    if (PQgetisnull(res, 0, 2)) {
        PQclear(res);
        if (!fenced)
            return s_stale(token, err, errlen);
        snprintf(err, errlen, "illegal transition: composition %s is %s, cannot become %s", id,
                 cf_state_name(from), cf_state_name(to));
        return CF_DB_ILLEGAL;
    }
    int64_t version = cf_dbi_int64(res, 0, 2);
    double progress = cf_dbi_double(res, 0, 3);
    PQclear(res);
    cf_dbi_notify(db, id, version, to, progress, "status");
    return CF_DB_OK;
}
