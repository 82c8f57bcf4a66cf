#include "cf_url.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* MIN_PORT is 1, or 0 where port 0 (any free port) makes sense. */
static int s_parse_port(const char *text, size_t len, int min_port, int *port)
{
    if (len == 0 || len > 5)
        return -1;
    int value = 0;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)text[i]))
            return -1;
        value = value * 10 + (text[i] - '0');
    }
    if (value < min_port || value > 65535)
        return -1;
    *port = value;
    return 0;
}

static int s_copy(char *dst, size_t dstlen, const char *src, size_t len)
{
    if (len >= dstlen)
        return -1;
    memcpy(dst, src, len);
    dst[len] = '\0';
    return 0;
}

/* Splits "host[:port]" or "[v6][:port]"; port_required demands the port,
 * min_port is the lowest one accepted (0 or 1). */
static int s_split_hostport(const char *text, size_t len, char *host, size_t hostlen, int *port,
                            int port_required, int min_port, char *err, size_t errlen)
{
    const char *host_start = text, *host_end, *port_start = NULL;
    *port = 0;
    if (len > 0 && text[0] == '[') {
        const char *close = memchr(text, ']', len);
        if (!close) {
            snprintf(err, errlen, "unterminated '[' in address");
            return -1;
        }
        host_start = text + 1;
        host_end = close;
        if (close + 1 < text + len) {
            if (close[1] != ':') {
                snprintf(err, errlen, "expected ':' after ']'");
                return -1;
            }
            port_start = close + 2;
        }
    } else {
        const char *colon = memchr(text, ':', len);
        host_end = colon ? colon : text + len;
        if (colon)
            port_start = colon + 1;
    }
    if (host_end == host_start) {
        snprintf(err, errlen, "missing host");
        return -1;
    }
    if (s_copy(host, hostlen, host_start, (size_t)(host_end - host_start)) < 0) {
        snprintf(err, errlen, "host too long");
        return -1;
    }
    for (const char *p = host; *p; p++) {
        if (!isalnum((unsigned char)*p) && !strchr(".-_:%", *p)) {
            snprintf(err, errlen, "invalid character '%c' in host", *p);
            return -1;
        }
    }
    if (port_start) {
        if (s_parse_port(port_start, (size_t)(text + len - port_start), min_port, port) < 0) {
            snprintf(err, errlen, "port must be a number from %d to 65535", min_port);
            return -1;
        }
    } else if (port_required) {
        snprintf(err, errlen, "missing port (expected host:port)");
        return -1;
    }
    return 0;
}

int cf_url_parse(const char *text, cf_url_t *url, char *err, size_t errlen)
{
    memset(url, 0, sizeof *url);
    const char *sep = strstr(text, "://");
    if (!sep || sep == text) {
        snprintf(err, errlen, "expected scheme://host");
        return -1;
    }
    if (s_copy(url->scheme, sizeof url->scheme, text, (size_t)(sep - text)) < 0) {
        snprintf(err, errlen, "scheme too long");
        return -1;
    }
    for (const char *p = url->scheme; *p; p++) {
        if (!isalnum((unsigned char)*p) && !strchr("+.-", *p)) {
            snprintf(err, errlen, "invalid scheme");
            return -1;
        }
    }
    const char *rest = sep + 3;
    const char *auth_end = rest + strcspn(rest, "/?#");
    const char *at = NULL;
    for (const char *p = rest; p < auth_end; p++)
        if (*p == '@')
            at = p; /* the last '@' ends the userinfo */
    const char *hostport = rest;
    if (at) {
        const char *colon = memchr(rest, ':', (size_t)(at - rest));
        const char *user_end = colon ? colon : at;
        if (s_copy(url->user, sizeof url->user, rest, (size_t)(user_end - rest)) < 0 ||
            (colon && s_copy(url->password, sizeof url->password, colon + 1,
                             (size_t)(at - colon - 1)) < 0)) {
            snprintf(err, errlen, "user or password too long");
            return -1;
        }
        hostport = at + 1;
    }
    if (s_split_hostport(hostport, (size_t)(auth_end - hostport), url->host, sizeof url->host,
                         &url->port, 0, 1, err, errlen) < 0)
        return -1;
    const char *query = strchr(auth_end, '?');
    size_t path_len = query ? (size_t)(query - auth_end) : strlen(auth_end);
    if (s_copy(url->path, sizeof url->path, auth_end, path_len) < 0 ||
        (query && s_copy(url->query, sizeof url->query, query + 1, strlen(query + 1)) < 0)) {
        snprintf(err, errlen, "path or query too long");
        return -1;
    }
    return 0;
}

int cf_hostport_parse(const char *text, char *host, size_t hostlen, int *port, char *err,
                      size_t errlen)
{
    return s_split_hostport(text, strlen(text), host, hostlen, port, 1, 1, err, errlen);
}

int cf_hostport_parse_listen(const char *text, char *host, size_t hostlen, int *port, char *err,
                             size_t errlen)
{
    return s_split_hostport(text, strlen(text), host, hostlen, port, 1, 0, err, errlen);
}

char *cf_url_mask_password(const char *text, char *out, size_t outlen)
{
    const char *sep = text ? strstr(text, "://") : NULL;
    if (!text) {
        snprintf(out, outlen, "(unset)");
        return out;
    }
    const char *rest = sep ? sep + 3 : text;
    const char *auth_end = rest + strcspn(rest, "/?#");
    const char *at = NULL;
    for (const char *p = rest; p < auth_end; p++)
        if (*p == '@')
            at = p;
    const char *colon = at ? memchr(rest, ':', (size_t)(at - rest)) : NULL;
    if (!colon) {
        snprintf(out, outlen, "%s", text);
        return out;
    }
    snprintf(out, outlen, "%.*s:***%s", (int)(colon - text), text, at);
    return out;
}
