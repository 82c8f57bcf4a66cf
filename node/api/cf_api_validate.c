/* cf_api_validate: composition validation for POST /api/v1/compositions.
 * The only part of the API that needs the composition model (cf_comp.h). */
#include "cf_api_validate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_comp.h"
#include "cf_json.h"

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
        char dest[1200] = "";
        if (comp->dest_s3_bucket)
            snprintf(dest, sizeof dest, "s3://%s/%s", comp->dest_s3_bucket, comp->dest_s3_key);
        for (int i = -2; refused && i < comp->clip_count; i++) {
            char why[512] = "", field[48];
            const char *value;
            if (i == -2) {
                snprintf(field, sizeof field, "webhook_url");
                value = comp->webhook_url;
            } else if (i == -1) {
                snprintf(field, sizeof field, "destination.s3");
                value = dest[0] ? dest : NULL;
            } else {
                snprintf(field, sizeof field, "clips[%d].source", i);
                value = comp->clips[i].source;
            }
            if (!value)
                continue;
            int rc = check(check_arg, field, value, why, sizeof why);
            if (rc < 0) {
                json_decref(refused);
                cf_comp_destroy(&comp);
                cf_comp_errors_free(&errors);
                return -2;
            }
            if (rc > 0) {
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
        char *text = errors.items[i];
        cf_json_utf8_scrub(text); /* problems may quote (cut) input */
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

#define S_STR_(x) #x
#define S_STR(x)  S_STR_(x)

int cf_api_check_composition_body(const char *body, size_t len, cf_api_source_check_fn *check,
                                  void *check_arg, char **title_p, const char **priority_p,
                                  json_t **detail_p)
{
    *title_p = NULL;
    *priority_p = NULL;
    *detail_p = NULL;
    /* Measured before anything recursive touches the text. */
    size_t too_deep_at = 0;
    if (cf_json_depth(body, len, CF_JSON_MAX_DEPTH, &too_deep_at) > CF_JSON_MAX_DEPTH) {
        *detail_p = json_pack("{s:s,s:s,s:I,s:i}", "code", "too_deep", "message",
                              "JSON nested deeper than the limit of " S_STR(
                                  CF_JSON_MAX_DEPTH) " levels of arrays and objects",
                              "position", (json_int_t)too_deep_at, "limit", CF_JSON_MAX_DEPTH);
        return *detail_p ? 400 : 500;
    }
    json_error_t jerr;
    json_t *doc = cf_json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) {
        char message[300];
        snprintf(message, sizeof message, "malformed JSON at line %d, column %d: %s", jerr.line,
                 jerr.column, jerr.text);
        cf_json_utf8_scrub(message); /* jansson quotes the bytes it choked on */
        *detail_p =
            json_pack("{s:s,s:s,s:i,s:i,s:I}", "code", "malformed_json", "message", message, "line",
                      jerr.line, "column", jerr.column, "position", (json_int_t)jerr.position);
        return *detail_p ? 400 : 500;
    }
    json_decref(doc);

    json_t *problems = NULL;
    int valid = cf_api_validate_composition_for(body, len, check, check_arg, title_p, priority_p,
                                                &problems);
    if (valid == 0)
        return 0;
    if (valid == -2) {
        *detail_p = json_pack("{s:s,s:s}", "code", "database_unavailable", "message",
                              "the database is unreachable; retry later");
        return 503;
    }
    if (valid < 0 || !problems) {
        json_decref(problems);
        *detail_p = json_pack("{s:s,s:s}", "code", "internal", "message", "out of memory");
        return 500;
    }
    size_t count = json_array_size(problems);
    json_t *first = json_array_get(problems, 0);
    const char *field = json_string_value(json_object_get(first, "field"));
    const char *reason = json_string_value(json_object_get(first, "message"));
    char message[600];
    snprintf(message, sizeof message, "invalid composition: %zu problem%s, first: %s%s%s", count,
             count == 1 ? "" : "s", field ? field : "", field ? ": " : "", reason ? reason : "");
    cf_json_utf8_scrub(message); /* a multi-byte character cut at the end */
    *detail_p =
        json_pack("{s:s,s:s,s:O,s:o}", "code", "invalid_composition", "message", message, "field",
                  field ? json_object_get(first, "field") : json_null(), "problems", problems);
    return *detail_p ? 422 : 500;
}
