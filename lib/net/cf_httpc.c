#define _GNU_SOURCE
#include "cf_json.h"
#include "cf_httpc.h"

#include <ctype.h>
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct cf_httpc_t {
    CURL *curl;
    char *base_url;
    char *auth_header;
    int timeout_ms;
    int stall_timeout_ms;
    const atomic_bool *cancel; /* borrowed; NULL: none */
};

static pthread_once_t s_global_once = PTHREAD_ONCE_INIT;
static int s_global_rc;

static void s_global_init(void)
{
    s_global_rc = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

cf_httpc_t *cf_httpc_new(const char *base_url, const char *api_key, int timeout_ms,
                         int stall_timeout_ms, char *err, size_t errlen)
{
    pthread_once(&s_global_once, s_global_init);
    if (s_global_rc < 0) {
        snprintf(err, errlen, "libcurl cannot be initialised");
        return NULL;
    }
    cf_httpc_t *self = calloc(1, sizeof *self);
    if (!self)
        goto oom;
    self->curl = curl_easy_init();
    size_t len = strlen(base_url);
    while (len > 0 && base_url[len - 1] == '/')
        len--;
    self->base_url = strndup(base_url, len);
    if (!self->curl || !self->base_url)
        goto oom;
    if (api_key && asprintf(&self->auth_header, "Authorization: Bearer %s", api_key) < 0) {
        self->auth_header = NULL;
        goto oom;
    }
    self->timeout_ms = timeout_ms > 0 ? timeout_ms : 5000;
    self->stall_timeout_ms = stall_timeout_ms > 0 ? stall_timeout_ms : 30000;
    return self;
oom:
    snprintf(err, errlen, "out of memory");
    cf_httpc_destroy(&self);
    return NULL;
}

void cf_httpc_destroy(cf_httpc_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_httpc_t *self = *self_p;
    if (self->curl)
        curl_easy_cleanup(self->curl);
    free(self->base_url);
    free(self->auth_header);
    free(self);
    *self_p = NULL;
}

const char *cf_httpc_base_url(const cf_httpc_t *self)
{
    return self->base_url;
}

void cf_httpc_set_cancel(cf_httpc_t *self, const atomic_bool *cancel)
{
    self->cancel = cancel;
}

/* libcurl calls this often (at least once a second, stalled or not). */
static int s_on_xferinfo(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                         curl_off_t ulnow)
{
    const cf_httpc_t *self = arg;
    return atomic_load(self->cancel) ? 1 : 0;
}

void cf_httpc_response_clear(cf_httpc_response_t *resp)
{
    if (!resp)
        return;
    free(resp->body);
    memset(resp, 0, sizeof *resp);
}

typedef struct {
    cf_httpc_t *self;
    cf_httpc_response_t *resp;
    size_t cap;
    cf_httpc_headers_fn *on_headers;
    cf_httpc_sink_fn *sink;
    cf_httpc_progress_fn *progress;
    void *arg;
    int headers_done;
    int aborted;
    int64_t received;
} s_transfer_t;

/* Copies header VALUE (len bytes, trailing CR/LF/space dropped) into OUT. */
static void s_copy_value(char *out, size_t outlen, const char *value, size_t len)
{
    while (len > 0 && isspace((unsigned char)*value)) {
        value++;
        len--;
    }
    while (len > 0 && isspace((unsigned char)value[len - 1]))
        len--;
    if (len >= outlen)
        len = outlen - 1;
    memcpy(out, value, len);
    out[len] = '\0';
}

static size_t s_on_header(char *data, size_t size, size_t nitems, void *userdata)
{
    s_transfer_t *t = userdata;
    size_t len = size * nitems;
    cf_httpc_response_t *resp = t->resp;
    /* A new status line (after a redirect or 100 Continue) starts over. */
    if (len >= 5 && !strncmp(data, "HTTP/", 5)) {
        resp->content_type[0] = resp->etag[0] = resp->location[0] = '\0';
        resp->content_range[0] = resp->content_disposition[0] = resp->last_modified[0] = '\0';
        resp->retry_after_s = resp->content_length = resp->range_start = resp->range_total = -1;
        return len;
    }
    const char *colon = memchr(data, ':', len);
    if (!colon)
        return len;
    size_t name_len = (size_t)(colon - data);
    const char *value = colon + 1;
    size_t value_len = len - name_len - 1;
    char text[512];
    s_copy_value(text, sizeof text, value, value_len);
#define S_IS(name) (name_len == sizeof(name) - 1 && !strncasecmp(data, name, name_len))
    if (S_IS("Content-Type"))
        s_copy_value(resp->content_type, sizeof resp->content_type, value, value_len);
    else if (S_IS("ETag"))
        s_copy_value(resp->etag, sizeof resp->etag, value, value_len);
    else if (S_IS("Location"))
        s_copy_value(resp->location, sizeof resp->location, value, value_len);
    else if (S_IS("Retry-After"))
        resp->retry_after_s = strtol(text, NULL, 10);
    else if (S_IS("Content-Length"))
        resp->content_length = strtoll(text, NULL, 10);
    else if (S_IS("Content-Disposition"))
        s_copy_value(resp->content_disposition, sizeof resp->content_disposition, value, value_len);
    else if (S_IS("Last-Modified"))
        s_copy_value(resp->last_modified, sizeof resp->last_modified, value, value_len);
    else if (S_IS("Content-Range")) {
        s_copy_value(resp->content_range, sizeof resp->content_range, value, value_len);
        long long start, end;
        char total[32];
        if (sscanf(text, "bytes %lld-%lld/%31s", &start, &end, total) == 3) {
            resp->range_start = start;
            resp->range_total = total[0] == '*' ? -1 : strtoll(total, NULL, 10);
        }
    }
#undef S_IS
    return len;
}

static int s_append(s_transfer_t *t, const char *data, size_t len)
{
    cf_httpc_response_t *resp = t->resp;
    if (resp->body_len + len + 1 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 4096;
        while (cap < resp->body_len + len + 1)
            cap *= 2;
        char *body = realloc(resp->body, cap);
        if (!body)
            return -1;
        resp->body = body;
        t->cap = cap;
    }
    memcpy(resp->body + resp->body_len, data, len);
    resp->body_len += len;
    resp->body[resp->body_len] = '\0';
    return 0;
}

static size_t s_on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    s_transfer_t *t = userdata;
    size_t len = size * nmemb;
    long status = 0;
    curl_easy_getinfo(t->self->curl, CURLINFO_RESPONSE_CODE, &status);
    int stream = t->sink && status >= 200 && status < 300;
    if (!t->headers_done) {
        t->headers_done = 1;
        t->resp->status = status;
        if (stream && t->on_headers && t->on_headers(t->arg, t->resp) < 0) {
            t->aborted = 1;
            return 0;
        }
    }
    if (!stream)
        return s_append(t, data, len) < 0 ? 0 : len;
    if (t->sink(t->arg, data, len) < 0) {
        t->aborted = 1;
        return 0;
    }
    t->received += (int64_t)len;
    if (t->progress)
        t->progress(t->arg, t->received,
                    t->resp->content_length >= 0 ? t->resp->content_length : -1);
    return len;
}

