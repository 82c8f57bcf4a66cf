/* cf_api: server core: options, civetweb setup, routing, dispatch (through
 * authentication and the limits to the handler), request metrics and the
 * API's lifecycle. The helpers it wires together live beside it
 * (cf_api_internal.h lists them). */
#define _GNU_SOURCE
#include "cf_api.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cf_api_internal.h"
#include "cf_db.h"
#include "cf_ids.h"
#include "cf_log.h"
#include "cf_queue.h"
#include "cf_url.h"

/* AddressSanitizer's redzones make every frame several times larger. */
#if defined(__SANITIZE_ADDRESS__)
#define S_DEFAULT_STACK_KIB 1024
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define S_DEFAULT_STACK_KIB 1024
#endif
#endif
#ifndef S_DEFAULT_STACK_KIB
#define S_DEFAULT_STACK_KIB 256
#endif

void cf_api_options_default(cf_api_options_t *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->http_addr = "127.0.0.1:8080";
    opts->http_threads = 1024;
    opts->http_thread_stack_kib = S_DEFAULT_STACK_KIB;
    opts->max_body_bytes = 1 << 20;
    opts->max_upload_bytes = (int64_t)1 << 30;
    opts->max_header_bytes = 16 * 1024;
    opts->request_timeout_ms = 5000;
    opts->keep_alive_timeout_ms = 2000;
    opts->rate_limit = 50;
    opts->rate_burst = 100;
    opts->auth_cache_ms = 1000;
    opts->upload_quota_bytes = (int64_t)10 << 30;
    opts->auth_negative_ms = 5000;
    opts->auth_fail_limit = 30;
    opts->max_event_streams = 256;
    opts->max_event_streams_per_key = 16;
    opts->max_conns_per_addr = 128;
    opts->redis_prefix = "cf:";
    cf_apikey_hashkey_derive(NULL, 0, opts->hashkey);
}

int64_t cf_api_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

unsigned cf_api_hash(const char *text)
{
    unsigned h = 2166136261u; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h;
}

/* ------------------------------------------------------------ routing */

/* Matches PATH against PATTERN; an {x} segment captures into id. */
static bool s_match(const char *pattern, const char *path, char *id, size_t idlen)
{
    while (*pattern && *path) {
        if (*pattern == '{') {
            const char *close = strchr(pattern, '}');
            size_t seg = strcspn(path, "/");
            if (!close || seg == 0 || seg >= idlen)
                return false;
            memcpy(id, path, seg);
            id[seg] = '\0';
            pattern = close + 1;
            path += seg;
            continue;
        }
        if (*pattern != *path)
            return false;
        pattern++;
        path++;
    }
    return *pattern == '\0' && *path == '\0';
}

/* Method label values are bounded: anything unusual counts as "other". */
static const char *s_method_label(const char *method)
{
    static const char *const known[] = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(method, known[i]))
            return known[i];
    return "other";
}

/* ------------------------------------------------------------ dispatch */

static int s_dispatch(cf_api_req_t *req)
{
    const char *path = req->ri->local_uri ? req->ri->local_uri : "";
    const char *method = req->ri->request_method;
    char allow[128] = "";
    bool path_known = false;
    for (const cf_api_route_t *r = cf_api_routes; r->method; r++) {
        if (!s_match(r->pattern, path, req->id, sizeof req->id))
            continue;
        path_known = true;
        if (!strcmp(r->method, method)) {
            req->route = r;
            break;
        }
        if (!strstr(allow, r->method)) {
            size_t used = strlen(allow);
            snprintf(allow + used, sizeof allow - used, "%s%s", used ? ", " : "", r->method);
        }
    }
    if (!req->route && !path_known)
        return cf_api_send_error(req, 404, "no_route", NULL, "no route for %s", path);
    if (!req->route) {
        char headers[192];
        snprintf(headers, sizeof headers, "Allow: %s\r\n", allow);
        json_t *detail = json_pack("{s:s,s:s}", "code", "method_not_allowed", "message", "");
        char message[256];
        snprintf(message, sizeof message, "%s is not allowed on %s (allowed: %s)", method, path,
                 allow);
        json_object_set_new(detail, "message", json_string(message));
        return cf_api_send_error_json(req, 405, detail, headers);
    }
    /* One spelling per id: an upper-case UUID names the same composition,
     * cache entries and invalidations as the lower-case one Postgres hands
     * out. Anything else stays as sent, for the handler to refuse. */
    if (strstr(req->route->pattern, "{id}"))
        cf_id_parse(req->id, req->id);
    /* Peer routes serve the cluster's own nodes, with or without keys. */
    if (cf_api_route_internal(req->route)) {
        int status = cf_api_peer_gate(req);
        return status ? status : req->route->handler(req);
    }
    /* Without keys there are no tenants: everyone sees everything. */
    req->admin = req->api->opts.insecure_no_auth;
    if (req->route->auth && !req->api->opts.insecure_no_auth) {
        int status = cf_api_auth_gate(req);
        if (status)
            return status;
    }
    if (req->route->auth) {
        int status = cf_api_rate_limit(req);
        if (status)
            return status;
    }
    return req->route->handler(req);
}

