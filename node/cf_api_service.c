/* cf_api_service: the composition root of the user-facing part of a node. */
#define _GNU_SOURCE
#include "cf_api_service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cf_cpus.h"
#include "cf_blob.h"
#include "cf_cache.h"
#include "cf_db.h"
#include "cf_log.h"
#include "cf_metrics.h"
#include "cf_s3.h"
#include "cf_blob_pull.h"
#include "cf_coordinator.h"
#include "cf_node.h"
#include "cf_executor.h"
#include "cf_peer_auth.h"
#include "cf_source_cache.h"
#include "cf_queue.h"
#include "cf_source_policy.h"
#include "cf_state_keeper.h"
#include "cf_webhook.h"
#include "cf_worker.h"

struct cf_api_service_t {
    cf_source_policy_t *policy;
    cf_source_policy_t *webhook_policy;
    cf_s3_t *s3;
    cf_webhook_t *webhooks;
    cf_db_t *db;
    cf_cache_t *cache;
    cf_metrics_t *metrics;
    cf_blob_store_t *blobs;
    cf_source_cache_t *sources;
    cf_metric_t *m_sources_hits, *m_sources_misses, *m_sources_evictions, *m_sources_bytes;
    bool sources_collect;
    cf_api_t *api;
    cf_worker_t *worker;
    cf_peer_auth_t peer_auth;
    cf_executor_t *executor;
    cf_coordinator_t *coordinator;
    char **encoders;
    int encoder_count;
    char blob_dir[4096], work_dir[4096]; /* borrowed by the executor and coordinator */
    struct cf_node_t *node;
    cf_state_keeper_t *keeper; /* housekeeping: on every node, rendering or not */
};

/* The source cache keeps its own counts: copied into the registry when
 * someone scrapes. */
static void s_collect_sources(void *arg)
{
    cf_api_service_t *self = arg;
    cf_source_cache_stats_t st;
    cf_source_cache_stats(self->sources, &st);
    cf_metric_set(self->m_sources_hits, NULL, (double)st.hits);
    cf_metric_set(self->m_sources_misses, NULL, (double)st.misses);
    cf_metric_set(self->m_sources_evictions, NULL, (double)st.evictions);
    cf_metric_set(self->m_sources_bytes, NULL, (double)st.bytes);
}

static int s_open_sources(cf_api_service_t *self, const cf_api_service_options_t *opts, char *err,
                          size_t errlen)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/cache/sources", opts->cfg->data_dir);
    if (!(self->sources =
              cf_source_cache_new(dir, (uint64_t)opts->source_cache_bytes, err, errlen)))
        return -1;
    cf_metrics_t *m = self->metrics;
    char why[256] = "";
    self->m_sources_hits =
        cf_metrics_add(m, CF_METRIC_COUNTER, "source_cache_hits_total",
                       "Sources served from the node's cache (revalidated or shared).", NULL, NULL,
                       0, why, sizeof why);
    self->m_sources_misses =
        cf_metrics_add(m, CF_METRIC_COUNTER, "source_cache_misses_total",
                       "Sources downloaded into the node's cache.", NULL, NULL, 0, why, sizeof why);
    self->m_sources_evictions =
        cf_metrics_add(m, CF_METRIC_COUNTER, "source_cache_evictions_total",
                       "Cached sources removed to stay under --source-cache-bytes.", NULL, NULL, 0,
                       why, sizeof why);
    self->m_sources_bytes =
        cf_metrics_add(m, CF_METRIC_GAUGE, "source_cache_bytes",
                       "Bytes the node's source cache holds.", NULL, NULL, 0, why, sizeof why);
    if (!self->m_sources_hits || !self->m_sources_misses || !self->m_sources_evictions ||
        !self->m_sources_bytes || cf_metrics_on_collect(m, s_collect_sources, self) < 0) {
        snprintf(err, errlen, "metrics: %s", why[0] ? why : "out of memory");
        return -1;
    }
    self->sources_collect = true;
    return 0;
}

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
    opts->max_source_bytes = (double)(20ULL << 30);
    opts->fetch_timeout_s = 3600;
    opts->upload_quota_bytes = (double)api.upload_quota_bytes;
    opts->blob_keep_s = 7 * 86400;
    opts->s3_part_bytes = 16 << 20;
    opts->source_cache_bytes = (double)CF_SOURCE_CACHE_DEFAULT_BYTES;
    cf_webhook_options_t wh;
    cf_webhook_options_default(&wh);
    opts->webhook_max_age_s = wh.max_age_s;
    opts->webhook_retry_base_ms = wh.retry_base_ms;
    opts->webhook_timeout_ms = wh.timeout_ms;
    opts->http_thread_stack_kib = api.http_thread_stack_kib;
    opts->auth_negative_ms = api.auth_negative_ms;
    opts->auth_fail_limit = api.auth_fail_limit;
    opts->max_event_streams = api.max_event_streams;
    opts->max_event_streams_per_key = api.max_event_streams_per_key;
    opts->max_conns_per_addr = api.max_conns_per_addr;
    opts->reap_interval_ms = 5000;
    opts->reconcile_interval_ms = 30000;
    opts->purge_interval_ms = 600000;
    opts->keep_completed_s = CF_DB_KEEP_COMPLETED_S;
    opts->keep_failed_s = CF_DB_KEEP_FAILED_S;
    opts->idempotency_keep_s = CF_DB_IDEMPOTENCY_KEEP_S;
    opts->claim_ttl_ms = CF_DB_CLAIM_TTL_MS;
    opts->claim_max_expiries = 3;
    opts->priority_aging_s = CF_QUEUE_AGING_MS / 1000;
}

