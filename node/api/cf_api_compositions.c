/* cf_api_compositions: create, list, get, cancel and the segments of
 * compositions. */
#define _GNU_SOURCE
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_json.h"
#include "cf_api_internal.h"
#include "cf_api_validate.h"
#include "cf_cache.h"
#include "cf_db.h"
#include "cf_ids.h"
#include "cf_log.h"
#include "cf_queue.h"
#include "cf_source_policy.h"

#define S_IDEMPOTENCY_KEY_MAX 200

/* The fields a list may select with ?fields=. */
static const char *const s_fields[] = {
    "id",         "title",      "status",      "stage",   "priority",   "progress",
    "error",      "output",     "attempts",    "version", "api_key_id", "created_at",
    "updated_at", "started_at", "finished_at", "waiting", NULL,
};

static int s_send_composition(cf_api_req_t *req, int status, const char *id, const char *headers)
{
    char *json = NULL, err[256];
    int rc = cf_db_composition_get_json(req->api->opts.db, id, &json, NULL, err, sizeof err);
    if (rc != CF_DB_OK)
        return cf_api_send_db_error(req, rc, "composition", err);
    status = cf_api_send_json_text(req, status, json, strlen(json), headers);
    free(json);
    return status;
}

int cf_api_composition_visible(cf_api_req_t *req, char **json_p, size_t *len_p)
{
    if (json_p)
        *json_p = NULL;
    /* The router spelt it canonically already (in place again: a no-op
     * then); the caches are only ever asked for that spelling, the one
     * invalidations name. */
    if (!cf_id_parse(req->id, req->id))
        return cf_api_send_error(req, 404, "not_found", "id", "composition %s not found", req->id);
    char *json = NULL, err[256];
    size_t len = 0;
    int rc = cf_localcache_get(req->api->local, req->id, &json, &len, err, sizeof err);
    if (rc == CF_DB_NOT_FOUND)
        return cf_api_send_error(req, 404, "not_found", "id", "composition %s not found", req->id);
    if (rc != CF_DB_OK)
        return cf_api_send_db_error(req, rc, "composition", err);
    bool visible = req->admin;
    if (!visible) {
        json_t *doc = cf_json_loadb(json, len, 0, NULL);
        json_t *owner = json_object_get(doc, "api_key_id");
        if (json_is_string(owner)) {
            visible = !strcmp(json_string_value(owner), req->key_id);
        } else if (!json_is_null(owner)) {
            /* Cached before owners were part of the document: ask Postgres. */
            char key[CF_APIKEY_ID_CHARS + 8] = "";
            rc = cf_db_composition_owner(req->api->opts.db, req->id, key, sizeof key, err,
                                         sizeof err);
            if (rc != CF_DB_OK && rc != CF_DB_NOT_FOUND) {
                json_decref(doc);
                free(json);
                return cf_api_send_db_error(req, rc, "composition", err);
            }
            visible = rc == CF_DB_OK && !strcmp(key, req->key_id);
        }
        json_decref(doc);
    }
    if (!visible) {
        free(json);
        return cf_api_send_error(req, 404, "not_found", "id", "composition %s not found", req->id);
    }
    if (json_p) {
        *json_p = json;
        if (len_p)
            *len_p = len;
    } else {
        free(json);
    }
    return 0;
}

/* What a caller may name (cf_api_source_check_fn): sources the node's
 * policy allows (media roots, address rules for IP literals; host names are
 * checked again when connecting), only its own uploads, S3 only where the
 * node has it, webhook URLs by the webhook address rules. */
