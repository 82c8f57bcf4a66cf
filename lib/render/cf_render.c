#define _GNU_SOURCE
#include "cf_render.h"

#include <errno.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cf_cpus.h"
#include "cf_blob.h"
#include "cf_log.h"
#include "cf_media.h"
#include "cf_render_stages.h"
#include "cf_workspace.h"

/* Shared by the worker threads of one render. Task 0 is the audio, task
 * 1 + i is segment order[i]. */
typedef struct {
    const cf_render_job_t *job;
    cf_blob_store_t *store;
    cf_render_piece_t *pieces; /* per segment */
    cf_render_piece_t audio;
    int *order;
    int task_count;
    int threads_per_task;
    int max_lookahead;
    atomic_int next_task;
    atomic_int segments_done;
    atomic_int_fast64_t frames_done;
    atomic_bool stop;
    pthread_mutex_t lock;
    char error[1024]; /* the first failure, under lock */
} s_shared_t;

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void s_record_error(s_shared_t *sh, const char *msg)
{
    pthread_mutex_lock(&sh->lock);
    if (!sh->error[0] && !atomic_load(&sh->stop))
        snprintf(sh->error, sizeof sh->error, "%s", msg);
    atomic_store(&sh->stop, true);
    pthread_mutex_unlock(&sh->lock);
}

static void *s_worker(void *arg)
{
    s_shared_t *sh = arg;
    cf_media_ctl_t ctl = {.frames_done = &sh->frames_done,
                          .cancel = &sh->stop,
                          .threads = sh->threads_per_task,
                          .max_lookahead = sh->max_lookahead};
    for (;;) {
        int task = atomic_fetch_add(&sh->next_task, 1);
        if (task >= sh->task_count || atomic_load(&sh->stop))
            break;
        char err[1024] = "";
        int rc;
        if (task == 0) {
            rc = cf_render_encode_audio(sh->job, sh->store, &ctl, &sh->audio, err, sizeof err);
        } else {
            int seg = sh->order[task - 1];
            rc = cf_render_encode_segment(sh->job, seg, sh->store, &ctl, &sh->pieces[seg], err,
                                          sizeof err);
            if (rc == 0)
                atomic_fetch_add(&sh->segments_done, 1);
        }
        if (rc < 0) {
            s_record_error(sh, err);
            break;
        }
    }
    return NULL;
}

static void s_report(const cf_render_opts_t *opts, const char *phase, int64_t done, int64_t total,
                     int segs_done, int segs_total)
{
    if (!opts->progress)
        return;
    cf_render_progress_t p = {phase, done, total, segs_done, segs_total};
    opts->progress(opts->progress_arg, &p);
}

static bool s_cancelled(const cf_render_opts_t *opts)
{
    return opts->cancel && atomic_load(opts->cancel);
}

/* What a render costs in memory, fitted to measurements of x264 on the
 * development machine (1080p, 720p and 360p outputs; benchmarks/README.md):
 *   S_FIXED_BYTES                     the process: libraries, audio, muxing
 *   per job, per source pixel         a decoder (its reference frames)
 *   per job, per output pixel         scaler + encoder with no lookahead,
 *                                     more per extra frame thread
 *   per lookahead frame, output pixel the frames x264 buffers to plan rates
 * x265 is counted twice as heavy. A shorter lookahead costs little: at
 * 1080p CRF 23, 7 frames instead of 40 changed size by 2 % and PSNR by
 * 0.02 dB; with none at all, mb-tree is off and the stream doubles. */
#define S_FIXED_BYTES            (80LL << 20)
#define S_SOURCE_BYTES_PER_PIXEL 10
#define S_JOB_BYTES_PER_PIXEL    46
#define S_THREAD_BYTES_PER_PIXEL 24
#define S_FRAME_BYTES_PER_PIXEL  3.3
#define S_MIN_LOOKAHEAD          5

typedef struct {
    int jobs, threads;
    int max_lookahead; /* for cf_media_ctl_t */
    int lookahead;     /* in effect */
} s_fit_t;

/* Picks how many segments run at once (at most JOBS), the encoder threads of
 * each and the lookahead so that the estimate fits BUDGET: more jobs first,
 * then more threads, each with at least S_MIN_LOOKAHEAD frames of lookahead
 * (or the preset's, when it has fewer). */
