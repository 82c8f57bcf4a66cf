/* cf_executor: this node's share of the cluster's work. See cf_executor.h. */
#define _GNU_SOURCE
#include "cf_executor.h"

#include <czmq.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cf_cpus.h"
#include "cf_blob.h"
#include "cf_blob_pull.h"
#include "cf_log.h"
#include "cf_metrics.h"
#include "cf_node.h"
#include "cf_plan.h"
#include "cf_render_stages.h"
#include "cf_s3.h"
#include "cf_work_bus.h"

#define S_PROGRESS_MS 500

typedef struct s_run {
    cf_executor_t *ex;
    char coordinator[37];
    uint64_t epoch;
    char comp[37];
    int index, attempt;
    cf_task_kind_t kind;
    int64_t frame_start, frames; /* ASSIGN's frame_start and frame_count */
    char encoder[40];
    char *task_json;
    atomic_bool cancel;
    /* Set just before the task's last reply (DONE or FAILED): its slot is
     * free from then on, though the thread still tidies up, so the ASSIGN
     * that DONE brings at once is not refused for a slot being freed. */
    atomic_bool released;
    atomic_bool finished;
    pthread_t thread;
    struct s_run *next;
} s_run_t;

struct cf_executor_t {
    cf_executor_options_t opts;
    char my_id[37];
    char **encoders;
    int encoder_count;
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t lock; /* runs, stats */
    s_run_t *runs;
    int running;
    cf_executor_stats_t stats;
    cf_metric_t *m_active, *m_segments, *m_encode_seconds, *m_renders;
};

/* A task ended (RESULT: done, failed or cancelled). */
static void s_count_end(cf_executor_t *ex, const s_run_t *run, const char *result, double seconds)
{
    const char *status[] = {result};
    const char *rendered[] = {!strcmp(result, "done") ? "completed" : result};
    cf_metric_inc(ex->m_segments, status, 1);
    cf_metric_inc(ex->m_renders, rendered, 1);
    if (!strcmp(result, "done") && run->kind == CF_TASK_SEGMENT) {
        const char *encoder[] = {run->encoder};
        cf_metric_observe(ex->m_encode_seconds, encoder, seconds);
    }
}

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void cf_executor_options_default(cf_executor_options_t *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->slots = 1;
}

/* A reason a peer accepts: printable, at most 250 bytes, cut on a
 * character boundary. */
static void s_reason(const char *in, char *out, size_t outlen)
{
    snprintf(out, outlen < 251 ? outlen : 251, "%s", in && *in ? in : "failed");
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    size_t n = strlen(out);
    /* Drop a multi-byte character the cut split. */
    size_t k = n;
    while (k > 0 && ((unsigned char)out[k - 1] & 0xc0) == 0x80)
        k--;
    if (k > 0 && ((unsigned char)out[k - 1] & 0x80)) {
        unsigned char lead = (unsigned char)out[k - 1];
        size_t need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
        if (n - (k - 1) < need)
            out[k - 1] = '\0';
    }
}

/* One reply to the coordinator: REASON for REJECT and FAILED (FAILED is
 * retryable unless the reason says trying again cannot help: see
 * s_reply_failed), FRAMES_DONE for PROGRESS, PIECE for DONE. */
