/* cf_api_service: the composition root of the user-facing part of a node. */
#define _GNU_SOURCE
#include "cf_api_service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cf_blob.h"
#include "cf_cache.h"
#include "cf_db.h"
#include "cf_log.h"
#include "cf_metrics.h"
#include "cf_worker.h"

struct cf_api_service_t {
    cf_db_t *db;
    cf_cache_t *cache;
    cf_metrics_t *metrics;
    cf_blob_store_t *blobs;
    cf_api_t *api;
    cf_worker_t *worker;
};

void cf_api_service_options_default(cf_api_service_options_t *opts)
{
    memset(opts, 0, sizeof *opts);
    cf_api_options_t api;
    cf_api_options_default(&api);
    opts->http_threads = api.http_threads;
    opts->max_body_bytes = (int)api.max_body_bytes;
    opts->max_upload_bytes = (double)api.max_upload_bytes;
    opts->max_header_bytes = api.max_header_bytes;
    opts->request_timeout_ms = api.request_timeout_ms;
    opts->keep_alive_timeout_ms = api.keep_alive_timeout_ms;
    opts->rate_limit = api.rate_limit;
    opts->rate_burst = api.rate_burst;
    opts->auth_cache_ms = api.auth_cache_ms;
}

int cf_api_service_add_options(cf_api_service_options_t *o, cf_option_t *table, size_t capacity)
{
    const cf_option_t mine[] = {
        {"http-threads", "CF_HTTP_THREADS", CF_OPT_INT, &o->http_threads, 1, 10000,
         "HTTP connections served at once; size it for the keep-alive clients (default 256)", "N"},
        {"max-body-bytes", "CF_MAX_BODY_BYTES", CF_OPT_INT, &o->max_body_bytes, 1024, 1 << 30,
         "largest JSON request body (default 1048576)", "N"},
        {"max-upload-bytes", "CF_MAX_UPLOAD_BYTES", CF_OPT_DOUBLE, &o->max_upload_bytes, 1, 1e15,
         "largest POST /api/v1/media upload (default 1073741824)", "N"},
        {"max-header-bytes", "CF_MAX_HEADER_BYTES", CF_OPT_INT, &o->max_header_bytes, 1024, 1 << 20,
         "largest request line plus headers (default 16384)", "N"},
        {"http-request-timeout-ms", "CF_HTTP_REQUEST_TIMEOUT_MS", CF_OPT_INT,
         &o->request_timeout_ms, 100, 3600000,
         "time to receive a request's headers or body (default 10000)", "MS"},
        {"http-keepalive-timeout-ms", "CF_HTTP_KEEPALIVE_TIMEOUT_MS", CF_OPT_INT,
         &o->keep_alive_timeout_ms, 0, 3600000,
         "idle time before a keep-alive connection is closed (default 2000)", "MS"},
        {"rate-limit", "CF_RATE_LIMIT", CF_OPT_DOUBLE, &o->rate_limit, 0, 1e9,
         "API requests per second per key, 0 = off (default 50)", "N"},
        {"rate-burst", "CF_RATE_BURST", CF_OPT_DOUBLE, &o->rate_burst, 1, 1e9,
         "requests a key may send at once (default 100)", "N"},
        {"auth-cache-ms", "CF_AUTH_CACHE_MS", CF_OPT_INT, &o->auth_cache_ms, 0, 60000,
         "how long a checked API key is trusted; bounds how late a revocation bites (default "
         "1000)",
         "MS"},
        {"insecure-no-auth", "CF_INSECURE_NO_AUTH", CF_OPT_FLAG, &o->insecure_no_auth, 0, 0,
         "serve /api/v1 without API keys, even on a non-loopback address", NULL},
        {"no-render", "CF_NO_RENDER", CF_OPT_FLAG, &o->no_render, 0, 0,
         "serve the API only; take no compositions from the queue", NULL},
        {"render-jobs", "CF_RENDER_JOBS", CF_OPT_INT, &o->render_jobs, 0, 256,
         "encoder threads per render (default: cores / slots)", "N"},
        {"redis-prefix", "CF_REDIS_PREFIX", CF_OPT_STRING, &o->redis_prefix, 0, 0,
         "prefix of every Redis key (default cf:); clusters sharing a Redis need their own",
         "PREFIX"},
        {"reap-interval-ms", "CF_REAP_INTERVAL_MS", CF_OPT_INT, &o->reap_interval_ms, 10, 3600000,
         "how often queue items of dead consumers are returned (default 5000)", "MS"},
        {"reconcile-interval-ms", "CF_RECONCILE_INTERVAL_MS", CF_OPT_INT, &o->reconcile_interval_ms,
         10, 86400000,
         "how often the queue is rebuilt from Postgres even without a loss (default 30000)", "MS"},
        {"purge-interval-ms", "CF_PURGE_INTERVAL_MS", CF_OPT_INT, &o->purge_interval_ms, 10,
         86400000, "how often expired results are purged (default 600000)", "MS"},
        {"keep-completed-s", "CF_KEEP_COMPLETED_S", CF_OPT_INT, &o->keep_completed_s, 1,
         365 * 86400, "how long a completed composition and its output are kept (default 7 days)",
         "S"},
        {"keep-failed-s", "CF_KEEP_FAILED_S", CF_OPT_INT, &o->keep_failed_s, 1, 365 * 86400,
         "how long a failed or cancelled composition is kept (default 24 h)", "S"},
    };
    size_t used = 0;
    while (used < capacity && table[used].name)
        used++;
    size_t count = sizeof mine / sizeof mine[0];
    if (used + count + 1 > capacity)
        return -1;
    memcpy(table + used, mine, sizeof mine);
    memset(table + used + count, 0, sizeof *table);
    return 0;
}

