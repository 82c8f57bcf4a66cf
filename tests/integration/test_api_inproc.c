/* The REST handlers driven in-process (issue 11), without the clipfarm
 * binary: cf_api started inside this test over a real Postgres and Redis
 * (api_inproc.h), every answer checked for its exact status, headers and
 * JSON. Submit (valid, each kind of invalid body, Idempotency-Key replay
 * and conflict), read by id in any letter case, list pages with cursors,
 * cancel, authentication, tenancy (another key's composition is 404, never
 * 403), routing errors, /healthz, /readyz, /metrics, /api/v1/cluster.
 * Each test starts its own API over a fresh database, so counts are exact. */
#include "api_inproc.h"

#define S_COMPOSITIONS "/api/v1/compositions"

typedef struct {
    inproc_api_t api;
    char key[CF_APIKEY_TEXT_SIZE];
    char key_id[CF_APIKEY_ID_CHARS + 1];
} s_fixture_t;

static s_fixture_t s_fx;

/* A started API with one ordinary key; JSON bodies over 4096 bytes are
 * refused (413 is tested below). */
static void s_start(void)
{
    inproc_prepare(&s_fx.api, NULL);
    s_fx.api.opts.max_body_bytes = 4096;
    inproc_key(&s_fx.api, "tests", false, s_fx.key, s_fx.key_id);
    char err[512];
    if (inproc_listen(&s_fx.api, err, sizeof err) < 0)
        fail_msg("cf_api_new: %s", err);
}

/* Stops the API inside the test (so a leak or a hang in its shutdown fails
 * this test); the teardown only cleans up after a test that failed. */
static void s_stop(void)
{
    inproc_stop(&s_fx.api);
}

static int s_teardown(void **state)
{
    inproc_stop(&s_fx.api);
    return 0;
}

/* A valid composition of one clip under the media root titled TITLE. */
static void s_comp_json(const char *title, char *out, size_t outlen)
{
    snprintf(out, outlen,
             "{\"title\":\"%s\",\"clips\":[{\"source\":\"%s\"}],"
             "\"output\":{\"width\":160,\"height\":90,\"fps\":25,\"preset\":\"fast\"}}",
             title, s_fx.api.media);
}

/* Submits composition TITLE with KEY; writes its id. */
static void s_create(const char *key, const char *title, char id[64])
{
    char body[1024];
    s_comp_json(title, body, sizeof body);
    inproc_resp_t r;
    inproc_post_json(&s_fx.api, S_COMPOSITIONS, key, NULL, body, &r);
    if (r.status != 202)
        fail_msg("create %s: %d %s", title, r.status, r.body);
    snprintf(id, 64, "%s", inproc_str(&r, "id"));
    inproc_resp_clear(&r);
}

static void s_upper(const char *id, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s", id);
    for (char *p = out; *p; p++)
        *p = (char)toupper((unsigned char)*p);
}

static double s_metric(const char *line_start)
{
    return inproc_metric(&s_fx.api, line_start);
}

/* ------------------------------------------------------------ system routes */

