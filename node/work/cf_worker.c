/* cf_worker: the single-node renderer (see cf_worker.h). */
#define _GNU_SOURCE
#include "cf_worker.h"
#include "cf_locations.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cf_blob.h"
#include "cf_cache.h"
#include "cf_cpus.h"
#include "cf_db.h"
#include "cf_log.h"
#include "cf_metrics.h"
#include "cf_queue.h"
#include "cf_s3.h"
#include "cf_blob.h"
#include "cf_comp.h"
#include "cf_render.h"

#define S_PROGRESS_DB_MS  500  /* composition progress written at most this often */
#define S_CANCEL_CHECK_MS 1000 /* how soon a DELETE stops a render here without Redis */
/* With the composition's update channel, a DELETE is heard at once (the
 * next progress callback); Postgres is asked only this often besides. */
#define S_CANCEL_SAFETY_MS 10000
#define S_HEARTBEAT_MS     2000 /* consumer heartbeat while rendering (TTL 10 s) */
#define S_RENDER_REPORT_MS 200
/* While stopping, how long a write (the hand-back) keeps trying. */
#define S_STOP_WRITE_MS 3000

typedef struct s_slot_t s_slot_t;

struct cf_worker_t {
    cf_worker_options_t opts;
    char *redis_url, *redis_prefix, *data_dir, *node_id;
    atomic_bool stop;
    atomic_int in_flight;
    s_slot_t *slots;
    int slot_count;
    /* Claims: each slot's token (under claims_lock), renewed by the claims
     * thread every third of claim_ttl_ms. */
    pthread_mutex_t claims_lock;
    pthread_t claims_thread;
    bool claims_started;

    cf_metric_t *m_active_segments; /* active_segments */
    cf_metric_t *m_segments;        /* segments_total{status} */
    cf_metric_t *m_encode_seconds;  /* segment_encode_seconds{encoder} */
    cf_metric_t *m_renders;         /* renders_total{result} */
    cf_metric_t *m_render_fps;      /* render_fps{encoder} */
};

struct s_slot_t {
    cf_worker_t *worker;
    int index;
    pthread_t thread;
    bool started;
    cf_queue_t *queue;
    char consumer[160];
    char claim[CF_DB_OP_MAX + 1]; /* the token of the composition it renders, "" when none */
    atomic_bool claim_lost;       /* the renewal found that claim gone: stop the render */
};

/* What the progress callback needs while one composition renders. */
typedef struct {
    s_slot_t *slot;
    const char *id;
    const char *claim; /* this render's claim token */
    atomic_bool cancel;
    bool cancelled_by_user;
    bool claim_lost; /* the claim expired or was replaced: someone else may render it */
    cf_state_t stage;
    double progress_written;
    int64_t last_progress_ms, last_cancel_ms, last_heartbeat_ms;
    cf_updates_t *updates; /* the composition's update channel, NULL without Redis */
    int segments_seen;
    int segments_total;
    int active;
    int64_t encode_started_ms;
} s_job_t;

void cf_worker_options_default(cf_worker_options_t *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->redis_prefix = "cf:";
    opts->slots = 1;
    opts->claim_ttl_ms = CF_DB_CLAIM_TTL_MS;
    opts->priority_aging_ms = CF_QUEUE_AGING_MS;
}

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleeps up to MS, waking early when the worker stops. */
static void s_nap(cf_worker_t *w, int ms)
{
    for (int slept = 0; slept < ms && !atomic_load(&w->stop); slept += 50)
        usleep(50 * 1000);
}

static void s_report_load(cf_worker_t *w)
{
    if (!w->opts.on_load)
        return;
    int in_flight = atomic_load(&w->in_flight);
    w->opts.on_load(w->opts.on_load_arg, w->slot_count - in_flight, in_flight);
}

/* ------------------------------------------------------------ one render */

/* The owner's writes name its claim and an operation id made from it and
 * the target state (OP holds it), the same on every retry: a retry after a
 * lost answer is recognised, and nothing is written once the claim is gone. */
static cf_db_as_t s_as(const s_job_t *job, cf_state_t to, const char *reason,
                       char op[CF_DB_OP_MAX + 1])
{
    snprintf(op, CF_DB_OP_MAX + 1, "%s.%s", job->claim, cf_state_name(to));
    return (cf_db_as_t){.claim = job->claim, .op_id = op, .reason = reason};
}