static s_fit_t s_fit_memory(const cf_plan_output_t *out, int64_t source_pixels, int64_t budget,
                            int cpus, int jobs)
{
    int full = cf_media_preset_lookahead(out);
    s_fit_t fit = {jobs, cpus / jobs > 0 ? cpus / jobs : 1, 0, full};
    if (budget < 0 || out->encoder == CF_ENCODER_GPU)
        return fit;
    double weight = out->codec == CF_CODEC_HEVC ? 2.0 : 1.0;
    double pixels = (double)out->width * out->height;
    double frame = pixels * S_FRAME_BYTES_PER_PIXEL * weight;
    int min_la = full < S_MIN_LOOKAHEAD ? full : S_MIN_LOOKAHEAD;
    double la = 0;
    for (int j = jobs; j >= 1; j--) {
        for (int t = cpus / j > 0 ? cpus / j : 1; t >= 1; t--) {
            double job =
                (double)source_pixels * S_SOURCE_BYTES_PER_PIXEL +
                pixels * weight * (S_JOB_BYTES_PER_PIXEL + (t - 1) * S_THREAD_BYTES_PER_PIXEL);
            la = ((double)(budget - S_FIXED_BYTES) / j - job) / frame;
            if (la >= min_la) {
                fit.jobs = j;
                fit.threads = t;
                if (la < full)
                    fit.max_lookahead = fit.lookahead = (int)la;
                return fit;
            }
        }
    }
    /* Not even one single-threaded job fits with a lookahead: run that with
     * as little lookahead as there is room for, and say so. */
    fit.jobs = fit.threads = 1;
    fit.lookahead = la > 0 && la < full ? (int)la : full < 1 ? full : 1;
    fit.max_lookahead = fit.lookahead;
    cf_log_warn("render",
                "%dx%d needs more than the %lld MB memory budget; rendering one segment at a "
                "time with a %d-frame lookahead",
                out->width, out->height, (long long)(budget >> 20), fit.lookahead);
    return fit;
}

