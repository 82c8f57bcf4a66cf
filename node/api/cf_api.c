/* cf_api: server core: civetweb setup, routing, authentication, rate
 * limiting, request metrics and the response helpers every handler uses. */
#define _GNU_SOURCE
#include "cf_api.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sodium.h>
#include <time.h>

#include "cf_api_internal.h"
#include "cf_db.h"
#include "cf_json.h"
#include "cf_log.h"
#include "cf_queue.h"
#include "cf_ratelimit.h"
#include "cf_redis.h"
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

/* A client told to come back later (over a connection, stream or
 * failed-login limit) waits this long. */
#define S_RETRY_AFTER_S   5
#define S_AUTH_WINDOW_MS  60000
#define S_PEER_HEADER     "X-Clipfarm-Peer-Auth"
#define S_PEER_MAX_SKEW_S 120

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

bool cf_api_is_uuid(const char *text)
{
    if (strlen(text) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        char c = text[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return false;
        } else if (!isxdigit((unsigned char)c)) {
            return false;
        }
    }
    return true;
}

/* ------------------------------------------------------------ pools */

static void s_pool_init(cf_api_pool_t *pool, int max)
{
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->freed, NULL);
    pool->max = max;
    pool->idle = calloc((size_t)max, sizeof(void *));
}

static void s_pool_drain(cf_api_pool_t *pool, void (*destroy)(void *item))
{
    for (int i = 0; i < pool->idle_count; i++)
        destroy(pool->idle[i]);
    free(pool->idle);
    pool->idle = NULL;
    pool->idle_count = 0;
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->freed);
}

void *cf_api_pool_get(cf_api_pool_t *pool, void *(*create)(void *arg), void *arg)
{
    pthread_mutex_lock(&pool->lock);
    while (pool->idle_count == 0 && pool->created >= pool->max)
        pthread_cond_wait(&pool->freed, &pool->lock);
    if (pool->idle_count > 0) {
        void *item = pool->idle[--pool->idle_count];
        pthread_mutex_unlock(&pool->lock);
        return item;
    }
    pool->created++;
    pthread_mutex_unlock(&pool->lock);
    /* Connecting happens outside the lock: others keep using idle items. */
    void *item = create(arg);
    if (!item) {
        pthread_mutex_lock(&pool->lock);
        pool->created--;
        pthread_cond_signal(&pool->freed);
        pthread_mutex_unlock(&pool->lock);
    }
    return item;
}

void cf_api_pool_put(cf_api_pool_t *pool, void *item)
{
    pthread_mutex_lock(&pool->lock);
    if (item)
        pool->idle[pool->idle_count++] = item;
    else
        pool->created--; /* the caller dropped a broken item */
    pthread_cond_signal(&pool->freed);
    pthread_mutex_unlock(&pool->lock);
}

typedef struct {
    cf_api_t *api;
    char *err;
    size_t errlen;
} s_create_arg_t;

static void *s_redis_create(void *arg)
{
    s_create_arg_t *a = arg;
    return cf_redis_connect(a->api->redis_url, 1000, a->err, a->errlen);
}

redisContext *cf_api_redis_get(cf_api_t *api, char *err, size_t errlen)
{
    s_create_arg_t arg = {api, err, errlen};
    return cf_api_pool_get(&api->redis_pool, s_redis_create, &arg);
}

void cf_api_redis_put(cf_api_t *api, redisContext *ctx)
{
    if (!ctx)
        return; /* cf_api_redis_get failed: nothing was lent */
    if (ctx->err) {
        redisFree(ctx);
        ctx = NULL; /* tells the pool one connection is gone */
    }
    cf_api_pool_put(&api->redis_pool, ctx);
}

static void s_redis_destroy(void *item)
{
    redisFree(item);
}

static void s_queue_destroy(void *item)
{
    cf_queue_t *q = item;
    cf_queue_destroy(&q);
}

/* ------------------------------------------------------------ responses */

static const char *s_reason(int status)
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
                     status, s_reason(status), ct, len, extra_headers ? extra_headers : "");
    if (n < 0 || (size_t)n >= sizeof head) {
        /* Extra headers never come near this; refuse rather than truncate. */
        status = 500;
        n = snprintf(head, sizeof head,
                     "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n");
        len = 0;
    }
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

