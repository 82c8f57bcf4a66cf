/* The data plane's blob transfers (issue 13): a real node serves its blob
 * store on the peer-only route GET/HEAD /internal/v1/blobs/{hash}, and
 * cf_blob_pull copies blobs from it into another store in this process.
 *
 *   - a blob uploaded through POST /api/v1/media pulls byte-identical, its
 *     hash verified; a second pull needs no request;
 *   - the route takes the peer credential alone: a user's API key, an
 *     admin's too, no credential, a wrong MAC, an old one, one made for
 *     another path are all refused; HEAD, Range (206), 416, 400 and 404;
 *   - a proxy that cuts the answer mid-body (tests/lib/flaky_proxy.py): the
 *     pull resumes with Range from the bytes it had (the proxy saw the
 *     Range) and moves less than twice the blob over the network;
 *   - a peer that serves wrong bytes (tests/lib/blob_server.py): an error,
 *     nothing stored; one that ignores Range: the pull starts over once;
 *   - 404 and 401 are answered at the first try; 503 and a closed port are
 *     retried exactly max_tries times; a stalled transfer ends on cancel;
 *     a blob over max_bytes is refused. */
#include "api_testnode.h"

#include <dirent.h>
#include <jansson.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <sys/stat.h>

#include "cf_apikey.h"
#include "cf_blob.h"
#include "cf_blob_pull.h"
#include "cf_peer_auth.h"

#define S_BLOB_BYTES (8 * 1024 * 1024 + 12345) /* not a multiple of any buffer size */
#define S_CUT_AT     (1024 * 1024)             /* the proxy cuts the answer after this */

static api_testnode_t s_node;
static cf_peer_auth_t s_auth;  /* the node's cluster secret: a peer */
static cf_peer_auth_t s_other; /* another cluster's */
static char s_admin_key[128];
static unsigned char *s_data; /* the uploaded blob */
static char s_hex[CF_BLOB_HEX_SIZE];
static char *s_work;
static char s_data_path[700];

/* ------------------------------------------------------------ helpers */

/* Starts python3 SCRIPT ARGS... (tests/lib), waits for its PORTFILE (the
 * argument named so); returns its pid and the port in *port. */
static pid_t s_spawn_python(const char *script, const char *const *args, const char *portfile,
                            int *port)
{
    char path[700];
    snprintf(path, sizeof path, "%s/lib/%s", cf_test_require_env("CF_TESTS_DIR"), script);
    const char *argv[16] = {"python3", path};
    int argc = 2;
    for (int i = 0; args[i] && argc < 15; i++)
        argv[argc++] = args[i];
    argv[argc] = NULL;
    unlink(portfile);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execvp("python3", (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        FILE *f = fopen(portfile, "r");
        if (f) {
            int ok = fscanf(f, "%d", port) == 1;
            fclose(f);
            if (ok)
                return pid;
        }
        usleep(50 * 1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fail_msg("%s did not start", script);
    return -1;
}

static void s_stop(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static char *s_read_file(const char *path, size_t *len_p)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    rewind(f);
    char *text = malloc((size_t)len + 1);
    size_t got = fread(text, 1, (size_t)len, f);
    fclose(f);
    text[got] = '\0';
    if (len_p)
        *len_p = got;
    return text;
}

/* Options for a pull from URL with the node's credential, quick retries. */
static void s_opts(cf_blob_pull_opts_t *opts, const char *url)
{
    cf_blob_pull_options_default(opts);
    opts->base_url = url;
    opts->sign = cf_peer_auth_sign;
    opts->sign_arg = &s_auth;
    opts->backoff_base_ms = 20;
    opts->backoff_max_ms = 200;
    opts->stall_timeout_ms = 10000;
}

/* A fresh store in the work directory. */
static cf_blob_store_t *s_store(const char *name)
{
    char dir[800], err[256];
    snprintf(dir, sizeof dir, "%s/%s", s_work, name);
    cf_blob_store_t *store = cf_blob_store_new(dir, err, sizeof err);
    if (!store)
        fail_msg("store: %s", err);
    return store;
}

/* Files in the store's directory tree other than directories. */
static int s_files_in(const char *dir)
{
    int count = 0;
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char path[1200];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) == 0)
            count += S_ISDIR(st.st_mode) ? s_files_in(path) : 1;
    }
    if (d)
        closedir(d);
    return count;
}

