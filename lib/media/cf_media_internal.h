/* Helpers shared by the cf_media_*.c files; not part of the public API. */
#ifndef CF_MEDIA_INTERNAL_H
#define CF_MEDIA_INTERNAL_H

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/avutil.h>
#include <stdbool.h>
#include <stddef.h>

#include "cf_media.h"

/* Writes "fmt..." into err, appending ": <libav error text>" when code < 0.
 * Returns -1. */
int cf_media_fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The last error-level line libav logged on this thread ("" if none), and
 * a way to forget it before a call whose failure should quote it. */
/* Opens the local file PATH for demuxing with the file protocol only and
 * one of the single-file demuxers (never playlists, concat lists, image
 * sequences or anything else that opens further resources). Returns 0, or
 * -1 with a reason in err (PATH is not repeated in it). */
int cf_media_open_input(AVFormatContext **fmt_p, const char *path, char *err, size_t errlen);

const char *cf_media_last_log(void);
void cf_media_clear_log(void);

/* Closes and frees an output muxer opened with avio_open, NULLing *mux_p.
 * When the work failed after the header was written, the trailer is still
 * written so libav releases what the muxer holds (the file is removed by the
 * caller). Safe on NULL. */
void cf_media_output_close(AVFormatContext **mux_p, bool header_written, bool failed);

static inline bool cf_media_cancelled(const cf_media_ctl_t *ctl)
{
    return ctl && ctl->cancel && atomic_load(ctl->cancel);
}

/* A demuxer + decoder for the best stream of one type in a local file. */
typedef struct {
    const char *path;
    AVFormatContext *fmt;
    AVCodecContext *dec;
    AVStream *st;
    AVPacket *pkt;
    int64_t origin;   /* the file's start time in st->time_base */
    int64_t last_pts; /* of the last frame returned, st->time_base */
    bool demux_eof;   /* flush packet sent */
    int packets;      /* of the stream, sent to the decoder */
    int bad_packets;  /* packets the decoder rejected */
    int read_error;   /* the demuxer error that ended the stream early, or 0 */
} cf_media_source_t;

/* Opens PATH and a decoder for its best stream of TYPE. Returns 0, 1 when the
 * file has no stream of TYPE (src is then closed), or -1 with err set. */
int cf_media_source_open(cf_media_source_t *src, const char *path, enum AVMediaType type,
                         int threads, char *err, size_t errlen);

/* Seeks to the keyframe at or before TIME_US (from the file's start; <= 0
 * means the very start). Returns 0 or -1 with err set. */
int cf_media_source_seek(cf_media_source_t *src, int64_t time_us, char *err, size_t errlen);

/* Decodes the next frame into FRAME (pts set from the best-effort
 * timestamp, relative to the file's start). Returns 0, AVERROR_EOF at the
 * end, or another negative code with err set. */
int cf_media_source_read(cf_media_source_t *src, AVFrame *frame, char *err, size_t errlen);

void cf_media_source_close(cf_media_source_t *src);

/* Opens the video encoder PLAN_OUT asks for. PASS is 0 (single pass), 1 or 2;
 * STATS_PATH names the two-pass statistics file; MAX_LOOKAHEAD as in
 * cf_media_ctl_t. Returns 0 or -1. */
int cf_media_open_video_encoder(const cf_plan_output_t *out, int threads, int max_lookahead,
                                int pass, const char *stats_path, AVCodecContext **enc_p, char *err,
                                size_t errlen);

#endif
