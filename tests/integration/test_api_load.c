/* 8 clients x 500 mixed requests against a real node: creates (some racing
 * on one Idempotency-Key), reads, lists, segments, cancels, cluster, health
 * and metrics. Every request must succeed, and afterwards every composition
 * a client was told about must exist in the state it should be in, and be
 * in the intake queue when queued: nothing lost, nothing duplicated. */
#include "api_testnode.h"
#include "cf_redis.h"

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>

#define S_CLIENTS  8
#define S_REQUESTS 500
#define S_MAX_IDS  S_REQUESTS

static api_testnode_t s_node;
static const char s_body_fmt[] =
    "{\"title\":\"load "
    "%d-%d\",\"priority\":\"%s\",\"clips\":[{\"source\":\"file:///media/none.mp4\"}],"
    "\"output\":{\"width\":160,\"height\":90,\"fps\":25,\"preset\":\"fast\"}}";
static const char s_shared_body[] =
    "{\"title\":\"shared\",\"clips\":[{\"source\":\"file:///media/none.mp4\"}]}";

typedef struct {
    int index;
    int requests, errors;
    char first_error[1024];
    char ids[S_MAX_IDS][40];
    bool cancelled[S_MAX_IDS];
    int id_count;
    char shared_id[40];
} s_client_t;

static void s_error(s_client_t *c, const char *what, const cf_httpc_response_t *resp,
                    const char *err)
{
    if (c->errors++ == 0) {
        char line[300] = "";
        if (resp)
            cf_httpc_error_line(resp, line, sizeof line);
        snprintf(c->first_error, sizeof c->first_error, "client %d, %s: %s", c->index, what,
                 resp ? line : err);
    }
}

/* One request; counts it and any failure. Returns the parsed JSON body of
 * a JSON answer (caller decrefs) or NULL. */
static json_t *s_call(s_client_t *c, cf_httpc_t *http, const char *method, const char *path,
                      const char *const *headers, const char *body, long want)
{
    cf_httpc_response_t resp;
    char err[512];
    c->requests++;
    int rc = cf_httpc_request(http, method, path, headers, body ? "application/json" : NULL, body,
                              body ? strlen(body) : 0, &resp, err, sizeof err);
    json_t *json = NULL;
    if (rc < 0)
        s_error(c, path, NULL, err);
    else if (resp.status != want)
        s_error(c, path, &resp, NULL);
    else if (!strncmp(resp.content_type, "application/json", 16))
        json = json_loads(resp.body, 0, NULL);
    cf_httpc_response_clear(&resp);
    return json;
}

static void *s_client_main(void *arg)
{
    s_client_t *c = arg;
    char err[256], path[256], body[512];
    cf_httpc_t *http = cf_httpc_new(s_node.url, s_node.key, 5000, 30, err, sizeof err);
    unsigned seed = (unsigned)c->index * 7919u + 1;
    static const char *const priorities[] = {"high", "default", "low"};
    for (int i = 0; i < S_REQUESTS; i++) {
        int kind = i % 10;
        if (c->id_count == 0)
            kind = 0; /* the first request makes something to read */
        json_t *json = NULL;
        if (kind == 0 && i % 50 == 20) {
            /* Every client races on the same key with the same body. */
            const char *headers[] = {"Idempotency-Key: load-shared", NULL};
            json = s_call(c, http, "POST", "/api/v1/compositions", headers, s_shared_body, 202);
            const char *id = json_string_value(json_object_get(json, "id"));
            if (id && c->shared_id[0] && strcmp(id, c->shared_id))
                s_error(c, "shared key gave two ids", NULL, id);
            if (id)
                snprintf(c->shared_id, sizeof c->shared_id, "%s", id);
        } else if (kind == 0 || kind == 9) {
            snprintf(body, sizeof body, s_body_fmt, c->index, i, priorities[i % 3]);
            json = s_call(c, http, "POST", "/api/v1/compositions", NULL, body, 202);
            const char *id = json_string_value(json_object_get(json, "id"));
            if (id && c->id_count < S_MAX_IDS)
                snprintf(c->ids[c->id_count++], sizeof c->ids[0], "%s", id);
        } else if (kind <= 3) {
            int pick = (int)(rand_r(&seed) % (unsigned)c->id_count);
            snprintf(path, sizeof path, "/api/v1/compositions/%s", c->ids[pick]);
            json = s_call(c, http, "GET", path, NULL, NULL, 200);
            if (json && strcmp(json_string_value(json_object_get(json, "id")), c->ids[pick]))
                s_error(c, "GET returned another composition", NULL, path);
        } else if (kind == 4) {
            json = s_call(c, http, "GET",
                          i % 20 == 4 ? "/api/v1/compositions?status=queued&limit=20"
                                      : "/api/v1/compositions?limit=50&fields=id,status",
                          NULL, NULL, 200);
        } else if (kind == 5) {
            snprintf(path, sizeof path, "/api/v1/compositions/%s/segments", c->ids[0]);
            json = s_call(c, http, "GET", path, NULL, NULL, 200);
        } else if (kind == 6) {
            json = s_call(c, http, "GET", "/api/v1/cluster", NULL, NULL, 200);
        } else if (kind == 7) {
            json = s_call(c, http, "GET", i % 20 == 7 ? "/metrics" : "/healthz", NULL, NULL, 200);
        } else if (kind == 8) {
            /* Cancel the newest composition not cancelled yet. */
            int pick = c->id_count - 1;
            if (!c->cancelled[pick]) {
                snprintf(path, sizeof path, "/api/v1/compositions/%s", c->ids[pick]);
                json = s_call(c, http, "DELETE", path, NULL, NULL, 200);
                c->cancelled[pick] = true;
            } else {
                json = s_call(c, http, "GET", "/readyz", NULL, NULL, 200);
            }
        }
        json_decref(json);
    }
    cf_httpc_destroy(&http);
    return NULL;
}

