/* cf_db_segments: a composition's segments (the plan, fenced updates, the
 * list) and its event log. */
#define _GNU_SOURCE
#include "cf_db.h"
#include "cf_db_internal.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_json.h"

/* ====================================================================== segments */

int cf_db_segments_create(cf_db_t *db, const char *composition_id, int64_t epoch,
                          const cf_db_segment_plan_t *plan, int count, char *err, size_t errlen)
{
    if (!cf_dbi_valid_uuid(composition_id))
        return cf_dbi_not_found("composition", composition_id, err, errlen);
    if (epoch != 0) {
        snprintf(err, errlen,
                 "a coordinator's plan is written fenced by its lease "
                 "(cf_db_segments_create_fenced)");
        return CF_DB_INVALID;
    }
    char *rows_json = NULL;
    int rc = cf_dbi_plan_json(plan, count, &rows_json, err, errlen);
    if (rc < 0)
        return rc;
    char epoch_text[24];
    snprintf(epoch_text, sizeof epoch_text, "%" PRId64, epoch);
    const char *params[] = {composition_id, epoch_text, rows_json};
    PGresult *res = NULL;
    rc = cf_dbi_exec(db, CF_DBI_SEGMENTS_CREATE, 3, params, NULL, NULL, &res, err, errlen);
    free(rows_json);
    if (rc == CF_DB_CONFLICT) {
        snprintf(err, errlen, "composition %s already has segments (or a plan repeats an index)",
                 composition_id);
        return rc;
    }
    if (rc < 0)
        return rc;
    bool found = cf_dbi_int64(res, 0, 0) == 1;
    PQclear(res);
    return found ? CF_DB_OK : cf_dbi_not_found("composition", composition_id, err, errlen);
}

int cf_dbi_plan_json(const cf_db_segment_plan_t *plan, int count, char **json_p, char *err,
                     size_t errlen)
{
    *json_p = NULL;
    if (count < 1) {
        snprintf(err, errlen, "a plan has at least one segment");
        return CF_DB_INVALID;
    }
    json_t *rows = json_array();
    for (int i = 0; rows && i < count; i++) {
        json_t *sources = NULL;
        if (plan[i].sources_json) {
            json_error_t jerr;
            sources = cf_json_loads(plan[i].sources_json, JSON_DECODE_ANY, &jerr);
            if (!sources) {
                json_decref(rows);
                snprintf(err, errlen, "segment %d: sources are not JSON: %s", plan[i].index,
                         jerr.text);
                return CF_DB_INVALID;
            }
        }
        json_array_append_new(rows, json_pack("{s:i, s:I, s:I, s:o}", "idx", plan[i].index,
                                              "frame_start", (json_int_t)plan[i].frame_start,
                                              "frame_end", (json_int_t)plan[i].frame_end, "sources",
                                              sources ? sources : json_array()));
    }
    char *rows_json = rows ? json_dumps(rows, JSON_COMPACT) : NULL;
    json_decref(rows);
    if (!rows_json) {
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    *json_p = rows_json;
    return CF_DB_OK;
}

int cf_dbi_segment_update(cf_db_t *db, const char *composition_id, int index, int64_t epoch,
                          const char *holder, const cf_db_segment_update_t *update, char *err,
                          size_t errlen)
{
    if (!cf_dbi_valid_uuid(composition_id))
        return cf_dbi_not_found("composition", composition_id, err, errlen);
    unsigned f = update->fields;
    if ((f & CF_SEG_F_STATE) && !cf_seg_state_name(update->state)) {
        snprintf(err, errlen, "invalid segment state");
        return CF_DB_INVALID;
    }
    if ((f & CF_SEG_F_PROGRESS) && !(update->progress >= 0 && update->progress <= 1)) {
        snprintf(err, errlen, "progress must be within 0..1");
        return CF_DB_INVALID;
    }
    char idx[16], ep[24], progress[32], size[24], fps[32], fetch[24], encode[24];
    snprintf(idx, sizeof idx, "%d", index);
    snprintf(ep, sizeof ep, "%" PRId64, epoch);
    snprintf(progress, sizeof progress, "%.6f", update->progress);
    snprintf(size, sizeof size, "%" PRId64, update->size_bytes);
    snprintf(fps, sizeof fps, "%.3f", update->encode_fps);
    snprintf(fetch, sizeof fetch, "%" PRId64, update->fetch_ms);
    snprintf(encode, sizeof encode, "%" PRId64, update->encode_ms);
    const char *params[12] = {
        composition_id,
        idx,
        ep,
        (f & CF_SEG_F_STATE) ? cf_seg_state_name(update->state) : NULL,
        (f & CF_SEG_F_PROGRESS) ? progress : NULL,
        (f & CF_SEG_F_NODE) ? update->node_id : NULL,
        (f & CF_SEG_F_BLOB) ? update->blob_hash : NULL,
        (f & CF_SEG_F_BLOB) ? size : NULL,
        (f & CF_SEG_F_FPS) ? fps : NULL,
        (f & CF_SEG_F_TIMINGS) ? fetch : NULL,
        (f & CF_SEG_F_TIMINGS) ? encode : NULL,
        holder,
    };
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_SEGMENT_UPDATE, 12, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        snprintf(err, errlen, "no segment %d of composition %s", index, composition_id);
        return CF_DB_NOT_FOUND;
    }
    /* (segment epoch, status, updated, fence passed, same blob) */
    int64_t seg_epoch = cf_dbi_int64(res, 0, 0);
    bool done = !strcmp(PQgetvalue(res, 0, 1), "done");
    bool updated = cf_dbi_int64(res, 0, 2) == 1;
    bool fenced_out = holder && cf_dbi_int64(res, 0, 3) != 1;
    bool same_blob = !strcmp(PQgetvalue(res, 0, 4), "t");
    PQclear(res);
    if (updated)
        return CF_DB_OK;
    if (fenced_out) {
        snprintf(err, errlen, "epoch %" PRId64 " of %s no longer holds the coordinator lease",
                 epoch, holder);
        return CF_DB_STALE;
    }
    if (seg_epoch > epoch) {
        snprintf(err, errlen, "segment %d of %s belongs to epoch %" PRId64 ", not %" PRId64, index,
                 composition_id, seg_epoch, epoch);
        return CF_DB_STALE;
    }
    /* Only a done segment is left: write-once. Its done repeated (a lost
     * answer) is no error; nothing was written either way. */
    if (done && (f & CF_SEG_F_STATE) && update->state == CF_SEG_DONE && same_blob)
        return CF_DB_OK;
    snprintf(err, errlen, "segment %d of %s is done: its state and result are final", index,
             composition_id);
    return CF_DB_ILLEGAL;
}

