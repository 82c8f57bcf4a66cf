#define _GNU_SOURCE
#include "cf_render_stages.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cf_fetch.h"
#include "cf_log.h"
#include "cf_workspace.h"

struct cf_render_job_t {
    cf_plan_t *plan;
    char **sources;         /* a local file per clip; NULL where not needed */
    cf_source_pin_t **pins; /* the cache entries those files are */
    char **given;           /* the sources as the composition gave them */
    int clip_count;
    int64_t source_pixels;
    cf_workspace_t *ws;    /* scratch: downloads without a cache, 2-pass logs */
    atomic_uint next_name; /* for scratch file names */
};

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Replaces every FROM in the NUL-terminated TEXT (capacity CAP) with TO,
 * cutting what no longer fits. */
static void s_replace_all(char *text, size_t cap, const char *from, const char *to)
{
    size_t from_len = strlen(from), to_len = strlen(to);
    if (!from_len || !cap)
        return;
    char *hit = strstr(text, from);
    while (hit) {
        size_t head = (size_t)(hit - text), tail = strlen(hit + from_len);
        if (head + to_len >= cap)
            to_len = cap - head - 1;
        size_t keep = head + to_len + tail < cap ? tail : cap - 1 - head - to_len;
        memmove(text + head + to_len, hit + from_len, keep);
        memcpy(text + head, to, to_len);
        text[head + to_len + keep] = '\0';
        hit = strstr(text + head + to_len, from);
    }
}

/* Errors name the source as the composition gave it, never the node's own
 * paths (cache files, the workspace, the blob store): a client reads them. */
static void s_scrub(const cf_render_job_t *job, cf_blob_store_t *store, char *err, size_t errlen)
{
    for (int i = 0; i < job->clip_count; i++)
        if (job->sources[i] && job->given[i])
            s_replace_all(err, errlen, job->sources[i], job->given[i]);
    if (job->ws)
        s_replace_all(err, errlen, cf_workspace_dir(job->ws), "<workspace>");
    if (store)
        s_replace_all(err, errlen, cf_blob_dir(store), "<blobs>");
}

static void s_report(const cf_render_opts_t *opts, const char *phase, int64_t done, int64_t total)
{
    if (!opts->progress)
        return;
    cf_render_progress_t p = {phase, done, total, 0, 0};
    opts->progress(opts->progress_arg, &p);
}

static bool s_cancelled(const cf_render_opts_t *opts)
{
    return opts->cancel && atomic_load(opts->cancel);
}

/* Progress while a download runs (the caller's heartbeat and cancel checks
 * ride on it). */
typedef struct {
    const cf_render_opts_t *opts;
    int clip, clips;
} s_fetch_tick_t;

static void s_fetch_tick(void *arg, uint64_t bytes, uint64_t total)
{
    (void)bytes;
    (void)total;
    s_fetch_tick_t *t = arg;
    s_report(t->opts, "fetch", t->clip, t->clips);
}

/* Picks the encoder for "auto" and checks a "gpu" request: NVENC must open. */
static int s_resolve_encoder(const cf_comp_t *comp, cf_encoder_t *encoder, char *err, size_t errlen)
{
    *encoder = CF_ENCODER_CPU;
    if (comp->encoder == CF_ENCODER_CPU)
        return 0;
    char why[512];
    if (cf_media_gpu_check(comp->video_codec, why, sizeof why) == 0) {
        *encoder = CF_ENCODER_GPU;
        return 0;
    }
    if (comp->encoder == CF_ENCODER_GPU) {
        snprintf(err, errlen, "output.encoder gpu: %s", why);
        return -1;
    }
    cf_log_debug("render", "encoder auto: using the CPU (%s)", why);
    return 0;
}

