#include "cf_json.h"
#include "cf_plan.h"

#include <jansson.h>
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
    for (int i = 0; plan->clips && i < plan->clip_count; i++)
        free(plan->clips[i].source);
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

/* Fills in everything that follows from the output settings, segment_frames
 * and each clip's trim: frame and sample ranges, totals, segments. */
static int s_finish(cf_plan_t *plan, char *err, size_t errlen)
{
    const cf_plan_output_t *out = &plan->output;
    int64_t frame = 0;
    for (int i = 0; i < plan->clip_count; i++) {
        cf_plan_clip_t *clip = &plan->clips[i];
        clip->first_frame = frame;
        clip->frames =
            cf_plan_frames_for(clip->end_us - clip->start_us, out->fps_num, out->fps_den);
        frame += clip->frames;
    }
    plan->total_frames = frame;
    if ((double)plan->total_frames * out->fps_den / out->fps_num > CF_COMP_MAX_SECONDS + 1)
        return s_fail(err, errlen, "clips: total duration %.1f s exceeds the limit of %d seconds",
                      (double)plan->total_frames * out->fps_den / out->fps_num,
                      CF_COMP_MAX_SECONDS);
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
    if (!plan->segments)
        return s_fail(err, errlen, "plan: out of memory");
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
            if (s_add_part(seg, clip_index, f - clip->first_frame, run_end - f) < 0)
                return s_fail(err, errlen, "plan: out of memory");
            f = run_end;
        }
    }
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
        clip->source = strdup(cc->source);
        if (!clip->source) {
            s_fail(err, errlen, "plan: out of memory");
            goto fail;
        }
        clip->start_us = cc->start_us;
        clip->end_us = cc->end_us >= 0 ? cc->end_us : duration;
        clip->has_audio = sources[i].has_audio;
    }
    if (s_finish(plan, err, errlen) < 0)
        goto fail;
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

/* ------------------------------------------------------------------ JSON */

static const char *const s_codecs[] = {"h264", "hevc", NULL};
static const char *const s_encoders[] = {"auto", "cpu", "gpu", NULL};
static const char *const s_presets[] = {"fast", "balanced", "high", NULL};
static const char *const s_containers[] = {"mp4", "mkv", NULL};

static char *s_to_json(const cf_plan_t *plan, bool with_segments)
{
    const cf_plan_output_t *out = &plan->output;
    json_t *root = json_pack(
        "{s:i, s:{s:i, s:i, s:i, s:i, s:s, s:s, s:s, s:i, s:I, s:I, s:s, s:b, s:i}, s:i, s:I, "
        "s:I}",
        "version", 1, "output", "width", out->width, "height", out->height, "fps_num", out->fps_num,
        "fps_den", out->fps_den, "codec", s_codecs[out->codec], "encoder", s_encoders[out->encoder],
        "preset", s_presets[out->preset], "crf", out->crf, "video_bitrate",
        (json_int_t)out->video_bitrate, "audio_bitrate", (json_int_t)out->audio_bitrate,
        "container", s_containers[out->container], "faststart", out->faststart, "gop_frames",
        out->gop_frames, "segment_frames", plan->segment_frames, "total_frames",
        (json_int_t)plan->total_frames, "total_samples", (json_int_t)plan->total_samples);
    json_t *clips = json_array(), *segments = json_array();
    char *text = NULL;
    if (!root || !clips || !segments)
        goto end;
    for (int i = 0; i < plan->clip_count; i++) {
        const cf_plan_clip_t *c = &plan->clips[i];
        json_t *jc = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:b}", "source", c->source,
                               "start_us", (json_int_t)c->start_us, "end_us", (json_int_t)c->end_us,
                               "first_frame", (json_int_t)c->first_frame, "frames",
                               (json_int_t)c->frames, "first_sample", (json_int_t)c->first_sample,
                               "samples", (json_int_t)c->samples, "has_audio", c->has_audio);
        if (!jc || json_array_append_new(clips, jc) < 0)
            goto end;
    }
    for (int s = 0; with_segments && s < plan->segment_count; s++) {
        const cf_plan_segment_t *seg = &plan->segments[s];
        json_t *parts = json_array();
        if (!parts)
            goto end;
        for (int p = 0; p < seg->part_count; p++) {
            const cf_plan_part_t *part = &seg->parts[p];
            json_t *jp =
                json_pack("{s:i, s:I, s:I}", "clip", part->clip, "clip_frame",
                          (json_int_t)part->clip_frame, "frames", (json_int_t)part->frames);
            if (!jp || json_array_append_new(parts, jp) < 0) {
                json_decref(parts);
                goto end;
            }
        }
        json_t *js = json_pack("{s:I, s:I, s:o}", "first_frame", (json_int_t)seg->first_frame,
                               "frames", (json_int_t)seg->frames, "parts", parts);
        if (!js || json_array_append_new(segments, js) < 0)
            goto end;
    }
    json_object_set(root, "clips", clips);
    if (with_segments)
        json_object_set(root, "segments", segments);
    text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