static void s_send_reply(zsock_t *out, const s_run_t *run, cf_msg_type_t type, const char *reason,
                         bool retryable, int64_t frames_done, const cf_render_piece_t *piece)
{
    cf_msg_t msg;
    cf_msg_init(&msg, type);
    char why[256];
    switch (type) {
        case CF_MSG_ACCEPT:
            msg.accept = (cf_msg_accept_t){.epoch = run->epoch,
                                           .segment = (uint64_t)run->index,
                                           .attempt = (uint64_t)run->attempt};
            snprintf(msg.accept.composition, sizeof msg.accept.composition, "%s", run->comp);
            break;
        case CF_MSG_REJECT:
            msg.reject.epoch = run->epoch;
            msg.reject.segment = (uint64_t)run->index;
            msg.reject.attempt = (uint64_t)run->attempt;
            snprintf(msg.reject.composition, sizeof msg.reject.composition, "%s", run->comp);
            s_reason(reason, why, sizeof why);
            cf_msg_set_str(&msg.reject.reason, why);
            break;
        case CF_MSG_PROGRESS:
            msg.progress.epoch = run->epoch;
            msg.progress.segment = (uint64_t)run->index;
            msg.progress.attempt = (uint64_t)run->attempt;
            msg.progress.frames_done = (uint64_t)(frames_done > 0 ? frames_done : 0);
            snprintf(msg.progress.composition, sizeof msg.progress.composition, "%s", run->comp);
            break;
        case CF_MSG_DONE: {
            msg.done.epoch = run->epoch;
            msg.done.segment = (uint64_t)run->index;
            msg.done.attempt = (uint64_t)run->attempt;
            snprintf(msg.done.composition, sizeof msg.done.composition, "%s", run->comp);
            msg.done.frames = (uint64_t)(piece->frames > 0 ? piece->frames : 1);
            msg.done.size_bytes = piece->bytes;
            msg.done.encode_ms = (uint64_t)(piece->seconds * 1000);
            msg.done.fps = piece->seconds > 0 && run->kind == CF_TASK_SEGMENT
                               ? (double)piece->frames / piece->seconds
                               : 0;
            uint8_t raw[32];
            size_t raw_len = 0;
            if (sodium_hex2bin(raw, sizeof raw, piece->blob, strlen(piece->blob), NULL, &raw_len,
                               NULL) == 0 &&
                raw_len == 32)
                cf_proto_bin_set(&msg.done.blob_hash, raw, 32);
            break;
        }
        case CF_MSG_FAILED:
            msg.failed.epoch = run->epoch;
            msg.failed.segment = (uint64_t)run->index;
            msg.failed.attempt = (uint64_t)run->attempt;
            snprintf(msg.failed.composition, sizeof msg.failed.composition, "%s", run->comp);
            s_reason(reason, why, sizeof why);
            cf_msg_set_str(&msg.failed.reason, why);
            msg.failed.retryable = retryable;
            break;
        default:
            break;
    }
    if (cf_work_bus_send(out, run->coordinator, &msg) < 0)
        cf_log_warn("executor", "%s to %.8s could not be sent", cf_msg_type_name(type),
                    run->coordinator);
    cf_msg_clear(&msg);
}

static void s_reply(zsock_t *out, const s_run_t *run, cf_msg_type_t type, const char *reason,
                    int64_t frames_done, const cf_render_piece_t *piece)
{
    s_send_reply(out, run, type, reason, true, frames_done, piece);
}

/* FAILED with RETRYABLE as given. */
static void s_reply_failed(zsock_t *out, const s_run_t *run, const char *reason, bool retryable)
{
    s_send_reply(out, run, CF_MSG_FAILED, reason, retryable, 0, NULL);
}

/* ------------------------------------------------------------------ pulls */

typedef struct {
    cf_executor_t *ex;
    json_t *pull; /* [{"blob", "from"}] */
    atomic_bool *cancel;
} s_resolver_t;

/* Pulls HEX from FROM into the store. */
static int s_pull(cf_executor_t *ex, const char *from, const char *hex, atomic_bool *cancel,
                  char *err, size_t errlen)
{
    cf_blob_pull_opts_t po;
    cf_blob_pull_options_default(&po);
    char base[300];
    snprintf(base, sizeof base, "%s%s", strncmp(from, "http", 4) ? "http://" : "", from);
    po.base_url = base;
    po.sign = cf_peer_auth_sign;
    po.sign_arg = (void *)ex->opts.peer_auth;
    po.cancel = cancel;
    return cf_blob_pull(&po, ex->opts.blobs, hex, NULL, err, errlen);
}

/* blob: sources: this node's store, or pulled from a peer the task names. */
static int s_resolve_blob(void *arg, const char *ref, char *path, size_t pathlen, char *err,
                          size_t errlen)
{
    s_resolver_t *r = arg;
    char hex[CF_BLOB_HEX_SIZE];
    if (cf_blob_parse_ref(ref, hex) < 0) {
        snprintf(err, errlen, "not a blob reference");
        return -1;
    }
    if (cf_blob_path(r->ex->opts.blobs, hex, path, pathlen, err, errlen) == 0)
        return 0;
    size_t i;
    json_t *p;
    char why[512] = "no peer holds it";
    json_array_foreach(r->pull, i, p)
    {
        const char *blob = json_string_value(json_object_get(p, "blob"));
        const char *from = json_string_value(json_object_get(p, "from"));
        if (!blob || !from || strcmp(blob, hex))
            continue;
        if (s_pull(r->ex, from, hex, r->cancel, why, sizeof why) == CF_BLOB_PULL_OK)
            return cf_blob_path(r->ex->opts.blobs, hex, path, pathlen, err, errlen);
    }
    snprintf(err, errlen, "%s", why);
    return -1;
}