static int s_check_source(void *arg, const char *field, const char *source, char *why,
                          size_t whylen)
{
    cf_api_req_t *req = arg;
    cf_api_t *api = req->api;
    bool s3 = !strncmp(source, "s3://", 5);
    if (s3 && !api->opts.s3) {
        snprintf(why, whylen,
                 "S3 is not configured on this node (--s3-endpoint or --s3-region, and "
                 "credentials)");
        return 1;
    }
    if (!strcmp(field, "webhook_url")) {
        if (cf_source_policy_check_source(api->opts.webhook_policy, source, why, whylen) < 0) {
            /* The same rules with their own option. */
            if (strstr(why, "source address not allowed"))
                snprintf(why, whylen,
                         "webhook address not allowed (loopback, private and other internal "
                         "networks need --allow-webhook-net)");
            cf_metric_inc(api->m_refused, (const char *[]){"webhook_policy"}, 1);
            return 1;
        }
        return 0;
    }
    if (cf_source_policy_check_source(api->opts.policy, source, why, whylen) < 0) {
        cf_metric_inc(api->m_refused, (const char *[]){"source_policy"}, 1);
        return 1;
    }
    if (!strncmp(source, "blob:", 5) && !req->admin) {
        bool owned = false;
        char err[256];
        int rc = cf_db_blob_owned(api->opts.db, source + 5, req->key_id, &owned, err, sizeof err);
        if (rc != CF_DB_OK)
            return -1;
        if (!owned) {
            /* Someone else's upload does not exist for this key. */
            snprintf(why, whylen, "no such blob (upload it with POST /api/v1/media)");
            cf_metric_inc(api->m_refused, (const char *[]){"blob_not_owned"}, 1);
            return 1;
        }
    }
    return 0;
}

int cf_api_h_composition_create(cf_api_req_t *req)
{
    cf_api_t *api = req->api;
    if (!cf_api_content_type_is(req, "application/json")) {
        const char *ct = mg_get_header(req->conn, "Content-Type");
        cf_api_close_after(req);
        return cf_api_send_error(req, 415, "unsupported_media_type", NULL,
                                 "Content-Type must be application/json, got %s", ct ? ct : "none");
    }
    const char *idem = mg_get_header(req->conn, "Idempotency-Key");
    if (idem && (!*idem || strlen(idem) > S_IDEMPOTENCY_KEY_MAX))
        return cf_api_send_error(req, 400, "bad_request", "Idempotency-Key",
                                 "Idempotency-Key must be 1 to %d characters",
                                 S_IDEMPOTENCY_KEY_MAX);
    char *body = NULL;
    size_t len = 0;
    int status = cf_api_read_body(req, api->opts.max_body_bytes, &body, &len);
    if (status)
        return status;

    char *title = NULL;
    const char *priority_name = NULL;
    json_t *detail = NULL;
    status = cf_api_check_composition_body(body, len, s_check_source, req, &title, &priority_name,
                                           &detail);
    if (status) {
        free(body);
        if (status == 400 &&
            !strcmp(json_string_value(json_object_get(detail, "code")), "too_deep"))
            cf_metric_inc(api->m_refused, (const char *[]){"json_depth"}, 1);
        if (status == 503) {
            json_decref(detail);
            return cf_api_send_db_error(req, CF_DB_UNAVAILABLE, "composition", "");
        }
        return cf_api_send_error_json(req, status, detail, NULL);
    }

    /* The request hash ties an Idempotency-Key to one body. */
    unsigned char digest[32];
    char request_hash[65];
    crypto_generichash(digest, sizeof digest, (const unsigned char *)body, len, NULL, 0);
    sodium_bin2hex(request_hash, sizeof request_hash, digest, sizeof digest);

    cf_db_composition_new_t comp = {
        .title = title,
        .spec_json = body,
        .api_key_id = req->key_id[0] ? req->key_id : NULL,
        .idempotency_key = idem,
        .request_hash = request_hash,
        .initial_state = CF_STATE_QUEUED,
    };
    cf_priority_parse(priority_name, &comp.priority);
    char id[CF_DB_ID_LEN], err[256];
    bool existed = false;
    int rc = cf_db_composition_create(api->opts.db, &comp, id, &existed, err, sizeof err);
    free(body);
    free(title);
    if (rc == CF_DB_CONFLICT && idem)
        return cf_api_send_error(req, 409, "idempotency_conflict", "Idempotency-Key",
                                 "this Idempotency-Key was used with a different body");
    if (rc != CF_DB_OK)
        return cf_api_send_db_error(req, rc, "composition", err);

    if (!existed) {
        /* Postgres holds it as queued already: if Redis cannot take the id
         * now, the reconcile loop pushes it later. */
        cf_queue_t *q = cf_api_queue_get(api);
        if (!q || cf_queue_push(q, id, comp.priority, err, sizeof err) < 0)
            cf_log_warn("api", "composition %s stored but not queued yet: %s", id,
                        q ? err : "no queue connection");
        if (q)
            cf_api_queue_put(api, q);
    }
    char headers[256];
    snprintf(headers, sizeof headers, "Location: /api/v1/compositions/%s\r\n%s", id,
             existed ? "Idempotent-Replayed: true\r\n" : "");
    return s_send_composition(req, 202, id, headers);
}

