/* cf_s3: S3 over libcurl's SigV4 (see cf_s3.h for the contract). */
#define _GNU_SOURCE
#include "cf_s3.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cf_log.h"
#include "cf_s3_names.h"

#define S_MAX_PARTS 10000 /* S3's limit */

typedef struct {
    char *name;
    char *access_key;
    char *secret_key;
    char *session_token;
} s_profile_t;

struct cf_s3_t {
    char *endpoint; /* scheme://host[:port], no trailing slash */
    char *region;
    char sigv4[128]; /* "aws:amz:REGION:s3" */
    bool path_style;
    uint64_t part_bytes;
    int part_tries;
    long timeout_s;
    s_profile_t *profiles;
    int profile_count;
};

void cf_s3_options_default(cf_s3_options_t *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->region = "us-east-1";
    opts->part_bytes = 16u << 20;
    opts->part_tries = 3;
    opts->timeout_s = 600;
}

/* ------------------------------------------------------------ credentials */

static s_profile_t *s_profile(cf_s3_t *self, const char *name, bool create)
{
    for (int i = 0; i < self->profile_count; i++)
        if (!strcmp(self->profiles[i].name, name))
            return &self->profiles[i];
    if (!create)
        return NULL;
    s_profile_t *grown = realloc(self->profiles, (size_t)(self->profile_count + 1) * sizeof *grown);
    if (!grown)
        return NULL;
    self->profiles = grown;
    s_profile_t *p = &self->profiles[self->profile_count];
    memset(p, 0, sizeof *p);
    if (!(p->name = strdup(name)))
        return NULL;
    self->profile_count++;
    return p;
}

static int s_set(char **slot, const char *value)
{
    free(*slot);
    *slot = strdup(value);
    return *slot ? 0 : -1;
}

static char *s_trim(char *text)
{
    while (isspace((unsigned char)*text))
        text++;
    char *end = text + strlen(text);
    while (end > text && isspace((unsigned char)end[-1]))
        *--end = '\0';
    return text;
}

/* The usual ~/.aws/credentials format: [name] sections of key = value. */
static int s_load_credentials(cf_s3_t *self, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "--s3-credentials-file %s: %s", path, strerror(errno));
        return -1;
    }
    char line[4096], section[128] = "";
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        lineno++;
        char *text = s_trim(line);
        if (!*text || *text == '#' || *text == ';')
            continue;
        if (*text == '[') {
            char *close = strchr(text, ']');
            if (!close) {
                snprintf(err, errlen, "--s3-credentials-file %s:%d: unclosed [", path, lineno);
                rc = -1;
                break;
            }
            *close = '\0';
            char *name = s_trim(text + 1);
            if (!strncmp(name, "profile ", 8))
                name = s_trim(name + 8);
            snprintf(section, sizeof section, "%s", name);
            continue;
        }
        char *eq = strchr(text, '=');
        if (!eq || !section[0]) {
            /* Never quote the line: it may hold a secret. */
            snprintf(err, errlen,
                     "--s3-credentials-file %s:%d: expected key = value in a [profile]", path,
                     lineno);
            rc = -1;
            break;
        }
        *eq = '\0';
        char *key = s_trim(text), *value = s_trim(eq + 1);
        s_profile_t *p = s_profile(self, section, true);
        if (!p) {
            snprintf(err, errlen, "out of memory");
            rc = -1;
        } else if (!strcmp(key, "aws_access_key_id")) {
            rc = s_set(&p->access_key, value);
        } else if (!strcmp(key, "aws_secret_access_key")) {
            rc = s_set(&p->secret_key, value);
        } else if (!strcmp(key, "aws_session_token")) {
            rc = s_set(&p->session_token, value);
        }
    }
    fclose(f);
    return rc;
}

