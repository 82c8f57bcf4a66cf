/* cf_media: shared parts of the media engine: libav logging, sources
 * (demux + decode), probing, opening encoders, the NVENC check. */
#define _GNU_SOURCE
#include "cf_media_internal.h"

#include <libavutil/avstring.h>
#include <libavutil/opt.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cf_log.h"

/* ------------------------------------------------------------------ logging */

static __thread char s_last_log[256];
static __thread int s_print_prefix = 1;

static void s_log_callback(void *avcl, int level, const char *fmt, va_list vl)
{
    if (level > AV_LOG_WARNING)
        return;
    char line[512];
    av_log_format_line2(avcl, level, fmt, vl, line, sizeof line, &s_print_prefix);
    size_t len = strlen(line);
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        line[--len] = '\0';
    if (!len)
        return;
    if (level <= AV_LOG_ERROR) {
        /* Kept for error messages without the "[h264_nvenc @ 0x...]" prefix. */
        const char *text = line;
        if (text[0] == '[' && strstr(text, "] "))
            text = strstr(text, "] ") + 2;
        snprintf(s_last_log, sizeof s_last_log, "%.255s", text);
    }
    if (cf_log_enabled(CF_LOG_DEBUG))
        cf_log_debug("libav", "%s", line);
}

static pthread_once_t s_init_once = PTHREAD_ONCE_INIT;

static void s_init(void)
{
    av_log_set_callback(s_log_callback);
}

void cf_media_init(void)
{
    pthread_once(&s_init_once, s_init);
}

const char *cf_media_last_log(void)
{
    return s_last_log;
}

void cf_media_clear_log(void)
{
    s_last_log[0] = '\0';
}

int cf_media_fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    if (code < 0 && n >= 0 && (size_t)n < errlen) {
        char text[AV_ERROR_MAX_STRING_SIZE];
        av_strerror(code, text, sizeof text);
        snprintf(err + n, errlen - (size_t)n, ": %s", text);
    }
    return -1;
}

/* ------------------------------------------------------------------ sources */

/* Demuxers a source may use: containers and elementary streams that read
 * only the one file they are given. Left out on purpose: playlists and
 * manifests (hls, dash), concat lists, image sequences (image2), SDP/RTP,
 * IMF and the script demuxers, which open further files or URLs named
 * inside the source: a hostile composition could reach any file or address
 * through them. */
static const char *const s_source_formats =
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,live_flv,mpegts,mpeg,mpegvideo,mxf,gxf,lxf,"
    "wav,w64,aiff,caf,mp3,aac,ac3,eac3,dts,truehd,ogg,flac,amr,h264,hevc,m4v,vc1,ivf,obu,av1,dv,"
    "nut,gif,asf,yuv4mpegpipe,png_pipe,jpeg_pipe,webp_pipe,bmp_pipe,tiff_pipe";

int cf_media_open_input(AVFormatContext **fmt_p, const char *path, char *err, size_t errlen)
{
    AVIOContext *pb = NULL;
    AVDictionary *io_opts = NULL;
    AVDictionary *opts = NULL;
    const AVInputFormat *format = NULL;
    int ret;
    *fmt_p = NULL;
    /* Probe first, reading through the file protocol only, so the refusal
     * can name what the source is. */
    av_dict_set(&io_opts, "protocol_whitelist", "file", 0);
    ret = avio_open2(&pb, path, AVIO_FLAG_READ, NULL, &io_opts);
    av_dict_free(&io_opts);
    if (ret < 0)
        return cf_media_fail(err, errlen, ret, "cannot open");
    ret = av_probe_input_buffer2(pb, &format, path, NULL, 0, 0);
    avio_closep(&pb);
    if (ret < 0 || !format)
        return cf_media_fail(err, errlen, ret, "not a media file libav can read");
    if (!av_match_list(format->name, s_source_formats, ',')) {
        bool playlist = av_match_list(format->name, "hls,applehttp,dash,concat,ffconcat,sdp", ',');
        snprintf(err, errlen,
                 playlist ? "a %s playlist or list of other resources is not accepted as a source"
                          : "the %s format (it can refer to other files or URLs) is not accepted "
                            "as a source",
                 format->name);
        return -1;
    }
    av_dict_set(&opts, "protocol_whitelist", "file", 0);
    av_dict_set(&opts, "format_whitelist", s_source_formats, 0);
    ret = avformat_open_input(fmt_p, path, format, &opts);
    av_dict_free(&opts);
    if (ret < 0)
        return cf_media_fail(err, errlen, ret, "cannot open");
    return 0;
}