static void s_claim_lost(s_job_t *job, const char *err)
{
    if (!job->claim_lost)
        cf_log_warn("worker", "%s: stopping: %s", job->id, err);
    job->claim_lost = true;
    atomic_store(&job->cancel, true);
}

static void s_transition(s_job_t *job, cf_state_t to)
{
    cf_worker_t *w = job->slot->worker;
    char err[256], op[CF_DB_OP_MAX + 1];
    cf_state_t from;
    while (job->stage < to && job->stage < CF_STATE_ASSEMBLING) {
        cf_state_t next = (cf_state_t)(job->stage + 1);
        cf_db_as_t as = s_as(job, next, NULL, op);
        int rc =
            cf_db_composition_transition_as(w->opts.db, job->id, next, &as, &from, err, sizeof err);
        if (rc == CF_DB_STALE) {
            s_claim_lost(job, err);
            return;
        }
        if (rc == CF_DB_ILLEGAL) {
            /* Cancelled (or failed by someone) meanwhile: stop rendering. */
            job->cancelled_by_user = from == CF_STATE_CANCELLED;
            atomic_store(&job->cancel, true);
            return;
        }
        if (rc != CF_DB_OK) {
            cf_log_warn("worker", "%s: -> %s: %s", job->id, cf_state_name(next), err);
            return; /* try again at the next report */
        }
        job->stage = next;
    }
}

static void s_check_cancel(s_job_t *job)
{
    cf_worker_t *w = job->slot->worker;
    cf_db_composition_t comp;
    memset(&comp, 0, sizeof comp);
    char err[256];
    if (cf_db_composition_get(w->opts.db, job->id, &comp, err, sizeof err) == CF_DB_OK &&
        cf_state_is_terminal(comp.state)) {
        job->cancelled_by_user = comp.state == CF_STATE_CANCELLED;
        atomic_store(&job->cancel, true);
    }
    cf_db_composition_clear(&comp);
}

static void s_set_active(s_job_t *job, int active)
{
    cf_worker_t *w = job->slot->worker;
    cf_metric_inc(w->m_active_segments, NULL, active - job->active);
    job->active = active;
}

static void s_on_progress(void *arg, const cf_render_progress_t *p)
{
    s_job_t *job = arg;
    cf_worker_t *w = job->slot->worker;
    int64_t now = s_now_ms();
    char err[256];
    if (atomic_load(&w->stop))
        atomic_store(&job->cancel, true);
    if (atomic_load(&job->slot->claim_lost))
        s_claim_lost(job, "its claim expired (not renewed in time)");

    double progress = job->progress_written;
    if (!strcmp(p->phase, "encode")) {
        if (!job->encode_started_ms)
            job->encode_started_ms = now;
        s_transition(job, CF_STATE_ENCODING);
        if (p->total > 0)
            progress = 0.02 + 0.93 * (double)p->done / (double)p->total;
        job->segments_total = p->segments_total;
        /* The local renderer runs up to `jobs` segments at once. */
        int left = p->segments_total - p->segments_done;
        int jobs = w->opts.render_jobs > 0 ? w->opts.render_jobs : cf_cpu_count();
        s_set_active(job, left < jobs ? left : jobs);
        if (p->segments_done > job->segments_seen) {
            const char *done[] = {"done"};
            cf_metric_inc(w->m_segments, done, p->segments_done - job->segments_seen);
            char payload[96];
            snprintf(payload, sizeof payload, "{\"done\":%d,\"total\":%d,\"node\":\"%.40s\"}",
                     p->segments_done, p->segments_total, w->node_id);
            cf_db_event_append(w->opts.db, job->id, "segments", payload, NULL, err, sizeof err);
            job->segments_seen = p->segments_done;
        }
    } else if (!strcmp(p->phase, "stitch")) {
        s_set_active(job, 0);
        s_transition(job, CF_STATE_ASSEMBLING);
        progress = 0.96;
    }
    if (progress > job->progress_written + 0.004 &&
        now - job->last_progress_ms >= S_PROGRESS_DB_MS && job->stage >= CF_STATE_ENCODING) {
        if (cf_db_composition_set_progress(w->opts.db, job->id, progress, err, sizeof err) ==
            CF_DB_OK)
            job->progress_written = progress;
        job->last_progress_ms = now;
        /* Frames for live progress bars (`clipfarm submit --wait`). */
        if (!strcmp(p->phase, "encode") && p->total > 0) {
            char payload[96];
            snprintf(payload, sizeof payload, "{\"done\":%lld,\"total\":%lld}", (long long)p->done,
                     (long long)p->total);
            cf_db_event_append(w->opts.db, job->id, "frames", payload, NULL, err, sizeof err);
        }
    }
    bool heard = false;
    if (job->updates) {
        char *message = NULL, why[256];
        int got = cf_updates_next(job->updates, 0, &message, why, sizeof why);
        /* Any write may be the cancel; a status write is what to look at. */
        heard = got > 0 && message && strstr(message, "\"cancelled\"");
        free(message);
        if (got < 0)
            cf_updates_destroy(&job->updates); /* back to asking Postgres */
    }
    if (heard ||
        now - job->last_cancel_ms >= (job->updates ? S_CANCEL_SAFETY_MS : S_CANCEL_CHECK_MS)) {
        s_check_cancel(job);
        job->last_cancel_ms = now;
    }
    if (now - job->last_heartbeat_ms >= S_HEARTBEAT_MS) {
        cf_queue_heartbeat(job->slot->queue, err, sizeof err);
        job->last_heartbeat_ms = now;
    }
}

