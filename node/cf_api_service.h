/* cf_api_service: everything a node serves to users, started and stopped in
 * one call from `clipfarm node`: the Postgres pool, the Redis cache, the blob
 * store, the Prometheus registry, the REST API, the single-node renderer and
 * the housekeeping (cf_state_keeper).
 *
 *     cf_api_service_options_t svc;
 *     cf_api_service_options_default(&svc);
 *     cf_option_t extra[48] = {..., {0}};
 *     cf_api_service_add_options(&svc, extra, 48);
 *     ... cf_cli_parse(&cfg, "node", extra, ...) ...
 *     svc.cfg = &cfg; svc.node_id = ...; svc.cluster = ...;
 *     cf_api_service_t *api = cf_api_service_new(&svc, err, sizeof err);
 *     ... run until SIGTERM ...
 *     cf_api_service_destroy(&api); */
#ifndef CF_API_SERVICE_H
#define CF_API_SERVICE_H

#include <stdbool.h>
#include <stddef.h>

#include "cf_api.h"
#include "cf_config.h"

typedef struct cf_api_service_t cf_api_service_t;

typedef struct {
    const cf_config_t *cfg;     /* database_url, redis_url, http_addr, data_dir,
                                   cluster_secret_file, slots (borrowed) */
    const char *node_id;        /* required */
    cf_api_cluster_fn *cluster; /* may be NULL (see cf_api.h) */
    void *cluster_arg;
    /* The cluster node (may be NULL): with it the cluster renders (this
     * node's executor takes the tasks its coordinator assigns, and its
     * coordinator runs while it holds the lease); without it the node
     * renders whole compositions itself. */
    struct cf_node_t *node;
    const char *encoders; /* what the executor takes (comma-separated; NULL: all) */
    /* Called with the renderer's load after every change (may be NULL). */
    void (*on_load)(void *arg, int free_slots, int in_flight);
    void *on_load_arg;
    /* Whether this node is the coordinator now (the election's lease
     * holder); only the coordinator expires claims and reconciles the
     * queue. NULL: this node is its own coordinator (no cluster). */
    bool (*is_coordinator)(void *arg);
    void *is_coordinator_arg;
    /* Flags of `clipfarm node` (cf_api_service_add_options). */
    int http_threads;
    int max_body_bytes;
    double max_upload_bytes;
    int max_header_bytes;
    int request_timeout_ms;
    int keep_alive_timeout_ms;
    double rate_limit;
    double rate_burst;
    int auth_cache_ms;
    int http_thread_stack_kib;
    int auth_negative_ms;
    int auth_fail_limit;
    int max_event_streams;
    int max_event_streams_per_key;
    int max_conns_per_addr;
    bool insecure_no_auth;
    bool no_render;     /* serve the API only; never take compositions */
    char *render_mode;  /* "cluster" (default, NULL) or "local" */
    char *redis_prefix; /* queue, cache and rate-limit keys (NULL: "cf:") */
    int render_jobs;
    /* Source policy (lib/core/cf_source_policy.h). */
    char *media_roots;         /* '\n'-separated directories */
    char *allow_source_nets;   /* '\n'-separated CIDRs */
    double max_source_bytes;   /* one source download (default 20 GiB) */
    int fetch_timeout_s;       /* one source download, whole (default 3600) */
    double source_cache_bytes; /* DATA_DIR/cache/sources bound (default 20 GiB) */
    double upload_quota_bytes; /* bytes of uploads one key may hold (default 10 GiB) */
    int blob_keep_s;           /* unreferenced uploads are removed after (default 7 days) */
    /* S3 (lib/net/cf_s3.h): enabled by an endpoint, a region, a credentials
     * file or AWS_ACCESS_KEY_ID in the environment. */
    char *s3_endpoint;
    char *s3_region;
    char *s3_credentials_file;
    bool s3_path_style;
    double s3_part_bytes;
    /* Webhooks (node/api/cf_webhook.h). */
    char *allow_webhook_nets; /* '\n'-separated CIDRs */
    int webhook_max_age_s;
    int webhook_retry_base_ms;
    int webhook_timeout_ms;
    /* Housekeeping (cf_state_keeper.h) and claims; 0: the default. */
    int reap_interval_ms;
    int reconcile_interval_ms;
    int purge_interval_ms;
    int keep_completed_s;
    int keep_failed_s;
    int idempotency_keep_s; /* 0: no window (retention alone decides) */
    int claim_ttl_ms;
    int claim_max_expiries;
    int priority_aging_s;
} cf_api_service_options_t;

/* Fills OPTS with the defaults of cf_api_options_default and one render
 * slot per cfg->slots. */
void cf_api_service_options_default(cf_api_service_options_t *opts);

/* Appends the service's command-line options (--http-threads,
 * --max-body-bytes, --rate-limit, --insecure-no-auth, ...) bound to OPTS to
 * TABLE, an option table of CAPACITY entries ending with a {0} entry, which
 * stays its end. Returns 0, or -1 when they do not fit. */
int cf_api_service_add_options(cf_api_service_options_t *opts, cf_option_t *table, size_t capacity);

/* Connects to Postgres and Redis, opens the blob store and the source
 * cache under the data dir, starts the REST API and the renderer. Returns
 * NULL with a one-line reason in err (bad option, address in use, no API
 * keys on a public address...). */
cf_api_service_t *cf_api_service_new(const cf_api_service_options_t *opts, char *err,
                                     size_t errlen);

/* Stops the renderer and the API and frees everything. Safe on NULL. */
void cf_api_service_destroy(cf_api_service_t **self_p);

/* The HTTP port bound. */
int cf_api_service_port(const cf_api_service_t *self);

#endif
