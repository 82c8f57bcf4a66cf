/* libFuzzer target for the composition parser (lib/model/cf_comp.c) and the
 * planner (lib/model/cf_plan.c), which take JSON from the REST API. A rejected
 * composition must come with at least one problem; an accepted one must
 * survive a round trip through cf_comp_to_json with every field (the JSON
 * of the parsed JSON is the same), and its plan (sources as
 * long as the trims need) must account for every frame and sample and
 * survive a round trip through cf_plan_to_json / cf_plan_from_json. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cf_comp.h"
#include "cf_plan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void s_check_plan(const cf_comp_t *comp)
{
    cf_plan_source_t *sources = calloc((size_t)comp->clip_count, sizeof *sources);
    if (!sources)
        abort();
    for (int i = 0; i < comp->clip_count; i++) {
        int64_t end =
            comp->clips[i].end_us >= 0 ? comp->clips[i].end_us : comp->clips[i].start_us + 3000000;
        sources[i] = (cf_plan_source_t){end, i % 2 == 0};
    }
    char err[256];
    cf_plan_t *plan = cf_plan_new(comp, sources, CF_ENCODER_CPU, err, sizeof err);
    free(sources);
    if (!plan)
        return; /* e.g. over the total duration limit once rounded to frames */
    int64_t frames = 0, samples = 0;
    for (int i = 0; i < plan->clip_count; i++) {
        if (plan->clips[i].first_frame != frames || plan->clips[i].frames < 1 ||
            plan->clips[i].first_sample != samples)
            abort();
        frames += plan->clips[i].frames;
        samples += plan->clips[i].samples;
    }
    if (frames != plan->total_frames || samples != plan->total_samples)
        abort();
    int64_t covered = 0;
    for (int s = 0; s < plan->segment_count; s++) {
        const cf_plan_segment_t *seg = &plan->segments[s];
        int64_t in_seg = 0;
        for (int p = 0; p < seg->part_count; p++)
            in_seg += seg->parts[p].frames;
        if (seg->first_frame != covered || in_seg != seg->frames || seg->frames < 1 ||
            seg->frames > plan->segment_frames)
            abort();
        covered += seg->frames;
    }
    if (covered != plan->total_frames || plan->segment_frames % plan->output.gop_frames)
        abort();
    /* A plan survives its JSON form unchanged. */
    char *json = cf_plan_to_json(plan);
    if (!json)
        abort();
    cf_plan_t *back = cf_plan_from_json(json, strlen(json), err, sizeof err);
    char *again = back ? cf_plan_to_json(back) : NULL;
    if (!again || strcmp(json, again))
        abort();
    free(json);
    free(again);
    cf_plan_destroy(&back);
    cf_plan_destroy(&plan);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cf_comp_errors_t errors = {0};
    cf_comp_t *comp = cf_comp_parse((const char *)data, size, &errors);
    if (!comp) {
        if (errors.count < 1)
            abort();
        cf_comp_errors_free(&errors);
        return 0;
    }
    if (errors.count != 0 || comp->clip_count < 1 || comp->clip_count > CF_COMP_MAX_CLIPS)
        abort();
    char *json = cf_comp_to_json(comp);
    if (!json)
        abort();
    cf_comp_t *again = cf_comp_parse(json, strlen(json), &errors);
    if (!again || again->clip_count != comp->clip_count || again->fps_num != comp->fps_num ||
        again->fps_den != comp->fps_den || again->width != comp->width)
        abort();
    /* Every field survives the round trip: the parsed form serialises to
     * exactly the same JSON (cf_comp_to_json writes every field). */
    char *json_again = cf_comp_to_json(again);
    if (!json_again || strcmp(json, json_again))
        abort();
    free(json_again);
    s_check_plan(comp);
    free(json);
    cf_comp_destroy(&again);
    cf_comp_destroy(&comp);
    cf_comp_errors_free(&errors);
    return 0;
}
