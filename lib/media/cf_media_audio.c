/* cf_media_encode_audio: the whole timeline's audio, encoded once.
 *
 * Per-segment AAC would leave a gap at every join (encoder priming), so the
 * audio track is one encode over the timeline: each clip's range is decoded,
 * trimmed to the sample in the source's own rate, resampled to 48 kHz stereo
 * and cut or padded to exactly the samples the plan gives the clip; clips
 * without audio get silence. */
#define _GNU_SOURCE
#include <libavutil/audio_fifo.h>
#include <libavutil/channel_layout.h>
#include <libavutil/mathematics.h>
#include <libavutil/samplefmt.h>
#include <libswresample/swresample.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_media_internal.h"

#define S_RATE     CF_PLAN_SAMPLE_RATE
#define S_CHANNELS 2
#define S_CHUNK    4096 /* samples per resampler call */

typedef struct {
    const cf_plan_t *plan;
    const cf_media_ctl_t *ctl;
    AVCodecContext *enc;
    AVFormatContext *mux;
    AVStream *mux_st;
    AVAudioFifo *fifo;
    AVFrame *enc_frame;
    AVPacket *pkt;
    float *silence[S_CHANNELS]; /* S_CHUNK zero samples per channel */
    float *conv[S_CHANNELS];    /* resampler output */
    int conv_cap;
    int64_t samples_in;   /* written to the FIFO */
    int64_t samples_sent; /* to the encoder */
    int64_t clip_left;    /* samples the current clip still owes */
    char *err;
    size_t errlen;
} s_audio_t;

static int s_drain_encoder(s_audio_t *ctx)
{
    for (;;) {
        int ret = avcodec_receive_packet(ctx->enc, ctx->pkt);
        if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF)
            return 0;
        if (ret < 0)
            return cf_media_fail(ctx->err, ctx->errlen, ret, "audio: encoding failed");
        ctx->pkt->stream_index = ctx->mux_st->index;
        av_packet_rescale_ts(ctx->pkt, ctx->enc->time_base, ctx->mux_st->time_base);
        ret = av_interleaved_write_frame(ctx->mux, ctx->pkt);
        if (ret < 0)
            return cf_media_fail(ctx->err, ctx->errlen, ret, "audio: cannot write");
    }
}

/* Encodes whole encoder frames from the FIFO; with FINAL, the rest too. */
static int s_encode_fifo(s_audio_t *ctx, bool final)
{
    int frame_size = ctx->enc->frame_size;
    while (av_audio_fifo_size(ctx->fifo) >= frame_size ||
           (final && av_audio_fifo_size(ctx->fifo) > 0)) {
        int n = av_audio_fifo_size(ctx->fifo);
        if (n > frame_size)
            n = frame_size;
        AVFrame *frame = ctx->enc_frame;
        av_frame_unref(frame);
        frame->nb_samples = n;
        frame->format = ctx->enc->sample_fmt;
        frame->sample_rate = S_RATE;
        int ret = av_channel_layout_copy(&frame->ch_layout, &ctx->enc->ch_layout);
        if (ret >= 0)
            ret = av_frame_get_buffer(frame, 0);
        if (ret >= 0 && av_audio_fifo_read(ctx->fifo, (void **)frame->data, n) != n)
            ret = AVERROR_BUG;
        if (ret < 0)
            return cf_media_fail(ctx->err, ctx->errlen, ret, "audio: frame");
        frame->pts = ctx->samples_sent;
        ctx->samples_sent += n;
        if ((ret = avcodec_send_frame(ctx->enc, frame)) < 0)
            return cf_media_fail(ctx->err, ctx->errlen, ret, "audio: encoding failed");
        if (s_drain_encoder(ctx) < 0)
            return -1;
    }
    if (final) {
        int ret = avcodec_send_frame(ctx->enc, NULL);
        if (ret < 0)
            return cf_media_fail(ctx->err, ctx->errlen, ret, "audio: encoding failed");
        return s_drain_encoder(ctx);
    }
    return 0;
}

