/* The REST API inside the test process (issue 11): cf_api started by the
 * test itself on 127.0.0.1, port 0 (the kernel picks a free one, so there is
 * no race for it), over its own Postgres database, Redis key prefix, metrics
 * registry, blob store and source policy, wired as cf_api_service wires them
 * for `clipfarm node`, without the renderer. Requests go over a loopback
 * socket as written here, byte for byte, and the answer is read whole, so a
 * test can assert on every header the API sends.
 *
 * Why a socket and not a call into the router: the handlers answer through
 * civetweb's connection (mg_write, mg_read, mg_get_header and friends), and
 * civetweb has no connection that is not a socket. A socketless seam would
 * put an indirection in front of every one of those calls for the tests'
 * sake; a loopback socket drives the same code with none.
 *
 * Header-only: included by one test file each. */
#ifndef API_INPROC_H
#define API_INPROC_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cf_api.h"
#include "cf_apikey.h"
#include "cf_blob.h"
#include "cf_cache.h"
#include "cf_db.h"
#include "cf_metrics.h"
#include "cf_source_policy.h"
#include "cf_testutil.h"

/* What the tests change of the defaults before the API starts. */
typedef struct {
    const char *db_url;     /* NULL: a fresh database of the test Postgres */
    const char *redis_url;  /* NULL: the test Redis (CF_TEST_REDIS_URL) */
    int acquire_timeout_ms; /* of the Postgres pool; 0: 3000, as cf_api_service */
} inproc_config_t;

typedef struct {
    char db_url[512];
    char redis_url[512];
    char prefix[96];
    char *dir;       /* data dir and the one media root */
    char media[700]; /* file:// URL of a source under the media root */
    uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES];
    cf_db_t *db;
    cf_cache_t *cache;
    cf_metrics_t *metrics;
    cf_blob_store_t *blobs;
    cf_source_policy_t *policy;
    cf_api_options_t opts; /* what inproc_listen starts the API with */
    cf_api_t *api;
    int port;
} inproc_api_t;

/* One answer: status, the head as sent (status line and headers, CRLFs
 * kept) and the body. json is the body parsed when it is JSON. */
typedef struct {
    int status;
    char *raw; /* head and body, NUL-terminated */
    size_t raw_len;
    const char *body; /* into raw */
    size_t body_len;
    json_t *json;
} inproc_resp_t;

/* The cluster secret of every test API: keys are hashed with it. */
#define INPROC_SECRET "inproc test cluster secret 0123456789abcdef"

/* A port of 127.0.0.1 nothing can connect to: a socket bound to it that
 * never listens (connections are refused) and that keeps it from being
 * taken until inproc_closed_port_release. */
static inline int inproc_closed_port(int *fd_p)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
    *fd_p = fd;
    return ntohs(addr.sin_port);
}

/* Creates everything the API borrows (after cf_api_service_new) and fills
 * fx->opts; the test may change fx->opts before inproc_listen. */
