#define _GNU_SOURCE
#include "cf_state_keeper.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cf_blob.h"
#include "cf_locations.h"
#include "cf_log.h"
#include "cf_queue.h"

/* Rows deleted per purge statement: short transactions, bounded memory. */
#define S_PURGE_BATCH 500

struct cf_state_keeper {
    cf_state_keeper_options_t opts;
    char *redis_url;
    char *redis_prefix;
    char *output_root; /* realpath, or NULL */
    char *node_id, *data_dir;
    cf_queue_t *queue; /* used by one thread at a time: the keeper's, or run_once's caller */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
    bool thread_started;
    bool stop;
    int64_t last_reconcile_ms;
    int64_t last_purge_ms;
    int coordinator; /* -1 unknown, 0 no, 1 yes: at the last pass (for the log) */
    cf_state_keeper_stats_t stats;
};

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void cf_state_keeper_options_default(cf_state_keeper_options_t *opts)
{
    *opts = (cf_state_keeper_options_t){
        .db = NULL,
        .redis_url = NULL,
        .redis_prefix = "cf:",
        .reap_interval_ms = 1000,
        .reconcile_interval_ms = 10000,
        .purge_interval_ms = 60000,
        .keep_completed_s = CF_DB_KEEP_COMPLETED_S,
        .keep_failed_s = CF_DB_KEEP_FAILED_S,
        .output_root = NULL,
        .blob_keep_s = 7 * 86400,
        .start_thread = true,
        .idempotency_keep_s = CF_DB_IDEMPOTENCY_KEEP_S,
        .claim_max_expiries = 3,
    };
}

/* Removes a purged composition's output file when it is a local file inside
 * output_root. Returns 1 removed, 0 left alone, -1 on an unlink error. */
static int s_remove_output(cf_state_keeper_t *k, const char *location)
{
    char node[128], rel[1024], local[PATH_MAX + 1100];
    if (location && k->opts.node_id && k->opts.data_dir &&
        cf_location_parse(location, node, sizeof node, rel, sizeof rel) == 0) {
        if (strcmp(node, k->opts.node_id))
            return 0; /* another node's file: it removes its own */
        snprintf(local, sizeof local, "%s/%s", k->opts.data_dir, rel);
        if (unlink(local) < 0)
            return errno == ENOENT ? 0 : -1;
        return 1;
    }
    if (!k->output_root || !location)
        return 0;
    const char *path = !strncmp(location, "file://", 7) ? location + 7 : location;
    if (path[0] != '/')
        return 0; /* s3://, https://, relative: not ours to delete */
    char real[PATH_MAX];
    if (!realpath(path, real))
        return errno == ENOENT ? 0 : -1;
    size_t root_len = strlen(k->output_root);
    if (strncmp(real, k->output_root, root_len) || real[root_len] != '/')
        return 0;
    if (unlink(real) < 0)
        return errno == ENOENT ? 0 : -1;
    return 1;
}

static void s_add(cf_state_keeper_t *k, const cf_state_keeper_stats_t *d,
                  cf_state_keeper_stats_t *done)
{
    pthread_mutex_lock(&k->lock);
    cf_state_keeper_stats_t *t = &k->stats;
    t->passes += d->passes;
    t->reaped += d->reaped;
    t->reconciled += d->reconciled;
    t->purged += d->purged;
    t->files_removed += d->files_removed;
    t->files_kept += d->files_kept;
    t->errors += d->errors;
    t->blobs_removed += d->blobs_removed;
    t->requeued += d->requeued;
    t->abandoned += d->abandoned;
    t->coordinating += d->coordinating;
    pthread_mutex_unlock(&k->lock);
    if (done) {
        done->passes += d->passes;
        done->reaped += d->reaped;
        done->reconciled += d->reconciled;
        done->purged += d->purged;
        done->files_removed += d->files_removed;
        done->files_kept += d->files_kept;
        done->errors += d->errors;
        done->blobs_removed += d->blobs_removed;
        done->requeued += d->requeued;
        done->abandoned += d->abandoned;
        done->coordinating += d->coordinating;
    }
}

/* Expires the claims nobody renewed in time (cf_db_claims_expire) and
 * pushes what went back to queued on the queue (a failed push is repaired
 * by the reconcile: they are queued in Postgres). Adds a failure to *rc and
 * err like S_FAIL. */