/* The store holds blob HEX with exactly the uploaded bytes. */
static void s_assert_holds_blob(cf_blob_store_t *store)
{
    char path[4096], err[256], hex[CF_BLOB_HEX_SIZE];
    assert_int_equal(cf_blob_path(store, s_hex, path, sizeof path, err, sizeof err), 0);
    uint64_t size = 0;
    assert_int_equal(cf_blob_hash_file(path, hex, &size, err, sizeof err), 0);
    assert_string_equal(hex, s_hex);
    assert_int_equal(size, S_BLOB_BYTES);
    size_t len = 0;
    char *got = s_read_file(path, &len);
    assert_non_null(got);
    assert_int_equal(len, S_BLOB_BYTES);
    assert_memory_equal(got, s_data, S_BLOB_BYTES);
    free(got);
}

/* One request on the node with header lines HEADERS (NULL-terminated, may
 * be NULL); returns the status, the body in *resp (cleared by the caller). */
static long s_request(const char *method, const char *path, const char *const *headers,
                      cf_httpc_response_t *resp)
{
    char err[256];
    cf_httpc_t *client = cf_httpc_new(s_node.url, NULL, 2000, 10000, err, sizeof err);
    assert_non_null(client);
    int rc = cf_httpc_request(client, method, path, headers, NULL, NULL, 0, resp, err, sizeof err);
    cf_httpc_destroy(&client);
    if (rc < 0)
        fail_msg("%s %s: %s", method, path, err);
    return resp->status;
}

static long s_status(const char *method, const char *path, const char *const *headers)
{
    cf_httpc_response_t resp;
    long status = s_request(method, path, headers, &resp);
    cf_httpc_response_clear(&resp);
    return status;
}

/* ------------------------------------------------------------ tests */

static void test_pull_whole(void **state)
{
    (void)state;
    cf_blob_store_t *store = s_store("whole");
    cf_blob_pull_opts_t opts;
    s_opts(&opts, s_node.url);
    cf_blob_pull_stats_t stats;
    char err[1024];
    int rc = cf_blob_pull(&opts, store, s_hex, &stats, err, sizeof err);
    if (rc != CF_BLOB_PULL_OK)
        fail_msg("pull: %s", err);
    assert_int_equal(stats.tries, 1);
    assert_int_equal(stats.resumes, 0);
    assert_int_equal(stats.bytes_received, S_BLOB_BYTES);
    assert_int_equal(stats.size, S_BLOB_BYTES);
    assert_false(stats.local);
    s_assert_holds_blob(store);
    /* Present now: no request at all (the URL is not even reachable). */
    opts.base_url = "http://127.0.0.1:1";
    char ref[80];
    snprintf(ref, sizeof ref, "blob:%s", s_hex);
    assert_int_equal(cf_blob_pull(&opts, store, ref, &stats, err, sizeof err), CF_BLOB_PULL_OK);
    assert_true(stats.local);
    assert_int_equal(stats.tries, 0);
    assert_int_equal(stats.size, S_BLOB_BYTES);
    /* A reference that is not one: refused before any request. */
    assert_int_equal(cf_blob_pull(&opts, store, "blob:xyz", &stats, err, sizeof err),
                     CF_BLOB_PULL_FAILED);
    assert_int_equal(stats.tries, 0);
    cf_blob_store_destroy(&store);
}

