/* cf_db_work: the coordinator's fenced statements on the work list. See
 * cf_db_work.h; the SQL is in cf_db_statements.c (CF_DBI_W_*). */
#define _GNU_SOURCE
#include "cf_db_work.h"

#include <jansson.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_db_internal.h"

static int s_stale(const char *what, const cf_dbw_fence_t *fence, char *err, size_t errlen)
{
    snprintf(err, errlen, "%s refused: epoch %lld of %s no longer holds the lease", what,
             (long long)fence->epoch, fence->holder);
    return CF_DB_STALE;
}

static bool s_args_ok(const cf_dbw_fence_t *fence, const char *id, char *err, size_t errlen)
{
    if (!fence || fence->epoch < 1 || !fence->holder || !cf_dbi_valid_uuid(fence->holder)) {
        snprintf(err, errlen, "a coordinator write needs its epoch and holder");
        return false;
    }
    if (id && !cf_dbi_valid_uuid(id)) {
        snprintf(err, errlen, "no composition '%s'", id);
        return false;
    }
    return true;
}

/* A fenced composition transition to TO (with an error or an output): the
 * one fenced transition there is (cf_db_composition_transition_fenced), with
 * the coordinator's fence as its token. */
static int s_transition(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, cf_state_t to,
                        const char *code, const char *message, const cf_db_output_t *out, char *err,
                        size_t errlen)
{
    if (!s_args_ok(fence, id, err, errlen))
        return CF_DB_INVALID;
    cf_fence_token_t token = {.epoch = fence->epoch};
    snprintf(token.holder, sizeof token.holder, "%s", fence->holder);
    return cf_db_composition_transition_fenced(db, &token, id, to, out, code, message, NULL, err,
                                               errlen);
}

int cf_dbw_take(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, char *err, size_t errlen)
{
    return s_transition(db, fence, id, CF_STATE_PLANNING, NULL, NULL, NULL, err, errlen);
}

int cf_dbw_assembling(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, char *err,
                      size_t errlen)
{
    return s_transition(db, fence, id, CF_STATE_ASSEMBLING, NULL, NULL, NULL, err, errlen);
}

int cf_dbw_complete(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id,
                    const cf_db_output_t *output, char *err, size_t errlen)
{
    return s_transition(db, fence, id, CF_STATE_COMPLETED, NULL, NULL, output, err, errlen);
}

int cf_dbw_fail(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, const char *code,
                const char *message, char *err, size_t errlen)
{
    return s_transition(db, fence, id, CF_STATE_FAILED, code, message, NULL, err, errlen);
}

int cf_dbw_plan(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, const char *plan_json,
                const char *encoder, const cf_dbw_task_plan_t *tasks, int count, char *err,
                size_t errlen)
{
    if (!s_args_ok(fence, id, err, errlen))
        return CF_DB_INVALID;
    json_t *list = json_array();
    for (int i = 0; list && i < count; i++) {
        json_t *t = json_pack("{s:i,s:s,s:I,s:I}", "idx", tasks[i].index, "kind",
                              cf_task_kind_name(tasks[i].kind), "frame_start",
                              (json_int_t)tasks[i].frame_start, "frame_end",
                              (json_int_t)tasks[i].frame_end);
        if (!t || json_array_append_new(list, t) < 0) {
            json_decref(list);
            list = NULL;
        }
    }
    char *tasks_json = list ? json_dumps(list, JSON_COMPACT) : NULL;
    json_decref(list);
    if (!tasks_json) {
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    char epoch[24];
    snprintf(epoch, sizeof epoch, "%lld", (long long)fence->epoch);
    const char *params[] = {id, epoch, fence->holder, plan_json, encoder, tasks_json};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_W_PLAN, 6, params, NULL, NULL, &res, err, errlen);
    free(tasks_json);
    if (rc < 0)
        return rc;
    if (atoi(PQgetvalue(res, 0, 0)) == 0) {
        PQclear(res);
        return s_stale("plan", fence, err, errlen);
    }
    if (PQgetisnull(res, 0, 1)) {
        PQclear(res);
        snprintf(err, errlen, "composition %s is no longer planning", id);
        return CF_DB_ILLEGAL;
    }
    int64_t version = cf_dbi_int64(res, 0, 1);
    double progress = cf_dbi_double(res, 0, 2);
    PQclear(res);
    cf_dbi_notify(db, id, version, CF_STATE_ENCODING, progress, "status");
    return CF_DB_OK;
}