/* ------------------------------------------------------------ auth */

static int s_auth_lookup(cf_api_t *api, const char *id, cf_api_auth_entry_t *out)
{
    unsigned slot = 0;
    for (const char *p = id; *p; p++)
        slot = slot * 31 + (unsigned char)*p;
    slot %= CF_API_AUTH_CACHE_SLOTS;
    int found = 0;
    pthread_rwlock_rdlock(&api->auth_lock);
    cf_api_auth_entry_t *entry = &api->auth_cache[slot];
    if (entry->expires_ms > cf_api_now_ms() && !strcmp(entry->id, id)) {
        *out = *entry;
        found = 1;
    }
    pthread_rwlock_unlock(&api->auth_lock);
    return found;
}

static void s_auth_store(cf_api_t *api, const cf_api_auth_entry_t *entry)
{
    if (api->opts.auth_cache_ms <= 0)
        return;
    unsigned slot = 0;
    for (const char *p = entry->id; *p; p++)
        slot = slot * 31 + (unsigned char)*p;
    slot %= CF_API_AUTH_CACHE_SLOTS;
    pthread_rwlock_wrlock(&api->auth_lock);
    api->auth_cache[slot] = *entry;
    api->auth_cache[slot].expires_ms = cf_api_now_ms() + api->opts.auth_cache_ms;
    pthread_rwlock_unlock(&api->auth_lock);
}

static unsigned s_hash(const char *text)
{
    unsigned h = 2166136261u; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h;
}

void cf_api_count_rejected(cf_api_t *api, const char *reason)
{
    const char *labels[] = {reason};
    cf_metric_inc(api->m_rejected, labels, 1);
}

/* Sends 429 with Retry-After and closes the connection. */
static int s_send_429(cf_api_req_t *req, const char *code, const char *message, int seconds)
{
    char headers[64];
    snprintf(headers, sizeof headers, "Retry-After: %d\r\n", seconds);
    json_t *detail =
        json_pack("{s:s,s:s,s:i}", "code", code, "message", message, "retry_after_s", seconds);
    cf_api_close_after(req);
    return cf_api_send_error_json(req, 429, detail, headers);
}

/* True when Postgres said recently that key ID does not exist. */
static bool s_auth_known_missing(cf_api_t *api, const char *id)
{
    cf_api_auth_miss_t *slot = &api->auth_miss[s_hash(id) % CF_API_AUTH_MISS_SLOTS];
    pthread_rwlock_rdlock(&api->auth_lock);
    bool missing = slot->expires_ms > cf_api_now_ms() && !strcmp(slot->id, id);
    pthread_rwlock_unlock(&api->auth_lock);
    return missing;
}

static void s_auth_store_missing(cf_api_t *api, const char *id)
{
    if (api->opts.auth_negative_ms <= 0)
        return;
    cf_api_auth_miss_t *slot = &api->auth_miss[s_hash(id) % CF_API_AUTH_MISS_SLOTS];
    pthread_rwlock_wrlock(&api->auth_lock);
    snprintf(slot->id, sizeof slot->id, "%s", id);
    slot->expires_ms = cf_api_now_ms() + api->opts.auth_negative_ms;
    pthread_rwlock_unlock(&api->auth_lock);
}

/* Seconds ADDR must wait before its next try after too many failed
 * authentications this minute; 0 when it may try. Counted per node: an
 * attacker spreading over N nodes gets N times the limit, never a query per
 * guess beyond it. */
