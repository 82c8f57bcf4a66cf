/* cf_webhook: the webhook sender thread (see cf_webhook.h). */
#define _GNU_SOURCE
#include "cf_webhook.h"

#include <curl/curl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cf_db.h"
#include "cf_json.h"
#include "cf_log.h"
#include "cf_source_policy.h"

#define S_LEASE_S 60 /* a claim outlives one attempt's timeout */
#define S_BATCH   8

struct cf_webhook_t {
    cf_webhook_options_t opts;
    char *holder;
    pthread_t thread;
    bool started;
    atomic_bool stop;
    pthread_mutex_t lock;
    pthread_cond_t wake;
};

void cf_webhook_options_default(cf_webhook_options_t *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->max_age_s = 3600;
    opts->retry_base_ms = 2000;
    opts->retry_max_ms = 300000;
    opts->timeout_ms = 10000;
    opts->poll_ms = 500;
}

void cf_webhook_sign(const char *secret, int64_t t, const char *body, char *out, size_t outlen)
{
    crypto_auth_hmacsha256_state state;
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    char stamp[24];
    int n = snprintf(stamp, sizeof stamp, "%lld.", (long long)t);
    crypto_auth_hmacsha256_init(&state, (const unsigned char *)secret, strlen(secret));
    crypto_auth_hmacsha256_update(&state, (const unsigned char *)stamp, (size_t)n);
    crypto_auth_hmacsha256_update(&state, (const unsigned char *)body, strlen(body));
    crypto_auth_hmacsha256_final(&state, mac);
    char hex[2 * sizeof mac + 1];
    sodium_bin2hex(hex, sizeof hex, mac, sizeof mac);
    snprintf(out, outlen, "t=%lld,v1=%s", (long long)t, hex);
}

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct {
    cf_webhook_t *self;
    bool refused_address;
} s_attempt_t;

static curl_socket_t s_open_socket(void *arg, curlsocktype purpose, struct curl_sockaddr *address)
{
    s_attempt_t *a = arg;
    if (purpose == CURLSOCKTYPE_IPCXN &&
        !cf_source_policy_addr_allowed(a->self->opts.policy, &address->addr)) {
        a->refused_address = true;
        return CURL_SOCKET_BAD;
    }
    return socket(address->family, address->socktype, address->protocol);
}

static size_t s_discard(char *data, size_t size, size_t nmemb, void *arg)
{
    return size * nmemb; /* the receiver's answer body is not ours to keep */
}

static int s_progress(void *arg, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    s_attempt_t *at = arg;
    return atomic_load(&at->self->stop) ? 1 : 0;
}

/* One POST. Returns the HTTP status (0 when none came) with a reason in
 * err for anything but 2xx. */
static long s_post(cf_webhook_t *self, const cf_db_webhook_t *item, char *err, size_t errlen)
{
    char secret[CF_APIKEY_WEBHOOK_SECRET_SIZE], signature[160], header[200];
    cf_apikey_webhook_secret(self->opts.hashkey, item->api_key_id, secret);
    cf_webhook_sign(secret, (int64_t)time(NULL), item->body, signature, sizeof signature);
    sodium_memzero(secret, sizeof secret);
    snprintf(header, sizeof header, "Clipfarm-Signature: %s", signature);
    char delivery[64];
    snprintf(delivery, sizeof delivery, "Clipfarm-Delivery: %lld", (long long)item->id);
    CURL *curl = curl_easy_init();
    if (!curl) {
        snprintf(err, errlen, "cannot start libcurl");
        return 0;
    }
    struct curl_slist *headers = NULL;
    headers = curl_slist_append(headers, "Content-Type: application/json");
    headers = curl_slist_append(headers, header);
    headers = curl_slist_append(headers, delivery);
    headers = curl_slist_append(headers, "Expect:");
    s_attempt_t attempt = {.self = self};
    char curl_err[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(curl, CURLOPT_URL, item->url);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(curl, CURLOPT_PROXY, "");
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, item->body);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(item->body));
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)self->opts.timeout_ms);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, (long)self->opts.timeout_ms);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, s_discard);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, s_progress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &attempt);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_err);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "clipfarm-webhook/" CF_VERSION);
    if (cf_source_policy_restricted(self->opts.policy)) {
        curl_easy_setopt(curl, CURLOPT_OPENSOCKETFUNCTION, s_open_socket);
        curl_easy_setopt(curl, CURLOPT_OPENSOCKETDATA, &attempt);
    }
    CURLcode rc = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(curl);
    curl_slist_free_all(headers);
    if (attempt.refused_address)
        snprintf(err, errlen, "webhook address not allowed");
    else if (rc == CURLE_OPERATION_TIMEDOUT)
        snprintf(err, errlen, "no answer within %d ms", self->opts.timeout_ms);
    else if (rc != CURLE_OK)
        snprintf(err, errlen, "%s", curl_err[0] ? curl_err : curl_easy_strerror(rc));
    else if (status < 200 || status >= 300)
        snprintf(err, errlen, "HTTP %ld", status);
    else
        err[0] = '\0';
    return rc == CURLE_OK ? status : 0;
}

