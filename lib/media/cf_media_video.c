/* cf_media_encode_segment: one planned segment -> an MP4 holding its video.
 *
 * Frame mapping. Output frame n of a clip trimmed at S shows the source frame
 * that FFmpeg's fps filter with start_time=S would pick: a source frame with
 * pts p (seconds from the file's start) belongs to output slot
 * round((p - S) * fps) (half away from zero), and slot n shows the latest
 * frame whose slot is <= n; a slot before the first frame shows the first
 * frame. Because the mapping depends only on the clip's start, a segment that
 * begins in the middle of a clip picks exactly the frames a whole-clip render
 * would: segments are independent and still frame-exact.
 *
 * Real-world sources go through two filter graphs, as the ffmpeg command
 * line would put them:
 *   source graph  on decoded frames at the source's own rate and timestamps,
 *                 before the mapping: deinterlacing (bwdif; it needs the real
 *                 neighbouring frames) and the display matrix (phone
 *                 rotation and flips). Only built when a source needs it.
 *   output graph  on each output frame: alpha flattened on black, HDR (PQ,
 *                 HLG) tone-mapped to SDR, fitted by display aspect (pixel
 *                 aspect and rotation included), the source's YCbCr matrix
 *                 and range converted to the output's BT.709 limited range,
 *                 padded on black, 8-bit 4:2:0. */
#define _GNU_SOURCE
#include <libavfilter/buffersink.h>
#include <libavfilter/buffersrc.h>
#include <libavutil/display.h>
#include <libavutil/mathematics.h>
#include <libavutil/pixdesc.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cf_media_internal.h"

typedef struct {
    const cf_plan_t *plan;
    const cf_plan_segment_t *seg;
    const cf_media_ctl_t *ctl;
    AVCodecContext *enc;
    AVFormatContext *mux; /* NULL in the first of two passes */
    AVStream *mux_st;
    AVPacket *pkt;
    /* scaler for the current source frame geometry */
    AVFilterGraph *graph;
    AVFilterContext *buf_src, *buf_sink;
    int graph_w, graph_h, graph_fmt;
    AVRational graph_sar;
    enum AVColorSpace graph_space;
    enum AVColorRange graph_range;
    enum AVColorTransferCharacteristic graph_trc;
    enum AVColorPrimaries graph_pri;
    AVFrame *filtered;
    int64_t frames_sent;    /* to the encoder */
    int64_t packets_out;    /* from the encoder */
    bool first_is_keyframe; /* the segment's first packet */
    char *err;
    size_t errlen;
} s_seg_t;

static int s_fail(s_seg_t *ctx, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int s_fail(s_seg_t *ctx, int code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return cf_media_fail(ctx->err, ctx->errlen, code, "segment %d: %s", ctx->seg->index, msg);
}

/* ------------------------------------------------------------------ encoder */

static int s_drain_encoder(s_seg_t *ctx)
{
    for (;;) {
        int ret = avcodec_receive_packet(ctx->enc, ctx->pkt);
        if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF)
            return 0;
        if (ret < 0)
            return s_fail(ctx, ret, "encoding failed");
        if (ctx->packets_out == 0)
            ctx->first_is_keyframe = ctx->pkt->flags & AV_PKT_FLAG_KEY;
        ctx->packets_out++;
        if (ctx->mux) {
            ctx->pkt->stream_index = ctx->mux_st->index;
            av_packet_rescale_ts(ctx->pkt, ctx->enc->time_base, ctx->mux_st->time_base);
            ret = av_interleaved_write_frame(ctx->mux, ctx->pkt);
            if (ret < 0)
                return s_fail(ctx, ret, "cannot write");
        }
        av_packet_unref(ctx->pkt);
    }
}

static int s_encode(s_seg_t *ctx, AVFrame *frame)
{
    int ret = avcodec_send_frame(ctx->enc, frame);
    if (ret < 0)
        return s_fail(ctx, ret, "encoding failed");
    return s_drain_encoder(ctx);
}

/* ------------------------------------------------------------------ scaler */

/* Connects the chain SPEC between a buffer source for frames like FRAME (in
 * time base TB, at FRAME_RATE when known) and a buffer sink in a new graph.
 * Returns 0 or a negative AVERROR. */