static int s_auth_wait_s(cf_api_t *api, const char *addr, bool failed_now)
{
    if (api->opts.auth_fail_limit <= 0)
        return 0;
    cf_api_auth_fail_t *slot = &api->auth_fail[s_hash(addr) % CF_API_AUTH_FAIL_SLOTS];
    int64_t now = cf_api_now_ms();
    int wait_s = 0;
    pthread_mutex_lock(&api->fail_lock);
    bool mine = !strcmp(slot->addr, addr);
    bool expired = now - slot->window_ms >= S_AUTH_WINDOW_MS;
    if (failed_now) {
        /* A colliding address takes the slot over: at worst one attacker's
         * count restarts, which the limit per minute still bounds. */
        if (!mine || expired) {
            snprintf(slot->addr, sizeof slot->addr, "%s", addr);
            slot->window_ms = now;
            slot->failures = 0;
        }
        slot->failures++;
    } else if (mine && !expired && slot->failures >= api->opts.auth_fail_limit) {
        wait_s = (int)((slot->window_ms + S_AUTH_WINDOW_MS - now + 999) / 1000);
    }
    pthread_mutex_unlock(&api->fail_lock);
    return wait_s > 0 ? wait_s : 0;
}

/* Checks the request's API key. Returns 0 when it may go on, or the status
 * of the error response sent. */
static int s_authenticate(cf_api_req_t *req)
{
    cf_api_t *api = req->api;
    const char *header = mg_get_header(req->conn, "Authorization");
    if (!header)
        return cf_api_send_error(req, 401, "unauthorized", NULL,
                                 "missing API key: send 'Authorization: Bearer KEY'");
    const char *key = cf_apikey_from_bearer(header);
    char id[CF_APIKEY_ID_CHARS + 1], why[128];
    if (!key || cf_apikey_parse(key, id, why, sizeof why) < 0)
        return cf_api_send_error(req, 401, "unauthorized", NULL, "invalid API key");
    cf_api_auth_entry_t entry;
    if (!s_auth_lookup(api, id, &entry)) {
        if (s_auth_known_missing(api, id))
            return cf_api_send_error(req, 401, "unauthorized", NULL, "invalid API key");
        cf_db_api_key_t row = {0};
        char err[256];
        cf_metric_inc(api->m_auth_db, NULL, 1);
        int rc = cf_db_api_key_find(api->opts.db, id, &row, err, sizeof err);
        if (rc == CF_DB_NOT_FOUND) {
            s_auth_store_missing(api, id);
            return cf_api_send_error(req, 401, "unauthorized", NULL, "invalid API key");
        }
        if (rc != CF_DB_OK) {
            cf_db_api_key_clear(&row);
            return cf_api_send_db_error(req, rc, "API key", err);
        }
        memset(&entry, 0, sizeof entry);
        snprintf(entry.id, sizeof entry.id, "%s", id);
        if (row.hash && row.hash_len == CF_APIKEY_HASH_BYTES)
            memcpy(entry.hash, row.hash, CF_APIKEY_HASH_BYTES);
        entry.revoked = row.revoked_at != NULL;
        entry.admin = row.admin;
        cf_db_api_key_clear(&row);
        s_auth_store(api, &entry);
    }
    if (!cf_apikey_verify(api->opts.hashkey, key, entry.hash, sizeof entry.hash))
        return cf_api_send_error(req, 401, "unauthorized", NULL, "invalid API key");
    if (entry.revoked)
        return cf_api_send_error(req, 403, "key_revoked", NULL, "this API key has been revoked");
    snprintf(req->key_id, sizeof req->key_id, "%s", id);
    req->admin = entry.admin;
    return 0;
}

/* Takes a token from the caller's bucket. Returns 0 or the status sent
 * (429). Fails open when Redis is unreachable: a rate limiter must not turn
 * a Redis outage into an API outage. */