static void test_mixed_load(void **state)
{
    s_client_t *clients = calloc(S_CLIENTS, sizeof *clients);
    pthread_t threads[S_CLIENTS];
    double t0 = api_now();
    for (int i = 0; i < S_CLIENTS; i++) {
        clients[i].index = i;
        assert_int_equal(pthread_create(&threads[i], NULL, s_client_main, &clients[i]), 0);
    }
    int requests = 0, errors = 0, created = 0, cancelled = 0;
    for (int i = 0; i < S_CLIENTS; i++) {
        pthread_join(threads[i], NULL);
        requests += clients[i].requests;
        errors += clients[i].errors;
        created += clients[i].id_count;
        for (int k = 0; k < clients[i].id_count; k++)
            cancelled += clients[i].cancelled[k];
    }
    double took = api_now() - t0;
    printf("%d requests in %.1f s (%.0f/s), %d errors, %d created, %d cancelled\n", requests, took,
           requests / took, errors, created, cancelled);
    for (int i = 0; i < S_CLIENTS && errors; i++)
        if (clients[i].errors)
            fail_msg("%d errors; first: %s", errors, clients[i].first_error);
    assert_int_equal(requests, S_CLIENTS * S_REQUESTS);

    /* Every client that raced on the shared key got the same composition. */
    for (int i = 1; i < S_CLIENTS; i++)
        assert_string_equal(clients[i].shared_id, clients[0].shared_id);

    /* Nothing lost: every id exists in the state its client left it in. */
    char err[256], path[256];
    cf_httpc_t *http = cf_httpc_new(s_node.url, s_node.key, 5000, 30, err, sizeof err);
    cf_httpc_response_t resp;
    for (int i = 0; i < S_CLIENTS; i++)
        for (int k = 0; k < clients[i].id_count; k++) {
            snprintf(path, sizeof path, "/api/v1/compositions/%s", clients[i].ids[k]);
            assert_int_equal(
                cf_httpc_request(http, "GET", path, NULL, NULL, NULL, 0, &resp, err, sizeof err),
                0);
            assert_int_equal(resp.status, 200);
            json_t *comp = json_loads(resp.body, 0, NULL);
            const char *status = json_string_value(json_object_get(comp, "status"));
            assert_string_equal(status, clients[i].cancelled[k] ? "cancelled" : "queued");
            json_decref(comp);
            cf_httpc_response_clear(&resp);
        }
    /* The list agrees (paged with the cursor), counting the shared one. */
    int listed_queued = 0;
    char *cursor = NULL;
    do {
        if (cursor)
            snprintf(path, sizeof path, "/api/v1/compositions?status=queued&limit=100&cursor=%s",
                     cursor);
        else
            snprintf(path, sizeof path, "/api/v1/compositions?status=queued&limit=100");
        free(cursor);
        cursor = NULL;
        assert_int_equal(
            cf_httpc_request(http, "GET", path, NULL, NULL, NULL, 0, &resp, err, sizeof err), 0);
        assert_int_equal(resp.status, 200);
        json_t *page = json_loads(resp.body, 0, NULL);
        listed_queued += (int)json_array_size(json_object_get(page, "items"));
        const char *next = json_string_value(json_object_get(page, "next_cursor"));
        if (next) {
            /* The cursor is opaque: escape it for the query string. */
            char *escaped = curl_easy_escape(NULL, next, 0);
            cursor = strdup(escaped);
            curl_free(escaped);
        }
        json_decref(page);
        cf_httpc_response_clear(&resp);
    } while (cursor);
    assert_int_equal(listed_queued, created - cancelled + 1);
    /* And every queued composition is waiting in the intake queue: the
     * depth per priority adds up (no render runs on this node). */
    assert_int_equal(cf_httpc_request(http, "GET", "/api/v1/cluster", NULL, NULL, NULL, 0, &resp,
                                      err, sizeof err),
                     0);
    json_t *cluster = json_loads(resp.body, 0, NULL);
    json_t *depth = json_object_get(cluster, "queue_depth");
    json_int_t queued = json_integer_value(json_object_get(depth, "high")) +
                        json_integer_value(json_object_get(depth, "default")) +
                        json_integer_value(json_object_get(depth, "low"));
    /* Cancelled ones may still sit in the queue until a consumer drops them,
     * and the coordinator's reconcile (this node coordinates: it is the only
     * one) may push a composition the API was about to push itself: a
     * duplicate the consumer drops. Lost ones are what must not happen. */
    if (!(queued >= created - cancelled + 1 && queued <= 2 * (created + 1)))
        fail_msg("queue depth %lld: expected %d to %d", (long long)queued, created - cancelled + 1,
                 2 * (created + 1));
    json_decref(cluster);
    cf_httpc_response_clear(&resp);
    cf_httpc_destroy(&http);

    /* The same, judged by Postgres and Redis themselves, not through the API
     * and its caches: exactly the compositions the clients were told about
     * (plus the shared one), each in its state; every queued one on an
     * intake list in Redis. */
    PGconn *pg = cf_db_connect(s_node.db_url, 10, err, sizeof err);
    if (!pg)
        fail_msg("postgres: %s", err);
    PGresult *res = PQexec(pg, "SELECT id::text, status FROM compositions");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(res), created + 1);
    redisContext *redis =
        cf_redis_connect(cf_test_require_env("CF_TEST_REDIS_URL"), 5000, err, sizeof err);
    if (!redis)
        fail_msg("redis: %s", err);
    int in_redis_total = 0;
    /* Every intake list, read with one Lua call: no consumer runs here. */
    redisReply *items = redisCommand(
        redis, "EVAL %s 3 %sq:high %sq:default %sq:low",
        "local all = {} for _, k in ipairs(KEYS) do for _, v in ipairs(redis.call('LRANGE', k, 0, "
        "-1)) do all[#all + 1] = v end end return all",
        s_node.prefix, s_node.prefix, s_node.prefix);
    assert_non_null(items);
    assert_int_equal(items->type, REDIS_REPLY_ARRAY);
    for (int i = 0; i < S_CLIENTS; i++)
        for (int k = 0; k < clients[i].id_count; k++) {
            const char *id = clients[i].ids[k],
                       *want = clients[i].cancelled[k] ? "cancelled" : "queued";
            int row = -1;
            for (int r = 0; r < PQntuples(res) && row < 0; r++)
                if (!strcmp(PQgetvalue(res, r, 0), id))
                    row = r;
            if (row < 0)
                fail_msg("%s is not in Postgres", id);
            if (strcmp(PQgetvalue(res, row, 1), want))
                fail_msg("%s is %s in Postgres, expected %s", id, PQgetvalue(res, row, 1), want);
            if (clients[i].cancelled[k])
                continue;
            /* An item is the id behind a one-letter priority tag. */
            int in_redis = 0;
            for (size_t e = 0; e < items->elements; e++)
                in_redis += strstr(items->element[e]->str, id) != NULL;
            if (in_redis != 1)
                fail_msg("queued %s is %d times on the intake lists", id, in_redis);
            in_redis_total++;
        }
    printf("Postgres holds %d compositions; %d queued ones each once in Redis\n", PQntuples(res),
           in_redis_total);
    freeReplyObject(items);
    redisFree(redis);
    PQclear(res);
    PQfinish(pg);
    free(clients);
}

static int s_setup(void **state)
{
    /* Rate limiting stays on (every request goes through Redis) with room
     * for this many requests. */
    const char *extra[] = {"--no-render", "--rate-limit", "100000", "--rate-burst", "100000", NULL};
    api_testnode_start(&s_node, extra);
    return 0;
}

/* The node leaves cleanly after the load: exit 0 on SIGTERM, no sanitizer
 * report. A test of its own (not the group teardown, whose failures cmocka
 * does not count), run even when the one before failed. */
static void test_node_stops_cleanly(void **state)
{
    api_testnode_stop(&s_node);
}

static int s_teardown(void **state)
{
    api_testnode_cleanup(&s_node);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixed_load),
        cmocka_unit_test(test_node_stops_cleanly),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