static int s_handle(struct mg_connection *conn, void *cbdata)
{
    cf_api_t *api = cbdata;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cf_api_req_t req = {.api = api, .conn = conn, .ri = mg_get_request_info(conn)};
    int status = cf_api_conn_cap(&req);
    if (!status)
        status = s_dispatch(&req);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (!req.status)
        req.status = status; /* a streaming handler that wrote its own head */
    char status_text[8];
    snprintf(status_text, sizeof status_text, "%d", req.status);
    const char *method = s_method_label(req.ri->request_method);
    const char *route = req.route ? req.route->pattern : "unmatched";
    const char *labels[] = {method, route, status_text};
    cf_metric_inc(api->m_requests, labels, 1);
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    cf_metric_observe(api->m_duration, labels, seconds);
    return req.status;
}

/* civetweb's own errors (unparseable request, headers over the limit,
 * timeouts) in our JSON shape, and always closing the connection. */
static int s_http_error(struct mg_connection *conn, int status, const char *errmsg)
{
    cf_api_t *api = mg_get_user_data(mg_get_context(conn));
    const char *code = status == 413 || status == 431 ? "too_large"
                       : status == 408                ? "timeout"
                       : status >= 500                ? "internal"
                                                      : "bad_request";
    json_t *body = json_pack("{s:{s:s,s:s,s:n}}", "error", "code", code, "message",
                             errmsg && *errmsg ? errmsg : cf_api_reason(status), "field");
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text)
        return 1; /* let civetweb send its own page */
    mg_printf(conn,
              "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
              "Connection: close\r\n\r\n%s",
              status, cf_api_reason(status), strlen(text), text);
    free(text);
    mg_disable_connection_keep_alive(conn);
    char status_text[8];
    snprintf(status_text, sizeof status_text, "%d", status);
    const char *labels[] = {"other", "unmatched", status_text};
    if (api)
        cf_metric_inc(api->m_requests, labels, 1);
    return 0;
}

/* Without an authorization handler civetweb looks for a .htpasswd file on
 * disk for every request (a stat per request on the hot path). Keys are
 * checked in s_dispatch instead. */
static int s_auth_pass(struct mg_connection *conn, void *cbdata)
{
    return 1;
}

static int s_log_message(const struct mg_connection *conn, const char *message)
{
    cf_log_debug("http", "%s", message);
    return 1;
}

/* ------------------------------------------------------------ metrics */

static void s_collect(void *arg)
{
    cf_api_t *api = arg;
    char err[256];
    int64_t counts[CF_STATE_COUNT];
    if (cf_db_composition_counts(api->opts.db, counts, err, sizeof err) == CF_DB_OK) {
        /* The metric counts by status column value; processing sums its stages. */
        int64_t by_status[6] = {0};
        const char *names[6] = {"pending",   "queued", "processing",
                                "completed", "failed", "cancelled"};
        for (int s = 0; s < CF_STATE_COUNT; s++) {
            const char *status = cf_state_status((cf_state_t)s);
            for (int i = 0; i < 6; i++)
                if (status && !strcmp(status, names[i]))
                    by_status[i] += counts[s];
        }
        for (int i = 0; i < 6; i++) {
            const char *labels[] = {names[i]};
            cf_metric_set(api->m_compositions, labels, (double)by_status[i]);
        }
        cf_metric_set(api->m_db_up, NULL, 1);
    } else {
        cf_metric_set(api->m_db_up, NULL, 0);
    }
    cf_api_limits_collect(api);
    cf_queue_t *q = cf_api_queue_get(api);
    int64_t depth[CF_PRIORITY_COUNT];
    if (q && cf_queue_depth(q, depth, err, sizeof err) == 0) {
        for (int p = 0; p < CF_PRIORITY_COUNT; p++) {
            const char *labels[] = {cf_priority_name((cf_priority_t)p)};
            cf_metric_set(api->m_queue_depth, labels, (double)depth[p]);
        }
    }
    if (q)
        cf_api_queue_put(api, q);
}