static int s_perform(cf_httpc_t *self, const char *method, const char *path,
                     const char *const *headers, const char *content_type, const void *body,
                     size_t body_len, s_transfer_t *t, char *err, size_t errlen)
{
    CURL *curl = self->curl;
    cf_httpc_response_t *resp = t->resp;
    memset(resp, 0, sizeof *resp);
    resp->retry_after_s = resp->content_length = resp->range_start = resp->range_total = -1;
    char *url = NULL;
    if (asprintf(&url, "%s%s%s", self->base_url, path[0] == '/' ? "" : "/", path) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    struct curl_slist *list = NULL;
    char ct[160];
    if (self->auth_header)
        list = curl_slist_append(list, self->auth_header);
    if (content_type) {
        snprintf(ct, sizeof ct, "Content-Type: %s", content_type);
        list = curl_slist_append(list, ct);
    }
    for (size_t i = 0; headers && headers[i]; i++)
        list = curl_slist_append(list, headers[i]);
    list = curl_slist_append(list, "Expect:"); /* no 100-continue round trip */

    curl_easy_reset(curl);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, (long)self->timeout_ms);
    /* A stalled transfer (no byte for stall_timeout) is aborted; a long
     * download that keeps moving is not. */
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, (long)((self->stall_timeout_ms + 999) / 1000));
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, s_on_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, s_on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "clipfarm/" CF_VERSION);
    if (self->cancel) {
        curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, s_on_xferinfo);
        curl_easy_setopt(curl, CURLOPT_XFERINFODATA, self);
    }
    if (!strcmp(method, "GET")) {
        curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
    } else if (!strcmp(method, "HEAD")) {
        curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    } else {
        curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
        if (body || !strcmp(method, "POST") || !strcmp(method, "PUT")) {
            curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body ? body : "");
            curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        }
    }
    CURLcode rc = curl_easy_perform(curl);
    curl_slist_free_all(list);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    resp->status = status;
    int result = 0;
    if (self->cancel && atomic_load(self->cancel)) {
        snprintf(err, errlen, "%s %s: cancelled", method, url);
        result = -1;
    } else if (t->aborted) {
        snprintf(err, errlen, "%s %s: transfer aborted", method, url);
        result = -1;
    } else if (rc != CURLE_OK) {
        snprintf(err, errlen, "cannot reach %s: %s", url, curl_easy_strerror(rc));
        result = -1;
    }
    free(url);
    return result;
}

