#define _GNU_SOURCE
#include "cf_fetch.h"

#include <ctype.h>
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

int cf_fetch_url(const char *url, const char *dest, const cf_fetch_opts_t *opts, char *err,
                 size_t errlen)
{
    pthread_once(&s_curl_once, s_curl_init);
    if (s_curl_init_rc != CURLE_OK) {
        snprintf(err, errlen, "%s: cannot start libcurl", url);
        return -1;
    }
    char part[4096];
    if (snprintf(part, sizeof part, "%s.part", dest) >= (int)sizeof part) {
        snprintf(err, errlen, "%s: cache path too long", url);
        return -1;
    }
    uint64_t max_bytes = cf_source_policy_max_bytes(opts->policy);
    if (!max_bytes)
        max_bytes = opts->max_bytes ? opts->max_bytes : (uint64_t)64 << 30;
    long timeout_s = cf_source_policy_fetch_timeout_s(opts->policy);
    if (!timeout_s)
        timeout_s = opts->timeout_s;
    s_download_t dl = {.max_bytes = max_bytes,
                       .cancel = opts->cancel,
                       .policy = opts->policy,
                       .tick = opts->tick,
                       .tick_arg = opts->tick_arg,
                       .last_tick_ms = s_now_ms()};
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
    bool write_failed = fclose(dl.file) != 0;

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
    else if (rename(part, dest) < 0)
        snprintf(err, errlen, "%s: cannot rename %s: %s", url, part, strerror(errno));
    else
        result = 0;
    if (result < 0)
        remove(part);
    else
        cf_log_debug("fetch", "%s: %llu bytes -> %s", url, (unsigned long long)dl.bytes, dest);
    return result;
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
    uint64_t max_bytes = cf_source_policy_max_bytes(opts->policy);
    if (!max_bytes)
        max_bytes = opts->max_bytes;
    long timeout_s = cf_source_policy_fetch_timeout_s(opts->policy);
    if (!timeout_s)
        timeout_s = opts->timeout_s;
    s_s3_tick_t tick = {opts};
    cf_s3_transfer_t t = {.cancel = opts->cancel,
                          .max_bytes = max_bytes,
                          .timeout_s = timeout_s,
                          .tick = s_s3_tick,
                          .tick_arg = &tick};
    if (cf_s3_download(opts->s3, NULL, bucket, key, dest, &t, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s: %s", source, why);
        return -1;
    }
    return 0;
}

/* The cache name of URL: a hash of it plus the URL path's extension, which
 * helps demuxers that probe by name. */
static int s_cache_path(const char *dir, const char *url, char *out, size_t outlen)
{
    unsigned char hash[16];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)url, strlen(url), NULL, 0);
    char hex[sizeof hash * 2 + 1];
    sodium_bin2hex(hex, sizeof hex, hash, sizeof hash);
    char ext[12] = "";
    size_t path_end = strcspn(url, "?#");
    const char *slash = memrchr(url, '/', path_end);
    const char *dot = slash ? memrchr(slash, '.', path_end - (size_t)(slash - url)) : NULL;
    if (dot) {
        size_t len = path_end - (size_t)(dot - url);
        bool ok = len > 1 && len < sizeof ext;
        for (size_t i = 1; ok && i < len; i++)
            ok = isalnum((unsigned char)dot[i]);
        if (ok)
            snprintf(ext, sizeof ext, "%.*s", (int)len, dot);
    }
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

/* Until the node-wide cache lands (cf_source_cache.c), no pin is ever
 * handed out. */
void cf_source_pin_release(cf_source_pin_t **pin_p)
{
    if (pin_p)
        *pin_p = NULL;
}