static int s_rate_limit(cf_api_req_t *req)
{
    cf_api_t *api = req->api;
    if (!(api->opts.rate_limit > 0))
        return 0;
    char bucket[160], err[256];
    if (req->key_id[0])
        snprintf(bucket, sizeof bucket, "%srl:key:%s", api->redis_prefix, req->key_id);
    else
        snprintf(bucket, sizeof bucket, "%srl:ip:%s", api->redis_prefix, req->ri->remote_addr);
    /* A token leased earlier from the shared bucket: no round trip. */
    unsigned slot = 0;
    for (const char *p = bucket; *p; p++)
        slot = slot * 31 + (unsigned char)*p;
    cf_api_lease_t *lease = &api->leases[slot % CF_API_LEASE_SLOTS];
    int64_t now = cf_api_now_ms();
    /* Readers take tokens with an atomic decrement under the read lock; a
     * refill takes the write lock. Request threads never wait on each other. */
    pthread_rwlock_rdlock(&api->lease_lock);
    bool leased = lease->expires_ms > now && !strcmp(lease->bucket, bucket) &&
                  atomic_fetch_sub(&lease->tokens, 1) > 0;
    pthread_rwlock_unlock(&api->lease_lock);
    if (leased)
        return 0;

    redisContext *ctx = cf_api_redis_get(api, err, sizeof err);
    double retry = 0;
    int granted = 0;
    int rc = ctx ? cf_ratelimit_take_n(ctx, bucket, api->opts.rate_limit, api->opts.rate_burst,
                                       api->lease_size, &granted, &retry, err, sizeof err)
                 : -1;
    cf_api_redis_put(api, ctx);
    if (rc < 0) {
        cf_metric_inc(api->m_ratelimit_errors, NULL, 1);
        cf_log_debug("api", "rate limit skipped: %s", err);
        return 0;
    }
    if (granted > 0) {
        /* Keep the rest for the next requests; unused ones lapse after a
         * second, so a lease never lets a key exceed its bucket by more. */
        pthread_rwlock_wrlock(&api->lease_lock);
        snprintf(lease->bucket, sizeof lease->bucket, "%s", bucket);
        atomic_store(&lease->tokens, granted - 1);
        lease->expires_ms = now + 1000;
        pthread_rwlock_unlock(&api->lease_lock);
        return 0;
    }
    long seconds = (long)ceil(retry);
    if (seconds < 1)
        seconds = 1;
    char headers[64];
    snprintf(headers, sizeof headers, "Retry-After: %ld\r\n", seconds);
    json_t *detail = json_pack("{s:s,s:s,s:I}", "code", "rate_limited", "message",
                               "too many requests for this API key; retry later", "retry_after_s",
                               (json_int_t)seconds);
    return cf_api_send_error_json(req, 429, detail, headers);
}

/* ------------------------------------------------------------ peers */

static void s_peer_key_init(cf_api_t *api)
{
    static const char context[] = "clipfarm peer http v1";
    uint8_t public_key[CF_APIKEY_HASHKEY_BYTES];
    cf_apikey_hashkey_derive(NULL, 0, public_key);
    /* Without a cluster secret the hashing key is public: so would be a
     * credential derived from it, and none is sent or accepted. */
    api->peer_key_set = sodium_memcmp(public_key, api->opts.hashkey, sizeof public_key) != 0;
    if (api->peer_key_set)
        crypto_generichash(api->peer_key, sizeof api->peer_key, (const unsigned char *)context,
                           sizeof context - 1, api->opts.hashkey, CF_APIKEY_HASHKEY_BYTES);
}

/* MAC of "v1\nTIME\nMETHOD\nPATH" as lowercase hex (65 bytes). */
static void s_peer_mac(const cf_api_t *api, long long when, const char *method, const char *path,
                       char hex[65])
{
    char message[1200];
    int n = snprintf(message, sizeof message, "v1\n%lld\n%s\n%s", when, method, path);
    if (n < 0 || (size_t)n >= sizeof message)
        n = (int)sizeof message - 1; /* paths are short; a cut one never matches */
    uint8_t mac[32];
    crypto_generichash(mac, sizeof mac, (const unsigned char *)message, (size_t)n, api->peer_key,
                       sizeof api->peer_key);
    sodium_bin2hex(hex, 65, mac, sizeof mac);
}

int cf_api_peer_credential(cf_api_t *api, const char *method, const char *path, char *out,
                           size_t outlen)
{
    if (!api->peer_key_set)
        return -1;
    long long now = (long long)time(NULL);
    char hex[65];
    s_peer_mac(api, now, method, path, hex);
    int n = snprintf(out, outlen, S_PEER_HEADER ": v1 %lld %s", now, hex);
    return n > 0 && (size_t)n < outlen ? 0 : -1;
}

/* True when VALUE is a credential of a node of this cluster for this
 * request, made within S_PEER_MAX_SKEW_S of our clock (so a copy seen on
 * the wire fetches the same path for two minutes at most). */
