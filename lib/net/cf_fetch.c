#define _GNU_SOURCE
#include "cf_fetch.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cf_log.h"
#include "cf_s3.h"

static pthread_once_t s_curl_once = PTHREAD_ONCE_INIT;
static CURLcode s_curl_init_rc;

static void s_curl_init(void)
{
    s_curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (sodium_init() < 0)
        s_curl_init_rc = CURLE_FAILED_INIT;
}

static int s_local_file(const char *source, const cf_source_policy_t *policy, char **path_p,
                        char *err, size_t errlen)
{
    char decoded[4096], resolved[4096], why[256];
    if (cf_source_decode_file_url(source, decoded, sizeof decoded) < 0) {
        snprintf(err, errlen, "%s: malformed %%-escape", source);
        return -1;
    }
    if (cf_source_policy_check_path(policy, decoded, resolved, sizeof resolved, why, sizeof why) <
        0) {
        snprintf(err, errlen, "%s: %s", source, why);
        return -1;
    }
    struct stat sb;
    if (stat(resolved, &sb) < 0 || access(resolved, R_OK) < 0) {
        snprintf(err, errlen, "%s: %s", source, strerror(errno));
        return -1;
    }
    if (!S_ISREG(sb.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", source);
        return -1;
    }
    if (!(*path_p = strdup(resolved))) {
        snprintf(err, errlen, "%s: out of memory", source);
        return -1;
    }
    return 0;
}

typedef struct {
    FILE *file;
    uint64_t bytes;
    uint64_t max_bytes;
    atomic_bool *cancel;
    bool too_large;
    bool refused_address; /* the open-socket callback refused a connection */
    const cf_source_policy_t *policy;
    void (*tick)(void *arg, uint64_t bytes, uint64_t total);
    void *tick_arg;
    int64_t last_tick_ms;
    cf_source_validator_t *got; /* the final response's validators (may be NULL) */
} s_download_t;

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* libcurl's open-socket callback: the one place that sees the address
 * actually connected to, after DNS, for every redirect hop too. */
static curl_socket_t s_open_socket(void *arg, curlsocktype purpose, struct curl_sockaddr *address)
{
    s_download_t *dl = arg;
    if (purpose == CURLSOCKTYPE_IPCXN &&
        !cf_source_policy_addr_allowed(dl->policy, &address->addr)) {
        dl->refused_address = true;
        return CURL_SOCKET_BAD;
    }
    return socket(address->family, address->socktype, address->protocol);
}

static size_t s_write(char *data, size_t size, size_t nmemb, void *arg)
{
    s_download_t *dl = arg;
    size_t len = size * nmemb;
    if (dl->bytes + len > dl->max_bytes) {
        dl->too_large = true;
        return 0;
    }
    dl->bytes += len;
    return fwrite(data, 1, len, dl->file);
}

/* Copies a header's value (after NAME_LEN bytes of "Name:") into OUT,
 * trimmed; a value that does not fit, or holds control bytes, is dropped. */
static void s_header_value(const char *data, size_t len, size_t name_len, char *out, size_t outlen)
{
    const char *v = data + name_len;
    size_t vlen = len - name_len;
    while (vlen && (*v == ' ' || *v == '\t'))
        v++, vlen--;
    while (vlen && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' ' ||
                    v[vlen - 1] == '\t'))
        vlen--;
    out[0] = '\0';
    if (vlen >= outlen)
        return;
    for (size_t i = 0; i < vlen; i++)
        if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] == 0x7f)
            return;
    memcpy(out, v, vlen);
    out[vlen] = '\0';
}