static void s_sweep_claims(cf_state_keeper_t *k, cf_state_keeper_stats_t *d, int *rc, char *err,
                           size_t errlen)
{
    char why[512];
    const char *sweeper = k->opts.node_id ? k->opts.node_id : "state-keeper";
    for (;;) {
        cf_db_expired_t *items = NULL;
        int count = 0;
        if (cf_db_claims_expire(k->opts.db, sweeper, k->opts.claim_max_expiries, S_PURGE_BATCH,
                                &items, &count, why, sizeof why) < 0) {
            d->errors++;
            if (*rc == 0)
                snprintf(err, errlen, "claim sweep: %s", why);
            *rc = -1;
            return;
        }
        int queued = 0;
        for (int i = 0; i < count; i++) {
            cf_log_info("state", "%s: the claim of %s expired: %s", items[i].id,
                        items[i].owner[0] ? items[i].owner : "its renderer",
                        items[i].state == CF_STATE_QUEUED ? "queued again" : "failed");
            queued += items[i].state == CF_STATE_QUEUED;
        }
        cf_queue_item_t *push = calloc((size_t)queued + 1, sizeof *push);
        int n = 0;
        for (int i = 0; push && i < count; i++)
            if (items[i].state == CF_STATE_QUEUED) {
                snprintf(push[n].id, sizeof push[n].id, "%s", items[i].id);
                push[n].priority = items[i].priority;
                n++;
            }
        if (push && cf_queue_push_many(k->queue, push, n, why, sizeof why) < 0)
            cf_log_warn("state",
                        "claim sweep: pushing %d composition(s) failed (the reconcile "
                        "will): %s",
                        n, why);
        free(push);
        free(items);
        d->requeued += (uint64_t)queued;
        d->abandoned += (uint64_t)(count - queued);
        if (count < S_PURGE_BATCH)
            return;
    }
}

/* One pass; FORCE runs reconcile and purge whatever their intervals. */
static int s_pass(cf_state_keeper_t *k, bool force, cf_state_keeper_stats_t *done, char *err,
                  size_t errlen)
{
    cf_state_keeper_stats_t d = {.passes = 1};
    char why[512];
    int rc = 0;
#define S_FAIL(...)                                                                                \
    do {                                                                                           \
        d.errors++;                                                                                \
        if (rc == 0)                                                                               \
            snprintf(err, errlen, __VA_ARGS__);                                                    \
        rc = -1;                                                                                   \
    } while (0)

    int returned = 0;
    if (cf_queue_reap(k->queue, &returned, why, sizeof why) < 0)
        S_FAIL("reaper: %s", why);
    d.reaped += (uint64_t)returned;

    int64_t now = s_now_ms();
    bool coordinator = !k->opts.is_coordinator || k->opts.is_coordinator(k->opts.coordinator_arg);
    if (k->coordinator != (int)coordinator)
        cf_log_info("state", coordinator
                                 ? "coordinator: expiring claims and reconciling the queue here"
                                 : "not the coordinator: claims and reconcile are left to it");
    /* A node that just became the coordinator rebuilds the queue at once:
     * nobody reconciled while there was none. */
    bool became = coordinator && k->coordinator != 1;
    k->coordinator = coordinator;
    if (coordinator) {
        d.coordinating++;
        s_sweep_claims(k, &d, &rc, err, errlen);
        bool lost = false;
        if (cf_queue_needs_reconcile(k->queue, &lost, why, sizeof why) < 0)
            S_FAIL("reconcile check: %s", why);
        if (force || lost || became ||
            now - k->last_reconcile_ms >= k->opts.reconcile_interval_ms) {
            int pushed = 0;
            if (cf_queue_reconcile(k->queue, k->opts.db, &pushed, why, sizeof why) < 0)
                S_FAIL("%s", why);
            else
                k->last_reconcile_ms = now;
            d.reconciled += (uint64_t)pushed;
        }
    }

    if (force || now - k->last_purge_ms >= k->opts.purge_interval_ms) {
        for (;;) {
            cf_db_purged_t *purged = NULL;
            int count = 0;
            if (cf_db_purge_expired(k->opts.db, k->opts.keep_completed_s, k->opts.keep_failed_s,
                                    k->opts.idempotency_keep_s, S_PURGE_BATCH, &purged, &count, why,
                                    sizeof why) < 0) {
                S_FAIL("retention purge: %s", why);
                break;
            }
            for (int i = 0; i < count; i++) {
                int removed = s_remove_output(k, purged[i].output_location);
                if (removed > 0)
                    d.files_removed++;
                else if (removed < 0)
                    S_FAIL("removing %s: %s", purged[i].output_location, strerror(errno));
                else if (purged[i].output_location)
                    d.files_kept++;
            }
            d.purged += (uint64_t)count;
            cf_db_purged_free(&purged, count);
            if (count < S_PURGE_BATCH)
                break;
        }
        if (d.purged)
            cf_log_info("state", "retention purged %llu composition(s), removed %llu file(s)",
                        (unsigned long long)d.purged, (unsigned long long)d.files_removed);
        if (k->opts.blobs && k->opts.node_id) {
            char **hashes = NULL;
            int count = 0;
            if (cf_db_blob_gc(k->opts.db, k->opts.node_id, k->opts.blob_keep_s, S_PURGE_BATCH,
                              &hashes, &count, why, sizeof why) < 0)
                S_FAIL("upload collection: %s", why);
            for (int i = 0; i < count; i++)
                d.blobs_removed += hashes[i] && cf_blob_remove(k->opts.blobs, hashes[i]) == 0;
            if (count)
                cf_log_info("state", "removed %llu unreferenced upload(s)",
                            (unsigned long long)d.blobs_removed);
            cf_db_strings_free(&hashes, count);
        }
        k->last_purge_ms = now;
    }
#undef S_FAIL
    s_add(k, &d, done);
    return rc;
}

