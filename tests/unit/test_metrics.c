/* Unit tests for lib/core/cf_metrics.c: series, escaping, histograms, hooks,
 * concurrent updates and the text exposition format. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_metrics.h"
#include "cf_testutil.h"

static void test_counter_and_gauge(void **state)
{
    char err[256];
    cf_metrics_t *reg = cf_metrics_new();
    assert_non_null(reg);
    cf_metric_t *requests =
        cf_metrics_add(reg, CF_METRIC_COUNTER, "http_requests_total", "Requests served.",
                       "method,route,status", NULL, 0, err, sizeof err);
    assert_non_null(requests);
    cf_metric_t *active = cf_metrics_add(reg, CF_METRIC_GAUGE, "active_segments",
                                         "Segments encoding now.", NULL, NULL, 0, err, sizeof err);
    assert_non_null(active);

    const char *get_ok[] = {"GET", "/healthz", "200"};
    const char *post_bad[] = {"POST", "/api/v1/compositions", "422"};
    cf_metric_inc(requests, get_ok, 1);
    cf_metric_inc(requests, get_ok, 2);
    cf_metric_inc(requests, post_bad, 1);
    cf_metric_inc(requests, post_bad, -5); /* counters never go down */
    assert_true(cf_metric_value(requests, get_ok) == 3);
    assert_true(cf_metric_value(requests, post_bad) == 1);
    cf_metric_set(active, NULL, 4);
    cf_metric_inc(active, NULL, -1); /* gauges do */
    assert_true(cf_metric_value(active, NULL) == 3);

    size_t len = 0;
    char *text = cf_metrics_render(reg, &len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    assert_string_equal(text,
                        "# HELP http_requests_total Requests served.\n"
                        "# TYPE http_requests_total counter\n"
                        "http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 3\n"
                        "http_requests_total{method=\"POST\",route=\"/api/v1/compositions\","
                        "status=\"422\"} 1\n"
                        "# HELP active_segments Segments encoding now.\n"
                        "# TYPE active_segments gauge\n"
                        "active_segments 3\n");
    free(text);
    cf_metric_reset(requests);
    assert_true(cf_metric_value(requests, get_ok) == 0);
    cf_metrics_destroy(&reg);
    assert_null(reg);
    cf_metrics_destroy(&reg); /* safe on NULL */
}

static void test_escaping(void **state)
{
    char err[256];
    cf_metrics_t *reg = cf_metrics_new();
    cf_metric_t *m = cf_metrics_add(reg, CF_METRIC_GAUGE, "node_encode_fps",
                                    "Line one\nback\\slash", "encoder", NULL, 0, err, sizeof err);
    const char *odd[] = {"x\"y\\z\nw"};
    cf_metric_set(m, odd, 1.5);
    char *text = cf_metrics_render(reg, NULL);
    assert_non_null(strstr(text, "# HELP node_encode_fps Line one\\nback\\\\slash\n"));
    assert_non_null(strstr(text, "node_encode_fps{encoder=\"x\\\"y\\\\z\\nw\"} 1.5\n"));
    free(text);
    cf_metrics_destroy(&reg);
}

static void test_histogram(void **state)
{
    char err[256];
    cf_metrics_t *reg = cf_metrics_new();
    const double buckets[] = {0.1, 1, 10};
    cf_metric_t *h = cf_metrics_add(reg, CF_METRIC_HISTOGRAM, "segment_encode_seconds",
                                    "Encode time.", "encoder", buckets, 3, err, sizeof err);
    assert_non_null(h);
    const char *x264[] = {"libx264"};
    cf_metric_observe(h, x264, 0.05);
    cf_metric_observe(h, x264, 0.1); /* le is inclusive */
    cf_metric_observe(h, x264, 5);
    cf_metric_observe(h, x264, 50);
    assert_true(cf_metric_value(h, x264) == 4);
    char *text = cf_metrics_render(reg, NULL);
    assert_non_null(strstr(text,
                           "# TYPE segment_encode_seconds histogram\n"
                           "segment_encode_seconds_bucket{encoder=\"libx264\",le=\"0.1\"} 2\n"
                           "segment_encode_seconds_bucket{encoder=\"libx264\",le=\"1\"} 2\n"
                           "segment_encode_seconds_bucket{encoder=\"libx264\",le=\"10\"} 3\n"
                           "segment_encode_seconds_bucket{encoder=\"libx264\",le=\"+Inf\"} 4\n"
                           "segment_encode_seconds_sum{encoder=\"libx264\"} 55.149999999999999\n"
                           "segment_encode_seconds_count{encoder=\"libx264\"} 4\n"));
    free(text);
    cf_metrics_destroy(&reg);
}