static void test_route_peer_only(void **state)
{
    (void)state;
    char path[160], other[160], line[CF_PEER_AUTH_LINE_SIZE], user[200], admin[200];
    snprintf(path, sizeof path, "/internal/v1/blobs/%s", s_hex);
    long long now = (long long)time(NULL);
    snprintf(user, sizeof user, "Authorization: Bearer %s", s_node.key);
    snprintf(admin, sizeof admin, "Authorization: Bearer %s", s_admin_key);

    /* The user API keys work on the public API... */
    const char *with_user[] = {user, NULL}, *with_admin[] = {admin, NULL};
    assert_int_equal(s_status("GET", "/api/v1/compositions", with_user), 200);
    assert_int_equal(s_status("GET", "/api/v1/compositions", with_admin), 200);
    /* ...and never here, an admin's neither: 403. */
    cf_httpc_response_t resp;
    assert_int_equal(s_request("GET", path, with_user, &resp), 403);
    assert_non_null(strstr(resp.body, "\"peer_only\""));
    cf_httpc_response_clear(&resp);
    assert_int_equal(s_status("GET", path, with_admin), 403);
    assert_int_equal(s_status("HEAD", path, with_admin), 403);
    /* No credential, another cluster's, an old one, one for another path,
     * one for another method, garbage: 401. */
    assert_int_equal(s_status("GET", path, NULL), 401);
    const char *headers[] = {line, NULL};
    assert_int_equal(cf_peer_auth_line(&s_other, "GET", path, now, line, sizeof line), 0);
    assert_int_equal(s_status("GET", path, headers), 401);
    assert_int_equal(cf_peer_auth_line(&s_auth, "GET", path, now - 600, line, sizeof line), 0);
    assert_int_equal(s_status("GET", path, headers), 401);
    snprintf(other, sizeof other, "/internal/v1/blobs/%064d", 0);
    assert_int_equal(cf_peer_auth_line(&s_auth, "GET", other, now, line, sizeof line), 0);
    assert_int_equal(s_status("GET", path, headers), 401);
    assert_int_equal(cf_peer_auth_line(&s_auth, "HEAD", path, now, line, sizeof line), 0);
    assert_int_equal(s_status("GET", path, headers), 401);
    const char *garbage[] = {CF_PEER_AUTH_HEADER ": v1 1 00", NULL};
    assert_int_equal(s_status("GET", path, garbage), 401);
    /* A peer credential together with a user key: the credential decides. */
    const char *both[] = {line, user, NULL};
    assert_int_equal(cf_peer_auth_line(&s_auth, "HEAD", path, now, line, sizeof line), 0);
    assert_int_equal(s_status("HEAD", path, both), 200);
    /* The puller with another cluster's credential: refused, one try. */
    cf_blob_store_t *store = s_store("refused");
    cf_blob_pull_opts_t opts;
    s_opts(&opts, s_node.url);
    opts.sign_arg = &s_other;
    cf_blob_pull_stats_t stats;
    char err[1024];
    assert_int_equal(cf_blob_pull(&opts, store, s_hex, &stats, err, sizeof err),
                     CF_BLOB_PULL_REFUSED);
    assert_int_equal(stats.tries, 1);
    assert_int_equal(stats.http_status, 401);
    assert_int_equal(s_files_in(cf_blob_dir(store)), 0);
    cf_blob_store_destroy(&store);
    /* The route is not in the public document. */
    assert_int_equal(s_request("GET", "/openapi.json", NULL, &resp), 200);
    assert_null(strstr(resp.body, "/internal/"));
    cf_httpc_response_clear(&resp);
}