static int s_resolve_blob(void *arg, const char *ref, char *path, size_t pathlen, char *err,
                          size_t errlen)
{
    return cf_blob_path(arg, ref, path, pathlen, err, errlen);
}

static void s_upload_tick(void *arg)
{
    s_job_t *job = arg;
    cf_render_progress_t p = {"upload", 0, 0, 0, 0};
    s_on_progress(job, &p);
}

/* The output to the composition's S3 destination, if it has one, before it
 * may complete: returns 0 (uploaded and recorded, or nothing to do), or -1
 * with "S3 CODE: message" in err. */
static int s_upload_destination(s_job_t *job, const cf_comp_t *spec, const char *path, char *err,
                                size_t errlen)
{
    cf_worker_t *w = job->slot->worker;
    const char *bucket = spec->dest_s3_bucket, *key = spec->dest_s3_key;
    if (!bucket)
        return 0;
    char code[64] = "", location[1200], why[512];
    if (!w->opts.s3) {
        snprintf(err, errlen, "S3 is not configured on the node that holds the output");
        return -1;
    }
    cf_s3_transfer_t t = {.cancel = &job->cancel, .tick = s_upload_tick, .tick_arg = job};
    if (cf_s3_upload(w->opts.s3, spec->dest_s3_profile, bucket, key, path, &t, code, why,
                     sizeof why) < 0) {
        snprintf(err, errlen, "upload to s3://%s/%s failed: %s", bucket, key, why);
        return -1;
    }
    snprintf(location, sizeof location, "s3://%s/%s", bucket, key);
    if (cf_db_composition_set_s3_location(w->opts.db, job->id, location, why, sizeof why) !=
        CF_DB_OK) {
        snprintf(err, errlen, "%s", why);
        return -1;
    }
    cf_log_info("worker", "%s: uploaded to %s", job->id, location);
    return 0;
}

/* Removes an output blob that no composition is going to point at, unless
 * another composition's output is the same bytes (the store keeps one copy
 * of equal content). */
static void s_drop_output(cf_worker_t *w, const char *location, const char *hash)
{
    bool used = true;
    char why[256];
    if (cf_db_output_referenced(w->opts.db, location, &used, why, sizeof why) != CF_DB_OK)
        cf_log_warn("worker", "keeping blob:%s: %s", hash, why);
    else if (!used)
        cf_blob_remove(w->opts.blobs, hash);
}

