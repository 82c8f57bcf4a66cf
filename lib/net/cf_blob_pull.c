#define _GNU_SOURCE
#include "cf_blob_pull.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cf_httpc.h"

#define S_PATH_PREFIX "/internal/v1/blobs/"

void cf_blob_pull_options_default(cf_blob_pull_opts_t *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->connect_timeout_ms = 5000;
    opts->stall_timeout_ms = 30000;
    opts->max_tries = 5;
    opts->backoff_base_ms = 200;
    opts->backoff_max_ms = 10000;
}

cf_metric_t *cf_blob_pull_metric_add(cf_metrics_t *m, char *err, size_t errlen)
{
    return cf_metrics_add(m, CF_METRIC_COUNTER, "blob_pull_events_total",
                          "Blob pulls from peers: pulled, local (already here), resumed (a try "
                          "continuing with Range), retried, restarted (partial data dropped), "
                          "corrupt (hash mismatch), not_found, refused, too_large, cancelled, "
                          "failed.",
                          "event", NULL, 0, err, errlen);
}

const char *cf_blob_pull_result_name(int rc)
{
    switch (rc) {
        case CF_BLOB_PULL_OK:
            return "ok";
        case CF_BLOB_PULL_NOT_FOUND:
            return "not_found";
        case CF_BLOB_PULL_REFUSED:
            return "refused";
        case CF_BLOB_PULL_CORRUPT:
            return "corrupt";
        case CF_BLOB_PULL_TOO_LARGE:
            return "too_large";
        case CF_BLOB_PULL_CANCELLED:
            return "cancelled";
        default:
            return "failed";
    }
}

static void s_count(const cf_blob_pull_opts_t *opts, const char *event)
{
    const char *labels[] = {event};
    cf_metric_inc(opts->metric, labels, 1);
}

/* One pull across its tries. The writer outlives a failed try: its bytes
 * and running hash are where the next try's Range starts. */
typedef struct {
    const cf_blob_pull_opts_t *opts;
    cf_blob_store_t *store;
    cf_blob_pull_stats_t *stats;
    cf_blob_writer_t *writer;
    uint64_t offset; /* bytes held when this try's request went out */
    int64_t total;   /* the blob's size as the peer announced it; -1 unknown */
    int fatal;       /* a result that ends the pull (set by the callbacks) */
    bool drop;       /* the held bytes are no use to the next try */
    char why[512];   /* the callbacks' reason */
} s_pull_t;

static bool s_cancelled(const cf_blob_pull_opts_t *opts)
{
    return opts->cancel && atomic_load(opts->cancel);
}

static int s_on_headers(void *arg, const cf_httpc_response_t *resp)
{
    s_pull_t *p = arg;
    p->total = -1;
    if (resp->status == 206) {
        if (resp->range_start != (int64_t)p->offset) {
            snprintf(p->why, sizeof p->why,
                     "the peer answered a range from byte %" PRId64 ", asked from %" PRIu64,
                     resp->range_start, p->offset);
            p->drop = true;
            return -1;
        }
        p->total = resp->range_total;
    } else {
        if (p->offset > 0) {
            /* The whole blob instead of the rest of it: start over with it. */
            char err[256];
            cf_blob_writer_abort(&p->writer);
            p->writer = cf_blob_writer_new(p->store, p->opts->max_bytes, err, sizeof err);
            if (!p->writer) {
                snprintf(p->why, sizeof p->why, "%s", err);
                p->fatal = CF_BLOB_PULL_FAILED;
                return -1;
            }
            p->offset = 0;
            p->stats->restarts++;
            s_count(p->opts, "restarted");
        }
        p->total = resp->content_length;
    }
    if (p->total >= 0 && p->opts->max_bytes && (uint64_t)p->total > p->opts->max_bytes) {
        snprintf(p->why, sizeof p->why,
                 "the blob has %" PRId64 " bytes, over the limit of %" PRIu64, p->total,
                 p->opts->max_bytes);
        p->fatal = CF_BLOB_PULL_TOO_LARGE;
        return -1;
    }
    return 0;
}