/* Appends up to N samples (planar float stereo) owed by the current clip;
 * samples past what the clip owes are dropped. */
static int s_put(s_audio_t *ctx, float *const *data, int64_t n)
{
    if (n > ctx->clip_left)
        n = ctx->clip_left;
    if (n <= 0)
        return 0;
    if (av_audio_fifo_write(ctx->fifo, (void **)data, (int)n) != n)
        return cf_media_fail(ctx->err, ctx->errlen, AVERROR(ENOMEM), "audio: buffer");
    ctx->clip_left -= n;
    ctx->samples_in += n;
    return s_encode_fifo(ctx, false);
}

static int s_put_silence(s_audio_t *ctx, int64_t n)
{
    while (n > 0 && ctx->clip_left > 0) {
        int64_t chunk = n < S_CHUNK ? n : S_CHUNK;
        if (s_put(ctx, ctx->silence, chunk) < 0)
            return -1;
        n -= chunk;
    }
    return 0;
}

/* Runs IN_COUNT samples (NULL: flush) through the resampler into the FIFO. */
static int s_resample(s_audio_t *ctx, SwrContext *swr, const uint8_t **in, int in_count)
{
    int need = swr_get_out_samples(swr, in_count);
    if (need > ctx->conv_cap) {
        for (int c = 0; c < S_CHANNELS; c++) {
            av_freep(&ctx->conv[c]);
            ctx->conv[c] = av_malloc(sizeof(float) * (size_t)need);
            if (!ctx->conv[c])
                return cf_media_fail(ctx->err, ctx->errlen, AVERROR(ENOMEM), "audio: buffer");
        }
        ctx->conv_cap = need;
    }
    for (;;) {
        int got = swr_convert(swr, (uint8_t **)ctx->conv, ctx->conv_cap, in, in_count);
        if (got < 0)
            return cf_media_fail(ctx->err, ctx->errlen, got, "audio: resampling failed");
        if (got > 0 && s_put(ctx, ctx->conv, got) < 0)
            return -1;
        /* When flushing, repeat until the resampler is empty. */
        if (in || got == 0)
            return 0;
    }
}

/* A resampler from FRAME's format to 48 kHz planar float stereo. Built from
 * the first decoded frame: decoders may only know the layout by then.
 * Channel layouts are mixed with libswresample's defaults, which follow
 * ITU-R BS.775: centre and surrounds (side or back) into front left and right
 * at -3 dB, LFE left out; mono into both channels at -3 dB. The matrix is not
 * normalised (float output), so a down-mix can exceed full scale as it does
 * with the ffmpeg CLI's -ac 2. */
static int s_open_resampler(SwrContext **swr, const AVFrame *frame, const AVCodecContext *dec)
{
    AVChannelLayout in_layout = {0}, out_layout = AV_CHANNEL_LAYOUT_STEREO;
    int ret = 0;
    if (frame->ch_layout.order == AV_CHANNEL_ORDER_UNSPEC ||
        !av_channel_layout_check(&frame->ch_layout))
        av_channel_layout_default(&in_layout, frame->ch_layout.nb_channels > 0
                                                  ? frame->ch_layout.nb_channels
                                                  : dec->ch_layout.nb_channels);
    else
        ret = av_channel_layout_copy(&in_layout, &frame->ch_layout);
    if (ret >= 0)
        ret = swr_alloc_set_opts2(swr, &out_layout, AV_SAMPLE_FMT_FLTP, S_RATE, &in_layout,
                                  frame->format, frame->sample_rate, 0, NULL);
    if (ret >= 0)
        ret = swr_init(*swr);
    av_channel_layout_uninit(&in_layout);
    return ret;
}

/* What the resampler was built for, to notice a stream that changes its
 * rate, format or layout midway (MPEG-TS programme changes, AAC that
 * switches channel configuration). */
typedef struct {
    int rate, format;
    AVChannelLayout layout;
} s_input_fmt_t;

