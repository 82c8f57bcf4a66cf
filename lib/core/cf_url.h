/* cf_url: parse scheme://[user[:password]@]host[:port][/path][?query] URLs
 * (database, Redis, HTTP) and host:port addresses. */
#ifndef CF_URL_H
#define CF_URL_H

#include <stddef.h>

typedef struct {
    char scheme[16];
    char user[128];
    char password[256];
    char host[256]; /* without [] for IPv6 literals */
    int port;       /* 0 when absent */
    char path[512]; /* from the first '/', may be empty */
    char query[512];
} cf_url_t;

/* Parses TEXT into URL. Returns 0, or -1 with a reason in err (errlen bytes).
 * The host must be non-empty; the port, when given, must be 1..65535. */
int cf_url_parse(const char *text, cf_url_t *url, char *err, size_t errlen);

/* Parses "host:port" ("[v6]:port" for IPv6). Returns 0 or -1 with a reason. */
int cf_hostport_parse(const char *text, char *host, size_t hostlen, int *port, char *err,
                      size_t errlen);

/* cf_hostport_parse of an address to listen on, where port 0 is allowed
 * too: any free port, picked when the socket is bound. */
int cf_hostport_parse_listen(const char *text, char *host, size_t hostlen, int *port, char *err,
                             size_t errlen);

/* Copies TEXT to out with any password replaced by "***", for logs and
 * --print-config. Returns out. */
char *cf_url_mask_password(const char *text, char *out, size_t outlen);

#endif