/* Records the plan's segments as done by this node. */
static void s_record_segments(s_job_t *job, const cf_render_result_t *result)
{
    const cf_plan_t *rendered = result->plan;
    cf_worker_t *w = job->slot->worker;
    char err[256];
    if (!rendered || rendered->segment_count <= 0)
        return;
    int count = rendered->segment_count;
    cf_db_segment_plan_t *plan = calloc((size_t)count, sizeof *plan);
    if (!plan)
        return;
    for (int s = 0; s < count; s++)
        plan[s] = (cf_db_segment_plan_t){
            s, rendered->segments[s].first_frame,
            rendered->segments[s].first_frame + rendered->segments[s].frames, NULL};
    int rc = cf_db_segments_create(w->opts.db, job->id, 0, plan, count, err, sizeof err);
    free(plan);
    if (rc != CF_DB_OK && rc != CF_DB_CONFLICT) {
        cf_log_warn("worker", "%s: segments: %s", job->id, err);
        return;
    }
    /* Worker-seconds of the encode phase spread evenly over the segments:
     * the local renderer does not time them one by one. */
    int jobs = result->jobs > 0 ? result->jobs : 1;
    double per_segment = result->seconds * (jobs < count ? jobs : count) / count;
    for (int s = 0; s < count; s++) {
        int64_t frames = rendered->segments[s].frames;
        cf_db_segment_update_t up = {
            .fields = CF_SEG_F_STATE | CF_SEG_F_PROGRESS | CF_SEG_F_NODE | CF_SEG_F_FPS |
                      CF_SEG_F_TIMINGS,
            .state = CF_SEG_DONE,
            .progress = 1,
            .node_id = w->node_id,
            .encode_fps = per_segment > 0 ? (double)frames / per_segment : 0,
            .encode_ms = (int64_t)(per_segment * 1000),
        };
        if (cf_db_segment_update(w->opts.db, job->id, s, 0, &up, err, sizeof err) != CF_DB_OK)
            cf_log_warn("worker", "%s: segment %d: %s", job->id, s, err);
        const char *labels[] = {result->encoder};
        cf_metric_observe(w->m_encode_seconds, labels, per_segment);
    }
}

/* Runs WRITE (complete, fail or hand back the job) until it answers
 * something else than CF_DB_UNAVAILABLE, for at most the claim's lifetime
 * (the claims thread renews it meanwhile): its operation id is the same on
 * every try, so an attempt whose answer was lost is recognised by the next.
 * While stopping, S_STOP_WRITE_MS at most (the claim then expires and the
 * coordinator requeues the composition). */
typedef int (*s_write_fn)(s_job_t *job, void *arg, char *err, size_t errlen);
static int s_write_retrying(s_job_t *job, s_write_fn write, void *arg, char *err, size_t errlen)
{
    cf_worker_t *w = job->slot->worker;
    int64_t started = s_now_ms();
    int rc;
    /* Not stopped by a lost claim: a write whose answer was lost ends the
     * claim itself (complete, hand back), and only its retry can tell. */
    while ((rc = write(job, arg, err, errlen)) == CF_DB_UNAVAILABLE) {
        int64_t limit = atomic_load(&w->stop) ? S_STOP_WRITE_MS : w->opts.claim_ttl_ms;
        if (s_now_ms() - started >= limit)
            break;
        cf_log_warn("worker", "%s: %s (trying again)", job->id, err);
        usleep(1000 * 1000); /* not s_nap: it returns at once while stopping */
    }
    return rc;
}

static int s_write_complete(s_job_t *job, void *arg, char *err, size_t errlen)
{
    char op[CF_DB_OP_MAX + 1];
    cf_db_as_t as = s_as(job, CF_STATE_COMPLETED, NULL, op);
    return cf_db_composition_complete_as(job->slot->worker->opts.db, job->id, arg, &as, err,
                                         errlen);
}

typedef struct {
    const char *code, *message;
} s_failure_t;

static int s_write_fail(s_job_t *job, void *arg, char *err, size_t errlen)
{
    const s_failure_t *f = arg;
    char op[CF_DB_OP_MAX + 1];
    cf_db_as_t as = s_as(job, CF_STATE_FAILED, NULL, op);
    return cf_db_composition_fail_as(job->slot->worker->opts.db, job->id, f->code, f->message, &as,
                                     err, errlen);
}

static int s_write_hand_back(s_job_t *job, void *arg, char *err, size_t errlen)
{
    (void)arg;
    char op[CF_DB_OP_MAX + 1];
    cf_db_as_t as = s_as(job, CF_STATE_QUEUED, "node_stopped", op);
    return cf_db_composition_transition_as(job->slot->worker->opts.db, job->id, CF_STATE_QUEUED,
                                           &as, NULL, err, errlen);
}

/* A graceful stop: the composition goes back to queued (its claim ends, a
 * "status" event with reason "node_stopped" records it) and on the intake
 * queue, so the next node to take work renders it. If Postgres cannot be
 * told, the claim expires and the coordinator requeues it. */