static bool s_same_input(const s_input_fmt_t *in, const AVFrame *frame)
{
    return in->rate == frame->sample_rate && in->format == frame->format &&
           !av_channel_layout_compare(&in->layout, &frame->ch_layout);
}

/* Runs N samples of silence in FRAME's format through the resampler, so that
 * a hole in the source keeps the resampler's state (no flush midway, no
 * rounding of the hole to the output rate). */
static int s_resample_silence(s_audio_t *ctx, SwrContext *swr, const AVFrame *frame, int64_t n)
{
    uint8_t **buf = NULL;
    int channels = frame->ch_layout.nb_channels;
    int ret = av_samples_alloc_array_and_samples(&buf, NULL, channels, S_CHUNK, frame->format, 0);
    if (ret < 0)
        return cf_media_fail(ctx->err, ctx->errlen, ret, "audio: buffer");
    av_samples_set_silence(buf, 0, S_CHUNK, channels, frame->format);
    int rc = 0;
    while (n > 0 && ctx->clip_left > 0 && rc == 0) {
        int chunk = n < S_CHUNK ? (int)n : S_CHUNK;
        rc = s_resample(ctx, swr, (const uint8_t **)buf, chunk);
        n -= chunk;
    }
    av_freep(&buf[0]);
    av_freep(&buf);
    return rc;
}

/* Feeds one clip's source audio: from the clip's start sample in the source
 * rate, with gaps in the source filled with silence.
 *
 * NEXT is the source sample (from the clip's time origin) that the samples
 * fed so far end at, counted in samples, not taken from timestamps: a
 * frame's timestamp is only compared with it. Within the container's
 * timestamp precision the two are the same place (Matroska stores
 * milliseconds: 44.1 kHz frames of 1024 samples are 23.22 ms, so every
 * timestamp is up to 22 samples off, and trusting each one would drop or
 * insert samples at every frame). Further apart, the source has a hole
 * (filled with silence) or an overlap (dropped), and the timestamp wins. */
