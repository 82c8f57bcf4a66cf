/* cf_worker_render: the renderer's side of cf_worker, in its own file: it is
 * the only part of the worker that needs the media engine's headers, whose
 * names must not meet the data layer's in one translation unit. */
#ifndef CF_WORKER_RENDER_H
#define CF_WORKER_RENDER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cf_s3_t cf_s3_t;

typedef struct cf_blob_store_t cf_blob_store_t;
typedef struct cf_source_policy_t cf_source_policy_t;

typedef struct {
    const char *phase; /* "fetch", "probe", "encode", "stitch" */
    int64_t done, total;
    int segments_done, segments_total;
} cf_worker_progress_t;

typedef void (*cf_worker_progress_fn)(void *arg, const cf_worker_progress_t *progress);

typedef struct {
    int64_t frame_start, frame_end; /* output frames, end exclusive */
} cf_worker_segment_t;

typedef struct {
    char encoder[16];
    double seconds;    /* wall time of the render */
    double duration_s; /* of the output */
    int jobs;
    int segment_count;
    cf_worker_segment_t *segments; /* caller frees */
} cf_worker_render_result_t;

/* The output file's extension ("mp4" or "mkv") of the composition in
 * SPEC_JSON, or NULL when it does not parse. */
const char *cf_worker_render_extension(const char *spec_json);

/* Renders the composition in SPEC_JSON into OUT_PATH with JOBS encoder
 * threads (0: the renderer's choice), resolving blob: sources in BLOBS (may
 * be NULL), its workspace under WORK_PARENT. PROGRESS runs on the calling
 * thread every interval_ms; CANCEL stops the render. Returns 0 and fills
 * RESULT, or -1 with a one-line reason in err ("cancelled" when stopped). */
int cf_worker_render(const char *spec_json, const char *out_path, const char *work_parent,
                     cf_blob_store_t *blobs, const cf_source_policy_t *policy, cf_s3_t *s3,
                     int jobs, atomic_bool *cancel, cf_worker_progress_fn progress,
                     void *progress_arg, int interval_ms, cf_worker_render_result_t *result,
                     char *err, size_t errlen);

/* The composition's S3 destination: 1 with new strings in *bucket_p,
 * *key_p and *profile_p (NULL for the default credentials), 0 when it has
 * none. */
int cf_worker_render_destination(const char *spec_json, char **bucket_p, char **key_p,
                                 char **profile_p);

#endif
