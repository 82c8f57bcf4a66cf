/* cf_api_service: everything a node serves to users, started and stopped in
 * one call from `clipfarm node`: the Postgres pool, the Redis cache, the blob
 * store, the Prometheus registry, the REST API and the single-node renderer.
 *
 *     cf_api_service_options_t svc;
 *     cf_api_service_options_default(&svc);
 *     cf_option_t extra[] = {..., CF_API_SERVICE_CLI_OPTIONS(svc), {0}};
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
    /* Called with the renderer's load after every change (may be NULL). */
    void (*on_load)(void *arg, int free_slots, int in_flight);
    void *on_load_arg;
    /* Flags of `clipfarm node` (CF_API_SERVICE_CLI_OPTIONS). */
    int http_threads;
    int max_body_bytes;
    double max_upload_bytes;
    int max_header_bytes;
    int request_timeout_ms;
    int keep_alive_timeout_ms;
    double rate_limit;
    double rate_burst;
    int auth_cache_ms;
    bool insecure_no_auth;
    bool no_render; /* serve the API only; never take compositions */
    int render_jobs;
} cf_api_service_options_t;

/* Fills OPTS with the defaults of cf_api_options_default and one render
 * slot per cfg->slots. */
void cf_api_service_options_default(cf_api_service_options_t *opts);

/* The command-line options (cf_option_t entries) of the service, for the
 * extra option table of `clipfarm node`. */
#define CF_API_SERVICE_CLI_OPTIONS(o)                                                              \
    {"http-threads",                                                                               \
     "CF_HTTP_THREADS",                                                                            \
     CF_OPT_INT,                                                                                   \
     &(o).http_threads,                                                                            \
     1,                                                                                            \
     10000,                                                                                        \
     "HTTP connections served at once; size for the keep-alive clients (default 256)",             \
     "N"},                                                                                         \
        {"max-body-bytes",                                                                         \
         "CF_MAX_BODY_BYTES",                                                                      \
         CF_OPT_INT,                                                                               \
         &(o).max_body_bytes,                                                                      \
         1024,                                                                                     \
         1 << 30,                                                                                  \
         "largest JSON request body (default 1048576)",                                            \
         "N"},                                                                                     \
        {"max-upload-bytes",                                                                       \
         "CF_MAX_UPLOAD_BYTES",                                                                    \
         CF_OPT_DOUBLE,                                                                            \
         &(o).max_upload_bytes,                                                                    \
         1,                                                                                        \
         1e15,                                                                                     \
         "largest POST /api/v1/media upload (default 1073741824)",                                 \
         "N"},                                                                                     \
        {"max-header-bytes",                                                                       \
         "CF_MAX_HEADER_BYTES",                                                                    \
         CF_OPT_INT,                                                                               \
         &(o).max_header_bytes,                                                                    \
         1024,                                                                                     \
         1 << 20,                                                                                  \
         "largest request line plus headers (default 16384)",                                      \
         "N"},                                                                                     \
        {"http-request-timeout-ms",                                                                \
         "CF_HTTP_REQUEST_TIMEOUT_MS",                                                             \
         CF_OPT_INT,                                                                               \
         &(o).request_timeout_ms,                                                                  \
         100,                                                                                      \
         3600000,                                                                                  \
         "time to receive a request's headers or body (default 10000)",                            \
         "MS"},                                                                                    \
        {"http-keepalive-timeout-ms",                                                              \
         "CF_HTTP_KEEPALIVE_TIMEOUT_MS",                                                           \
         CF_OPT_INT,                                                                               \
         &(o).keep_alive_timeout_ms,                                                               \
         0,                                                                                        \
         3600000,                                                                                  \
         "idle time before a keep-alive connection is closed (default 2000)",                      \
         "MS"},                                                                                    \
        {"rate-limit",                                                                             \
         "CF_RATE_LIMIT",                                                                          \
         CF_OPT_DOUBLE,                                                                            \
         &(o).rate_limit,                                                                          \
         0,                                                                                        \
         1e9,                                                                                      \
         "API requests per second per key, 0 = off (default 50)",                                  \
         "N"},                                                                                     \
        {"rate-burst",                                                                             \
         "CF_RATE_BURST",                                                                          \
         CF_OPT_DOUBLE,                                                                            \
         &(o).rate_burst,                                                                          \
         1,                                                                                        \
         1e9,                                                                                      \
         "requests a key may send at once (default 100)",                                          \
         "N"},                                                                                     \
        {"auth-cache-ms",                                                                          \
         "CF_AUTH_CACHE_MS",                                                                       \
         CF_OPT_INT,                                                                               \
         &(o).auth_cache_ms,                                                                       \
         0,                                                                                        \
         60000,                                                                                    \
         "how long a checked API key is trusted; bounds how late a revocation bites "              \
         "(default 1000)",                                                                         \
         "MS"},                                                                                    \
        {"insecure-no-auth",                                                                       \
         "CF_INSECURE_NO_AUTH",                                                                    \
         CF_OPT_FLAG,                                                                              \
         &(o).insecure_no_auth,                                                                    \
         0,                                                                                        \
         0,                                                                                        \
         "serve /api/v1 without API keys, even on a non-loopback address",                         \
         NULL},                                                                                    \
        {"no-render",                                                                              \
         "CF_NO_RENDER",                                                                           \
         CF_OPT_FLAG,                                                                              \
         &(o).no_render,                                                                           \
         0,                                                                                        \
         0,                                                                                        \
         "serve the API only; take no compositions from the queue",                                \
         NULL},                                                                                    \
    {                                                                                              \
        "render-jobs", "CF_RENDER_JOBS", CF_OPT_INT, &(o).render_jobs, 0, 256,                     \
            "encoder threads per render (default: the renderer's choice)", "N"                     \
    }

/* Connects to Postgres and Redis, opens the blob store under the data dir,
 * starts the REST API and the renderer. Returns NULL with a one-line reason
 * in err (bad option, address in use, no API keys on a public address...). */
cf_api_service_t *cf_api_service_new(const cf_api_service_options_t *opts, char *err,
                                     size_t errlen);

/* Stops the renderer and the API and frees everything. Safe on NULL. */
void cf_api_service_destroy(cf_api_service_t **self_p);

/* The HTTP port bound. */
int cf_api_service_port(const cf_api_service_t *self);

#endif
