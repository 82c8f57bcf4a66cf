#include "cf_plan.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int s_fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int s_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* a * b / c rounded up (ROUND_UP) or to nearest, without overflow for the
 * magnitudes a plan sees (a < 2^45, b < 2^33, c < 2^45). */
static int64_t s_muldiv(int64_t a, int64_t b, int64_t c, bool round_up)
{
    __int128 n = (__int128)a * b;
    __int128 q = round_up ? (n + c - 1) / c : (2 * n + c) / (2 * c);
    return (int64_t)q;
}

int64_t cf_plan_frames_for(int64_t duration_us, int fps_num, int fps_den)
{
    if (duration_us <= 0)
        return 0;
    return s_muldiv(duration_us, fps_num, (int64_t)fps_den * 1000000, true);
}

int64_t cf_plan_sample_at(int64_t frame, int fps_num, int fps_den)
{
    return s_muldiv(frame, (int64_t)CF_PLAN_SAMPLE_RATE * fps_den, fps_num, false);
}

void cf_plan_destroy(cf_plan_t **plan_p)
{
    if (!plan_p || !*plan_p)
        return;
    cf_plan_t *plan = *plan_p;
    for (int i = 0; i < plan->segment_count; i++)
        free(plan->segments[i].parts);
    free(plan->segments);
    free(plan->clips);
    free(plan);
    *plan_p = NULL;
}

/* GOP and segment length in frames: the GOP is the segment length up to
 * CF_PLAN_MAX_GOP_SECS; the segment is a whole number of GOPs closest to
 * segment_seconds. One IDR per ~10 s costs almost nothing in size. */
static void s_lengths(double segment_seconds, int fps_num, int fps_den, int *gop, int *segment)
{
    double fps = (double)fps_num / fps_den;
    double gop_secs =
        segment_seconds < CF_PLAN_MAX_GOP_SECS ? segment_seconds : CF_PLAN_MAX_GOP_SECS;
    int g = (int)llround(gop_secs * fps);
    if (g < 1)
        g = 1;
    long k = lround(segment_seconds * fps / g);
    if (k < 1)
        k = 1;
    *gop = g;
    *segment = (int)(g * k);
}

static int s_add_part(cf_plan_segment_t *seg, int clip, int64_t clip_frame, int64_t frames)
{
    cf_plan_part_t *parts = realloc(seg->parts, sizeof *parts * (size_t)(seg->part_count + 1));
    if (!parts)
        return -1;
    seg->parts = parts;
    parts[seg->part_count++] = (cf_plan_part_t){clip, clip_frame, frames};
    return 0;
}