static void s_hand_back(s_job_t *job, cf_priority_t priority)
{
    char err[512];
    int rc = s_write_retrying(job, s_write_hand_back, NULL, err, sizeof err);
    if (rc != CF_DB_OK) {
        cf_log_warn("worker", "%s: could not hand it back (%s): its claim will expire", job->id,
                    err);
        return;
    }
    if (cf_queue_push(job->slot->queue, job->id, priority, err, sizeof err) < 0)
        cf_log_warn("worker", "%s: handed back, not pushed (the reconcile will): %s", job->id, err);
    cf_log_info("worker", "%s: handed back to the queue (node stopping)", job->id);
}

static void s_render(s_slot_t *slot, const char *id, const char *claim)
{
    cf_worker_t *w = slot->worker;
    char err[1024];
    cf_db_composition_t comp;
    memset(&comp, 0, sizeof comp);
    int rc = cf_db_composition_get(w->opts.db, id, &comp, err, sizeof err);
    if (rc != CF_DB_OK) {
        cf_log_warn("worker", "%s: %s", id, err);
        return;
    }
    /* The spec was validated on intake; it is parsed once here, for the
     * render, the extension and the destination. */
    const char *spec_json = comp.spec_json ? comp.spec_json : "";
    cf_comp_errors_t problems = {0};
    cf_comp_t *spec = cf_comp_parse(spec_json, strlen(spec_json), &problems);
    /* Renders work in DATA/outputs; the output itself becomes a blob of
     * the node's store (DATA/blobs), its location clipfarm://NODE/blobs/... */
    char relpath[256], out_path[4096] = "", outputs[4096], location[512];
    snprintf(outputs, sizeof outputs, "%s/outputs", w->data_dir);
    mkdir(outputs, 0755);

    s_job_t job = {.slot = slot, .id = id, .claim = claim, .stage = CF_STATE_PLANNING};
    atomic_init(&job.cancel, false);
    char sub_err[256];
    job.updates = cf_updates_subscribe(w->redis_url, w->redis_prefix, id, sub_err, sizeof sub_err);
    job.last_cancel_ms = s_now_ms();
    atomic_fetch_add(&w->in_flight, 1);
    s_report_load(w);
    cf_log_info("worker", "%s: rendering \"%s\"", id, comp.title ? comp.title : "");
    cf_render_result_t result = {0};
    double duration_s = 0;
    if (!spec) {
        /* Only a spec stored by something other than the API lands here. */
        char *joined = cf_comp_errors_join(&problems);
        snprintf(err, sizeof err, "invalid composition: %s", joined ? joined : "unparseable");
        for (char *p = err; *p; p++)
            if (*p == '\n')
                *p = ';';
        free(joined);
        rc = -1;
    } else {
        cf_render_opts_t ro = {
            .jobs = w->opts.render_jobs,
            .work_parent = outputs,
            .progress = s_on_progress,
            .progress_arg = &job,
            .progress_interval_ms = S_RENDER_REPORT_MS,
            .cancel = &job.cancel,
            .blob_resolver = s_resolve_blob,
            .blob_arg = w->opts.blobs,
            .policy = w->opts.policy,
            .s3 = w->opts.s3,
            .source_cache = w->opts.source_cache,
            .output_store = w->opts.blobs,
        };
        rc = cf_render_run(spec, NULL, &ro, &result, err, sizeof err);
        if (rc == 0 && result.plan)
            duration_s = (double)result.plan->total_frames * result.plan->output.fps_den /
                         (result.plan->output.fps_num > 0 ? result.plan->output.fps_num : 1);
    }
    cf_comp_errors_free(&problems);
    s_set_active(&job, 0);
    const char *outcome;
    bool upload_failed = false, outcome_unknown = false;
    if (rc == 0) {
        s_transition(&job, CF_STATE_ASSEMBLING);
        char *hash = result.output_blob, blob_rel[160], why_path[256];
        cf_db_output_t output = {location, 0, duration_s, hash};
        uint64_t bytes = result.output_bytes;
        if (cf_blob_relpath(hash, blob_rel, sizeof blob_rel) < 0 ||
            snprintf(relpath, sizeof relpath, "blobs/%s", blob_rel) >= (int)sizeof relpath ||
            cf_location_format(w->node_id, relpath, location, sizeof location) < 0 ||
            cf_blob_path(w->opts.blobs, hash, out_path, sizeof out_path, why_path,
                         sizeof why_path) < 0) {
            snprintf(err, sizeof err, "cannot find the output blob:%s", hash);
            rc = -1;
        } else {
            output.size_bytes = (int64_t)bytes;
            s_record_segments(&job, &result);
            char why[512];
            rc = s_upload_destination(&job, spec, out_path, err, sizeof err);
            if (rc != 0) {
                upload_failed = true;
                job.cancelled_by_user =
                    atomic_load(&job.cancel) && !atomic_load(&w->stop) && !job.claim_lost;
                rc = -1;
            } else if (job.claim_lost) {
                rc = -1;
            } else {
                rc = s_write_retrying(&job, s_write_complete, &output, why, sizeof why);
                if (rc == CF_DB_STALE) {
                    s_claim_lost(&job, why);
                    rc = -1;
                } else if (rc != CF_DB_OK) {
                    snprintf(err, sizeof err, "%s", why);
                    job.cancelled_by_user = rc == CF_DB_ILLEGAL || rc == CF_DB_TERMINAL;
                    /* It may have completed: keep the output it may name. */
                    outcome_unknown = rc == CF_DB_UNAVAILABLE;
                    rc = -1;
                }
            }
        }
        if (rc == 0) {
            const char *labels[] = {result.encoder};
            cf_metric_set(w->m_render_fps, labels,
                          result.seconds > 0 ? duration_s / result.seconds : 0);
            cf_log_info("worker", "%s: completed in %.1f s (%s, %llu bytes)", id, result.seconds,
                        result.encoder, (unsigned long long)bytes);
        } else if (out_path[0] && !outcome_unknown) {
            s_drop_output(w, location, hash);
        }
    }
    if (rc != 0) {
        char why[256];
        if (outcome_unknown) {
            /* Completed or not: if not, the claim expires unrenewed and the
             * coordinator requeues it. */
            outcome = "unknown";
            cf_log_warn("worker", "%s: completing it: %s (outcome unknown)", id, err);
        } else if (job.claim_lost) {
            /* Not ours any more: queued again or taken by another node. */
            outcome = "claim_lost";
        } else if (job.cancelled_by_user) {
            outcome = "cancelled";
            cf_log_info("worker", "%s: stopped: cancelled", id);
        } else if (atomic_load(&w->stop)) {
            outcome = "handed_back";
            s_hand_back(&job, comp.priority);
        } else {
            outcome = "failed";
            cf_log_warn("worker", "%s: failed: %s", id, err);
            s_failure_t failure = {upload_failed ? "s3_upload_failed" : "render_failed", err};
            if (s_write_retrying(&job, s_write_fail, &failure, why, sizeof why) != CF_DB_OK)
                cf_log_warn("worker", "%s: recording the failure: %s", id, why);
            if (job.segments_total > job.segments_seen) {
                const char *failed[] = {"failed"};
                cf_metric_inc(w->m_segments, failed, job.segments_total - job.segments_seen);
            }
        }
    } else {
        outcome = "completed";
    }
    const char *labels[] = {outcome};
    cf_metric_inc(w->m_renders, labels, 1);
    cf_render_result_clear(&result);
    cf_comp_destroy(&spec);
    cf_updates_destroy(&job.updates);
    cf_db_composition_clear(&comp);
    atomic_fetch_sub(&w->in_flight, 1);
    s_report_load(w);
}