static int s_clip_from_source(s_audio_t *ctx, const cf_plan_clip_t *clip, const char *path)
{
    cf_media_source_t src;
    char why[512];
    int threads = ctx->ctl ? ctx->ctl->threads : 0;
    int ret = cf_media_source_open(&src, path, AVMEDIA_TYPE_AUDIO, threads, why, sizeof why);
    if (ret == 1) /* probed with audio, but no decodable stream now: silence */
        return s_put_silence(ctx, ctx->clip_left);
    if (ret < 0)
        return cf_media_fail(ctx->err, ctx->errlen, 0, "audio: %s", why);
    SwrContext *swr = NULL;
    s_input_fmt_t swr_in = {0};
    AVFrame *frame = av_frame_alloc();
    int rc = -1;
    if (!frame) {
        cf_media_fail(ctx->err, ctx->errlen, AVERROR(ENOMEM), "audio");
        goto end;
    }
    int rate = src.dec->sample_rate;
    if (rate <= 0) {
        cf_media_fail(ctx->err, ctx->errlen, 0, "audio: %s: no sample rate", path);
        goto end;
    }
    AVRational in_tb = src.st->time_base;
    int64_t next = av_rescale_rnd(clip->start_us, rate, 1000000, AV_ROUND_NEAR_INF);
    bool started = false; /* a sample of this clip has been fed */
    if (clip->start_us > 0 &&
        cf_media_source_seek(&src, clip->start_us - 200000, why, sizeof why) < 0) {
        cf_media_fail(ctx->err, ctx->errlen, 0, "audio: %s", why);
        goto end;
    }
    while (ctx->clip_left > 0) {
        if (cf_media_cancelled(ctx->ctl)) {
            cf_media_fail(ctx->err, ctx->errlen, 0, "audio: cancelled");
            goto end;
        }
        ret = cf_media_source_read(&src, frame, why, sizeof why);
        if (ret == AVERROR_EOF)
            break;
        if (ret < 0) {
            cf_media_fail(ctx->err, ctx->errlen, 0, "audio: %s", why);
            goto end;
        }
        if (frame->sample_rate <= 0 || frame->ch_layout.nb_channels <= 0) {
            av_frame_unref(frame);
            continue;
        }
        if (!swr || !s_same_input(&swr_in, frame)) {
            /* The first frame, or the stream changed: what the old
             * resampler holds goes out first. */
            if (swr && s_resample(ctx, swr, NULL, 0) < 0)
                goto end;
            swr_free(&swr);
            av_channel_layout_uninit(&swr_in.layout);
            if ((ret = s_open_resampler(&swr, frame, src.dec)) < 0 ||
                (ret = av_channel_layout_copy(&swr_in.layout, &frame->ch_layout)) < 0) {
                cf_media_fail(ctx->err, ctx->errlen, ret, "audio: %s: cannot resample", path);
                goto end;
            }
            swr_in.rate = frame->sample_rate;
            swr_in.format = frame->format;
            if (frame->sample_rate != rate) {
                next = av_rescale_rnd(next, frame->sample_rate, rate, AV_ROUND_NEAR_INF);
                rate = frame->sample_rate;
            }
        }
        int64_t at = av_rescale_q_rnd(frame->pts, in_tb, (AVRational){1, rate}, AV_ROUND_NEAR_INF);
        int64_t tolerance = av_rescale_q_rnd(1, in_tb, (AVRational){1, rate}, AV_ROUND_UP) + 1;
        int64_t drift = next - at; /* > 0: the frame starts before NEXT */
        int64_t skip = 0;
        if (!started || llabs(drift) > tolerance) {
            if (drift >= frame->nb_samples) { /* wholly before the clip or an overlap */
                av_frame_unref(frame);
                continue;
            }
            if (drift > 0) {
                skip = drift;
            } else if (drift < 0 && !started) {
                /* The audio starts after the clip does: silence first, at
                 * 48 kHz (the resampler has not been fed yet). */
                if (s_put_silence(ctx, av_rescale_rnd(-drift, S_RATE, rate, AV_ROUND_NEAR_INF)) < 0)
                    goto end;
            } else if (drift < 0 && s_resample_silence(ctx, swr, frame, -drift) < 0) {
                goto end;
            }
            next = at + skip;
        }
        const uint8_t *in[AV_NUM_DATA_POINTERS] = {0};
        int bps = av_get_bytes_per_sample(frame->format);
        int planes = av_sample_fmt_is_planar(frame->format) ? frame->ch_layout.nb_channels : 1;
        int stride =
            av_sample_fmt_is_planar(frame->format) ? bps : bps * frame->ch_layout.nb_channels;
        for (int p = 0; p < planes && p < AV_NUM_DATA_POINTERS; p++)
            in[p] = frame->extended_data[p] + skip * stride;
        if (s_resample(ctx, swr, in, frame->nb_samples - (int)skip) < 0)
            goto end;
        started = true;
        next += frame->nb_samples - skip;
        av_frame_unref(frame);
    }
    if (ctx->clip_left > 0 && swr && s_resample(ctx, swr, NULL, 0) < 0)
        goto end;
    /* Audio shorter than the clip's video: the rest is silence. */
    if (s_put_silence(ctx, ctx->clip_left) < 0)
        goto end;
    rc = 0;
end:
    swr_free(&swr);
    av_channel_layout_uninit(&swr_in.layout);
    av_frame_free(&frame);
    cf_media_source_close(&src);
    return rc;
}