static bool s_peer_verify(cf_api_req_t *req, const char *value)
{
    cf_api_t *api = req->api;
    long long when = 0;
    char hex[80] = "";
    if (!api->peer_key_set || sscanf(value, "v1 %lld %79s", &when, hex) != 2 || strlen(hex) != 64)
        return false;
    long long skew = (long long)time(NULL) - when;
    if (skew > S_PEER_MAX_SKEW_S || skew < -S_PEER_MAX_SKEW_S)
        return false;
    char expected[65];
    s_peer_mac(api, when, req->ri->request_method, req->ri->local_uri ? req->ri->local_uri : "",
               expected);
    return sodium_memcmp(expected, hex, 64) == 0;
}

/* Authentication of a route that needs it: a peer's credential (only where
 * peers fetch from each other) or an API key, refused outright for an
 * address that failed too often this minute. Returns 0 or the status sent. */
static int s_auth_gate(cf_api_req_t *req)
{
    cf_api_t *api = req->api;
    const char *addr = req->ri->remote_addr;
    int wait_s = s_auth_wait_s(api, addr, false);
    if (wait_s > 0) {
        cf_api_count_rejected(api, "auth_blocked");
        return s_send_429(req, "too_many_failures",
                          "too many failed authentications from this address; retry later", wait_s);
    }
    const char *peer = mg_get_header(req->conn, S_PEER_HEADER);
    int status;
    if (peer && req->route->handler == cf_api_h_composition_output) {
        req->peer = s_peer_verify(req, peer);
        /* The node that proxied the request checked the caller's key and
         * its tenancy; here the peer stands for it. */
        req->admin = req->peer;
        status = req->peer
                     ? 0
                     : cf_api_send_error(req, 401, "unauthorized", NULL, "invalid peer credential");
    } else {
        status = s_authenticate(req);
    }
    if (status == 401 || status == 403) {
        cf_api_count_rejected(api, peer ? "peer_auth_failed" : "auth_failed");
        s_auth_wait_s(api, addr, true);
    }
    return status;
}

/* ------------------------------------------------------------ limits */

/* Adds DELTA to NAME's count in TABLE (SLOTS entries, a power of two) and
 * returns the new count, or -1 when NAME is new and the table full (then
 * nothing changed). Called with limit_lock held. */
static int s_counted_add(cf_api_counted_t *table, int slots, const char *name, int delta)
{
    unsigned mask = (unsigned)slots - 1;
    cf_api_counted_t *reuse = NULL;
    for (unsigned i = 0, at = s_hash(name) & mask; i < (unsigned)slots; i++, at = (at + 1) & mask) {
        cf_api_counted_t *slot = &table[at];
        if (!strcmp(slot->name, name)) {
            slot->count += delta;
            return slot->count;
        }
        if (!reuse && slot->count == 0)
            reuse = slot;
        if (!slot->name[0])
            break; /* end of the chain: NAME is not in the table */
    }
    if (!reuse || delta <= 0)
        return -1;
    snprintf(reuse->name, sizeof reuse->name, "%s", name);
    reuse->count = delta;
    return delta;
}

static int s_pow2_at_least(int n)
{
    int p = 64;
    while (p < n)
        p <<= 1;
    return p;
}

/* Whose streams a request's stream counts as: its key, or its address on a
 * node serving without keys. */
static void s_stream_owner(cf_api_req_t *req, char *out, size_t outlen)
{
    if (req->key_id[0])
        snprintf(out, outlen, "key:%s", req->key_id);
    else
        snprintf(out, outlen, "addr:%.42s", req->ri->remote_addr); /* an IPv6 one may be cut */
}