/* The assembly's output goes to DEST ({"bucket", "key", "profile"}) when
 * the composition names one. Returns 0, or -1 with "s3_upload_failed: ..."
 * in err. */
static int s_upload(cf_executor_t *ex, s_run_t *run, json_t *dest, const cf_render_piece_t *piece,
                    char *err, size_t errlen)
{
    const char *bucket = json_string_value(json_object_get(dest, "bucket"));
    const char *key = json_string_value(json_object_get(dest, "key"));
    const char *profile = json_string_value(json_object_get(dest, "profile"));
    if (!bucket)
        return 0;
    char path[4096], why[768], code[64] = "";
    if (!ex->opts.fetch.s3) {
        snprintf(err, errlen,
                 "s3_upload_failed: S3 is not configured on the node that holds the output");
        return -1;
    }
    if (cf_blob_path(ex->opts.blobs, piece->blob, path, sizeof path, why, sizeof why) < 0) {
        snprintf(err, errlen, "s3_upload_failed: %s", why);
        return -1;
    }
    cf_s3_transfer_t t = {.cancel = &run->cancel};
    if (cf_s3_upload(ex->opts.fetch.s3, profile, bucket, key ? key : "", path, &t, code, why,
                     sizeof why) < 0) {
        snprintf(err, errlen, "s3_upload_failed: upload to s3://%s/%s failed: %s", bucket,
                 key ? key : "", why);
        return -1;
    }
    cf_log_info("executor", "%s: uploaded to s3://%s/%s", run->comp, bucket, key ? key : "");
    return 0;
}

/* ------------------------------------------------------------------ a task */

#ifdef CF_BENCH_NOOP_ENCODE
/* Benchmark build (CF_BENCH_NOOP_ENCODE): the task is answered at once with
 * a made-up result, so only the control plane is measured. */