int cf_media_encode_audio(const cf_plan_t *plan, const char *const *source_paths,
                          const char *out_path, const cf_media_ctl_t *ctl, char *err, size_t errlen)
{
    cf_media_init();
    s_audio_t ctx = {.plan = plan, .ctl = ctl, .err = err, .errlen = errlen};
    int rc = -1, ret;
    bool header_written = false;
    const AVCodec *codec = avcodec_find_encoder(AV_CODEC_ID_AAC);
    if (!codec)
        return cf_media_fail(err, errlen, 0, "audio: this FFmpeg build has no AAC encoder");
    ctx.enc = avcodec_alloc_context3(codec);
    ctx.pkt = av_packet_alloc();
    ctx.enc_frame = av_frame_alloc();
    ctx.fifo = av_audio_fifo_alloc(AV_SAMPLE_FMT_FLTP, S_CHANNELS, S_CHUNK * 2);
    for (int c = 0; c < S_CHANNELS; c++)
        ctx.silence[c] = av_calloc(S_CHUNK, sizeof(float));
    if (!ctx.enc || !ctx.pkt || !ctx.enc_frame || !ctx.fifo || !ctx.silence[0] || !ctx.silence[1]) {
        cf_media_fail(err, errlen, AVERROR(ENOMEM), "audio");
        goto end;
    }
    ctx.enc->sample_fmt = AV_SAMPLE_FMT_FLTP;
    ctx.enc->sample_rate = S_RATE;
    ctx.enc->bit_rate = plan->output.audio_bitrate;
    ctx.enc->time_base = (AVRational){1, S_RATE};
    ctx.enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
    av_channel_layout_default(&ctx.enc->ch_layout, S_CHANNELS);
    if ((ret = avcodec_open2(ctx.enc, codec, NULL)) < 0) {
        cf_media_fail(err, errlen, ret, "audio: cannot open the AAC encoder");
        goto end;
    }
    if ((ret = avformat_alloc_output_context2(&ctx.mux, NULL, "mp4", out_path)) < 0) {
        cf_media_fail(err, errlen, ret, "audio: %s", out_path);
        goto end;
    }
    ctx.mux_st = avformat_new_stream(ctx.mux, NULL);
    if (!ctx.mux_st) {
        cf_media_fail(err, errlen, AVERROR(ENOMEM), "audio");
        goto end;
    }
    ctx.mux_st->time_base = ctx.enc->time_base;
    if ((ret = avcodec_parameters_from_context(ctx.mux_st->codecpar, ctx.enc)) < 0 ||
        (ret = avio_open(&ctx.mux->pb, out_path, AVIO_FLAG_WRITE)) < 0 ||
        (ret = avformat_write_header(ctx.mux, NULL)) < 0) {
        cf_media_fail(err, errlen, ret, "audio: cannot create %s", out_path);
        goto end;
    }
    header_written = true;

    for (int i = 0; i < plan->clip_count; i++) {
        const cf_plan_clip_t *clip = &plan->clips[i];
        ctx.clip_left = clip->samples;
        if (ctx.samples_in != clip->first_sample) {
            cf_media_fail(err, errlen, 0, "audio: clip %d starts at sample %lld, planned %lld", i,
                          (long long)ctx.samples_in, (long long)clip->first_sample);
            goto end;
        }
        if (clip->has_audio) {
            if (s_clip_from_source(&ctx, clip, source_paths[i]) < 0)
                goto end;
        } else if (s_put_silence(&ctx, clip->samples) < 0) {
            goto end;
        }
    }
    if (s_encode_fifo(&ctx, true) < 0)
        goto end;
    if (ctx.samples_sent != plan->total_samples) {
        cf_media_fail(err, errlen, 0, "audio: encoded %lld samples, planned %lld",
                      (long long)ctx.samples_sent, (long long)plan->total_samples);
        goto end;
    }
    if ((ret = av_write_trailer(ctx.mux)) < 0) {
        cf_media_fail(err, errlen, ret, "audio: cannot finish %s", out_path);
        goto end;
    }
    rc = 0;
end:
    cf_media_output_close(&ctx.mux, header_written, rc < 0);
    for (int c = 0; c < S_CHANNELS; c++) {
        av_freep(&ctx.silence[c]);
        av_freep(&ctx.conv[c]);
    }
    av_audio_fifo_free(ctx.fifo);
    av_frame_free(&ctx.enc_frame);
    av_packet_free(&ctx.pkt);
    avcodec_free_context(&ctx.enc);
    return rc;
}