int cf_db_segment_update(cf_db_t *db, const char *composition_id, int index, int64_t epoch,
                         const cf_db_segment_update_t *update, char *err, size_t errlen)
{
    if (epoch != 0) {
        snprintf(err, errlen,
                 "a coordinator's segment writes are fenced by its lease "
                 "(cf_db_segment_update_fenced)");
        return CF_DB_INVALID;
    }
    return cf_dbi_segment_update(db, composition_id, index, 0, NULL, update, err, errlen);
}

int cf_db_segments_list(cf_db_t *db, const char *composition_id, cf_db_segment_t **segs_p,
                        int *count_p, char *err, size_t errlen)
{
    *segs_p = NULL;
    *count_p = 0;
    if (!cf_dbi_valid_uuid(composition_id))
        return CF_DB_OK;
    const char *params[] = {composition_id};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_SEGMENTS_LIST, 1, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    cf_db_segment_t *segs = calloc((size_t)rows + 1, sizeof *segs);
    if (!segs) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    for (int i = 0; i < rows; i++) {
        cf_db_segment_t *s = &segs[i];
        s->index = (int)cf_dbi_int64(res, i, 0);
        s->frame_start = cf_dbi_int64(res, i, 1);
        s->frame_end = cf_dbi_int64(res, i, 2);
        s->sources_json = cf_dbi_strdup_or_null(res, i, 3);
        cf_seg_state_parse(PQgetvalue(res, i, 4), &s->state);
        s->progress = cf_dbi_double(res, i, 5);
        s->node_id = cf_dbi_strdup_or_null(res, i, 6);
        s->attempts = (int)cf_dbi_int64(res, i, 7);
        s->epoch = cf_dbi_int64(res, i, 8);
        s->blob_hash = cf_dbi_strdup_or_null(res, i, 9);
        s->size_bytes = cf_dbi_int64(res, i, 10);
        s->encode_fps = cf_dbi_double(res, i, 11);
        s->fetch_ms = cf_dbi_int64(res, i, 12);
        s->encode_ms = cf_dbi_int64(res, i, 13);
        s->assigned_at = cf_dbi_strdup_or_null(res, i, 14);
        s->started_at = cf_dbi_strdup_or_null(res, i, 15);
        s->finished_at = cf_dbi_strdup_or_null(res, i, 16);
        s->assigned_epoch = cf_dbi_int64(res, i, 17);
        cf_task_kind_parse(PQgetvalue(res, i, 18), &s->kind);
        s->error = cf_dbi_strdup_or_null(res, i, 19);
    }
    PQclear(res);
    *segs_p = segs;
    *count_p = rows;
    return CF_DB_OK;
}