int cf_api_service_add_options(cf_api_service_options_t *o, cf_option_t *table, size_t capacity)
{
    const cf_option_t mine[] = {
        {"http-threads", "CF_HTTP_THREADS", CF_OPT_INT, &o->http_threads, 2, 10000,
         "HTTP connections served at once; size it for the keep-alive clients (default 1024)", "N"},
        {"http-thread-stack-kib", "CF_HTTP_THREAD_STACK_KIB", CF_OPT_INT, &o->http_thread_stack_kib,
         64, 65536, "stack of each HTTP thread in KiB (default 256)", "KIB"},
        {"max-conns-per-addr", "CF_MAX_CONNS_PER_ADDR", CF_OPT_INT, &o->max_conns_per_addr, 0,
         1000000,
         "connections one client address may hold; beyond it requests get 429, 0 = off (default "
         "128; 0 behind a proxy)",
         "N"},
        {"max-event-streams", "CF_MAX_EVENT_STREAMS", CF_OPT_INT, &o->max_event_streams, 1, 100000,
         "event streams this node serves at once, at most half of --http-threads (default 256)",
         "N"},
        {"max-event-streams-per-key", "CF_MAX_EVENT_STREAMS_PER_KEY", CF_OPT_INT,
         &o->max_event_streams_per_key, 1, 100000,
         "event streams one API key may hold open (default 16)", "N"},
        {"auth-fail-limit", "CF_AUTH_FAIL_LIMIT", CF_OPT_INT, &o->auth_fail_limit, 0, 1000000,
         "failed authentications per client address per minute before 429, 0 = off (default "
         "30)",
         "N"},
        {"auth-negative-cache-ms", "CF_AUTH_NEGATIVE_CACHE_MS", CF_OPT_INT, &o->auth_negative_ms, 0,
         600000, "how long an unknown key id is refused without asking Postgres (default 5000)",
         "MS"},
        {"max-body-bytes", "CF_MAX_BODY_BYTES", CF_OPT_INT, &o->max_body_bytes, 1024, 1 << 30,
         "largest JSON request body (default 1048576)", "N"},
        {"max-upload-bytes", "CF_MAX_UPLOAD_BYTES", CF_OPT_DOUBLE, &o->max_upload_bytes, 1, 1e15,
         "largest POST /api/v1/media upload (default 1073741824)", "N"},
        {"max-header-bytes", "CF_MAX_HEADER_BYTES", CF_OPT_INT, &o->max_header_bytes, 1024, 1 << 20,
         "largest request line plus headers (default 16384)", "N"},
        {"http-request-timeout-ms", "CF_HTTP_REQUEST_TIMEOUT_MS", CF_OPT_INT,
         &o->request_timeout_ms, 100, 3600000,
         "time to receive a request's headers, or the longest stall in a body (default 5000)",
         "MS"},
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
        {"render-mode", "CF_RENDER_MODE", CF_OPT_STRING, &o->render_mode, 0, 0,
         "cluster (default: the coordinator splits each composition into segments across the "
         "nodes) or local (each node renders whole compositions it takes, with claims)",
         "MODE"},
        {"no-render", "CF_NO_RENDER", CF_OPT_FLAG, &o->no_render, 0, 0,
         "serve the API only; take no compositions from the queue", NULL},
        {"render-jobs", "CF_RENDER_JOBS", CF_OPT_INT, &o->render_jobs, 0, 256,
         "encoder threads per render (default: cores / slots)", "N"},
        {"redis-prefix", "CF_REDIS_PREFIX", CF_OPT_STRING, &o->redis_prefix, 0, 0,
         "prefix of every Redis key (default cf:); clusters sharing a Redis need their own",
         "PREFIX"},
        {"media-root", "CF_MEDIA_ROOTS", CF_OPT_PATH_LIST, &o->media_roots, 0, 0,
         "directory whose files compositions may name as file:// sources (repeatable; the "
         "environment variable is colon-separated; default none: file:// refused)",
         "DIR"},
        {"allow-source-net", "CF_ALLOW_SOURCE_NETS", CF_OPT_LIST, &o->allow_source_nets, 0, 0,
         "internal network http(s) sources may reach, e.g. 10.2.0.0/16 (repeatable; the "
         "environment variable is comma-separated; default none)",
         "CIDR"},
        {"max-source-bytes", "CF_MAX_SOURCE_BYTES", CF_OPT_DOUBLE, &o->max_source_bytes, 1, 1e15,
         "largest source a node downloads (default 21474836480)", "N"},
        {"fetch-timeout-s", "CF_FETCH_TIMEOUT_S", CF_OPT_INT, &o->fetch_timeout_s, 1, 604800,
         "longest one source download may take (default 3600)", "S"},
        {"source-cache-bytes", "CF_SOURCE_CACHE_BYTES", CF_OPT_DOUBLE, &o->source_cache_bytes,
         1048576, 1e15,
         "downloaded sources kept in DATA_DIR/cache/sources, least recently used removed first "
         "(default 21474836480)",
         "N"},
        {"upload-quota-bytes", "CF_UPLOAD_QUOTA_BYTES", CF_OPT_DOUBLE, &o->upload_quota_bytes, 0,
         1e15, "bytes of uploaded media one API key may hold, 0 = no limit (default 10737418240)",
         "N"},
        {"blob-keep-s", "CF_BLOB_KEEP_S", CF_OPT_INT, &o->blob_keep_s, 1, 1 << 30,
         "uploads no composition refers to are removed after this many seconds (default 604800)",
         "S"},
        {"s3-endpoint", "CF_S3_ENDPOINT", CF_OPT_STRING, &o->s3_endpoint, 0, 0,
         "S3-compatible endpoint, http(s)://HOST[:PORT] (default: AWS for --s3-region)", "URL"},
        {"s3-region", "CF_S3_REGION", CF_OPT_STRING, &o->s3_region, 0, 0,
         "S3 region used to sign requests (default us-east-1)", "REGION"},
        {"s3-credentials-file", "CF_S3_CREDENTIALS_FILE", CF_OPT_STRING, &o->s3_credentials_file, 0,
         0,
         "AWS-style credentials file with [profile] sections (the environment's AWS_ACCESS_KEY_ID "
         "/ AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN are the default profile)",
         "FILE"},
        {"s3-path-style", "CF_S3_PATH_STYLE", CF_OPT_FLAG, &o->s3_path_style, 0, 0,
         "address buckets as ENDPOINT/BUCKET/KEY instead of BUCKET.ENDPOINT/KEY", NULL},
        {"s3-part-bytes", "CF_S3_PART_BYTES", CF_OPT_DOUBLE, &o->s3_part_bytes, 65536, 5e9,
         "multipart upload part size; larger outputs are uploaded in parts (default 16777216; AWS "
         "needs at least 5 MiB)",
         "N"},
        {"allow-webhook-net", "CF_ALLOW_WEBHOOK_NETS", CF_OPT_LIST, &o->allow_webhook_nets, 0, 0,
         "internal network webhook URLs may reach (repeatable; comma-separated in the environment; "
         "default none)",
         "CIDR"},
        {"webhook-max-age-s", "CF_WEBHOOK_MAX_AGE_S", CF_OPT_INT, &o->webhook_max_age_s, 1, 604800,
         "webhook attempts stop this long after the terminal status (default 3600)", "S"},
        {"webhook-retry-base-ms", "CF_WEBHOOK_RETRY_BASE_MS", CF_OPT_INT, &o->webhook_retry_base_ms,
         10, 3600000,
         "first webhook retry delay; it doubles each attempt, with jitter (default 2000)", "MS"},
        {"webhook-timeout-ms", "CF_WEBHOOK_TIMEOUT_MS", CF_OPT_INT, &o->webhook_timeout_ms, 100,
         600000, "one webhook attempt (default 10000)", "MS"},
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
        {"idempotency-keep-s", "CF_IDEMPOTENCY_KEEP_S", CF_OPT_INT, &o->idempotency_keep_s, 0,
         365 * 86400,
         "an Idempotency-Key is honoured this long after its first use: retention keeps its "
         "composition until then (default 86400)",
         "S"},
        {"claim-ttl-ms", "CF_CLAIM_TTL_MS", CF_OPT_INT, &o->claim_ttl_ms, 300, 3600000,
         "a render's claim lives this long unless its node renews it (every third of it); an "
         "expired claim is requeued by the coordinator (default 30000)",
         "MS"},
        {"claim-max-expiries", "CF_CLAIM_MAX_EXPIRIES", CF_OPT_INT, &o->claim_max_expiries, 0, 1000,
         "expired claims after which a composition fails, 0 = requeue for ever (default 3)", "N"},
        {"priority-aging-s", "CF_PRIORITY_AGING_S", CF_OPT_INT, &o->priority_aging_s, 1, 7 * 86400,
         "waiting work rises one priority class per this many seconds, so low is never starved "
         "(default 300; use the same on every node)",
         "S"},
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

static int s_resolve_local_blob(void *arg, const char *ref, char *path, size_t pathlen, char *err,
                                size_t errlen)
{
    return cf_blob_path(arg, ref, path, pathlen, err, errlen);
}

/* blob: sources while planning: this node's store, else pulled from the
 * live peers in turn (an upload lives on the node that took it). */
static int s_resolve_cluster_blob(void *arg, const char *ref, char *path, size_t pathlen, char *err,
                                  size_t errlen)
{
    cf_api_service_t *self = arg;
    if (cf_blob_path(self->blobs, ref, path, pathlen, err, errlen) == 0)
        return 0;
    json_t *snap = self->node ? cf_node_snapshot(self->node) : NULL;
    size_t i;
    json_t *peer;
    char why[512] = "no peer holds it";
    json_array_foreach(json_object_get(snap, "peers"), i, peer)
    {
        const char *http = json_string_value(json_object_get(peer, "http_endpoint"));
        const char *state = json_string_value(json_object_get(peer, "state"));
        if (!http || !*http || !state || strcmp(state, "alive"))
            continue;
        char base[300];
        snprintf(base, sizeof base, "%s%s", strncmp(http, "http", 4) ? "http://" : "", http);
        cf_blob_pull_opts_t po;
        cf_blob_pull_options_default(&po);
        po.base_url = base;
        po.sign = cf_peer_auth_sign;
        po.sign_arg = &self->peer_auth;
        po.max_tries = 2;
        int rc = cf_blob_pull(&po, self->blobs, ref, NULL, why, sizeof why);
        if (rc == CF_BLOB_PULL_OK) {
            json_decref(snap);
            return cf_blob_path(self->blobs, ref, path, pathlen, err, errlen);
        }
    }
    json_decref(snap);
    snprintf(err, errlen, "%s", why);
    return -1;
}

/* The cluster's work on this node: the executor (every node) and the
 * coordinator (active while this node holds the lease). */
static int s_start_cluster_work(cf_api_service_t *self, const cf_api_service_options_t *opts,
                                const uint8_t *hashkey, char *err, size_t errlen)
{
    const cf_config_t *cfg = opts->cfg;
    cf_peer_auth_init(&self->peer_auth, hashkey);
    char *blob_dir = self->blob_dir, *work = self->work_dir;
    snprintf(blob_dir, sizeof self->blob_dir, "%s/blobs", cfg->data_dir);
    snprintf(work, sizeof self->work_dir, "%s/work", cfg->data_dir);
    mkdir(work, 0700);
    if (opts->encoders && *opts->encoders) {
        char *copy = strdup(opts->encoders), *save = NULL;
        for (char *name = copy ? strtok_r(copy, ", ", &save) : NULL; name;
             name = strtok_r(NULL, ", ", &save)) {
            char **grown =
                realloc(self->encoders, sizeof(char *) * (size_t)(self->encoder_count + 1));
            if (!grown)
                break;
            self->encoders = grown;
            if ((self->encoders[self->encoder_count] = strdup(name)))
                self->encoder_count++;
        }
        free(copy);
    }
    self->node = opts->node;
    cf_render_opts_t fetch = {.policy = self->policy,
                              .s3 = self->s3,
                              .source_cache = self->sources,
                              .blob_resolver = s_resolve_local_blob,
                              .blob_arg = self->blobs,
                              .work_parent = work};
    cf_executor_options_t eo;
    cf_executor_options_default(&eo);
    eo.node = opts->node;
    eo.blobs = self->blobs;
    eo.blob_dir = blob_dir;
    eo.work_parent = work;
    eo.slots = cfg->slots > 0 ? cfg->slots : 1;
    eo.encoders = (const char *const *)self->encoders;
    eo.encoder_count = self->encoder_count;
    eo.fetch = fetch;
    eo.peer_auth = &self->peer_auth;
    eo.threads = opts->render_jobs;
    eo.on_load = opts->on_load;
    eo.on_load_arg = opts->on_load_arg;
    eo.metrics = self->metrics;
    /* A node that serves the API only coordinates when elected, but
     * encodes nothing. */
    if (!opts->no_render && !(self->executor = cf_executor_new(&eo, err, errlen)))
        return -1;
    cf_coordinator_options_t co;
    cf_coordinator_options_default(&co);
    co.node = opts->node;
    co.db = self->db;
    co.redis_url = cfg->redis_url;
    if (opts->redis_prefix)
        co.redis_prefix = opts->redis_prefix;
    co.prepare = fetch;
    co.prepare.blob_resolver = s_resolve_cluster_blob;
    co.prepare.blob_arg = self;
    if (!(self->coordinator = cf_coordinator_new(&co, err, errlen)))
        return -1;
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

    if (!(self->policy = cf_source_policy_new())) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (cf_source_policy_add_roots(self->policy, opts->media_roots, "\n", err, errlen) < 0 ||
        cf_source_policy_add_nets(self->policy, opts->allow_source_nets, "\n", err, errlen) < 0)
        goto fail;
    cf_source_policy_set_limits(self->policy, (uint64_t)opts->max_source_bytes,
                                opts->fetch_timeout_s);
    if (!(self->webhook_policy = cf_source_policy_new())) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (cf_source_policy_add_nets(self->webhook_policy, opts->allow_webhook_nets, "\n", err,
                                  errlen) < 0) {
        char why[512];
        snprintf(why, sizeof why, "%s", err);
        /* The same parser as --allow-source-net: name the right option. */
        char *name = strstr(why, "--allow-source-net");
        snprintf(err, errlen, "--allow-webhook-net%s",
                 name ? name + strlen("--allow-source-net") : why);
        goto fail;
    }
    const char *env_key = getenv("AWS_ACCESS_KEY_ID");
    if (opts->s3_endpoint || opts->s3_region || opts->s3_credentials_file ||
        (env_key && *env_key)) {
        cf_s3_options_t so;
        cf_s3_options_default(&so);
        so.endpoint = opts->s3_endpoint;
        if (opts->s3_region)
            so.region = opts->s3_region;
        so.credentials_file = opts->s3_credentials_file;
        so.path_style = opts->s3_path_style;
        so.part_bytes = (uint64_t)opts->s3_part_bytes;
        if (!(self->s3 = cf_s3_new(&so, err, errlen)))
            goto fail;
    }

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
    if (s_open_sources(self, opts, err, errlen) < 0)
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
    ao.http_thread_stack_kib = opts->http_thread_stack_kib;
    ao.auth_negative_ms = opts->auth_negative_ms;
    ao.auth_fail_limit = opts->auth_fail_limit;
    ao.max_event_streams = opts->max_event_streams;
    ao.max_event_streams_per_key = opts->max_event_streams_per_key;
    ao.max_conns_per_addr = opts->max_conns_per_addr;
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
    ao.policy = self->policy;
    ao.webhook_policy = self->webhook_policy;
    ao.s3 = self->s3;
    ao.upload_quota_bytes = (int64_t)opts->upload_quota_bytes;
    if (cf_apikey_hashkey_load(cfg->cluster_secret_file, ao.hashkey, err, errlen) < 0)
        goto fail;
    if (!(self->api = cf_api_new(&ao, err, errlen)))
        goto fail;
    if (!opts->no_render && !opts->node) { /* no cluster: render whole compositions here */
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
        int cores = cf_cpu_count();
        wo.render_jobs = opts->render_jobs > 0 ? opts->render_jobs
                         : cores > wo.slots    ? (int)(cores / wo.slots)
                                               : 1;
        wo.on_load = opts->on_load;
        wo.on_load_arg = opts->on_load_arg;
        wo.policy = self->policy;
        wo.s3 = self->s3;
        wo.source_cache = self->sources;
        if (opts->claim_ttl_ms > 0)
            wo.claim_ttl_ms = opts->claim_ttl_ms;
        if (opts->priority_aging_s > 0)
            wo.priority_aging_ms = opts->priority_aging_s * 1000;
        if (!(self->worker = cf_worker_new(&wo, err, errlen)))
            goto fail;
    }
    /* Housekeeping runs on every node (rendering or not: the coordinator
     * may be an API-only node); its coordinator steps only on the one that
     * holds the lease. */
    cf_state_keeper_options_t ko;
    cf_state_keeper_options_default(&ko);
    ko.db = self->db;
    ko.redis_url = cfg->redis_url;
    if (opts->redis_prefix)
        ko.redis_prefix = opts->redis_prefix;
    ko.node_id = opts->node_id;
    ko.data_dir = cfg->data_dir;
    ko.blobs = self->blobs;
    ko.blob_keep_s = opts->blob_keep_s;
    ko.is_coordinator = opts->is_coordinator;
    ko.coordinator_arg = opts->is_coordinator_arg;
    ko.claim_max_expiries = opts->claim_max_expiries;
    if (opts->reap_interval_ms > 0)
        ko.reap_interval_ms = opts->reap_interval_ms;
    if (opts->reconcile_interval_ms > 0)
        ko.reconcile_interval_ms = opts->reconcile_interval_ms;
    if (opts->purge_interval_ms > 0)
        ko.purge_interval_ms = opts->purge_interval_ms;
    if (opts->keep_completed_s > 0)
        ko.keep_completed_s = opts->keep_completed_s;
    if (opts->keep_failed_s > 0)
        ko.keep_failed_s = opts->keep_failed_s;
    if (opts->idempotency_keep_s >= 0)
        ko.idempotency_keep_s = opts->idempotency_keep_s;
    if (!(self->keeper = cf_state_keeper_new(&ko, err, errlen)))
        goto fail;
    if (opts->node && s_start_cluster_work(self, opts, ao.hashkey, err, errlen) < 0)
        goto fail;
    cf_webhook_options_t who;
    cf_webhook_options_default(&who);
    who.db = self->db;
    who.policy = self->webhook_policy;
    who.holder = opts->node_id;
    memcpy(who.hashkey, ao.hashkey, sizeof who.hashkey);
    who.max_age_s = opts->webhook_max_age_s;
    who.retry_base_ms = opts->webhook_retry_base_ms;
    who.timeout_ms = opts->webhook_timeout_ms;
    if (!(self->webhooks = cf_webhook_new(&who, err, errlen)))
        goto fail;
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
    cf_webhook_destroy(&self->webhooks);
    cf_coordinator_destroy(&self->coordinator);
    cf_executor_destroy(&self->executor);
    for (int i = 0; i < self->encoder_count; i++)
        free(self->encoders[i]);
    free(self->encoders);
    cf_worker_destroy(&self->worker);
    cf_state_keeper_destroy(&self->keeper);
    cf_api_destroy(&self->api);
    if (self->db)
        cf_db_set_write_hook(self->db, NULL, NULL);
    cf_cache_destroy(&self->cache);
    cf_db_destroy(&self->db);
    cf_blob_store_destroy(&self->blobs);
    if (self->sources_collect)
        cf_metrics_remove_collect(self->metrics, s_collect_sources, self);
    cf_source_cache_destroy(&self->sources);
    cf_metrics_destroy(&self->metrics);
    cf_source_policy_destroy(&self->policy);
    cf_source_policy_destroy(&self->webhook_policy);
    cf_s3_destroy(&self->s3);
    free(self);
    *self_p = NULL;
}

int cf_api_service_port(const cf_api_service_t *self)
{
    return cf_api_port(self->api);
}
