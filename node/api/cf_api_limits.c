/* cf_api_limits: what keeps one client from taking the node: the rate limit
 * per key (a token bucket in Redis, leased a few tokens at a time), the cap
 * on connections per client address and the caps on event streams per key
 * and per node (each stream holds an HTTP thread while it is open). */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_api_internal.h"
#include "cf_log.h"
#include "cf_ratelimit.h"

/* A client told to come back later (over a connection or stream limit)
 * waits this long. */
#define S_RETRY_AFTER_S 5

void cf_api_count_rejected(cf_api_t *api, const char *reason)
{
    const char *labels[] = {reason};
    cf_metric_inc(api->m_rejected, labels, 1);
}

/* ------------------------------------------------------------ rate limit */

/* Takes a token from the caller's bucket. Returns 0 or the status sent
 * (429). Fails open when Redis is unreachable: a rate limiter must not turn
 * a Redis outage into an API outage. */
int cf_api_rate_limit(cf_api_req_t *req)
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

/* ------------------------------------------------------------ connections and streams */

/* Adds DELTA to NAME's count in TABLE (SLOTS entries, a power of two) and
 * returns the new count, or -1 when NAME is new and the table full (then
 * nothing changed). Called with limit_lock held. */
static int s_counted_add(cf_api_counted_t *table, int slots, const char *name, int delta)
{
    unsigned mask = (unsigned)slots - 1;
    cf_api_counted_t *reuse = NULL;
    for (unsigned i = 0, at = cf_api_hash(name) & mask; i < (unsigned)slots;
         i++, at = (at + 1) & mask) {
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
    return cf_api_send_429(req, "too_many_streams",
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
int cf_api_conn_opened(const struct mg_connection *conn, void **conn_data)
{
    (void)conn;
    *conn_data = calloc(1, sizeof(s_conn_state_t));
    return 0;
}

void cf_api_conn_closed(const struct mg_connection *conn)
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
int cf_api_conn_cap(cf_api_req_t *req)
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
    return cf_api_send_429(req, "too_many_connections",
                           "too many connections from this address; close some and retry",
                           S_RETRY_AFTER_S);
}

void cf_api_limits_collect(cf_api_t *api)
{
    pthread_mutex_lock(&api->limit_lock);
    cf_metric_set(api->m_streams, NULL, api->streams_open);
    cf_metric_set(api->m_conns, NULL, api->conns_open);
    pthread_mutex_unlock(&api->limit_lock);
}

/* ------------------------------------------------------------ lifecycle */

int cf_api_limits_init(cf_api_t *api, char *err, size_t errlen)
{
    const cf_api_options_t *opts = &api->opts;
    pthread_rwlock_init(&api->lease_lock, NULL);
    pthread_mutex_init(&api->limit_lock, NULL);
    /* Lease ~50 ms worth of tokens per round trip to Redis, never more than
     * a quarter of the burst: exact for small limits, cheap for big ones. */
    double lease = opts->rate_limit * 0.05;
    if (lease > opts->rate_burst / 4)
        lease = opts->rate_burst / 4;
    if (lease > 1000)
        lease = 1000;
    api->lease_size = lease >= 1 ? (int)lease : 1;
    /* Every connection holds a thread, so there are never more addresses
     * than threads; streams are kept to half the threads so that the other
     * half always answers /healthz and the API. */
    api->max_streams = opts->max_event_streams;
    if (api->max_streams > opts->http_threads / 2)
        api->max_streams = opts->http_threads / 2;
    api->conn_slots = s_pow2_at_least(2 * opts->http_threads);
    api->stream_slots = s_pow2_at_least(2 * api->max_streams);
    api->conns = calloc((size_t)api->conn_slots, sizeof *api->conns);
    api->streams = calloc((size_t)api->stream_slots, sizeof *api->streams);
    if (!api->conns || !api->streams) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

void cf_api_limits_fini(cf_api_t *api)
{
    pthread_rwlock_destroy(&api->lease_lock);
    pthread_mutex_destroy(&api->limit_lock);
    free(api->conns);
    free(api->streams);
    api->conns = api->streams = NULL;
}