cf_s3_t *cf_s3_new(const cf_s3_options_t *opts, char *err, size_t errlen)
{
    cf_s3_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    const char *region = opts->region && *opts->region ? opts->region : "us-east-1";
    for (const char *p = region; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '-') {
            snprintf(err, errlen, "--s3-region: '%s' is not a region name", region);
            goto fail;
        }
    }
    self->region = strdup(region);
    if (opts->endpoint && *opts->endpoint) {
        if (strncmp(opts->endpoint, "http://", 7) && strncmp(opts->endpoint, "https://", 8)) {
            snprintf(err, errlen, "--s3-endpoint: expected http(s)://HOST[:PORT]");
            goto fail;
        }
        self->endpoint = strdup(opts->endpoint);
        size_t len = self->endpoint ? strlen(self->endpoint) : 0;
        while (len > 0 && self->endpoint[len - 1] == '/')
            self->endpoint[--len] = '\0';
        if (self->endpoint && strchr(strstr(self->endpoint, "://") + 3, '/')) {
            snprintf(err, errlen, "--s3-endpoint: give only scheme, host and port");
            goto fail;
        }
    } else {
        char aws[160];
        snprintf(aws, sizeof aws, "https://s3.%s.amazonaws.com", region);
        self->endpoint = strdup(aws);
    }
    snprintf(self->sigv4, sizeof self->sigv4, "aws:amz:%s:s3", region);
    self->path_style = opts->path_style;
    self->part_bytes = opts->part_bytes >= (64u << 10) ? opts->part_bytes : (64u << 10);
    self->part_tries = opts->part_tries > 0 ? opts->part_tries : 3;
    self->timeout_s = opts->timeout_s > 0 ? opts->timeout_s : 600;
    if (!self->region || !self->endpoint) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (opts->credentials_file && s_load_credentials(self, opts->credentials_file, err, errlen) < 0)
        goto fail;
    /* The environment is the default profile and wins over the file's. */
    const char *ak = getenv("AWS_ACCESS_KEY_ID"), *sk = getenv("AWS_SECRET_ACCESS_KEY");
    if (ak && *ak && sk && *sk) {
        s_profile_t *p = s_profile(self, "default", true);
        const char *token = getenv("AWS_SESSION_TOKEN");
        if (!p || s_set(&p->access_key, ak) < 0 || s_set(&p->secret_key, sk) < 0 ||
            (token && *token && s_set(&p->session_token, token) < 0)) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }
    for (int i = 0; i < self->profile_count; i++) {
        s_profile_t *p = &self->profiles[i];
        if (!p->access_key || !p->secret_key) {
            snprintf(err, errlen,
                     "S3 profile '%s' lacks aws_access_key_id or aws_secret_access_key", p->name);
            goto fail;
        }
    }
    return self;
fail:
    cf_s3_destroy(&self);
    return NULL;
}

static void s_wipe(char *secret)
{
    if (secret) {
        volatile char *p = secret;
        while (*p)
            *p++ = 0;
    }
    free(secret);
}

void cf_s3_destroy(cf_s3_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_s3_t *self = *self_p;
    for (int i = 0; i < self->profile_count; i++) {
        free(self->profiles[i].name);
        s_wipe(self->profiles[i].access_key);
        s_wipe(self->profiles[i].secret_key);
        s_wipe(self->profiles[i].session_token);
    }
    free(self->profiles);
    free(self->endpoint);
    free(self->region);
    free(self);
    *self_p = NULL;
}

/* ------------------------------------------------------------ requests */

/* URL of BUCKET/KEY with QUERY (canonical form, may be NULL). */
static int s_url(const cf_s3_t *self, const char *bucket, const char *key, const char *query,
                 char *out, size_t outlen)
{
    /* Every byte of the key but unreserved ones and '/' is %-encoded: the
     * URL curl signs is then the canonical URI S3 computes. */
    char escaped[3 * 1024 + 1];
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)key; *p && n + 4 < sizeof escaped; p++) {
        if (isalnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~' || *p == '/')
            escaped[n++] = (char)*p;
        else
            n += (size_t)snprintf(escaped + n, 4, "%%%02X", *p);
    }
    escaped[n] = '\0';
    int len;
    if (self->path_style) {
        len = snprintf(out, outlen, "%s/%s/%s%s%s", self->endpoint, bucket, escaped,
                       query ? "?" : "", query ? query : "");
    } else {
        const char *host = strstr(self->endpoint, "://") + 3;
        len = snprintf(out, outlen, "%.*s%s.%s/%s%s%s", (int)(host - self->endpoint),
                       self->endpoint, bucket, host, escaped, query ? "?" : "", query ? query : "");
    }
    return len < 0 || (size_t)len >= outlen ? -1 : 0;
}

