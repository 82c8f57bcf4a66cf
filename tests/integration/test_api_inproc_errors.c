/* The REST handlers' error paths, driven in-process (issue 11; api_inproc.h):
 * Postgres unreachable (the API pointed at a port that refuses
 * connections: 503 database_unavailable with Retry-After from every route
 * that needs it, /healthz still up, /readyz saying which), Redis unreachable
 * (the rate limit fails open, reads and writes still served from Postgres,
 * /readyz saying which), the rate limit itself (429 with Retry-After and
 * retry_after_s, per key, /api/v1 only), and the API refusing to start
 * (no database, a public address without keys, bad options, a port in
 * use). Nothing is stopped: the servers of tests/run stay up throughout. */
#include "api_inproc.h"

#define S_COMPOSITIONS "/api/v1/compositions"
#define S_SOME_ID      "0a1b2c3d-0000-4000-8000-00000000beef"
#define S_DB_DOWN                                                                                  \
    "{\"error\":{\"code\":\"database_unavailable\",\"message\":\"the database is unreachable; "    \
    "retry later\",\"field\":null}}"

static inproc_api_t s_api;
static inproc_api_t s_other;
static int s_closed_fd = -1;

static int s_teardown(void **state)
{
    inproc_stop(&s_api);
    inproc_stop(&s_other);
    if (s_closed_fd >= 0)
        close(s_closed_fd);
    s_closed_fd = -1;
    return 0;
}

static void s_comp_json(const inproc_api_t *fx, char *out, size_t outlen)
{
    snprintf(out, outlen, "{\"title\":\"t\",\"clips\":[{\"source\":\"%s\"}]}", fx->media);
}

/* ------------------------------------------------------------ Postgres down */

static void test_database_down(void **state)
{
    char db_url[128], err[512];
    int port = inproc_closed_port(&s_closed_fd);
    snprintf(db_url, sizeof db_url, "postgresql://postgres@127.0.0.1:%d/clipfarm", port);
    /* Short waits for a connection: every answer below is a 503. */
    inproc_config_t cfg = {.db_url = db_url, .acquire_timeout_ms = 300};
    inproc_prepare(&s_api, &cfg);

    /* With keys to check, the API does not start without its database. */
    assert_int_equal(inproc_listen(&s_api, err, sizeof err), -1);
    const char *prefix = "cannot check API keys: ";
    if (strncmp(err, prefix, strlen(prefix)) || strchr(err, '\n'))
        fail_msg("not the reason expected: %s", err);
    /* Without keys it starts, and each route that needs Postgres says it
     * is unavailable. */
    s_api.opts.insecure_no_auth = true;
    if (inproc_listen(&s_api, err, sizeof err) < 0)
        fail_msg("cf_api_new: %s", err);

    char body[1024];
    s_comp_json(&s_api, body, sizeof body);
    static const struct {
        const char *method, *path;
    } routes[] = {
        {"GET", S_COMPOSITIONS},
        {"GET", S_COMPOSITIONS "?status=queued&limit=5"},
        {"POST", S_COMPOSITIONS},
        {"GET", S_COMPOSITIONS "/" S_SOME_ID},
        {"GET", S_COMPOSITIONS "/0A1B2C3D-0000-4000-8000-00000000BEEF"},
        {"DELETE", S_COMPOSITIONS "/" S_SOME_ID},
        {"GET", S_COMPOSITIONS "/" S_SOME_ID "/segments"},
        {"GET", S_COMPOSITIONS "/" S_SOME_ID "/output"},
        {"GET", S_COMPOSITIONS "/" S_SOME_ID "/events"},
    };
    inproc_resp_t r;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (!strcmp(routes[i].method, "POST"))
            inproc_post_json(&s_api, routes[i].path, NULL, NULL, body, &r);
        else
            inproc_request(&s_api, routes[i].method, routes[i].path, NULL, NULL, NULL, &r);
        if (r.status != 503)
            fail_msg("%s %s: %d %s", routes[i].method, routes[i].path, r.status, r.body);
        inproc_expect_json(&r, 503, S_DB_DOWN);
        inproc_expect_header(&r, "Retry-After", "5");
        inproc_resp_clear(&r);
    }

    /* What needs no database still answers as usual: malformed input, a
     * malformed id, an unknown route. */
    inproc_post_json(&s_api, S_COMPOSITIONS, NULL, NULL, "{\"clips\": [", &r);
    assert_int_equal(r.status, 400);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(r.json, "error"), "code")),
        "malformed_json");
    inproc_resp_clear(&r);
    inproc_request(&s_api, "GET", S_COMPOSITIONS "/not-a-uuid", NULL, NULL, NULL, &r);
    inproc_expect_error(&r, 404, "not_found", "id", "composition not-a-uuid not found");
    inproc_resp_clear(&r);
    inproc_request(&s_api, "GET", S_COMPOSITIONS "?limit=0", NULL, NULL, NULL, &r);
    inproc_expect_error(&r, 400, "invalid_argument", "limit",
                        "limit must be a whole number from 1 to 100, got '0'");
    inproc_resp_clear(&r);

    /* Liveness stays up; readiness names the dependency that is down (and
     * never where it is). */
    inproc_request(&s_api, "GET", "/healthz", NULL, NULL, NULL, &r);
    inproc_expect_json(&r, 200, "{\"status\":\"ok\"}");
    inproc_resp_clear(&r);
    inproc_request(&s_api, "GET", "/readyz", NULL, NULL, NULL, &r);
    inproc_expect_json(
        &r, 503,
        "{\"status\":\"unready\",\"checks\":{\"database\":\"unavailable\",\"redis\":\"ok\"}}");
    inproc_expect_header(&r, "Retry-After", "5");
    inproc_resp_clear(&r);

    /* Metrics still render, saying so. */
    assert_true(inproc_metric(&s_api, "database_up") == 0);
    assert_true(inproc_metric(&s_api, "http_requests_total{method=\"GET\",route=\"/api/v1/"
                                      "compositions/{id}\",status=\"503\"}") == 2);
    assert_true(inproc_metric(&s_api, "http_requests_total{method=\"POST\",route=\"/api/v1/"
                                      "compositions\",status=\"503\"}") == 1);
    inproc_stop(&s_api);
    close(s_closed_fd);
    s_closed_fd = -1;
}

