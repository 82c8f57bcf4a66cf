/* cf_caps: what a node can do. Cores, memory, the video encoders that
 * actually open here (libx264, libx265, h264_nvenc, hevc_nvenc, h264_qsv,
 * h264_vaapi are tried with libavcodec: being compiled in is not enough, a
 * GPU encoder must find its device), frames per second per usable encoder
 * from a short calibration encode, the operator's tags and the slot count.
 * Advertised in HELLO and in the node registry.
 *
 * Probing is quick (opening encoders); calibration takes a fraction of a
 * second per encoder and is cached in DATA_DIR/calibration.json, valid while
 * libavcodec's version, the core count and the set of usable encoders stay
 * the same. */
#ifndef CF_CAPS_H
#define CF_CAPS_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

/* Calibration frames are CF_CAPS_CALIB_WIDTH x CF_CAPS_CALIB_HEIGHT, encoded
 * with one thread, so an encoder's figure is one slot's speed at that size. */
#define CF_CAPS_CALIB_WIDTH  640
#define CF_CAPS_CALIB_HEIGHT 360

typedef struct cf_caps_t cf_caps_t;

/* Probes this machine: cores, memory and the encoders that open. TAGS
 * (copied) and SLOTS come from the operator. When DATA_DIR (may be NULL)
 * holds a valid calibration it is used (cf_caps_calibrated() is then true).
 * Returns NULL only when out of memory. */
/* SLOTS: tasks at once (0: 1; < 0: none, a node that only serves the API). */
cf_caps_t *cf_caps_probe(const char *data_dir, char *const *tags, int tag_count, int slots);

/* Measures frames/s of every usable encoder with a short synthetic encode
 * (about a quarter of a second each) and caches the result in DATA_DIR (may be NULL: no
 * cache). Blocking: run it off any latency-sensitive thread; when STOP (may
 * be NULL) becomes non-zero it gives up within a frame and returns -1 with
 * nothing changed. Returns 0, or -1 with a reason in err when an encoder that
 * opened fails to encode (it is then dropped from the usable list). */
int cf_caps_calibrate(cf_caps_t *self, const char *data_dir, const atomic_int *stop, char *err,
                      size_t errlen);

void cf_caps_destroy(cf_caps_t **self_p);

/* Keeps only the encoders named in LIST (comma-separated libav names: what
 * an operator lets this node offer, --encoders). Returns 0, or -1 with a
 * reason in err when a name is not an encoder this node can open. */
int cf_caps_restrict(cf_caps_t *self, const char *list, char *err, size_t errlen);
cf_caps_t *cf_caps_dup(const cf_caps_t *self);

bool cf_caps_calibrated(const cf_caps_t *self);
int cf_caps_cores(const cf_caps_t *self);
long cf_caps_memory_mb(const cf_caps_t *self);
int cf_caps_slots(const cf_caps_t *self);
int cf_caps_encoder_count(const cf_caps_t *self);
const char *cf_caps_encoder_name(const cf_caps_t *self, int index);
/* Measured frames/s, 0 until calibrated. */
double cf_caps_encoder_fps(const cf_caps_t *self, int index);
bool cf_caps_has_encoder(const cf_caps_t *self, const char *name);
int cf_caps_tag_count(const cf_caps_t *self);
const char *cf_caps_tag(const cf_caps_t *self, int index);

/* {"cores","memory_mb","slots","encoders":[{"name","fps"}],"tags":[...],
 *  "calibrated","calibration":{"width","height","threads"}} (caller decrefs). */
json_t *cf_caps_to_json(const cf_caps_t *self);

/* One line for logs: "cores=8 memory=31866MB slots=4
 * encoders=libx264(412.0 fps),libx265(61.3 fps) tags=gpu,site=lab".
 * Caller frees. */
char *cf_caps_summary(const cf_caps_t *self);

/* The encoders cf_caps_probe tries, in order, ending with NULL. */
extern const char *const cf_caps_candidates[];

#endif