static inline void inproc_prepare(inproc_api_t *fx, const inproc_config_t *cfg)
{
    static int count;
    char err[512];
    memset(fx, 0, sizeof *fx);
    const char *redis =
        cfg && cfg->redis_url ? cfg->redis_url : cf_test_require_env("CF_TEST_REDIS_URL");
    snprintf(fx->redis_url, sizeof fx->redis_url, "%s", redis);
    if (cfg && cfg->db_url)
        snprintf(fx->db_url, sizeof fx->db_url, "%s", cfg->db_url);
    else
        cf_test_fresh_database("cf_inproc", fx->db_url, sizeof fx->db_url);
    snprintf(fx->prefix, sizeof fx->prefix, "cftest:inproc:%d:%d:", (int)getpid(), ++count);
    fx->dir = cf_test_mkdtemp("inproc");
    snprintf(fx->media, sizeof fx->media, "file://%s/a.mp4", fx->dir);
    cf_apikey_hashkey_derive(INPROC_SECRET, strlen(INPROC_SECRET), fx->hashkey);

    cf_db_options_t dbo;
    cf_db_options_default(&dbo);
    dbo.url = fx->db_url;
    dbo.pool_size = 4;
    dbo.acquire_timeout_ms = cfg && cfg->acquire_timeout_ms ? cfg->acquire_timeout_ms : 3000;
    dbo.connect_timeout_ms = 2000;
    if (!(fx->db = cf_db_new(&dbo, err, sizeof err)))
        fail_msg("cf_db_new: %s", err);
    cf_cache_options_t co;
    cf_cache_options_default(&co);
    co.url = fx->redis_url;
    co.prefix = fx->prefix;
    co.connections = 4;
    if (!(fx->cache = cf_cache_new(&co, err, sizeof err)))
        fail_msg("cf_cache_new: %s", err);
    cf_cache_attach(fx->cache, fx->db);
    fx->metrics = cf_metrics_new();
    assert_non_null(fx->metrics);
    char path[600];
    snprintf(path, sizeof path, "%s/blobs", fx->dir);
    if (!(fx->blobs = cf_blob_store_new(path, err, sizeof err)))
        fail_msg("cf_blob_store_new: %s", err);
    fx->policy = cf_source_policy_new();
    assert_non_null(fx->policy);
    if (cf_source_policy_add_root(fx->policy, fx->dir, err, sizeof err) < 0)
        fail_msg("media root: %s", err);

    cf_api_options_t *o = &fx->opts;
    cf_api_options_default(o);
    o->http_addr = "127.0.0.1:0";
    o->http_threads = 16; /* civetweb starts every thread up front */
    o->redis_url = fx->redis_url;
    o->redis_prefix = fx->prefix;
    o->data_dir = fx->dir;
    o->node_id = "inproc-node";
    memcpy(o->hashkey, fx->hashkey, sizeof o->hashkey);
    o->db = fx->db;
    o->cache = fx->cache;
    o->metrics = fx->metrics;
    o->blobs = fx->blobs;
    o->policy = fx->policy;
    o->webhook_policy = NULL;
}

/* Starts the API with fx->opts. Returns 0, or -1 with cf_api_new's reason
 * in err. */
static inline int inproc_listen(inproc_api_t *fx, char *err, size_t errlen)
{
    fx->api = cf_api_new(&fx->opts, err, errlen);
    if (!fx->api)
        return -1;
    fx->port = cf_api_port(fx->api);
    return fx->port > 0 ? 0 : -1;
}

/* inproc_prepare and inproc_listen with the defaults; fails the test when
 * the API does not start. */
static inline void inproc_start(inproc_api_t *fx, const inproc_config_t *cfg)
{
    char err[512];
    inproc_prepare(fx, cfg);
    if (inproc_listen(fx, err, sizeof err) < 0)
        fail_msg("cf_api_new: %s", err);
}

/* Stops the API (waits for requests in flight) and frees all it borrowed,
 * in cf_api_service_destroy's order. Safe on a fixture already stopped or
 * half prepared. */
static inline void inproc_stop(inproc_api_t *fx)
{
    cf_api_destroy(&fx->api);
    if (fx->db)
        cf_db_set_write_hook(fx->db, NULL, NULL);
    cf_cache_destroy(&fx->cache);
    cf_db_destroy(&fx->db);
    cf_blob_store_destroy(&fx->blobs);
    cf_metrics_destroy(&fx->metrics);
    cf_source_policy_destroy(&fx->policy);
    if (fx->prefix[0])
        cf_test_redis_delete_prefix(fx->redis_url, fx->prefix);
    if (fx->dir) {
        cf_test_rmtree(fx->dir);
        free(fx->dir);
    }
    memset(fx, 0, sizeof *fx);
}

/* A new API key NAME (an admin key when ADMIN) in the fixture's database;
 * the whole key goes to key (CF_APIKEY_TEXT_SIZE bytes), its id to id (may
 * be NULL). */
static inline void inproc_key(inproc_api_t *fx, const char *name, bool admin,
                              char key[CF_APIKEY_TEXT_SIZE], char id[CF_APIKEY_ID_CHARS + 1])
{
    char key_id[CF_APIKEY_ID_CHARS + 1], err[256];
    uint8_t hash[CF_APIKEY_HASH_BYTES];
    assert_int_equal(cf_apikey_generate(key, key_id), 0);
    cf_apikey_hash(fx->hashkey, key, hash);
    if (cf_db_api_key_insert_scoped(fx->db, key_id, name, hash, sizeof hash, admin, err,
                                    sizeof err) != CF_DB_OK)
        fail_msg("api key %s: %s", name, err);
    if (id)
        memcpy(id, key_id, sizeof key_id);
}

