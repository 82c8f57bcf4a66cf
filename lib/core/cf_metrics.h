/* cf_metrics: a Prometheus registry. Counters, gauges and histograms with
 * labels, updated from any thread, written in the Prometheus text exposition
 * format (version 0.0.4).
 *
 * A metric is declared once with its label names; each distinct tuple of
 * label values is a series, created on first use. Values passed for labels
 * are copied. Collect hooks run just before the registry is rendered, so
 * values that are cheaper to read than to track (queue depth, counts in the
 * database) are refreshed only when someone scrapes. */
#ifndef CF_METRICS_H
#define CF_METRICS_H

#include <stddef.h>

typedef struct cf_metrics_t cf_metrics_t;
typedef struct cf_metric_t cf_metric_t;

typedef enum { CF_METRIC_COUNTER, CF_METRIC_GAUGE, CF_METRIC_HISTOGRAM } cf_metric_kind_t;

/* Most labels any metric may have. */
#define CF_METRICS_MAX_LABELS 4

/* Buckets (seconds) for request latencies and for encode times. */
extern const double cf_metrics_latency_buckets[];
extern const size_t cf_metrics_latency_bucket_count;
extern const double cf_metrics_encode_buckets[];
extern const size_t cf_metrics_encode_bucket_count;

/* Creates an empty registry. Returns NULL when out of memory. */
cf_metrics_t *cf_metrics_new(void);

/* Frees the registry and every metric in it; safe on NULL; NULLs *self_p. */
void cf_metrics_destroy(cf_metrics_t **self_p);

/* Declares a metric. NAME must match [a-zA-Z_:][a-zA-Z0-9_:]*; LABELS is a
 * comma-separated list of label names ("method,route,status") or NULL. For
 * histograms BUCKETS holds bucket_count increasing upper bounds (+Inf is
 * implied). Returns the metric, owned by the registry, or NULL with a reason
 * in err when the name or labels are invalid or the name is taken. */
cf_metric_t *cf_metrics_add(cf_metrics_t *self, cf_metric_kind_t kind, const char *name,
                            const char *help, const char *labels, const double *buckets,
                            size_t bucket_count, char *err, size_t errlen);

/* Series updates. VALUES holds one label value per declared label (NULL when
 * the metric has none). A NULL metric is ignored, so optional metrics need
 * no checks at the call site. Counters only grow: a negative delta to
 * cf_metric_inc is ignored. */
void cf_metric_inc(cf_metric_t *metric, const char *const *values, double delta);
void cf_metric_set(cf_metric_t *metric, const char *const *values, double value);
void cf_metric_observe(cf_metric_t *metric, const char *const *values, double value);

/* Drops every series of METRIC (for gauges rebuilt on each collect, e.g.
 * per-encoder values of nodes that left). */
void cf_metric_reset(cf_metric_t *metric);

/* Reads a series' value (counter or gauge) or a histogram's count; 0 when the
 * series does not exist. For tests and for the status page. */
double cf_metric_value(cf_metric_t *metric, const char *const *values);

/* Registers FN(arg) to run before each render, in registration order. */
typedef void(cf_metrics_collect_fn)(void *arg);
int cf_metrics_on_collect(cf_metrics_t *self, cf_metrics_collect_fn *fn, void *arg);

/* Removes the hook registered with FN and ARG (before ARG is freed). */
void cf_metrics_remove_collect(cf_metrics_t *self, cf_metrics_collect_fn *fn, void *arg);

/* Runs the collect hooks and writes every metric in the text format into a
 * new NUL-terminated buffer (*len_out gets its length when not NULL).
 * Returns the buffer (caller frees) or NULL when out of memory. */
char *cf_metrics_render(cf_metrics_t *self, size_t *len_out);

#endif