void cf_db_segments_free(cf_db_segment_t **segs_p, int count)
{
    if (!segs_p || !*segs_p)
        return;
    for (int i = 0; i < count; i++) {
        cf_db_segment_t *s = &(*segs_p)[i];
        free(s->sources_json);
        free(s->node_id);
        free(s->blob_hash);
        free(s->assigned_at);
        free(s->started_at);
        free(s->finished_at);
        free(s->error);
    }
    free(*segs_p);
    *segs_p = NULL;
}

/* ====================================================================== events */

int cf_db_event_append(cf_db_t *db, const char *composition_id, const char *type,
                       const char *payload_json, int64_t *id_p, char *err, size_t errlen)
{
    if (!cf_dbi_valid_uuid(composition_id))
        return cf_dbi_not_found("composition", composition_id, err, errlen);
    if (!type || !*type) {
        snprintf(err, errlen, "an event needs a type");
        return CF_DB_INVALID;
    }
    const char *params[] = {composition_id, type, payload_json};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_EVENT_APPEND, 3, params, NULL, NULL, &res, err, errlen);
    if (rc == CF_DB_NOT_FOUND)
        return cf_dbi_not_found("composition", composition_id, err, errlen);
    if (rc < 0)
        return rc;
    if (id_p)
        *id_p = cf_dbi_int64(res, 0, 0);
    PQclear(res);
    return CF_DB_OK;
}

int cf_db_events_since(cf_db_t *db, const char *composition_id, int64_t after_id, int limit,
                       cf_db_event_t **events_p, int *count_p, char *err, size_t errlen)
{
    *events_p = NULL;
    *count_p = 0;
    if (limit < 1 || limit > 1000) {
        snprintf(err, errlen, "limit must be 1..1000");
        return CF_DB_INVALID;
    }
    if (!cf_dbi_valid_uuid(composition_id))
        return CF_DB_OK;
    char after[24], lim[16];
    snprintf(after, sizeof after, "%" PRId64, after_id);
    snprintf(lim, sizeof lim, "%d", limit);
    const char *params[] = {composition_id, after, lim};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_EVENTS_SINCE, 3, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    cf_db_event_t *events = calloc((size_t)rows + 1, sizeof *events);
    if (!events) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    for (int i = 0; i < rows; i++) {
        events[i].id = cf_dbi_int64(res, i, 0);
        events[i].type = cf_dbi_strdup_or_null(res, i, 1);
        events[i].payload_json = cf_dbi_strdup_or_null(res, i, 2);
        events[i].at = cf_dbi_strdup_or_null(res, i, 3);
    }
    PQclear(res);
    *events_p = events;
    *count_p = rows;
    return CF_DB_OK;
}

void cf_db_events_free(cf_db_event_t **events_p, int count)
{
    if (!events_p || !*events_p)
        return;
    for (int i = 0; i < count; i++) {
        free((*events_p)[i].type);
        free((*events_p)[i].payload_json);
        free((*events_p)[i].at);
    }
    free(*events_p);
    *events_p = NULL;
}

int cf_db_node_rates(cf_db_t *db, cf_db_node_rate_t **rates_p, int *count_p, char *err,
                     size_t errlen)
{
    *rates_p = NULL;
    *count_p = 0;
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_NODE_RATES, 0, NULL, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    cf_db_node_rate_t *rates = calloc((size_t)rows + 1, sizeof *rates);
    if (!rates) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    for (int i = 0; i < rows; i++) {
        snprintf(rates[i].node_id, sizeof rates[i].node_id, "%s", PQgetvalue(res, i, 0));
        rates[i].segments = cf_dbi_int64(res, i, 1);
        rates[i].fps = cf_dbi_double(res, i, 2);
    }
    PQclear(res);
    *rates_p = rates;
    *count_p = rows;
    return CF_DB_OK;
}