/* ------------------------------------------------------------ requests */

static inline double inproc_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The value of header NAME (case-insensitive) in RESP's head, copied into
 * out; NULL when it has none. */
static inline const char *inproc_header(const inproc_resp_t *resp, const char *name, char *out,
                                        size_t outlen)
{
    size_t nlen = strlen(name);
    const char *line = resp->raw ? strstr(resp->raw, "\r\n") : NULL;
    while (line && line + 2 < resp->body) {
        line += 2;
        if (!strncasecmp(line, name, nlen) && line[nlen] == ':') {
            const char *value = line + nlen + 1;
            while (*value == ' ')
                value++;
            size_t vlen = strcspn(value, "\r");
            snprintf(out, outlen, "%.*s", (int)vlen, value);
            return out;
        }
        line = strstr(line, "\r\n");
    }
    return NULL;
}

/* Sends METHOD PATH with the API key KEY (NULL: none), EXTRA header lines
 * (each "Name: value\r\n"; may be NULL) and BODY (NULL: none; its
 * Content-Length is added) on a new connection, "Connection: close", and
 * reads the whole answer. Fails the test when the API does not answer
 * within 30 s or the body is not as long as its Content-Length says. */
static inline void inproc_request(const inproc_api_t *fx, const char *method, const char *path,
                                  const char *key, const char *extra, const char *body,
                                  inproc_resp_t *resp)
{
    memset(resp, 0, sizeof *resp);
    char *request = NULL;
    size_t request_len = 0;
    FILE *out = open_memstream(&request, &request_len);
    assert_non_null(out);
    fprintf(out, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n", method, path,
            fx->port);
    if (key)
        fprintf(out, "Authorization: Bearer %s\r\n", key);
    if (extra)
        fputs(extra, out);
    if (body)
        fprintf(out, "Content-Length: %zu\r\n", strlen(body));
    fputs("\r\n", out);
    if (body)
        fputs(body, out);
    assert_int_equal(fclose(out), 0);

    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)fx->port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        fail_msg("connect to 127.0.0.1:%d: %m", fx->port);
    for (size_t sent = 0; sent < request_len;) {
        ssize_t n = send(fd, request + sent, request_len - sent, MSG_NOSIGNAL);
        if (n <= 0)
            break; /* the API may refuse before reading it all: read its answer */
        sent += (size_t)n;
    }
    free(request);

    size_t cap = 8192, len = 0;
    char *raw = malloc(cap);
    assert_non_null(raw);
    double deadline = inproc_now() + 30;
    for (;;) {
        if (len + 1 >= cap) {
            cap *= 2;
            raw = realloc(raw, cap);
            assert_non_null(raw);
        }
        int left_ms = (int)((deadline - inproc_now()) * 1000);
        struct pollfd p = {fd, POLLIN, 0};
        if (left_ms <= 0 || poll(&p, 1, left_ms) <= 0) {
            close(fd);
            free(raw);
            fail_msg("%s %s: no whole answer within 30 s", method, path);
        }
        ssize_t n = recv(fd, raw + len, cap - 1 - len, 0);
        if (n <= 0)
            break; /* the end of the answer ("Connection: close"), or a reset after it */
        len += (size_t)n;
    }
    close(fd);
    raw[len] = '\0';
    resp->raw = raw;
    resp->raw_len = len;
    const char *end = strstr(raw, "\r\n\r\n");
    if (strncmp(raw, "HTTP/1.1 ", 9) || !end)
        fail_msg("%s %s: not an HTTP answer: %s", method, path, raw);
    resp->status = atoi(raw + 9);
    resp->body = end + 4;
    resp->body_len = len - (size_t)(resp->body - raw);
    char value[128];
    if (inproc_header(resp, "Content-Length", value, sizeof value) &&
        strtoull(value, NULL, 10) != resp->body_len)
        fail_msg("%s %s: Content-Length %s, body of %zu bytes", method, path, value,
                 resp->body_len);
    if (inproc_header(resp, "Content-Type", value, sizeof value) &&
        !strncmp(value, "application/json", 16))
        resp->json = json_loadb(resp->body, resp->body_len, 0, NULL);
}