int cf_dbw_open_tasks(cf_db_t *db, cf_dbw_task_t **tasks_p, int *count_p, char *err, size_t errlen)
{
    *tasks_p = NULL;
    *count_p = 0;
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_W_OPEN, 0, NULL, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    cf_dbw_task_t *tasks = calloc((size_t)rows + 1, sizeof *tasks);
    if (!tasks) {
        PQclear(res);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    for (int i = 0; i < rows; i++) {
        cf_dbw_task_t *t = &tasks[i];
        snprintf(t->composition, sizeof t->composition, "%s", PQgetvalue(res, i, 0));
        t->index = (int)cf_dbi_int64(res, i, 1);
        cf_task_kind_parse(PQgetvalue(res, i, 2), &t->kind);
        t->frame_start = cf_dbi_int64(res, i, 3);
        t->frame_end = cf_dbi_int64(res, i, 4);
        cf_seg_state_parse(PQgetvalue(res, i, 5), &t->state);
        t->node_id = cf_dbi_strdup_or_null(res, i, 6);
        t->attempts = (int)cf_dbi_int64(res, i, 7);
        t->epoch = cf_dbi_int64(res, i, 8);
        t->progress = cf_dbi_double(res, i, 9);
        t->blob_hash = cf_dbi_strdup_or_null(res, i, 10);
        t->size_bytes = cf_dbi_int64(res, i, 11);
        cf_state_parse(PQgetvalue(res, i, 12), &t->comp_state);
        cf_priority_parse(PQgetvalue(res, i, 13), &t->priority);
        t->waiting_s = cf_dbi_double(res, i, 14);
        t->comp_waiting = PQgetvalue(res, i, 17)[0] == 't';
        t->encoder = cf_dbi_strdup_or_null(res, i, 15);
        json_t *ex = json_loads(PQgetvalue(res, i, 16), 0, NULL);
        size_t n = json_is_array(ex) ? json_array_size(ex) : 0;
        if (n && (t->excluded = calloc(n, sizeof(char *)))) {
            for (size_t k = 0; k < n; k++) {
                const char *v = json_string_value(json_array_get(ex, k));
                if (v && (t->excluded[t->excluded_count] = strdup(v)))
                    t->excluded_count++;
            }
        }
        json_decref(ex);
    }
    PQclear(res);
    *tasks_p = tasks;
    *count_p = rows;
    return CF_DB_OK;
}

void cf_dbw_tasks_free(cf_dbw_task_t **tasks_p, int count)
{
    if (!tasks_p || !*tasks_p)
        return;
    for (int i = 0; i < count; i++) {
        cf_dbw_task_t *t = &(*tasks_p)[i];
        free(t->node_id);
        free(t->blob_hash);
        free(t->encoder);
        for (int k = 0; k < t->excluded_count; k++)
            free(t->excluded[k]);
        free(t->excluded);
    }
    free(*tasks_p);
    *tasks_p = NULL;
}

char *cf_dbw_plan_json(cf_db_t *db, const char *id, char *err, size_t errlen)
{
    if (!cf_dbi_valid_uuid(id)) {
        snprintf(err, errlen, "no composition '%s'", id);
        return NULL;
    }
    const char *params[] = {id};
    PGresult *res = NULL;
    if (cf_dbi_exec(db, CF_DBI_W_PLAN_JSON, 1, params, NULL, NULL, &res, err, errlen) < 0)
        return NULL;
    char *plan = PQntuples(res) == 1 ? cf_dbi_strdup_or_null(res, 0, 0) : NULL;
    PQclear(res);
    if (!plan)
        snprintf(err, errlen, "composition %s has no plan", id);
    return plan;
}

/* Runs a token statement ($1..$6 = id, index, node, attempt, epoch,
 * holder, then EXTRA more); one row back means it applied. */
static int s_token_exec(cf_db_t *db, cf_dbi_stmt_t stmt, const char *what,
                        const cf_dbw_fence_t *fence, const char *id, int index, const char *node,
                        int attempt, const char *const *extra, int extra_count, PGresult **res_p,
                        char *err, size_t errlen)
{
    if (!s_args_ok(fence, id, err, errlen))
        return CF_DB_INVALID;
    char idx[16], att[16], epoch[24];
    snprintf(idx, sizeof idx, "%d", index);
    snprintf(att, sizeof att, "%d", attempt);
    snprintf(epoch, sizeof epoch, "%lld", (long long)fence->epoch);
    const char *params[12] = {id, idx, node, att, epoch, fence->holder};
    for (int i = 0; i < extra_count && i < 6; i++)
        params[6 + i] = extra[i];
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, stmt, 6 + extra_count, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (res_p) {
        *res_p = res;
        return CF_DB_OK;
    }
    int rows = PQntuples(res);
    PQclear(res);
    if (rows != 1) {
        snprintf(err, errlen,
                 "%s of task %d of %s refused: not the current assignment (node %s, attempt %d, "
                 "epoch %lld) or the lease moved",
                 what, index, id, node, attempt, (long long)fence->epoch);
        return CF_DB_STALE;
    }
    return CF_DB_OK;
}

int cf_dbw_assign(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, int index,
                  const char *node, int *attempt_p, char *err, size_t errlen)
{
    if (!s_args_ok(fence, id, err, errlen))
        return CF_DB_INVALID;
    char idx[16], epoch[24];
    snprintf(idx, sizeof idx, "%d", index);
    snprintf(epoch, sizeof epoch, "%lld", (long long)fence->epoch);
    const char *params[] = {id, idx, node, epoch, fence->holder};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_W_ASSIGN, 5, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        snprintf(err, errlen, "task %d of %s is not pending, or the lease moved", index, id);
        return CF_DB_STALE;
    }
    *attempt_p = (int)cf_dbi_int64(res, 0, 0);
    PQclear(res);
    return CF_DB_OK;
}

