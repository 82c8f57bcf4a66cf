/* Internals shared by the REST API's files (cf_api*.c). Not for other
 * modules: they use cf_api.h.
 *
 *   cf_api.c         options, routing, dispatch, request metrics, lifecycle
 *   cf_api_pool.c    pools of Redis connections and queue producers
 *   cf_api_http.c    response and request helpers
 *   cf_api_auth.c    API keys, their caches, failed-login limits, peer credentials
 *   cf_api_limits.c  rate-limit leases, connections per address, event streams
 *   cf_api_cache.c   the in-process composition cache (its own module)
 *   cf_api_routes.c  the route table and the OpenAPI document
 *   cf_api_blobs.c   the peer-only blob route the data plane pulls from
 *   the rest         handlers */
#ifndef CF_API_INTERNAL_H
#define CF_API_INTERNAL_H

#include <civetweb.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

#include "cf_api.h"
#include "cf_api_cache.h"
#include "cf_metrics.h"
#include "cf_peer_auth.h"

/* A small blocking pool of connections (Redis contexts, queue producers):
 * HTTP threads far outnumber the connections worth keeping open. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t freed;
    void **idle;
    int idle_count;
    int created;
    int max;
} cf_api_pool_t;

typedef struct {
    char id[CF_APIKEY_ID_CHARS + 1];
    uint8_t hash[CF_APIKEY_HASH_BYTES];
    bool revoked;
    bool admin;
    int64_t expires_ms; /* monotonic; 0: empty slot */
} cf_api_auth_entry_t;

#define CF_API_AUTH_CACHE_SLOTS 256

/* Key ids Postgres does not know, answered 401 without a query until
 * expires_ms (the negative cache: one query per unknown id and period). */
typedef struct {
    char id[CF_APIKEY_ID_CHARS + 1];
    int64_t expires_ms;
} cf_api_auth_miss_t;

#define CF_API_AUTH_MISS_SLOTS 1024

/* Failed authentications of one client address in the current minute. */
typedef struct {
    char addr[48];
    int64_t window_ms; /* start of the window (monotonic) */
    int failures;
} cf_api_auth_fail_t;

#define CF_API_AUTH_FAIL_SLOTS 4096

/* Open connections (or event streams) of one client address (or key); an
 * open-addressed table whose slots keep their name at count 0, so probe
 * chains never break. */
typedef struct {
    char name[48];
    int count;
} cf_api_counted_t;

typedef struct {
    char bucket[160];
    atomic_int tokens;
    int64_t expires_ms;
} cf_api_lease_t;

#define CF_API_LEASE_SLOTS 256

struct cf_api_t {
    cf_api_options_t opts; /* strings below are owned copies */
    char *http_addr;
    char *redis_url;
    char *redis_prefix;
    char *data_dir;
    char *node_id;
    struct mg_context *ctx;
    atomic_bool stopping; /* long-lived responses (event streams) end when set */
    int port;
    bool loopback;

    cf_metric_t *m_requests;     /* http_requests_total{method,route,status} */
    cf_metric_t *m_duration;     /* http_request_duration_seconds{method,route} */
    cf_metric_t *m_compositions; /* compositions_total{status} */
    cf_metric_t *m_queue_depth;  /* queue_depth{priority} */
    cf_metric_t *m_ratelimit_errors;
    cf_metric_t *m_uploads;       /* media_upload_bytes_total */
    cf_metric_t *m_node_counters; /* cluster counters, by name */
    cf_metric_t *m_beacons_rejected;
    cf_metric_t *m_messages_rejected;
    cf_metric_t *m_encode_fps; /* node_encode_fps{encoder} (calibration) */
    cf_metric_t *m_db_up;
    cf_metric_t *m_local_cache; /* api_local_cache_total{result} */
    cf_metric_t *m_refused;     /* api_refused_total{reason}: hostile or forbidden input */
    cf_metric_t *m_rejected;    /* api_rejected_total{reason} */
    cf_metric_t *m_auth_db;     /* auth_db_lookups_total */
    cf_metric_t *m_streams;     /* event_streams_open */
    cf_metric_t *m_conns;       /* http_connections_open */

    cf_api_pool_t redis_pool; /* redisContext * for rate limits and pings */
    cf_api_pool_t queue_pool; /* cf_queue_t * producers */