/* ------------------------------------------------------------ Redis down */

static void test_redis_down(void **state)
{
    char redis_url[128], err[512];
    int port = inproc_closed_port(&s_closed_fd);
    snprintf(redis_url, sizeof redis_url, "redis://127.0.0.1:%d/0", port);
    inproc_config_t cfg = {.redis_url = redis_url};
    inproc_prepare(&s_api, &cfg);
    /* A limit the requests below would exceed, were it enforced. */
    s_api.opts.rate_limit = 0.5;
    s_api.opts.rate_burst = 2;
    char key[CF_APIKEY_TEXT_SIZE];
    inproc_key(&s_api, "k", false, key, NULL);
    if (inproc_listen(&s_api, err, sizeof err) < 0)
        fail_msg("cf_api_new: %s", err);

    /* Submitting stores the composition (the queue gets it when Redis is
     * back: the reconcile loop pushes it); reading it comes from Postgres. */
    char body[1024], path[128];
    s_comp_json(&s_api, body, sizeof body);
    inproc_resp_t r;
    inproc_post_json(&s_api, S_COMPOSITIONS, key, NULL, body, &r);
    assert_int_equal(r.status, 202);
    assert_string_equal(inproc_str(&r, "status"), "queued");
    snprintf(path, sizeof path, S_COMPOSITIONS "/%s", inproc_str(&r, "id"));
    inproc_resp_clear(&r);
    for (int i = 0; i < 4; i++) {
        inproc_request(&s_api, "GET", path, key, NULL, NULL, &r);
        assert_int_equal(r.status, 200);
        assert_string_equal(inproc_str(&r, "status"), "queued");
        inproc_resp_clear(&r);
    }
    inproc_request(&s_api, "GET", S_COMPOSITIONS, key, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "items")), 1);
    inproc_resp_clear(&r);
    /* Six requests over a burst of 2 at 0.5/s all passed: the limiter
     * failed open, and counted each time it could not ask. */
    assert_true(inproc_metric(&s_api, "ratelimit_errors_total") == 6);
    assert_true(inproc_metric(&s_api, "api_local_cache_total{result=\"bypass\"}") >= 4);

    inproc_request(&s_api, "GET", "/readyz", NULL, NULL, NULL, &r);
    inproc_expect_json(
        &r, 503,
        "{\"status\":\"unready\",\"checks\":{\"database\":\"ok\",\"redis\":\"unavailable\"}}");
    inproc_expect_header(&r, "Retry-After", "5");
    inproc_resp_clear(&r);
    /* No queue to ask: the cluster shows no depth rather than failing. */
    inproc_request(&s_api, "GET", "/api/v1/cluster", key, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_object_size(json_object_get(r.json, "queue_depth")), 0);
    inproc_resp_clear(&r);
    inproc_stop(&s_api);
    close(s_closed_fd);
    s_closed_fd = -1;
}

/* ------------------------------------------------------------ rate limit */

