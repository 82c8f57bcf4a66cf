/* libFuzzer target for the request headers the API reads itself
 * (lib/core/cf_http_parse.c): Range against a file size, If-None-Match /
 * If-Range lists against an ETag, and Last-Event-ID. The first 8 bytes of
 * the input are the file size, the rest is split at the first NUL into the
 * header and an ETag. A satisfiable range always lies inside the file; a
 * list that is exactly the ETag always matches; an event id is never
 * negative. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cf_http_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 8)
        return 0;
    uint64_t raw;
    memcpy(&raw, data, 8);
    int64_t file_size = (int64_t)(raw % ((uint64_t)1 << 50)); /* up to 1 PiB */
    char *text = malloc(size - 8 + 1);
    if (!text)
        return 0;
    memcpy(text, data + 8, size - 8);
    text[size - 8] = '\0';
    const char *etag = text + strlen(text) + 1 <= text + (size - 8) ? text + strlen(text) + 1 : "";

    cf_http_range_t range = {-1, -1};
    int rc = cf_http_parse_range(text, file_size, &range);
    if (rc == 1 && (range.start < 0 || range.start > range.end || range.end >= file_size))
        abort();
    if (rc < -1 || rc > 1)
        abort();
    cf_http_parse_range(NULL, file_size, &range);

    int matches = cf_http_etag_matches(text, etag);
    if (matches != 0 && matches != 1)
        abort();
    if (*etag && !strchr(etag, ',') && etag[0] != ' ' && etag[strlen(etag) - 1] != ' ' &&
        strncmp(etag, "W/", 2) && !cf_http_etag_matches(etag, etag))
        abort();
    if (cf_http_parse_event_id(text) < 0)
        abort();
    free(text);
    return 0;
}