static void test_invalid_declarations(void **state)
{
    char err[256];
    cf_metrics_t *reg = cf_metrics_new();
    assert_null(
        cf_metrics_add(reg, CF_METRIC_COUNTER, "9lives", "", NULL, NULL, 0, err, sizeof err));
    assert_string_equal(err, "invalid metric name '9lives'");
    assert_null(cf_metrics_add(reg, CF_METRIC_COUNTER, "a_total", "", "ok,bad-label", NULL, 0, err,
                               sizeof err));
    assert_null(cf_metrics_add(reg, CF_METRIC_HISTOGRAM, "h", "", NULL, NULL, 0, err, sizeof err));
    assert_string_equal(err, "h: a histogram needs buckets");
    const double down[] = {1, 0.5};
    assert_null(cf_metrics_add(reg, CF_METRIC_HISTOGRAM, "h", "", NULL, down, 2, err, sizeof err));
    assert_null(cf_metrics_add(reg, CF_METRIC_HISTOGRAM, "h", "", "le", cf_metrics_latency_buckets,
                               cf_metrics_latency_bucket_count, err, sizeof err));
    assert_non_null(cf_metrics_add(reg, CF_METRIC_GAUGE, "g", "", NULL, NULL, 0, err, sizeof err));
    assert_null(cf_metrics_add(reg, CF_METRIC_GAUGE, "g", "", NULL, NULL, 0, err, sizeof err));
    assert_string_equal(err, "metric 'g' is already registered");
    /* NULL metrics are ignored, so optional metrics need no checks. */
    cf_metric_inc(NULL, NULL, 1);
    cf_metric_observe(NULL, NULL, 1);
    cf_metrics_destroy(&reg);
}

typedef struct {
    cf_metric_t *counter;
    cf_metric_t *histogram;
} s_threads_arg_t;

static void *s_hammer(void *arg)
{
    s_threads_arg_t *a = arg;
    char status[8];
    for (int i = 0; i < 20000; i++) {
        snprintf(status, sizeof status, "%d", 200 + i % 5);
        const char *labels[] = {"GET", "/x", status};
        cf_metric_inc(a->counter, labels, 1);
        cf_metric_observe(a->histogram, labels, 0.001 * (i % 100));
    }
    return NULL;
}

static void test_concurrent_updates(void **state)
{
    char err[256];
    cf_metrics_t *reg = cf_metrics_new();
    s_threads_arg_t arg = {
        cf_metrics_add(reg, CF_METRIC_COUNTER, "c_total", "", "method,route,status", NULL, 0, err,
                       sizeof err),
        cf_metrics_add(reg, CF_METRIC_HISTOGRAM, "d_seconds", "", "method,route,status",
                       cf_metrics_latency_buckets, cf_metrics_latency_bucket_count, err,
                       sizeof err),
    };
    pthread_t threads[4];
    for (int t = 0; t < 4; t++)
        assert_int_equal(pthread_create(&threads[t], NULL, s_hammer, &arg), 0);
    for (int t = 0; t < 4; t++) {
        char *text = cf_metrics_render(reg, NULL); /* rendering while others write */
        assert_non_null(text);
        free(text);
    }
    for (int t = 0; t < 4; t++)
        pthread_join(threads[t], NULL);
    double total = 0, observed = 0;
    for (int s = 200; s < 205; s++) {
        char status[8];
        snprintf(status, sizeof status, "%d", s);
        const char *labels[] = {"GET", "/x", status};
        total += cf_metric_value(arg.counter, labels);
        observed += cf_metric_value(arg.histogram, labels);
    }
    assert_true(total == 4 * 20000);
    assert_true(observed == 4 * 20000);
    cf_metrics_destroy(&reg);
}

static void s_collect(void *arg)
{
    cf_metric_t *depth = arg;
    static int calls;
    calls++;
    const char *high[] = {"high"};
    cf_metric_set(depth, high, calls * 10);
}

static void test_collect_hook(void **state)
{
    char err[256];
    cf_metrics_t *reg = cf_metrics_new();
    cf_metric_t *depth = cf_metrics_add(reg, CF_METRIC_GAUGE, "queue_depth", "Queued.", "priority",
                                        NULL, 0, err, sizeof err);
    assert_int_equal(cf_metrics_on_collect(reg, s_collect, depth), 0);
    char *text = cf_metrics_render(reg, NULL);
    assert_non_null(strstr(text, "queue_depth{priority=\"high\"} 10\n"));
    free(text);
    text = cf_metrics_render(reg, NULL);
    assert_non_null(strstr(text, "queue_depth{priority=\"high\"} 20\n"));
    free(text);
    cf_metrics_remove_collect(reg, s_collect, depth);
    text = cf_metrics_render(reg, NULL);
    assert_non_null(strstr(text, "queue_depth{priority=\"high\"} 20\n")); /* not called */
    free(text);
    cf_metrics_destroy(&reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_and_gauge),  cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_histogram),          cmocka_unit_test(test_invalid_declarations),
        cmocka_unit_test(test_concurrent_updates), cmocka_unit_test(test_collect_hook),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