/* ------------------------------------------------------------ lifecycle */

static bool s_is_loopback(const char *host)
{
    if (!strcmp(host, "localhost") || !strcmp(host, "::1"))
        return true;
    struct in_addr addr;
    return inet_pton(AF_INET, host, &addr) == 1 && (ntohl(addr.s_addr) >> 24) == 127;
}

static int s_count_active_keys(cf_api_t *api, int *count, char *err, size_t errlen)
{
    cf_db_api_key_t *keys = NULL;
    int n = 0;
    int rc = cf_db_api_key_list(api->opts.db, &keys, &n, err, errlen);
    if (rc != CF_DB_OK)
        return -1;
    *count = 0;
    for (int i = 0; i < n; i++)
        *count += keys[i].revoked_at == NULL;
    cf_db_api_keys_free(&keys, n);
    return 0;
}

/* Registers the API's metrics in M. One that cannot be (its name taken)
 * stays NULL, which the cf_metric_* calls ignore. */
static void s_add_metrics(cf_api_t *self, cf_metrics_t *m)
{
    char metric_err[256];
    self->m_requests =
        cf_metrics_add(m, CF_METRIC_COUNTER, "http_requests_total", "HTTP requests answered.",
                       "method,route,status", NULL, 0, metric_err, sizeof metric_err);
    self->m_duration = cf_metrics_add(
        m, CF_METRIC_HISTOGRAM, "http_request_duration_seconds",
        "Time from the request's arrival to the end of its response.", "method,route,status",
        cf_metrics_latency_buckets, cf_metrics_latency_bucket_count, metric_err, sizeof metric_err);
    self->m_compositions = cf_metrics_add(m, CF_METRIC_GAUGE, "compositions_total",
                                          "Compositions in the database, by status.", "status",
                                          NULL, 0, metric_err, sizeof metric_err);
    self->m_queue_depth = cf_metrics_add(m, CF_METRIC_GAUGE, "queue_depth",
                                         "Compositions waiting in the intake "
                                         "queue, by priority.",
                                         "priority", NULL, 0, metric_err, sizeof metric_err);
    self->m_ratelimit_errors =
        cf_metrics_add(m, CF_METRIC_COUNTER, "ratelimit_errors_total",
                       "Requests let through because Redis could not be asked.", NULL, NULL, 0,
                       metric_err, sizeof metric_err);
    self->m_uploads = cf_metrics_add(m, CF_METRIC_COUNTER, "media_upload_bytes_total",
                                     "Bytes stored by POST /api/v1/media.", NULL, NULL, 0,
                                     metric_err, sizeof metric_err);
    self->m_db_up = cf_metrics_add(m, CF_METRIC_GAUGE, "database_up",
                                   "1 when the last scrape could query Postgres.", NULL, NULL, 0,
                                   metric_err, sizeof metric_err);
    self->m_local_cache = cf_metrics_add(
        m, CF_METRIC_COUNTER, "api_local_cache_total",
        "Composition reads by the node's in-process cache: hit, miss, or bypass (while the "
        "invalidation subscription is down).",
        "result", NULL, 0, metric_err, sizeof metric_err);
    self->m_refused = cf_metrics_add(
        m, CF_METRIC_COUNTER, "api_refused_total",
        "Requests refused for what they asked: JSON nested too deep, a source the node's policy "
        "forbids, someone else's upload, an upload over the key's quota.",
        "reason", NULL, 0, metric_err, sizeof metric_err);
    self->m_node_counters = cf_metrics_add(
        m, CF_METRIC_COUNTER, "cluster_counter_total",
        "Cluster membership counters of this node (beacons, messages, handshakes, elections).",
        "counter", NULL, 0, metric_err, sizeof metric_err);
    self->m_beacons_rejected =
        cf_metrics_add(m, CF_METRIC_COUNTER, "cluster_beacons_rejected_total",
                       "Discovery beacons dropped: malformed, bad MAC, other version or replayed.",
                       NULL, NULL, 0, metric_err, sizeof metric_err);
    self->m_messages_rejected = cf_metrics_add(
        m, CF_METRIC_COUNTER, "cluster_messages_rejected_total",
        "Control messages dropped: malformed, unknown version or type, or a stale epoch.", NULL,
        NULL, 0, metric_err, sizeof metric_err);
    self->m_rejected = cf_metrics_add(
        m, CF_METRIC_COUNTER, "api_rejected_total",
        "Requests and connections refused by a protection limit: conns_per_addr, streams_node, "
        "streams_key, auth_failed, auth_blocked, peer_auth_failed, upload_truncated.",
        "reason", NULL, 0, metric_err, sizeof metric_err);
    self->m_auth_db = cf_metrics_add(m, CF_METRIC_COUNTER, "auth_db_lookups_total",
                                     "API keys looked up in Postgres (not in either cache).", NULL,
                                     NULL, 0, metric_err, sizeof metric_err);
    self->m_streams = cf_metrics_add(m, CF_METRIC_GAUGE, "event_streams_open",
                                     "Event streams this node serves now.", NULL, NULL, 0,
                                     metric_err, sizeof metric_err);
    self->m_conns = cf_metrics_add(m, CF_METRIC_GAUGE, "http_connections_open",
                                   "HTTP connections open that sent a request.", NULL, NULL, 0,
                                   metric_err, sizeof metric_err);
    self->m_encode_fps = cf_metrics_add(m, CF_METRIC_GAUGE, "node_encode_fps",
                                        "Measured encode speed of this node, frames/s.", "encoder",
                                        NULL, 0, metric_err, sizeof metric_err);
}