static void *s_run_thread(void *arg)
{
    s_run_t *run = arg;
    zsock_t *out = cf_work_bus_sender(run->ex->my_id);
    s_reply(out, run, CF_MSG_PROGRESS, NULL, 0, NULL);
    cf_render_piece_t piece = {.bytes = 1, .frames = run->frames > 0 ? run->frames : 1};
    memset(piece.blob, 'b', 64);
    piece.blob[64] = '\0';
    atomic_store(&run->released, true);
    s_reply(out, run, CF_MSG_DONE, NULL, 0, &piece);
    zsock_destroy(&out);
    atomic_store(&run->finished, true);
    return NULL;
}
#else
static void *s_run_thread(void *arg)
{
    s_run_t *run = arg;
    cf_executor_t *ex = run->ex;
    char err[1024] = "";
    zsock_t *out = cf_work_bus_sender(ex->my_id);
    json_t *root = json_loads(run->task_json, 0, NULL);
    cf_plan_t *plan = NULL;
    cf_render_job_t *job = NULL;
    cf_task_t *task = NULL;
    const char **local = NULL;
    cf_render_piece_t *pieces = NULL, audio = {0};
    int64_t last_sent = 0, frames = 0;
    bool finished = false, refused = false;
    char *plan_text = root ? json_dumps(json_object_get(root, "plan"), JSON_COMPACT) : NULL;
    if (!out || !root || !plan_text ||
        !(plan = cf_plan_from_json(plan_text, strlen(plan_text), err, sizeof err))) {
        if (!err[0])
            snprintf(err, sizeof err, "malformed task description");
        goto end;
    }
    /* The plan comes compact: this node cuts the segments itself, and its
     * cut must be the coordinator's (the frames it assigned). */
    if (run->kind == CF_TASK_SEGMENT &&
        (run->index < 0 || run->index >= plan->segment_count ||
         plan->segments[run->index].first_frame != run->frame_start ||
         plan->segments[run->index].frames != run->frames)) {
        snprintf(err, sizeof err,
                 "segment %d: the plan here does not cut it at the assigned frames %lld+%lld",
                 run->index, (long long)run->frame_start, (long long)run->frames);
        goto end;
    }
    s_reply(out, run, CF_MSG_PROGRESS, NULL, 0, NULL);
    s_resolver_t resolver = {ex, json_object_get(root, "pull"), &run->cancel};
    cf_task_spec_t spec = {.kind = run->kind,
                           .blob_dir = ex->opts.blob_dir,
                           .threads = ex->opts.threads,
                           .work_parent = ex->opts.work_parent};
    if (run->kind == CF_TASK_ASSEMBLE) {
        json_t *list = json_object_get(root, "pieces");
        pieces = calloc((size_t)plan->segment_count + 1, sizeof *pieces);
        if (!pieces) {
            snprintf(err, sizeof err, "out of memory");
            goto end;
        }
        size_t i;
        json_t *p;
        int have = 0;
        bool have_audio = false;
        json_array_foreach(list, i, p)
        {
            const char *kind = json_string_value(json_object_get(p, "kind"));
            const char *blob = json_string_value(json_object_get(p, "blob"));
            const char *from = json_string_value(json_object_get(p, "from"));
            int index = (int)json_integer_value(json_object_get(p, "index"));
            cf_render_piece_t piece = {0};
            if (!kind || !blob || strlen(blob) != 64) {
                snprintf(err, sizeof err, "piece %zu of the assembly is malformed", i);
                goto end;
            }
            snprintf(piece.blob, sizeof piece.blob, "%s", blob);
            piece.bytes = (uint64_t)json_integer_value(json_object_get(p, "bytes"));
            char why[512], path[1024];
            if (cf_blob_path(ex->opts.blobs, blob, path, sizeof path, why, sizeof why) < 0 &&
                s_pull(ex, from ? from : "", blob, &run->cancel, why, sizeof why) !=
                    CF_BLOB_PULL_OK) {
                snprintf(err, sizeof err, "%s %d: cannot pull blob:%.12s from its node: %s", kind,
                         index, blob, why);
                goto end;
            }
            if (!strcmp(kind, "audio")) {
                audio = piece;
                have_audio = true;
            } else if (index >= 0 && index < plan->segment_count && !pieces[index].blob[0]) {
                piece.frames = plan->segments[index].frames;
                pieces[index] = piece;
                have++; /* each segment once: a repeated one does not count twice */
            }
            if (atomic_load(&run->cancel)) {
                snprintf(err, sizeof err, "cancelled");
                goto end;
            }
        }
        if (have != plan->segment_count || !have_audio) {
            snprintf(err, sizeof err, "the assembly names %d of %d segments%s", have,
                     plan->segment_count, have_audio ? "" : " and no audio");
            goto end;
        }
        spec.plan = plan;
        spec.pieces = pieces;
        spec.audio = &audio;
    } else {
        cf_render_opts_t fo = ex->opts.fetch;
        fo.cancel = &run->cancel;
        fo.blob_resolver = s_resolve_blob;
        fo.blob_arg = &resolver;
        fo.work_parent = ex->opts.work_parent;
        int segs[1] = {run->index};
        job = cf_render_job_for_plan(&plan, segs, run->kind == CF_TASK_SEGMENT ? 1 : 0,
                                     run->kind == CF_TASK_AUDIO, &fo, err, sizeof err);
        if (!job)
            goto end;
        const cf_plan_t *jp = cf_render_job_plan(job);
        local = calloc((size_t)jp->clip_count + 1, sizeof *local);
        if (!local) {
            snprintf(err, sizeof err, "out of memory");
            goto end;
        }
        for (int i = 0; i < jp->clip_count; i++)
            local[i] = cf_render_job_source_path(job, i);
        spec.plan = jp;
        spec.local_paths = local;
        spec.segment = run->index;
    }
    task = cf_task_start(ex->opts.binary, &spec, &ex->opts.limits, err, sizeof err);
    if (!task)
        goto end;
    bool cancel_sent = false;
    while (!finished) {
        if (atomic_load(&run->cancel) && !cancel_sent) {
            cf_task_cancel(task);
            cancel_sent = true;
        }
        int wait = cf_task_timeout_ms(task);
        if (wait < 0 || wait > 200)
            wait = 200;
        struct pollfd pfd = {cf_task_fd(task), POLLIN, 0};
        poll(&pfd, 1, wait);
        cf_task_event_t ev;
        switch (cf_task_read(task, &ev)) {
            case CF_TASK_PROGRESS:
                frames = ev.frames;
                break;
            case CF_TASK_DONE:
                if (run->kind == CF_TASK_ASSEMBLE &&
                    s_upload(ex, run, json_object_get(root, "destination"), &ev.piece, err,
                             sizeof err) < 0) {
                    refused = true; /* not worth another attempt */
                    finished = true;
                    break;
                }
                atomic_store(&run->released, true);
                s_reply(out, run, CF_MSG_DONE, NULL, 0, &ev.piece);
                pthread_mutex_lock(&ex->lock);
                ex->stats.done++;
                pthread_mutex_unlock(&ex->lock);
                s_count_end(ex, run, "done", ev.piece.seconds);
                cf_log_info("executor", "%s/%d (%s) done: %llu bytes in %.2f s", run->comp,
                            run->index, cf_task_kind_name(run->kind),
                            (unsigned long long)ev.piece.bytes, ev.piece.seconds);
                finished = true;
                break;
            case CF_TASK_FAILED:
                snprintf(err, sizeof err, "%s",
                         ev.error[0] ? ev.error : "the encoder process failed");
                finished = true;
                break;
            case CF_TASK_NONE:
                break;
        }
        if (!finished && s_now_ms() - last_sent >= S_PROGRESS_MS) {
            s_reply(out, run, CF_MSG_PROGRESS, NULL, frames, NULL);
            last_sent = s_now_ms();
        }
    }
    if (err[0] && finished)
        goto end;
    err[0] = '\0';
end:
    if (err[0]) {
        bool cancelled = atomic_load(&run->cancel);
        pthread_mutex_lock(&ex->lock);
        if (cancelled)
            ex->stats.cancelled++;
        else
            ex->stats.failed++;
        pthread_mutex_unlock(&ex->lock);
        cf_log_warn("executor", "%s/%d (%s) %s: %s", run->comp, run->index,
                    cf_task_kind_name(run->kind), cancelled ? "cancelled" : "failed", err);
        s_count_end(ex, run, cancelled ? "cancelled" : "failed", 0);
        atomic_store(&run->released, true);
        if (out && !cancelled)
            s_reply_failed(out, run, err, !refused);
    }
    cf_task_destroy(&task);
    free(local);
    free(pieces);
    cf_render_job_destroy(&job);
    cf_plan_destroy(&plan);
    free(plan_text);
    json_decref(root);
    zsock_destroy(&out);
    atomic_store(&run->released, true);
    atomic_store(&run->finished, true);
    return NULL;
}
#endif