static void test_rate_limit(void **state)
{
    char err[512];
    inproc_prepare(&s_api, NULL);
    /* A burst of 2, refilled at one token every 2 s (leases of 1 token:
     * every request asks Redis). */
    s_api.opts.rate_limit = 0.5;
    s_api.opts.rate_burst = 2;
    char key[CF_APIKEY_TEXT_SIZE], other[CF_APIKEY_TEXT_SIZE];
    inproc_key(&s_api, "limited", false, key, NULL);
    inproc_key(&s_api, "other", false, other, NULL);
    if (inproc_listen(&s_api, err, sizeof err) < 0)
        fail_msg("cf_api_new: %s", err);

    inproc_resp_t r;
    for (int i = 0; i < 2; i++) {
        inproc_request(&s_api, "GET", S_COMPOSITIONS, key, NULL, NULL, &r);
        assert_int_equal(r.status, 200);
        inproc_expect_header(&r, "Retry-After", NULL);
        inproc_resp_clear(&r);
    }
    /* The third: 429, how long to wait in the header and in the body. */
    inproc_request(&s_api, "GET", S_COMPOSITIONS, key, NULL, NULL, &r);
    assert_int_equal(r.status, 429);
    char retry[32];
    assert_non_null(inproc_header(&r, "Retry-After", retry, sizeof retry));
    int seconds = atoi(retry);
    if (seconds < 1 || seconds > 2)
        fail_msg("Retry-After %s for one token at 0.5/s", retry);
    char expected[512];
    snprintf(expected, sizeof expected,
             "{\"error\":{\"code\":\"rate_limited\",\"message\":\"too many requests for this API "
             "key; retry later\",\"retry_after_s\":%d,\"field\":null}}",
             seconds);
    inproc_expect_json(&r, 429, expected);
    inproc_resp_clear(&r);
    /* Every /api/v1 route shares the key's bucket. */
    char body[1024];
    s_comp_json(&s_api, body, sizeof body);
    inproc_post_json(&s_api, S_COMPOSITIONS, key, NULL, body, &r);
    assert_int_equal(r.status, 429);
    inproc_resp_clear(&r);

    /* Another key has its own bucket; health and metrics are not limited;
     * a request without a valid key is refused before it takes a token. */
    inproc_request(&s_api, "GET", S_COMPOSITIONS, other, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    inproc_resp_clear(&r);
    for (int i = 0; i < 3; i++) {
        inproc_request(&s_api, "GET", "/healthz", NULL, NULL, NULL, &r);
        assert_int_equal(r.status, 200);
        inproc_resp_clear(&r);
    }
    inproc_request(&s_api, "GET", S_COMPOSITIONS, NULL, NULL, NULL, &r);
    assert_int_equal(r.status, 401);
    inproc_resp_clear(&r);
    assert_true(inproc_metric(&s_api, "http_requests_total{method=\"GET\",route=\"/api/v1/"
                                      "compositions\",status=\"429\"}") == 1);
    assert_true(inproc_metric(&s_api, "http_requests_total{method=\"POST\",route=\"/api/v1/"
                                      "compositions\",status=\"429\"}") == 1);
    /* Redis answered every time: no fail-open (a counter never
     * incremented has no sample). */
    assert_true(inproc_metric(&s_api, "ratelimit_errors_total") == -1);

    /* After the wait it names, the key is served again. */
    usleep((useconds_t)seconds * 1000000 + 200000);
    inproc_request(&s_api, "GET", S_COMPOSITIONS, key, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    inproc_resp_clear(&r);
    inproc_stop(&s_api);
}

/* ------------------------------------------------------------ refusing to start */

static void test_refuses_to_start(void **state)
{
    char err[512], expected[512];
    inproc_prepare(&s_api, NULL);
    cf_api_options_t opts = s_api.opts;

    /* A public address while no key exists. */
    s_api.opts.http_addr = "0.0.0.0:0";
    assert_int_equal(inproc_listen(&s_api, err, sizeof err), -1);
    assert_string_equal(err, "refusing to serve 0.0.0.0:0 without API keys: create one with "
                             "'clipfarm apikey create NAME', or pass --insecure-no-auth");
    /* Options out of range, and what the API cannot do without. */
    s_api.opts = opts;
    s_api.opts.http_addr = "127.0.0.1:65536";
    assert_int_equal(inproc_listen(&s_api, err, sizeof err), -1);
    assert_string_equal(err, "port must be a number from 0 to 65535");
    s_api.opts = opts;
    s_api.opts.http_threads = 1;
    assert_int_equal(inproc_listen(&s_api, err, sizeof err), -1);
    assert_string_equal(err, "--http-threads must be 2..10000");
    s_api.opts = opts;
    s_api.opts.db = NULL;
    assert_int_equal(inproc_listen(&s_api, err, sizeof err), -1);
    assert_string_equal(err, "API: database, cache, metrics, blob store, Redis URL and data dir "
                             "are required");

    /* A port another API holds: the reason names the address. */
    s_api.opts = opts;
    if (inproc_listen(&s_api, err, sizeof err) < 0)
        fail_msg("cf_api_new: %s", err);
    inproc_prepare(&s_other, NULL);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", s_api.port);
    s_other.opts.http_addr = addr;
    assert_int_equal(inproc_listen(&s_other, err, sizeof err), -1);
    snprintf(expected, sizeof expected, "cannot serve HTTP on %s: ", addr);
    if (strncmp(err, expected, strlen(expected)))
        fail_msg("not the reason expected: %s", err);
    /* The API that holds it is unharmed. */
    inproc_resp_t r;
    inproc_request(&s_api, "GET", "/healthz", NULL, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    inproc_resp_clear(&r);
    inproc_stop(&s_other);
    inproc_stop(&s_api);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_database_down, s_teardown),
        cmocka_unit_test_teardown(test_redis_down, s_teardown),
        cmocka_unit_test_teardown(test_rate_limit, s_teardown),
        cmocka_unit_test_teardown(test_refuses_to_start, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
