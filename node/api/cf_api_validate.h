/* cf_api_validate: checks a composition body with the composition model. */
#ifndef CF_API_VALIDATE_H
#define CF_API_VALIDATE_H

#include <jansson.h>
#include <stddef.h>

/* Checks one reference of a valid composition against what the caller may
 * use (node policy, ownership, what the node is configured for): FIELD is
 * "clips[N].source", "webhook_url" or "destination.s3" (VALUE then
 * "s3://BUCKET/KEY"). Returns 0 when allowed, 1 with a reason in why (it
 * is refused), -1 when it cannot be checked now (database down). */
typedef int(cf_api_source_check_fn)(void *arg, const char *field, const char *value, char *why,
                                    size_t whylen);

/* Validates LEN bytes of JSON. Returns 0 when valid, with the title
 * (caller frees) and the priority's name ("high", "default", "low"; static);
 * 1 when invalid, with *problems_p a JSON array of {"field", "message"}, one
 * per problem (caller decrefs); -1 when out of memory. */
int cf_api_validate_composition(const char *body, size_t len, char **title_p,
                                const char **priority_p, json_t **problems_p);

/* cf_api_validate_composition that also runs CHECK (may be NULL) on every
 * clip source, the webhook URL and the destination of a composition that is
 * otherwise valid; a refused source
 * is a problem like any other ("clips[N].source"). Returns -2 when CHECK
 * answered -1. */
int cf_api_validate_composition_for(const char *body, size_t len, cf_api_source_check_fn *check,
                                    void *check_arg, char **title_p, const char **priority_p,
                                    json_t **problems_p);

/* The whole check of a POST /api/v1/compositions body, in the order the API
 * runs it (the fuzz target fuzz_api_body drives exactly this): nesting
 * bound (400 "too_deep" naming the limit), JSON syntax (400
 * "malformed_json" with line and column), the composition model and CHECK
 * (422 "invalid_composition" with every problem). Returns 0 with the title
 * (caller frees) and priority name, or the HTTP status with *detail_p the
 * error object to send (caller owns it): 400, 422, 503 (CHECK could not
 * ask the database) or 500 (out of memory). */
int cf_api_check_composition_body(const char *body, size_t len, cf_api_source_check_fn *check,
                                  void *check_arg, char **title_p, const char **priority_p,
                                  json_t **detail_p);

#endif
