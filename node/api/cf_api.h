/* cf_api: the REST API every node serves (civetweb).
 *
 * Routes, their handlers and the OpenAPI document all come from one table
 * (cf_api_routes.c), so the document lists exactly the routes served.
 * civetweb serves each connection on one of http_threads threads: size it
 * for the keep-alive clients expected (a connection holds its thread while
 * idle up to keep_alive_timeout_ms, and one that never sends a request up
 * to request_timeout_ms). Threads are many and small (http_thread_stack_kib)
 * so that idle sockets and event streams, both capped, leave threads free
 * for /healthz and the API. No handler runs libav work: rendering happens
 * in the renderer's own threads (cf_worker).
 *
 * Errors are JSON {"error": {"code", "message", "field"}} with the status
 * that fits; /api/v1 routes need "Authorization: Bearer KEY" (unless
 * insecure_no_auth) and are rate-limited per key with a token bucket in
 * Redis. */
#ifndef CF_API_H
#define CF_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_apikey.h"

typedef struct cf_s3_t cf_s3_t;

typedef struct cf_api_t cf_api_t;
typedef struct cf_db cf_db_t;
typedef struct cf_cache cf_cache_t;
typedef struct cf_metrics_t cf_metrics_t;
typedef struct cf_blob_store_t cf_blob_store_t;
typedef struct cf_source_policy_t cf_source_policy_t;

/* The cluster as this node sees it, as a new JSON object in the shape of
 * cf_node_snapshot (node/cluster/cf_node.h): id, coordinator, epoch, peers (id,
 * state, http_endpoint, capabilities, load...), counters. */
typedef struct json_t *(cf_api_cluster_fn)(void *arg);

typedef struct {
    const char *http_addr;         /* HOST:PORT to listen on (port 0: any free port) */
    int http_threads;              /* connections served at once (default 1024) */
    int http_thread_stack_kib;     /* stack of each HTTP thread (default 256; 1024 under ASan) */
    int64_t max_body_bytes;        /* JSON request bodies (default 1 MiB) */
    int64_t max_upload_bytes;      /* POST /api/v1/media (default 1 GiB) */
    int max_header_bytes;          /* request line + headers (default 16 KiB) */
    int request_timeout_ms;        /* to receive a request head (whole), or the longest stall
                                      inside a body or a response write (default 5000) */
    int keep_alive_timeout_ms;     /* idle keep-alive connection (default 2000) */
    double rate_limit;             /* requests per second per key (default 50; 0: off) */
    double rate_burst;             /* bucket size (default 100) */
    int auth_cache_ms;             /* how long a verified key is trusted without asking
                                      Postgres again; bounds how late a revocation bites
                                      (default 1000) */
    int auth_negative_ms;          /* how long an unknown key id is answered 401 without asking
                                      Postgres again (default 5000; 0: off) */
    int auth_fail_limit;           /* failed authentications per client address per minute
                                      before it gets 429 (default 30; 0: off) */
    int max_event_streams;         /* open event streams on this node (default 256, at most
                                      half of http_threads) */
    int max_event_streams_per_key; /* open event streams of one key (default 16) */
    int max_conns_per_addr;        /* connections of one client address (default 128; 0: off) */
    bool insecure_no_auth;         /* serve /api/v1 without keys (even off loopback) */
    const char *redis_url;         /* rate limits and the queue (required) */
    const char *redis_prefix;      /* key prefix of the queue and cache (default "cf:") */
    const char *data_dir;          /* outputs live in DATA_DIR/outputs */
    const char *node_id;           /* this node's id (outputs it holds are local) */
    /* API key hashing key, derived from the cluster secret; the credential
     * nodes send each other (cf_api_peer_credential) is derived from it. */
    uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES];
    /* Shared objects, borrowed for the API's lifetime. */
    cf_db_t *db;
    cf_cache_t *cache;
    cf_metrics_t *metrics;
    cf_blob_store_t *blobs;
    /* Cluster membership; NULL for a node on its own (then it reports
     * itself as the whole cluster and serves only outputs it holds). */
    cf_api_cluster_fn *cluster;
    void *cluster_arg;
    /* What compositions may name as sources (borrowed; NULL: any). */
    const cf_source_policy_t *policy;
    int64_t upload_quota_bytes;               /* per key, 0: none (default 10 GiB) */
    const cf_source_policy_t *webhook_policy; /* webhook_url addresses (borrowed; NULL: any) */
    cf_s3_t *s3;                              /* NULL: s3:// sources and destinations refused */
} cf_api_options_t;

/* Fills OPTS with the defaults above (pointers NULL). */
void cf_api_options_default(cf_api_options_t *opts);

/* Checks the options, refuses to serve a non-loopback address without any
 * API key (unless insecure_no_auth), registers the HTTP metrics and starts
 * listening. Returns NULL with a one-line reason in err. */
cf_api_t *cf_api_new(const cf_api_options_t *opts, char *err, size_t errlen);

/* Stops serving (waits for running requests) and frees. Safe on NULL. */
void cf_api_destroy(cf_api_t **self_p);

/* The port actually bound (useful with port 0). */
int cf_api_port(const cf_api_t *self);

#endif
