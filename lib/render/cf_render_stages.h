/* cf_render_stages: a render in four stages that can run in one process
 * (cf_render_run, `clipfarm render`) or on many nodes (the cluster), so
 * there is one render path:
 *
 *   prepare          fetch the sources, probe them, plan in frames
 *   encode segment   one segment of the plan, into a blob store
 *   encode audio     the whole timeline's audio, once, into a blob store
 *   assemble         the segments and the audio, stitched by bitstream copy
 *
 * A prepared job holds the plan and local copies of the sources it needs
 * (pinned in the node's source cache when there is one) plus a scratch
 * workspace; the encode stages only read it, so several threads may run
 * them on one job at once. Every piece an encode stage makes is a blob:
 * its content address, size and the frames (or samples) it holds. Error
 * messages name sources as the composition gave them, never local paths. */
#ifndef CF_RENDER_STAGES_H
#define CF_RENDER_STAGES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_blob.h"
#include "cf_comp.h"
#include "cf_media.h"
#include "cf_plan.h"
#include "cf_render.h"

typedef struct cf_render_job_t cf_render_job_t;

/* What an encode or assemble stage produced. */
typedef struct {
    char blob[CF_BLOB_HEX_SIZE]; /* content address in the store */
    uint64_t bytes;
    int64_t frames; /* video frames; for the audio, samples at 48 kHz */
    double seconds; /* wall time of the stage */
} cf_render_piece_t;

/* Stage 1: fetches every clip's source (reporting "fetch" progress),
 * probes each ("probe"), picks the encoder ("auto": NVENC when it opens)
 * and plans. Uses opts->work_parent, source_cache, policy, s3, blob
 * resolver and cancel. Returns the job, or NULL with a reason in err. */
cf_render_job_t *cf_render_prepare(const cf_comp_t *comp, const cf_render_opts_t *opts, char *err,
                                   size_t errlen);

/* For a node given part of a plan made elsewhere: takes *PLAN_P and fetches
 * only the sources that SEGMENTS (COUNT indices) use, plus, when AUDIO, every
 * clip with audio. Nothing is probed or planned again. Returns the job, or
 * NULL with a reason in err (*plan_p is freed either way). */
cf_render_job_t *cf_render_job_for_plan(cf_plan_t **plan_p, const int *segments, int count,
                                        bool audio, const cf_render_opts_t *opts, char *err,
                                        size_t errlen);

void cf_render_job_destroy(cf_render_job_t **job_p);

/* The job's plan (borrowed), the largest source picture it probed (pixels;
 * 0 for a job made from a plan) and the encoder's libav name. */
const cf_plan_t *cf_render_job_plan(const cf_render_job_t *job);
int64_t cf_render_job_source_pixels(const cf_render_job_t *job);
const char *cf_render_job_encoder(const cf_render_job_t *job);

/* The local file of clip I (borrowed; NULL when the job did not fetch it). */
const char *cf_render_job_source_path(const cf_render_job_t *job, int i);

/* Hands the plan to the caller (the job keeps using its copy until it is
 * destroyed, so call this last). */
cf_plan_t *cf_render_job_take_plan(cf_render_job_t *job);

/* Stage 2: encodes segment SEGMENT into STORE. CTL's cancel and frame
 * counter work as for cf_media_encode_segment (its work_dir is replaced by
 * the job's scratch). Returns 0 with PIECE filled (frames = the planned
 * count, which the encoder checked), or -1 with a reason in err. */
int cf_render_encode_segment(const cf_render_job_t *job, int segment, cf_blob_store_t *store,
                             const cf_media_ctl_t *ctl, cf_render_piece_t *piece, char *err,
                             size_t errlen);

/* Stage 3: encodes the timeline's audio into STORE (frames = samples). */
int cf_render_encode_audio(const cf_render_job_t *job, cf_blob_store_t *store,
                           const cf_media_ctl_t *ctl, cf_render_piece_t *piece, char *err,
                           size_t errlen);

/* Stage 4: stitches PLAN's segments (SEGMENTS[i] for segment i, each a blob
 * in STORE of the size recorded) and AUDIO into the output. With OUT_PATH it
 * is written beside it and renamed into place when complete; with OUT_PATH
 * NULL it becomes a blob in OUTPUT_STORE (STORE when NULL). OUTPUT (may be
 * NULL) gets the output's blob address (computed either way), size and
 * frame count. Returns 0, or -1 with a reason in err. */
int cf_render_assemble(const cf_plan_t *plan, cf_blob_store_t *store,
                       const cf_render_piece_t *segments, const cf_render_piece_t *audio,
                       const cf_media_ctl_t *ctl, const char *out_path,
                       cf_blob_store_t *output_store, cf_render_piece_t *output, char *err,
                       size_t errlen);

#endif
