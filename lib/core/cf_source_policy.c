/* cf_source_policy: media roots and the source address rules (see the
 * header for the contract). */
#define _GNU_SOURCE
#include "cf_source_policy.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    uint8_t addr[16]; /* IPv4 stored IPv4-mapped (::ffff:a.b.c.d) */
    int prefix;       /* bits of addr that must match, 0..128 */
} s_net_t;

struct cf_source_policy_t {
    bool restricted;
    char **roots; /* resolved directories */
    int root_count;
    s_net_t *nets;
    int net_count;
    uint64_t max_bytes;
    long fetch_timeout_s;
};

static cf_source_policy_t s_open_policy = {.restricted = false};

cf_source_policy_t *cf_source_policy_new(void)
{
    cf_source_policy_t *self = calloc(1, sizeof *self);
    if (self)
        self->restricted = true;
    return self;
}

const cf_source_policy_t *cf_source_policy_open(void)
{
    return &s_open_policy;
}

void cf_source_policy_destroy(cf_source_policy_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_source_policy_t *self = *self_p;
    for (int i = 0; i < self->root_count; i++)
        free(self->roots[i]);
    free(self->roots);
    free(self->nets);
    free(self);
    *self_p = NULL;
}

bool cf_source_policy_restricted(const cf_source_policy_t *self)
{
    return self && self->restricted;
}

void cf_source_policy_set_limits(cf_source_policy_t *self, uint64_t max_source_bytes,
                                 long fetch_timeout_s)
{
    self->max_bytes = max_source_bytes;
    self->fetch_timeout_s = fetch_timeout_s;
}

uint64_t cf_source_policy_max_bytes(const cf_source_policy_t *self)
{
    return self ? self->max_bytes : 0;
}

long cf_source_policy_fetch_timeout_s(const cf_source_policy_t *self)
{
    return self ? self->fetch_timeout_s : 0;
}

int cf_source_policy_root_count(const cf_source_policy_t *self)
{
    return self ? self->root_count : 0;
}

const char *cf_source_policy_root(const cf_source_policy_t *self, int i)
{
    return self && i >= 0 && i < self->root_count ? self->roots[i] : NULL;
}

/* ------------------------------------------------------------ roots */