typedef struct {
    /* response body: to a file, or kept (up to 64 KiB) for XML */
    FILE *file;
    char *mem;
    size_t mem_len;
    uint64_t bytes;
    uint64_t max_bytes;
    bool too_large;
    /* request body from a file range */
    FILE *upload;
    uint64_t upload_left;
    const cf_s3_transfer_t *transfer;
    time_t last_tick;
    /* response headers we need */
    char etag[128];
    uint64_t content_length;
    bool has_length;
    long status;
} s_xfer_t;

static size_t s_on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    s_xfer_t *x = arg;
    size_t len = size * nmemb;
    /* Error answers (XML) are kept whatever the target. */
    if (x->file && x->status < 300) {
        if (x->max_bytes && x->bytes + len > x->max_bytes) {
            x->too_large = true;
            return 0;
        }
        x->bytes += len;
        return fwrite(data, 1, len, x->file);
    }
    if (x->mem_len + len > 65536)
        len = 65536 - x->mem_len;
    char *grown = realloc(x->mem, x->mem_len + len + 1);
    if (!grown)
        return 0;
    x->mem = grown;
    memcpy(x->mem + x->mem_len, data, len);
    x->mem_len += len;
    x->mem[x->mem_len] = '\0';
    return size * nmemb;
}

static size_t s_on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    s_xfer_t *x = arg;
    size_t len = size * nmemb;
    if (len > 9 && !strncmp(data, "HTTP/", 5)) {
        const char *sp = memchr(data, ' ', len);
        if (sp)
            x->status = strtol(sp + 1, NULL, 10);
    } else if (len > 5 && !strncasecmp(data, "ETag:", 5)) {
        const char *v = data + 5;
        size_t vlen = len - 5;
        while (vlen && (*v == ' ' || *v == '\t'))
            v++, vlen--;
        while (vlen && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' '))
            vlen--;
        if (vlen < sizeof x->etag) {
            memcpy(x->etag, v, vlen);
            x->etag[vlen] = '\0';
        }
    } else if (len > 15 && !strncasecmp(data, "Content-Length:", 15)) {
        char value[32];
        size_t vlen = len - 15 < sizeof value - 1 ? len - 15 : sizeof value - 1;
        memcpy(value, data + 15, vlen);
        value[vlen] = '\0';
        char *end;
        errno = 0;
        unsigned long long n = strtoull(value, &end, 10);
        x->has_length = errno == 0 && end != value;
        x->content_length = x->has_length ? n : 0;
    }
    return len;
}

static size_t s_on_read(char *buf, size_t size, size_t nmemb, void *arg)
{
    s_xfer_t *x = arg;
    size_t want = size * nmemb;
    if (want > x->upload_left)
        want = (size_t)x->upload_left;
    size_t n = want ? fread(buf, 1, want, x->upload) : 0;
    if (n < want && ferror(x->upload))
        return CURL_READFUNC_ABORT;
    x->upload_left -= n;
    return n;
}

static int s_on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                         curl_off_t ulnow)
{
    s_xfer_t *x = arg;
    const cf_s3_transfer_t *t = x->transfer;
    if (!t)
        return 0;
    time_t now = time(NULL);
    if (t->tick && now != x->last_tick) {
        x->last_tick = now;
        t->tick(t->tick_arg);
    }
    return t->cancel && atomic_load(t->cancel) ? 1 : 0;
}

/* Copies the text of <TAG>...</TAG> in XML into OUT (empty when absent). */
static void s_xml_value(const char *xml, const char *tag, char *out, size_t outlen)
{
    out[0] = '\0';
    if (!xml)
        return;
    char open[64], close[64];
    snprintf(open, sizeof open, "<%s>", tag);
    snprintf(close, sizeof close, "</%s>", tag);
    const char *start = strstr(xml, open);
    if (!start)
        return;
    start += strlen(open);
    const char *end = strstr(start, close);
    if (!end)
        return;
    size_t len = (size_t)(end - start);
    if (len >= outlen)
        len = outlen - 1;
    memcpy(out, start, len);
    out[len] = '\0';
    /* Only printable ASCII reaches our messages. */
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            *p = '?';
}