static void *s_thread(void *arg)
{
    cf_state_keeper_t *k = arg;
    pthread_mutex_lock(&k->lock);
    while (!k->stop) {
        pthread_mutex_unlock(&k->lock);
        char err[512];
        if (s_pass(k, false, NULL, err, sizeof err) < 0)
            cf_log_warn("state", "housekeeping: %s", err);
        pthread_mutex_lock(&k->lock);
        if (k->stop)
            break;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        int64_t ns = until.tv_nsec + (int64_t)k->opts.reap_interval_ms * 1000000;
        until.tv_sec += ns / 1000000000;
        until.tv_nsec = ns % 1000000000;
        pthread_cond_timedwait(&k->cond, &k->lock, &until);
    }
    pthread_mutex_unlock(&k->lock);
    return NULL;
}

cf_state_keeper_t *cf_state_keeper_new(const cf_state_keeper_options_t *opts, char *err,
                                       size_t errlen)
{
    if (!opts->db || !opts->redis_url) {
        snprintf(err, errlen, "the state keeper needs a database pool and a Redis URL");
        return NULL;
    }
    if (opts->reap_interval_ms < 10 || opts->reconcile_interval_ms < 10 ||
        opts->purge_interval_ms < 10 || opts->keep_completed_s < 0 || opts->keep_failed_s < 0 ||
        opts->idempotency_keep_s < 0 || opts->claim_max_expiries < 0) {
        snprintf(err, errlen, "state keeper intervals must be >= 10 ms and retention >= 0");
        return NULL;
    }
    char root[PATH_MAX];
    if (opts->output_root && !realpath(opts->output_root, root)) {
        snprintf(err, errlen, "output root '%s': %s", opts->output_root, strerror(errno));
        return NULL;
    }
    cf_state_keeper_t *k = calloc(1, sizeof *k);
    if (!k) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    k->opts = *opts;
    k->coordinator = -1;
    k->redis_url = strdup(opts->redis_url);
    k->redis_prefix = strdup(opts->redis_prefix ? opts->redis_prefix : "cf:");
    k->output_root = opts->output_root ? strdup(root) : NULL;
    k->opts.redis_url = k->redis_url;
    k->opts.redis_prefix = k->redis_prefix;
    k->opts.output_root = k->output_root;
    k->node_id = opts->node_id ? strdup(opts->node_id) : NULL;
    k->data_dir = opts->data_dir ? strdup(opts->data_dir) : NULL;
    k->opts.node_id = k->node_id;
    k->opts.data_dir = k->data_dir;
    cf_queue_options_t qo;
    cf_queue_options_default(&qo);
    qo.url = k->redis_url;
    qo.prefix = k->redis_prefix;
    k->queue = k->redis_url && k->redis_prefix ? cf_queue_new(&qo, err, errlen) : NULL;
    pthread_mutex_init(&k->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&k->cond, &attr);
    pthread_condattr_destroy(&attr);
    if (!k->queue || (opts->output_root && !k->output_root) || (opts->node_id && !k->node_id) ||
        (opts->data_dir && !k->data_dir)) {
        cf_state_keeper_destroy(&k);
        return NULL;
    }
    if (opts->start_thread) {
        if (pthread_create(&k->thread, NULL, s_thread, k) != 0) {
            snprintf(err, errlen, "cannot start the state keeper thread");
            cf_state_keeper_destroy(&k);
            return NULL;
        }
        k->thread_started = true;
    }
    return k;
}

void cf_state_keeper_destroy(cf_state_keeper_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_state_keeper_t *k = *self_p;
    if (k->thread_started) {
        pthread_mutex_lock(&k->lock);
        k->stop = true;
        pthread_cond_signal(&k->cond);
        pthread_mutex_unlock(&k->lock);
        pthread_join(k->thread, NULL);
    }
    cf_queue_destroy(&k->queue);
    pthread_mutex_destroy(&k->lock);
    pthread_cond_destroy(&k->cond);
    free(k->redis_url);
    free(k->redis_prefix);
    free(k->output_root);
    free(k->node_id);
    free(k->data_dir);
    free(k);
    *self_p = NULL;
}

int cf_state_keeper_run_once(cf_state_keeper_t *keeper, cf_state_keeper_stats_t *done, char *err,
                             size_t errlen)
{
    if (keeper->thread_started) {
        snprintf(err, errlen, "the keeper's own thread is running");
        return -1;
    }
    return s_pass(keeper, true, done, err, errlen);
}

void cf_state_keeper_stats(cf_state_keeper_t *keeper, cf_state_keeper_stats_t *stats)
{
    pthread_mutex_lock(&keeper->lock);
    *stats = keeper->stats;
    pthread_mutex_unlock(&keeper->lock);
}