/* ------------------------------------------------------------ threads */

static void s_set_claim(s_slot_t *slot, const char *token)
{
    pthread_mutex_lock(&slot->worker->claims_lock);
    snprintf(slot->claim, sizeof slot->claim, "%s", token ? token : "");
    atomic_store(&slot->claim_lost, false);
    pthread_mutex_unlock(&slot->worker->claims_lock);
}

static void *s_slot_main(void *arg)
{
    s_slot_t *slot = arg;
    cf_worker_t *w = slot->worker;
    char err[512];
    int64_t last_complaint = 0;
    /* Items this consumer name held when its last process died go back
     * first (a restarted node heartbeats at once: the reaper never would). */
    if (cf_queue_recover(slot->queue, NULL, err, sizeof err) < 0)
        cf_log_warn("worker", "queue: %s", err);
    while (!atomic_load(&w->stop)) {
        cf_queue_item_t item;
        int got = cf_queue_take(slot->queue, 500, &item, err, sizeof err);
        if (got < 0) {
            if (s_now_ms() - last_complaint > 10000) {
                cf_log_warn("worker", "queue: %s", err);
                last_complaint = s_now_ms();
            }
            s_nap(w, 1000);
            continue;
        }
        if (got == 0)
            continue;
        /* queued -> planning in Postgres first: exactly one taker wins, and
         * the claim is recorded. The token is this item's: a take whose
         * answer was lost is recognised by the retry. */
        unsigned char raw[8];
        char token[17];
        randombytes_buf(raw, sizeof raw);
        sodium_bin2hex(token, sizeof token, raw, sizeof raw);
        cf_db_claim_t claim = {.owner = w->node_id,
                               .taker = slot->consumer,
                               .token = token,
                               .ttl_ms = w->opts.claim_ttl_ms};
        int rc;
        while ((rc = cf_db_composition_claim(w->opts.db, item.id, &claim, err, sizeof err)) ==
                   CF_DB_UNAVAILABLE &&
               !atomic_load(&w->stop))
            s_nap(w, 1000);
        if (rc == CF_DB_OK) {
            s_set_claim(slot, token);
            s_render(slot, item.id, token);
            s_set_claim(slot, NULL);
        } else if (rc != CF_DB_UNAVAILABLE) {
            cf_log_debug("worker", "%s: not taken: %s", item.id, err);
        }
        /* Stopping with the take's outcome unknown: the item stays in our
         * list for the next start (cf_queue_recover) or the reaper, and a
         * claim the take may have made expires. */
        if (rc == CF_DB_UNAVAILABLE)
            break;
        cf_queue_ack(slot->queue, &item, err, sizeof err);
    }
    return NULL;
}

