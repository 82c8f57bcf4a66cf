#define _GNU_SOURCE
#include "cf_metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double cf_metrics_latency_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                             0.1,    0.25,  0.5,    1,     2.5,  5,     10};
const size_t cf_metrics_latency_bucket_count =
    sizeof cf_metrics_latency_buckets / sizeof cf_metrics_latency_buckets[0];
const double cf_metrics_encode_buckets[] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
const size_t cf_metrics_encode_bucket_count =
    sizeof cf_metrics_encode_buckets / sizeof cf_metrics_encode_buckets[0];

/* Values are atomics so that updates need only the metric's read lock:
 * request threads never wait for one another to count (no lock convoys on
 * the hot path); the write lock is taken to add a series or drop them all. */
typedef struct s_series_t {
    struct s_series_t *next;
    uint64_t hash;
    char *values[CF_METRICS_MAX_LABELS];
    _Atomic uint64_t value_bits; /* double: counter/gauge value, histogram sum */
    _Atomic uint64_t count;
    _Atomic uint64_t *buckets; /* histogram: per-bucket (not cumulative) counts */
} s_series_t;

struct cf_metric_t {
    struct cf_metric_t *next;
    cf_metric_kind_t kind;
    char *name;
    char *help;
    char *labels[CF_METRICS_MAX_LABELS];
    size_t label_count;
    double *bounds;
    size_t bound_count;
    pthread_rwlock_t lock; /* read: find a series and update it; write: add, reset */
    s_series_t *series;
};

typedef struct s_hook_t {
    struct s_hook_t *next;
    cf_metrics_collect_fn *fn;
    void *arg;
} s_hook_t;

struct cf_metrics_t {
    pthread_mutex_t lock; /* guards the metric and hook lists */
    cf_metric_t *metrics, *last_metric;
    s_hook_t *hooks, *last_hook;
};

cf_metrics_t *cf_metrics_new(void)
{
    cf_metrics_t *self = calloc(1, sizeof *self);
    if (self)
        pthread_mutex_init(&self->lock, NULL);
    return self;
}

static void s_series_free(s_series_t *series)
{
    while (series) {
        s_series_t *next = series->next;
        for (size_t i = 0; i < CF_METRICS_MAX_LABELS; i++)
            free(series->values[i]);
        free(series->buckets);
        free(series);
        series = next;
    }
}

static void s_metric_free(cf_metric_t *metric)
{
    s_series_free(metric->series);
    for (size_t i = 0; i < metric->label_count; i++)
        free(metric->labels[i]);
    free(metric->name);
    free(metric->help);
    free(metric->bounds);
    pthread_rwlock_destroy(&metric->lock);
    free(metric);
}

void cf_metrics_destroy(cf_metrics_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_metrics_t *self = *self_p;
    for (cf_metric_t *m = self->metrics, *next; m; m = next) {
        next = m->next;
        s_metric_free(m);
    }
    for (s_hook_t *h = self->hooks, *next; h; h = next) {
        next = h->next;
        free(h);
    }
    pthread_mutex_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}