static int s_make_graph(AVFilterGraph **graph_p, AVFilterContext **src_p, AVFilterContext **sink_p,
                        const AVFrame *frame, AVRational tb, AVRational frame_rate,
                        const char *spec)
{
    AVFilterInOut *inputs = NULL, *outputs = NULL;
    AVFilterGraph *graph = avfilter_graph_alloc();
    int ret;
    if (!graph)
        return AVERROR(ENOMEM);
    /* One worker thread per segment: parallelism comes from segments. */
    graph->nb_threads = 1;
    AVRational sar =
        frame->sample_aspect_ratio.num > 0 ? frame->sample_aspect_ratio : (AVRational){1, 1};
    char args[256];
    snprintf(args, sizeof args, "video_size=%dx%d:pix_fmt=%d:time_base=%d/%d:pixel_aspect=%d/%d",
             frame->width, frame->height, frame->format, tb.num, tb.den, sar.num, sar.den);
    if (frame_rate.num > 0 && frame_rate.den > 0) {
        size_t len = strlen(args);
        snprintf(args + len, sizeof args - len, ":frame_rate=%d/%d", frame_rate.num,
                 frame_rate.den);
    }
    ret = avfilter_graph_create_filter(src_p, avfilter_get_by_name("buffer"), "in", args, NULL,
                                       graph);
    if (ret >= 0)
        ret = avfilter_graph_create_filter(sink_p, avfilter_get_by_name("buffersink"), "out", NULL,
                                           NULL, graph);
    if (ret < 0)
        goto end;
    outputs = avfilter_inout_alloc();
    inputs = avfilter_inout_alloc();
    if (!outputs || !inputs) {
        ret = AVERROR(ENOMEM);
        goto end;
    }
    outputs->name = av_strdup("in");
    outputs->filter_ctx = *src_p;
    inputs->name = av_strdup("out");
    inputs->filter_ctx = *sink_p;
    if ((ret = avfilter_graph_parse_ptr(graph, spec, &inputs, &outputs, NULL)) < 0)
        goto end;
    ret = avfilter_graph_config(graph, NULL);
end:
    avfilter_inout_free(&inputs);
    avfilter_inout_free(&outputs);
    if (ret < 0)
        avfilter_graph_free(&graph);
    *graph_p = graph;
    return ret;
}

/* The colorspace filter's name for the YCbCr matrix of a source frame.
 * Untagged sources get what players assume: BT.601 up to 576 lines, BT.709
 * above. */
static const char *s_matrix_name(const AVFrame *frame)
{
    switch (frame->colorspace) {
        case AVCOL_SPC_BT709:
            return "bt709";
        case AVCOL_SPC_BT470BG:
        case AVCOL_SPC_SMPTE170M:
            return "bt470bg";
        case AVCOL_SPC_FCC:
            return "fcc";
        case AVCOL_SPC_SMPTE240M:
            return "smpte240m";
        case AVCOL_SPC_BT2020_NCL:
        case AVCOL_SPC_BT2020_CL:
            return "bt2020ncl";
        default:
            return frame->height <= 576 ? "bt470bg" : "bt709";
    }
}

static bool s_full_range(const AVFrame *frame)
{
    switch (frame->format) {
        case AV_PIX_FMT_YUVJ420P:
        case AV_PIX_FMT_YUVJ422P:
        case AV_PIX_FMT_YUVJ444P:
        case AV_PIX_FMT_YUVJ440P:
        case AV_PIX_FMT_YUVJ411P:
            return true;
        default:
            return frame->color_range == AVCOL_RANGE_JPEG;
    }
}

/* The size FRAME takes inside the output, fitted by its display aspect
 * (storage size times pixel aspect): as ffmpeg's scale with
 * force_original_aspect_ratio=decrease:force_divisible_by=2 computes it for
 * square pixels, so square-pixel sources scale exactly as that chain does. */