static void test_route_answers(void **state)
{
    (void)state;
    char path[160], line[CF_PEER_AUTH_LINE_SIZE], range[64];
    snprintf(path, sizeof path, "/internal/v1/blobs/%s", s_hex);
    long long now = (long long)time(NULL);
    const char *headers[] = {line, range, NULL};
    cf_httpc_response_t resp;

    /* HEAD: the size and the hash, no body. */
    assert_int_equal(cf_peer_auth_line(&s_auth, "HEAD", path, now, line, sizeof line), 0);
    headers[1] = NULL;
    assert_int_equal(s_request("HEAD", path, headers, &resp), 200);
    assert_int_equal(resp.content_length, S_BLOB_BYTES);
    char etag[80];
    snprintf(etag, sizeof etag, "\"%s\"", s_hex);
    assert_string_equal(resp.etag, etag);
    assert_int_equal(resp.body_len, 0);
    cf_httpc_response_clear(&resp);
    /* ...and no body on the wire either: the next answer on the same
     * connection starts right after the HEAD's headers. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)s_node.port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    char raw[1024];
    int n = snprintf(raw, sizeof raw,
                     "HEAD %s HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n"
                     "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                     path, line);
    api_send_all(fd, raw, (size_t)n);
    char got[8192];
    size_t len = 0;
    for (ssize_t r; len < sizeof got - 1 && (r = recv(fd, got + len, sizeof got - 1 - len, 0)) > 0;)
        len += (size_t)r;
    got[len] = '\0';
    close(fd);
    char *end_of_head = strstr(got, "\r\n\r\n");
    assert_non_null(end_of_head);
    if (strncmp(end_of_head + 4, "HTTP/1.1 200", 12))
        fail_msg("bytes after the HEAD answer's headers: %s", end_of_head + 4);

    /* One range: 206 with exactly those bytes. */
    assert_int_equal(cf_peer_auth_line(&s_auth, "GET", path, now, line, sizeof line), 0);
    headers[1] = range;
    snprintf(range, sizeof range, "Range: bytes=1000-1999");
    assert_int_equal(s_request("GET", path, headers, &resp), 206);
    assert_int_equal(resp.body_len, 1000);
    assert_memory_equal(resp.body, s_data + 1000, 1000);
    assert_int_equal(resp.range_start, 1000);
    assert_int_equal(resp.range_total, S_BLOB_BYTES);
    cf_httpc_response_clear(&resp);
    /* The last bytes, open-ended. */
    snprintf(range, sizeof range, "Range: bytes=%d-", S_BLOB_BYTES - 10);
    assert_int_equal(s_request("GET", path, headers, &resp), 206);
    assert_int_equal(resp.body_len, 10);
    assert_memory_equal(resp.body, s_data + S_BLOB_BYTES - 10, 10);
    cf_httpc_response_clear(&resp);
    /* Past the end: 416 with the size. */
    snprintf(range, sizeof range, "Range: bytes=%d-", S_BLOB_BYTES);
    assert_int_equal(s_request("GET", path, headers, &resp), 416);
    char expected_range[64];
    snprintf(expected_range, sizeof expected_range, "bytes */%d", S_BLOB_BYTES);
    assert_string_equal(resp.content_range, expected_range);
    cf_httpc_response_clear(&resp);

    /* Malformed names (with a valid credential for them): 400. */
    headers[1] = NULL;
    char upper[CF_BLOB_HEX_SIZE];
    for (int i = 0; i < CF_BLOB_HEX_SIZE; i++)
        upper[i] = (char)(s_hex[i] >= 'a' && s_hex[i] <= 'f' ? s_hex[i] - 32 : s_hex[i]);
    const char *bad[] = {"xyz", "0123", upper, "blob:0123"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char bad_path[200];
        snprintf(bad_path, sizeof bad_path, "/internal/v1/blobs/%s", bad[i]);
        assert_int_equal(cf_peer_auth_line(&s_auth, "GET", bad_path, now, line, sizeof line), 0);
        assert_int_equal(s_request("GET", bad_path, headers, &resp), 400);
        assert_non_null(strstr(resp.body, "invalid_argument"));
        cf_httpc_response_clear(&resp);
    }
    /* Unknown: 404 (GET and HEAD); the puller stops at the first try. */
    char unknown[CF_BLOB_HEX_SIZE], unknown_path[160];
    memset(unknown, 'a', CF_BLOB_HEX_SIZE - 1);
    unknown[CF_BLOB_HEX_SIZE - 1] = '\0';
    snprintf(unknown_path, sizeof unknown_path, "/internal/v1/blobs/%s", unknown);
    assert_int_equal(cf_peer_auth_line(&s_auth, "GET", unknown_path, now, line, sizeof line), 0);
    assert_int_equal(s_status("GET", unknown_path, headers), 404);
    assert_int_equal(cf_peer_auth_line(&s_auth, "HEAD", unknown_path, now, line, sizeof line), 0);
    assert_int_equal(s_status("HEAD", unknown_path, headers), 404);
    cf_blob_store_t *store = s_store("unknown");
    cf_blob_pull_opts_t opts;
    s_opts(&opts, s_node.url);
    cf_blob_pull_stats_t stats;
    char err[1024];
    assert_int_equal(cf_blob_pull(&opts, store, unknown, &stats, err, sizeof err),
                     CF_BLOB_PULL_NOT_FOUND);
    assert_int_equal(stats.tries, 1);
    assert_non_null(strstr(err, "not on this node"));
    assert_int_equal(s_files_in(cf_blob_dir(store)), 0);
    /* Over max_bytes: refused from the announced length, nothing kept. */
    opts.max_bytes = S_BLOB_BYTES - 1;
    assert_int_equal(cf_blob_pull(&opts, store, s_hex, &stats, err, sizeof err),
                     CF_BLOB_PULL_TOO_LARGE);
    assert_int_equal(stats.tries, 1);
    assert_int_equal(s_files_in(cf_blob_dir(store)), 0);
    cf_blob_store_destroy(&store);
}