/* Keeps only the FIELDS (a comma list, already checked) of each item. */
static void s_select_fields(json_t *items, const char *fields)
{
    size_t i;
    json_t *item;
    json_array_foreach(items, i, item)
    {
        const char *key;
        void *tmp;
        json_t *value;
        json_object_foreach_safe(item, tmp, key, value)
        {
            size_t klen = strlen(key);
            const char *p = fields;
            bool keep = false;
            while (*p && !keep) {
                size_t len = strcspn(p, ",");
                keep = len == klen && !strncmp(p, key, len);
                p += len + (p[len] == ',');
            }
            if (!keep)
                json_object_del(item, key);
        }
    }
}

/* Returns NULL when every name in FIELDS is known, else the first unknown. */
static const char *s_check_fields(const char *fields, char *bad, size_t badlen)
{
    const char *p = fields;
    while (*p) {
        size_t len = strcspn(p, ",");
        bool known = false;
        for (int i = 0; s_fields[i] && !known; i++)
            known = strlen(s_fields[i]) == len && !strncmp(s_fields[i], p, len);
        if (!known) {
            snprintf(bad, badlen, "%.*s", (int)len, p);
            return bad;
        }
        p += len + (p[len] == ',');
    }
    return NULL;
}

int cf_api_h_composition_list(cf_api_req_t *req)
{
    char status[32], limit_text[16], cursor[512], fields[512], bad[64];
    int limit = 20;
    if (cf_api_query(req, "status", status, sizeof status) == -2 ||
        (status[0] && !cf_status_is_valid(status)))
        return cf_api_send_error(req, 400, "invalid_argument", "status",
                                 "status must be one of pending, queued, processing, completed, "
                                 "failed, cancelled");
    int n = cf_api_query(req, "limit", limit_text, sizeof limit_text);
    if (n == -2 || n == 0)
        return cf_api_send_error(req, 400, "invalid_argument", "limit",
                                 "limit must be a whole number from 1 to %d", CF_DB_LIST_MAX);
    if (n > 0) {
        char *end = NULL;
        long value = strtol(limit_text, &end, 10);
        if (*end || value < 1 || value > CF_DB_LIST_MAX)
            return cf_api_send_error(req, 400, "invalid_argument", "limit",
                                     "limit must be a whole number from 1 to %d, got '%s'",
                                     CF_DB_LIST_MAX, limit_text);
        limit = (int)value;
    }
    n = cf_api_query(req, "cursor", cursor, sizeof cursor);
    if (n == -2 || n == 0)
        return cf_api_send_error(req, 400, "invalid_cursor", "cursor",
                                 "cursor is not one this API returned");
    int has_fields = cf_api_query(req, "fields", fields, sizeof fields);
    if (has_fields == -2 || has_fields == 0)
        return cf_api_send_error(req, 400, "invalid_argument", "fields",
                                 "fields must be a comma-separated list of field names");
    if (has_fields > 0 && s_check_fields(fields, bad, sizeof bad))
        return cf_api_send_error(req, 400, "invalid_argument", "fields", "unknown field '%s'", bad);

    char *items_text = NULL, *next = NULL, err[256];
    /* An ordinary key lists its own compositions; an admin everyone's. */
    int rc = cf_db_composition_list_owned(req->api->opts.db, req->admin ? NULL : req->key_id,
                                          status[0] ? status : NULL, limit, n > 0 ? cursor : NULL,
                                          &items_text, &next, err, sizeof err);
    if (rc == CF_DB_INVALID)
        return cf_api_send_error(req, 400, "invalid_cursor", "cursor",
                                 "cursor is not one this API returned");
    if (rc != CF_DB_OK)
        return cf_api_send_db_error(req, rc, "compositions", err);
    json_t *items = cf_json_loads(items_text, 0, NULL);
    free(items_text);
    if (!items) {
        free(next);
        return cf_api_send_error(req, 500, "internal", NULL, "database returned malformed JSON");
    }
    if (has_fields > 0)
        s_select_fields(items, fields);
    json_t *body = json_pack("{s:o,s:o}", "items", items, "next_cursor",
                             next ? json_string(next) : json_null());
    free(next);
    return cf_api_send_json(req, 200, body, NULL);
}