/* inproc_request of a JSON body (Content-Type: application/json). */
static inline void inproc_post_json(const inproc_api_t *fx, const char *path, const char *key,
                                    const char *extra, const char *body, inproc_resp_t *resp)
{
    char headers[1024];
    snprintf(headers, sizeof headers, "Content-Type: application/json\r\n%s", extra ? extra : "");
    inproc_request(fx, "POST", path, key, headers, body, resp);
}

static inline void inproc_resp_clear(inproc_resp_t *resp)
{
    json_decref(resp->json);
    free(resp->raw);
    memset(resp, 0, sizeof *resp);
}

/* ------------------------------------------------------------ assertions */

/* Fails unless RESP has STATUS and a JSON body equal (as JSON: members in
 * any order, nothing more, nothing less) to EXPECTED, JSON text. */
static inline void inproc_expect_json(const inproc_resp_t *resp, int status, const char *expected)
{
    json_error_t jerr;
    json_t *want = json_loads(expected, 0, &jerr);
    if (!want)
        fail_msg("expected JSON does not parse (%s): %s", jerr.text, expected);
    bool same = resp->status == status && resp->json && json_equal(resp->json, want);
    json_decref(want);
    if (!same)
        fail_msg("expected %d %s\n     got %d %.*s", status, expected, resp->status,
                 (int)resp->body_len, resp->body);
}

/* Fails unless RESP is STATUS with exactly {"error": {"code": CODE,
 * "message": MESSAGE, "field": FIELD or null}}. */
static inline void inproc_expect_error(const inproc_resp_t *resp, int status, const char *code,
                                       const char *field, const char *message)
{
    json_t *want = json_pack("{s:{s:s,s:s,s:o}}", "error", "code", code, "message", message,
                             "field", field ? json_string(field) : json_null());
    char *text = json_dumps(want, JSON_COMPACT);
    json_decref(want);
    assert_non_null(text);
    char copy[2048];
    snprintf(copy, sizeof copy, "%s", text);
    free(text);
    inproc_expect_json(resp, status, copy);
}

/* Fails unless RESP has header NAME with exactly VALUE (NULL: no such
 * header). */
static inline void inproc_expect_header(const inproc_resp_t *resp, const char *name,
                                        const char *value)
{
    char got[512];
    const char *have = inproc_header(resp, name, got, sizeof got);
    if (!value && have)
        fail_msg("unexpected %s: %s in\n%s", name, have, resp->raw);
    if (value && (!have || strcmp(have, value)))
        fail_msg("expected %s: %s in\n%s", name, value, resp->raw);
}

/* The string member NAME of RESP's JSON body ("" when absent). */
static inline const char *inproc_str(const inproc_resp_t *resp, const char *name)
{
    const char *value = json_string_value(json_object_get(resp->json, name));
    return value ? value : "";
}

/* The value of the /metrics sample that starts with LINE_START
 * ("name{labels}" as rendered, or "name"), -1 when there is none (a
 * series never touched, such as a counter never incremented, has none). */
static inline double inproc_metric(const inproc_api_t *fx, const char *line_start)
{
    inproc_resp_t r;
    inproc_request(fx, "GET", "/metrics", NULL, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    double value = -1;
    size_t n = strlen(line_start);
    for (const char *line = r.body; line && *line; line = strchr(line, '\n'), line += !!line) {
        if (!strncmp(line, line_start, n) && line[n] == ' ') {
            value = strtod(line + n + 1, NULL);
            break;
        }
    }
    inproc_resp_clear(&r);
    return value;
}

/* Percent-encodes TEXT for a query string into out. */
static inline void inproc_urlencode(const char *text, char *out, size_t outlen)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p && n + 4 < outlen; p++) {
        if (isalnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~')
            out[n++] = (char)*p;
        else
            n += (size_t)snprintf(out + n, outlen - n, "%%%02X", *p);
    }
    out[n] = '\0';
}

#endif
