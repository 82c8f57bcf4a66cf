/* cf_http_parse: small parsers of HTTP request headers (see the header). */
#include "cf_http_parse.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int cf_http_parse_range(const char *header, int64_t size, cf_http_range_t *range)
{
    if (!header || strncasecmp(header, "bytes=", 6))
        return 0;
    const char *spec = header + 6;
    while (*spec == ' ')
        spec++;
    if (strchr(spec, ','))
        return 0;
    char *end = NULL;
    if (*spec == '-') { /* suffix: the last N bytes */
        if (!isdigit((unsigned char)spec[1]))
            return 0;
        long long n = strtoll(spec + 1, &end, 10);
        if (*end && *end != ' ')
            return 0;
        if (n <= 0 || size == 0)
            return -1;
        range->start = n >= size ? 0 : size - n;
        range->end = size - 1;
        return 1;
    }
    if (!isdigit((unsigned char)*spec))
        return 0;
    long long first = strtoll(spec, &end, 10);
    if (*end != '-')
        return 0;
    const char *last_text = end + 1;
    long long last = size - 1;
    if (isdigit((unsigned char)*last_text)) {
        last = strtoll(last_text, &end, 10);
        if ((*end && *end != ' ') || last < first)
            return 0;
    } else if (*last_text && *last_text != ' ') {
        return 0;
    }
    if (first >= size)
        return -1;
    range->start = first;
    range->end = last >= size ? size - 1 : last;
    return 1;
}

int cf_http_etag_matches(const char *header, const char *etag)
{
    if (!header)
        return 0;
    if (!strcmp(header, "*"))
        return 1;
    /* A list of tags, possibly weak: compare the opaque parts. */
    const char *p = header;
    size_t etag_len = strlen(etag);
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        if (!strncmp(p, "W/", 2))
            p += 2;
        size_t len = strcspn(p, ",");
        while (len > 0 && p[len - 1] == ' ')
            len--;
        if (len == etag_len && !strncmp(p, etag, len))
            return 1;
        p += strcspn(p, ",");
    }
    return 0;
}

int64_t cf_http_parse_event_id(const char *text)
{
    if (!text)
        return 0;
    char *end = NULL;
    long long value = strtoll(text, &end, 10);
    return end != text && value > 0 ? (int64_t)value : 0;
}