static int s_sink(void *arg, const void *data, size_t len)
{
    s_pull_t *p = arg;
    p->stats->bytes_received += len;
    char err[256];
    int rc = cf_blob_writer_write(p->writer, data, len, err, sizeof err);
    if (rc == CF_BLOB_OK)
        return 0;
    snprintf(p->why, sizeof p->why, "%s", err);
    p->fatal = rc == CF_BLOB_TOO_LARGE ? CF_BLOB_PULL_TOO_LARGE : CF_BLOB_PULL_FAILED;
    return -1;
}

/* Waits before try TRY (2, 3...): base * 2^(try-2), capped, the upper half
 * of it drawn at random (so pullers that failed together do not retry
 * together), at least the peer's Retry-After (capped too). Returns -1 when
 * cancelled meanwhile. */
static int s_backoff(const cf_blob_pull_opts_t *opts, int try, long retry_after_s, unsigned *seed)
{
    int64_t cap = opts->backoff_max_ms > 0 ? opts->backoff_max_ms : 10000;
    int64_t delay = opts->backoff_base_ms > 0 ? opts->backoff_base_ms : 0;
    for (int i = 2; i < try && delay < cap; i++)
        delay *= 2;
    if (delay > cap)
        delay = cap;
    if (delay > 1)
        delay = delay / 2 + (int64_t)(rand_r(seed) % (unsigned)(delay / 2 + 1));
    if (retry_after_s > 0) {
        int64_t asked = retry_after_s > cap / 1000 ? cap : (int64_t)retry_after_s * 1000;
        if (asked > delay)
            delay = asked;
    }
    for (int64_t left = delay; left > 0; left -= 50) {
        if (s_cancelled(opts))
            return -1;
        struct timespec ts = {0, (long)(left < 50 ? left : 50) * 1000000L};
        nanosleep(&ts, NULL);
    }
    return s_cancelled(opts) ? -1 : 0;
}