int cf_dbw_accept(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, int index,
                  const char *node, int attempt, char *err, size_t errlen)
{
    return s_token_exec(db, CF_DBI_W_ACCEPT, "accept", fence, id, index, node, attempt, NULL, 0,
                        NULL, err, errlen);
}

int cf_dbw_progress(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, int index,
                    const char *node, int attempt, double progress, char *err, size_t errlen)
{
    char p[32];
    snprintf(p, sizeof p, "%.6f", progress < 0 ? 0 : progress > 1 ? 1 : progress);
    const char *extra[] = {p};
    return s_token_exec(db, CF_DBI_W_PROGRESS, "progress", fence, id, index, node, attempt, extra,
                        1, NULL, err, errlen);
}

int cf_dbw_done(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, int index,
                const char *node, int attempt, const char *blob_hash, int64_t size_bytes,
                double fps, int64_t encode_ms, char *err, size_t errlen)
{
    char size[24], f[32], ms[24];
    snprintf(size, sizeof size, "%lld", (long long)size_bytes);
    snprintf(f, sizeof f, "%.3f", fps);
    snprintf(ms, sizeof ms, "%lld", (long long)encode_ms);
    const char *extra[] = {blob_hash, size, f, ms};
    return s_token_exec(db, CF_DBI_W_DONE, "done", fence, id, index, node, attempt, extra, 4, NULL,
                        err, errlen);
}

int cf_dbw_retry(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, int index,
                 const char *node, int attempt, bool counted, const char *reason, bool *failed_p,
                 char *err, size_t errlen)
{
    if (failed_p)
        *failed_p = false;
    char max[8];
    snprintf(max, sizeof max, "%d", CF_DBW_MAX_ATTEMPTS);
    const char *extra[] = {counted ? "true" : "false", reason ? reason : "", max};
    PGresult *res = NULL;
    int rc = s_token_exec(db, CF_DBI_W_RETRY, "retry", fence, id, index, node, attempt, extra, 3,
                          &res, err, errlen);
    if (rc < 0)
        return rc;
    bool fenced = atoi(PQgetvalue(res, 0, 0)) == 0;
    bool applied = !PQgetisnull(res, 0, 1);
    if (failed_p && applied)
        *failed_p = !strcmp(PQgetvalue(res, 0, 1), "failed");
    PQclear(res);
    if (fenced)
        return s_stale("retry", fence, err, errlen);
    if (!applied) {
        snprintf(err, errlen, "task %d of %s: not the current assignment", index, id);
        return CF_DB_STALE;
    }
    return CF_DB_OK;
}

/* A Postgres text[] literal of IDS (node ids are UUID text: no quoting
 * needed, but quote anyway). */
static char *s_text_array(const char *const *ids, int count)
{
    size_t cap = 3;
    for (int i = 0; i < count; i++)
        cap += strlen(ids[i]) + 3;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    size_t n = 0;
    out[n++] = '{';
    for (int i = 0; i < count; i++) {
        if (strpbrk(ids[i], "\"\\{},"))
            continue;
        n += (size_t)snprintf(out + n, cap - n, "%s\"%s\"", n > 1 ? "," : "", ids[i]);
    }
    out[n++] = '}';
    out[n] = '\0';
    return out;
}