static void s_fit(const AVFrame *frame, int out_w, int out_h, int *w_p, int *h_p)
{
    AVRational sar =
        frame->sample_aspect_ratio.num > 0 ? frame->sample_aspect_ratio : (AVRational){1, 1};
    int64_t dw = (int64_t)frame->width * sar.num, dh = (int64_t)frame->height * sar.den;
    int64_t w = av_rescale(out_h, dw, dh), h = av_rescale(out_w, dh, dw);
    if (w > out_w)
        w = out_w;
    if (h > out_h)
        h = out_h;
    w = w / 2 * 2;
    h = h / 2 * 2;
    *w_p = w < 2 ? 2 : (int)w;
    *h_p = h < 2 ? 2 : (int)h;
}

static int s_build_graph(s_seg_t *ctx, const AVFrame *frame)
{
    avfilter_graph_free(&ctx->graph);
    const cf_plan_output_t *out = &ctx->plan->output;
    const AVPixFmtDescriptor *desc = av_pix_fmt_desc_get(frame->format);
    if (!desc)
        return s_fail(ctx, AVERROR(EINVAL), "a source frame has no pixel format");
    bool rgb = desc->flags & AV_PIX_FMT_FLAG_RGB;
    char spec[1024];
    size_t len = 0;
    spec[0] = '\0';
    /* Transparent pixels show black, as on a player's black background:
     * premultiplied colour with the alpha plane then dropped. */
    if (desc->flags & AV_PIX_FMT_FLAG_ALPHA)
        len += (size_t)snprintf(spec + len, sizeof spec - len, "premultiply=inplace=1,");
    const char *matrix = rgb ? NULL : s_matrix_name(frame);
    bool full = !rgb && s_full_range(frame);
    if (frame->color_trc == AVCOL_TRC_SMPTE2084 || frame->color_trc == AVCOL_TRC_ARIB_STD_B67) {
        /* HDR to SDR: to linear light (100 nits of reference white), BT.709
         * primaries, Hable's curve without desaturation, then BT.709. The
         * chain FFmpeg's documentation gives for zscale + tonemap. */
        enum AVColorSpace space =
            frame->colorspace != AVCOL_SPC_UNSPECIFIED ? frame->colorspace : AVCOL_SPC_BT2020_NCL;
        enum AVColorPrimaries pri = frame->color_primaries != AVCOL_PRI_UNSPECIFIED
                                        ? frame->color_primaries
                                        : AVCOL_PRI_BT2020;
        len += (size_t)snprintf(spec + len, sizeof spec - len,
                                "zscale=tin=%d:min=%d:pin=%d:rin=%s:t=linear:npl=100,"
                                "format=gbrpf32le,zscale=p=bt709,tonemap=tonemap=hable:desat=0,"
                                "zscale=t=bt709:m=bt709:r=tv,format=yuv420p,",
                                (int)frame->color_trc, rgb ? 0 : (int)space, (int)pri,
                                full ? "full" : "limited");
        matrix = "bt709";
        full = false;
    }
    int w, h;
    s_fit(frame, out->width, out->height, &w, &h);
    /* The same chain an ffmpeg command line would use: fit inside the output
     * keeping the display aspect, centre on black, square pixels, 4:2:0,
     * BT.709 limited range (the tags cf_media_open_video_encoder writes).
     * swscale converts RGB; the YCbCr matrix and range are converted by the
     * colorspace filter, as swscale's own YCbCr-to-YCbCr conversion gives
     * different frames from run to run in this FFmpeg. The range stays as it
     * is through the scaler. BT.2020 sources get their primaries converted
     * too; the others only their matrix. */
    len += (size_t)snprintf(spec + len, sizeof spec - len, "scale=%d:%d:flags=bicubic", w, h);
    if (rgb)
        len += (size_t)snprintf(spec + len, sizeof spec - len,
                                ":out_color_matrix=bt709:out_range=limited");
    else if (full)
        len += (size_t)snprintf(spec + len, sizeof spec - len, ":in_range=full:out_range=full");
    if (matrix && (strcmp(matrix, "bt709") || full)) {
        bool wide = !strcmp(matrix, "bt2020ncl");
        len += (size_t)snprintf(
            spec + len, sizeof spec - len,
            ",colorspace=ispace=%s:irange=%s:iprimaries=%s:itrc=%s:space=bt709:range=tv:"
            "primaries=bt709:trc=bt709:format=yuv420p",
            matrix, full ? "pc" : "tv", wide ? "bt2020" : "bt709", wide ? "bt2020-10" : "bt709");
    }
    snprintf(spec + len, sizeof spec - len,
             ",pad=%d:%d:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,format=yuv420p", out->width,
             out->height);
    int ret = s_make_graph(&ctx->graph, &ctx->buf_src, &ctx->buf_sink, frame,
                           (AVRational){out->fps_den, out->fps_num}, (AVRational){0, 1}, spec);
    if (ret < 0)
        return s_fail(ctx, ret, "filter graph '%s'", spec);
    ctx->graph_w = frame->width;
    ctx->graph_h = frame->height;
    ctx->graph_fmt = frame->format;
    ctx->graph_sar = frame->sample_aspect_ratio;
    ctx->graph_space = frame->colorspace;
    ctx->graph_range = frame->color_range;
    ctx->graph_trc = frame->color_trc;
    ctx->graph_pri = frame->color_primaries;
    return 0;
}

