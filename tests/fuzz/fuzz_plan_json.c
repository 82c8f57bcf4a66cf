/* libFuzzer target for cf_plan_from_json (lib/model/cf_plan.c): plans arrive from
 * other nodes. Whatever it accepts must be consistent and write back to the
 * same JSON it would accept again. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cf_plan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256] = "";
    cf_plan_t *plan = cf_plan_from_json((const char *)data, size, err, sizeof err);
    if (!plan) {
        if (!err[0])
            abort(); /* a refusal always says why */
        return 0;
    }
    int64_t frames = 0;
    for (int s = 0; s < plan->segment_count; s++) {
        if (plan->segments[s].first_frame != frames || plan->segments[s].frames < 1)
            abort();
        frames += plan->segments[s].frames;
    }
    if (frames != plan->total_frames)
        abort();
    char *json = cf_plan_to_json(plan);
    cf_plan_t *back = json ? cf_plan_from_json(json, strlen(json), err, sizeof err) : NULL;
    char *again = back ? cf_plan_to_json(back) : NULL;
    if (!again || strcmp(json, again))
        abort();
    free(json);
    free(again);
    cf_plan_destroy(&back);
    cf_plan_destroy(&plan);
    return 0;
}
