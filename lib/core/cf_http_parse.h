/* cf_http_parse: the HTTP request headers the API interprets itself, parsed
 * without any I/O so that a fuzz target drives exactly what the handlers
 * run (tests/fuzz/fuzz_http_headers.c). Input is whatever a client sent:
 * every function accepts any NUL-terminated text (or NULL). */
#ifndef CF_HTTP_PARSE_H
#define CF_HTTP_PARSE_H

#include <stdint.h>

typedef struct {
    int64_t start, end; /* inclusive */
} cf_http_range_t;

/* Parses a Range header against SIZE. Returns 1 with *range set for one
 * satisfiable range (0 <= start <= end < SIZE), 0 to serve the whole file
 * (absent, malformed or several ranges: RFC 9110 lets a server ignore
 * Range), -1 when unsatisfiable. */
int cf_http_parse_range(const char *header, int64_t size, cf_http_range_t *range);

/* Whether an If-None-Match / If-Range HEADER (a list of tags, weak ones
 * included, or "*") names ETAG (quoted, as sent). */
int cf_http_etag_matches(const char *header, const char *etag);

/* The event id of a Last-Event-ID header or ?after= value: the positive
 * number it starts with, else 0 (start from the beginning). */
int64_t cf_http_parse_event_id(const char *text);

#endif