static size_t s_header(char *data, size_t size, size_t nmemb, void *arg)
{
    s_download_t *dl = arg;
    size_t len = size * nmemb;
    if (!dl->got)
        return len;
    if (len > 5 && !strncmp(data, "HTTP/", 5)) {
        /* A new response (after a redirect, a 100): only the last counts. */
        memset(dl->got, 0, sizeof *dl->got);
    } else if (len > 5 && !strncasecmp(data, "ETag:", 5)) {
        s_header_value(data, len, 5, dl->got->etag, sizeof dl->got->etag);
    } else if (len > 14 && !strncasecmp(data, "Last-Modified:", 14)) {
        s_header_value(data, len, 14, dl->got->last_modified, sizeof dl->got->last_modified);
    }
    return len;
}

static bool s_header_safe(const char *value)
{
    for (const unsigned char *p = (const unsigned char *)value; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return false;
    return true;
}

static int s_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                      curl_off_t ulnow)
{
    (void)ultotal;
    (void)ulnow;
    s_download_t *dl = arg;
    /* libcurl calls this at least once a second, even while no byte
     * arrives: cancel and the caller's heartbeat never wait on the peer. */
    if (dl->tick) {
        int64_t now = s_now_ms();
        if (now - dl->last_tick_ms >= 1000) {
            dl->last_tick_ms = now;
            dl->tick(dl->tick_arg, (uint64_t)dlnow, dltotal > 0 ? (uint64_t)dltotal : 0);
        }
    }
    return dl->cancel && atomic_load(dl->cancel) ? 1 : 0;
}

/* The cap on one http(s) download: the policy's, else the caller's, else
 * 64 GiB. */
static uint64_t s_http_max_bytes(const cf_fetch_opts_t *opts)
{
    uint64_t max_bytes = cf_source_policy_max_bytes(opts->policy);
    if (!max_bytes)
        max_bytes = opts->max_bytes ? opts->max_bytes : (uint64_t)64 << 30;
    return max_bytes;
}

/* GETs URL into PART; with HAVE, conditionally (If-None-Match with its
 * ETag, else If-Modified-Since with its Last-Modified). Returns 0 with
 * *status set (304: PART is empty) and GOT (may be NULL) holding the
 * response's validators, or -1 with a reason in err and PART removed. */