    /* API keys (cf_api_auth.c). */
    pthread_rwlock_t auth_lock;
    cf_api_auth_entry_t auth_cache[CF_API_AUTH_CACHE_SLOTS];
    cf_api_auth_miss_t auth_miss[CF_API_AUTH_MISS_SLOTS]; /* under auth_lock */
    pthread_mutex_t fail_lock;
    cf_api_auth_fail_t auth_fail[CF_API_AUTH_FAIL_SLOTS]; /* under fail_lock */

    /* Connections per client address and event streams per node and per
     * key (cf_api_limits.c), under limit_lock. */
    pthread_mutex_t limit_lock;
    cf_api_counted_t *conns; /* conn_slots entries */
    int conn_slots;
    int conns_open;
    cf_api_counted_t *streams; /* stream_slots entries */
    int stream_slots;
    int streams_open;
    int max_streams; /* max_event_streams, clamped to http_threads / 2 */

    /* Credential of node-to-node requests (cf_peer_auth.h); unset when
     * the node has no cluster secret (then none is sent or accepted). */
    cf_peer_auth_t peer_auth;

    /* Rate-limit tokens leased from the Redis buckets (cf_api_limits.c). */
    pthread_rwlock_t lease_lock;
    cf_api_lease_t leases[CF_API_LEASE_SLOTS];
    int lease_size;

    /* In-process composition cache (cf_api_cache.h), owned. */
    cf_localcache_t *local;
};

typedef struct cf_api_route_t cf_api_route_t;

/* One request being served, on the civetweb thread that serves it. */
typedef struct {
    cf_api_t *api;
    struct mg_connection *conn;
    const struct mg_request_info *ri;
    const cf_api_route_t *route;
    /* The {id} path parameter, when the route has one: a UUID in its
     * canonical spelling (the router lower-cases it), else as sent. */
    char id[128];
    char key_id[CF_APIKEY_ID_CHARS + 1]; /* authenticated key ("" when none) */
    bool admin; /* sees every key's compositions (admin key, or no auth at all) */
    bool peer;  /* authenticated as another node of the cluster */
    int status; /* status sent, for the metrics */
} cf_api_req_t;

/* A handler sends exactly one response and returns its status. */
typedef int(cf_api_handler_fn)(cf_api_req_t *req);

struct cf_api_route_t {
    const char *method;
    const char *pattern; /* "/api/v1/compositions/{id}": {name} matches one segment */
    cf_api_handler_fn *handler;
    bool auth;             /* needs an API key (and counts against its rate limit) */
    const char *operation; /* OpenAPI operationId */
    const char *summary;   /* OpenAPI summary */
    const char *openapi;   /* JSON of the rest of the OpenAPI operation object */
};

/* The route table (cf_api_routes.c), ending with a {0} entry. */
extern const cf_api_route_t cf_api_routes[];

/* Routes under /internal/ serve the other nodes of the cluster only: they
 * are authenticated by the peer credential alone (cf_api_peer_gate),
 * always, insecure_no_auth or not, whatever their auth field says, and are
 * left out of the OpenAPI document (not part of the API users see). */
#define CF_API_INTERNAL_PREFIX "/internal/"
static inline bool cf_api_route_internal(const cf_api_route_t *route)
{
    return !strncmp(route->pattern, CF_API_INTERNAL_PREFIX, sizeof CF_API_INTERNAL_PREFIX - 1);
}

/* The OpenAPI 3 document built from cf_api_routes (new reference). */
json_t *cf_api_openapi_document(void);

/* Handlers (cf_api_*.c). */
int cf_api_h_composition_create(cf_api_req_t *req);
int cf_api_h_composition_list(cf_api_req_t *req);
int cf_api_h_composition_get(cf_api_req_t *req);
int cf_api_h_composition_cancel(cf_api_req_t *req);
int cf_api_h_composition_segments(cf_api_req_t *req);
int cf_api_h_composition_output(cf_api_req_t *req);
int cf_api_h_composition_events(cf_api_req_t *req);
int cf_api_h_media_upload(cf_api_req_t *req);
int cf_api_h_cluster(cf_api_req_t *req);
int cf_api_h_healthz(cf_api_req_t *req);
int cf_api_h_readyz(cf_api_req_t *req);
int cf_api_h_metrics(cf_api_req_t *req);
int cf_api_h_openapi(cf_api_req_t *req);
int cf_api_h_internal_blob(cf_api_req_t *req);

