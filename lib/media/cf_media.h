/* cf_media: the media engine, on FFmpeg's libav* (never the ffmpeg CLI).
 *
 * Three steps that run separately so that a cluster can spread them over
 * nodes, each working on local files:
 *   cf_media_encode_segment  one planned segment -> an MP4 file holding only
 *                            video, starting with an IDR of a closed GOP
 *   cf_media_encode_audio    the whole timeline's audio, once -> an M4A file
 *                            (48 kHz stereo AAC, silence where a clip has none)
 *   cf_media_stitch          segments + audio -> the output, by bitstream copy
 *                            with rebuilt timestamps (MP4 with faststart, MKV)
 * plus cf_media_probe for the planner and cf_media_gpu_check for NVENC.
 *
 * Memory stays bounded: frames stream through decoder, scaler and encoder;
 * nothing holds a whole file.
 *
 * Every function is safe to call from several threads at once on different
 * files. Failures return -1 with a one-line reason in err. */
#ifndef CF_MEDIA_H
#define CF_MEDIA_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_plan.h"

typedef struct {
    int64_t duration_us; /* video stream, from its first frame to its last frame's end */
    int width, height;
    int fps_num, fps_den; /* average frame rate (0/1 when unknown) */
    char video_codec[32];
    bool has_audio;
    int sample_rate, channels;
} cf_media_info_t;

/* Opens PATH and describes it. Decodes the first video frame and the first
 * audio frame, so that what cannot be rendered fails here, before any
 * encoding, with "PATH: ..." in err: the file cannot be opened or parsed, it
 * has no video stream ("no video stream") or one without frames, a video or
 * audio codec this FFmpeg cannot decode ("unsupported video codec ..."), or
 * no video or audio packet decodes ("no decodable video frames ..."). An
 * audio track without packets counts as no audio. */
int cf_media_probe(const char *path, cf_media_info_t *info, char *err, size_t errlen);

/* Controls for the long-running calls. Every field may be 0/NULL. */
typedef struct {
    atomic_int_fast64_t *frames_done; /* += 1 per frame encoded (video and audio at video rate) */
    atomic_bool *cancel;              /* checked per frame; true -> fail with "cancelled" */
    int threads;                      /* codec threads (0: libav's choice) */
    int max_lookahead;    /* x264/x265 rate-control lookahead: 0 the preset's, > 0 at most this
                             many frames, -1 none (each frame costs memory) */
    const char *work_dir; /* two-pass statistics files go here (default: out dir) */
} cf_media_ctl_t;

/* Encodes segment SEGMENT of PLAN into OUT_PATH (MP4, video only).
 * SOURCE_PATHS holds a local file for each clip of the plan (NULL for clips
 * the segment does not use: a node given one segment of a plan fetches only
 * the sources that segment's parts name). Seeks each
 * source accurately (to the keyframe before, then decodes and drops), maps
 * source frames to output frames (output frame n of a clip trimmed at start
 * shows the source frame displayed at start + n/fps, as FFmpeg's fps filter
 * with start_time does), scales with letterbox/pillarbox to the output
 * size, and encodes exactly the planned frames: any other count is an error. */
int cf_media_encode_segment(const cf_plan_t *plan, int segment, const char *const *source_paths,
                            const char *out_path, const cf_media_ctl_t *ctl, char *err,
                            size_t errlen);

/* Encodes the whole timeline's audio into OUT_PATH (M4A): each clip's range
 * resampled to 48 kHz stereo, silence for clips without audio and past the end
 * of a clip's audio, exactly plan->total_samples samples. */
int cf_media_encode_audio(const cf_plan_t *plan, const char *const *source_paths,
                          const char *out_path, const cf_media_ctl_t *ctl, char *err,
                          size_t errlen);

/* Joins SEGMENT_PATHS (plan->segment_count files from
 * cf_media_encode_segment, in order) and AUDIO_PATH into OUT_PATH by
 * bitstream copy. Checks that every segment starts with a keyframe, holds
 * its planned frame count and shares the first segment's parameter sets. */
int cf_media_stitch(const cf_plan_t *plan, const char *const *segment_paths, const char *audio_path,
                    const char *out_path, const cf_media_ctl_t *ctl, char *err, size_t errlen);

/* Tries to open the NVENC encoder for CODEC (h264_nvenc / hevc_nvenc) for
 * real. Returns 0 when it opens, else -1 with "no NVENC encoder can be
 * opened (...)" in err. */
int cf_media_gpu_check(cf_codec_t codec, char *err, size_t errlen);

/* The rate-control lookahead (frames) x264/x265 use for OUT's codec and
 * preset when nothing caps it. */
int cf_media_preset_lookahead(const cf_plan_output_t *out);

/* Routes libav's log lines into cf_log (debug level) instead of stderr.
 * Called by every function above; idempotent. */
void cf_media_init(void);

#endif