static int s_http_get(const char *url, const char *part, const cf_fetch_opts_t *opts,
                      const cf_source_validator_t *have, cf_source_validator_t *got, long *status_p,
                      char *err, size_t errlen)
{
    pthread_once(&s_curl_once, s_curl_init);
    if (s_curl_init_rc != CURLE_OK) {
        snprintf(err, errlen, "%s: cannot start libcurl", url);
        return -1;
    }
    uint64_t max_bytes = s_http_max_bytes(opts);
    long timeout_s = cf_source_policy_fetch_timeout_s(opts->policy);
    if (!timeout_s)
        timeout_s = opts->timeout_s;
    s_download_t dl = {.max_bytes = max_bytes,
                       .cancel = opts->cancel,
                       .policy = opts->policy,
                       .tick = opts->tick,
                       .tick_arg = opts->tick_arg,
                       .last_tick_ms = s_now_ms(),
                       .got = got};
    if (got)
        memset(got, 0, sizeof *got);
    char condition[512] = "";
    if (have && have->etag[0])
        snprintf(condition, sizeof condition, "If-None-Match: %s", have->etag);
    else if (have && have->last_modified[0])
        snprintf(condition, sizeof condition, "If-Modified-Since: %s", have->last_modified);
    if (!s_header_safe(condition)) {
        snprintf(err, errlen, "%s: unusable validator", url);
        return -1;
    }
    dl.file = fopen(part, "wb");
    if (!dl.file) {
        snprintf(err, errlen, "%s: cannot create %s: %s", url, part, strerror(errno));
        return -1;
    }
    CURL *curl = curl_easy_init();
    if (!curl) {
        fclose(dl.file);
        remove(part);
        snprintf(err, errlen, "%s: cannot start libcurl", url);
        return -1;
    }
    char curl_err[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(curl, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(curl, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                     opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 10000L);
    /* A transfer that stalls (under 1 byte/s for the timeout) fails. */
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME,
                     opts->stall_timeout_s > 0 ? opts->stall_timeout_s : 60L);
    /* A declared length over the cap fails before the first byte. */
    curl_easy_setopt(curl, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)max_bytes);
    if (timeout_s > 0)
        curl_easy_setopt(curl, CURLOPT_TIMEOUT, timeout_s);
    if (cf_source_policy_restricted(opts->policy)) {
        curl_easy_setopt(curl, CURLOPT_OPENSOCKETFUNCTION, s_open_socket);
        curl_easy_setopt(curl, CURLOPT_OPENSOCKETDATA, &dl);
        /* Through a proxy the address checked would be the proxy's. */
        curl_easy_setopt(curl, CURLOPT_PROXY, "");
    }
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, s_write);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &dl);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, s_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &dl);
    struct curl_slist *headers = NULL;
    if (condition[0]) {
        if (!(headers = curl_slist_append(NULL, condition))) {
            curl_easy_cleanup(curl);
            fclose(dl.file);
            remove(part);
            snprintf(err, errlen, "%s: out of memory", url);
            return -1;
        }
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    }
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, s_progress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &dl);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_err);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "clipfarm/" CF_VERSION);
    int64_t started_ms = s_now_ms();
    /* https trusts the system's CAs, or only those of CF_CA_FILE (a PEM
     * bundle: a private CA, a test's self-signed certificate); peer and
     * host verification stay on either way. */
    const char *ca_file = getenv("CF_CA_FILE");
    if (ca_file && *ca_file)
        curl_easy_setopt(curl, CURLOPT_CAINFO, ca_file);
    CURLcode rc = curl_easy_perform(curl);
    bool overall_timeout = rc == CURLE_OPERATION_TIMEDOUT && timeout_s > 0 &&
                           s_now_ms() - started_ms >= timeout_s * 1000 - 50;
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(curl);
    curl_slist_free_all(headers);
    bool write_failed = fclose(dl.file) != 0;
    *status_p = status;

    int result = -1;
    if (dl.refused_address)
        snprintf(err, errlen, "%s: source address not allowed", url);
    else if (rc == CURLE_HTTP_RETURNED_ERROR)
        snprintf(err, errlen, "%s: HTTP %ld", url, status);
    else if (rc == CURLE_ABORTED_BY_CALLBACK)
        snprintf(err, errlen, "%s: cancelled", url);
    else if (dl.too_large || rc == CURLE_FILESIZE_EXCEEDED)
        snprintf(err, errlen, "%s: larger than %llu bytes", url, (unsigned long long)dl.max_bytes);
    else if (overall_timeout)
        snprintf(err, errlen, "%s: not fetched within %ld s", url, timeout_s);
    else if (rc != CURLE_OK)
        snprintf(err, errlen, "%s: cannot fetch: %s", url,
                 curl_err[0] ? curl_err : curl_easy_strerror(rc));
    else if (write_failed)
        snprintf(err, errlen, "%s: cannot write %s", url, part);
    else
        result = 0;
    if (result < 0)
        remove(part);
    else
        cf_log_debug("fetch", "%s: HTTP %ld, %llu bytes -> %s", url, status,
                     (unsigned long long)dl.bytes, part);
    return result;
}

int cf_fetch_url(const char *url, const char *dest, const cf_fetch_opts_t *opts, char *err,
                 size_t errlen)
{
    char part[4096];
    if (snprintf(part, sizeof part, "%s.part", dest) >= (int)sizeof part) {
        snprintf(err, errlen, "%s: cache path too long", url);
        return -1;
    }
    long status = 0;
    if (s_http_get(url, part, opts, NULL, NULL, &status, err, errlen) < 0)
        return -1;
    if (rename(part, dest) < 0) {
        snprintf(err, errlen, "%s: cannot rename %s: %s", url, part, strerror(errno));
        remove(part);
        return -1;
    }
    return 0;
}

