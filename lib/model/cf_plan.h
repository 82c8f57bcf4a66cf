/* cf_plan: turns a composition plus what probing found about its sources
 * into frame-exact work: the output's frames per clip, its audio samples per
 * clip, and segments that any node can encode on its own.
 *
 * Everything is counted in output frames, never in floating seconds:
 *   - a clip trimmed to [start, end) in its source contributes the output
 *     frames whose time start + k/fps falls before end, i.e.
 *     ceil((end - start) * fps) frames (at least 1), computed exactly from
 *     microseconds and the rational frame rate;
 *   - output frame n of a clip shows the source frame displayed at
 *     start + n/fps (see cf_media);
 *   - audio is 48 kHz; the clip starting at output frame F starts at sample
 *     round(F * 48000 / fps), so audio and video never drift apart.
 * Segments are cut every segment_frames output frames over the whole
 * timeline (a segment may span clips), segment_frames is a multiple of
 * gop_frames, and every segment starts with an IDR frame of a closed GOP.
 * All segments of one plan share one encoder configuration, so they join by
 * bitstream copy.
 *
 * A plan is pure data (no file handles, no libav state): a coordinator can
 * ship one segment of it to another node. cf_plan_t is a plain struct, read
 * by the encoder, the renderer and the scheduler; treat it as read-only. */
#ifndef CF_PLAN_H
#define CF_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_comp.h"

#define CF_PLAN_SAMPLE_RATE  48000
#define CF_PLAN_MAX_GOP_SECS 10

/* What probing a clip's source found. */
typedef struct {
    int64_t duration_us; /* of the video stream, from the source's first frame */
    bool has_audio;
} cf_plan_source_t;

/* Encoder settings shared by every segment of one output. */
typedef struct {
    int width, height;
    int fps_num, fps_den;
    cf_codec_t codec;
    cf_encoder_t encoder; /* CF_ENCODER_CPU or CF_ENCODER_GPU, never AUTO */
    cf_preset_t preset;
    int crf;               /* CRF (x264/x265) or CQ (NVENC) */
    int64_t video_bitrate; /* > 0: two-pass bitrate mode */
    int64_t audio_bitrate;
    cf_container_t container;
    bool faststart;
    int gop_frames;
} cf_plan_output_t;

typedef struct {
    char *source;             /* the composition's reference (file://, http(s)://, blob:) */
    int64_t start_us, end_us; /* trim in the source, end resolved */
    int64_t first_frame;      /* output frame where the clip starts */
    int64_t frames;
    int64_t first_sample; /* output audio sample where the clip starts */
    int64_t samples;
    bool has_audio; /* false: silence */
} cf_plan_clip_t;

/* A run of one clip's frames inside a segment. */
typedef struct {
    int clip;           /* index into the plan's (and composition's) clips */
    int64_t clip_frame; /* first frame, counted from the clip's first frame */
    int64_t frames;
} cf_plan_part_t;

typedef struct {
    int index;
    int64_t first_frame; /* output frame of the segment's IDR */
    int64_t frames;
    cf_plan_part_t *parts;
    int part_count;
} cf_plan_segment_t;

typedef struct {
    cf_plan_output_t output;
    cf_plan_clip_t *clips;
    int clip_count;
    cf_plan_segment_t *segments;
    int segment_count;
    int64_t total_frames;
    int64_t total_samples;
    int segment_frames;
} cf_plan_t;

/* Plans COMP. SOURCES holds one entry per clip. ENCODER is the encoder to
 * use when the composition asks for "auto" (the caller knows whether NVENC
 * opens here); otherwise the composition's choice stands. Returns a new plan,
 * or NULL with a one-line reason in err ("clips[1].end: past the end of the
 * source (4.000 s)"). */
cf_plan_t *cf_plan_new(const cf_comp_t *comp, const cf_plan_source_t *sources,
                       cf_encoder_t auto_encoder, char *err, size_t errlen);

void cf_plan_destroy(cf_plan_t **plan_p);

/* Output frames of a clip lasting DURATION_US at FPS_NUM/FPS_DEN:
 * ceil(duration * fps), at least 1 for any positive duration, 0 otherwise. */
int64_t cf_plan_frames_for(int64_t duration_us, int fps_num, int fps_den);

/* The 48 kHz sample where output frame FRAME starts (rounded to nearest). */
int64_t cf_plan_sample_at(int64_t frame, int fps_num, int fps_den);

/* Writes the whole plan as JSON (compact), e.g. for a coordinator to hand
 * segments to other nodes or to keep beside the composition. Returns a
 * string the caller frees, or NULL on ENOMEM. */
char *cf_plan_to_json(const cf_plan_t *plan);

/* The same without the segments, which cf_plan_from_json derives from the
 * clips (they are cut every segment_frames over the timeline): the size of
 * what a coordinator sends with each task no longer grows with the
 * composition's length. */
char *cf_plan_to_json_compact(const cf_plan_t *plan);

/* Reads a plan written by cf_plan_to_json or cf_plan_to_json_compact (no
 * "segments": derived; present: must agree). The input is untrusted: every
 * field is type- and range-checked and the plan must be consistent (clips
 * and segments tile the timeline, parts stay inside their clips, audio
 * ranges follow the frames). Returns a new plan, or NULL with a one-line
 * reason in err. */
cf_plan_t *cf_plan_from_json(const char *text, size_t len, char *err, size_t errlen);

/* Fills ORDER (segment_count entries) with segment indexes, longest first
 * (ties by index), the dispatch order that shortens the tail. */
void cf_plan_dispatch_order(const cf_plan_t *plan, int *order);

#endif
