/* cf_api_validate: checks a composition body with the composition model. */
#ifndef CF_API_VALIDATE_H
#define CF_API_VALIDATE_H

#include <jansson.h>
#include <stddef.h>

/* Validates LEN bytes of JSON. Returns 0 when valid, with the title
 * (caller frees) and the priority's name ("high", "default", "low"; static);
 * 1 when invalid, with *problems_p a JSON array of {"field", "message"}, one
 * per problem (caller decrefs); -1 when out of memory. */
int cf_api_validate_composition(const char *body, size_t len, char **title_p,
                                const char **priority_p, json_t **problems_p);

#endif