/* ------------------------------------------------------------------ the loop */

/* The slots in use: the tasks that have not sent their last reply. */
static int s_busy(cf_executor_t *ex)
{
    int busy = 0;
    pthread_mutex_lock(&ex->lock);
    for (const s_run_t *r = ex->runs; r; r = r->next)
        busy += !atomic_load(&r->released);
    pthread_mutex_unlock(&ex->lock);
    return busy;
}

static void s_report_load(cf_executor_t *ex)
{
    int busy = s_busy(ex);
    cf_metric_set(ex->m_active, NULL, busy);
    if (ex->opts.on_load)
        ex->opts.on_load(ex->opts.on_load_arg, ex->opts.slots - busy, busy);
}

static bool s_offers(const cf_executor_t *ex, const char *encoder)
{
    if (!ex->encoders)
        return true;
    for (int i = 0; i < ex->encoder_count; i++)
        if (!strcmp(ex->encoders[i], encoder))
            return true;
    return false;
}

static void s_on_assign(cf_executor_t *ex, zsock_t *out, const char *from, const cf_msg_t *msg)
{
    const cf_msg_assign_t *a = &msg->assign;
    s_run_t probe = {.epoch = a->epoch, .index = (int)a->segment, .attempt = (int)a->attempt};
    snprintf(probe.comp, sizeof probe.comp, "%s", a->composition);
    snprintf(probe.coordinator, sizeof probe.coordinator, "%s", from);
    const char *refuse = NULL;
    char why[160];
    if (a->kind > CF_TASK_ASSEMBLE) {
        refuse = "unknown task kind";
    } else if (a->kind == CF_TASK_SEGMENT && !s_offers(ex, a->encoder)) {
        snprintf(why, sizeof why, "this node does not offer %s", a->encoder);
        refuse = why;
    } else {
        int busy = s_busy(ex);
        if (busy >= ex->opts.slots) {
            snprintf(why, sizeof why, "no free slot (%d of %d busy)", busy, ex->opts.slots);
            refuse = why;
        }
    }
    if (refuse) {
        pthread_mutex_lock(&ex->lock);
        ex->stats.rejected++;
        pthread_mutex_unlock(&ex->lock);
        s_reply(out, &probe, CF_MSG_REJECT, refuse, 0, NULL);
        return;
    }
    s_run_t *run = calloc(1, sizeof *run);
    if (!run || !(run->task_json = strdup(a->task))) {
        free(run);
        s_reply(out, &probe, CF_MSG_REJECT, "out of memory", 0, NULL);
        return;
    }
    *run = (s_run_t){.ex = ex,
                     .epoch = a->epoch,
                     .index = (int)a->segment,
                     .attempt = (int)a->attempt,
                     .kind = (cf_task_kind_t)a->kind,
                     .task_json = run->task_json};
    snprintf(run->comp, sizeof run->comp, "%s", a->composition);
    snprintf(run->coordinator, sizeof run->coordinator, "%s", from);
    snprintf(run->encoder, sizeof run->encoder, "%s", a->encoder);
    run->frame_start = (int64_t)a->frame_start;
    run->frames = (int64_t)a->frame_count;
    atomic_init(&run->cancel, false);
    atomic_init(&run->released, false);
    atomic_init(&run->finished, false);
    s_reply(out, run, CF_MSG_ACCEPT, NULL, 0, NULL);
    if (pthread_create(&run->thread, NULL, s_run_thread, run) != 0) {
        s_reply(out, run, CF_MSG_FAILED, "cannot start a task thread", 0, NULL);
        free(run->task_json);
        free(run);
        return;
    }
    pthread_mutex_lock(&ex->lock);
    run->next = ex->runs;
    ex->runs = run;
    ex->running++;
    ex->stats.accepted++;
    ex->stats.running = ex->running;
    pthread_mutex_unlock(&ex->lock);
    cf_log_info("executor", "%s/%d (%s, attempt %d) accepted from %.8s", run->comp, run->index,
                cf_task_kind_name(run->kind), run->attempt, from);
    s_report_load(ex);
}