end:
    json_decref(clips);
    json_decref(segments);
    json_decref(root);
    return text;
}

char *cf_plan_to_json(const cf_plan_t *plan)
{
    return s_to_json(plan, true);
}

char *cf_plan_to_json_compact(const cf_plan_t *plan)
{
    return s_to_json(plan, false);
}

/* Reads an integer member in [min, max]; returns 0 or -1 with err set. */
static int s_get_int(json_t *obj, const char *key, int64_t min, int64_t max, int64_t *value,
                     const char *where, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v))
        return s_fail(err, errlen, "plan: %s%s: must be an integer", where, key);
    if (json_integer_value(v) < min || json_integer_value(v) > max)
        return s_fail(err, errlen, "plan: %s%s: out of range", where, key);
    *value = json_integer_value(v);
    return 0;
}

static int s_get_enum(json_t *obj, const char *key, const char *const *names, int *value, char *err,
                      size_t errlen)
{
    const char *text = json_string_value(json_object_get(obj, key));
    for (int i = 0; text && names[i]; i++) {
        if (!strcmp(text, names[i])) {
            *value = i;
            return 0;
        }
    }
    return s_fail(err, errlen, "plan: output.%s: unknown value", key);
}

cf_plan_t *cf_plan_from_json(const char *text, size_t len, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = cf_json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    cf_plan_t *plan = calloc(1, sizeof *plan);
    /* Set on every path that reads them, but gcc -O3 cannot see through the
     * S_INT macro's goto: without a value here Release builds warn. */
    int64_t v = 0;
    int e = 0;
    if (!root) {
        s_fail(err, errlen, "plan: invalid JSON at line %d: %s", jerr.line, jerr.text);
        goto fail;
    }
    if (!plan) {
        s_fail(err, errlen, "plan: out of memory");
        goto fail;
    }
    if (s_get_int(root, "version", 1, 1, &v, "", err, errlen) < 0)
        goto fail;
    json_t *jout = json_object_get(root, "output");
    cf_plan_output_t *out = &plan->output;
    if (!json_is_object(jout)) {
        s_fail(err, errlen, "plan: output: must be an object");
        goto fail;
    }
    const char *o = "output.";
#define S_INT(obj, key, lo, hi, dst, where)                                                        \
    do {                                                                                           \
        if (s_get_int(obj, key, lo, hi, &v, where, err, errlen) < 0)                               \
            goto fail;                                                                             \
        dst = v;                                                                                   \
    } while (0)
    S_INT(jout, "width", CF_COMP_MIN_SIZE, CF_COMP_MAX_WIDTH, out->width, o);
    S_INT(jout, "height", CF_COMP_MIN_SIZE, CF_COMP_MAX_HEIGHT, out->height, o);
    /* As cf_comp allows: a reduced fraction of terms up to 1000000. */
    S_INT(jout, "fps_num", 1, 1000000, out->fps_num, o);
    S_INT(jout, "fps_den", 1, 1000000, out->fps_den, o);
    S_INT(jout, "crf", 0, 51, out->crf, o);
    S_INT(jout, "video_bitrate", 0, 100000000, out->video_bitrate, o);
    S_INT(jout, "audio_bitrate", 32000, 512000, out->audio_bitrate, o);
    S_INT(jout, "gop_frames", 1, CF_COMP_MAX_SEGMENT_SECS * CF_COMP_MAX_FPS, out->gop_frames, o);
    S_INT(root, "segment_frames", 1, CF_COMP_MAX_SEGMENT_SECS * CF_COMP_MAX_FPS,
          plan->segment_frames, "");
    if (out->width % 2 || out->height % 2 || out->fps_num < out->fps_den ||
        out->fps_num > (int64_t)CF_COMP_MAX_FPS * out->fps_den ||
        plan->segment_frames % out->gop_frames ||
        (int64_t)plan->segment_frames * out->fps_den * 2 < out->fps_num) {
        s_fail(err, errlen, "plan: output: inconsistent size, rate, GOP or segment length");
        goto fail;
    }
    if (s_get_enum(jout, "codec", s_codecs, &e, err, errlen) < 0)
        goto fail;
    out->codec = (cf_codec_t)e;
    if (s_get_enum(jout, "encoder", s_encoders, &e, err, errlen) < 0 || e == CF_ENCODER_AUTO) {
        s_fail(err, errlen, "plan: output.encoder: must be cpu or gpu");
        goto fail;
    }
    out->encoder = (cf_encoder_t)e;
    if (s_get_enum(jout, "preset", s_presets, &e, err, errlen) < 0)
        goto fail;
    out->preset = (cf_preset_t)e;
    if (s_get_enum(jout, "container", s_containers, &e, err, errlen) < 0)
        goto fail;
    out->container = (cf_container_t)e;
    if (!json_is_boolean(json_object_get(jout, "faststart"))) {
        s_fail(err, errlen, "plan: output.faststart: must be a boolean");
        goto fail;
    }
    out->faststart = json_is_true(json_object_get(jout, "faststart"));

    json_t *clips = json_object_get(root, "clips");
    if (!json_is_array(clips) || json_array_size(clips) < 1 ||
        json_array_size(clips) > CF_COMP_MAX_CLIPS) {
        s_fail(err, errlen, "plan: clips: must be an array of 1 to %d clips", CF_COMP_MAX_CLIPS);
        goto fail;
    }
    plan->clip_count = (int)json_array_size(clips);
    plan->clips = calloc((size_t)plan->clip_count, sizeof *plan->clips);
    if (!plan->clips) {
        s_fail(err, errlen, "plan: out of memory");
        goto fail;
    }
    const int64_t max_us = (int64_t)24 * 3600 * 1000000;
    for (int i = 0; i < plan->clip_count; i++) {
        json_t *jc = json_array_get(clips, (size_t)i);
        cf_plan_clip_t *c = &plan->clips[i];
        const char *source = json_string_value(json_object_get(jc, "source"));
        if (!json_is_object(jc) || !source || !*source || strlen(source) > CF_COMP_MAX_SOURCE) {
            s_fail(err, errlen, "plan: clips[%d]: needs a source", i);
            goto fail;
        }
        if (!(c->source = strdup(source))) {
            s_fail(err, errlen, "plan: out of memory");
            goto fail;
        }
        char where[32];
        snprintf(where, sizeof where, "clips[%d].", i);
        S_INT(jc, "start_us", 0, max_us, c->start_us, where);
        S_INT(jc, "end_us", c->start_us + 1, max_us, c->end_us, where);
        if (!json_is_boolean(json_object_get(jc, "has_audio"))) {
            s_fail(err, errlen, "plan: clips[%d].has_audio: must be a boolean", i);
            goto fail;
        }
        c->has_audio = json_is_true(json_object_get(jc, "has_audio"));
    }
#undef S_INT
    if (s_finish(plan, err, errlen) < 0)
        goto fail;

    /* Everything else follows from the above; what the text says about it
     * must agree, so a plan is never half one thing, half another. */
    if (json_integer_value(json_object_get(root, "total_frames")) != plan->total_frames ||
        json_integer_value(json_object_get(root, "total_samples")) != plan->total_samples) {
        s_fail(err, errlen, "plan: totals do not match the clips");
        goto fail;
    }
    for (int i = 0; i < plan->clip_count; i++) {
        json_t *jc = json_array_get(clips, (size_t)i);
        const cf_plan_clip_t *c = &plan->clips[i];
        if (json_integer_value(json_object_get(jc, "first_frame")) != c->first_frame ||
            json_integer_value(json_object_get(jc, "frames")) != c->frames ||
            json_integer_value(json_object_get(jc, "first_sample")) != c->first_sample ||
            json_integer_value(json_object_get(jc, "samples")) != c->samples) {
            s_fail(err, errlen, "plan: clips[%d]: frames or samples do not match its trim", i);
            goto fail;
        }
    }
    /* A compact plan leaves the segments out: they follow from the clips. */
    json_t *segments = json_object_get(root, "segments");
    if (!segments) {
        json_decref(root);
        return plan;
    }
    if (!json_is_array(segments) || json_array_size(segments) != (size_t)plan->segment_count) {
        s_fail(err, errlen, "plan: segments: expected %d", plan->segment_count);
        goto fail;
    }
    for (int s = 0; s < plan->segment_count; s++) {
        json_t *js = json_array_get(segments, (size_t)s);
        const cf_plan_segment_t *seg = &plan->segments[s];
        json_t *parts = json_object_get(js, "parts");
        bool ok = json_integer_value(json_object_get(js, "first_frame")) == seg->first_frame &&
                  json_integer_value(json_object_get(js, "frames")) == seg->frames &&
                  json_is_array(parts) && json_array_size(parts) == (size_t)seg->part_count;
        for (int p = 0; ok && p < seg->part_count; p++) {
            json_t *jp = json_array_get(parts, (size_t)p);
            ok =
                json_integer_value(json_object_get(jp, "clip")) == seg->parts[p].clip &&
                json_integer_value(json_object_get(jp, "clip_frame")) == seg->parts[p].clip_frame &&
                json_integer_value(json_object_get(jp, "frames")) == seg->parts[p].frames;
        }
        if (!ok) {
            s_fail(err, errlen, "plan: segments[%d]: does not match the clips", s);
            goto fail;
        }
    }
    json_decref(root);
    return plan;
fail:
    json_decref(root);
    cf_plan_destroy(&plan);
    return NULL;
}