/* Scales FRAME and encodes it as the segment's next frame, COUNT times. */
static int s_emit(s_seg_t *ctx, AVFrame *frame, int64_t count)
{
    if (!ctx->graph || frame->width != ctx->graph_w || frame->height != ctx->graph_h ||
        frame->format != ctx->graph_fmt ||
        av_cmp_q(frame->sample_aspect_ratio, ctx->graph_sar) != 0 ||
        frame->colorspace != ctx->graph_space || frame->color_range != ctx->graph_range ||
        frame->color_trc != ctx->graph_trc || frame->color_primaries != ctx->graph_pri) {
        if (s_build_graph(ctx, frame) < 0)
            return -1;
    }
    for (int64_t i = 0; i < count; i++) {
        if (cf_media_cancelled(ctx->ctl))
            return s_fail(ctx, 0, "cancelled");
        frame->pts = ctx->frames_sent;
        int ret = av_buffersrc_add_frame_flags(ctx->buf_src, frame, AV_BUFFERSRC_FLAG_KEEP_REF);
        if (ret < 0)
            return s_fail(ctx, ret, "filtering failed");
        for (;;) {
            ret = av_buffersink_get_frame(ctx->buf_sink, ctx->filtered);
            if (ret == AVERROR(EAGAIN))
                break;
            if (ret < 0)
                return s_fail(ctx, ret, "filtering failed");
            ctx->filtered->pict_type = AV_PICTURE_TYPE_NONE;
            ctx->filtered->color_primaries = AVCOL_PRI_BT709;
            ctx->filtered->color_trc = AVCOL_TRC_BT709;
            ctx->filtered->colorspace = AVCOL_SPC_BT709;
            ctx->filtered->color_range = AVCOL_RANGE_MPEG;
            ctx->filtered->pts = ctx->frames_sent++;
            ret = s_encode(ctx, ctx->filtered);
            av_frame_unref(ctx->filtered);
            if (ret < 0)
                return -1;
            if (ctx->ctl && ctx->ctl->frames_done)
                atomic_fetch_add(ctx->ctl->frames_done, 1);
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ source graph */

/* The source graph of one part: deinterlacing and the display matrix, on
 * decoded frames before they are mapped to output slots. */
typedef struct {
    AVFilterGraph *graph; /* NULL: frames go straight from the decoder */
    AVFilterContext *src, *sink;
    AVRational in_tb; /* the stream's: frames leave the graph in it */
    AVFrame *raw;
    bool sent_eof;
} s_pre_t;

/* The clockwise rotation a display matrix asks for, in [0, 360), as
 * ffmpeg's command line computes it. */
static double s_rotation(const int32_t *m)
{
    double theta = -round(av_display_rotation_get(m));
    theta -= 360 * floor(theta / 360 + 0.9 / 360);
    return theta;
}

/* Writes the source filters that stream ST, whose first decoded frame is
 * FIRST, needs into SPEC ("" when none). */
static void s_source_chain(const AVStream *st, const AVFrame *first, const cf_plan_output_t *out,
                           char *spec, size_t size)
{
    size_t len = 0;
    spec[0] = '\0';
    /* Interlaced when the stream says so (container or codec header), or
     * when its frames do: then only the frames marked interlaced. */
    enum AVFieldOrder order = st->codecpar->field_order;
    bool stream_interlaced = order == AV_FIELD_TT || order == AV_FIELD_BB || order == AV_FIELD_TB ||
                             order == AV_FIELD_BT;
    if (stream_interlaced || first->interlaced_frame) {
        /* TB and BT name the coded order first, the displayed one second. */
        const char *parity = order == AV_FIELD_TT || order == AV_FIELD_BT   ? "tff"
                             : order == AV_FIELD_BB || order == AV_FIELD_TB ? "bff"
                                                                            : "auto";
        AVRational rate = st->avg_frame_rate.num > 0 ? st->avg_frame_rate : st->r_frame_rate;
        /* An output at the field rate (50p from 50i) gets a frame per field. */
        bool per_field =
            rate.num > 0 && rate.den > 0 &&
            (int64_t)out->fps_num * rate.den * 2 >= (int64_t)rate.num * out->fps_den * 3;
        len += (size_t)snprintf(spec + len, size - len, "bwdif=mode=%s:parity=%s:deint=%s,",
                                per_field ? "send_field" : "send_frame", parity,
                                stream_interlaced ? "all" : "interlaced");
    }
    const int32_t *m =
        (const int32_t *)av_stream_get_side_data((AVStream *)st, AV_PKT_DATA_DISPLAYMATRIX, NULL);
    if (!m) {
        const AVFrameSideData *sd = av_frame_get_side_data(first, AV_FRAME_DATA_DISPLAYMATRIX);
        if (sd && sd->size >= 9 * sizeof(int32_t))
            m = (const int32_t *)sd->data;
    }
    if (m) {
        double theta = s_rotation(m);
        if (fabs(theta - 90) < 1.0)
            len += (size_t)snprintf(spec + len, size - len, "transpose=%s,",
                                    m[3] > 0 ? "cclock_flip" : "clock");
        else if (fabs(theta - 180) < 1.0)
            len += (size_t)snprintf(spec + len, size - len, "%s%s", m[0] < 0 ? "hflip," : "",
                                    m[4] < 0 ? "vflip," : "");
        else if (fabs(theta - 270) < 1.0)
            len += (size_t)snprintf(spec + len, size - len, "transpose=%s,",
                                    m[3] < 0 ? "clock_flip" : "cclock");
        else if (fabs(theta) > 1.0 && !isnan(theta))
            len += (size_t)snprintf(spec + len, size - len,
                                    "rotate=%f:ow=rotw(%f):oh=roth(%f):c=black,",
                                    theta * M_PI / 180, theta * M_PI / 180, theta * M_PI / 180);
        else if (m[4] < 0)
            len += (size_t)snprintf(spec + len, size - len, "vflip,");
    }
    if (len && len < size)
        spec[len - 1] = '\0'; /* the trailing comma */
}

/* Builds the source graph SPEC for frames like FIRST. */
static int s_pre_open(s_pre_t *pre, const AVStream *st, const AVFrame *first, const char *spec)
{
    pre->in_tb = st->time_base;
    pre->raw = av_frame_alloc();
    if (!pre->raw)
        return AVERROR(ENOMEM);
    AVRational rate = st->avg_frame_rate.num > 0 ? st->avg_frame_rate : st->r_frame_rate;
    return s_make_graph(&pre->graph, &pre->src, &pre->sink, first, st->time_base, rate, spec);
}

static void s_pre_close(s_pre_t *pre)
{
    avfilter_graph_free(&pre->graph);
    av_frame_free(&pre->raw);
}

/* The next frame of the part's source, through the source graph when it has
 * one. Timestamps come back in the stream's time base (a frame per field
 * lands on half-frame times, which stream time bases hold). Returns as
 * cf_media_source_read. */
static int s_read(s_pre_t *pre, cf_media_source_t *src, AVFrame *frame, char *why, size_t len)
{
    if (!pre->graph)
        return cf_media_source_read(src, frame, why, len);
    for (;;) {
        int ret = av_buffersink_get_frame(pre->sink, frame);
        if (ret >= 0) {
            frame->pts =
                av_rescale_q(frame->pts, av_buffersink_get_time_base(pre->sink), pre->in_tb);
            return 0;
        }
        if (ret == AVERROR_EOF || (ret == AVERROR(EAGAIN) && pre->sent_eof))
            return AVERROR_EOF;
        if (ret != AVERROR(EAGAIN))
            return cf_media_fail(why, len, ret, "%s: filtering failed", src->path);
        ret = cf_media_source_read(src, pre->raw, why, len);
        if (ret == AVERROR_EOF) {
            pre->sent_eof = true;
            ret = av_buffersrc_add_frame_flags(pre->src, NULL, 0);
        } else if (ret < 0) {
            return ret;
        } else {
            ret = av_buffersrc_add_frame_flags(pre->src, pre->raw, 0);
        }
        if (ret < 0)
            return cf_media_fail(why, len, ret, "%s: filtering failed", src->path);
    }
}

/* ------------------------------------------------------------------ parts */

/* The output slot of a source frame at PTS (from the file's start), for a
 * clip whose first output frame is at IN_OFF (S in the stream time base). */
static int64_t s_slot(int64_t pts, int64_t in_off, AVRational in_tb, AVRational out_tb)
{
    return av_rescale_q_rnd(pts - in_off, in_tb, out_tb, AV_ROUND_NEAR_INF | AV_ROUND_PASS_MINMAX);
}

static int s_encode_part(s_seg_t *ctx, const cf_plan_part_t *part, const char *path)
{
    const cf_plan_output_t *out = &ctx->plan->output;
    const cf_plan_clip_t *clip = &ctx->plan->clips[part->clip];
    cf_media_source_t src;
    s_pre_t pre = {0};
    AVFrame *frame = av_frame_alloc(), *held = av_frame_alloc();
    int rc = -1;
    char why[512];
    if (!frame || !held) {
        s_fail(ctx, AVERROR(ENOMEM), "frames");
        goto end_nosrc;
    }
    /* One decoder thread: decoding is a small part of the work, and frame
     * threads would each hold frames (memory) for little gain. */
    int ret = cf_media_source_open(&src, path, AVMEDIA_TYPE_VIDEO, 1, why, sizeof why);
    if (ret != 0) {
        if (ret == 1)
            s_fail(ctx, 0, "%s: no video stream", path);
        else
            s_fail(ctx, 0, "%s", why);
        goto end_nosrc;
    }
    AVRational in_tb = src.st->time_base;
    AVRational out_tb = {out->fps_den, out->fps_num};
    int64_t in_off = av_rescale_q_rnd(clip->start_us, AV_TIME_BASE_Q, in_tb, AV_ROUND_NEAR_INF);
    int64_t n = part->clip_frame, n_end = part->clip_frame + part->frames;
    /* microseconds of one output frame */
    int64_t frame_us = av_rescale(1000000, out->fps_den, out->fps_num);
    int64_t margin_us = frame_us + 100000;
    bool have_held = false;
    bool seek = n > 0 || clip->start_us > 0;
    int64_t held_pts = 0; /* s_emit rewrites held->pts */
    for (int attempt = 0;; attempt++) {
        int64_t target_us =
            clip->start_us + av_rescale(n, (int64_t)1000000 * out->fps_den, out->fps_num);
        bool from_start = attempt >= 3 || target_us - margin_us <= 0;
        if (seek && cf_media_source_seek(&src, from_start ? 0 : target_us - margin_us, why,
                                         sizeof why) < 0) {
            s_fail(ctx, 0, "%s", why);
            goto end;
        }
        /* Decode up to the first frame past slot n. If the seek landed after
         * the frame slot n needs, seek again from further back. */
        ret = cf_media_source_read(&src, frame, why, sizeof why);
        if (ret == AVERROR_EOF)
            break;
        if (ret < 0) {
            s_fail(ctx, 0, "%s", why);
            goto end;
        }
        if (seek && !from_start && s_slot(frame->pts, in_off, in_tb, out_tb) > n) {
            av_frame_unref(frame);
            margin_us *= 8;
            continue;
        }
        held_pts = frame->pts;
        av_frame_move_ref(held, frame);
        have_held = true;
        break;
    }
    if (have_held) {
        char spec[512];
        s_source_chain(src.st, held, out, spec, sizeof spec);
        if (*spec) {
            /* The first frame goes through the source graph like the rest;
             * the loop below takes what comes out as the candidate. */
            if ((ret = s_pre_open(&pre, src.st, held, spec)) < 0 ||
                (ret = av_buffersrc_add_frame_flags(pre.src, held, 0)) < 0) {
                s_fail(ctx, ret, "%s: filter graph '%s'", path, spec);
                goto end;
            }
            have_held = false;
        }
    }

    while (n < n_end) {
        if (cf_media_cancelled(ctx->ctl)) {
            s_fail(ctx, 0, "cancelled");
            goto end;
        }
        ret = s_read(&pre, &src, frame, why, sizeof why);
        if (ret == AVERROR_EOF) {
            if (!have_held) {
                s_fail(ctx, 0, "%s: no video frames could be decoded", path);
                goto end;
            }
            /* The last frame is shown until its display time ends; a slot
             * still needed after that (plus half a frame of rounding) means
             * the file is shorter than it claimed: truncated or damaged. */
            int64_t dur = held->pkt_duration > 0 ? held->pkt_duration
                          : src.st->avg_frame_rate.num > 0
                              ? av_rescale_q(1, av_inv_q(src.st->avg_frame_rate), in_tb)
                              : av_rescale_q(1, out_tb, in_tb);
            int64_t end_us = av_rescale_q(held_pts + dur, in_tb, AV_TIME_BASE_Q);
            int64_t slot_us = clip->start_us +
                              av_rescale(n_end - 1, (int64_t)1000000 * out->fps_den, out->fps_num);
            if (slot_us >= end_us + frame_us / 2) {
                s_fail(ctx, 0,
                       "%s: video ends at %.3f s, before %.3f s needed by clip %d "
                       "(truncated or damaged file?)",
                       path, (double)end_us / 1e6, (double)slot_us / 1e6, part->clip);
                goto end;
            }
            if (s_emit(ctx, held, n_end - n) < 0)
                goto end;
            n = n_end;
            break;
        }
        if (ret < 0) {
            s_fail(ctx, 0, "%s", why);
            goto end;
        }
        int64_t k = s_slot(frame->pts, in_off, in_tb, out_tb);
        if (!have_held || k <= n) {
            /* Not past slot n yet: the newest such frame is the candidate. */
            av_frame_unref(held);
            held_pts = frame->pts;
            av_frame_move_ref(held, frame);
            have_held = true;
            continue;
        }
        int64_t upto = k < n_end ? k : n_end;
        if (s_emit(ctx, held, upto - n) < 0)
            goto end;
        n = upto;
        av_frame_unref(held);
        held_pts = frame->pts;
        av_frame_move_ref(held, frame);
    }
    rc = 0;
end:
    s_pre_close(&pre);
    cf_media_source_close(&src);
end_nosrc:
    av_frame_free(&frame);
    av_frame_free(&held);
    return rc;
}

/* ------------------------------------------------------------------ segment */

static int s_run_pass(const cf_plan_t *plan, int segment, const char *const *source_paths,
                      const char *out_path, const cf_media_ctl_t *ctl, int pass,
                      const char *stats_path, char *err, size_t errlen)
{
    s_seg_t ctx = {.plan = plan, .seg = &plan->segments[segment], .ctl = ctl};
    ctx.err = err;
    ctx.errlen = errlen;
    int rc = -1, ret;
    bool header_written = false;
    char why[512];
    int threads = ctl ? ctl->threads : 0;
    if (cf_media_open_video_encoder(&plan->output, threads, ctl ? ctl->max_lookahead : 0, pass,
                                    stats_path, &ctx.enc, why, sizeof why) < 0) {
        s_fail(&ctx, 0, "%s", why);
        return -1;
    }
    ctx.pkt = av_packet_alloc();
    ctx.filtered = av_frame_alloc();
    if (!ctx.pkt || !ctx.filtered) {
        s_fail(&ctx, AVERROR(ENOMEM), "allocation");
        goto end;
    }
    if (pass != 1) {
        if ((ret = avformat_alloc_output_context2(&ctx.mux, NULL, "mp4", out_path)) < 0) {
            s_fail(&ctx, ret, "%s", out_path);
            goto end;
        }
        ctx.mux_st = avformat_new_stream(ctx.mux, NULL);
        if (!ctx.mux_st) {
            s_fail(&ctx, AVERROR(ENOMEM), "%s", out_path);
            goto end;
        }
        ctx.mux_st->time_base = ctx.enc->time_base;
        ctx.mux_st->avg_frame_rate = ctx.enc->framerate;
        if ((ret = avcodec_parameters_from_context(ctx.mux_st->codecpar, ctx.enc)) < 0) {
            s_fail(&ctx, ret, "%s", out_path);
            goto end;
        }
        if ((ret = avio_open(&ctx.mux->pb, out_path, AVIO_FLAG_WRITE)) < 0) {
            s_fail(&ctx, ret, "cannot create %s", out_path);
            goto end;
        }
        if ((ret = avformat_write_header(ctx.mux, NULL)) < 0) {
            s_fail(&ctx, ret, "%s", out_path);
            goto end;
        }
        header_written = true;
    }

    for (int p = 0; p < ctx.seg->part_count; p++) {
        const cf_plan_part_t *part = &ctx.seg->parts[p];
        if (!source_paths[part->clip]) {
            s_fail(&ctx, 0, "clip %d has no local source file", part->clip);
            goto end;
        }
        if (s_encode_part(&ctx, part, source_paths[part->clip]) < 0)
            goto end;
    }
    if (s_encode(&ctx, NULL) < 0)
        goto end;
    if (ctx.frames_sent != ctx.seg->frames || ctx.packets_out != ctx.seg->frames) {
        s_fail(&ctx, 0, "encoded %lld frames (%lld packets), planned %lld",
               (long long)ctx.frames_sent, (long long)ctx.packets_out, (long long)ctx.seg->frames);
        goto end;
    }
    if (!ctx.first_is_keyframe) {
        s_fail(&ctx, 0, "the encoder did not start with a keyframe");
        goto end;
    }
    if (ctx.mux && (ret = av_write_trailer(ctx.mux)) < 0) {
        s_fail(&ctx, ret, "cannot finish %s", out_path);
        goto end;
    }
    rc = 0;
end:
    cf_media_output_close(&ctx.mux, header_written, rc < 0);
    avfilter_graph_free(&ctx.graph);
    av_frame_free(&ctx.filtered);
    av_packet_free(&ctx.pkt);
    avcodec_free_context(&ctx.enc);
    return rc;
}

int cf_media_encode_segment(const cf_plan_t *plan, int segment, const char *const *source_paths,
                            const char *out_path, const cf_media_ctl_t *ctl, char *err,
                            size_t errlen)
{
    cf_media_init();
    if (segment < 0 || segment >= plan->segment_count)
        return cf_media_fail(err, errlen, 0, "segment %d: not in the plan", segment);
    if (plan->output.video_bitrate <= 0 || plan->output.encoder == CF_ENCODER_GPU)
        return s_run_pass(plan, segment, source_paths, out_path, ctl, 0, NULL, err, errlen);

    /* Two-pass bitrate mode: x264/x265 statistics per segment, next to the
     * output unless a work directory is given. */
    char stats[4096];
    if (ctl && ctl->work_dir)
        snprintf(stats, sizeof stats, "%s/seg-%05d.stats", ctl->work_dir, segment);
    else
        snprintf(stats, sizeof stats, "%s.stats", out_path);
    int rc = s_run_pass(plan, segment, source_paths, out_path, ctl, 1, stats, err, errlen);
    if (rc == 0)
        rc = s_run_pass(plan, segment, source_paths, out_path, ctl, 2, stats, err, errlen);
    /* x264 writes STATS, STATS.mbtree and temporaries beside them. */
    static const char *const suffixes[] = {"",        ".mbtree",     ".temp", ".mbtree.temp",
                                           ".cutree", ".cutree.temp"};
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s%s", stats, suffixes[i]);
        remove(path);
    }
    return rc;
}
