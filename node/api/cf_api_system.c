/* cf_api_system: the node-level routes: /healthz, /readyz, /metrics,
 * /openapi.json and GET /api/v1/cluster, and the cluster metrics. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_api_internal.h"
#include "cf_db.h"
#include "cf_log.h"
#include "cf_queue.h"
#include "cf_redis.h"

int cf_api_h_healthz(cf_api_req_t *req)
{
    static const char body[] = "{\"status\":\"ok\"}";
    return cf_api_send_json_text(req, 200, body, sizeof body - 1, NULL);
}

int cf_api_h_readyz(cf_api_req_t *req)
{
    char db_err[256] = "", redis_err[256] = "";
    int db_ok = cf_db_ping(req->api->opts.db, db_err, sizeof db_err) == CF_DB_OK;
    redisContext *ctx = cf_api_redis_get(req->api, redis_err, sizeof redis_err);
    int redis_ok = ctx && cf_redis_ping(ctx, redis_err, sizeof redis_err) == 0;
    cf_api_redis_put(req->api, ctx);
    /* The errors name hosts and ports: they go to the log, never to a
     * client who may ask /readyz without a key. */
    if (!db_ok)
        cf_log_debug("api", "readyz: database: %s", db_err);
    if (!redis_ok)
        cf_log_debug("api", "readyz: redis: %s", redis_err);
    json_t *body = json_pack("{s:s,s:{s:s,s:s}}", "status", db_ok && redis_ok ? "ready" : "unready",
                             "checks", "database", db_ok ? "ok" : "unavailable", "redis",
                             redis_ok ? "ok" : "unavailable");
    return cf_api_send_json(req, db_ok && redis_ok ? 200 : 503, body,
                            db_ok && redis_ok ? NULL : "Retry-After: 5\r\n");
}

int cf_api_h_metrics(cf_api_req_t *req)
{
    size_t len = 0;
    char *text = cf_metrics_render(req->api->opts.metrics, &len);
    if (!text)
        return cf_api_send_error(req, 500, "internal", NULL, "out of memory");
    int status = cf_api_send(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL);
    free(text);
    return status;
}

static pthread_once_t s_openapi_once = PTHREAD_ONCE_INIT;
static char *s_openapi_text;

static void s_openapi_build(void)
{
    json_t *doc = cf_api_openapi_document();
    s_openapi_text = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(doc);
}

int cf_api_h_openapi(cf_api_req_t *req)
{
    pthread_once(&s_openapi_once, s_openapi_build);
    if (!s_openapi_text)
        return cf_api_send_error(req, 500, "internal", NULL, "out of memory");
    return cf_api_send_json_text(req, 200, s_openapi_text, strlen(s_openapi_text), NULL);
}

/* One entry of "nodes": the fields `clipfarm status` and `nodes` show. */
static json_t *s_node_entry(json_t *src, const char *coordinator, bool self)
{
    json_t *entry = json_deep_copy(src);
    const char *id = json_string_value(json_object_get(src, "id"));
    if (self) {
        json_object_set_new(entry, "state", json_string("alive"));
        json_object_set_new(entry, "last_seen_ms_ago", json_integer(0));
        json_object_set_new(entry, "self", json_true());
        /* The peers list and counters belong to the cluster, not to the entry. */
        json_object_del(entry, "peers");
        json_object_del(entry, "counters");
        json_object_del(entry, "fence");
    } else {
        json_object_set_new(entry, "self", json_false());
    }
    json_object_set_new(
        entry, "role",
        json_string(id && coordinator && !strcmp(id, coordinator) ? "coordinator" : "worker"));
    return entry;
}

static json_t *s_queue_depth(cf_api_t *api)
{
    json_t *depth_json = json_object();
    cf_queue_t *q = cf_api_queue_get(api);
    int64_t depth[CF_PRIORITY_COUNT];
    char err[256];
    if (q && cf_queue_depth(q, depth, err, sizeof err) == 0)
        for (int p = 0; p < CF_PRIORITY_COUNT; p++)
            json_object_set_new(depth_json, cf_priority_name((cf_priority_t)p),
                                json_integer(depth[p]));
    if (q)
        cf_api_queue_put(api, q);
    return depth_json;
}