cf_api_t *cf_api_new(const cf_api_options_t *opts, char *err, size_t errlen)
{
    char host[256];
    int port;
    if (!opts->db || !opts->cache || !opts->metrics || !opts->blobs || !opts->redis_url ||
        !opts->data_dir) {
        snprintf(err, errlen,
                 "API: database, cache, metrics, blob store, Redis URL and data dir "
                 "are required");
        return NULL;
    }
    if (cf_hostport_parse_listen(opts->http_addr, host, sizeof host, &port, err, errlen) < 0)
        return NULL;
    if (opts->http_threads < 2 || opts->http_threads > 10000) {
        snprintf(err, errlen, "--http-threads must be 2..10000");
        return NULL;
    }
    if (opts->http_thread_stack_kib < 64 || opts->http_thread_stack_kib > 65536) {
        snprintf(err, errlen, "--http-thread-stack-kib must be 64..65536");
        return NULL;
    }
    cf_api_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    self->opts = *opts;
    self->http_addr = strdup(opts->http_addr);
    self->redis_url = strdup(opts->redis_url);
    self->redis_prefix = strdup(opts->redis_prefix ? opts->redis_prefix : "cf:");
    self->data_dir = strdup(opts->data_dir);
    self->node_id = strdup(opts->node_id ? opts->node_id : "");
    self->opts.http_addr = self->http_addr;
    self->opts.redis_url = self->redis_url;
    self->opts.redis_prefix = self->redis_prefix;
    self->opts.data_dir = self->data_dir;
    self->opts.node_id = self->node_id;
    self->loopback = s_is_loopback(host);
    /* Each part's init cannot fail before its locks exist, so the one
     * cleanup below (cf_api_destroy) may undo every part. */
    cf_api_auth_init(self);
    cf_api_pools_init(self);
    if (cf_api_limits_init(self, err, errlen) < 0)
        goto fail;

    if (!opts->insecure_no_auth) {
        int active = 0;
        if (s_count_active_keys(self, &active, err, errlen) < 0) {
            char why[256];
            snprintf(why, sizeof why, "%s", err);
            snprintf(err, errlen, "cannot check API keys: %s", why);
            goto fail;
        }
        if (active == 0 && !self->loopback) {
            snprintf(err, errlen,
                     "refusing to serve %s without API keys: create one with 'clipfarm apikey "
                     "create NAME', or pass --insecure-no-auth",
                     opts->http_addr);
            goto fail;
        }
        if (active == 0)
            cf_log_warn("api", "no API keys yet: /api/v1 answers 401 until one is created "
                               "('clipfarm apikey create NAME')");
    } else {
        cf_log_warn("api", "--insecure-no-auth: /api/v1 is open to anyone who can reach %s",
                    opts->http_addr);
    }

    s_add_metrics(self, opts->metrics);
    cf_metrics_on_collect(opts->metrics, s_collect, self);
    cf_metrics_on_collect(opts->metrics, cf_api_cluster_collect, self);

    char threads[16], timeout[16], keepalive[16], header_bytes[16], ports[300];
    snprintf(threads, sizeof threads, "%d", opts->http_threads);
    snprintf(timeout, sizeof timeout, "%d", opts->request_timeout_ms);
    snprintf(keepalive, sizeof keepalive, "%d", opts->keep_alive_timeout_ms);
    snprintf(header_bytes, sizeof header_bytes, "%d", opts->max_header_bytes);
    if (strchr(host, ':'))
        snprintf(ports, sizeof ports, "[%s]:%d", host, port);
    else
        snprintf(ports, sizeof ports, "%s:%d", host, port);
    const char *options[] = {"listening_ports", ports, "num_threads", threads, "request_timeout_ms",
                             timeout, "keep_alive_timeout_ms", keepalive, "enable_keep_alive",
                             "yes", "max_request_size", header_bytes, "listen_backlog", "1024",
                             "connection_queue", "1024", "decode_url", "yes",
                             /* Answers are small and written whole: send them now. */
                             "tcp_nodelay", "1", NULL};
    struct mg_callbacks callbacks;
    memset(&callbacks, 0, sizeof callbacks);
    callbacks.http_error = s_http_error;
    callbacks.log_message = s_log_message;
    callbacks.init_connection = cf_api_conn_opened;
    callbacks.connection_close = cf_api_conn_closed;
    struct mg_init_data init = {
        .callbacks = &callbacks, .user_data = self, .configuration_options = options};
    struct mg_error_data error = {.text = err, .text_buffer_size = errlen};
    /* civetweb creates all its threads in mg_start2 with a default-sized
     * stack (8 MiB of address space each, from RLIMIT_STACK) and has no
     * option for it: lend it a smaller process default for that call. */
    pthread_attr_t saved, small;
    bool restore = pthread_getattr_default_np(&saved) == 0;
    pthread_attr_init(&small);
    pthread_attr_setstacksize(&small, (size_t)opts->http_thread_stack_kib * 1024);
    pthread_setattr_default_np(&small);
    self->ctx = mg_start2(&init, &error);
    if (restore) {
        pthread_setattr_default_np(&saved);
        pthread_attr_destroy(&saved);
    }
    pthread_attr_destroy(&small);
    if (!self->ctx) {
        char why[512];
        snprintf(why, sizeof why, "%s", err[0] ? err : "unknown error");
        snprintf(err, errlen, "cannot serve HTTP on %s: %s", opts->http_addr, why);
        goto fail;
    }
    cf_localcache_options_t lo = {.redis_url = self->redis_url,
                                  .redis_prefix = self->redis_prefix,
                                  .cache = opts->cache,
                                  .db = opts->db,
                                  .reads = self->m_local_cache};
    self->local = cf_localcache_new(&lo, err, errlen);
    if (!self->local)
        goto fail;
    struct mg_server_port bound[4];
    int nports = mg_get_server_ports(self->ctx, 4, bound);
    self->port = nports > 0 ? bound[0].port : port;
    if (port == 0) {
        /* The kernel picked the port: the address this node reports
         * (GET /api/v1/cluster) is the one it serves. */
        char served[300];
        snprintf(served, sizeof served, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, self->port);
        char *copy = strdup(served);
        if (!copy) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        free(self->http_addr);
        self->http_addr = copy;
        self->opts.http_addr = copy;
    }
    mg_set_auth_handler(self->ctx, "/", s_auth_pass, NULL);
    mg_set_request_handler(self->ctx, "/", s_handle, self);
    cf_log_info("api", "REST API on http://%s:%d (%d threads of %d KiB, %d event streams)", host,
                self->port, opts->http_threads, opts->http_thread_stack_kib, self->max_streams);
    return self;
fail:
    cf_api_destroy(&self);
    return NULL;
}

void cf_api_destroy(cf_api_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_api_t *self = *self_p;
    atomic_store(&self->stopping, true);
    if (self->ctx)
        mg_stop(self->ctx);
    cf_localcache_destroy(&self->local);
    if (self->opts.metrics) {
        cf_metrics_remove_collect(self->opts.metrics, s_collect, self);
        cf_metrics_remove_collect(self->opts.metrics, cf_api_cluster_collect, self);
    }
    cf_api_pools_drain(self);
    cf_api_limits_fini(self);
    cf_api_auth_fini(self);
    free(self->http_addr);
    free(self->redis_url);
    free(self->redis_prefix);
    free(self->data_dir);
    free(self->node_id);
    free(self);
    *self_p = NULL;
}

int cf_api_port(const cf_api_t *self)
{
    return self->port;
}