/* Renews the claims of the compositions the slots render, every third of
 * their lifetime; a slot whose claim was not renewed (it expired, or the
 * coordinator requeued it) is told to stop. */
static void *s_claims_main(void *arg)
{
    cf_worker_t *w = arg;
    int period_ms = w->opts.claim_ttl_ms / 3 > 50 ? w->opts.claim_ttl_ms / 3 : 50;
    char(*tokens)[CF_DB_OP_MAX + 1] = calloc((size_t)w->slot_count, sizeof *tokens);
    const char **list = calloc((size_t)w->slot_count, sizeof *list);
    bool *held = calloc((size_t)w->slot_count, sizeof *held);
    int *slot_of = calloc((size_t)w->slot_count, sizeof *slot_of);
    int64_t last_complaint = 0;
    while (tokens && list && held && slot_of && !atomic_load(&w->stop)) {
        s_nap(w, period_ms);
        int n = 0;
        pthread_mutex_lock(&w->claims_lock);
        for (int i = 0; i < w->slot_count; i++) {
            if (!w->slots[i].claim[0])
                continue;
            snprintf(tokens[n], sizeof tokens[n], "%s", w->slots[i].claim);
            list[n] = tokens[n];
            slot_of[n++] = i;
        }
        pthread_mutex_unlock(&w->claims_lock);
        if (n == 0)
            continue;
        char err[512];
        if (cf_db_claims_renew(w->opts.db, w->node_id, list, n, w->opts.claim_ttl_ms, held, err,
                               sizeof err) != CF_DB_OK) {
            if (s_now_ms() - last_complaint > 10000) {
                cf_log_warn("worker", "renewing claims: %s", err);
                last_complaint = s_now_ms();
            }
            continue;
        }
        pthread_mutex_lock(&w->claims_lock);
        for (int i = 0; i < n; i++) {
            s_slot_t *slot = &w->slots[slot_of[i]];
            /* Still the same render (not one that finished meanwhile). */
            if (!held[i] && !strcmp(slot->claim, tokens[i]))
                atomic_store(&slot->claim_lost, true);
        }
        pthread_mutex_unlock(&w->claims_lock);
    }
    free(tokens);
    free(list);
    free(held);
    free(slot_of);
    return NULL;
}