static void test_health_ready_metrics(void **state)
{
    s_start();
    inproc_resp_t r;
    inproc_request(&s_fx.api, "GET", "/healthz", NULL, NULL, NULL, &r);
    inproc_expect_json(&r, 200, "{\"status\":\"ok\"}");
    inproc_expect_header(&r, "Content-Type", "application/json");
    inproc_expect_header(&r, "Cache-Control", "no-store");
    inproc_resp_clear(&r);

    inproc_request(&s_fx.api, "GET", "/readyz", NULL, NULL, NULL, &r);
    inproc_expect_json(&r, 200,
                       "{\"status\":\"ready\",\"checks\":{\"database\":\"ok\",\"redis\":\"ok\"}}");
    inproc_expect_header(&r, "Retry-After", NULL);
    inproc_resp_clear(&r);

    /* Two compositions, one cancelled: the gauges count them by status. */
    char a[64], b[64];
    s_create(s_fx.key, "a", a);
    s_create(s_fx.key, "b", b);
    char path[128];
    snprintf(path, sizeof path, S_COMPOSITIONS "/%s", b);
    inproc_request(&s_fx.api, "DELETE", path, s_fx.key, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    inproc_resp_clear(&r);

    inproc_request(&s_fx.api, "GET", "/metrics", NULL, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    inproc_expect_header(&r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    assert_non_null(strstr(r.body, "# TYPE http_requests_total counter\n"));
    inproc_resp_clear(&r);
    assert_true(s_metric("database_up") == 1);
    assert_true(s_metric("compositions_total{status=\"queued\"}") == 1);
    assert_true(s_metric("compositions_total{status=\"cancelled\"}") == 1);
    assert_true(s_metric("compositions_total{status=\"completed\"}") == 0);
    assert_true(s_metric("queue_depth{priority=\"default\"}") == 2);
    /* Every request so far, by route and status (this scrape counts after
     * it is answered). */
    assert_true(s_metric("http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"}") ==
                1);
    assert_true(s_metric("http_requests_total{method=\"GET\",route=\"/readyz\",status=\"200\"}") ==
                1);
    assert_true(s_metric("http_requests_total{method=\"POST\",route=\"/api/v1/compositions\","
                         "status=\"202\"}") == 2);
    assert_true(s_metric("http_requests_total{method=\"DELETE\",route=\"/api/v1/compositions/"
                         "{id}\",status=\"200\"}") == 1);
    assert_true(s_metric("http_requests_total{method=\"GET\",route=\"/metrics\",status=\"200\"}") ==
                10);

    /* The cluster of a node on its own: itself, and the queue in Redis. */
    inproc_request(&s_fx.api, "GET", "/api/v1/cluster", s_fx.key, NULL, NULL, &r);
    char cluster[512];
    snprintf(cluster, sizeof cluster,
             "{\"node_id\":\"inproc-node\",\"coordinator\":\"inproc-node\",\"epoch\":0,"
             "\"nodes\":[{\"id\":\"inproc-node\",\"state\":\"alive\",\"role\":\"coordinator\","
             "\"http_endpoint\":\"127.0.0.1:%d\",\"self\":true}],"
             "\"queue_depth\":{\"high\":0,\"default\":2,\"low\":0}}",
             s_fx.api.port);
    inproc_expect_json(&r, 200, cluster);
    inproc_resp_clear(&r);

    /* The OpenAPI document lists the routes served. */
    inproc_request(&s_fx.api, "GET", "/openapi.json", NULL, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    json_t *paths = json_object_get(r.json, "paths");
    assert_non_null(json_object_get(json_object_get(paths, S_COMPOSITIONS "/{id}"), "delete"));
    assert_non_null(json_object_get(json_object_get(paths, "/healthz"), "get"));
    inproc_resp_clear(&r);
    s_stop();
}

static void test_routing_errors(void **state)
{
    s_start();
    inproc_resp_t r;
    inproc_request(&s_fx.api, "GET", "/api/v1/nothing-here", s_fx.key, NULL, NULL, &r);
    inproc_expect_error(&r, 404, "no_route", NULL, "no route for /api/v1/nothing-here");
    inproc_resp_clear(&r);

    inproc_request(&s_fx.api, "PUT", S_COMPOSITIONS, s_fx.key, NULL, NULL, &r);
    inproc_expect_error(&r, 405, "method_not_allowed", NULL,
                        "PUT is not allowed on /api/v1/compositions (allowed: POST, GET)");
    inproc_expect_header(&r, "Allow", "POST, GET");
    inproc_resp_clear(&r);

    /* Refused before authentication: a wrong method needs no key. */
    inproc_request(&s_fx.api, "POST", "/healthz", NULL, NULL, NULL, &r);
    inproc_expect_error(&r, 405, "method_not_allowed", NULL,
                        "POST is not allowed on /healthz (allowed: GET)");
    inproc_expect_header(&r, "Allow", "GET");
    inproc_resp_clear(&r);
    s_stop();
}

/* ------------------------------------------------------------ submit */

static void test_submit_valid(void **state)
{
    s_start();
    char body[1024];
    s_comp_json("first", body, sizeof body);
    inproc_resp_t r;
    inproc_post_json(&s_fx.api, S_COMPOSITIONS, s_fx.key, NULL, body, &r);
    assert_int_equal(r.status, 202);
    char id[64];
    snprintf(id, sizeof id, "%s", inproc_str(&r, "id"));
    assert_int_equal(strlen(id), 36);
    char location[128];
    snprintf(location, sizeof location, S_COMPOSITIONS "/%s", id);
    inproc_expect_header(&r, "Location", location);
    inproc_expect_header(&r, "Idempotent-Replayed", NULL);
    /* The whole document: the stored spec is the body sent. */
    json_t *doc = r.json;
    const char *keys[] = {"id",       "title",      "status",     "stage",      "priority",
                          "progress", "attempts",   "api_key_id", "error",      "output",
                          "version",  "created_at", "updated_at", "started_at", "finished_at",
                          "spec",     "waiting"};
    assert_int_equal(json_object_size(doc), sizeof keys / sizeof keys[0]);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!json_object_get(doc, keys[i]))
            fail_msg("no %s in %s", keys[i], r.body);
    assert_string_equal(inproc_str(&r, "title"), "first");
    assert_string_equal(inproc_str(&r, "status"), "queued");
    assert_string_equal(inproc_str(&r, "priority"), "default");
    assert_string_equal(inproc_str(&r, "api_key_id"), s_fx.key_id);
    assert_true(json_number_value(json_object_get(doc, "progress")) == 0);
    assert_int_equal(json_integer_value(json_object_get(doc, "attempts")), 0);
    assert_true(json_is_null(json_object_get(doc, "error")));
    assert_true(json_is_null(json_object_get(doc, "output")));
    assert_true(json_is_null(json_object_get(doc, "waiting")));
    assert_true(json_is_null(json_object_get(doc, "started_at")));
    assert_true(json_is_null(json_object_get(doc, "finished_at")));
    json_t *sent = json_loads(body, 0, NULL);
    assert_true(json_equal(json_object_get(doc, "spec"), sent));
    json_decref(sent);
    inproc_resp_clear(&r);

    /* Stored and queued: it reads back, and Redis holds it. */
    inproc_request(&s_fx.api, "GET", location, s_fx.key, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(inproc_str(&r, "id"), id);
    inproc_resp_clear(&r);
    assert_true(s_metric("queue_depth{priority=\"default\"}") == 1);

    /* A priority other than the default is kept. */
    char high[1024];
    snprintf(high, sizeof high,
             "{\"title\":\"urgent\",\"priority\":\"high\",\"clips\":[{\"source\":\"%s\"}]}",
             s_fx.api.media);
    inproc_post_json(&s_fx.api, S_COMPOSITIONS, s_fx.key, NULL, high, &r);
    assert_int_equal(r.status, 202);
    assert_string_equal(inproc_str(&r, "priority"), "high");
    inproc_resp_clear(&r);
    assert_true(s_metric("queue_depth{priority=\"high\"}") == 1);
    s_stop();
}

static void test_submit_invalid(void **state)
{
    s_start();
    inproc_resp_t r;
    /* Malformed JSON: 400 with where it broke. */
    inproc_post_json(&s_fx.api, S_COMPOSITIONS, s_fx.key, NULL,
                     "{\"title\": \"x\",\n  \"clips\": [}", &r);
    inproc_expect_json(&r, 400,
                       "{\"error\":{\"code\":\"malformed_json\",\"message\":\"malformed JSON at "
                       "line 2, column 13: unexpected token near '}'\",\"line\":2,\"column\":13,"
                       "\"position\":28,\"field\":null}}");
    inproc_resp_clear(&r);

    /* Not JSON, by its content type: 415 (the body is never read). */
    char body[1024];
    s_comp_json("t", body, sizeof body);
    inproc_request(&s_fx.api, "POST", S_COMPOSITIONS, s_fx.key, "Content-Type: text/plain\r\n",
                   body, &r);
    inproc_expect_error(&r, 415, "unsupported_media_type", NULL,
                        "Content-Type must be application/json, got text/plain");
    inproc_resp_clear(&r);
    inproc_request(&s_fx.api, "POST", S_COMPOSITIONS, s_fx.key, NULL, body, &r);
    inproc_expect_error(&r, 415, "unsupported_media_type", NULL,
                        "Content-Type must be application/json, got none");
    inproc_resp_clear(&r);

    /* Over --max-body-bytes (4096 here). */
    char big[6000];
    snprintf(big, sizeof big, "{\"title\":\"%05000d\",\"clips\":[]}", 0);
    inproc_post_json(&s_fx.api, S_COMPOSITIONS, s_fx.key, NULL, big, &r);
    char message[256];
    snprintf(message, sizeof message, "request body of %zu bytes is over the limit of 4096 bytes",
             strlen(big));
    inproc_expect_error(&r, 413, "too_large", NULL, message);
    inproc_resp_clear(&r);

    /* Nested deeper than 32 levels: refused before any parsing. */
    char deep[100] = "";
    for (int i = 0; i < 33; i++)
        strcat(deep, "[");
    inproc_post_json(&s_fx.api, S_COMPOSITIONS, s_fx.key, NULL, deep, &r);
    inproc_expect_json(
        &r, 400,
        "{\"error\":{\"code\":\"too_deep\",\"message\":\"JSON nested deeper than the "
        "limit of 32 levels of arrays and objects\",\"position\":32,\"limit\":32,"
        "\"field\":null}}");
    inproc_resp_clear(&r);

    /* JSON, but not a composition: 422 with every problem. */
    inproc_post_json(
        &s_fx.api, S_COMPOSITIONS, s_fx.key, NULL,
        "{\"clips\":[{\"source\":\"file:///x.mp4\",\"start\":5,\"end\":2},{\"source\":7}],"
        "\"output\":{\"width\":3}}",
        &r);
    assert_int_equal(r.status, 422);
    json_t *error = json_object_get(r.json, "error");
    assert_string_equal(json_string_value(json_object_get(error, "code")), "invalid_composition");
    assert_string_equal(json_string_value(json_object_get(error, "field")), "clips[0].end");
    json_t *problems = json_object_get(error, "problems");
    assert_int_equal(json_array_size(problems), 3);
    const char *fields[] = {"clips[0].end", "clips[1].source", "output.width"};
    for (size_t i = 0; i < 3; i++)
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(problems, i), "field")), fields[i]);
    snprintf(message, sizeof message, "invalid composition: 3 problems, first: clips[0].end: %s",
             json_string_value(json_object_get(json_array_get(problems, 0), "message")));
    assert_string_equal(json_string_value(json_object_get(error, "message")), message);
    inproc_resp_clear(&r);

    /* A source outside the media root is a problem like any other. */
    inproc_post_json(&s_fx.api, S_COMPOSITIONS, s_fx.key, NULL,
                     "{\"title\":\"t\",\"clips\":[{\"source\":\"file:///etc/passwd\"}]}", &r);
    assert_int_equal(r.status, 422);
    error = json_object_get(r.json, "error");
    assert_string_equal(json_string_value(json_object_get(error, "field")), "clips[0].source");
    assert_int_equal(json_array_size(json_object_get(error, "problems")), 1);
    inproc_resp_clear(&r);

    /* Nothing was stored or queued by any of these. */
    inproc_request(&s_fx.api, "GET", S_COMPOSITIONS, s_fx.key, NULL, NULL, &r);
    inproc_expect_json(&r, 200, "{\"items\":[],\"next_cursor\":null}");
    inproc_resp_clear(&r);
    assert_true(s_metric("queue_depth{priority=\"default\"}") == 0);
    s_stop();
}

static void test_submit_idempotency(void **state)
{
    s_start();
    char body[1024], other[1024];
    s_comp_json("order", body, sizeof body);
    s_comp_json("other", other, sizeof other);
    inproc_resp_t first, again;
    inproc_post_json(&s_fx.api, S_COMPOSITIONS, s_fx.key, "Idempotency-Key: order-17\r\n", body,
                     &first);
    assert_int_equal(first.status, 202);
    inproc_expect_header(&first, "Idempotent-Replayed", NULL);
    /* The same key and body: the same composition, marked as a replay. */
    inproc_post_json(&s_fx.api, S_COMPOSITIONS, s_fx.key, "Idempotency-Key: order-17\r\n", body,
                     &again);
    assert_int_equal(again.status, 202);
    inproc_expect_header(&again, "Idempotent-Replayed", "true");
    assert_string_equal(inproc_str(&again, "id"), inproc_str(&first, "id"));
    char location[128];
    snprintf(location, sizeof location, S_COMPOSITIONS "/%s", inproc_str(&first, "id"));
    inproc_expect_header(&again, "Location", location);
    assert_true(json_equal(first.json, again.json));
    inproc_resp_clear(&again);

    /* The same key with another body: 409, nothing stored. */
    inproc_post_json(&s_fx.api, S_COMPOSITIONS, s_fx.key, "Idempotency-Key: order-17\r\n", other,
                     &again);
    inproc_expect_error(&again, 409, "idempotency_conflict", "Idempotency-Key",
                        "this Idempotency-Key was used with a different body");
    inproc_resp_clear(&again);

    /* Keys of 1 to 200 characters only. */
    char header[300];
    snprintf(header, sizeof header, "Idempotency-Key: %0201d\r\n", 0);
    inproc_post_json(&s_fx.api, S_COMPOSITIONS, s_fx.key, header, body, &again);
    inproc_expect_error(&again, 400, "bad_request", "Idempotency-Key",
                        "Idempotency-Key must be 1 to 200 characters");
    inproc_resp_clear(&again);

    /* Without a key the same body is a new composition. */
    inproc_post_json(&s_fx.api, S_COMPOSITIONS, s_fx.key, NULL, body, &again);
    assert_int_equal(again.status, 202);
    assert_string_not_equal(inproc_str(&again, "id"), inproc_str(&first, "id"));
    inproc_resp_clear(&again);

    /* Two stored, two queued: the replay queued nothing again. */
    inproc_request(&s_fx.api, "GET", S_COMPOSITIONS "?fields=id", s_fx.key, NULL, NULL, &again);
    assert_int_equal(again.status, 200);
    assert_int_equal(json_array_size(json_object_get(again.json, "items")), 2);
    inproc_resp_clear(&again);
    assert_true(s_metric("queue_depth{priority=\"default\"}") == 2);
    inproc_resp_clear(&first);
    s_stop();
}

/* ------------------------------------------------------------ read */

static void test_get_any_letter_case(void **state)
{
    s_start();
    char a[64], b[64], upper[64], path[160];
    s_create(s_fx.key, "a", a);
    s_create(s_fx.key, "b", b);
    /* Lower case first (this read fills the node's cache), then upper: the
     * very same bytes, head included. */
    inproc_resp_t lower, up;
    snprintf(path, sizeof path, S_COMPOSITIONS "/%s", a);
    inproc_request(&s_fx.api, "GET", path, s_fx.key, NULL, NULL, &lower);
    assert_int_equal(lower.status, 200);
    assert_string_equal(inproc_str(&lower, "id"), a);
    s_upper(a, upper, sizeof upper);
    assert_string_not_equal(upper, a);
    snprintf(path, sizeof path, S_COMPOSITIONS "/%s", upper);
    inproc_request(&s_fx.api, "GET", path, s_fx.key, NULL, NULL, &up);
    assert_int_equal(up.raw_len, lower.raw_len);
    assert_memory_equal(up.raw, lower.raw, lower.raw_len);
    inproc_resp_clear(&lower);
    inproc_resp_clear(&up);

    /* Upper case first (a miss), then lower. */
    s_upper(b, upper, sizeof upper);
    snprintf(path, sizeof path, S_COMPOSITIONS "/%s", upper);
    inproc_request(&s_fx.api, "GET", path, s_fx.key, NULL, NULL, &up);
    assert_int_equal(up.status, 200);
    assert_string_equal(inproc_str(&up, "id"), b);
    snprintf(path, sizeof path, S_COMPOSITIONS "/%s", b);
    inproc_request(&s_fx.api, "GET", path, s_fx.key, NULL, NULL, &lower);
    assert_int_equal(up.raw_len, lower.raw_len);
    assert_memory_equal(up.raw, lower.raw, lower.raw_len);
    inproc_resp_clear(&lower);
    inproc_resp_clear(&up);

    /* Mixed case on a sub-route names the canonical id. */
    char mixed[64];
    snprintf(mixed, sizeof mixed, "%s", a);
    for (int i = 0; i < 18; i++)
        mixed[i] = (char)toupper((unsigned char)mixed[i]);
    snprintf(path, sizeof path, S_COMPOSITIONS "/%s/segments", mixed);
    inproc_request(&s_fx.api, "GET", path, s_fx.key, NULL, NULL, &up);
    char expected[256];
    snprintf(expected, sizeof expected, "{\"composition_id\":\"%s\",\"items\":[]}", a);
    inproc_expect_json(&up, 200, expected);
    inproc_resp_clear(&up);

    /* Unknown ids, in either case, are named canonically; a malformed one
     * as sent. */
    inproc_request(&s_fx.api, "GET", S_COMPOSITIONS "/00000000-0000-4000-8000-00000000000A",
                   s_fx.key, NULL, NULL, &up);
    inproc_expect_error(&up, 404, "not_found", "id",
                        "composition 00000000-0000-4000-8000-00000000000a not found");
    inproc_resp_clear(&up);
    inproc_request(&s_fx.api, "GET", S_COMPOSITIONS "/not-a-uuid", s_fx.key, NULL, NULL, &up);
    inproc_expect_error(&up, 404, "not_found", "id", "composition not-a-uuid not found");
    inproc_resp_clear(&up);
    inproc_request(&s_fx.api, "GET",
                   S_COMPOSITIONS "/00000000-0000-4000-8000-000000000000/segments", s_fx.key, NULL,
                   NULL, &up);
    inproc_expect_error(&up, 404, "not_found", "id",
                        "composition 00000000-0000-4000-8000-000000000000 not found");
    inproc_resp_clear(&up);
    s_stop();
}

/* ------------------------------------------------------------ list */

/* GET the list with QUERY; returns the ids in order, next_cursor in
 * cursor ("" when null). */
static int s_list(const char *query, char ids[][64], int max, char *cursor, size_t cursorlen)
{
    char path[1200];
    snprintf(path, sizeof path, S_COMPOSITIONS "%s", query);
    inproc_resp_t r;
    inproc_request(&s_fx.api, "GET", path, s_fx.key, NULL, NULL, &r);
    if (r.status != 200)
        fail_msg("list %s: %d %s", query, r.status, r.body);
    json_t *items = json_object_get(r.json, "items");
    int n = (int)json_array_size(items);
    assert_true(n <= max);
    for (int i = 0; i < n; i++)
        snprintf(ids[i], 64, "%s",
                 json_string_value(json_object_get(json_array_get(items, (size_t)i), "id")));
    json_t *next = json_object_get(r.json, "next_cursor");
    assert_true(json_is_null(next) || json_is_string(next));
    snprintf(cursor, cursorlen, "%s", json_is_string(next) ? json_string_value(next) : "");
    inproc_resp_clear(&r);
    return n;
}

static void test_list_with_cursor(void **state)
{
    s_start();
    char ids[5][64];
    for (int i = 0; i < 5; i++) {
        char title[16];
        snprintf(title, sizeof title, "c%d", i);
        s_create(s_fx.key, title, ids[i]);
    }
    /* Newest first, two a page, until next_cursor is null. */
    char page[4][64], cursor[512] = "", query[1100], encoded[1024];
    const int expected[3][2] = {{4, 3}, {2, 1}, {0, -1}};
    for (int p = 0; p < 3; p++) {
        inproc_urlencode(cursor, encoded, sizeof encoded);
        snprintf(query, sizeof query, "?limit=2%s%s", p ? "&cursor=" : "", p ? encoded : "");
        int n = s_list(query, page, 4, cursor, sizeof cursor);
        assert_int_equal(n, p < 2 ? 2 : 1);
        for (int i = 0; i < n; i++)
            assert_string_equal(page[i], ids[expected[p][i]]);
        if (p < 2)
            assert_true(cursor[0]);
        else
            assert_string_equal(cursor, "");
    }
    /* The default page holds them all. */
    char all[20][64];
    assert_int_equal(s_list("", all, 20, cursor, sizeof cursor), 5);
    assert_string_equal(cursor, "");

    /* Fields, and the status filter. */
    inproc_resp_t r;
    inproc_request(&s_fx.api, "GET", S_COMPOSITIONS "?fields=id,status&limit=1", s_fx.key, NULL,
                   NULL, &r);
    char body[512];
    snprintf(body, sizeof body,
             "{\"items\":[{\"id\":\"%s\",\"status\":\"queued\"}],\"next_cursor\":", ids[4]);
    assert_int_equal(r.status, 200);
    assert_int_equal(strncmp(r.body, body, strlen(body)), 0);
    inproc_resp_clear(&r);
    char path[160];
    snprintf(path, sizeof path, S_COMPOSITIONS "/%s", ids[2]);
    inproc_request(&s_fx.api, "DELETE", path, s_fx.key, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    inproc_resp_clear(&r);
    assert_int_equal(s_list("?status=cancelled", page, 4, cursor, sizeof cursor), 1);
    assert_string_equal(page[0], ids[2]);
    assert_int_equal(s_list("?status=queued", all, 20, cursor, sizeof cursor), 4);
    assert_int_equal(s_list("?status=completed", all, 20, cursor, sizeof cursor), 0);

    /* Bad arguments name their field. */
    static const struct {
        const char *query, *code, *field, *message;
    } bad[] = {
        {"?cursor=garbage", "invalid_cursor", "cursor", "cursor is not one this API returned"},
        {"?cursor=", "invalid_cursor", "cursor", "cursor is not one this API returned"},
        {"?limit=101", "invalid_argument", "limit",
         "limit must be a whole number from 1 to 100, got '101'"},
        {"?limit=0", "invalid_argument", "limit",
         "limit must be a whole number from 1 to 100, got '0'"},
        {"?limit=two", "invalid_argument", "limit",
         "limit must be a whole number from 1 to 100, got 'two'"},
        {"?status=lost", "invalid_argument", "status",
         "status must be one of pending, queued, processing, completed, failed, cancelled"},
        {"?fields=id,password", "invalid_argument", "fields", "unknown field 'password'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(path, sizeof path, S_COMPOSITIONS "%s", bad[i].query);
        inproc_request(&s_fx.api, "GET", path, s_fx.key, NULL, NULL, &r);
        inproc_expect_error(&r, 400, bad[i].code, bad[i].field, bad[i].message);
        inproc_resp_clear(&r);
    }
    s_stop();
}

/* ------------------------------------------------------------ cancel */

static void test_cancel(void **state)
{
    s_start();
    char id[64], upper[64], lower_path[160], upper_path[160];
    s_create(s_fx.key, "to-cancel", id);
    s_upper(id, upper, sizeof upper);
    snprintf(lower_path, sizeof lower_path, S_COMPOSITIONS "/%s", id);
    snprintf(upper_path, sizeof upper_path, S_COMPOSITIONS "/%s", upper);
    /* Read by upper case first: what that read leaves in the caches must
     * be what the cancel drops. */
    inproc_resp_t r;
    inproc_request(&s_fx.api, "GET", upper_path, s_fx.key, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(inproc_str(&r, "status"), "queued");
    int64_t version = json_integer_value(json_object_get(r.json, "version"));
    inproc_resp_clear(&r);

    inproc_request(&s_fx.api, "DELETE", lower_path, s_fx.key, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(inproc_str(&r, "id"), id);
    assert_string_equal(inproc_str(&r, "status"), "cancelled");
    assert_true(json_integer_value(json_object_get(r.json, "version")) > version);
    assert_true(json_is_string(json_object_get(r.json, "finished_at")));
    inproc_resp_clear(&r);

    inproc_request(&s_fx.api, "GET", upper_path, s_fx.key, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(inproc_str(&r, "status"), "cancelled");
    inproc_resp_clear(&r);

    char message[256];
    snprintf(message, sizeof message, "composition %s is already cancelled and cannot be cancelled",
             id);
    inproc_request(&s_fx.api, "DELETE", upper_path, s_fx.key, NULL, NULL, &r);
    inproc_expect_error(&r, 409, "already_terminal", NULL, message);
    inproc_resp_clear(&r);
    inproc_request(&s_fx.api, "DELETE", lower_path, s_fx.key, NULL, NULL, &r);
    inproc_expect_error(&r, 409, "already_terminal", NULL, message);
    inproc_resp_clear(&r);

    inproc_request(&s_fx.api, "DELETE", S_COMPOSITIONS "/00000000-0000-4000-8000-000000000000",
                   s_fx.key, NULL, NULL, &r);
    inproc_expect_error(&r, 404, "not_found", "id",
                        "composition 00000000-0000-4000-8000-000000000000 not found");
    inproc_resp_clear(&r);
    s_stop();
}

/* ------------------------------------------------------------ auth and tenancy */

static void test_auth(void **state)
{
    s_start();
    inproc_resp_t r;
    inproc_request(&s_fx.api, "GET", S_COMPOSITIONS, NULL, NULL, NULL, &r);
    inproc_expect_error(&r, 401, "unauthorized", NULL,
                        "missing API key: send 'Authorization: Bearer KEY'");
    inproc_resp_clear(&r);

    /* Not a key, an unknown key, the right id with a wrong secret, another
     * scheme: the same 401, which says nothing of why. */
    char wrong[CF_APIKEY_TEXT_SIZE];
    snprintf(wrong, sizeof wrong, "%s", s_fx.key);
    wrong[strlen(wrong) - 1] = wrong[strlen(wrong) - 1] == 'A' ? 'B' : 'A';
    const char *bad[] = {"Authorization: Bearer not-a-key\r\n",
                         "Authorization: Bearer "
                         "cf_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n",
                         NULL, "Authorization: Basic dXNlcjpwYXNz\r\n"};
    char wrong_header[128];
    snprintf(wrong_header, sizeof wrong_header, "Authorization: Bearer %s\r\n", wrong);
    bad[2] = wrong_header;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        inproc_request(&s_fx.api, "GET", S_COMPOSITIONS, NULL, bad[i], NULL, &r);
        inproc_expect_error(&r, 401, "unauthorized", NULL, "invalid API key");
        inproc_resp_clear(&r);
    }
    /* The scheme is case-insensitive. */
    char lower_scheme[128];
    snprintf(lower_scheme, sizeof lower_scheme, "Authorization: bearer %s\r\n", s_fx.key);
    inproc_request(&s_fx.api, "GET", S_COMPOSITIONS, NULL, lower_scheme, NULL, &r);
    assert_int_equal(r.status, 200);
    inproc_resp_clear(&r);

    /* A revoked key: 403 (auth cache off would be needed to see it at once;
     * this key was never used, so nothing has it cached). */
    char revoked[CF_APIKEY_TEXT_SIZE], revoked_id[CF_APIKEY_ID_CHARS + 1], err[256];
    inproc_key(&s_fx.api, "revoked", false, revoked, revoked_id);
    assert_int_equal(cf_db_api_key_revoke(s_fx.api.db, revoked_id, err, sizeof err), CF_DB_OK);
    inproc_request(&s_fx.api, "GET", S_COMPOSITIONS, revoked, NULL, NULL, &r);
    inproc_expect_error(&r, 403, "key_revoked", NULL, "this API key has been revoked");
    inproc_resp_clear(&r);

    /* Every refusal is counted; health needs no key. */
    assert_true(s_metric("api_rejected_total{reason=\"auth_failed\"}") == 6);
    inproc_request(&s_fx.api, "GET", "/healthz", NULL, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    inproc_resp_clear(&r);
    s_stop();
}

/* Another key's composition does not exist for a caller: every route
 * answers 404 with the body an unknown id gets (README, Security: "never
 * 403: nothing says it exists"); an admin key sees everyone's. */
static void test_tenancy(void **state)
{
    s_start();
    char other[CF_APIKEY_TEXT_SIZE], admin[CF_APIKEY_TEXT_SIZE];
    inproc_key(&s_fx.api, "other", false, other, NULL);
    inproc_key(&s_fx.api, "admin", true, admin, NULL);
    char mine[64], theirs[64];
    s_create(s_fx.key, "mine", mine);
    s_create(other, "theirs", theirs);

    static const struct {
        const char *method, *suffix;
    } routes[] = {
        {"GET", ""}, {"DELETE", ""}, {"GET", "/segments"}, {"GET", "/output"}, {"GET", "/events"}};
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        char path[160], upper[64], message[128];
        snprintf(path, sizeof path, S_COMPOSITIONS "/%s%s", mine, routes[i].suffix);
        snprintf(message, sizeof message, "composition %s not found", mine);
        inproc_resp_t r;
        inproc_request(&s_fx.api, routes[i].method, path, other, NULL, NULL, &r);
        inproc_expect_error(&r, 404, "not_found", "id", message);
        inproc_resp_clear(&r);
        s_upper(mine, upper, sizeof upper);
        snprintf(path, sizeof path, S_COMPOSITIONS "/%s%s", upper, routes[i].suffix);
        inproc_request(&s_fx.api, routes[i].method, path, other, NULL, NULL, &r);
        inproc_expect_error(&r, 404, "not_found", "id", message);
        inproc_resp_clear(&r);
    }
    /* The other key's DELETE changed nothing. */
    char path[160], ids[4][64], cursor[512];
    snprintf(path, sizeof path, S_COMPOSITIONS "/%s", mine);
    inproc_resp_t r;
    inproc_request(&s_fx.api, "GET", path, s_fx.key, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(inproc_str(&r, "status"), "queued");
    inproc_resp_clear(&r);

    /* Each key lists its own; the admin lists both and reads either. */
    assert_int_equal(s_list("", ids, 4, cursor, sizeof cursor), 1);
    assert_string_equal(ids[0], mine);
    inproc_request(&s_fx.api, "GET", S_COMPOSITIONS, admin, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    json_t *items = json_object_get(r.json, "items");
    assert_int_equal(json_array_size(items), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(items, 0), "id")), theirs);
    assert_string_equal(json_string_value(json_object_get(json_array_get(items, 1), "id")), mine);
    inproc_resp_clear(&r);
    inproc_request(&s_fx.api, "GET", path, admin, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(inproc_str(&r, "id"), mine);
    inproc_resp_clear(&r);
    snprintf(path, sizeof path, S_COMPOSITIONS "/%s", theirs);
    inproc_request(&s_fx.api, "GET", path, s_fx.key, NULL, NULL, &r);
    char message[128];
    snprintf(message, sizeof message, "composition %s not found", theirs);
    inproc_expect_error(&r, 404, "not_found", "id", message);
    inproc_resp_clear(&r);
    /* The admin may cancel anyone's. */
    inproc_request(&s_fx.api, "DELETE", path, admin, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(inproc_str(&r, "status"), "cancelled");
    inproc_resp_clear(&r);
    s_stop();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_health_ready_metrics, s_teardown),
        cmocka_unit_test_teardown(test_routing_errors, s_teardown),
        cmocka_unit_test_teardown(test_submit_valid, s_teardown),
        cmocka_unit_test_teardown(test_submit_invalid, s_teardown),
        cmocka_unit_test_teardown(test_submit_idempotency, s_teardown),
        cmocka_unit_test_teardown(test_get_any_letter_case, s_teardown),
        cmocka_unit_test_teardown(test_list_with_cursor, s_teardown),
        cmocka_unit_test_teardown(test_cancel, s_teardown),
        cmocka_unit_test_teardown(test_auth, s_teardown),
        cmocka_unit_test_teardown(test_tenancy, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