static void s_on_cancel(cf_executor_t *ex, const cf_msg_t *msg)
{
    pthread_mutex_lock(&ex->lock);
    for (s_run_t *r = ex->runs; r; r = r->next)
        if (!strcmp(r->comp, msg->cancel.composition))
            atomic_store(&r->cancel, true);
    pthread_mutex_unlock(&ex->lock);
}

/* Joins the task threads that finished. */
static void s_reap(cf_executor_t *ex, bool all)
{
    bool changed = false;
    pthread_mutex_lock(&ex->lock);
    s_run_t **link = &ex->runs;
    while (*link) {
        s_run_t *r = *link;
        if (all)
            atomic_store(&r->cancel, true);
        if (!all && !atomic_load(&r->finished)) {
            link = &r->next;
            continue;
        }
        *link = r->next;
        pthread_mutex_unlock(&ex->lock);
        pthread_join(r->thread, NULL);
        pthread_mutex_lock(&ex->lock);
        ex->running--;
        ex->stats.running = ex->running;
        free(r->task_json);
        free(r);
        changed = true;
    }
    pthread_mutex_unlock(&ex->lock);
    if (changed)
        s_report_load(ex);
}

static void *s_thread(void *arg)
{
    cf_executor_t *ex = arg;
    zsock_t *inbox = cf_work_bus_inbox(ex->my_id, CF_WORK_EXEC);
    zsock_t *out = cf_work_bus_sender(ex->my_id);
    if (!inbox || !out) {
        cf_log_error("executor", "cannot open the work bus: this node takes no tasks");
    } else {
        zsock_set_rcvtimeo(inbox, 100);
        while (!atomic_load(&ex->stop)) {
            char from[37];
            cf_msg_t msg;
            if (cf_work_bus_recv(inbox, from, &msg) == 0) {
                if (msg.type == CF_MSG_ASSIGN)
                    s_on_assign(ex, out, from, &msg);
                else if (msg.type == CF_MSG_CANCEL)
                    s_on_cancel(ex, &msg);
                cf_msg_clear(&msg);
            }
            s_reap(ex, false);
        }
    }
    /* Stopping: cancel whatever runs and wait for it (each child is killed
     * after its grace). */
    for (s_run_t *r = ex->runs; r; r = r->next)
        atomic_store(&r->cancel, true);
    s_reap(ex, true);
    zsock_destroy(&inbox);
    zsock_destroy(&out);
    return NULL;
}