cf_plan_t *cf_plan_new(const cf_comp_t *comp, const cf_plan_source_t *sources,
                       cf_encoder_t auto_encoder, char *err, size_t errlen)
{
    cf_plan_t *plan = calloc(1, sizeof *plan);
    if (!plan) {
        s_fail(err, errlen, "plan: out of memory");
        return NULL;
    }
    cf_plan_output_t *out = &plan->output;
    out->width = comp->width;
    out->height = comp->height;
    out->fps_num = comp->fps_num;
    out->fps_den = comp->fps_den;
    out->codec = comp->video_codec;
    out->encoder = comp->encoder == CF_ENCODER_AUTO ? auto_encoder : comp->encoder;
    if (out->encoder == CF_ENCODER_AUTO)
        out->encoder = CF_ENCODER_CPU;
    out->preset = comp->preset;
    out->crf = comp->crf;
    out->video_bitrate = comp->video_bitrate;
    out->audio_bitrate = comp->audio_bitrate;
    out->container = comp->container;
    out->faststart = comp->faststart;
    s_lengths(comp->segment_seconds, comp->fps_num, comp->fps_den, &out->gop_frames,
              &plan->segment_frames);

    plan->clips = calloc((size_t)(comp->clip_count ? comp->clip_count : 1), sizeof *plan->clips);
    if (!plan->clips) {
        s_fail(err, errlen, "plan: out of memory");
        goto fail;
    }
    plan->clip_count = comp->clip_count;
    int64_t frame = 0;
    for (int i = 0; i < comp->clip_count; i++) {
        const cf_comp_clip_t *cc = &comp->clips[i];
        cf_plan_clip_t *clip = &plan->clips[i];
        int64_t duration = sources[i].duration_us;
        if (duration <= 0) {
            s_fail(err, errlen, "clips[%d].source: has no video frames", i);
            goto fail;
        }
        if (cc->start_us >= duration) {
            s_fail(err, errlen, "clips[%d].start: past the end of the source (%.3f s)", i,
                   (double)duration / 1e6);
            goto fail;
        }
        /* 1 ms of slack: containers round durations. */
        if (cc->end_us > duration + 1000) {
            s_fail(err, errlen, "clips[%d].end: past the end of the source (%.3f s)", i,
                   (double)duration / 1e6);
            goto fail;
        }
        clip->start_us = cc->start_us;
        clip->end_us = cc->end_us >= 0 ? cc->end_us : duration;
        clip->first_frame = frame;
        clip->frames =
            cf_plan_frames_for(clip->end_us - clip->start_us, out->fps_num, out->fps_den);
        clip->has_audio = sources[i].has_audio;
        frame += clip->frames;
    }
    plan->total_frames = frame;
    if ((double)plan->total_frames * out->fps_den / out->fps_num > CF_COMP_MAX_SECONDS + 1) {
        s_fail(err, errlen, "clips: total duration %.1f s exceeds the limit of %d seconds",
               (double)plan->total_frames * out->fps_den / out->fps_num, CF_COMP_MAX_SECONDS);
        goto fail;
    }
    for (int i = 0; i < plan->clip_count; i++) {
        cf_plan_clip_t *clip = &plan->clips[i];
        clip->first_sample = cf_plan_sample_at(clip->first_frame, out->fps_num, out->fps_den);
        clip->samples =
            cf_plan_sample_at(clip->first_frame + clip->frames, out->fps_num, out->fps_den) -
            clip->first_sample;
    }
    plan->total_samples = cf_plan_sample_at(plan->total_frames, out->fps_num, out->fps_den);

    int64_t count = (plan->total_frames + plan->segment_frames - 1) / plan->segment_frames;
    plan->segments = calloc((size_t)(count ? count : 1), sizeof *plan->segments);
    if (!plan->segments) {
        s_fail(err, errlen, "plan: out of memory");
        goto fail;
    }
    plan->segment_count = (int)count;
    int clip_index = 0;
    for (int s = 0; s < plan->segment_count; s++) {
        cf_plan_segment_t *seg = &plan->segments[s];
        seg->index = s;
        seg->first_frame = (int64_t)s * plan->segment_frames;
        int64_t end = seg->first_frame + plan->segment_frames;
        if (end > plan->total_frames)
            end = plan->total_frames;
        seg->frames = end - seg->first_frame;
        for (int64_t f = seg->first_frame; f < end;) {
            while (plan->clips[clip_index].first_frame + plan->clips[clip_index].frames <= f)
                clip_index++;
            const cf_plan_clip_t *clip = &plan->clips[clip_index];
            int64_t clip_end = clip->first_frame + clip->frames;
            int64_t run_end = clip_end < end ? clip_end : end;
            if (s_add_part(seg, clip_index, f - clip->first_frame, run_end - f) < 0) {
                s_fail(err, errlen, "plan: out of memory");
                goto fail;
            }
            f = run_end;
        }
    }
    return plan;
fail:
    cf_plan_destroy(&plan);
    return NULL;
}

typedef struct {
    int64_t frames;
    int index;
} s_order_t;

static int s_longer_first(const void *a, const void *b)
{
    const s_order_t *sa = a, *sb = b;
    if (sa->frames != sb->frames)
        return sa->frames > sb->frames ? -1 : 1;
    return sa->index - sb->index;
}

void cf_plan_dispatch_order(const cf_plan_t *plan, int *order)
{
    s_order_t *items = malloc(sizeof *items * (size_t)(plan->segment_count + 1));
    if (!items) {
        /* Plan order is still a valid order. */
        for (int i = 0; i < plan->segment_count; i++)
            order[i] = i;
        return;
    }
    for (int i = 0; i < plan->segment_count; i++)
        items[i] = (s_order_t){plan->segments[i].frames, i};
    qsort(items, (size_t)plan->segment_count, sizeof *items, s_longer_first);
    for (int i = 0; i < plan->segment_count; i++)
        order[i] = items[i].index;
    free(items);
}
