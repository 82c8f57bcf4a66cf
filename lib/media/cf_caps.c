#define _GNU_SOURCE
#include "cf_caps.h"

#include <errno.h>
#include <libavcodec/avcodec.h>
#include <libavutil/imgutils.h>
#include <libavutil/opt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cf_cpus.h"
#include "cf_media.h"

#define S_MAX_ENCODERS     16
#define S_MAX_TAGS         32
#define S_CACHE_FILE       "calibration.json"
#define S_CACHE_VERSION    1
#define S_CALIB_MAX_FRAMES 24
#define S_CALIB_MIN_FRAMES 5
#define S_CALIB_BUDGET_S   0.25
#define S_CALIB_FPS        25

const char *const cf_caps_candidates[] = {
    "libx264",  "libx265",    "h264_nvenc", "hevc_nvenc", "h264_qsv",
    "hevc_qsv", "h264_vaapi", "hevc_vaapi", NULL,
};

typedef struct {
    char name[32];
    double fps;
} s_encoder_t;

struct cf_caps_t {
    int cores;
    long memory_mb;
    int slots;
    s_encoder_t encoders[S_MAX_ENCODERS];
    int encoder_count;
    char *tags[S_MAX_TAGS];
    int tag_count;
    bool calibrated;
};

static double s_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The pixel format to feed CODEC: yuv420p when it takes it, else nv12, else
 * its first (a hardware-only format makes the open fail, as it should
 * without a configured device). */
static enum AVPixelFormat s_pick_format(const AVCodec *codec)
{
    const enum AVPixelFormat *fmts = codec->pix_fmts;
    if (!fmts)
        return AV_PIX_FMT_YUV420P;
    for (const enum AVPixelFormat *p = fmts; *p != AV_PIX_FMT_NONE; p++)
        if (*p == AV_PIX_FMT_YUV420P)
            return *p;
    for (const enum AVPixelFormat *p = fmts; *p != AV_PIX_FMT_NONE; p++)
        if (*p == AV_PIX_FMT_NV12)
            return *p;
    return fmts[0];
}

/* Opens NAME at the calibration size with one thread. Returns the context,
 * or NULL when the encoder is not compiled in or cannot open here. */
static AVCodecContext *s_open_encoder(const char *name)
{
    const AVCodec *codec = avcodec_find_encoder_by_name(name);
    if (!codec)
        return NULL;
    AVCodecContext *ctx = avcodec_alloc_context3(codec);
    if (!ctx)
        return NULL;
    ctx->width = CF_CAPS_CALIB_WIDTH;
    ctx->height = CF_CAPS_CALIB_HEIGHT;
    ctx->pix_fmt = s_pick_format(codec);
    ctx->time_base = (AVRational){1, S_CALIB_FPS};
    ctx->framerate = (AVRational){S_CALIB_FPS, 1};
    ctx->gop_size = S_CALIB_FPS;
    ctx->max_b_frames = 2;
    ctx->thread_count = 1;
    if (!strcmp(name, "libx264")) {
        av_opt_set(ctx->priv_data, "preset", "veryfast", 0);
    } else if (!strcmp(name, "libx265")) {
        av_opt_set(ctx->priv_data, "preset", "veryfast", 0);
        /* x265 prints its banner on stderr itself, not through av_log. */
        av_opt_set(ctx->priv_data, "x265-params", "log-level=error:pools=none:frame-threads=1", 0);
    }
    if (avcodec_open2(ctx, codec, NULL) < 0) {
        avcodec_free_context(&ctx);
        return NULL;
    }
    return ctx;
}

/* Fills FRAME with a moving pattern with some texture, so the encoder has
 * real motion and detail to work on (a flat frame would flatter it). */
static void s_draw(AVFrame *frame, int index)
{
    for (int y = 0; y < frame->height; y++) {
        uint8_t *row = frame->data[0] + (size_t)y * (size_t)frame->linesize[0];
        for (int x = 0; x < frame->width; x++)
            row[x] = (uint8_t)((x * 3 + y * 2 + index * 7) ^ ((x * y + index * 13) >> 5));
    }
    int chroma_h = frame->height / 2;
    if (frame->format == AV_PIX_FMT_NV12) {
        for (int y = 0; y < chroma_h; y++)
            memset(frame->data[1] + (size_t)y * (size_t)frame->linesize[1],
                   (uint8_t)(128 + ((y + index) & 31)), (size_t)frame->width);
        return;
    }
    for (int plane = 1; plane <= 2 && frame->data[plane]; plane++)
        for (int y = 0; y < chroma_h; y++)
            memset(frame->data[plane] + (size_t)y * (size_t)frame->linesize[plane],
                   (uint8_t)(96 + plane * 32 + ((y + index) & 15)), (size_t)frame->width / 2);
}