int cf_api_stream_enter(cf_api_req_t *req)
{
    cf_api_t *api = req->api;
    char owner[48];
    s_stream_owner(req, owner, sizeof owner);
    const char *refused = NULL;
    pthread_mutex_lock(&api->limit_lock);
    if (api->streams_open >= api->max_streams) {
        refused = "streams_node";
    } else {
        int count = s_counted_add(api->streams, api->stream_slots, owner, 1);
        if (count < 0) {
            refused = "streams_node";
        } else if (count > api->opts.max_event_streams_per_key) {
            s_counted_add(api->streams, api->stream_slots, owner, -1);
            refused = "streams_key";
        } else {
            api->streams_open++;
        }
    }
    pthread_mutex_unlock(&api->limit_lock);
    if (!refused)
        return 0;
    cf_api_count_rejected(api, refused);
    return s_send_429(req, "too_many_streams",
                      strcmp(refused, "streams_key")
                          ? "this node serves as many event streams as it can; retry later"
                          : "this API key has as many event streams open as it may; close one",
                      S_RETRY_AFTER_S);
}

void cf_api_stream_leave(cf_api_req_t *req)
{
    cf_api_t *api = req->api;
    char owner[48];
    s_stream_owner(req, owner, sizeof owner);
    pthread_mutex_lock(&api->limit_lock);
    s_counted_add(api->streams, api->stream_slots, owner, -1);
    api->streams_open--;
    pthread_mutex_unlock(&api->limit_lock);
}

/* What the API keeps about a connection (civetweb's user connection data),
 * from its first request to its close. */
typedef struct {
    char addr[48];
    bool counted; /* in api->conns under addr */
    bool over;    /* its address had more than max_conns_per_addr */
} s_conn_state_t;

/* civetweb calls these on the worker thread that takes a connection, before
 * it reads the first request (when it cannot tell the client's address
 * yet: mg_get_request_info answers NULL), and when it closes it. */
static int s_init_connection(const struct mg_connection *conn, void **conn_data)
{
    (void)conn;
    *conn_data = calloc(1, sizeof(s_conn_state_t));
    return 0;
}

static void s_connection_close(const struct mg_connection *conn)
{
    cf_api_t *api = mg_get_user_data(mg_get_context(conn));
    s_conn_state_t *state = mg_get_user_connection_data(conn);
    if (api && state && state->counted) {
        pthread_mutex_lock(&api->limit_lock);
        s_counted_add(api->conns, api->conn_slots, state->addr, -1);
        api->conns_open--;
        pthread_mutex_unlock(&api->limit_lock);
    }
    free(state);
}

/* Counts the connection under its address at its first request; answers
 * 429 on one over max_conns_per_addr (health checks excepted). Returns 0 or
 * the status sent. A connection that never completes a request cannot be
 * refused: it holds its thread until the request timeout, which is what
 * bounds idle and dripping sockets. */
static int s_conn_cap(cf_api_req_t *req)
{
    cf_api_t *api = req->api;
    s_conn_state_t *state = mg_get_user_connection_data(req->conn);
    if (state && !state->counted) {
        snprintf(state->addr, sizeof state->addr, "%s", req->ri->remote_addr);
        pthread_mutex_lock(&api->limit_lock);
        int count = s_counted_add(api->conns, api->conn_slots, state->addr, 1);
        api->conns_open += count > 0;
        pthread_mutex_unlock(&api->limit_lock);
        state->counted = count > 0;
        state->over = api->opts.max_conns_per_addr > 0 && count > api->opts.max_conns_per_addr;
    }
    const char *path = req->ri->local_uri ? req->ri->local_uri : "";
    if (!state || !state->over || !strcmp(path, "/healthz") || !strcmp(path, "/readyz"))
        return 0;
    cf_api_count_rejected(api, "conns_per_addr");
    return s_send_429(req, "too_many_connections",
                      "too many connections from this address; close some and retry",
                      S_RETRY_AFTER_S);
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
    /* Without keys there are no tenants: everyone sees everything. */
    req->admin = req->api->opts.insecure_no_auth;
    if (req->route->auth && !req->api->opts.insecure_no_auth) {
        int status = s_auth_gate(req);
        if (status)
            return status;
    }
    if (req->route->auth) {
        int status = s_rate_limit(req);
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
    int status = s_conn_cap(&req);
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
                             errmsg && *errmsg ? errmsg : s_reason(status), "field");
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text)
        return 1; /* let civetweb send its own page */
    mg_printf(conn,
              "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
              "Connection: close\r\n\r\n%s",
              status, s_reason(status), strlen(text), text);
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
    pthread_mutex_lock(&api->limit_lock);
    cf_metric_set(api->m_streams, NULL, api->streams_open);
    cf_metric_set(api->m_conns, NULL, api->conns_open);
    pthread_mutex_unlock(&api->limit_lock);
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