typedef struct {
    const cf_fetch_opts_t *opts;
} s_s3_tick_t;

static void s_s3_tick(void *arg)
{
    const cf_fetch_opts_t *opts = ((s_s3_tick_t *)arg)->opts;
    if (opts->tick)
        opts->tick(opts->tick_arg, 0, 0);
}

/* The cap on one s3 download: the policy's, else the caller's (0: none). */
static uint64_t s_s3_max_bytes(const cf_fetch_opts_t *opts)
{
    uint64_t max_bytes = cf_source_policy_max_bytes(opts->policy);
    return max_bytes ? max_bytes : opts->max_bytes;
}

static cf_s3_transfer_t s_s3_transfer(const cf_fetch_opts_t *opts, s_s3_tick_t *tick)
{
    long timeout_s = cf_source_policy_fetch_timeout_s(opts->policy);
    if (!timeout_s)
        timeout_s = opts->timeout_s;
    return (cf_s3_transfer_t){.cancel = opts->cancel,
                              .max_bytes = s_s3_max_bytes(opts),
                              .timeout_s = timeout_s,
                              .tick = s_s3_tick,
                              .tick_arg = tick};
}

/* s3://BUCKET/KEY into DEST through the node's S3 client (its endpoint is
 * the operator's, trusted: no address policy, no redirects). */