static bool s_is_picture(const AVStream *st)
{
    return st->disposition & AV_DISPOSITION_ATTACHED_PIC;
}

/* The best video stream that is a real stream (not cover art), or -1. */
static int s_video_index(AVFormatContext *fmt)
{
    int index = av_find_best_stream(fmt, AVMEDIA_TYPE_VIDEO, -1, -1, NULL, 0);
    if (index >= 0 && !s_is_picture(fmt->streams[index]))
        return index;
    for (unsigned i = 0; i < fmt->nb_streams; i++) {
        AVStream *st = fmt->streams[i];
        if (st->codecpar->codec_type == AVMEDIA_TYPE_VIDEO && !s_is_picture(st))
            return (int)i;
    }
    return -1;
}

/* A clip's time 0: its video stream's first frame, for the audio too, so
 * that an audio stream starting earlier or later than the video keeps its
 * offset, and an untrimmed clip is exactly its video frames. The container's
 * start would include an earlier audio start (one frame too many). */
static int64_t s_clip_origin_us(AVFormatContext *fmt)
{
    int index = s_video_index(fmt);
    if (index >= 0 && fmt->streams[index]->start_time != AV_NOPTS_VALUE)
        return av_rescale_q(fmt->streams[index]->start_time, fmt->streams[index]->time_base,
                            AV_TIME_BASE_Q);
    return fmt->start_time != AV_NOPTS_VALUE ? fmt->start_time : 0;
}