cf_api_service_t *cf_api_service_new(const cf_api_service_options_t *opts, char *err, size_t errlen)
{
    const cf_config_t *cfg = opts->cfg;
    if (!cfg || !cfg->database_url || !cfg->redis_url || !cfg->data_dir || !opts->node_id) {
        snprintf(err, errlen,
                 "--database-url, --redis-url and --data-dir are required to serve "
                 "the API");
        return NULL;
    }
    cf_api_service_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    char path[4096];

    cf_db_options_t dbo;
    cf_db_options_default(&dbo);
    dbo.url = cfg->database_url;
    /* An API request should hear "database unavailable" (503) within a few
     * seconds, not wait the pool's default 30 s. */
    dbo.acquire_timeout_ms = 3000;
    dbo.connect_timeout_ms = 2000;
    if (!(self->db = cf_db_new(&dbo, err, errlen)))
        goto fail;

    cf_cache_options_t co;
    cf_cache_options_default(&co);
    co.url = cfg->redis_url;
    co.connections = 16;
    if (opts->redis_prefix)
        co.prefix = opts->redis_prefix;
    if (!(self->cache = cf_cache_new(&co, err, errlen)))
        goto fail;
    cf_cache_attach(self->cache, self->db);

    if (!(self->metrics = cf_metrics_new())) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    snprintf(path, sizeof path, "%s/blobs", cfg->data_dir);
    if (!(self->blobs = cf_blob_store_new(path, err, errlen)))
        goto fail;

    cf_api_options_t ao;
    cf_api_options_default(&ao);
    ao.http_addr = cfg->http_addr;
    ao.http_threads = opts->http_threads;
    ao.max_body_bytes = opts->max_body_bytes;
    ao.max_upload_bytes = (int64_t)opts->max_upload_bytes;
    ao.max_header_bytes = opts->max_header_bytes;
    ao.request_timeout_ms = opts->request_timeout_ms;
    ao.keep_alive_timeout_ms = opts->keep_alive_timeout_ms;
    ao.rate_limit = opts->rate_limit;
    ao.rate_burst = opts->rate_burst;
    ao.auth_cache_ms = opts->auth_cache_ms;
    ao.insecure_no_auth = opts->insecure_no_auth;
    ao.redis_url = cfg->redis_url;
    if (opts->redis_prefix)
        ao.redis_prefix = opts->redis_prefix;
    ao.data_dir = cfg->data_dir;
    ao.node_id = opts->node_id;
    ao.db = self->db;
    ao.cache = self->cache;
    ao.metrics = self->metrics;
    ao.blobs = self->blobs;
    ao.cluster = opts->cluster;
    ao.cluster_arg = opts->cluster_arg;
    if (cf_apikey_hashkey_load(cfg->cluster_secret_file, ao.hashkey, err, errlen) < 0)
        goto fail;
    if (!(self->api = cf_api_new(&ao, err, errlen)))
        goto fail;
    if (!opts->no_render) {
        cf_worker_options_t wo;
        cf_worker_options_default(&wo);
        wo.db = self->db;
        wo.metrics = self->metrics;
        wo.blobs = self->blobs;
        wo.redis_url = cfg->redis_url;
        if (opts->redis_prefix)
            wo.redis_prefix = opts->redis_prefix;
        wo.data_dir = cfg->data_dir;
        wo.node_id = opts->node_id;
        wo.slots = cfg->slots > 0 ? cfg->slots : 1;
        /* Slots share the cores: each render gets its part unless told. */
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        wo.render_jobs = opts->render_jobs > 0 ? opts->render_jobs
                         : cores > wo.slots    ? (int)(cores / wo.slots)
                                               : 1;
        wo.on_load = opts->on_load;
        wo.on_load_arg = opts->on_load_arg;
        if (opts->reap_interval_ms > 0)
            wo.reap_interval_ms = opts->reap_interval_ms;
        if (opts->reconcile_interval_ms > 0)
            wo.reconcile_interval_ms = opts->reconcile_interval_ms;
        if (opts->purge_interval_ms > 0)
            wo.purge_interval_ms = opts->purge_interval_ms;
        if (opts->keep_completed_s > 0)
            wo.keep_completed_s = opts->keep_completed_s;
        if (opts->keep_failed_s > 0)
            wo.keep_failed_s = opts->keep_failed_s;
        if (!(self->worker = cf_worker_new(&wo, err, errlen)))
            goto fail;
    }
    return self;
fail:
    cf_api_service_destroy(&self);
    return NULL;
}

void cf_api_service_destroy(cf_api_service_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_api_service_t *self = *self_p;
    /* The renderer first (it may still write through the pool), then the
     * API, then what both borrowed. */
    cf_worker_destroy(&self->worker);
    cf_api_destroy(&self->api);
    if (self->db)
        cf_db_set_write_hook(self->db, NULL, NULL);
    cf_cache_destroy(&self->cache);
    cf_db_destroy(&self->db);
    cf_blob_store_destroy(&self->blobs);
    cf_metrics_destroy(&self->metrics);
    free(self);
    *self_p = NULL;
}

int cf_api_service_port(const cf_api_service_t *self)
{
    return cf_api_port(self->api);
}
