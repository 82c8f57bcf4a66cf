/* cf_media_stitch: segments + audio -> output, by bitstream copy.
 *
 * Each segment's packets keep their bytes; only timestamps are rebuilt: a
 * segment's first packet (its IDR, the lowest presentation time of a closed
 * GOP) lands on the segment's planned first frame. Audio packets are
 * interleaved by time as they are read, so nothing is buffered beyond what
 * the muxer's interleaving needs. */
#define _GNU_SOURCE
#include <libavutil/mathematics.h>
#include <stdio.h>
#include <string.h>

#include "cf_media_internal.h"

typedef struct {
    AVFormatContext *fmt;
    AVStream *st;
    AVPacket *pkt;
    bool have; /* pkt holds the next packet */
    bool eof;
} s_input_t;

static int s_input_open(s_input_t *in, const char *path, enum AVMediaType type, char *err,
                        size_t errlen)
{
    memset(in, 0, sizeof *in);
    char why[512];
    if (cf_media_open_input(&in->fmt, path, why, sizeof why) < 0) {
        snprintf(err, errlen, "stitch: cannot open %s: %s", path, why);
        return -1;
    }
    int ret;
    if ((ret = avformat_find_stream_info(in->fmt, NULL)) < 0)
        return cf_media_fail(err, errlen, ret, "stitch: cannot read %s", path);
    for (unsigned i = 0; i < in->fmt->nb_streams; i++) {
        if (in->fmt->streams[i]->codecpar->codec_type == type) {
            in->st = in->fmt->streams[i];
            break;
        }
    }
    if (!in->st)
        return cf_media_fail(err, errlen, 0, "stitch: %s has no %s stream", path,
                             av_get_media_type_string(type));
    in->pkt = av_packet_alloc();
    if (!in->pkt)
        return cf_media_fail(err, errlen, AVERROR(ENOMEM), "stitch");
    return 0;
}

static void s_input_close(s_input_t *in)
{
    av_packet_free(&in->pkt);
    avformat_close_input(&in->fmt);
}

/* Makes in->pkt the next packet of in->st unless at the end. */
static int s_input_next(s_input_t *in, const char *path, char *err, size_t errlen)
{
    if (in->have || in->eof)
        return 0;
    for (;;) {
        int ret = av_read_frame(in->fmt, in->pkt);
        if (ret == AVERROR_EOF) {
            in->eof = true;
            return 0;
        }
        if (ret < 0)
            return cf_media_fail(err, errlen, ret, "stitch: cannot read %s", path);
        if (in->pkt->stream_index == in->st->index) {
            in->have = true;
            return 0;
        }
        av_packet_unref(in->pkt);
    }
}

static bool s_same_extradata(const AVCodecParameters *a, const AVCodecParameters *b)
{
    return a->codec_id == b->codec_id && a->width == b->width && a->height == b->height &&
           a->extradata_size == b->extradata_size &&
           (!a->extradata_size || !memcmp(a->extradata, b->extradata, (size_t)a->extradata_size));
}