/* Lines of LOG that contain TEXT. */
static int s_count_lines(const char *log, const char *text)
{
    char *all = s_read_file(log, NULL);
    int count = 0;
    for (char *line = all ? strtok(all, "\n") : NULL; line; line = strtok(NULL, "\n"))
        count += strstr(line, text) != NULL;
    free(all);
    return count;
}

static void test_pull_resumes_after_cut(void **state)
{
    (void)state;
    char upstream[16], mode[32], log[800], portfile[800], url[64];
    snprintf(upstream, sizeof upstream, "%d", s_node.port);
    snprintf(mode, sizeof mode, "response:%d", S_CUT_AT);
    snprintf(log, sizeof log, "%s/proxy.log", s_work);
    snprintf(portfile, sizeof portfile, "%s/proxy.port", s_work);
    const char *args[] = {upstream, "/internal/v1/blobs/", log, portfile, mode, NULL};
    int port = 0;
    pid_t proxy = s_spawn_python("flaky_proxy.py", args, portfile, &port);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);

    cf_blob_store_t *store = s_store("resumed");
    cf_blob_pull_opts_t opts;
    s_opts(&opts, url);
    cf_metrics_t *metrics = cf_metrics_new();
    char err[1024];
    opts.metric = cf_blob_pull_metric_add(metrics, err, sizeof err);
    assert_non_null(opts.metric);
    cf_blob_pull_stats_t stats;
    int rc = cf_blob_pull(&opts, store, s_hex, &stats, err, sizeof err);
    if (rc != CF_BLOB_PULL_OK)
        fail_msg("pull through the cutting proxy: %s", err);
    s_assert_holds_blob(store);
    assert_int_equal(stats.tries, 2);
    assert_int_equal(stats.resumes, 1);
    assert_int_equal(stats.restarts, 0);
    /* Every byte crossed once: the resumed try asked for the rest only. */
    assert_true(stats.bytes_received >= S_BLOB_BYTES);
    assert_true(stats.bytes_received < 2 * (uint64_t)S_BLOB_BYTES);
    assert_int_equal(cf_metric_value(opts.metric, (const char *[]){"resumed"}), 1);
    assert_int_equal(cf_metric_value(opts.metric, (const char *[]){"pulled"}), 1);

    /* What the proxy saw: the cut request, then one with Range from a
     * point past the start, and less than twice the blob sent back. */
    for (int i = 0; i < 100 && s_count_lines(log, "RELAYED") < 2; i++)
        usleep(50 * 1000);
    char *text = s_read_file(log, NULL);
    assert_non_null(text);
    char cut_line[200];
    snprintf(cut_line, sizeof cut_line, "CUT GET /internal/v1/blobs/%s ", s_hex);
    if (!strstr(text, cut_line))
        fail_msg("no cut request in the proxy's log:\n%s", text);
    const char *ranged = strstr(text, " range=bytes=");
    if (!ranged)
        fail_msg("no Range request in the proxy's log:\n%s", text);
    long long from = atoll(ranged + strlen(" range=bytes="));
    assert_true(from > 0);
    assert_true(from < S_CUT_AT);
    assert_int_equal(s_count_lines(log, "GET /internal/v1/blobs/"), 2);
    long long relayed = 0;
    for (const char *p = text; (p = strstr(p, "RELAYED ")); p += 8)
        relayed += atoll(p + 8);
    assert_true(relayed >= S_BLOB_BYTES);
    assert_true(relayed < 2LL * S_BLOB_BYTES);
    printf("resumed pull: cut after %d bytes, resumed from byte %lld, %llu body bytes received, "
           "%lld bytes relayed for a blob of %d\n",
           S_CUT_AT, from, (unsigned long long)stats.bytes_received, relayed, S_BLOB_BYTES);
    free(text);
    s_stop(proxy);
    cf_metrics_destroy(&metrics);
    cf_blob_store_destroy(&store);
}

