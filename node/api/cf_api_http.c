/* cf_api_http: what every handler uses to answer (status line, headers,
 * JSON bodies, errors in one shape) and to read the request (content type,
 * body under a limit, query parameters). */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cf_api_internal.h"
#include "cf_db.h"
#include "cf_http_parse.h"
#include "cf_json.h"
#include "cf_log.h"

/* ------------------------------------------------------------ responses */

const char *cf_api_reason(int status)
{
    switch (status) {
        case 200:
            return "OK";
        case 201:
            return "Created";
        case 202:
            return "Accepted";
        case 204:
            return "No Content";
        case 206:
            return "Partial Content";
        case 304:
            return "Not Modified";
        case 400:
            return "Bad Request";
        case 401:
            return "Unauthorized";
        case 403:
            return "Forbidden";
        case 404:
            return "Not Found";
        case 405:
            return "Method Not Allowed";
        case 408:
            return "Request Timeout";
        case 409:
            return "Conflict";
        case 411:
            return "Length Required";
        case 413:
            return "Content Too Large";
        case 415:
            return "Unsupported Media Type";
        case 416:
            return "Range Not Satisfiable";
        case 422:
            return "Unprocessable Content";
        case 429:
            return "Too Many Requests";
        case 431:
            return "Request Header Fields Too Large";
        case 500:
            return "Internal Server Error";
        case 502:
            return "Bad Gateway";
        case 503:
            return "Service Unavailable";
        case 504:
            return "Gateway Timeout";
        case 507:
            return "Insufficient Storage";
        default:
            return "Unknown";
    }
}

void cf_api_close_after(cf_api_req_t *req)
{
    mg_disable_connection_keep_alive(req->conn);
}

bool cf_api_is_head(const cf_api_req_t *req)
{
    return req->ri && req->ri->request_method && !strcmp(req->ri->request_method, "HEAD");
}

int cf_api_send(cf_api_req_t *req, int status, const char *ct, const void *body, size_t len,
                const char *extra_headers)
{
    char head[1024];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n"
                     "%s\r\n",
                     status, cf_api_reason(status), ct, len, extra_headers ? extra_headers : "");
    if (n < 0 || (size_t)n >= sizeof head) {
        /* Extra headers never come near this; refuse rather than truncate. */
        status = 500;
        n = snprintf(head, sizeof head,
                     "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n");
        len = 0;
    }
    /* A HEAD answer has the headers of the GET, Content-Length included,
     * and no body. */
    if (cf_api_is_head(req))
        len = 0;
    /* Headers and a small body in one write: one TCP segment, no delay. */
    if (len <= 8192) {
        char packet[sizeof head + 8192];
        memcpy(packet, head, (size_t)n);
        if (len)
            memcpy(packet + n, body, len);
        mg_write(req->conn, packet, (size_t)n + len);
    } else {
        mg_write(req->conn, head, (size_t)n);
        mg_write(req->conn, body, len);
    }
    req->status = status;
    return status;
}

int cf_api_send_json_text(cf_api_req_t *req, int status, const char *json, size_t len,
                          const char *extra_headers)
{
    return cf_api_send(req, status, "application/json", json, len, extra_headers);
}

int cf_api_send_json(cf_api_req_t *req, int status, json_t *body, const char *extra_headers)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text)
        return cf_api_send_error(req, 500, "internal", NULL, "out of memory");
    int rc = cf_api_send_json_text(req, status, text, strlen(text), extra_headers);
    free(text);
    return rc;
}

int cf_api_send_error_json(cf_api_req_t *req, int status, json_t *detail, const char *extra_headers)
{
    if (!json_object_get(detail, "field"))
        json_object_set_new(detail, "field", json_null());
    return cf_api_send_json(req, status, json_pack("{s:o}", "error", detail), extra_headers);
}

