/* cf_render: renders a composition on this machine, start to finish:
 * fetch sources -> probe -> plan -> segments on N worker threads (plus the
 * whole-timeline audio) -> stitch, the stages of cf_render_stages.h run in
 * one process. Everything temporary lives in one workspace directory (the
 * encoded pieces in a blob store inside it) that is removed on every exit
 * path; the output is written beside OUT under a temporary name and renamed
 * into place only when complete, or stored as a blob.
 *
 * Progress goes to a callback on the calling thread; a cancel flag (set it
 * from a signal handler or another thread) stops the workers within a frame
 * and unwinds cleanly. */
#ifndef CF_RENDER_H
#define CF_RENDER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_comp.h"
#include "cf_fetch.h"
#include "cf_plan.h"

typedef struct cf_s3_t cf_s3_t;
typedef struct cf_source_cache_t cf_source_cache_t;
typedef struct cf_blob_store_t cf_blob_store_t;

typedef struct {
    const char *phase; /* "fetch", "probe", "encode", "stitch" */
    int64_t done;      /* units of the phase: sources, or frames while encoding */
    int64_t total;
    int segments_done, segments_total;
} cf_render_progress_t;

typedef void (*cf_render_progress_fn)(void *arg, const cf_render_progress_t *progress);

typedef struct {
    int jobs;                /* worker threads; 0: one per online CPU */
    const char *work_parent; /* where the workspace goes; NULL: $TMPDIR or /tmp */
    cf_render_progress_fn progress;
    void *progress_arg;
    int progress_interval_ms; /* 0: 100 ms */
    atomic_bool *cancel;      /* may be NULL */
    cf_fetch_blob_fn blob_resolver;
    void *blob_arg;
    /* What sources may be read (NULL: any readable file, any address; the
     * node passes the operator's policy). */
    const cf_source_policy_t *policy;
    cf_s3_t *s3; /* s3:// sources (NULL: refused) */
    /* The node's source cache (NULL: downloads go to the render's own
     * workspace and are gone after it). */
    cf_source_cache_t *source_cache;
    /* Where the output goes when cf_render_run is given no path: a blob in
     * this store (the node's). */
    cf_blob_store_t *output_store;
    /* Peak memory the encoders may use, in bytes: 0 means
     * CF_RENDER_DEFAULT_MEMORY, < 0 no limit. To stay within it the render
     * runs fewer segments at once and, when one encoder alone would not fit,
     * shortens x264/x265's rate-control lookahead (the frames it buffers). */
    int64_t memory_budget;
    /* CF_ENCODER_CPU or _GPU: plan with this encoder whatever the
     * composition says for "auto" and whatever this machine has (a
     * coordinator planning for the cluster's encoders); CF_ENCODER_AUTO
     * (0): decide here, opening NVENC to see. */
    cf_encoder_t encoder;
} cf_render_opts_t;

#define CF_RENDER_DEFAULT_MEMORY (300LL << 20)

typedef struct {
    cf_plan_t *plan;      /* what was rendered; the caller owns it */
    char encoder[16];     /* "libx264", "h264_nvenc", ... */
    int jobs;             /* segments encoded at once */
    int lookahead;        /* rate-control lookahead used (frames) */
    double seconds;       /* wall time */
    char output_blob[65]; /* the output's content address (BLAKE2b-256 hex) */
    uint64_t output_bytes;
} cf_render_result_t;

/* Renders COMP into OUT_PATH, or with OUT_PATH NULL into opts->output_store
 * (result->output_blob names it): the four stages of cf_render_stages.h in
 * this process, segments and audio on worker threads. Returns 0 and fills
 * RESULT (may be NULL), or -1 with a one-line reason in err ("cancelled"
 * after a cancel). */
int cf_render_run(const cf_comp_t *comp, const char *out_path, const cf_render_opts_t *opts,
                  cf_render_result_t *result, char *err, size_t errlen);

/* Frees what cf_render_run put in RESULT. */
void cf_render_result_clear(cf_render_result_t *result);

#endif