/* Starts blob_server.py in MODE; returns its pid, its URL in URL. */
static pid_t s_bad_server(const char *mode, const char *name, char *url, size_t urllen, char *log,
                          size_t loglen)
{
    char portfile[800];
    snprintf(log, loglen, "%s/%s.log", s_work, name);
    snprintf(portfile, sizeof portfile, "%s/%s.port", s_work, name);
    const char *args[] = {mode, log, portfile, NULL};
    int port = 0;
    pid_t pid = s_spawn_python("blob_server.py", args, portfile, &port);
    snprintf(url, urllen, "http://127.0.0.1:%d", port);
    return pid;
}

static void test_pull_wrong_bytes(void **state)
{
    (void)state;
    char url[64], log[800], err[1024];
    pid_t server = s_bad_server("wrong:100000", "wrong", url, sizeof url, log, sizeof log);
    cf_blob_store_t *store = s_store("wrong");
    cf_blob_pull_opts_t opts;
    s_opts(&opts, url);
    cf_metrics_t *metrics = cf_metrics_new();
    opts.metric = cf_blob_pull_metric_add(metrics, err, sizeof err);
    cf_blob_pull_stats_t stats;
    assert_int_equal(cf_blob_pull(&opts, store, s_hex, &stats, err, sizeof err),
                     CF_BLOB_PULL_CORRUPT);
    assert_non_null(strstr(err, "expected"));
    assert_int_equal(stats.tries, 1);
    assert_int_equal(stats.bytes_received, 100000);
    /* Nothing stored, not even under the hash the bytes do have, and no
     * temporary file left. */
    assert_int_equal(s_files_in(cf_blob_dir(store)), 0);
    assert_int_equal(cf_metric_value(opts.metric, (const char *[]){"corrupt"}), 1);
    s_stop(server);
    cf_metrics_destroy(&metrics);
    cf_blob_store_destroy(&store);
}

static void test_pull_range_ignored(void **state)
{
    (void)state;
    char url[64], log[800], err[1024], mode[800];
    snprintf(mode, sizeof mode, "whole-cut:%s:%d", s_data_path, S_CUT_AT);
    pid_t server = s_bad_server(mode, "whole", url, sizeof url, log, sizeof log);
    cf_blob_store_t *store = s_store("whole-cut");
    cf_blob_pull_opts_t opts;
    s_opts(&opts, url);
    cf_blob_pull_stats_t stats;
    int rc = cf_blob_pull(&opts, store, s_hex, &stats, err, sizeof err);
    if (rc != CF_BLOB_PULL_OK)
        fail_msg("pull from a peer that ignores Range: %s", err);
    s_assert_holds_blob(store);
    /* The second try asked for the rest, got the whole blob, started over. */
    assert_int_equal(stats.tries, 2);
    assert_int_equal(stats.resumes, 1);
    assert_int_equal(stats.restarts, 1);
    assert_int_equal(stats.bytes_received, (uint64_t)S_CUT_AT + S_BLOB_BYTES);
    assert_int_equal(s_count_lines(log, "range=bytes="), 1);
    s_stop(server);
    cf_blob_store_destroy(&store);
}