/* Collect hook: cluster counters and encoder speeds from the snapshot. */
void cf_api_cluster_collect(void *arg);

/* ------------------------------------------------------------ responses (cf_api_http.c) */

/* The reason phrase of STATUS ("Unknown" for one we never send). */
const char *cf_api_reason(int status);

/* Sends STATUS with a body of content type CT. EXTRA_HEADERS (may be NULL)
 * are complete "Name: value\r\n" lines. Returns STATUS. */
int cf_api_send(cf_api_req_t *req, int status, const char *ct, const void *body, size_t len,
                const char *extra_headers);

/* Sends JSON text / a jansson value (the reference is stolen). */
int cf_api_send_json_text(cf_api_req_t *req, int status, const char *json, size_t len,
                          const char *extra_headers);
int cf_api_send_json(cf_api_req_t *req, int status, json_t *body, const char *extra_headers);

/* Sends {"error": {"code", "message", "field"}} (field null when NULL).
 * Returns STATUS. */
int cf_api_send_error(cf_api_req_t *req, int status, const char *code, const char *field,
                      const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Sends an error object the caller built (extra members such as "line" or
 * "problems" included); DETAIL is stolen. */
int cf_api_send_error_json(cf_api_req_t *req, int status, json_t *detail,
                           const char *extra_headers);

/* Maps a cf_db_rc_t to its status and sends it: not found 404, conflict and
 * terminal 409, invalid 400, unavailable 503 (Retry-After), else 500. */
int cf_api_send_db_error(cf_api_req_t *req, int rc, const char *what, const char *err);

/* Sends 429 {code, message, retry_after_s} with Retry-After: SECONDS and
 * closes the connection (for the protection limits, not the rate limit). */
int cf_api_send_429(cf_api_req_t *req, const char *code, const char *message, int seconds);

/* Closes the connection after this response (the client may still be
 * sending a body we will not read). */
void cf_api_close_after(cf_api_req_t *req);

/* True for a HEAD request: cf_api_send and cf_api_send_file then send the
 * headers of the GET answer without its body. */
bool cf_api_is_head(const cf_api_req_t *req);

/* Serves the open file FD of SIZE bytes (FD is closed either way) as
 * content type CT with ETAG (quoted, as sent): 304 when If-None-Match names
 * it; one Range (206 with Content-Range, 416 outside the file; If-Range
 * with another tag gets the whole file; several ranges or a malformed one
 * the whole file, cf_http_parse_range), Content-Length and Accept-Ranges,
 * the body streamed from disk in pieces. EXTRA_HEADERS (may be NULL) are
 * complete "Name: value\r\n" lines. Returns the status sent. */
int cf_api_send_file(cf_api_req_t *req, int fd, int64_t size, const char *ct, const char *etag,
                     const char *extra_headers);

/* ------------------------------------------------------------ requests (cf_api_http.c) */

/* True when the request's Content-Type is MIME (parameters ignored). */
bool cf_api_content_type_is(cf_api_req_t *req, const char *mime);

/* Reads the whole body, at most MAX bytes, into *body_p (NUL-terminated,
 * caller frees). Returns 0, or the status of the error response it sent
 * (413 too large, 400 unreadable). */
int cf_api_read_body(cf_api_req_t *req, int64_t max, char **body_p, size_t *len_p);

/* Copies query parameter NAME (URL-decoded) into OUT. Returns its length, or
 * -1 when absent, -2 when longer than outlen - 1. */
int cf_api_query(cf_api_req_t *req, const char *name, char *out, size_t outlen);

/* ------------------------------------------------------------ auth (cf_api_auth.c) */

/* Sets up the key caches and derives the peer key from opts.hashkey;
 * cf_api_auth_fini undoes it. */
void cf_api_auth_init(cf_api_t *api);
void cf_api_auth_fini(cf_api_t *api);

/* Authentication of a route that needs it: a peer's credential (only where
 * peers fetch from each other) or an API key, refused outright for an
 * address that failed too often this minute. Sets req->key_id, admin and
 * peer. Returns 0, or the status of the error response sent. */
int cf_api_auth_gate(cf_api_req_t *req);

/* Authentication of a peer-only route: a valid peer credential
 * (req->peer set), else 401 (none, or a bad one) or 403 (an API key,
 * whatever its scope), counted as a failed authentication of the address.
 * Returns 0, or the status of the error response sent. */
int cf_api_peer_gate(cf_api_req_t *req);

/* The header line ("Name: value", no CRLF) that authenticates this node to
 * a peer for METHOD PATH: a BLAKE2b MAC, keyed by a key derived from the
 * cluster secret, of the method, the path and the time. Returns 0, or -1
 * when this node has no cluster secret. */
int cf_api_peer_credential(cf_api_t *api, const char *method, const char *path, char *out,
                           size_t outlen);

/* ------------------------------------------------------------ limits (cf_api_limits.c) */

/* Sizes the lease and the connection and stream tables from the options.
 * Returns 0, or -1 with a reason in err; cf_api_limits_fini frees (also
 * after a failed init). */
int cf_api_limits_init(cf_api_t *api, char *err, size_t errlen);
void cf_api_limits_fini(cf_api_t *api);

/* Takes a token from the caller's bucket (its key, or its address without
 * one). Returns 0 or the status sent (429). Fails open when Redis is
 * unreachable. */
int cf_api_rate_limit(cf_api_req_t *req);

/* civetweb's init_connection and connection_close callbacks: the state the
 * connection cap keeps per connection, and its count released at close. */
int cf_api_conn_opened(const struct mg_connection *conn, void **conn_data);
void cf_api_conn_closed(const struct mg_connection *conn);

/* Counts the connection under its address at its first request; answers
 * 429 on one over max_conns_per_addr (health checks excepted). Returns 0 or
 * the status sent. */
int cf_api_conn_cap(cf_api_req_t *req);

/* Admits one more event stream for the request's key (or address) and for
 * the node. Returns 0 (call cf_api_stream_leave when the stream ends), or
 * the status of the 429 sent (with Retry-After). */
int cf_api_stream_enter(cf_api_req_t *req);
void cf_api_stream_leave(cf_api_req_t *req);

/* Sets the gauges of open event streams and connections. */
void cf_api_limits_collect(cf_api_t *api);

/* Counts one rejection in api_rejected_total{reason}. */
void cf_api_count_rejected(cf_api_t *api, const char *reason);

/* ------------------------------------------------------------ shared objects (cf_api_pool.c) */

/* Creates the pools (cf_api_pools_init) and closes what they hold when the
 * API stops (cf_api_pools_drain, also safe after a failed start). */
void cf_api_pools_init(cf_api_t *api);
void cf_api_pools_drain(cf_api_t *api);

/* Takes an idle item, else creates one with CREATE(ARG) while fewer than
 * the pool's max exist, else waits for one to be put back. Returns NULL
 * when CREATE fails. */
void *cf_api_pool_get(cf_api_pool_t *pool, void *(*create)(void *arg), void *arg);
/* Gives ITEM back; NULL tells the pool the item taken was dropped. */
void cf_api_pool_put(cf_api_pool_t *pool, void *item);

/* A Redis connection from the pool (reconnecting when needed), or NULL with
 * a reason in err. Give it back with cf_api_redis_put (a broken one is
 * closed instead of pooled). */
redisContext *cf_api_redis_get(cf_api_t *api, char *err, size_t errlen);
void cf_api_redis_put(cf_api_t *api, redisContext *ctx);

/* A queue producer from the pool (NULL when none can be created); give it
 * back with cf_api_queue_put (it reconnects by itself). */
struct cf_queue;
struct cf_queue *cf_api_queue_get(cf_api_t *api);
void cf_api_queue_put(cf_api_t *api, struct cf_queue *q);

/* ------------------------------------------------------------ compositions */

/* Tenancy: other keys' compositions do not exist for a caller. Checks that
 * composition REQ->id exists and that the caller may see it (its own, or
 * any for an admin). Returns 0, with its JSON in *json_p (caller frees;
 * json_p may be NULL), or the status of the 404 (never 403: no existence
 * leak) or 503 response it sent. */
int cf_api_composition_visible(cf_api_req_t *req, char **json_p, size_t *len_p);

/* ------------------------------------------------------------ utilities (cf_api.c) */

/* Monotonic clock in milliseconds. */
int64_t cf_api_now_ms(void);

/* FNV-1a of TEXT, for the tables of addresses and key ids. */
unsigned cf_api_hash(const char *text);

#endif