int cf_api_send_error(cf_api_req_t *req, int status, const char *code, const char *field,
                      const char *fmt, ...)
{
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    cf_json_utf8_scrub(message); /* may quote a decoded path or a cut value */
    json_t *detail = json_pack("{s:s,s:s,s:o}", "code", code, "message", message, "field",
                               field ? json_string(field) : json_null());
    return cf_api_send_error_json(req, status, detail, NULL);
}

int cf_api_send_db_error(cf_api_req_t *req, int rc, const char *what, const char *err)
{
    switch (rc) {
        case CF_DB_NOT_FOUND:
            return cf_api_send_error(req, 404, "not_found", NULL, "%s not found", what);
        case CF_DB_CONFLICT:
            return cf_api_send_error(req, 409, "conflict", NULL, "%s", err);
        case CF_DB_ILLEGAL:
        case CF_DB_TERMINAL:
            return cf_api_send_error(req, 409, "conflict", NULL, "%s", err);
        case CF_DB_INVALID:
            return cf_api_send_error(req, 400, "invalid_argument", NULL, "%s", err);
        case CF_DB_UNAVAILABLE: {
            json_t *detail = json_pack("{s:s,s:s}", "code", "database_unavailable", "message",
                                       "the database is unreachable; retry later");
            return cf_api_send_error_json(req, 503, detail, "Retry-After: 5\r\n");
        }
        default:
            cf_log_error("api", "%s %s: %s", req->ri->request_method, req->ri->local_uri, err);
            return cf_api_send_error(req, 500, "internal", NULL, "internal error");
    }
}

int cf_api_send_429(cf_api_req_t *req, const char *code, const char *message, int seconds)
{
    char headers[64];
    snprintf(headers, sizeof headers, "Retry-After: %d\r\n", seconds);
    json_t *detail =
        json_pack("{s:s,s:s,s:i}", "code", code, "message", message, "retry_after_s", seconds);
    cf_api_close_after(req);
    return cf_api_send_error_json(req, 429, detail, headers);
}

int cf_api_send_file(cf_api_req_t *req, int fd, int64_t size, const char *ct, const char *etag,
                     const char *extra_headers)
{
    if (cf_http_etag_matches(mg_get_header(req->conn, "If-None-Match"), etag)) {
        close(fd);
        char head[512];
        int n =
            snprintf(head, sizeof head,
                     "HTTP/1.1 304 Not Modified\r\nETag: %s\r\nContent-Length: 0\r\n\r\n", etag);
        mg_write(req->conn, head, (size_t)n);
        return req->status = 304;
    }
    cf_http_range_t range = {0, size - 1};
    const char *if_range = mg_get_header(req->conn, "If-Range");
    int ranged = cf_http_parse_range(mg_get_header(req->conn, "Range"), size, &range);
    if (ranged != 0 && if_range && strcmp(if_range, etag))
        ranged = 0; /* the file changed since the client's first part: send it whole */
    if (ranged < 0) {
        close(fd);
        char headers[128];
        snprintf(headers, sizeof headers, "Content-Range: bytes */%" PRId64 "\r\n", size);
        json_t *detail = json_pack("{s:s,s:s}", "code", "range_not_satisfiable", "message",
                                   "the requested range is outside the file");
        return cf_api_send_error_json(req, 416, detail, headers);
    }
    if (ranged == 0) {
        range.start = 0;
        range.end = size - 1;
    }
    int64_t length = size == 0 ? 0 : range.end - range.start + 1;
    char head[1024];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %" PRId64 "\r\n"
                     "Accept-Ranges: bytes\r\nETag: %s\r\n%s",
                     ranged ? "206 Partial Content" : "200 OK", ct, length, etag,
                     extra_headers ? extra_headers : "");
    if (ranged && n > 0 && (size_t)n < sizeof head)
        n += snprintf(head + n, sizeof head - (size_t)n,
                      "Content-Range: bytes %" PRId64 "-%" PRId64 "/%" PRId64 "\r\n", range.start,
                      range.end, size);
    if (n > 0 && (size_t)n < sizeof head)
        n += snprintf(head + n, sizeof head - (size_t)n, "\r\n");
    if (n < 0 || (size_t)n >= sizeof head) {
        close(fd); /* extra headers never come near this; refuse rather than truncate */
        return cf_api_send_error(req, 500, "internal", NULL, "response headers too long");
    }
    req->status = ranged ? 206 : 200;
    if (mg_write(req->conn, head, (size_t)n) <= 0 || cf_api_is_head(req)) {
        close(fd);
        return req->status;
    }
    /* Stream in pieces: a large file never sits in memory. */
    static const size_t piece = 256 * 1024;
    char *buf = malloc(piece);
    int64_t offset = range.start, left = length;
    if (!buf)
        cf_api_close_after(req); /* headers are out: a short body is all we can say */
    while (buf && left > 0) {
        size_t want = left < (int64_t)piece ? (size_t)left : piece;
        ssize_t got = pread(fd, buf, want, offset);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            /* Truncated under us: the client sees a short body and retries. */
            cf_api_close_after(req);
            break;
        }
        if (mg_write(req->conn, buf, (size_t)got) <= 0)
            break; /* the client went away */
        offset += got;
        left -= got;
    }
    free(buf);
    close(fd);
    return req->status;
}

