/* cf_httpc: a small HTTP client on libcurl for the clipfarm REST API (the
 * client commands) and for node-to-node pulls (outputs held by a peer).
 *
 * A client keeps one libcurl handle, so consecutive requests reuse the
 * connection (keep-alive). One client per thread.
 *
 * Transport failures (connection refused, timeout, DNS) return -1 with a
 * one-line reason that names the URL tried; any HTTP answer, error statuses
 * included, returns 0 with the status in the response. */
#ifndef CF_HTTPC_H
#define CF_HTTPC_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cf_httpc_t cf_httpc_t;

typedef struct {
    long status;
    char *body; /* NUL-terminated; NULL when streamed to a sink */
    size_t body_len;
    char content_type[128];
    char etag[128];
    char location[512];
    long retry_after_s;      /* -1 when absent */
    int64_t content_length;  /* -1 when absent */
    int64_t range_start;     /* from Content-Range; -1 when absent */
    int64_t range_total;     /* from Content-Range; -1 when absent or '*' */
    char content_range[128]; /* the raw header, for proxies */
    char content_disposition[256];
    char last_modified[64];
} cf_httpc_response_t;

/* Creates a client for BASE_URL ("http://host:port", no trailing path
 * needed). API_KEY (may be NULL) is sent as "Authorization: Bearer KEY".
 * timeout_ms bounds connecting; a transfer that moves no byte for
 * stall_timeout_ms is aborted (0: defaults of 5 s and 30 s). Returns NULL
 * with a reason in err. */
cf_httpc_t *cf_httpc_new(const char *base_url, const char *api_key, int timeout_ms,
                         int stall_timeout_ms, char *err, size_t errlen);
void cf_httpc_destroy(cf_httpc_t **self_p);

/* Makes every request of the client end, within about a second, once
 * *CANCEL (borrowed; NULL: never) is true: a request in flight returns -1
 * with "cancelled" in err, also while stalled. */
void cf_httpc_set_cancel(cf_httpc_t *self, const atomic_bool *cancel);

/* The base URL the client talks to. */
const char *cf_httpc_base_url(const cf_httpc_t *self);

/* Sends METHOD PATH (with any query) with an optional BODY of CONTENT_TYPE.
 * HEADERS (may be NULL, NULL-terminated) are extra "Name: value" lines. The
 * answer's body is kept in resp->body. Returns 0 when the server answered,
 * -1 with a reason naming the URL otherwise. Free the response with
 * cf_httpc_response_clear. */
int cf_httpc_request(cf_httpc_t *self, const char *method, const char *path,
                     const char *const *headers, const char *content_type, const void *body,
                     size_t body_len, cf_httpc_response_t *resp, char *err, size_t errlen);

/* Receives body bytes of a 2xx answer; returns 0 to go on, -1 to abort. */
typedef int(cf_httpc_sink_fn)(void *arg, const void *data, size_t len);
/* Progress: bytes received so far and expected in total (-1 unknown). */
typedef void(cf_httpc_progress_fn)(void *arg, int64_t received, int64_t total);
/* Called once the headers arrived and before any body byte reaches SINK;
 * returns 0 to go on, -1 to abort. */
typedef int(cf_httpc_headers_fn)(void *arg, const cf_httpc_response_t *resp);

/* GET PATH streaming a 2xx body into SINK (an error status's body is kept
 * in resp->body instead, for its message). Returns as cf_httpc_request; -1
 * also when SINK or ON_HEADERS aborted (err then says so). */
int cf_httpc_get_stream(cf_httpc_t *self, const char *path, const char *const *headers,
                        cf_httpc_headers_fn *on_headers, cf_httpc_sink_fn *sink,
                        cf_httpc_progress_fn *progress, void *arg, cf_httpc_response_t *resp,
                        char *err, size_t errlen);

void cf_httpc_response_clear(cf_httpc_response_t *resp);

/* One line describing an error answer: "HTTP 404 not_found: composition
 * 1234 not found (field: id)" from the API's JSON error, or the status and
 * the start of the body when it is not one. */
void cf_httpc_error_line(const cf_httpc_response_t *resp, char *out, size_t outlen);

#endif