static void test_pull_bounded_retries(void **state)
{
    (void)state;
    char url[64], log[800], err[1024];
    cf_blob_store_t *store = s_store("retries");
    cf_blob_pull_opts_t opts;
    cf_blob_pull_stats_t stats;

    /* 503 every time: exactly max_tries requests, then an error naming them. */
    pid_t server = s_bad_server("status:503", "s503", url, sizeof url, log, sizeof log);
    s_opts(&opts, url);
    opts.max_tries = 3;
    assert_int_equal(cf_blob_pull(&opts, store, s_hex, &stats, err, sizeof err),
                     CF_BLOB_PULL_FAILED);
    assert_int_equal(stats.tries, 3);
    assert_int_equal(stats.http_status, 503);
    assert_non_null(strstr(err, "after 3 tries"));
    assert_int_equal(s_count_lines(log, "GET /internal/v1/blobs/"), 3);
    s_stop(server);

    /* 404 and 401: no retry. */
    server = s_bad_server("status:404", "s404", url, sizeof url, log, sizeof log);
    s_opts(&opts, url);
    assert_int_equal(cf_blob_pull(&opts, store, s_hex, &stats, err, sizeof err),
                     CF_BLOB_PULL_NOT_FOUND);
    assert_int_equal(stats.tries, 1);
    assert_int_equal(s_count_lines(log, "GET /internal/v1/blobs/"), 1);
    s_stop(server);
    server = s_bad_server("status:401", "s401", url, sizeof url, log, sizeof log);
    s_opts(&opts, url);
    assert_int_equal(cf_blob_pull(&opts, store, s_hex, &stats, err, sizeof err),
                     CF_BLOB_PULL_REFUSED);
    assert_int_equal(stats.tries, 1);
    s_stop(server);

    /* Nobody listening: max_tries connection attempts. */
    snprintf(url, sizeof url, "http://127.0.0.1:%d", api_free_port());
    s_opts(&opts, url);
    opts.max_tries = 4;
    assert_int_equal(cf_blob_pull(&opts, store, s_hex, &stats, err, sizeof err),
                     CF_BLOB_PULL_FAILED);
    assert_int_equal(stats.tries, 4);
    assert_int_equal(stats.http_status, 0);
    assert_int_equal(s_files_in(cf_blob_dir(store)), 0);
    cf_blob_store_destroy(&store);
}

static void *s_cancel_later(void *arg)
{
    usleep(500 * 1000);
    atomic_store((atomic_bool *)arg, true);
    return NULL;
}

static void test_pull_cancel(void **state)
{
    (void)state;
    char url[64], log[800], err[1024];
    pid_t server = s_bad_server("stall:50000", "stall", url, sizeof url, log, sizeof log);
    cf_blob_store_t *store = s_store("cancel");
    cf_blob_pull_opts_t opts;
    s_opts(&opts, url);
    opts.stall_timeout_ms = 120000; /* only the cancel can end it */
    atomic_bool cancel = false;
    opts.cancel = &cancel;
    pthread_t thread;
    pthread_create(&thread, NULL, s_cancel_later, &cancel);
    double t0 = api_now();
    cf_blob_pull_stats_t stats;
    assert_int_equal(cf_blob_pull(&opts, store, s_hex, &stats, err, sizeof err),
                     CF_BLOB_PULL_CANCELLED);
    double took = api_now() - t0;
    pthread_join(thread, NULL);
    assert_int_equal(stats.tries, 1);
    assert_int_equal(stats.bytes_received, 50000);
    /* Generous: a cancel is seen within about a second, the stall lasts 120 s. */
    if (took > 10)
        fail_msg("cancel took %.1f s", took);
    assert_int_equal(s_files_in(cf_blob_dir(store)), 0);
    s_stop(server);
    cf_blob_store_destroy(&store);
}