/* ------------------------------------------------------------ requests */

bool cf_api_content_type_is(cf_api_req_t *req, const char *mime)
{
    const char *ct = mg_get_header(req->conn, "Content-Type");
    if (!ct)
        return false;
    while (*ct == ' ')
        ct++;
    size_t len = strlen(mime);
    if (strncasecmp(ct, mime, len))
        return false;
    return ct[len] == '\0' || ct[len] == ';' || ct[len] == ' ';
}

int cf_api_read_body(cf_api_req_t *req, int64_t max, char **body_p, size_t *len_p)
{
    *body_p = NULL;
    *len_p = 0;
    long long declared = req->ri->content_length;
    if (declared > max) {
        cf_api_close_after(req); /* do not read (or drain) what we refuse */
        return cf_api_send_error(req, 413, "too_large", NULL,
                                 "request body of %lld bytes is over the limit of %lld bytes",
                                 declared, (long long)max);
    }
    size_t cap = declared >= 0 ? (size_t)declared + 1 : 4096;
    char *body = malloc(cap);
    size_t len = 0;
    if (!body)
        return cf_api_send_error(req, 500, "internal", NULL, "out of memory");
    for (;;) {
        if (len + 1 >= cap) {
            if ((int64_t)len > max)
                break;
            cap *= 2;
            char *grown = realloc(body, cap);
            if (!grown) {
                free(body);
                return cf_api_send_error(req, 500, "internal", NULL, "out of memory");
            }
            body = grown;
        }
        int n = mg_read(req->conn, body + len, cap - 1 - len);
        if (n < 0) {
            free(body);
            cf_api_close_after(req);
            return cf_api_send_error(req, 400, "bad_request", NULL,
                                     "could not read the request body");
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (declared >= 0 && (long long)len < declared) {
        /* mg_read answers 0 also when the client stalls past the timeout. */
        free(body);
        cf_api_close_after(req);
        return cf_api_send_error(req, 408, "timeout", NULL,
                                 "the request body stalled after %zu of %lld bytes", len, declared);
    }
    if ((int64_t)len > max) {
        /* Chunked upload without a length that went over the limit. */
        free(body);
        cf_api_close_after(req);
        return cf_api_send_error(req, 413, "too_large", NULL,
                                 "request body is over the limit of %lld bytes", (long long)max);
    }
    body[len] = '\0';
    *body_p = body;
    *len_p = len;
    return 0;
}

int cf_api_query(cf_api_req_t *req, const char *name, char *out, size_t outlen)
{
    const char *qs = req->ri->query_string;
    if (!qs) {
        out[0] = '\0';
        return -1;
    }
    return mg_get_var(qs, strlen(qs), name, out, outlen);
}