int cf_httpc_request(cf_httpc_t *self, const char *method, const char *path,
                     const char *const *headers, const char *content_type, const void *body,
                     size_t body_len, cf_httpc_response_t *resp, char *err, size_t errlen)
{
    s_transfer_t t = {.self = self, .resp = resp};
    int rc = s_perform(self, method, path, headers, content_type, body, body_len, &t, err, errlen);
    if (rc == 0 && !resp->body)
        s_append(&t, "", 0);
    return rc;
}

int cf_httpc_get_stream(cf_httpc_t *self, const char *path, const char *const *headers,
                        cf_httpc_headers_fn *on_headers, cf_httpc_sink_fn *sink,
                        cf_httpc_progress_fn *progress, void *arg, cf_httpc_response_t *resp,
                        char *err, size_t errlen)
{
    s_transfer_t t = {.self = self,
                      .resp = resp,
                      .on_headers = on_headers,
                      .sink = sink,
                      .progress = progress,
                      .arg = arg};
    int rc = s_perform(self, "GET", path, headers, NULL, NULL, 0, &t, err, errlen);
    /* A 2xx with an empty body never reached s_on_body: headers still count. */
    if (rc == 0 && !t.headers_done && resp->status >= 200 && resp->status < 300 && on_headers &&
        on_headers(arg, resp) < 0) {
        snprintf(err, errlen, "GET %s%s: transfer aborted", self->base_url, path);
        rc = -1;
    }
    return rc;
}

void cf_httpc_error_line(const cf_httpc_response_t *resp, char *out, size_t outlen)
{
    json_t *root = resp->body ? cf_json_loadb(resp->body, resp->body_len, 0, NULL) : NULL;
    json_t *error = json_object_get(root, "error");
    const char *code = json_string_value(json_object_get(error, "code"));
    const char *message = json_string_value(json_object_get(error, "message"));
    const char *field = json_string_value(json_object_get(error, "field"));
    if (code && message) {
        snprintf(out, outlen, "HTTP %ld %s: %s%s%s%s", resp->status, code, message,
                 field ? " (field: " : "", field ? field : "", field ? ")" : "");
    } else {
        /* Not our error shape (a proxy, another server): the first line. */
        char first[160] = "";
        if (resp->body)
            s_copy_value(first, sizeof first, resp->body, strcspn(resp->body, "\r\n"));
        snprintf(out, outlen, "HTTP %ld%s%s", resp->status, first[0] ? ": " : "", first);
    }
    /* One line, always: messages from the server may carry newlines. */
    for (char *p = out; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    json_decref(root);
}