int cf_dbw_takeover(cf_db_t *db, const cf_dbw_fence_t *fence, const char *const *live_nodes,
                    int count, char ***requeued_p, int *requeued_count, char *err, size_t errlen)
{
    *requeued_p = NULL;
    *requeued_count = 0;
    if (!s_args_ok(fence, NULL, err, errlen))
        return CF_DB_INVALID;
    char epoch[24];
    snprintf(epoch, sizeof epoch, "%lld", (long long)fence->epoch);
    char *live = s_text_array(live_nodes, count);
    if (!live) {
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    const char *params[] = {epoch, fence->holder, live};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_W_TAKEOVER, 3, params, NULL, NULL, &res, err, errlen);
    free(live);
    if (rc < 0)
        return rc;
    if (atoi(PQgetvalue(res, 0, 0)) == 0) {
        PQclear(res);
        return s_stale("takeover", fence, err, errlen);
    }
    /* "{id,id}" */
    const char *arr = PQgetvalue(res, 0, 3);
    char *copy = strdup(arr);
    int n = 0;
    char **ids = NULL;
    if (copy && strlen(copy) > 2) {
        int commas = 1;
        for (const char *p = copy; *p; p++)
            commas += *p == ',';
        ids = calloc((size_t)commas + 1, sizeof(char *));
        copy[strlen(copy) - 1] = '\0';
        char *save = NULL;
        for (char *tok = strtok_r(copy + 1, ",", &save); ids && tok;
             tok = strtok_r(NULL, ",", &save))
            if ((ids[n] = strdup(tok)))
                n++;
    }
    free(copy);
    PQclear(res);
    *requeued_p = ids;
    *requeued_count = n;
    return CF_DB_OK;
}

int cf_dbw_lost(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, int index,
                const char *node, const char *reason, char *err, size_t errlen)
{
    if (!s_args_ok(fence, id, err, errlen))
        return CF_DB_INVALID;
    char idx[16], epoch[24];
    snprintf(idx, sizeof idx, "%d", index);
    snprintf(epoch, sizeof epoch, "%lld", (long long)fence->epoch);
    const char *params[] = {id, idx, node, reason, epoch, fence->holder};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_W_LOST, 6, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    PQclear(res);
    if (rows != 1) {
        snprintf(err, errlen, "task %d of %s is not done on %s, or the lease moved", index, id,
                 node);
        return CF_DB_STALE;
    }
    return CF_DB_OK;
}

int cf_dbw_comp_progress(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, double progress,
                         char *err, size_t errlen)
{
    if (!s_args_ok(fence, id, err, errlen))
        return CF_DB_INVALID;
    char p[32], epoch[24];
    snprintf(p, sizeof p, "%.6f", progress < 0 ? 0 : progress > 0.999 ? 0.999 : progress);
    snprintf(epoch, sizeof epoch, "%lld", (long long)fence->epoch);
    const char *params[] = {id, p, epoch, fence->holder};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_W_COMP_PROGRESS, 4, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) == 1) {
        cf_state_t state = CF_STATE_ENCODING;
        cf_state_parse(PQgetvalue(res, 0, 2), &state);
        cf_dbi_notify(db, id, cf_dbi_int64(res, 0, 0), state, cf_dbi_double(res, 0, 1), "progress");
    }
    PQclear(res);
    return CF_DB_OK;
}

int cf_dbw_wait_reason(cf_db_t *db, const cf_dbw_fence_t *fence, const char *id, const char *reason,
                       char *err, size_t errlen)
{
    if (!s_args_ok(fence, id, err, errlen))
        return CF_DB_INVALID;
    char epoch[24];
    snprintf(epoch, sizeof epoch, "%lld", (long long)fence->epoch);
    const char *params[] = {id, reason, epoch, fence->holder};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_W_WAIT_REASON, 4, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    if (PQntuples(res) == 1) {
        cf_state_t state = CF_STATE_QUEUED;
        cf_state_parse(PQgetvalue(res, 0, 2), &state);
        cf_dbi_notify(db, id, cf_dbi_int64(res, 0, 0), state, cf_dbi_double(res, 0, 1), "status");
    }
    PQclear(res);
    return CF_DB_OK;
}

int cf_dbw_close_cancelled(cf_db_t *db, const cf_dbw_fence_t *fence, char ***nodes_p, int *count_p,
                           char *err, size_t errlen)
{
    *nodes_p = NULL;
    *count_p = 0;
    if (!s_args_ok(fence, NULL, err, errlen))
        return CF_DB_INVALID;
    char epoch[24];
    snprintf(epoch, sizeof epoch, "%lld", (long long)fence->epoch);
    const char *params[] = {epoch, fence->holder};
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_W_CLOSE_CANCELLED, 2, params, NULL, NULL, &res, err, errlen);
    if (rc < 0)
        return rc;
    int rows = PQntuples(res);
    char **items = calloc((size_t)rows + 1, sizeof(char *));
    int n = 0;
    for (int i = 0; items && i < rows; i++)
        if ((items[n] = strdup(PQgetvalue(res, i, 0))))
            n++;
    PQclear(res);
    *nodes_p = items;
    *count_p = n;
    return CF_DB_OK;
}