typedef struct {
    const char *method;
    const char *bucket, *key, *query;
    const char *range;    /* "bytes=N-" (may be NULL) */
    const char *if_match; /* an ETag the object must have (may be NULL) */
    const char *body;     /* small in-memory body (may be NULL) */
    FILE *upload;         /* or a file range */
    uint64_t upload_offset, upload_len;
    bool has_upload;
} s_req_t;

/* Runs one signed request. Returns 0 for a 2xx answer; -1 with CODE and a
 * message (S3's, or curl's for a transfer that did not complete). */
static int s_perform(cf_s3_t *self, const s_profile_t *cred, const s_req_t *req, s_xfer_t *x,
                     char code[64], char *err, size_t errlen)
{
    char url[4096];
    code[0] = '\0';
    if (s_url(self, req->bucket, req->key, req->query, url, sizeof url) < 0) {
        snprintf(code, 64, "InvalidRequest");
        snprintf(err, errlen, "S3 object name too long");
        return -1;
    }
    CURL *curl = curl_easy_init();
    if (!curl) {
        snprintf(code, 64, "internal");
        snprintf(err, errlen, "cannot start libcurl");
        return -1;
    }
    struct curl_slist *headers = NULL;
    /* Signed, and honest: the body's hash is not computed (S3 accepts
     * UNSIGNED-PAYLOAD; TLS protects the body on https endpoints). */
    headers = curl_slist_append(headers, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
    char token[4200];
    if (cred->session_token) {
        snprintf(token, sizeof token, "x-amz-security-token: %s", cred->session_token);
        headers = curl_slist_append(headers, token);
    }
    if (req->body || req->has_upload)
        headers = curl_slist_append(headers, "Expect:");
    char if_match[160];
    if (req->if_match) {
        /* An ETag from S3's own answer; never one that could end the line. */
        if (strpbrk(req->if_match, "\r\n") || snprintf(if_match, sizeof if_match, "If-Match: %s",
                                                       req->if_match) >= (int)sizeof if_match) {
            curl_slist_free_all(headers);
            curl_easy_cleanup(curl);
            snprintf(code, 64, "InvalidRequest");
            snprintf(err, errlen, "unusable ETag");
            return -1;
        }
        headers = curl_slist_append(headers, if_match);
    }
    char curl_err[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L); /* nothing may send us elsewhere */
    curl_easy_setopt(curl, CURLOPT_AWS_SIGV4, self->sigv4);
    curl_easy_setopt(curl, CURLOPT_USERNAME, cred->access_key);
    curl_easy_setopt(curl, CURLOPT_PASSWORD, cred->secret_key);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 10L);
    long timeout =
        x->transfer && x->transfer->timeout_s > 0 ? x->transfer->timeout_s : self->timeout_s;
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, timeout);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_err);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "clipfarm/" CF_VERSION);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, s_on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, s_on_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, s_on_progress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, x);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    if (req->range)
        curl_easy_setopt(curl, CURLOPT_RANGE, req->range + strlen("bytes="));
    if (req->has_upload) {
        fseeko(req->upload, (off_t)req->upload_offset, SEEK_SET);
        x->upload = req->upload;
        x->upload_left = req->upload_len;
        curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(curl, CURLOPT_READFUNCTION, s_on_read);
        curl_easy_setopt(curl, CURLOPT_READDATA, x);
        curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, (curl_off_t)req->upload_len);
    } else if (req->body) {
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, req->body);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(req->body));
        curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, req->method);
    } else if (!strcmp(req->method, "HEAD")) {
        curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    } else if (strcmp(req->method, "GET")) {
        curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, req->method);
        if (!strcmp(req->method, "POST")) {
            curl_easy_setopt(curl, CURLOPT_POSTFIELDS, "");
            curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
        }
    }
    CURLcode rc = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(curl);
    curl_slist_free_all(headers);
    x->status = status;
    if (rc == CURLE_ABORTED_BY_CALLBACK) {
        snprintf(code, 64, "cancelled");
        snprintf(err, errlen, "cancelled");
        return -1;
    }
    if (x->too_large) {
        snprintf(code, 64, "too_large");
        snprintf(err, errlen, "larger than %llu bytes", (unsigned long long)x->max_bytes);
        return -1;
    }
    if (rc != CURLE_OK && !(status >= 300 && x->mem)) {
        snprintf(code, 64, "unreachable");
        snprintf(err, errlen, "S3 request failed: %s",
                 curl_err[0] ? curl_err : curl_easy_strerror(rc));
        return -1;
    }
    if (status >= 200 && status < 300)
        return 0;
    char message[512];
    s_xml_value(x->mem, "Code", code, 64);
    s_xml_value(x->mem, "Message", message, sizeof message);
    if (!code[0])
        snprintf(code, 64, "HTTP%ld", status);
    snprintf(err, errlen, "S3 %s: %s", code, message[0] ? message : "(no message)");
    return -1;
}

