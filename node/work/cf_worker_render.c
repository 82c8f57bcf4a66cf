/* cf_worker_render: cf_render_run behind a small interface for cf_worker. */
#include "cf_worker_render.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_blob.h"
#include "cf_comp.h"
#include "cf_render.h"

const char *cf_worker_render_extension(const char *spec_json)
{
    cf_comp_errors_t errors = {0};
    cf_comp_t *comp = cf_comp_parse(spec_json, strlen(spec_json), &errors);
    cf_comp_errors_free(&errors);
    if (!comp)
        return NULL;
    const char *ext = comp->container == CF_CONTAINER_MKV ? "mkv" : "mp4";
    cf_comp_destroy(&comp);
    return ext;
}

typedef struct {
    cf_worker_progress_fn fn;
    void *arg;
} s_progress_t;

static void s_progress(void *arg, const cf_render_progress_t *p)
{
    s_progress_t *sp = arg;
    cf_worker_progress_t wp = {p->phase, p->done, p->total, p->segments_done, p->segments_total};
    sp->fn(sp->arg, &wp);
}

static int s_resolve_blob(void *arg, const char *ref, char *path, size_t pathlen, char *err,
                          size_t errlen)
{
    return cf_blob_path(arg, ref, path, pathlen, err, errlen);
}

int cf_worker_render(const char *spec_json, const char *out_path, const char *work_parent,
                     cf_blob_store_t *blobs, const cf_source_policy_t *policy, struct cf_s3_t *s3,
                     int jobs, atomic_bool *cancel, cf_worker_progress_fn progress,
                     void *progress_arg, int interval_ms, cf_worker_render_result_t *result,
                     char *err, size_t errlen)
{
    memset(result, 0, sizeof *result);
    cf_comp_errors_t errors = {0};
    cf_comp_t *comp = cf_comp_parse(spec_json, strlen(spec_json), &errors);
    if (!comp) {
        /* Validated on intake; only a spec stored by something else lands here. */
        char *joined = cf_comp_errors_join(&errors);
        snprintf(err, errlen, "invalid composition: %s", joined ? joined : "unparseable");
        for (char *p = err; *p; p++)
            if (*p == '\n')
                *p = ';';
        free(joined);
        cf_comp_errors_free(&errors);
        return -1;
    }
    s_progress_t sp = {progress, progress_arg};
    cf_render_opts_t opts = {
        .jobs = jobs,
        .work_parent = work_parent,
        .progress = progress ? s_progress : NULL,
        .progress_arg = &sp,
        .progress_interval_ms = interval_ms,
        .cancel = cancel,
        .blob_resolver = blobs ? s_resolve_blob : NULL,
        .blob_arg = blobs,
        .policy = policy,
        .s3 = s3,
    };
    cf_render_result_t rr = {0};
    int rc = cf_render_run(comp, out_path, &opts, &rr, err, errlen);
    if (rc == 0 && rr.plan) {
        const cf_plan_t *plan = rr.plan;
        snprintf(result->encoder, sizeof result->encoder, "%s", rr.encoder);
        result->seconds = rr.seconds;
        result->jobs = rr.jobs;
        result->duration_s = (double)plan->total_frames * plan->output.fps_den /
                             (plan->output.fps_num > 0 ? plan->output.fps_num : 1);
        result->segments = calloc((size_t)plan->segment_count, sizeof *result->segments);
        if (result->segments) {
            result->segment_count = plan->segment_count;
            for (int s = 0; s < plan->segment_count; s++) {
                result->segments[s].frame_start = plan->segments[s].first_frame;
                result->segments[s].frame_end =
                    plan->segments[s].first_frame + plan->segments[s].frames;
            }
        }
    }
    cf_render_result_clear(&rr);
    cf_comp_destroy(&comp);
    return rc;
}

int cf_worker_render_destination(const char *spec_json, char **bucket_p, char **key_p,
                                 char **profile_p)
{
    *bucket_p = *key_p = *profile_p = NULL;
    cf_comp_errors_t errors = {0};
    cf_comp_t *comp = cf_comp_parse(spec_json, strlen(spec_json), &errors);
    cf_comp_errors_free(&errors);
    if (!comp || !comp->dest_s3_bucket) {
        cf_comp_destroy(&comp);
        return 0;
    }
    /* Handed over, not copied. */
    *bucket_p = comp->dest_s3_bucket;
    *key_p = comp->dest_s3_key;
    *profile_p = comp->dest_s3_profile;
    comp->dest_s3_bucket = comp->dest_s3_key = comp->dest_s3_profile = NULL;
    cf_comp_destroy(&comp);
    return 1;
}
