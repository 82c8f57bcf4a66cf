/* libFuzzer target for the body of POST /api/v1/compositions, through the
 * entry point the API handler uses (cf_api_check_composition_body in
 * node/api/cf_api_validate.c): the nesting bound, the JSON parser and the
 * composition model, with a source check like the API's (a restricted
 * source policy with one media root). Every input must be answered with 0
 * or an error status whose detail names a code; deeply nested input must
 * never reach jansson's recursion (the stack of a request thread is small:
 * this target runs with the stack of the fuzzer's thread, so a recursion
 * that escaped the bound would show as a stack overflow on the depth
 * seeds). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cf_api_validate.h"
#include "cf_json.h"
#include "cf_source_policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static cf_source_policy_t *s_policy;

static int s_check(void *arg, const char *field, const char *source, char *why, size_t whylen)
{
    return cf_source_policy_check_source(arg, source, why, whylen) < 0 ? 1 : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!s_policy) {
        char err[256];
        s_policy = cf_source_policy_new();
        if (!s_policy || cf_source_policy_add_root(s_policy, "/tmp", err, sizeof err) < 0)
            abort();
    }
    char *title = NULL;
    const char *priority = NULL;
    json_t *detail = NULL;
    int status = cf_api_check_composition_body((const char *)data, size, s_check, s_policy, &title,
                                               &priority, &detail);
    if (status == 0) {
        if (!title || !priority || detail)
            abort();
        /* What was accepted is within the bound. */
        if (cf_json_depth((const char *)data, size, CF_JSON_MAX_DEPTH, NULL) > CF_JSON_MAX_DEPTH)
            abort();
    } else {
        if (title || !detail || !json_is_string(json_object_get(detail, "code")))
            abort();
        if (status != 400 && status != 422)
            abort();
    }
    free(title);
    json_decref(detail);
    return 0;
}
