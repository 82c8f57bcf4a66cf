/* cf_api_validate: composition validation for POST /api/v1/compositions.
 * The only part of the API that needs the composition model (cf_comp.h). */
#include "cf_api_validate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_comp.h"

int cf_api_validate_composition(const char *body, size_t len, char **title_p,
                                const char **priority_p, json_t **problems_p)
{
    return cf_api_validate_composition_for(body, len, NULL, NULL, title_p, priority_p, problems_p);
}

int cf_api_validate_composition_for(const char *body, size_t len, cf_api_source_check_fn *check,
                                    void *check_arg, char **title_p, const char **priority_p,
                                    json_t **problems_p)
{
    *title_p = NULL;
    *priority_p = NULL;
    *problems_p = NULL;
    cf_comp_errors_t errors = {0};
    cf_comp_t *comp = cf_comp_parse(body, len, &errors);
    if (comp && check) {
        json_t *refused = json_array();
        for (int i = 0; refused && i < comp->clip_count; i++) {
            char why[512] = "";
            int rc = check(check_arg, comp->clips[i].source, why, sizeof why);
            if (rc < 0) {
                json_decref(refused);
                cf_comp_destroy(&comp);
                cf_comp_errors_free(&errors);
                return -2;
            }
            if (rc > 0) {
                char field[48];
                snprintf(field, sizeof field, "clips[%d].source", i);
                json_array_append_new(refused,
                                      json_pack("{s:s,s:s}", "field", field, "message", why));
            }
        }
        if (json_array_size(refused) > 0) {
            cf_comp_destroy(&comp);
            cf_comp_errors_free(&errors);
            *problems_p = refused;
            return 1;
        }
        json_decref(refused);
    }
    if (comp) {
        *title_p = strdup(comp->title);
        *priority_p = cf_comp_priority_name(comp->priority);
        cf_comp_destroy(&comp);
        cf_comp_errors_free(&errors);
        return *title_p ? 0 : -1;
    }
    json_t *problems = json_array();
    for (int i = 0; i < errors.count; i++) {
        /* "path: reason" -> {"field": path, "message": reason} */
        const char *text = errors.items[i];
        const char *sep = strstr(text, ": ");
        json_t *item =
            sep ? json_pack("{s:s%,s:s}", "field", text, (size_t)(sep - text), "message", sep + 2)
                : json_pack("{s:n,s:s}", "field", "message", text);
        json_array_append_new(problems, item);
    }
    if (errors.count == 0)
        json_array_append_new(problems,
                              json_pack("{s:n,s:s}", "field", "message", "invalid composition"));
    cf_comp_errors_free(&errors);
    *problems_p = problems;
    return 1;
}