cf_worker_t *cf_worker_new(const cf_worker_options_t *opts, char *err, size_t errlen)
{
    if (!opts->db || !opts->metrics || !opts->blobs || !opts->redis_url || !opts->data_dir ||
        !opts->node_id) {
        snprintf(err, errlen,
                 "worker: database, metrics, blob store, Redis URL, data dir and node id are "
                 "required");
        return NULL;
    }
    if (opts->claim_ttl_ms < 300 || opts->priority_aging_ms < 1) {
        snprintf(err, errlen, "worker: the claim lifetime must be >= 300 ms and aging positive");
        return NULL;
    }
    if (sodium_init() < 0) {
        snprintf(err, errlen, "libsodium cannot be initialised");
        return NULL;
    }
    cf_worker_t *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&w->claims_lock, NULL);
    w->opts = *opts;
    w->redis_url = strdup(opts->redis_url);
    w->redis_prefix = strdup(opts->redis_prefix ? opts->redis_prefix : "cf:");
    w->data_dir = strdup(opts->data_dir);
    w->node_id = strdup(opts->node_id);
    w->slot_count = opts->maintenance_only ? 0 : opts->slots > 0 ? opts->slots : 1;
    char metric_err[256];
    cf_metrics_t *m = opts->metrics;
    w->m_active_segments =
        cf_metrics_add(m, CF_METRIC_GAUGE, "active_segments", "Segments encoding on this node now.",
                       NULL, NULL, 0, metric_err, sizeof metric_err);
    cf_metric_set(w->m_active_segments, NULL, 0);
    w->m_segments = cf_metrics_add(m, CF_METRIC_COUNTER, "segments_total",
                                   "Segments this node finished, by result.", "status", NULL, 0,
                                   metric_err, sizeof metric_err);
    w->m_encode_seconds = cf_metrics_add(
        m, CF_METRIC_HISTOGRAM, "segment_encode_seconds",
        "Encode time per segment (local renders: the encode phase's worker-seconds spread "
        "evenly over its segments).",
        "encoder", cf_metrics_encode_buckets, cf_metrics_encode_bucket_count, metric_err,
        sizeof metric_err);
    w->m_renders = cf_metrics_add(m, CF_METRIC_COUNTER, "renders_total",
                                  "Compositions this node rendered, by result.", "result", NULL, 0,
                                  metric_err, sizeof metric_err);
    w->m_render_fps = cf_metrics_add(m, CF_METRIC_GAUGE, "render_speed_ratio",
                                     "Output seconds per wall second of the last render here.",
                                     "encoder", NULL, 0, metric_err, sizeof metric_err);
    w->slots = calloc((size_t)w->slot_count + 1, sizeof *w->slots);
    if (!w->slots || !w->redis_url || !w->redis_prefix || !w->data_dir || !w->node_id) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (int i = 0; i < w->slot_count; i++) {
        s_slot_t *slot = &w->slots[i];
        slot->worker = w;
        slot->index = i;
        snprintf(slot->consumer, sizeof slot->consumer, "%s-%d", w->node_id, i);
        cf_queue_options_t qo;
        cf_queue_options_default(&qo);
        qo.url = w->redis_url;
        qo.prefix = w->redis_prefix;
        qo.consumer = slot->consumer;
        qo.aging_ms = w->opts.priority_aging_ms;
        if (!(slot->queue = cf_queue_new(&qo, err, errlen)))
            goto fail;
    }
    if (pthread_create(&w->claims_thread, NULL, s_claims_main, w) != 0) {
        snprintf(err, errlen, "cannot start the claims thread");
        goto fail;
    }
    w->claims_started = true;
    for (int i = 0; i < w->slot_count; i++) {
        if (pthread_create(&w->slots[i].thread, NULL, s_slot_main, &w->slots[i]) != 0) {
            snprintf(err, errlen, "cannot start a render slot");
            goto fail;
        }
        w->slots[i].started = true;
    }
    if (w->slot_count) {
        s_report_load(w);
        cf_log_info("worker", "rendering here: %d slot%s", w->slot_count,
                    w->slot_count == 1 ? "" : "s");
    }
    return w;
fail:
    cf_worker_destroy(&w);
    return NULL;
}

void cf_worker_destroy(cf_worker_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_worker_t *w = *self_p;
    atomic_store(&w->stop, true);
    for (int i = 0; w->slots && i < w->slot_count; i++)
        if (w->slots[i].started)
            pthread_join(w->slots[i].thread, NULL);
    if (w->claims_started)
        pthread_join(w->claims_thread, NULL);
    for (int i = 0; w->slots && i < w->slot_count; i++)
        cf_queue_destroy(&w->slots[i].queue);
    free(w->slots);
    pthread_mutex_destroy(&w->claims_lock);
    free(w->redis_url);
    free(w->redis_prefix);
    free(w->data_dir);
    free(w->node_id);
    free(w);
    *self_p = NULL;
}