int cf_api_h_cluster(cf_api_req_t *req)
{
    cf_api_t *api = req->api;
    json_t *nodes = json_array();
    json_t *body = json_object();
    if (api->opts.cluster) {
        json_t *snap = api->opts.cluster(api->opts.cluster_arg);
        if (!snap)
            return cf_api_send_error(req, 500, "internal", NULL, "out of memory");
        json_t *coordinator = json_object_get(snap, "coordinator");
        const char *coord = json_string_value(coordinator);
        json_array_append_new(nodes, s_node_entry(snap, coord, true));
        size_t i;
        json_t *peer;
        json_array_foreach(json_object_get(snap, "peers"), i, peer)
            json_array_append_new(nodes, s_node_entry(peer, coord, false));
        json_object_set(body, "node_id", json_object_get(snap, "id"));
        json_object_set_new(body, "coordinator", coord ? json_string(coord) : json_null());
        json_object_set(body, "epoch", json_object_get(snap, "epoch"));
        json_object_set(body, "counters", json_object_get(snap, "counters"));
        json_decref(snap);
    } else {
        /* A node started without cluster membership (tests, embedded use). */
        json_array_append_new(nodes, json_pack("{s:s,s:s,s:s,s:s,s:b}", "id", api->node_id, "state",
                                               "alive", "role", "coordinator", "http_endpoint",
                                               api->http_addr, "self", 1));
        json_object_set_new(body, "node_id", json_string(api->node_id));
        json_object_set_new(body, "coordinator", json_string(api->node_id));
        json_object_set_new(body, "epoch", json_integer(0));
    }
    /* What each node encoded lately, from the work list. */
    cf_db_node_rate_t *rates = NULL;
    int rate_count = 0;
    char why[256];
    if (cf_db_node_rates(api->opts.db, &rates, &rate_count, why, sizeof why) == CF_DB_OK) {
        size_t i;
        json_t *n;
        json_array_foreach(nodes, i, n)
        {
            const char *id = json_string_value(json_object_get(n, "id"));
            for (int r = 0; id && r < rate_count; r++)
                if (!strcmp(rates[r].node_id, id)) {
                    json_object_set_new(n, "recent_segments", json_integer(rates[r].segments));
                    json_object_set_new(n, "recent_fps", json_real(rates[r].fps));
                }
        }
    }
    free(rates);
    json_object_set_new(body, "nodes", nodes);
    json_object_set_new(body, "queue_depth", s_queue_depth(api));
    return cf_api_send_json(req, 200, body, NULL);
}

/* Reads an encoder's measured frames/s from capabilities in any of the
 * shapes {"encoders": [{"name", "fps"}]}, {"encoders": {NAME: FPS}} or
 * {"encoders": {NAME: {"fps"}}}. */
static void s_encoder_fps(cf_metric_t *metric, json_t *caps)
{
    json_t *encoders = json_object_get(caps, "encoders");
    size_t i;
    json_t *value;
    const char *name;
    if (json_is_array(encoders)) {
        json_array_foreach(encoders, i, value)
        {
            const char *label = json_string_value(json_object_get(value, "name"));
            json_t *fps = json_object_get(value, "fps");
            const char *labels[] = {label};
            if (label && json_is_number(fps))
                cf_metric_set(metric, labels, json_number_value(fps));
        }
    } else if (json_is_object(encoders)) {
        json_object_foreach(encoders, name, value)
        {
            json_t *fps = json_is_object(value) ? json_object_get(value, "fps") : value;
            const char *labels[] = {name};
            if (json_is_number(fps))
                cf_metric_set(metric, labels, json_number_value(fps));
        }
    }
}

static uint64_t s_counter(json_t *counters, const char *name)
{
    json_t *value = json_object_get(counters, name);
    return json_is_integer(value) ? (uint64_t)json_integer_value(value) : 0;
}

void cf_api_cluster_collect(void *arg)
{
    cf_api_t *api = arg;
    if (!api->opts.cluster)
        return;
    json_t *snap = api->opts.cluster(api->opts.cluster_arg);
    if (!snap)
        return;
    json_t *counters = json_object_get(snap, "counters");
    const char *name;
    json_t *value;
    json_object_foreach(counters, name, value)
    {
        const char *labels[] = {name};
        if (json_is_integer(value))
            cf_metric_set(api->m_node_counters, labels, (double)json_integer_value(value));
    }
    cf_metric_set(api->m_beacons_rejected, NULL, (double)s_counter(counters, "beacons_rejected"));
    cf_metric_set(api->m_messages_rejected, NULL,
                  (double)(s_counter(counters, "messages_malformed") +
                           s_counter(counters, "messages_stale_epoch")));
    cf_metric_reset(api->m_encode_fps);
    s_encoder_fps(api->m_encode_fps, json_object_get(snap, "capabilities"));
    json_decref(snap);
}