/* Encodes synthetic frames with CTX until S_CALIB_MAX_FRAMES or the time
 * budget, then drains it. Returns frames/s, or -1 on an encoding error. */
static double s_measure(AVCodecContext *ctx, const atomic_int *stop)
{
    AVFrame *frame = av_frame_alloc();
    AVPacket *pkt = av_packet_alloc();
    double fps = -1;
    if (!frame || !pkt)
        goto end;
    frame->format = ctx->pix_fmt;
    frame->width = ctx->width;
    frame->height = ctx->height;
    if (av_frame_get_buffer(frame, 0) < 0)
        goto end;
    double start = s_now_s();
    int sent = 0;
    while (sent < S_CALIB_MAX_FRAMES &&
           (sent < S_CALIB_MIN_FRAMES || s_now_s() - start < S_CALIB_BUDGET_S)) {
        if (stop && *stop)
            goto end;
        if (av_frame_make_writable(frame) < 0)
            goto end;
        s_draw(frame, sent);
        frame->pts = sent++;
        if (avcodec_send_frame(ctx, frame) < 0)
            goto end;
        while (avcodec_receive_packet(ctx, pkt) == 0)
            av_packet_unref(pkt);
    }
    if (avcodec_send_frame(ctx, NULL) < 0)
        goto end;
    int rc;
    while ((rc = avcodec_receive_packet(ctx, pkt)) == 0) {
        av_packet_unref(pkt);
        if (stop && *stop)
            goto end;
    }
    if (rc != AVERROR_EOF)
        goto end;
    double elapsed = s_now_s() - start;
    fps = elapsed > 0 ? sent / elapsed : 0;
end:
    av_packet_free(&pkt);
    av_frame_free(&frame);
    return fps;
}

/* ------------------------------------------------------------------ cache */

static char *s_cache_path(const char *data_dir)
{
    char *path = NULL;
    if (data_dir && asprintf(&path, "%s/%s", data_dir, S_CACHE_FILE) < 0)
        path = NULL;
    return path;
}

/* Uses the cached figures when they were measured here with the same
 * libavcodec, cores and usable encoders. */
static void s_load_cache(cf_caps_t *self, const char *data_dir)
{
    char *path = s_cache_path(data_dir);
    if (!path)
        return;
    json_t *root = json_load_file(path, 0, NULL);
    free(path);
    if (!root)
        return;
    json_t *encoders = json_object_get(root, "encoders");
    bool valid =
        json_integer_value(json_object_get(root, "version")) == S_CACHE_VERSION &&
        json_integer_value(json_object_get(root, "libavcodec")) == (json_int_t)avcodec_version() &&
        json_integer_value(json_object_get(root, "cores")) == self->cores &&
        json_is_object(encoders) && json_object_size(encoders) == (size_t)self->encoder_count;
    for (int i = 0; valid && i < self->encoder_count; i++) {
        json_t *fps = json_object_get(encoders, self->encoders[i].name);
        valid = json_is_real(fps) && json_real_value(fps) > 0 && json_real_value(fps) < 1e6;
    }
    if (valid) {
        for (int i = 0; i < self->encoder_count; i++)
            self->encoders[i].fps =
                json_real_value(json_object_get(encoders, self->encoders[i].name));
        self->calibrated = true;
    }
    json_decref(root);
}