static void *s_queue_create(void *arg)
{
    cf_api_t *api = arg;
    cf_queue_options_t qo;
    cf_queue_options_default(&qo);
    qo.url = api->redis_url;
    qo.prefix = api->redis_prefix;
    qo.timeout_ms = 2000;
    char err[256];
    cf_queue_t *q = cf_queue_new(&qo, err, sizeof err);
    if (!q)
        cf_log_warn("api", "queue client: %s", err);
    return q;
}

cf_queue_t *cf_api_queue_get(cf_api_t *api)
{
    return cf_api_pool_get(&api->queue_pool, s_queue_create, api);
}

void cf_api_queue_put(cf_api_t *api, cf_queue_t *q)
{
    cf_api_pool_put(&api->queue_pool, q);
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
    if (cf_hostport_parse(opts->http_addr, host, sizeof host, &port, err, errlen) < 0)
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
    pthread_rwlock_init(&self->auth_lock, NULL);
    pthread_rwlock_init(&self->lease_lock, NULL);
    pthread_mutex_init(&self->fail_lock, NULL);
    pthread_mutex_init(&self->limit_lock, NULL);
    /* Lease ~50 ms worth of tokens per round trip to Redis, never more than
     * a quarter of the burst: exact for small limits, cheap for big ones. */
    double lease = opts->rate_limit * 0.05;
    if (lease > opts->rate_burst / 4)
        lease = opts->rate_burst / 4;
    if (lease > 1000)
        lease = 1000;
    self->lease_size = lease >= 1 ? (int)lease : 1;
    s_pool_init(&self->redis_pool, 16);
    s_pool_init(&self->queue_pool, 4);
    /* Every connection holds a thread, so there are never more addresses
     * than threads; streams are kept to half the threads so that the other
     * half always answers /healthz and the API. */
    self->max_streams = opts->max_event_streams;
    if (self->max_streams > opts->http_threads / 2)
        self->max_streams = opts->http_threads / 2;
    self->conn_slots = s_pow2_at_least(2 * opts->http_threads);
    self->stream_slots = s_pow2_at_least(2 * self->max_streams);
    self->conns = calloc((size_t)self->conn_slots, sizeof *self->conns);
    self->streams = calloc((size_t)self->stream_slots, sizeof *self->streams);
    if (!self->conns || !self->streams) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    s_peer_key_init(self);

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

    char metric_err[256];
    cf_metrics_t *m = opts->metrics;
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
    cf_metrics_on_collect(m, s_collect, self);
    cf_metrics_on_collect(m, cf_api_cluster_collect, self);

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
    callbacks.init_connection = s_init_connection;
    callbacks.connection_close = s_connection_close;
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
    if (cf_api_cache_start(self, err, errlen) < 0)
        goto fail;
    mg_set_auth_handler(self->ctx, "/", s_auth_pass, NULL);
    mg_set_request_handler(self->ctx, "/", s_handle, self);
    struct mg_server_port bound[4];
    int nports = mg_get_server_ports(self->ctx, 4, bound);
    self->port = nports > 0 ? bound[0].port : port;
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
    cf_api_cache_stop(self);
    if (self->opts.metrics) {
        cf_metrics_remove_collect(self->opts.metrics, s_collect, self);
        cf_metrics_remove_collect(self->opts.metrics, cf_api_cluster_collect, self);
    }
    s_pool_drain(&self->redis_pool, s_redis_destroy);
    s_pool_drain(&self->queue_pool, s_queue_destroy);
    pthread_rwlock_destroy(&self->auth_lock);
    pthread_rwlock_destroy(&self->lease_lock);
    pthread_mutex_destroy(&self->fail_lock);
    pthread_mutex_destroy(&self->limit_lock);
    free(self->conns);
    free(self->streams);
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