/* A job for CLIPS clips with its workspace, nothing fetched yet. */
static cf_render_job_t *s_job_new(int clips, const cf_render_opts_t *opts, char *err, size_t errlen)
{
    cf_render_job_t *job = calloc(1, sizeof *job);
    if (!job) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    job->clip_count = clips;
    job->sources = calloc((size_t)clips + 1, sizeof(char *));
    job->pins = calloc((size_t)clips + 1, sizeof(cf_source_pin_t *));
    job->given = calloc((size_t)clips + 1, sizeof(char *));
    if (!job->sources || !job->pins || !job->given) {
        snprintf(err, errlen, "out of memory");
        cf_render_job_destroy(&job);
        return NULL;
    }
    job->ws = cf_workspace_new(opts->work_parent, "clipfarm-render", err, errlen);
    if (!job->ws)
        cf_render_job_destroy(&job);
    return job;
}

/* Fetches clip I's source SOURCE into the job (reporting progress as clip
 * I of CLIPS). */
static int s_fetch(cf_render_job_t *job, int i, const char *source, const cf_render_opts_t *opts,
                   char *err, size_t errlen)
{
    char cache_dir[4096];
    if (!opts->source_cache) {
        if (cf_workspace_path(job->ws, "src", cache_dir, sizeof cache_dir) < 0 ||
            (mkdir(cache_dir, 0700) < 0 && errno != EEXIST)) {
            snprintf(err, errlen, "workspace: cannot create a download directory");
            return -1;
        }
    }
    s_fetch_tick_t tick = {opts, i, job->clip_count};
    cf_fetch_opts_t fetch = {.cache = opts->source_cache,
                             .cache_dir = opts->source_cache ? NULL : cache_dir,
                             .blob_resolver = opts->blob_resolver,
                             .blob_arg = opts->blob_arg,
                             .cancel = opts->cancel,
                             .policy = opts->policy,
                             .s3 = opts->s3,
                             .tick = s_fetch_tick,
                             .tick_arg = &tick};
    if (s_cancelled(opts)) {
        snprintf(err, errlen, "cancelled");
        return -1;
    }
    if (!(job->given[i] = strdup(source))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    char why[1024];
    if (cf_fetch_source(source, &fetch, &job->sources[i], &job->pins[i], why, sizeof why) < 0) {
        snprintf(err, errlen, "clips[%d].source: %s", i, why);
        return -1;
    }
    return 0;
}

cf_render_job_t *cf_render_prepare(const cf_comp_t *comp, const cf_render_opts_t *opts, char *err,
                                   size_t errlen)
{
    cf_render_job_t *job = s_job_new(comp->clip_count, opts, err, errlen);
    cf_plan_source_t *infos = calloc((size_t)comp->clip_count + 1, sizeof *infos);
    if (!job || !infos) {
        if (job)
            snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (int i = 0; i < comp->clip_count; i++) {
        s_report(opts, "fetch", i, comp->clip_count);
        if (s_fetch(job, i, comp->clips[i].source, opts, err, errlen) < 0)
            goto fail;
    }
    s_report(opts, "fetch", comp->clip_count, comp->clip_count);

    for (int i = 0; i < comp->clip_count; i++) {
        s_report(opts, "probe", i, comp->clip_count);
        cf_media_info_t info;
        char why[1024];
        if (cf_media_probe(job->sources[i], &info, why, sizeof why) < 0) {
            snprintf(err, errlen, "clips[%d].source: %s", i, why);
            goto fail;
        }
        infos[i].duration_us = info.duration_us;
        infos[i].has_audio = info.has_audio;
        if ((int64_t)info.width * info.height > job->source_pixels)
            job->source_pixels = (int64_t)info.width * info.height;
        cf_log_debug("render", "clip %d: %dx%d %d/%d fps %.3f s %s audio", i, info.width,
                     info.height, info.fps_num, info.fps_den, (double)info.duration_us / 1e6,
                     info.has_audio ? "with" : "no");
    }
    s_report(opts, "probe", comp->clip_count, comp->clip_count);

    cf_encoder_t encoder = opts->encoder;
    if (encoder == CF_ENCODER_AUTO && s_resolve_encoder(comp, &encoder, err, errlen) < 0)
        goto fail;
    if (!(job->plan = cf_plan_new(comp, infos, encoder, err, errlen)))
        goto fail;
    free(infos);
    return job;
fail:
    if (job)
        s_scrub(job, NULL, err, errlen);
    free(infos);
    cf_render_job_destroy(&job);
    return NULL;
}

cf_render_job_t *cf_render_job_for_plan(cf_plan_t **plan_p, const int *segments, int count,
                                        bool audio, const cf_render_opts_t *opts, char *err,
                                        size_t errlen)
{
    cf_plan_t *plan = *plan_p;
    *plan_p = NULL;
    cf_render_job_t *job = plan ? s_job_new(plan->clip_count, opts, err, errlen) : NULL;
    bool *needed = plan ? calloc((size_t)plan->clip_count + 1, sizeof *needed) : NULL;
    if (!plan)
        snprintf(err, errlen, "no plan");
    if (!job || !needed) {
        if (job)
            snprintf(err, errlen, "out of memory");
        goto fail;
    }
    job->plan = plan;
    plan = NULL;
    for (int k = 0; k < count; k++) {
        int s = segments[k];
        if (s < 0 || s >= job->plan->segment_count) {
            snprintf(err, errlen, "segment %d is not in the plan (%d segments)", s,
                     job->plan->segment_count);
            goto fail;
        }
        const cf_plan_segment_t *seg = &job->plan->segments[s];
        for (int p = 0; p < seg->part_count; p++)
            if (seg->parts[p].clip >= 0 && seg->parts[p].clip < job->clip_count)
                needed[seg->parts[p].clip] = true;
    }
    for (int i = 0; audio && i < job->clip_count; i++)
        needed[i] = needed[i] || job->plan->clips[i].has_audio;
    for (int i = 0; i < job->clip_count; i++) {
        if (!needed[i])
            continue;
        s_report(opts, "fetch", i, job->clip_count);
        if (s_fetch(job, i, job->plan->clips[i].source, opts, err, errlen) < 0)
            goto fail;
    }
    s_report(opts, "fetch", job->clip_count, job->clip_count);
    free(needed);
    return job;
fail:
    if (job)
        s_scrub(job, NULL, err, errlen);
    free(needed);
    cf_plan_destroy(&plan);
    cf_render_job_destroy(&job);
    return NULL;
}

void cf_render_job_destroy(cf_render_job_t **job_p)
{
    if (!job_p || !*job_p)
        return;
    cf_render_job_t *job = *job_p;
    for (int i = 0; i < job->clip_count; i++) {
        if (job->sources)
            free(job->sources[i]);
        if (job->pins)
            cf_source_pin_release(&job->pins[i]);
        if (job->given)
            free(job->given[i]);
    }
    free(job->sources);
    free(job->pins);
    free(job->given);
    cf_plan_destroy(&job->plan);
    cf_workspace_destroy(&job->ws);
    free(job);
    *job_p = NULL;
}

const cf_plan_t *cf_render_job_plan(const cf_render_job_t *job)
{
    return job->plan;
}

int64_t cf_render_job_source_pixels(const cf_render_job_t *job)
{
    return job->source_pixels;
}

const char *cf_render_job_encoder(const cf_render_job_t *job)
{
    const cf_plan_output_t *out = &job->plan->output;
    if (out->encoder == CF_ENCODER_GPU)
        return out->codec == CF_CODEC_HEVC ? "hevc_nvenc" : "h264_nvenc";
    return out->codec == CF_CODEC_HEVC ? "libx265" : "libx264";
}

const char *cf_render_job_source_path(const cf_render_job_t *job, int i)
{
    return i >= 0 && i < job->clip_count ? job->sources[i] : NULL;
}

cf_plan_t *cf_render_job_take_plan(cf_render_job_t *job)
{
    cf_plan_t *plan = job->plan;
    job->plan = NULL;
    return plan;
}

/* A fresh scratch name in STORE's directory for files on their way in. */
static int s_scratch(const cf_render_job_t *job, cf_blob_store_t *store, const char *what,
                     const char *ext, char *path, size_t pathlen)
{
    unsigned n = atomic_fetch_add(&((cf_render_job_t *)job)->next_name, 1);
    int len = snprintf(path, pathlen, "%s/render-%d-%p-%s-%u%s", cf_blob_tmp_dir(store),
                       (int)getpid(), (const void *)job, what, n, ext);
    return len < 0 || (size_t)len >= pathlen ? -1 : 0;
}

/* Runs one encode stage's ENCODE into a scratch file and adopts it. */
typedef int (*s_encode_fn)(const cf_render_job_t *job, int segment, const char *path,
                           const cf_media_ctl_t *ctl, char *err, size_t errlen);

static int s_encode_video(const cf_render_job_t *job, int segment, const char *path,
                          const cf_media_ctl_t *ctl, char *err, size_t errlen)
{
    return cf_media_encode_segment(job->plan, segment, (const char *const *)job->sources, path, ctl,
                                   err, errlen);
}

static int s_encode_sound(const cf_render_job_t *job, int segment, const char *path,
                          const cf_media_ctl_t *ctl, char *err, size_t errlen)
{
    (void)segment;
    return cf_media_encode_audio(job->plan, (const char *const *)job->sources, path, ctl, err,
                                 errlen);
}

static int s_encode_piece(const cf_render_job_t *job, s_encode_fn encode, int segment,
                          const char *what, const char *ext, int64_t frames, cf_blob_store_t *store,
                          const cf_media_ctl_t *ctl, cf_render_piece_t *piece, char *err,
                          size_t errlen)
{
    double t0 = s_now();
    memset(piece, 0, sizeof *piece);
    char path[4096];
    if (s_scratch(job, store, what, ext, path, sizeof path) < 0) {
        snprintf(err, errlen, "%s: scratch path too long", what);
        return -1;
    }
    cf_media_ctl_t mine = ctl ? *ctl : (cf_media_ctl_t){0};
    mine.work_dir = cf_workspace_dir(job->ws);
    if (encode(job, segment, path, &mine, err, errlen) < 0) {
        unlink(path);
        s_scrub(job, store, err, errlen);
        return -1;
    }
    if (cf_blob_adopt_file(store, path, piece->blob, &piece->bytes, err, errlen) < 0) {
        s_scrub(job, store, err, errlen);
        return -1;
    }
    piece->frames = frames;
    piece->seconds = s_now() - t0;
    return 0;
}

int cf_render_encode_segment(const cf_render_job_t *job, int segment, cf_blob_store_t *store,
                             const cf_media_ctl_t *ctl, cf_render_piece_t *piece, char *err,
                             size_t errlen)
{
    if (segment < 0 || segment >= job->plan->segment_count) {
        snprintf(err, errlen, "segment %d is not in the plan", segment);
        return -1;
    }
    const cf_plan_segment_t *seg = &job->plan->segments[segment];
    for (int p = 0; p < seg->part_count; p++) {
        int clip = seg->parts[p].clip;
        if (clip < 0 || clip >= job->clip_count || !job->sources[clip]) {
            snprintf(err, errlen, "segment %d: clip %d's source was not fetched for it", segment,
                     clip);
            return -1;
        }
    }
    char what[32];
    snprintf(what, sizeof what, "seg%d", segment);
    int rc = s_encode_piece(job, s_encode_video, segment, what, ".mp4", seg->frames, store, ctl,
                            piece, err, errlen);
    if (rc == 0)
        cf_log_debug("render", "segment %d: %lld frames, %llu bytes in %.2f s", segment,
                     (long long)seg->frames, (unsigned long long)piece->bytes, piece->seconds);
    return rc;
}

int cf_render_encode_audio(const cf_render_job_t *job, cf_blob_store_t *store,
                           const cf_media_ctl_t *ctl, cf_render_piece_t *piece, char *err,
                           size_t errlen)
{
    for (int i = 0; i < job->clip_count; i++) {
        if (job->plan->clips[i].has_audio && !job->sources[i]) {
            snprintf(err, errlen, "audio: clip %d's source was not fetched", i);
            return -1;
        }
    }
    return s_encode_piece(job, s_encode_sound, -1, "audio", ".m4a", job->plan->total_samples, store,
                          ctl, piece, err, errlen);
}

/* The path of PIECE in STORE, checked against its recorded size. */
static int s_piece_path(cf_blob_store_t *store, const cf_render_piece_t *piece, const char *what,
                        char *path, size_t pathlen, char *err, size_t errlen)
{
    char why[256];
    struct stat st;
    if (cf_blob_path(store, piece->blob, path, pathlen, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s: %s", what, why);
        return -1;
    }
    if (stat(path, &st) < 0) {
        snprintf(err, errlen, "%s: blob:%s: %s", what, piece->blob, strerror(errno));
        return -1;
    }
    if ((uint64_t)st.st_size != piece->bytes) {
        snprintf(err, errlen, "%s: blob:%s holds %lld bytes, %llu expected", what, piece->blob,
                 (long long)st.st_size, (unsigned long long)piece->bytes);
        return -1;
    }
    return 0;
}

int cf_render_assemble(const cf_plan_t *plan, cf_blob_store_t *store,
                       const cf_render_piece_t *segments, const cf_render_piece_t *audio,
                       const cf_media_ctl_t *ctl, const char *out_path,
                       cf_blob_store_t *output_store, cf_render_piece_t *output, char *err,
                       size_t errlen)
{
    double t0 = s_now();
    int rc = -1;
    char **paths = calloc((size_t)plan->segment_count + 1, sizeof(char *));
    char audio_path[4096], part[4096] = "";
    cf_render_piece_t made = {0};
    cf_media_ctl_t none = {0};
    if (!output_store)
        output_store = store;
    if (!paths) {
        snprintf(err, errlen, "out of memory");
        goto end;
    }
    for (int s = 0; s < plan->segment_count; s++) {
        char path[4096], what[32];
        snprintf(what, sizeof what, "segment %d", s);
        if (s_piece_path(store, &segments[s], what, path, sizeof path, err, errlen) < 0)
            goto end;
        if (!(paths[s] = strdup(path))) {
            snprintf(err, errlen, "out of memory");
            goto end;
        }
    }
    if (s_piece_path(store, audio, "audio", audio_path, sizeof audio_path, err, errlen) < 0)
        goto end;
    const char *ext = plan->output.container == CF_CONTAINER_MKV ? ".mkv" : ".mp4";
    int n = out_path ? snprintf(part, sizeof part, "%s.part-%d", out_path, (int)getpid())
                     : snprintf(part, sizeof part, "%s/render-%d-%p-output%s",
                                cf_blob_tmp_dir(output_store), (int)getpid(), (void *)paths, ext);
    if (n < 0 || (size_t)n >= sizeof part) {
        part[0] = '\0';
        snprintf(err, errlen, "output path too long");
        goto end;
    }
    if (cf_media_stitch(plan, (const char *const *)paths, audio_path, part, ctl ? ctl : &none, err,
                        errlen) < 0)
        goto end;
    if (out_path) {
        if (cf_blob_hash_file(part, made.blob, &made.bytes, err, errlen) < 0)
            goto end;
        if (rename(part, out_path) < 0) {
            snprintf(err, errlen, "cannot write %s: %s", out_path, strerror(errno));
            goto end;
        }
    } else {
        int adopted = cf_blob_adopt_file(output_store, part, made.blob, &made.bytes, err, errlen);
        if (adopted < 0)
            goto end;
    }
    part[0] = '\0';
    made.frames = plan->total_frames;
    made.seconds = s_now() - t0;
    if (output)
        *output = made;
    rc = 0;
end:
    if (part[0])
        unlink(part);
    if (rc < 0) {
        s_replace_all(err, errlen, cf_blob_tmp_dir(output_store), "<blobs>");
        s_replace_all(err, errlen, cf_blob_dir(store), "<blobs>");
    }
    for (int s = 0; paths && s < plan->segment_count; s++)
        free(paths[s]);
    free(paths);
    return rc;
}