static int s_valid_name(const char *name, size_t len, int allow_colon)
{
    if (len == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        int ok = c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 (allow_colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

cf_metric_t *cf_metrics_add(cf_metrics_t *self, cf_metric_kind_t kind, const char *name,
                            const char *help, const char *labels, const double *buckets,
                            size_t bucket_count, char *err, size_t errlen)
{
    if (!name || !s_valid_name(name, strlen(name), 1)) {
        snprintf(err, errlen, "invalid metric name '%s'", name ? name : "(null)");
        return NULL;
    }
    if (kind == CF_METRIC_HISTOGRAM) {
        if (!buckets || bucket_count == 0) {
            snprintf(err, errlen, "%s: a histogram needs buckets", name);
            return NULL;
        }
        for (size_t i = 1; i < bucket_count; i++)
            if (!(buckets[i] > buckets[i - 1])) {
                snprintf(err, errlen, "%s: buckets must increase", name);
                return NULL;
            }
    }
    cf_metric_t *metric = calloc(1, sizeof *metric);
    if (!metric) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    /* A new series (a first 404, say) must not wait behind a stream of readers. */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&metric->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    metric->kind = kind;
    metric->name = strdup(name);
    metric->help = strdup(help ? help : "");
    for (const char *p = labels; p && *p;) {
        size_t len = strcspn(p, ",");
        if (metric->label_count == CF_METRICS_MAX_LABELS || !s_valid_name(p, len, 0) ||
            (len == 2 && !strncmp(p, "le", 2) && kind == CF_METRIC_HISTOGRAM)) {
            snprintf(err, errlen, "%s: invalid or too many labels '%s'", name, labels);
            s_metric_free(metric);
            return NULL;
        }
        metric->labels[metric->label_count++] = strndup(p, len);
        p += len;
        if (*p == ',')
            p++;
    }
    if (kind == CF_METRIC_HISTOGRAM) {
        metric->bounds = malloc(bucket_count * sizeof(double));
        if (metric->bounds)
            memcpy(metric->bounds, buckets, bucket_count * sizeof(double));
        metric->bound_count = bucket_count;
    }
    if (!metric->name || !metric->help || (kind == CF_METRIC_HISTOGRAM && !metric->bounds)) {
        snprintf(err, errlen, "out of memory");
        s_metric_free(metric);
        return NULL;
    }
    pthread_mutex_lock(&self->lock);
    for (cf_metric_t *m = self->metrics; m; m = m->next)
        if (!strcmp(m->name, name)) {
            pthread_mutex_unlock(&self->lock);
            snprintf(err, errlen, "metric '%s' is already registered", name);
            s_metric_free(metric);
            return NULL;
        }
    if (self->last_metric)
        self->last_metric->next = metric;
    else
        self->metrics = metric;
    self->last_metric = metric;
    pthread_mutex_unlock(&self->lock);
    return metric;
}

static uint64_t s_hash_values(const cf_metric_t *metric, const char *const *values)
{
    uint64_t hash = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < metric->label_count; i++) {
        for (const char *p = values[i] ? values[i] : ""; *p; p++)
            hash = (hash ^ (unsigned char)*p) * 1099511628211ULL;
        hash = (hash ^ 0xff) * 1099511628211ULL; /* separator: ("a","bc") != ("ab","c") */
    }
    return hash;
}

static double s_load(const _Atomic uint64_t *bits)
{
    uint64_t raw = atomic_load_explicit(bits, memory_order_relaxed);
    double value;
    memcpy(&value, &raw, sizeof value);
    return value;
}

static void s_store(_Atomic uint64_t *bits, double value)
{
    uint64_t raw;
    memcpy(&raw, &value, sizeof raw);
    atomic_store_explicit(bits, raw, memory_order_relaxed);
}

static void s_add(_Atomic uint64_t *bits, double delta)
{
    uint64_t old = atomic_load_explicit(bits, memory_order_relaxed), next;
    do {
        double value;
        memcpy(&value, &old, sizeof value);
        value += delta;
        memcpy(&next, &value, sizeof next);
    } while (!atomic_compare_exchange_weak_explicit(bits, &old, next, memory_order_relaxed,
                                                    memory_order_relaxed));
}

/* Finds or creates the series for VALUES; call with metric->lock held (for
 * writing when CREATE). Returns NULL when absent (not CREATE) or out of
 * memory (the update is then dropped). */
static s_series_t *s_series_get(cf_metric_t *metric, const char *const *values, int create)
{
    uint64_t hash = s_hash_values(metric, values);
    for (s_series_t *s = metric->series; s; s = s->next) {
        if (s->hash != hash)
            continue;
        size_t i = 0;
        while (i < metric->label_count && !strcmp(s->values[i], values[i] ? values[i] : ""))
            i++;
        if (i == metric->label_count)
            return s;
    }
    if (!create)
        return NULL;
    s_series_t *series = calloc(1, sizeof *series);
    if (!series)
        return NULL;
    series->hash = hash;
    for (size_t i = 0; i < metric->label_count; i++)
        if (!(series->values[i] = strdup(values[i] ? values[i] : ""))) {
            s_series_free(series);
            return NULL;
        }
    if (metric->kind == CF_METRIC_HISTOGRAM &&
        !(series->buckets = calloc(metric->bound_count, sizeof(_Atomic uint64_t)))) {
        s_series_free(series);
        return NULL;
    }
    /* Appended, so the exposition lists series in order of first use. */
    s_series_t **tail = &metric->series;
    while (*tail)
        tail = &(*tail)->next;
    *tail = series;
    return series;
}

/* Runs UPDATE on the series for VALUES: under the read lock when the series
 * exists, else under the write lock after creating it. */
#define S_WITH_SERIES(metric, values, update)                                                      \
    do {                                                                                           \
        pthread_rwlock_rdlock(&(metric)->lock);                                                    \
        s_series_t *series = s_series_get(metric, values, 0);                                      \
        if (!series) {                                                                             \
            pthread_rwlock_unlock(&(metric)->lock);                                                \
            pthread_rwlock_wrlock(&(metric)->lock);                                                \
            series = s_series_get(metric, values, 1);                                              \
        }                                                                                          \
        if (series) {                                                                              \
            update;                                                                                \
        }                                                                                          \
        pthread_rwlock_unlock(&(metric)->lock);                                                    \
    } while (0)

void cf_metric_inc(cf_metric_t *metric, const char *const *values, double delta)
{
    if (!metric || metric->kind == CF_METRIC_HISTOGRAM ||
        (metric->kind == CF_METRIC_COUNTER && !(delta >= 0)))
        return;
    S_WITH_SERIES(metric, values, s_add(&series->value_bits, delta));
}

void cf_metric_set(cf_metric_t *metric, const char *const *values, double value)
{
    if (!metric || metric->kind == CF_METRIC_HISTOGRAM)
        return;
    S_WITH_SERIES(metric, values, s_store(&series->value_bits, value));
}

void cf_metric_observe(cf_metric_t *metric, const char *const *values, double value)
{
    if (!metric || metric->kind != CF_METRIC_HISTOGRAM || isnan(value))
        return;
    size_t bucket = 0;
    while (bucket < metric->bound_count && value > metric->bounds[bucket])
        bucket++;
    S_WITH_SERIES(metric, values, {
        if (bucket < metric->bound_count)
            atomic_fetch_add_explicit(&series->buckets[bucket], 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&series->count, 1, memory_order_relaxed);
        s_add(&series->value_bits, value);
    });
}

void cf_metric_reset(cf_metric_t *metric)
{
    if (!metric)
        return;
    pthread_rwlock_wrlock(&metric->lock);
    s_series_free(metric->series);
    metric->series = NULL;
    pthread_rwlock_unlock(&metric->lock);
}

double cf_metric_value(cf_metric_t *metric, const char *const *values)
{
    if (!metric)
        return 0;
    pthread_rwlock_rdlock(&metric->lock);
    s_series_t *series = s_series_get(metric, values, 0);
    double value = 0;
    if (series)
        value = metric->kind == CF_METRIC_HISTOGRAM ? (double)atomic_load(&series->count)
                                                    : s_load(&series->value_bits);
    pthread_rwlock_unlock(&metric->lock);
    return value;
}

int cf_metrics_on_collect(cf_metrics_t *self, cf_metrics_collect_fn *fn, void *arg)
{
    s_hook_t *hook = calloc(1, sizeof *hook);
    if (!hook)
        return -1;
    hook->fn = fn;
    hook->arg = arg;
    pthread_mutex_lock(&self->lock);
    if (self->last_hook)
        self->last_hook->next = hook;
    else
        self->hooks = hook;
    self->last_hook = hook;
    pthread_mutex_unlock(&self->lock);
    return 0;
}

void cf_metrics_remove_collect(cf_metrics_t *self, cf_metrics_collect_fn *fn, void *arg)
{
    pthread_mutex_lock(&self->lock);
    s_hook_t *prev = NULL;
    for (s_hook_t *h = self->hooks; h; prev = h, h = h->next) {
        if (h->fn != fn || h->arg != arg)
            continue;
        if (prev)
            prev->next = h->next;
        else
            self->hooks = h->next;
        if (self->last_hook == h)
            self->last_hook = prev;
        free(h);
        break;
    }
    pthread_mutex_unlock(&self->lock);
}

/* ------------------------------------------------------------ exposition */

typedef struct {
    char *data;
    size_t len, cap;
    int failed;
} s_buf_t;

static void s_buf_reserve(s_buf_t *buf, size_t extra)
{
    if (buf->failed || buf->len + extra + 1 <= buf->cap)
        return;
    size_t cap = buf->cap ? buf->cap : 4096;
    while (cap < buf->len + extra + 1)
        cap *= 2;
    char *data = realloc(buf->data, cap);
    if (!data) {
        buf->failed = 1;
        return;
    }
    buf->data = data;
    buf->cap = cap;
}

static void s_buf_put(s_buf_t *buf, const char *text, size_t len)
{
    s_buf_reserve(buf, len);
    if (buf->failed)
        return;
    memcpy(buf->data + buf->len, text, len);
    buf->len += len;
    buf->data[buf->len] = '\0';
}

static void s_buf_printf(s_buf_t *buf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void s_buf_printf(s_buf_t *buf, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof small) {
        s_buf_put(buf, small, (size_t)n);
        return;
    }
    s_buf_reserve(buf, (size_t)n);
    if (buf->failed)
        return;
    va_start(ap, fmt);
    vsnprintf(buf->data + buf->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    buf->len += (size_t)n;
}

/* Help text escapes backslash and newline; label values also escape '"'. */
static void s_buf_escaped(s_buf_t *buf, const char *text, int quote)
{
    for (const char *p = text; *p; p++) {
        if (*p == '\\')
            s_buf_put(buf, "\\\\", 2);
        else if (*p == '\n')
            s_buf_put(buf, "\\n", 2);
        else if (quote && *p == '"')
            s_buf_put(buf, "\\\"", 2);
        else
            s_buf_put(buf, p, 1);
    }
}

static void s_buf_number(s_buf_t *buf, double value)
{
    if (isnan(value))
        s_buf_put(buf, "NaN", 3);
    else if (isinf(value))
        s_buf_printf(buf, "%s", value > 0 ? "+Inf" : "-Inf");
    else
        s_buf_printf(buf, "%.17g", value);
}

/* Writes {a="x",b="y"[,le="..."]} (nothing when there are no labels). */
static void s_buf_labels(s_buf_t *buf, const cf_metric_t *metric, const s_series_t *series,
                         const char *le)
{
    if (metric->label_count == 0 && !le)
        return;
    s_buf_put(buf, "{", 1);
    for (size_t i = 0; i < metric->label_count; i++) {
        s_buf_printf(buf, "%s%s=\"", i ? "," : "", metric->labels[i]);
        s_buf_escaped(buf, series->values[i], 1);
        s_buf_put(buf, "\"", 1);
    }
    if (le)
        s_buf_printf(buf, "%sle=\"%s\"", metric->label_count ? "," : "", le);
    s_buf_put(buf, "}", 1);
}

static void s_render_metric(s_buf_t *buf, cf_metric_t *metric)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    s_buf_printf(buf, "# HELP %s ", metric->name);
    s_buf_escaped(buf, metric->help, 0);
    s_buf_printf(buf, "\n# TYPE %s %s\n", metric->name, type_names[metric->kind]);
    pthread_rwlock_rdlock(&metric->lock);
    for (s_series_t *s = metric->series; s; s = s->next) {
        if (metric->kind != CF_METRIC_HISTOGRAM) {
            s_buf_put(buf, metric->name, strlen(metric->name));
            s_buf_labels(buf, metric, s, NULL);
            s_buf_put(buf, " ", 1);
            s_buf_number(buf, s_load(&s->value_bits));
            s_buf_put(buf, "\n", 1);
            continue;
        }
        /* Read the count first: buckets may only have grown since, so the
         * exposition stays monotone (+Inf >= every bucket) while writers run. */
        uint64_t count = atomic_load(&s->count);
        double sum = s_load(&s->value_bits);
        uint64_t cumulative = 0;
        for (size_t i = 0; i <= metric->bound_count; i++) {
            char le[64];
            if (i < metric->bound_count) {
                cumulative += atomic_load(&s->buckets[i]);
                snprintf(le, sizeof le, "%.15g", metric->bounds[i]);
            } else {
                cumulative = cumulative > count ? cumulative : count;
                snprintf(le, sizeof le, "+Inf");
            }
            s_buf_printf(buf, "%s_bucket", metric->name);
            s_buf_labels(buf, metric, s, le);
            s_buf_printf(buf, " %llu\n", (unsigned long long)cumulative);
        }
        s_buf_printf(buf, "%s_sum", metric->name);
        s_buf_labels(buf, metric, s, NULL);
        s_buf_put(buf, " ", 1);
        s_buf_number(buf, sum);
        s_buf_printf(buf, "\n%s_count", metric->name);
        s_buf_labels(buf, metric, s, NULL);
        s_buf_printf(buf, " %llu\n", (unsigned long long)cumulative);
    }
    pthread_rwlock_unlock(&metric->lock);
}

char *cf_metrics_render(cf_metrics_t *self, size_t *len_out)
{
    /* The registry lock is held throughout: hooks update metrics, which takes
     * only the metrics' own locks, and two scrapes at once run their hooks
     * (database queries) one after the other rather than side by side. */
    pthread_mutex_lock(&self->lock);
    for (s_hook_t *h = self->hooks; h; h = h->next)
        h->fn(h->arg);
    s_buf_t buf = {0};
    s_buf_reserve(&buf, 0);
    for (cf_metric_t *m = self->metrics; m; m = m->next)
        s_render_metric(&buf, m);
    pthread_mutex_unlock(&self->lock);
    if (buf.failed || !buf.data) {
        free(buf.data);
        return NULL;
    }
    if (len_out)
        *len_out = buf.len;
    return buf.data;
}