cf_executor_t *cf_executor_new(const cf_executor_options_t *opts, char *err, size_t errlen)
{
    if (!opts->node || !opts->blobs || !opts->blob_dir || !opts->work_parent) {
        snprintf(err, errlen, "executor: node, blob store and work directory are required");
        return NULL;
    }
    cf_executor_t *ex = calloc(1, sizeof *ex);
    if (!ex) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    ex->opts = *opts;
    if (ex->opts.slots < 1)
        ex->opts.slots = 1;
    if (ex->opts.threads <= 0) {
        int cores = cf_cpu_count();
        ex->opts.threads = cores > ex->opts.slots ? cores / ex->opts.slots : 1;
    }
    snprintf(ex->my_id, sizeof ex->my_id, "%s", cf_node_id(opts->node));
    if (opts->encoders && opts->encoder_count > 0) {
        ex->encoders = calloc((size_t)opts->encoder_count, sizeof(char *));
        for (int i = 0; ex->encoders && i < opts->encoder_count; i++)
            if ((ex->encoders[ex->encoder_count] = strdup(opts->encoders[i])))
                ex->encoder_count++;
    }
    ex->opts.encoders = NULL;
    char why[256];
    cf_metrics_t *m = opts->metrics;
    ex->m_active = cf_metrics_add(m, CF_METRIC_GAUGE, "active_segments",
                                  "Tasks (segments, audio, assembly) running on this node now.",
                                  NULL, NULL, 0, why, sizeof why);
    ex->m_segments = cf_metrics_add(m, CF_METRIC_COUNTER, "segments_total",
                                    "Tasks this node ran to an end, by result.", "status", NULL, 0,
                                    why, sizeof why);
    ex->m_encode_seconds = cf_metrics_add(
        m, CF_METRIC_HISTOGRAM, "segment_encode_seconds",
        "Encode time per segment this node encoded (its child process, start to stored blob).",
        "encoder", cf_metrics_encode_buckets, cf_metrics_encode_bucket_count, why, sizeof why);
    ex->m_renders = cf_metrics_add(m, CF_METRIC_COUNTER, "renders_total",
                                   "Tasks of compositions this node rendered, by result "
                                   "(completed, failed, cancelled).",
                                   "result", NULL, 0, why, sizeof why);
    /* Scratch a node killed with -9 left behind. */
    cf_task_sweep(ex->opts.work_parent);
    pthread_mutex_init(&ex->lock, NULL);
    atomic_init(&ex->stop, false);
    s_report_load(ex); /* before its thread changes what it reads */
    if (pthread_create(&ex->thread, NULL, s_thread, ex) != 0) {
        snprintf(err, errlen, "cannot start the executor thread");
        pthread_mutex_destroy(&ex->lock);
        for (int i = 0; i < ex->encoder_count; i++)
            free(ex->encoders[i]);
        free(ex->encoders);
        free(ex);
        return NULL;
    }
    cf_node_set_executor(opts->node, true);
    return ex;
}

void cf_executor_destroy(cf_executor_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_executor_t *ex = *self_p;
    cf_node_set_executor(ex->opts.node, false);
    atomic_store(&ex->stop, true);
    pthread_join(ex->thread, NULL);
    pthread_mutex_destroy(&ex->lock);
    for (int i = 0; i < ex->encoder_count; i++)
        free(ex->encoders[i]);
    free(ex->encoders);
    free(ex);
    *self_p = NULL;
}

void cf_executor_stats(cf_executor_t *self, cf_executor_stats_t *stats)
{
    pthread_mutex_lock(&self->lock);
    *stats = self->stats;
    pthread_mutex_unlock(&self->lock);
}