int cf_media_source_open(cf_media_source_t *src, const char *path, enum AVMediaType type,
                         int threads, char *err, size_t errlen)
{
    cf_media_init();
    memset(src, 0, sizeof *src);
    src->path = path;
    char why[512];
    if (cf_media_open_input(&src->fmt, path, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s: %s", path, why);
        return -1;
    }
    int ret;
    if ((ret = avformat_find_stream_info(src->fmt, NULL)) < 0) {
        cf_media_fail(err, errlen, ret, "%s: cannot read stream info", path);
        goto fail;
    }
    int index = -1;
    for (unsigned i = 0; i < src->fmt->nb_streams; i++)
        src->fmt->streams[i]->discard = AVDISCARD_ALL;
    const AVCodec *codec = NULL;
    index = av_find_best_stream(src->fmt, type, -1, -1, &codec, 0);
    if (index >= 0 && s_is_picture(src->fmt->streams[index])) {
        index = -1;
        for (unsigned i = 0; i < src->fmt->nb_streams; i++) {
            AVStream *st = src->fmt->streams[i];
            if (st->codecpar->codec_type == type && !s_is_picture(st)) {
                index = (int)i;
                codec = avcodec_find_decoder(st->codecpar->codec_id);
                break;
            }
        }
    }
    if (index == AVERROR_STREAM_NOT_FOUND || index == -1) {
        cf_media_source_close(src);
        return 1;
    }
    if (index < 0 || !codec) {
        /* Streams of TYPE, none with a decoder: name the codec of the one
         * a player would pick. */
        int any = av_find_best_stream(src->fmt, type, -1, -1, NULL, 0);
        enum AVCodecID id =
            any >= 0 ? src->fmt->streams[any]->codecpar->codec_id : AV_CODEC_ID_NONE;
        if (id == AV_CODEC_ID_NONE)
            snprintf(err, errlen, "%s: unsupported %s codec (unknown to this FFmpeg build)", path,
                     av_get_media_type_string(type));
        else
            snprintf(err, errlen, "%s: unsupported %s codec %s (no decoder in this FFmpeg build)",
                     path, av_get_media_type_string(type), avcodec_get_name(id));
        goto fail;
    }
    src->st = src->fmt->streams[index];
    src->st->discard = AVDISCARD_DEFAULT;
    src->dec = avcodec_alloc_context3(codec);
    src->pkt = av_packet_alloc();
    if (!src->dec || !src->pkt) {
        cf_media_fail(err, errlen, AVERROR(ENOMEM), "%s", path);
        goto fail;
    }
    if ((ret = avcodec_parameters_to_context(src->dec, src->st->codecpar)) < 0) {
        cf_media_fail(err, errlen, ret, "%s: bad codec parameters", path);
        goto fail;
    }
    src->dec->pkt_timebase = src->st->time_base;
    src->dec->thread_count = threads;
    if ((ret = avcodec_open2(src->dec, codec, NULL)) < 0) {
        cf_media_fail(err, errlen, ret, "%s: cannot open the %s decoder", path, codec->name);
        goto fail;
    }
    src->origin = av_rescale_q(s_clip_origin_us(src->fmt), AV_TIME_BASE_Q, src->st->time_base);
    src->last_pts = AV_NOPTS_VALUE;
    return 0;
fail:
    cf_media_source_close(src);
    return -1;
}

void cf_media_source_close(cf_media_source_t *src)
{
    avcodec_free_context(&src->dec);
    av_packet_free(&src->pkt);
    avformat_close_input(&src->fmt);
    src->st = NULL;
}

int cf_media_source_seek(cf_media_source_t *src, int64_t time_us, char *err, size_t errlen)
{
    int ret;
    if (time_us <= 0) {
        ret = avformat_seek_file(src->fmt, -1, INT64_MIN,
                                 src->fmt->start_time != AV_NOPTS_VALUE ? src->fmt->start_time : 0,
                                 INT64_MAX, 0);
        if (ret < 0)
            ret = av_seek_frame(src->fmt, src->st->index, src->origin, AVSEEK_FLAG_BACKWARD);
    } else {
        int64_t ts = src->origin + av_rescale_q(time_us, AV_TIME_BASE_Q, src->st->time_base);
        ret = av_seek_frame(src->fmt, src->st->index, ts, AVSEEK_FLAG_BACKWARD);
    }
    if (ret < 0)
        return cf_media_fail(err, errlen, ret, "%s: cannot seek to %.3f s", src->path,
                             (double)time_us / 1e6);
    avcodec_flush_buffers(src->dec);
    src->demux_eof = false;
    src->last_pts = AV_NOPTS_VALUE;
    return 0;
}

int cf_media_source_read(cf_media_source_t *src, AVFrame *frame, char *err, size_t errlen)
{
    for (;;) {
        int ret = avcodec_receive_frame(src->dec, frame);
        if (ret >= 0) {
            int64_t pts = frame->best_effort_timestamp;
            if (pts == AV_NOPTS_VALUE)
                pts = frame->pts;
            if (pts == AV_NOPTS_VALUE) {
                /* No timestamp at all: continue from the previous frame. */
                int64_t step = frame->pkt_duration > 0 ? frame->pkt_duration : 1;
                pts = src->last_pts != AV_NOPTS_VALUE ? src->last_pts + step : src->origin;
            }
            src->last_pts = pts;
            frame->pts = pts - src->origin;
            return 0;
        }
        if (ret == AVERROR_EOF)
            return AVERROR_EOF;
        if (ret != AVERROR(EAGAIN))
            return cf_media_fail(err, errlen, ret, "%s: decoding failed", src->path);
        if (src->demux_eof)
            return AVERROR_EOF; /* drained */

        ret = av_read_frame(src->fmt, src->pkt);
        if (ret == AVERROR(EAGAIN))
            continue;
        if (ret < 0) {
            /* The end, or a damaged/truncated file: either way the stream
             * ends here; callers check that it lasted long enough. */
            if (ret != AVERROR_EOF)
                src->read_error = ret;
            src->demux_eof = true;
            avcodec_send_packet(src->dec, NULL);
            continue;
        }
        if (src->pkt->stream_index != src->st->index) {
            av_packet_unref(src->pkt);
            continue;
        }
        src->packets++;
        ret = avcodec_send_packet(src->dec, src->pkt);
        av_packet_unref(src->pkt);
        if (ret == AVERROR_INVALIDDATA) {
            /* A damaged packet: skip it as FFmpeg does. Missing frames show
             * up as a short source, which the callers check. */
            src->bad_packets++;
            continue;
        }
        if (ret < 0 && ret != AVERROR(EAGAIN))
            return cf_media_fail(err, errlen, ret, "%s: decoding failed", src->path);
    }
}

/* ------------------------------------------------------------------ probe */

/* Where the video stream's last frame ends (its pts plus duration, in
 * st->time_base), read from the packets of the file's last seconds: for
 * containers without a per-stream duration (Matroska), whose container
 * duration includes an audio stream that runs longer or starts earlier. AV_NOPTS_VALUE when the
 * packets cannot be read to a clean end (a damaged file: the caller falls back to the header). */
static int64_t s_video_end(cf_media_source_t *src)
{
    AVStream *st = src->st;
    int64_t end = AV_NOPTS_VALUE;
    int64_t frame_dur = st->avg_frame_rate.num > 0
                            ? av_rescale_q(1, av_inv_q(st->avg_frame_rate), st->time_base)
                            : 0;
    int64_t guess =
        st->duration != AV_NOPTS_VALUE && st->duration > 0 ? src->origin + st->duration
        : src->fmt->duration != AV_NOPTS_VALUE
            ? src->origin + av_rescale_q(src->fmt->duration, AV_TIME_BASE_Q, st->time_base)
            : AV_NOPTS_VALUE;
    if (guess == AV_NOPTS_VALUE)
        return AV_NOPTS_VALUE;
    int64_t back = av_rescale_q(5 * AV_TIME_BASE, AV_TIME_BASE_Q, st->time_base);
    if (av_seek_frame(src->fmt, st->index, guess - back, AVSEEK_FLAG_BACKWARD) < 0 &&
        av_seek_frame(src->fmt, st->index, src->origin, AVSEEK_FLAG_BACKWARD) < 0)
        return AV_NOPTS_VALUE;
    int ret;
    while ((ret = av_read_frame(src->fmt, src->pkt)) >= 0) {
        if (src->pkt->stream_index == st->index && src->pkt->pts != AV_NOPTS_VALUE) {
            int64_t dur = src->pkt->duration > 0 ? src->pkt->duration : frame_dur;
            if (end == AV_NOPTS_VALUE || src->pkt->pts + dur > end)
                end = src->pkt->pts + dur;
        }
        av_packet_unref(src->pkt);
    }
    return ret == AVERROR_EOF ? end : AV_NOPTS_VALUE;
}

/* Opens PATH's best stream of TYPE and decodes until a frame comes out (into
 * FRAME), so that a source nothing can be made of fails in the probe, before
 * any segment is encoded. Returns 0 with a frame, 1 when PATH has no stream
 * of TYPE, 2 when the stream has no packets at all, or -1 with "PATH: ..." in
 * err: an unsupported codec, no packet that decodes (damaged or garbage
 * data), or a decoding error. */
static int s_probe_decode(const char *path, enum AVMediaType type, AVFrame *frame, char *err,
                          size_t errlen)
{
    cf_media_source_t src;
    int ret = cf_media_source_open(&src, path, type, 1, err, errlen);
    if (ret != 0)
        return ret;
    ret = cf_media_source_read(&src, frame, err, errlen);
    if (ret == AVERROR_EOF && src.packets == 0) {
        ret = 2;
    } else if (ret == AVERROR_EOF) {
        snprintf(err, errlen, "%s: no decodable %s frames (%d %s packets, none decoded)", path,
                 av_get_media_type_string(type), src.packets, src.dec->codec->name);
        ret = -1;
    } else if (ret < 0) {
        ret = -1;
    }
    cf_media_source_close(&src);
    return ret;
}

int cf_media_probe(const char *path, cf_media_info_t *info, char *err, size_t errlen)
{
    memset(info, 0, sizeof *info);
    info->fps_den = 1;
    /* Every stream the render will read must decode. An audio stream
     * without a decodable frame fails too, rather than a render that
     * silently loses the clip's sound; an audio track with no packets at
     * all is a silent clip. */
    AVFrame *frame = av_frame_alloc();
    if (!frame) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    int ret = s_probe_decode(path, AVMEDIA_TYPE_VIDEO, frame, err, errlen);
    if (ret == 1)
        snprintf(err, errlen, "%s: no video stream", path);
    else if (ret == 2)
        snprintf(err, errlen, "%s: its video stream has no frames", path);
    if (ret == 0) {
        av_frame_unref(frame);
        ret = s_probe_decode(path, AVMEDIA_TYPE_AUDIO, frame, err, errlen);
        if (ret == 0 && (frame->sample_rate <= 0 || frame->ch_layout.nb_channels <= 0)) {
            snprintf(err, errlen, "%s: its audio has no sample rate or channel count", path);
            ret = -1;
        } else if (ret == 0) {
            info->has_audio = true;
            info->sample_rate = frame->sample_rate;
            info->channels = frame->ch_layout.nb_channels;
        } else if (ret > 0) {
            ret = 0; /* no audio, or an empty track: silence */
        }
    }
    av_frame_free(&frame);
    if (ret != 0)
        return -1;

    cf_media_source_t src;
    ret = cf_media_source_open(&src, path, AVMEDIA_TYPE_VIDEO, 1, err, errlen);
    if (ret != 0)
        return -1;
    AVStream *st = src.st;
    info->width = st->codecpar->width;
    info->height = st->codecpar->height;
    if (st->avg_frame_rate.num > 0 && st->avg_frame_rate.den > 0) {
        info->fps_num = st->avg_frame_rate.num;
        info->fps_den = st->avg_frame_rate.den;
    }
    snprintf(info->video_codec, sizeof info->video_codec, "%s",
             avcodec_get_name(st->codecpar->codec_id));

    /* The video stream's length, from its first frame: the stream's own
     * duration (an MP4 index; a truncated file still claims it, and the
     * encoder then says the file is damaged), else its last packets. */
    /* Rounded down: the planner takes ceil(duration * fps) frames, and 2
     * frames at 30 fps are 66666.7 us, not 66667. */
    int64_t end = AV_NOPTS_VALUE;
    if (st->duration != AV_NOPTS_VALUE && st->duration > 0)
        info->duration_us =
            av_rescale_q_rnd(st->duration, st->time_base, AV_TIME_BASE_Q, AV_ROUND_DOWN);
    else if ((end = s_video_end(&src)) != AV_NOPTS_VALUE)
        info->duration_us =
            av_rescale_q_rnd(end - src.origin, st->time_base, AV_TIME_BASE_Q, AV_ROUND_DOWN);
    else if (src.fmt->duration != AV_NOPTS_VALUE)
        info->duration_us = src.fmt->duration +
                            (src.fmt->start_time != AV_NOPTS_VALUE ? src.fmt->start_time : 0) -
                            av_rescale_q(src.origin, st->time_base, AV_TIME_BASE_Q);
    if (info->width <= 0 || info->height <= 0) {
        snprintf(err, errlen, "%s: video stream has no frame size", path);
        cf_media_source_close(&src);
        return -1;
    }
    if (info->duration_us <= 0) {
        snprintf(err, errlen, "%s: video stream has no duration", path);
        cf_media_source_close(&src);
        return -1;
    }
    cf_media_source_close(&src);
    return 0;
}

/* ------------------------------------------------------------------ encoders */

static const char *s_encoder_name(const cf_plan_output_t *out)
{
    if (out->encoder == CF_ENCODER_GPU)
        return out->codec == CF_CODEC_HEVC ? "hevc_nvenc" : "h264_nvenc";
    return out->codec == CF_CODEC_HEVC ? "libx265" : "libx264";
}

/* x264/x265 preset names for ours, after the origin service. */
static const char *s_cpu_preset(cf_preset_t preset)
{
    switch (preset) {
        case CF_PRESET_FAST:
            return "ultrafast";
        case CF_PRESET_HIGH:
            return "slow";
        default:
            return "medium";
    }
}

static const char *s_nvenc_preset(cf_preset_t preset)
{
    switch (preset) {
        case CF_PRESET_FAST:
            return "p1";
        case CF_PRESET_HIGH:
            return "p7";
        default:
            return "p4";
    }
}

int cf_media_preset_lookahead(const cf_plan_output_t *out)
{
    /* x264 and x265 preset defaults for ultrafast, medium and slow. */
    static const int x264[] = {
        [CF_PRESET_FAST] = 0, [CF_PRESET_BALANCED] = 40, [CF_PRESET_HIGH] = 50};
    static const int x265[] = {
        [CF_PRESET_FAST] = 5, [CF_PRESET_BALANCED] = 20, [CF_PRESET_HIGH] = 25};
    return out->codec == CF_CODEC_HEVC ? x265[out->preset] : x264[out->preset];
}

int cf_media_open_video_encoder(const cf_plan_output_t *out, int threads, int max_lookahead,
                                int pass, const char *stats_path, AVCodecContext **enc_p, char *err,
                                size_t errlen)
{
    cf_media_init();
    const char *name = s_encoder_name(out);
    const AVCodec *codec = avcodec_find_encoder_by_name(name);
    if (!codec)
        return cf_media_fail(err, errlen, 0, "this FFmpeg build has no %s encoder", name);
    AVCodecContext *enc = avcodec_alloc_context3(codec);
    AVDictionary *opts = NULL;
    if (!enc)
        return cf_media_fail(err, errlen, AVERROR(ENOMEM), "%s", name);
    enc->width = out->width;
    enc->height = out->height;
    enc->pix_fmt = AV_PIX_FMT_YUV420P;
    enc->sample_aspect_ratio = (AVRational){1, 1};
    /* What the output graph converts every source to (cf_media_video.c):
     * tagged, so players do not guess from the frame size. */
    enc->color_primaries = AVCOL_PRI_BT709;
    enc->color_trc = AVCOL_TRC_BT709;
    enc->colorspace = AVCOL_SPC_BT709;
    enc->color_range = AVCOL_RANGE_MPEG;
    enc->time_base = (AVRational){out->fps_den, out->fps_num};
    enc->framerate = (AVRational){out->fps_num, out->fps_den};
    enc->gop_size = out->gop_frames;
    enc->keyint_min = out->gop_frames;
    enc->thread_count = threads;
    /* Parameter sets go in the container, identical for every segment. */
    enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER | AV_CODEC_FLAG_CLOSED_GOP;

    char params[512];
    char num[32];
    if (out->encoder == CF_ENCODER_GPU) {
        av_dict_set(&opts, "preset", s_nvenc_preset(out->preset), 0);
        av_dict_set(&opts, "rc", "vbr", 0);
        av_dict_set(&opts, "forced-idr", "1", 0);
        av_dict_set(&opts, "strict_gop", "1", 0);
        av_dict_set(&opts, "no-scenecut", "1", 0);
        if (out->video_bitrate > 0) {
            enc->bit_rate = out->video_bitrate;
            av_dict_set(&opts, "multipass", "fullres", 0);
        } else {
            enc->bit_rate = 0;
            snprintf(num, sizeof num, "%d", out->crf);
            av_dict_set(&opts, "cq", num, 0);
        }
    } else {
        /* Closed GOPs of exactly gop_frames starting at frame 0: every
         * segment starts with an IDR and segments join by plain copy.
         * x264's stitchable keeps it from tuning headers to each segment's
         * content (two-pass mode otherwise gives segments different PPS). */
        int n = snprintf(params, sizeof params, "keyint=%d:min-keyint=%d:scenecut=0:open-gop=0%s",
                         out->gop_frames, out->gop_frames,
                         out->codec == CF_CODEC_HEVC ? "" : ":stitchable=1");
        av_dict_set(&opts, "preset", s_cpu_preset(out->preset), 0);
        if (out->video_bitrate > 0) {
            enc->bit_rate = out->video_bitrate;
            if (out->codec == CF_CODEC_HEVC && pass)
                snprintf(params + n, sizeof params - (size_t)n, ":pass=%d:stats=%s", pass,
                         stats_path);
            else if (pass) {
                enc->flags |= pass == 1 ? AV_CODEC_FLAG_PASS1 : AV_CODEC_FLAG_PASS2;
                av_dict_set(&opts, "stats", stats_path, 0);
            }
        } else {
            snprintf(num, sizeof num, "%d", out->crf);
            av_dict_set(&opts, "crf", num, 0);
        }
        /* A shorter lookahead keeps fewer frames in memory (see cf_render's
         * memory budget); headers do not change, segments still join. */
        int lookahead = cf_media_preset_lookahead(out);
        if (max_lookahead != 0 && (max_lookahead < 0 ? 0 : max_lookahead) < lookahead) {
            lookahead = max_lookahead < 0 ? 0 : max_lookahead;
            if (out->codec == CF_CODEC_HEVC && lookahead < 5)
                lookahead = 5; /* x265 needs more than its 4 B-frames */
            size_t len = strlen(params);
            snprintf(params + len, sizeof params - len, ":rc-lookahead=%d", lookahead);
        }
        if (out->codec == CF_CODEC_HEVC) {
            size_t len = strlen(params);
            snprintf(params + len, sizeof params - len, ":log-level=error");
            av_dict_set(&opts, "x265-params", params, 0);
        } else {
            av_dict_set(&opts, "x264-params", params, 0);
        }
    }
    cf_media_clear_log();
    int ret = avcodec_open2(enc, codec, &opts);
    av_dict_free(&opts);
    if (ret < 0) {
        const char *why = cf_media_last_log();
        if (*why)
            cf_media_fail(err, errlen, 0, "cannot open the %s encoder: %s", name, why);
        else
            cf_media_fail(err, errlen, ret, "cannot open the %s encoder", name);
        avcodec_free_context(&enc);
        return -1;
    }
    *enc_p = enc;
    return 0;
}

int cf_media_gpu_check(cf_codec_t codec, char *err, size_t errlen)
{
    /* A small but real session: NVENC either opens or tells us why not. */
    cf_plan_output_t out = {.width = 256,
                            .height = 144,
                            .fps_num = 30,
                            .fps_den = 1,
                            .codec = codec,
                            .encoder = CF_ENCODER_GPU,
                            .preset = CF_PRESET_FAST,
                            .crf = 23,
                            .gop_frames = 30};
    AVCodecContext *enc = NULL;
    char why[400];
    if (cf_media_open_video_encoder(&out, 1, 0, 0, NULL, &enc, why, sizeof why) < 0) {
        snprintf(err, errlen, "no NVENC encoder can be opened (%s)", why);
        return -1;
    }
    avcodec_free_context(&enc);
    return 0;
}

void cf_media_output_close(AVFormatContext **mux_p, bool header_written, bool failed)
{
    AVFormatContext *mux = *mux_p;
    if (!mux)
        return;
    if (failed && header_written)
        av_write_trailer(mux);
    avio_closep(&mux->pb);
    avformat_free_context(mux);
    *mux_p = NULL;
}