int cf_blob_pull(const cf_blob_pull_opts_t *opts, cf_blob_store_t *store, const char *ref,
                 cf_blob_pull_stats_t *stats, char *err, size_t errlen)
{
    cf_blob_pull_stats_t ignored;
    if (!stats)
        stats = &ignored;
    memset(stats, 0, sizeof *stats);
    char hex[CF_BLOB_HEX_SIZE], path[4096], why[512];
    if (cf_blob_parse_ref(ref, hex) < 0) {
        snprintf(err, errlen, "'%s' is not a blob reference (blob:<64 hex>)", ref ? ref : "");
        return CF_BLOB_PULL_FAILED;
    }
    struct stat st;
    if (cf_blob_path(store, hex, path, sizeof path, why, sizeof why) == 0 && stat(path, &st) == 0) {
        stats->local = true;
        stats->size = (uint64_t)st.st_size;
        s_count(opts, "local");
        return CF_BLOB_PULL_OK;
    }
    if (!opts->base_url || !opts->sign) {
        snprintf(err, errlen, "pull of blob:%s: no peer URL or credential", hex);
        return CF_BLOB_PULL_FAILED;
    }
    int max_tries = opts->max_tries > 0 ? opts->max_tries : 5;
    cf_httpc_t *client = cf_httpc_new(opts->base_url, NULL, opts->connect_timeout_ms,
                                      opts->stall_timeout_ms, why, sizeof why);
    if (!client) {
        snprintf(err, errlen, "pull of blob:%s: %s", hex, why);
        s_count(opts, "failed");
        return CF_BLOB_PULL_FAILED;
    }
    cf_httpc_set_cancel(client, opts->cancel);
    char url_path[sizeof S_PATH_PREFIX + CF_BLOB_HEX_SIZE];
    snprintf(url_path, sizeof url_path, S_PATH_PREFIX "%s", hex);
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid() ^ (unsigned)strtoul(hex + 56, 0, 16);
    s_pull_t p = {.opts = opts, .store = store, .stats = stats};
    int result = CF_BLOB_PULL_FAILED;
    long retry_after_s = 0;
    char last[512] = "no try made";
    cf_httpc_response_t resp;
    memset(&resp, 0, sizeof resp);

    for (int try = 1; try <= max_tries; try++) {
        if (try > 1) {
            s_count(opts, "retried");
            if (s_backoff(opts, try, retry_after_s, &seed) < 0) {
                result = CF_BLOB_PULL_CANCELLED;
                snprintf(last, sizeof last, "cancelled");
                break;
            }
        }
        retry_after_s = 0;
        if (p.drop)
            cf_blob_writer_abort(&p.writer);
        p.drop = false;
        p.fatal = 0;
        p.why[0] = '\0';
        if (!p.writer &&
            !(p.writer = cf_blob_writer_new(store, opts->max_bytes, last, sizeof last))) {
            result = CF_BLOB_PULL_FAILED;
            break;
        }
        p.offset = cf_blob_writer_size(p.writer);
        char auth[512], range[64];
        const char *headers[3] = {auth, NULL, NULL};
        if (opts->sign(opts->sign_arg, "GET", url_path, auth, sizeof auth) < 0) {
            snprintf(last, sizeof last, "no credential to present to the peer");
            result = CF_BLOB_PULL_FAILED;
            break;
        }
        if (p.offset > 0) {
            snprintf(range, sizeof range, "Range: bytes=%" PRIu64 "-", p.offset);
            headers[1] = range;
            stats->resumes++;
            s_count(opts, "resumed");
        }
        stats->tries++;
        cf_httpc_response_clear(&resp);
        int rc = cf_httpc_get_stream(client, url_path, headers, s_on_headers, s_sink, NULL, &p,
                                     &resp, why, sizeof why);
        stats->http_status = resp.status;
        if (s_cancelled(opts)) {
            result = CF_BLOB_PULL_CANCELLED;
            snprintf(last, sizeof last, "cancelled");
            break;
        }
        if (p.fatal) {
            result = p.fatal;
            snprintf(last, sizeof last, "%s", p.why);
            break;
        }
        if (rc < 0) {
            /* Refused, timed out, stalled, cut mid-body: the bytes received
             * so far stay for the next try's Range. */
            snprintf(last, sizeof last, "%s", p.why[0] ? p.why : why);
            continue;
        }
        long status = resp.status;
        if (status == 200 || status == 206) {
            uint64_t size = cf_blob_writer_size(p.writer);
            if (p.total >= 0 && size != (uint64_t)p.total) {
                snprintf(last, sizeof last, "the body ended after %" PRIu64 " of %" PRId64 " bytes",
                         size, p.total);
                continue;
            }
            int commit = cf_blob_writer_commit_expect(&p.writer, hex, last, sizeof last);
            result = commit == 0                  ? CF_BLOB_PULL_OK
                     : commit == CF_BLOB_MISMATCH ? CF_BLOB_PULL_CORRUPT
                                                  : CF_BLOB_PULL_FAILED;
            if (result == CF_BLOB_PULL_OK)
                stats->size = size;
            break;
        }
        cf_httpc_error_line(&resp, last, sizeof last);
        if (status == 404) {
            result = CF_BLOB_PULL_NOT_FOUND;
            break;
        }
        if (status == 401 || status == 403) {
            result = CF_BLOB_PULL_REFUSED;
            break;
        }
        if (status == 416) {
            p.drop = true; /* more bytes held than the blob has: start over */
            continue;
        }
        if (status == 408 || status == 429 || status >= 500) {
            retry_after_s = resp.retry_after_s;
            continue;
        }
        result = CF_BLOB_PULL_FAILED; /* another answer no retry will change */
        break;
    }
    cf_httpc_response_clear(&resp);
    cf_httpc_destroy(&client);
    cf_blob_writer_abort(&p.writer); /* NULL after a commit */
    if (result == CF_BLOB_PULL_FAILED && stats->tries >= max_tries)
        snprintf(err, errlen, "pull of blob:%s from %s failed after %d tries: %s", hex,
                 opts->base_url, stats->tries, last);
    else if (result != CF_BLOB_PULL_OK)
        snprintf(err, errlen, "pull of blob:%s from %s: %s", hex, opts->base_url, last);
    s_count(opts, result == CF_BLOB_PULL_OK ? "pulled" : cf_blob_pull_result_name(result));
    return result;
}