int cf_source_policy_add_root(cf_source_policy_t *self, const char *dir, char *err, size_t errlen)
{
    char resolved[PATH_MAX];
    struct stat sb;
    if (!realpath(dir, resolved) || stat(resolved, &sb) < 0) {
        snprintf(err, errlen, "--media-root %s: %s", dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(sb.st_mode)) {
        snprintf(err, errlen, "--media-root %s: not a directory", dir);
        return -1;
    }
    char **grown = realloc(self->roots, (size_t)(self->root_count + 1) * sizeof *grown);
    if (!grown) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    self->roots = grown;
    if (!(self->roots[self->root_count] = strdup(resolved))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    self->root_count++;
    return 0;
}

/* Calls ADD on each non-empty item of LIST split at SEPS. */
static int s_add_each(cf_source_policy_t *self, const char *list, const char *seps,
                      int (*add)(cf_source_policy_t *, const char *, char *, size_t), char *err,
                      size_t errlen)
{
    if (!list)
        return 0;
    const char *p = list;
    while (*p) {
        size_t len = strcspn(p, seps);
        if (len > 0) {
            char *item = strndup(p, len);
            if (!item) {
                snprintf(err, errlen, "out of memory");
                return -1;
            }
            int rc = add(self, item, err, errlen);
            free(item);
            if (rc < 0)
                return -1;
        }
        p += len;
        if (*p)
            p++;
    }
    return 0;
}

int cf_source_policy_add_roots(cf_source_policy_t *self, const char *list, const char *seps,
                               char *err, size_t errlen)
{
    return s_add_each(self, list, seps, cf_source_policy_add_root, err, errlen);
}

/* True when PATH is ROOT itself or lies below it. */
static bool s_under(const char *root, const char *path)
{
    size_t len = strlen(root);
    if (len == 1 && root[0] == '/')
        return path[0] == '/';
    return !strncmp(root, path, len) && (path[len] == '/' || path[len] == '\0');
}

/* Collapses "//", "/./" and "/../" of an absolute PATH without touching the
 * file system (".." above "/" stays at "/"). */
static void s_lexical_normalize(const char *path, char *out, size_t outlen)
{
    size_t n = 0;
    out[n++] = '/';
    const char *p = path;
    while (*p) {
        while (*p == '/')
            p++;
        size_t len = strcspn(p, "/");
        if (len == 0)
            break;
        if (len == 1 && p[0] == '.') {
            /* nothing */
        } else if (len == 2 && p[0] == '.' && p[1] == '.') {
            while (n > 1 && out[n - 1] != '/')
                n--;
            if (n > 1)
                n--; /* the slash before the dropped name */
            while (n > 1 && out[n - 1] != '/')
                n--;
        } else if (n + len + 2 < outlen) {
            if (out[n - 1] != '/')
                out[n++] = '/';
            memcpy(out + n, p, len);
            n += len;
        }
        p += len;
    }
    if (n > 1 && out[n - 1] == '/')
        n--;
    out[n] = '\0';
}

int cf_source_policy_check_path(const cf_source_policy_t *self, const char *path, char *resolved,
                                size_t resolved_len, char *err, size_t errlen)
{
    if (!cf_source_policy_restricted(self)) {
        snprintf(resolved, resolved_len, "%s", path);
        return 0;
    }
    if (self->root_count == 0) {
        snprintf(err, errlen,
                 "file:// sources are disabled on this node (start it with --media-root DIR)");
        return -1;
    }
    char lexical[PATH_MAX];
    s_lexical_normalize(path, lexical, sizeof lexical);
    bool inside = false;
    for (int i = 0; i < self->root_count && !inside; i++)
        inside = s_under(self->roots[i], lexical);
    if (!inside || path[0] != '/') {
        snprintf(err, errlen, "outside the media roots");
        return -1;
    }
    char real[PATH_MAX];
    if (!realpath(path, real)) {
        bool missing = errno == ENOENT || errno == ENOTDIR;
        snprintf(err, errlen, "%s", missing ? "no such file" : "cannot be read");
        return missing ? -2 : -1;
    }
    inside = false;
    for (int i = 0; i < self->root_count && !inside; i++)
        inside = s_under(self->roots[i], real) && strcmp(self->roots[i], real);
    if (!inside) {
        /* A symlink inside a root that points out of it. */
        snprintf(err, errlen, "outside the media roots");
        return -1;
    }
    if ((size_t)snprintf(resolved, resolved_len, "%s", real) >= resolved_len) {
        snprintf(err, errlen, "path too long");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ addresses */

static void s_v4_mapped(uint32_t v4_host_order, uint8_t out[16])
{
    memset(out, 0, 10);
    out[10] = out[11] = 0xff;
    out[12] = (uint8_t)(v4_host_order >> 24);
    out[13] = (uint8_t)(v4_host_order >> 16);
    out[14] = (uint8_t)(v4_host_order >> 8);
    out[15] = (uint8_t)v4_host_order;
}

static bool s_prefix_match(const uint8_t *a, const uint8_t *b, int bits)
{
    int bytes = bits / 8, rest = bits % 8;
    if (memcmp(a, b, (size_t)bytes))
        return false;
    if (!rest)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[bytes] & mask) == (b[bytes] & mask);
}

static bool s_v4_internal(uint32_t a)
{
    static const struct {
        uint32_t net;
        int bits;
    } ranges[] = {
        {0x00000000, 8},  /* "this network", 0.0.0.0 */
        {0x0a000000, 8},  /* private */
        {0x64400000, 10}, /* CGNAT 100.64/10 */
        {0x7f000000, 8},  /* loopback */
        {0xa9fe0000, 16}, /* link-local, cloud metadata 169.254.169.254 */
        {0xac100000, 12}, /* private 172.16/12 */
        {0xc0000000, 24}, /* IETF protocol assignments */
        {0xc0000200, 24}, /* TEST-NET-1 */
        {0xc0586300, 24}, /* 6to4 relay anycast */
        {0xc0a80000, 16}, /* private 192.168/16 */
        {0xc6120000, 15}, /* benchmarking 198.18/15 */
        {0xc6336400, 24}, /* TEST-NET-2 */
        {0xcb007100, 24}, /* TEST-NET-3 */
        {0xe0000000, 4},  /* multicast */
        {0xf0000000, 4},  /* reserved, broadcast */
    };
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
        uint32_t mask = ranges[i].bits ? 0xffffffffu << (32 - ranges[i].bits) : 0;
        if ((a & mask) == ranges[i].net)
            return true;
    }
    return false;
}

static uint32_t s_v4_at(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static bool s_v6_internal(const uint8_t a[16])
{
    static const uint8_t zero[16] = {0};
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t nat64[12] = {0x00, 0x64, 0xff, 0x9b};
    static const uint8_t nat64_local[6] = {0x00, 0x64, 0xff, 0x9b, 0x00, 0x01};
    static const uint8_t teredo[4] = {0x20, 0x01, 0x00, 0x00};
    static const uint8_t doc[4] = {0x20, 0x01, 0x0d, 0xb8};
    static const uint8_t discard[8] = {0x01, 0x00};
    if (!memcmp(a, mapped, 12) || !memcmp(a, zero, 12) || !memcmp(a, nat64, 12))
        return s_v4_internal(s_v4_at(a + 12)); /* mapped, compatible (and ::, ::1), NAT64 */
    if (a[0] == 0x20 && a[1] == 0x02)
        return s_v4_internal(s_v4_at(a + 2)); /* 6to4 */
    if (!memcmp(a, nat64_local, 6) || !memcmp(a, teredo, 4) || !memcmp(a, doc, 4) ||
        !memcmp(a, discard, 8))
        return true;
    if ((a[0] & 0xfe) == 0xfc)
        return true; /* unique local fc00::/7 */
    if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
        return true; /* link-local fe80::/10 */
    if (a[0] == 0xfe && (a[1] & 0xc0) == 0xc0)
        return true; /* site-local fec0::/10 (deprecated) */
    if (a[0] == 0xff)
        return true; /* multicast */
    return false;
}

/* ADDR as 16 bytes (IPv4 mapped). Returns -1 for other families. */
static int s_addr_bytes(const struct sockaddr *addr, uint8_t out[16])
{
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        s_v4_mapped(ntohl(in->sin_addr.s_addr), out);
        return 0;
    }
    if (addr->sa_family == AF_INET6) {
        memcpy(out, ((const struct sockaddr_in6 *)addr)->sin6_addr.s6_addr, 16);
        return 0;
    }
    return -1;
}

bool cf_source_addr_is_internal(const struct sockaddr *addr)
{
    uint8_t a[16];
    if (s_addr_bytes(addr, a) < 0)
        return true; /* AF_UNIX and the like are never a media server */
    return s_v6_internal(a);
}

bool cf_source_policy_addr_allowed(const cf_source_policy_t *self, const struct sockaddr *addr)
{
    if (!cf_source_policy_restricted(self))
        return true;
    uint8_t a[16];
    if (s_addr_bytes(addr, a) < 0)
        return false;
    for (int i = 0; i < self->net_count; i++)
        if (s_prefix_match(a, self->nets[i].addr, self->nets[i].prefix))
            return true;
    return !s_v6_internal(a);
}

/* Parses an IP literal in any form the C resolver accepts for IPv4 (127.1,
 * 2130706433, 0x7f.0.0.1, octal) or IPv6, into ADDR. Returns 0 or -1. */
static int s_parse_ip(const char *text, struct sockaddr_storage *addr)
{
    memset(addr, 0, sizeof *addr);
    struct in_addr v4;
    struct in6_addr v6;
    if (inet_pton(AF_INET6, text, &v6) == 1) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)addr;
        in6->sin6_family = AF_INET6;
        in6->sin6_addr = v6;
        return 0;
    }
    if (inet_aton(text, &v4) == 1) {
        struct sockaddr_in *in = (struct sockaddr_in *)addr;
        in->sin_family = AF_INET;
        in->sin_addr = v4;
        return 0;
    }
    return -1;
}