int cf_media_stitch(const cf_plan_t *plan, const char *const *segment_paths, const char *audio_path,
                    const char *out_path, const cf_media_ctl_t *ctl, char *err, size_t errlen)
{
    cf_media_init();
    const cf_plan_output_t *out = &plan->output;
    AVRational frame_tb = {out->fps_den, out->fps_num};
    AVFormatContext *mux = NULL;
    AVCodecParameters *first_par = NULL;
    AVDictionary *opts = NULL;
    s_input_t audio = {0}, seg = {0};
    AVStream *vst = NULL, *ast = NULL;
    bool header_written = false;
    int rc = -1, ret;

    if (plan->segment_count < 1)
        return cf_media_fail(err, errlen, 0, "stitch: no segments");
    /* The first segment gives the stream's parameters; the rest must match. */
    if (s_input_open(&seg, segment_paths[0], AVMEDIA_TYPE_VIDEO, err, errlen) < 0)
        goto end;
    first_par = avcodec_parameters_alloc();
    if (!first_par || avcodec_parameters_copy(first_par, seg.st->codecpar) < 0) {
        cf_media_fail(err, errlen, AVERROR(ENOMEM), "stitch");
        goto end;
    }
    if (s_input_open(&audio, audio_path, AVMEDIA_TYPE_AUDIO, err, errlen) < 0)
        goto end;

    const char *format = out->container == CF_CONTAINER_MKV ? "matroska" : "mp4";
    if ((ret = avformat_alloc_output_context2(&mux, NULL, format, out_path)) < 0) {
        cf_media_fail(err, errlen, ret, "stitch: %s", out_path);
        goto end;
    }
    vst = avformat_new_stream(mux, NULL);
    ast = avformat_new_stream(mux, NULL);
    if (!vst || !ast || avcodec_parameters_copy(vst->codecpar, first_par) < 0 ||
        avcodec_parameters_copy(ast->codecpar, audio.st->codecpar) < 0) {
        cf_media_fail(err, errlen, AVERROR(ENOMEM), "stitch");
        goto end;
    }
    vst->codecpar->codec_tag = 0;
    ast->codecpar->codec_tag = 0;
    /* hvc1: the HEVC tag players (Apple's included) expect in MP4. */
    if (out->container == CF_CONTAINER_MP4 && vst->codecpar->codec_id == AV_CODEC_ID_HEVC)
        vst->codecpar->codec_tag = MKTAG('h', 'v', 'c', '1');
    vst->time_base = frame_tb;
    vst->avg_frame_rate = (AVRational){out->fps_num, out->fps_den};
    ast->time_base = audio.st->time_base;
    if ((ret = avio_open(&mux->pb, out_path, AVIO_FLAG_WRITE)) < 0) {
        cf_media_fail(err, errlen, ret, "stitch: cannot create %s", out_path);
        goto end;
    }
    if (out->container == CF_CONTAINER_MP4 && out->faststart)
        av_dict_set(&opts, "movflags", "+faststart", 0);
    if ((ret = avformat_write_header(mux, &opts)) < 0) {
        cf_media_fail(err, errlen, ret, "stitch: cannot write %s", out_path);
        goto end;
    }
    header_written = true;

    for (int s = 0; s < plan->segment_count; s++) {
        const cf_plan_segment_t *ps = &plan->segments[s];
        const char *path = segment_paths[s];
        if (s > 0) {
            s_input_close(&seg);
            if (s_input_open(&seg, path, AVMEDIA_TYPE_VIDEO, err, errlen) < 0)
                goto end;
            if (!s_same_extradata(first_par, seg.st->codecpar)) {
                cf_media_fail(err, errlen, 0,
                              "stitch: segment %d was encoded with other parameters than "
                              "segment 0 and cannot be joined by copy",
                              s);
                goto end;
            }
        }
        int64_t shift = 0, packets = 0;
        for (;;) {
            if (cf_media_cancelled(ctl)) {
                cf_media_fail(err, errlen, 0, "stitch: cancelled");
                goto end;
            }
            if (s_input_next(&seg, path, err, errlen) < 0)
                goto end;
            if (seg.eof)
                break;
            AVPacket *pkt = seg.pkt;
            int64_t pts = av_rescale_q_rnd(pkt->pts, seg.st->time_base, frame_tb,
                                           AV_ROUND_NEAR_INF | AV_ROUND_PASS_MINMAX);
            int64_t dts = av_rescale_q_rnd(pkt->dts, seg.st->time_base, frame_tb,
                                           AV_ROUND_NEAR_INF | AV_ROUND_PASS_MINMAX);
            if (packets == 0) {
                if (!(pkt->flags & AV_PKT_FLAG_KEY) || pkt->pts == AV_NOPTS_VALUE) {
                    cf_media_fail(err, errlen, 0,
                                  "stitch: segment %d does not start with a keyframe", s);
                    goto end;
                }
                shift = ps->first_frame - pts;
            }
            packets++;
            pkt->pts = pts + shift;
            pkt->dts = (dts == AV_NOPTS_VALUE ? pts : dts) + shift;
            pkt->duration = 1;
            pkt->pos = -1;
            pkt->stream_index = vst->index;
            /* Audio up to this packet's time first. */
            for (;;) {
                if (s_input_next(&audio, audio_path, err, errlen) < 0)
                    goto end;
                if (audio.eof ||
                    av_compare_ts(audio.pkt->dts, audio.st->time_base, pkt->dts, frame_tb) > 0)
                    break;
                audio.pkt->stream_index = ast->index;
                audio.pkt->pos = -1;
                av_packet_rescale_ts(audio.pkt, audio.st->time_base, ast->time_base);
                audio.have = false;
                if ((ret = av_interleaved_write_frame(mux, audio.pkt)) < 0) {
                    cf_media_fail(err, errlen, ret, "stitch: cannot write audio");
                    goto end;
                }
            }
            av_packet_rescale_ts(pkt, frame_tb, vst->time_base);
            seg.have = false;
            if ((ret = av_interleaved_write_frame(mux, pkt)) < 0) {
                cf_media_fail(err, errlen, ret, "stitch: cannot write segment %d", s);
                goto end;
            }
        }
        if (packets != ps->frames) {
            cf_media_fail(err, errlen, 0, "stitch: segment %d holds %lld frames, planned %lld", s,
                          (long long)packets, (long long)ps->frames);
            goto end;
        }
    }
    for (;;) {
        if (s_input_next(&audio, audio_path, err, errlen) < 0)
            goto end;
        if (audio.eof)
            break;
        audio.pkt->stream_index = ast->index;
        audio.pkt->pos = -1;
        av_packet_rescale_ts(audio.pkt, audio.st->time_base, ast->time_base);
        audio.have = false;
        if ((ret = av_interleaved_write_frame(mux, audio.pkt)) < 0) {
            cf_media_fail(err, errlen, ret, "stitch: cannot write audio");
            goto end;
        }
    }
    if ((ret = av_write_trailer(mux)) < 0) {
        cf_media_fail(err, errlen, ret, "stitch: cannot finish %s", out_path);
        goto end;
    }
    rc = 0;
end:
    cf_media_output_close(&mux, header_written, rc < 0);
    av_dict_free(&opts);
    avcodec_parameters_free(&first_par);
    s_input_close(&seg);
    s_input_close(&audio);
    return rc;
}
