/* libFuzzer target for lib/core/cf_url.c, which parses every URL and address a
 * user gives (--database-url, --redis-url, --server, --http-addr, clip
 * sources' hosts). A parsed URL must hold what the grammar allows (a host,
 * a port in range, NUL-terminated fields); the password mask must never
 * show the password nor overflow its buffer. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    char err[256];
    cf_url_t url;
    if (cf_url_parse(text, &url, err, sizeof err) == 0) {
        if (!url.host[0] || url.port < 0 || url.port > 65535 ||
            strnlen(url.scheme, sizeof url.scheme) == sizeof url.scheme ||
            strnlen(url.host, sizeof url.host) == sizeof url.host ||
            strnlen(url.path, sizeof url.path) == sizeof url.path)
            abort();
        char masked[2048];
        cf_url_mask_password(text, masked, sizeof masked);
        if (strnlen(masked, sizeof masked) == sizeof masked)
            abort();
        /* The password never shows where it stood: ":PASSWORD@" in the
         * authority (up to "/", "?" or "#": what follows may hold any text). */
        char needle[300];
        snprintf(needle, sizeof needle, ":%s@", url.password);
        char *authority = strstr(masked, "://");
        if (authority) {
            authority += 3;
            authority[strcspn(authority, "/?#")] = '\0';
            if (url.password[0] && strcmp(url.password, "***") && strstr(authority, needle))
                abort();
        }
    } else if (!err[0]) {
        abort(); /* a refusal says why */
    }
    char small[8];
    cf_url_mask_password(text, small, sizeof small);
    if (strnlen(small, sizeof small) == sizeof small)
        abort();
    char host[256];
    int port = -1;
    if (cf_hostport_parse(text, host, sizeof host, &port, err, sizeof err) == 0) {
        if (port < 0 || port > 65535 || strnlen(host, sizeof host) == sizeof host)
            abort();
    } else if (!err[0]) {
        abort();
    }
    free(text);
    return 0;
}