/* S3 answers 5xx (and a dropped connection) for what a retry can fix. */
static bool s_retryable(const char *code, long status)
{
    return !strcmp(code, "unreachable") || status >= 500 || !strcmp(code, "SlowDown") ||
           !strcmp(code, "RequestTimeout") || !strcmp(code, "InternalError");
}

static const s_profile_t *s_credentials(cf_s3_t *self, const char *profile, char code[64],
                                        char *err, size_t errlen)
{
    const char *name = profile && *profile ? profile : "default";
    const s_profile_t *p = s_profile(self, name, false);
    if (!p) {
        snprintf(code, 64, "NoCredentials");
        snprintf(err, errlen,
                 "no S3 credentials for profile '%s' on this node (AWS_ACCESS_KEY_ID / "
                 "AWS_SECRET_ACCESS_KEY or --s3-credentials-file)",
                 name);
    }
    return p;
}

static void s_backoff(int attempt)
{
    /* 200 ms, 400 ms, 800 ms... with jitter, so parts retried together
     * spread out. */
    long ms = 200L << (attempt < 5 ? attempt : 5);
    ms += rand() % (ms / 2 + 1);
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int cf_s3_download(cf_s3_t *self, const char *profile, const char *bucket, const char *key,
                   const char *dest, const cf_s3_transfer_t *transfer, char *err, size_t errlen)
{
    char code[64];
    const s_profile_t *cred = s_credentials(self, profile, code, err, errlen);
    if (!cred)
        return -1;
    char part[4096];
    if (snprintf(part, sizeof part, "%s.part", dest) >= (int)sizeof part) {
        snprintf(err, errlen, "cache path too long");
        return -1;
    }
    remove(part);
    int result = -1;
    for (int attempt = 0; attempt < self->part_tries; attempt++) {
        struct stat st;
        uint64_t have = stat(part, &st) == 0 ? (uint64_t)st.st_size : 0;
        char range[48];
        snprintf(range, sizeof range, "bytes=%llu-", (unsigned long long)have);
        s_xfer_t x = {
            .max_bytes = transfer ? transfer->max_bytes : 0, .bytes = have, .transfer = transfer};
        x.file = fopen(part, have ? "ab" : "wb");
        if (!x.file) {
            snprintf(err, errlen, "cannot write the cache: %s", strerror(errno));
            break;
        }
        s_req_t req = {.method = "GET",
                       .bucket = bucket,
                       .key = key,
                       .range = have ? range : NULL,
                       .if_match = transfer ? transfer->if_match : NULL};
        int rc = s_perform(self, cred, &req, &x, code, err, errlen);
        bool write_failed = fclose(x.file) != 0;
        free(x.mem);
        if (rc == 0 && have && x.status == 200) {
            /* The server ignored Range and sent it all: start over. */
            remove(part);
            continue;
        }
        if (rc == 0 && !write_failed) {
            if (rename(part, dest) == 0)
                result = 0;
            else
                snprintf(err, errlen, "cannot rename the cache file: %s", strerror(errno));
            break;
        }
        if (rc == 0 || !s_retryable(code, x.status) || attempt + 1 == self->part_tries)
            break;
        cf_log_warn("s3", "s3://%s/%s: %s; resuming", bucket, key, err);
        s_backoff(attempt);
    }
    if (result < 0)
        remove(part);
    return result;
}

int cf_s3_head(cf_s3_t *self, const char *profile, const char *bucket, const char *key,
               const cf_s3_transfer_t *transfer, char etag[128], uint64_t *size, char code[64],
               char *err, size_t errlen)
{
    etag[0] = '\0';
    *size = 0;
    const s_profile_t *cred = s_credentials(self, profile, code, err, errlen);
    if (!cred)
        return -1;
    int rc = -1;
    for (int attempt = 0; attempt < self->part_tries; attempt++) {
        s_xfer_t x = {.transfer = transfer};
        s_req_t req = {.method = "HEAD", .bucket = bucket, .key = key};
        rc = s_perform(self, cred, &req, &x, code, err, errlen);
        free(x.mem);
        if (rc == 0) {
            snprintf(etag, 128, "%s", x.etag);
            *size = x.content_length;
            return 0;
        }
        if (!strncmp(code, "HTTP", 4) && x.status < 500) {
            /* A HEAD answer has no body to name the error: say what we can. */
            snprintf(err, errlen, "S3 HEAD answered HTTP %ld", x.status);
            return -1;
        }
        if (!s_retryable(code, x.status) || attempt + 1 == self->part_tries)
            break;
        cf_log_warn("s3", "s3://%s/%s: HEAD: %s; retrying", bucket, key, err);
        s_backoff(attempt);
    }
    return rc;
}

/* One part (or the whole object when PART is 0), tried part_tries times. */
static int s_put_range(cf_s3_t *self, const s_profile_t *cred, const char *bucket, const char *key,
                       FILE *file, uint64_t offset, uint64_t len, int part, const char *upload_id,
                       const cf_s3_transfer_t *transfer, char etag[128], char code[64], char *err,
                       size_t errlen)
{
    char query[512];
    if (part > 0)
        snprintf(query, sizeof query, "partNumber=%d&uploadId=%s", part, upload_id);
    for (int attempt = 0; attempt < self->part_tries; attempt++) {
        s_xfer_t x = {.transfer = transfer};
        s_req_t req = {.method = "PUT",
                       .bucket = bucket,
                       .key = key,
                       .query = part > 0 ? query : NULL,
                       .upload = file,
                       .upload_offset = offset,
                       .upload_len = len,
                       .has_upload = true};
        int rc = s_perform(self, cred, &req, &x, code, err, errlen);
        free(x.mem);
        if (rc == 0) {
            snprintf(etag, 128, "%s", x.etag);
            return 0;
        }
        if (!s_retryable(code, x.status) || attempt + 1 == self->part_tries)
            return -1;
        cf_log_warn("s3", "s3://%s/%s part %d: %s; retrying", bucket, key, part, err);
        s_backoff(attempt);
    }
    return -1;
}

int cf_s3_upload(cf_s3_t *self, const char *profile, const char *bucket, const char *key,
                 const char *path, const cf_s3_transfer_t *transfer, char code_out[64], char *err,
                 size_t errlen)
{
    char code[64] = "", etag[128];
    int result = -1;
    char *upload_id = NULL, *complete = NULL;
    FILE *file = NULL;
    const s_profile_t *cred = s_credentials(self, profile, code, err, errlen);
    if (!cred)
        goto end;
    struct stat st;
    if (!(file = fopen(path, "rb")) || fstat(fileno(file), &st) < 0) {
        snprintf(code, sizeof code, "internal");
        snprintf(err, errlen, "cannot read the output: %s", strerror(errno));
        goto end;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size <= self->part_bytes) {
        result = s_put_range(self, cred, bucket, key, file, 0, size, 0, NULL, transfer, etag, code,
                             err, errlen);
        goto end;
    }
    uint64_t part_bytes = self->part_bytes;
    while ((size + part_bytes - 1) / part_bytes > S_MAX_PARTS)
        part_bytes *= 2;
    int parts = (int)((size + part_bytes - 1) / part_bytes);

    /* Create. */
    s_xfer_t x = {.transfer = transfer};
    s_req_t create = {.method = "POST", .bucket = bucket, .key = key, .query = "uploads="};
    int rc = s_perform(self, cred, &create, &x, code, err, errlen);
    char id[512];
    s_xml_value(x.mem, "UploadId", id, sizeof id);
    free(x.mem);
    if (rc < 0)
        goto end;
    if (!id[0] ||
        strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~") !=
            strlen(id)) {
        snprintf(code, sizeof code, "InvalidResponse");
        snprintf(err, errlen, "S3 answered no usable UploadId");
        goto end;
    }
    upload_id = strdup(id);

    /* Parts, then complete with every ETag in order. */
    size_t cap = (size_t)parts * 200 + 128, used = 0;
    complete = malloc(cap);
    if (!upload_id || !complete) {
        snprintf(code, sizeof code, "internal");
        snprintf(err, errlen, "out of memory");
        goto abort;
    }
    used += (size_t)snprintf(complete + used, cap - used, "<CompleteMultipartUpload>");
    for (int p = 1; p <= parts; p++) {
        uint64_t offset = (uint64_t)(p - 1) * part_bytes;
        uint64_t len = size - offset < part_bytes ? size - offset : part_bytes;
        if (s_put_range(self, cred, bucket, key, file, offset, len, p, upload_id, transfer, etag,
                        code, err, errlen) < 0)
            goto abort;
        /* ETags are quoted hex; anything else would break the XML. */
        if (strchr(etag, '<') || strchr(etag, '&')) {
            snprintf(code, sizeof code, "InvalidResponse");
            snprintf(err, errlen, "S3 answered an unusable ETag for part %d", p);
            goto abort;
        }
        used +=
            (size_t)snprintf(complete + used, cap - used,
                             "<Part><PartNumber>%d</PartNumber><ETag>%s</ETag></Part>", p, etag);
    }
    snprintf(complete + used, cap - used, "</CompleteMultipartUpload>");
    char query[600];
    snprintf(query, sizeof query, "uploadId=%s", upload_id);
    for (int attempt = 0; attempt < self->part_tries; attempt++) {
        s_xfer_t cx = {.transfer = transfer};
        s_req_t req = {
            .method = "POST", .bucket = bucket, .key = key, .query = query, .body = complete};
        rc = s_perform(self, cred, &req, &cx, code, err, errlen);
        /* CompleteMultipartUpload can answer 200 with an error inside. */
        char inner[64];
        s_xml_value(cx.mem, "Code", inner, sizeof inner);
        if (rc == 0 && inner[0] && cx.mem && strstr(cx.mem, "<Error>")) {
            char message[512];
            s_xml_value(cx.mem, "Message", message, sizeof message);
            snprintf(code, sizeof code, "%s", inner);
            snprintf(err, errlen, "S3 %s: %s", inner, message);
            rc = -1;
        }
        long status = cx.status;
        free(cx.mem);
        if (rc == 0) {
            result = 0;
            goto end;
        }
        if (!s_retryable(code, status) || attempt + 1 == self->part_tries)
            break;
        s_backoff(attempt);
    }
abort:
    if (upload_id) {
        /* Leave no invisible parts behind (they cost money). */
        char query_abort[600], abort_code[64], abort_err[256];
        snprintf(query_abort, sizeof query_abort, "uploadId=%s", upload_id);
        s_xfer_t ax = {0};
        s_req_t req = {.method = "DELETE", .bucket = bucket, .key = key, .query = query_abort};
        s_perform(self, cred, &req, &ax, abort_code, abort_err, sizeof abort_err);
        free(ax.mem);
    }
end:
    if (code_out)
        snprintf(code_out, 64, "%s", result == 0 ? "" : code);
    if (file)
        fclose(file);
    free(upload_id);
    free(complete);
    return result;
}