int cf_source_policy_add_net(cf_source_policy_t *self, const char *cidr, char *err, size_t errlen)
{
    char text[128];
    if (snprintf(text, sizeof text, "%s", cidr) >= (int)sizeof text) {
        snprintf(err, errlen, "--allow-source-net: '%.40s...' is too long", cidr);
        return -1;
    }
    char *slash = strchr(text, '/');
    long prefix = -1;
    if (slash) {
        *slash = '\0';
        char *end = NULL;
        errno = 0;
        prefix = strtol(slash + 1, &end, 10);
        if (errno || end == slash + 1 || *end || prefix < 0) {
            snprintf(err, errlen, "--allow-source-net %s: bad prefix length", cidr);
            return -1;
        }
    }
    s_net_t net = {0};
    struct in_addr v4;
    struct in6_addr v6;
    /* Strict forms only here: an operator's CIDR is not a URL host. */
    if (inet_pton(AF_INET, text, &v4) == 1) {
        if (prefix > 32) {
            snprintf(err, errlen, "--allow-source-net %s: IPv4 prefix over 32", cidr);
            return -1;
        }
        s_v4_mapped(ntohl(v4.s_addr), net.addr);
        net.prefix = 96 + (int)(prefix < 0 ? 32 : prefix);
    } else if (inet_pton(AF_INET6, text, &v6) == 1) {
        if (prefix > 128) {
            snprintf(err, errlen, "--allow-source-net %s: IPv6 prefix over 128", cidr);
            return -1;
        }
        memcpy(net.addr, v6.s6_addr, 16);
        net.prefix = (int)(prefix < 0 ? 128 : prefix);
    } else {
        snprintf(err, errlen, "--allow-source-net %s: expected ADDRESS[/PREFIX]", cidr);
        return -1;
    }
    s_net_t *grown = realloc(self->nets, (size_t)(self->net_count + 1) * sizeof *grown);
    if (!grown) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    self->nets = grown;
    self->nets[self->net_count++] = net;
    return 0;
}

