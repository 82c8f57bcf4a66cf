/* cf_comp: the composition model. A composition is a timeline of trimmed
 * source clips plus output settings, given as JSON:
 *
 *   {"title": "promo", "priority": "default",
 *    "clips": [{"source": "file:///media/a.mp4", "start": 2.0, "end": 12.5},
 *              {"source": "https://example.com/b.mov"}],
 *    "output": {"width": 1280, "height": 720, "fps": 30, "container": "mp4",
 *               "video_codec": "h264", "preset": "balanced", "crf": 23,
 *               "audio_bitrate": "192k", "encoder": "auto"},
 *    "segment_seconds": 10,
 *    "destination": {"s3": {"bucket": "b", "key": "renders/promo.mp4"}},
 *    "webhook_url": "https://hooks.example.com/clipfarm"}
 *
 * cf_comp_parse() validates everything it can without looking at the sources
 * and reports every problem as "path: reason" (e.g. "clips[2].end: must be
 * greater than start (1.0)"), so a REST handler can return them all at once.
 * Limits (clips, size, fps, duration) keep one request from exhausting a node.
 *
 * cf_comp_t is a plain struct rather than an opaque type: the planner, the
 * renderer and the REST layer read most of its fields, and an accessor for
 * each would add nothing. Treat it as read-only after parsing. */
#ifndef CF_COMP_H
#define CF_COMP_H

#include "cf_state.h" /* cf_priority_t, shared with the data layer */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Limits enforced by validation. */
#define CF_COMP_MAX_CLIPS        500
#define CF_COMP_MAX_WIDTH        3840
#define CF_COMP_MAX_HEIGHT       2160
#define CF_COMP_MIN_SIZE         16
#define CF_COMP_MAX_FPS          120
#define CF_COMP_MAX_SECONDS      (4 * 3600) /* whole output and any one clip */
#define CF_COMP_MAX_TITLE        256
#define CF_COMP_MAX_SOURCE       2048
#define CF_COMP_MIN_SEGMENT_SECS 1
#define CF_COMP_MAX_SEGMENT_SECS 600
#define CF_COMP_MAX_S3_KEY       1024

typedef enum { CF_CONTAINER_MP4, CF_CONTAINER_MKV } cf_container_t;
typedef enum { CF_CODEC_H264, CF_CODEC_HEVC } cf_codec_t;
typedef enum { CF_PRESET_FAST, CF_PRESET_BALANCED, CF_PRESET_HIGH } cf_preset_t;
typedef enum { CF_ENCODER_AUTO, CF_ENCODER_CPU, CF_ENCODER_GPU } cf_encoder_t;

typedef struct {
    char *source;     /* file:///abs/path, http(s)://..., blob:HEX */
    int64_t start_us; /* trim start in the source, microseconds, >= 0 */
    int64_t end_us;   /* trim end, microseconds; -1: to the end of the source */
} cf_comp_clip_t;

typedef struct {
    char *title; /* never NULL ("" when absent) */
    cf_priority_t priority;
    cf_comp_clip_t *clips;
    int clip_count;
    /* output */
    int width, height;
    int fps_num, fps_den; /* reduced; 29.97 -> 30000/1001 */
    cf_container_t container;
    cf_codec_t video_codec;
    cf_preset_t preset;
    int crf;                /* the preset's unless given */
    int64_t video_bitrate;  /* bits/s; > 0 selects two-pass bitrate mode */
    int64_t audio_bitrate;  /* bits/s, the preset's unless given */
    cf_encoder_t encoder;   /* as asked; "auto" is resolved by the renderer */
    bool faststart;         /* MP4 moov in front (balanced and high presets) */
    double segment_seconds; /* planner's target segment length */
    /* "destination": {"s3": {"bucket", "key", "profile"}}: where the node
     * holding the output uploads it (all NULL without one; profile may be
     * NULL for the node's default credentials). */
    char *dest_s3_bucket, *dest_s3_key, *dest_s3_profile;
    /* "webhook_url": told every terminal status (NULL without one). */
    char *webhook_url;
} cf_comp_t;

/* A list of validation problems, each "path: reason". */
typedef struct {
    char **items;
    int count;
    int cap;
} cf_comp_errors_t;

/* Parses and validates LEN bytes of JSON. Returns a new composition, or NULL
 * with every problem appended to ERRORS (which must be zeroed or hold earlier
 * items; free with cf_comp_errors_free). */
cf_comp_t *cf_comp_parse(const char *text, size_t len, cf_comp_errors_t *errors);

/* Reads PATH and parses it like cf_comp_parse. A file that cannot be read is
 * reported as one problem naming it. */
cf_comp_t *cf_comp_load(const char *path, cf_comp_errors_t *errors);

void cf_comp_destroy(cf_comp_t **comp_p);

/* Writes the composition back as JSON with every default filled in (what the
 * planner will use). Returns a string the caller frees, or NULL on ENOMEM. */
char *cf_comp_to_json(const cf_comp_t *comp);

/* Joins the problems with newlines into a new string (caller frees). */
char *cf_comp_errors_join(const cf_comp_errors_t *errors);
void cf_comp_errors_free(cf_comp_errors_t *errors);

/* Names, for messages and JSON. */
const char *cf_comp_priority_name(cf_priority_t priority);
const char *cf_comp_container_name(cf_container_t container);
const char *cf_comp_codec_name(cf_codec_t codec);
const char *cf_comp_preset_name(cf_preset_t preset);
const char *cf_comp_encoder_name(cf_encoder_t encoder);

/* Converts a frame rate given as a number to a reduced fraction: integers stay
 * N/1, NTSC rates (29.97, 23.976, 59.94, ...) map to N*1000/1001, anything
 * else to the closest fraction with a denominator up to 1001. Returns 0, or
 * -1 when FPS is not positive and finite. */
int cf_comp_fps_from_double(double fps, int *num, int *den);

#endif