/* Backoff before attempt N+1: base * 2^(N-1), capped, with +-25 % jitter so
 * a burst of failures does not come back as a burst. */
static int64_t s_backoff_ms(const cf_webhook_options_t *o, int attempts)
{
    int64_t ms = o->retry_base_ms;
    for (int i = 1; i < attempts && ms < o->retry_max_ms; i++)
        ms *= 2;
    if (ms > o->retry_max_ms)
        ms = o->retry_max_ms;
    int64_t jitter = ms / 4;
    return ms - jitter + (int64_t)randombytes_uniform((uint32_t)(2 * jitter + 1));
}

static void s_deliver(cf_webhook_t *self, const cf_db_webhook_t *item)
{
    cf_db_t *db = self->opts.db;
    char err[512] = "", dberr[256], payload[1024];
    if (item->age_s > self->opts.max_age_s) {
        snprintf(payload, sizeof payload,
                 "{\"attempt\":%d,\"abandoned\":true,\"error\":\"no "
                 "delivery within %d s\"}",
                 item->attempts - 1, self->opts.max_age_s);
        cf_db_event_append(db, item->composition_id, "webhook", payload, NULL, dberr, sizeof dberr);
        cf_db_webhook_finish(db, item->id, self->holder, false, 0, true, dberr, sizeof dberr);
        cf_log_warn("webhook", "%s: gave up after %d attempt(s)", item->composition_id,
                    item->attempts - 1);
        return;
    }
    int64_t t0 = s_now_ms();
    long status = s_post(self, item, err, sizeof err);
    int64_t took = s_now_ms() - t0;
    bool ok = status >= 200 && status < 300;
    json_t *event = json_pack("{s:i,s:i,s:I,s:b}", "attempt", item->attempts, "status_code",
                              (int)status, "duration_ms", (json_int_t)took, "delivered", ok);
    if (event && !ok) {
        cf_json_utf8_scrub(err);
        json_object_set_new(event, "error", json_string(err));
    }
    char *text = event ? json_dumps(event, JSON_COMPACT) : NULL;
    json_decref(event);
    cf_db_event_append(db, item->composition_id, "webhook", text ? text : "{}", NULL, dberr,
                       sizeof dberr);
    free(text);
    int64_t retry = ok ? 0 : s_backoff_ms(&self->opts, item->attempts);
    cf_db_webhook_finish(db, item->id, self->holder, ok, retry, false, dberr, sizeof dberr);
    if (ok)
        cf_log_info("webhook", "%s: delivered (attempt %d, HTTP %ld)", item->composition_id,
                    item->attempts, status);
    else
        cf_log_info("webhook", "%s: attempt %d failed: %s; again in %lld ms", item->composition_id,
                    item->attempts, err, (long long)retry);
}

static void *s_main(void *arg)
{
    cf_webhook_t *self = arg;
    while (!atomic_load(&self->stop)) {
        cf_db_webhook_t *items = NULL;
        int count = 0;
        char err[256];
        if (cf_db_webhook_claim(self->opts.db, self->holder, S_LEASE_S, S_BATCH, &items, &count,
                                err, sizeof err) == CF_DB_OK) {
            for (int i = 0; i < count && !atomic_load(&self->stop); i++)
                s_deliver(self, &items[i]);
            cf_db_webhooks_free(&items, count);
        }
        if (count == S_BATCH)
            continue; /* more may be due */
        pthread_mutex_lock(&self->lock);
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += (long)self->opts.poll_ms * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        if (!atomic_load(&self->stop))
            pthread_cond_timedwait(&self->wake, &self->lock, &until);
        pthread_mutex_unlock(&self->lock);
    }
    return NULL;
}

cf_webhook_t *cf_webhook_new(const cf_webhook_options_t *opts, char *err, size_t errlen)
{
    if (!opts->db || !opts->holder) {
        snprintf(err, errlen, "webhooks: database and node id are required");
        return NULL;
    }
    cf_webhook_t *self = calloc(1, sizeof *self);
    if (!self || !(self->holder = strdup(opts->holder))) {
        free(self);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    self->opts = *opts;
    self->opts.holder = self->holder;
    pthread_mutex_init(&self->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&self->wake, &attr);
    pthread_condattr_destroy(&attr);
    if (pthread_create(&self->thread, NULL, s_main, self) != 0) {
        snprintf(err, errlen, "webhooks: cannot start a thread");
        cf_webhook_destroy(&self);
        return NULL;
    }
    self->started = true;
    return self;
}

void cf_webhook_destroy(cf_webhook_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_webhook_t *self = *self_p;
    atomic_store(&self->stop, true);
    if (self->started) {
        pthread_mutex_lock(&self->lock);
        pthread_cond_broadcast(&self->wake);
        pthread_mutex_unlock(&self->lock);
        pthread_join(self->thread, NULL);
    }
    pthread_mutex_destroy(&self->lock);
    pthread_cond_destroy(&self->wake);
    sodium_memzero(self->opts.hashkey, sizeof self->opts.hashkey);
    free(self->holder);
    free(self);
    *self_p = NULL;
}