int cf_api_h_composition_get(cf_api_req_t *req)
{
    char *json = NULL;
    size_t len = 0;
    int status = cf_api_composition_visible(req, &json, &len);
    if (status)
        return status;
    status = cf_api_send_json_text(req, 200, json, len, NULL);
    free(json);
    return status;
}

int cf_api_h_composition_cancel(cf_api_req_t *req)
{
    int status = cf_api_composition_visible(req, NULL, NULL);
    if (status)
        return status;
    cf_state_t from = CF_STATE_PENDING;
    char err[256];
    int rc = cf_db_composition_cancel(req->api->opts.db, req->id, &from, err, sizeof err);
    cf_localcache_forget(req->api->local, req->id); /* the client reads its own write here */
    if (rc == CF_DB_NOT_FOUND)
        return cf_api_send_error(req, 404, "not_found", "id", "composition %s not found", req->id);
    if (rc == CF_DB_TERMINAL)
        return cf_api_send_error(req, 409, "already_terminal", NULL,
                                 "composition %s is already %s and cannot be cancelled", req->id,
                                 cf_state_name(from));
    if (rc != CF_DB_OK)
        return cf_api_send_db_error(req, rc, "composition", err);
    return s_send_composition(req, 200, req->id, NULL);
}

int cf_api_h_composition_segments(cf_api_req_t *req)
{
    cf_api_t *api = req->api;
    char err[256];
    /* An unknown composition has no segments either: tell them apart. */
    int rc = cf_api_composition_visible(req, NULL, NULL);
    if (rc)
        return rc;
    cf_db_segment_t *segs = NULL;
    int count = 0;
    rc = cf_db_segments_list(api->opts.db, req->id, &segs, &count, err, sizeof err);
    if (rc != CF_DB_OK)
        return cf_api_send_db_error(req, rc, "segments", err);
    json_t *items = json_array();
    for (int i = 0; i < count; i++) {
        const cf_db_segment_t *s = &segs[i];
        json_t *sources = s->sources_json ? cf_json_loads(s->sources_json, 0, NULL) : NULL;
        json_array_append_new(
            items,
            json_pack("{s:i,s:I,s:I,s:s,s:f,s:o,s:i,s:I,s:o,s:I,s:f,s:I,s:I,s:o,s:o,s:o,s:o}",
                      "index", s->index, "frame_start", (json_int_t)s->frame_start, "frame_end",
                      (json_int_t)s->frame_end, "status", cf_seg_state_name(s->state), "progress",
                      s->progress, "node_id", s->node_id ? json_string(s->node_id) : json_null(),
                      "attempts", s->attempts, "epoch", (json_int_t)s->epoch, "blob_hash",
                      s->blob_hash ? json_string(s->blob_hash) : json_null(), "size_bytes",
                      (json_int_t)s->size_bytes, "encode_fps", s->encode_fps, "fetch_ms",
                      (json_int_t)s->fetch_ms, "encode_ms", (json_int_t)s->encode_ms, "assigned_at",
                      s->assigned_at ? json_string(s->assigned_at) : json_null(), "started_at",
                      s->started_at ? json_string(s->started_at) : json_null(), "finished_at",
                      s->finished_at ? json_string(s->finished_at) : json_null(), "sources",
                      sources ? sources : json_array()));
        json_t *item = json_array_get(items, json_array_size(items) - 1);
        json_object_set_new(item, "kind", json_string(cf_task_kind_name(s->kind)));
        json_object_set_new(item, "error", s->error ? json_string(s->error) : json_null());
    }
    cf_db_segments_free(&segs, count);
    return cf_api_send_json(
        req, 200, json_pack("{s:s,s:o}", "composition_id", req->id, "items", items), NULL);
}