static int s_fetch_s3(const char *source, const char *dest, const cf_fetch_opts_t *opts, char *err,
                      size_t errlen)
{
    char bucket[64], key[1100], why[512];
    if (cf_s3_parse_url(source, bucket, sizeof bucket, key, sizeof key, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s: %s", source, why);
        return -1;
    }
    s_s3_tick_t tick = {opts};
    cf_s3_transfer_t t = s_s3_transfer(opts, &tick);
    if (cf_s3_download(opts->s3, NULL, bucket, key, dest, &t, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s: %s", source, why);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ origins of
 * the node-wide cache (cf_source_cache.h) */

typedef struct {
    const char *source;
    const cf_fetch_opts_t *opts;
} s_origin_t;

/* http(s): one conditional GET; 304 keeps the cached file. */
static int s_origin_http(void *arg, const cf_source_validator_t *have, const char *part,
                         cf_source_validator_t *got, bool *not_modified, char *err, size_t errlen)
{
    const s_origin_t *o = arg;
    long status = 0;
    if (s_http_get(o->source, part, o->opts, have, got, &status, err, errlen) < 0)
        return -1;
    if (status == 304) {
        remove(part);
        *not_modified = true;
    }
    return 0;
}

/* s3: a HEAD for the object's ETag; the same ETag keeps the cached file,
 * another is downloaded with If-Match on it, so that what is stored under
 * an ETag is that version, even across a resumed transfer. A HEAD that S3
 * refuses (it carries no body, so no error code) falls back to a plain
 * GET, whose answer names the error (NoSuchKey...) or, should it succeed,
 * gives an entry without validator. */
static int s_origin_s3(void *arg, const cf_source_validator_t *have, const char *part,
                       cf_source_validator_t *got, bool *not_modified, char *err, size_t errlen)
{
    const s_origin_t *o = arg;
    char bucket[64], key[1100], why[512], code[64], etag[128] = "";
    memset(got, 0, sizeof *got);
    if (cf_s3_parse_url(o->source, bucket, sizeof bucket, key, sizeof key, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s: %s", o->source, why);
        return -1;
    }
    s_s3_tick_t tick = {o->opts};
    cf_s3_transfer_t t = s_s3_transfer(o->opts, &tick);
    uint64_t size = 0;
    if (cf_s3_head(o->opts->s3, NULL, bucket, key, &t, etag, &size, code, why, sizeof why) < 0) {
        if (strncmp(code, "HTTP", 4)) {
            snprintf(err, errlen, "%s: %s", o->source, why);
            return -1;
        }
        etag[0] = '\0';
    } else if (have && etag[0] && !strcmp(etag, have->etag)) {
        *not_modified = true;
        return 0;
    } else if (t.max_bytes && size > t.max_bytes) {
        snprintf(err, errlen, "%s: larger than %llu bytes", o->source,
                 (unsigned long long)t.max_bytes);
        return -1;
    }
    t.if_match = etag[0] ? etag : NULL;
    if (cf_s3_download(o->opts->s3, NULL, bucket, key, part, &t, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s: %s", o->source, why);
        return -1;
    }
    snprintf(got->etag, sizeof got->etag, "%s", etag);
    return 0;
}

/* The private cache name of URL (no node-wide cache): a hash of it plus
 * the URL path's extension, which helps demuxers that probe by name. */
static int s_cache_path(const char *dir, const char *url, char *out, size_t outlen)
{
    unsigned char hash[16];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)url, strlen(url), NULL, 0);
    char hex[sizeof hash * 2 + 1];
    sodium_bin2hex(hex, sizeof hex, hash, sizeof hash);
    char ext[12];
    cf_source_url_ext(url, ext, sizeof ext);
    int n = snprintf(out, outlen, "%s/url-%s%s", dir, hex, ext);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

int cf_fetch_source(const char *source, const cf_fetch_opts_t *opts, char **path_p,
                    cf_source_pin_t **pin_p, char *err, size_t errlen)
{
    *path_p = NULL;
    *pin_p = NULL;
    pthread_once(&s_curl_once, s_curl_init);
    if (!strncmp(source, "file://", 7))
        return s_local_file(source, opts->policy, path_p, err, errlen);
    if (!strncmp(source, "blob:", 5)) {
        if (!opts->blob_resolver) {
            snprintf(err, errlen, "%s: no blob store here (blob: sources need a clipfarm node)",
                     source);
            return -1;
        }
        char path[4096];
        char why[512] = "";
        if (opts->blob_resolver(opts->blob_arg, source, path, sizeof path, why, sizeof why) < 0) {
            snprintf(err, errlen, "%s: %s", source, why[0] ? why : "not found");
            return -1;
        }
        *path_p = strdup(path);
        if (!*path_p) {
            snprintf(err, errlen, "%s: out of memory", source);
            return -1;
        }
        return 0;
    }
    bool s3 = !strncmp(source, "s3://", 5);
    if (!s3 && strncmp(source, "http://", 7) && strncmp(source, "https://", 8)) {
        snprintf(err, errlen, "%s: unsupported source", source);
        return -1;
    }
    if (s3 && !opts->s3) {
        snprintf(err, errlen, "%s: S3 is not configured on this node", source);
        return -1;
    }
    if (opts->cache) {
        s_origin_t origin = {source, opts};
        cf_source_request_t req = {.url = source,
                                   .policy_key = opts->policy,
                                   .max_bytes = s3 ? s_s3_max_bytes(opts) : s_http_max_bytes(opts),
                                   .cancel = opts->cancel,
                                   .tick = opts->tick,
                                   .tick_arg = opts->tick_arg,
                                   .origin = s3 ? s_origin_s3 : s_origin_http,
                                   .origin_arg = &origin};
        return cf_source_cache_get(opts->cache, &req, path_p, pin_p, err, errlen);
    }
    if (!opts->cache_dir) {
        snprintf(err, errlen, "%s: no cache directory for downloads", source);
        return -1;
    }
    char path[4096];
    if (s_cache_path(opts->cache_dir, source, path, sizeof path) < 0) {
        snprintf(err, errlen, "%s: cache path too long", source);
        return -1;
    }
    if (access(path, R_OK) < 0 && (s3 ? s_fetch_s3(source, path, opts, err, errlen)
                                      : cf_fetch_url(source, path, opts, err, errlen)) < 0)
        return -1;
    *path_p = strdup(path);
    if (!*path_p) {
        snprintf(err, errlen, "%s: out of memory", source);
        return -1;
    }
    return 0;
}