int cf_source_policy_add_nets(cf_source_policy_t *self, const char *list, const char *seps,
                              char *err, size_t errlen)
{
    return s_add_each(self, list, seps, cf_source_policy_add_net, err, errlen);
}

/* ------------------------------------------------------------ sources */

int cf_source_decode_file_url(const char *source, char *out, size_t outlen)
{
    const char *in = source;
    if (!strncmp(in, "file://", 7))
        in += 7;
    size_t n = 0;
    for (; *in; in++) {
        char c = *in;
        if (c == '%') {
            if (!isxdigit((unsigned char)in[1]) || !isxdigit((unsigned char)in[2]))
                return -1;
            char hex[3] = {in[1], in[2], 0};
            c = (char)strtol(hex, NULL, 16);
            if (c == 0)
                return -1;
            in += 2;
        }
        if (n + 1 >= outlen)
            return -1;
        out[n++] = c;
    }
    out[n] = '\0';
    return 0;
}

/* Copies the host of an http(s) URL (brackets of an IPv6 literal removed)
 * into HOST. Returns 0, or -1 when there is none. */
static int s_url_host(const char *url, char *host, size_t hostlen)
{
    const char *p = strstr(url, "://");
    if (!p)
        return -1;
    p += 3;
    size_t auth_len = strcspn(p, "/?#");
    /* userinfo ends at the last '@' of the authority */
    const char *at = NULL;
    for (size_t i = 0; i < auth_len; i++)
        if (p[i] == '@')
            at = p + i;
    if (at) {
        auth_len -= (size_t)(at + 1 - p);
        p = at + 1;
    }
    size_t len;
    if (*p == '[') {
        const char *close = memchr(p, ']', auth_len);
        if (!close)
            return -1;
        p++;
        len = (size_t)(close - p);
    } else {
        len = strcspn(p, ":/?#");
        if (len > auth_len)
            len = auth_len;
    }
    if (len == 0 || len >= hostlen)
        return -1;
    memcpy(host, p, len);
    host[len] = '\0';
    /* A trailing dot names the same host ("127.0.0.1." resolves). */
    if (len > 1 && host[len - 1] == '.')
        host[len - 1] = '\0';
    return 0;
}

int cf_source_policy_check_source(const cf_source_policy_t *self, const char *source, char *err,
                                  size_t errlen)
{
    if (!cf_source_policy_restricted(self))
        return 0;
    if (!strncmp(source, "file://", 7)) {
        char path[PATH_MAX], resolved[PATH_MAX];
        if (cf_source_decode_file_url(source, path, sizeof path) < 0) {
            snprintf(err, errlen, "malformed %%-escape in the path");
            return -1;
        }
        /* A file that is not there yet may still arrive before the render:
         * the render checks again. */
        int rc = cf_source_policy_check_path(self, path, resolved, sizeof resolved, err, errlen);
        return rc == -2 ? 0 : rc;
    }
    if (!strncmp(source, "http://", 7) || !strncmp(source, "https://", 8)) {
        char host[256];
        struct sockaddr_storage addr;
        if (s_url_host(source, host, sizeof host) < 0) {
            snprintf(err, errlen, "URL has no host");
            return -1;
        }
        char *zone = strchr(host, '%'); /* fe80::1%eth0 */
        if (zone)
            *zone = '\0';
        if (s_parse_ip(host, &addr) == 0 &&
            !cf_source_policy_addr_allowed(self, (struct sockaddr *)&addr)) {
            snprintf(err, errlen,
                     "source address not allowed (loopback, private and other internal "
                     "networks need --allow-source-net)");
            return -1;
        }
    }
    return 0;
}