static void test_node_stops_cleanly(void **state)
{
    (void)state;
    api_testnode_stop(&s_node);
}

/* ------------------------------------------------------------ setup */

static int s_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0)
        return -1;
    s_work = cf_test_mkdtemp("blobpull");
    const char *extra[] = {"--no-render", "--rate-limit", "0", NULL};
    api_testnode_start(&s_node, extra);
    char secret[700], err[256], other_secret[800];
    snprintf(secret, sizeof secret, "%s/secret", s_node.dir);
    uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES];
    assert_int_equal(cf_apikey_hashkey_load(secret, hashkey, err, sizeof err), 0);
    assert_int_equal(cf_peer_auth_init(&s_auth, hashkey), 0);
    snprintf(other_secret, sizeof other_secret, "%s/other-secret", s_work);
    cf_test_write_file(other_secret, "another cluster's secret, 32 characters or more of it");
    assert_int_equal(cf_apikey_hashkey_load(other_secret, hashkey, err, sizeof err), 0);
    assert_int_equal(cf_peer_auth_init(&s_other, hashkey), 0);
    /* Without a cluster secret there is no peer key. */
    cf_apikey_hashkey_derive(NULL, 0, hashkey);
    cf_peer_auth_t none;
    assert_int_equal(cf_peer_auth_init(&none, hashkey), -1);

    cf_test_proc_t proc =
        cf_test_runl(cf_test_bin(), "apikey", "create", "admin", "--admin", "--database-url",
                     s_node.db_url, "--cluster-secret-file", secret, NULL);
    cf_test_expect_success(&proc, "apikey create --admin");
    snprintf(s_admin_key, sizeof s_admin_key, "%.*s", (int)strcspn(proc.out, "\n"), proc.out);
    cf_test_proc_free(&proc);

    /* The blob: random bytes, uploaded as a user would. */
    s_data = malloc(S_BLOB_BYTES);
    randombytes_buf(s_data, S_BLOB_BYTES);
    snprintf(s_data_path, sizeof s_data_path, "%s/blob.bin", s_work);
    FILE *f = fopen(s_data_path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(s_data, 1, S_BLOB_BYTES, f), S_BLOB_BYTES);
    fclose(f);
    cf_httpc_t *client = cf_httpc_new(s_node.url, s_node.key, 2000, 30000, err, sizeof err);
    cf_httpc_response_t resp;
    assert_int_equal(cf_httpc_request(client, "POST", "/api/v1/media", NULL,
                                      "application/octet-stream", s_data, S_BLOB_BYTES, &resp, err,
                                      sizeof err),
                     0);
    if (resp.status != 201)
        fail_msg("upload: %ld %s", resp.status, resp.body);
    json_t *blob = json_loads(resp.body, 0, NULL);
    const char *ref = json_string_value(json_object_get(blob, "ref"));
    assert_non_null(ref);
    assert_int_equal(cf_blob_parse_ref(ref, s_hex), 0);
    json_decref(blob);
    cf_httpc_response_clear(&resp);
    cf_httpc_destroy(&client);
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    api_testnode_cleanup(&s_node);
    free(s_data);
    cf_test_rmtree(s_work);
    free(s_work);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pull_whole),           cmocka_unit_test(test_route_peer_only),
        cmocka_unit_test(test_route_answers),        cmocka_unit_test(test_pull_resumes_after_cut),
        cmocka_unit_test(test_pull_wrong_bytes),     cmocka_unit_test(test_pull_range_ignored),
        cmocka_unit_test(test_pull_bounded_retries), cmocka_unit_test(test_pull_cancel),
        cmocka_unit_test(test_node_stops_cleanly),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