static int s_save_cache(const cf_caps_t *self, const char *data_dir, char *err, size_t errlen)
{
    char *path = s_cache_path(data_dir);
    char *tmp = NULL;
    if (!path || asprintf(&tmp, "%s.tmp.%ld", path, (long)getpid()) < 0) {
        free(path);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    json_t *encoders = json_object();
    for (int i = 0; i < self->encoder_count; i++)
        json_object_set_new(encoders, self->encoders[i].name, json_real(self->encoders[i].fps));
    json_t *root =
        json_pack("{s:i, s:I, s:i, s:i, s:i, s:o}", "version", S_CACHE_VERSION, "libavcodec",
                  (json_int_t)avcodec_version(), "cores", self->cores, "width", CF_CAPS_CALIB_WIDTH,
                  "height", CF_CAPS_CALIB_HEIGHT, "encoders", encoders);
    int rc = 0;
    if (!root || json_dump_file(root, tmp, JSON_INDENT(2)) < 0 || rename(tmp, path) < 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
        rc = -1;
    }
    json_decref(root);
    free(tmp);
    free(path);
    return rc;
}

/* ------------------------------------------------------------------ public */

cf_caps_t *cf_caps_probe(const char *data_dir, char *const *tags, int tag_count, int slots)
{
    cf_caps_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    cf_media_init(); /* libav's complaints about absent GPUs go to the debug log */
    self->cores = cf_cpu_count();
    long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
    self->memory_mb = pages > 0 && page_size > 0 ? (long)((double)pages * page_size / 1048576) : 0;
    self->slots = slots > 0 ? slots : slots < 0 ? 0 : 1; /* < 0: takes no work */
    for (int i = 0; i < tag_count && self->tag_count < S_MAX_TAGS; i++) {
        if (!(self->tags[self->tag_count] = strdup(tags[i]))) {
            cf_caps_destroy(&self);
            return NULL;
        }
        self->tag_count++;
    }
    for (const char *const *name = cf_caps_candidates; *name; name++) {
        AVCodecContext *ctx = s_open_encoder(*name);
        if (!ctx)
            continue;
        avcodec_free_context(&ctx);
        s_encoder_t *enc = &self->encoders[self->encoder_count++];
        snprintf(enc->name, sizeof enc->name, "%s", *name);
    }
    s_load_cache(self, data_dir);
    return self;
}

int cf_caps_calibrate(cf_caps_t *self, const char *data_dir, const atomic_int *stop, char *err,
                      size_t errlen)
{
    int rc = 0;
    err[0] = '\0';
    cf_media_init();
    double measured[S_MAX_ENCODERS];
    for (int i = 0; i < self->encoder_count; i++) {
        AVCodecContext *ctx = s_open_encoder(self->encoders[i].name);
        measured[i] = ctx ? s_measure(ctx, stop) : -1;
        avcodec_free_context(&ctx);
        if (stop && *stop) {
            snprintf(err, errlen, "calibration stopped");
            return -1;
        }
    }
    for (int i = 0; i < self->encoder_count; i++) {
        double fps = measured[i];
        if (fps > 0) {
            self->encoders[i].fps = fps < 1e6 ? fps : 1e6 - 1;
            continue;
        }
        /* It opened at probe time but cannot encode: not usable. */
        snprintf(err, errlen, "encoder %s opened but failed to encode: dropped",
                 self->encoders[i].name);
        memmove(&self->encoders[i], &self->encoders[i + 1],
                sizeof self->encoders[0] * (size_t)(self->encoder_count - i - 1));
        memmove(&measured[i], &measured[i + 1],
                sizeof measured[0] * (size_t)(self->encoder_count - i - 1));
        self->encoder_count--;
        i--;
        rc = -1;
    }
    self->calibrated = true;
    char why[512];
    if (data_dir && s_save_cache(self, data_dir, why, sizeof why) < 0 && rc == 0) {
        snprintf(err, errlen, "%s", why);
        rc = -1;
    }
    return rc;
}

void cf_caps_destroy(cf_caps_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_caps_t *self = *self_p;
    for (int i = 0; i < self->tag_count; i++)
        free(self->tags[i]);
    free(self);
    *self_p = NULL;
}

cf_caps_t *cf_caps_dup(const cf_caps_t *self)
{
    cf_caps_t *copy = malloc(sizeof *copy);
    if (!copy)
        return NULL;
    *copy = *self;
    for (int i = 0; i < self->tag_count; i++) {
        if (!(copy->tags[i] = strdup(self->tags[i]))) {
            copy->tag_count = i;
            cf_caps_destroy(&copy);
            return NULL;
        }
    }
    return copy;
}

bool cf_caps_calibrated(const cf_caps_t *self)
{
    return self->calibrated;
}

int cf_caps_cores(const cf_caps_t *self)
{
    return self->cores;
}

long cf_caps_memory_mb(const cf_caps_t *self)
{
    return self->memory_mb;
}

int cf_caps_slots(const cf_caps_t *self)
{
    return self->slots;
}

int cf_caps_encoder_count(const cf_caps_t *self)
{
    return self->encoder_count;
}

const char *cf_caps_encoder_name(const cf_caps_t *self, int index)
{
    return index >= 0 && index < self->encoder_count ? self->encoders[index].name : NULL;
}

double cf_caps_encoder_fps(const cf_caps_t *self, int index)
{
    return index >= 0 && index < self->encoder_count ? self->encoders[index].fps : 0;
}

bool cf_caps_has_encoder(const cf_caps_t *self, const char *name)
{
    for (int i = 0; i < self->encoder_count; i++)
        if (!strcmp(self->encoders[i].name, name))
            return true;
    return false;
}

int cf_caps_tag_count(const cf_caps_t *self)
{
    return self->tag_count;
}

const char *cf_caps_tag(const cf_caps_t *self, int index)
{
    return index >= 0 && index < self->tag_count ? self->tags[index] : NULL;
}

json_t *cf_caps_to_json(const cf_caps_t *self)
{
    json_t *encoders = json_array();
    for (int i = 0; i < self->encoder_count; i++)
        json_array_append_new(encoders, json_pack("{s:s, s:f}", "name", self->encoders[i].name,
                                                  "fps", self->encoders[i].fps));
    json_t *tags = json_array();
    for (int i = 0; i < self->tag_count; i++)
        json_array_append_new(tags, json_string(self->tags[i]));
    return json_pack("{s:i, s:I, s:i, s:o, s:o, s:b, s:{s:i, s:i, s:i}}", "cores", self->cores,
                     "memory_mb", (json_int_t)self->memory_mb, "slots", self->slots, "encoders",
                     encoders, "tags", tags, "calibrated", self->calibrated, "calibration", "width",
                     CF_CAPS_CALIB_WIDTH, "height", CF_CAPS_CALIB_HEIGHT, "threads", 1);
}

char *cf_caps_summary(const cf_caps_t *self)
{
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    if (!out)
        return NULL;
    fprintf(out, "cores=%d memory=%ldMB slots=%d encoders=", self->cores, self->memory_mb,
            self->slots);
    for (int i = 0; i < self->encoder_count; i++) {
        if (self->calibrated)
            fprintf(out, "%s%s(%.1f fps)", i ? "," : "", self->encoders[i].name,
                    self->encoders[i].fps);
        else
            fprintf(out, "%s%s", i ? "," : "", self->encoders[i].name);
    }
    if (!self->encoder_count)
        fprintf(out, "none");
    fprintf(out, " tags=");
    for (int i = 0; i < self->tag_count; i++)
        fprintf(out, "%s%s", i ? "," : "", self->tags[i]);
    if (!self->tag_count)
        fprintf(out, "none");
    if (!self->calibrated)
        fprintf(out, " (calibrating)");
    fclose(out);
    return text;
}

int cf_caps_restrict(cf_caps_t *self, const char *list, char *err, size_t errlen)
{
    if (!list || !*list)
        return 0;
    bool keep[S_MAX_ENCODERS] = {false};
    char *copy = strdup(list), *save = NULL;
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = 0;
    for (char *name = strtok_r(copy, ", ", &save); name; name = strtok_r(NULL, ", ", &save)) {
        int found = -1;
        for (int i = 0; i < self->encoder_count; i++)
            if (!strcmp(self->encoders[i].name, name))
                found = i;
        if (found < 0) {
            snprintf(err, errlen, "--encoders: %s cannot be opened on this node (it has %d: ", name,
                     self->encoder_count);
            for (int i = 0; i < self->encoder_count; i++) {
                size_t n = strlen(err);
                snprintf(err + n, errlen - n, "%s%s", i ? ", " : "", self->encoders[i].name);
            }
            size_t n = strlen(err);
            snprintf(err + n, errlen - n, ")");
            rc = -1;
            break;
        }
        keep[found] = true;
    }
    free(copy);
    if (rc < 0)
        return -1;
    int n = 0;
    for (int i = 0; i < self->encoder_count; i++)
        if (keep[i])
            self->encoders[n++] = self->encoders[i];
    self->encoder_count = n;
    return 0;
}