int cf_render_run(const cf_comp_t *comp, const char *out_path, const cf_render_opts_t *opts,
                  cf_render_result_t *result, char *err, size_t errlen)
{
    cf_render_opts_t defaults = {0};
    if (!opts)
        opts = &defaults;
    if (result)
        memset(result, 0, sizeof *result);
    double t0 = s_now();
    int rc = -1;
    cf_workspace_t *ws = NULL;
    cf_blob_store_t *store = NULL;
    cf_render_job_t *job = NULL;
    s_shared_t sh = {0};
    pthread_t *threads = NULL;
    int started = 0;
    pthread_mutex_init(&sh.lock, NULL);

    if (!out_path && !opts->output_store) {
        snprintf(err, errlen, "no output: give a path or an output store");
        goto end;
    }
    /* Fail before any work when the output cannot be written. */
    if (out_path) {
        char *out_copy = strdup(out_path);
        if (!out_copy) {
            snprintf(err, errlen, "out of memory");
            goto end;
        }
        const char *out_dir = dirname(out_copy);
        if (access(out_dir, W_OK) < 0) {
            snprintf(err, errlen, "cannot write %s: %s: %s", out_path, out_dir, strerror(errno));
            free(out_copy);
            goto end;
        }
        free(out_copy);
        struct stat out_st;
        if (stat(out_path, &out_st) == 0 && S_ISDIR(out_st.st_mode)) {
            snprintf(err, errlen, "cannot write %s: it is a directory", out_path);
            goto end;
        }
    }

    /* The encoded pieces live in a blob store of this render's own, gone
     * with it (another render of the same bytes must not lose them). */
    char path[4096];
    ws = cf_workspace_new(opts->work_parent, "clipfarm-pieces", err, errlen);
    if (!ws)
        goto end;
    if (cf_workspace_path(ws, "blobs", path, sizeof path) < 0) {
        snprintf(err, errlen, "workspace path too long");
        goto end;
    }
    if (!(store = cf_blob_store_new(path, err, errlen)))
        goto end;

    /* 1. Prepare: fetch, probe, plan. */
    if (!(job = cf_render_prepare(comp, opts, err, errlen)))
        goto end;
    const cf_plan_t *plan = cf_render_job_plan(job);

    /* 2, 3. Segments and audio on worker threads. */
    int cpus = cf_cpu_count();
    int jobs = opts->jobs > 0 ? opts->jobs : cpus;
    int tasks = plan->segment_count + 1;
    if (jobs > plan->segment_count)
        jobs = plan->segment_count; /* the audio task is short and takes no slot */
    sh.job = job;
    sh.store = store;
    sh.task_count = tasks;
    int64_t budget = opts->memory_budget ? opts->memory_budget : CF_RENDER_DEFAULT_MEMORY;
    s_fit_t fit = s_fit_memory(&plan->output, cf_render_job_source_pixels(job), budget, cpus, jobs);
    jobs = fit.jobs;
    sh.threads_per_task = fit.threads;
    sh.max_lookahead = fit.max_lookahead;
    sh.order = calloc((size_t)plan->segment_count, sizeof(int));
    sh.pieces = calloc((size_t)plan->segment_count, sizeof *sh.pieces);
    threads = calloc((size_t)jobs, sizeof *threads);
    if (!sh.order || !sh.pieces || !threads) {
        snprintf(err, errlen, "out of memory");
        goto end;
    }
    cf_plan_dispatch_order(plan, sh.order);
    const char *enc_name = cf_render_job_encoder(job);
    cf_log_debug("render",
                 "%lld frames at %d/%d fps in %d segments of %d frames, %s, %d jobs x %d "
                 "threads, lookahead %d",
                 (long long)plan->total_frames, plan->output.fps_num, plan->output.fps_den,
                 plan->segment_count, plan->segment_frames, enc_name, jobs, sh.threads_per_task,
                 fit.lookahead);

    int passes = plan->output.video_bitrate > 0 && plan->output.encoder == CF_ENCODER_CPU ? 2 : 1;
    int64_t total_work = plan->total_frames * passes;
    s_report(opts, "encode", 0, total_work, 0, plan->segment_count);
    for (; started < jobs; started++) {
        if (pthread_create(&threads[started], NULL, s_worker, &sh) != 0) {
            s_record_error(&sh, "cannot start a worker thread");
            break;
        }
    }
    int interval = opts->progress_interval_ms > 0 ? opts->progress_interval_ms : 100;
    for (;;) {
        bool all_done = atomic_load(&sh.next_task) >= tasks + started;
        if (s_cancelled(opts) && !atomic_load(&sh.stop)) {
            pthread_mutex_lock(&sh.lock);
            if (!sh.error[0])
                snprintf(sh.error, sizeof sh.error, "cancelled");
            atomic_store(&sh.stop, true);
            pthread_mutex_unlock(&sh.lock);
        }
        s_report(opts, "encode", atomic_load(&sh.frames_done), total_work,
                 atomic_load(&sh.segments_done), plan->segment_count);
        /* Every worker took a task past the end: all have finished theirs. */
        if (all_done || atomic_load(&sh.stop))
            break;
        s_sleep_ms(interval);
    }
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    started = 0;
    if (sh.error[0] || atomic_load(&sh.stop)) {
        snprintf(err, errlen, "%s", sh.error[0] ? sh.error : "cancelled");
        goto end;
    }
    s_report(opts, "encode", atomic_load(&sh.frames_done), total_work,
             atomic_load(&sh.segments_done), plan->segment_count);
    if (atomic_load(&sh.segments_done) != plan->segment_count) {
        snprintf(err, errlen, "only %d of %d segments were encoded", atomic_load(&sh.segments_done),
                 plan->segment_count);
        goto end;
    }

    /* 4. Assemble. */
    s_report(opts, "stitch", 0, 1, plan->segment_count, plan->segment_count);
    cf_media_ctl_t ctl = {.cancel = opts->cancel};
    cf_render_piece_t output;
    if (cf_render_assemble(plan, store, sh.pieces, &sh.audio, &ctl, out_path, opts->output_store,
                           &output, err, errlen) < 0)
        goto end;
    s_report(opts, "stitch", 1, 1, plan->segment_count, plan->segment_count);
    if (result) {
        snprintf(result->encoder, sizeof result->encoder, "%s", enc_name);
        result->plan = cf_render_job_take_plan(job);
        result->jobs = jobs;
        result->lookahead = fit.lookahead;
        result->seconds = s_now() - t0;
        memcpy(result->output_blob, output.blob, sizeof result->output_blob);
        result->output_bytes = output.bytes;
    }
    rc = 0;
end:
    if (started) {
        atomic_store(&sh.stop, true);
        for (int i = 0; i < started; i++)
            pthread_join(threads[i], NULL);
    }
    free(threads);
    free(sh.pieces);
    free(sh.order);
    pthread_mutex_destroy(&sh.lock);
    cf_render_job_destroy(&job);
    cf_blob_store_destroy(&store);
    cf_workspace_destroy(&ws);
    return rc;
}

void cf_render_result_clear(cf_render_result_t *result)
{
    if (!result)
        return;
    cf_plan_destroy(&result->plan);
}
