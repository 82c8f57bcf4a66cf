#define _GNU_SOURCE
#include "cf_config.h"

#include <errno.h>
#include <libpq-fe.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cf_cpus.h"
#include "cf_url.h"

typedef enum {
    S_PG_URL,
    S_REDIS_URL,
    S_HTTP_URL,
    S_HOSTPORT,
    S_PATH,
    S_READABLE_FILE,
    S_IFACE,
    S_PORT,
    S_TAG,
    S_SLOTS,
    S_LOG_LEVEL,
    S_BOOL,
    S_SECRET,
} s_kind_t;

typedef struct {
    const char *name;
    const char *env;
    int group;
    s_kind_t kind;
    size_t offset;
    const char *metavar;
    const char *help;
} s_std_option_t;

#define S_OFF(field) offsetof(cf_config_t, field)

static const s_std_option_t s_std_options[] = {
    {"database-url", "CF_DATABASE_URL", CF_OPTS_DB, S_PG_URL, S_OFF(database_url), "URL",
     "PostgreSQL URL (postgresql://user[:pass]@host[:port]/db)"},
    {"redis-url", "CF_REDIS_URL", CF_OPTS_REDIS, S_REDIS_URL, S_OFF(redis_url), "URL",
     "Redis URL (redis://[:pass@]host[:port][/db])"},
    {"http-addr", "CF_HTTP_ADDR", CF_OPTS_NODE, S_HOSTPORT, S_OFF(http_addr), "HOST:PORT",
     "REST API listen address (default 127.0.0.1:8080)"},
    {"control-addr", "CF_CONTROL_ADDR", CF_OPTS_NODE, S_HOSTPORT, S_OFF(control_addr), "HOST:PORT",
     "ZeroMQ control socket address (default 127.0.0.1:7070)"},
    {"data-dir", "CF_DATA_DIR", CF_OPTS_NODE, S_PATH, S_OFF(data_dir), "DIR",
     "node identity, keys, blob store and outputs"},
    {"cluster-secret-file", "CF_CLUSTER_SECRET_FILE", CF_OPTS_NODE, S_READABLE_FILE,
     S_OFF(cluster_secret_file), "FILE", "cluster secret (clipfarm secret generate > FILE)"},
    {"beacon-iface", "CF_BEACON_IFACE", CF_OPTS_NODE, S_IFACE, S_OFF(beacon_iface), "IFACE",
     "network interface to beacon on (no beacons without it)"},
    {"beacon-port", "CF_BEACON_PORT", CF_OPTS_NODE, S_PORT, S_OFF(beacon_port), "PORT",
     "UDP port of discovery beacons (default 5670)"},
    {"tag", "CF_TAGS", CF_OPTS_NODE, S_TAG, S_OFF(tags), "TAG",
     "operator tag, repeatable (env: comma-separated), e.g. gpu or site=lab"},
    {"slots", "CF_SLOTS", CF_OPTS_NODE, S_SLOTS, S_OFF(slots), "N",
     "segments encoded at once on this node (default: cores / 2, at least 1)"},
    {"log-level", "CF_LOG_LEVEL", CF_OPTS_LOG, S_LOG_LEVEL, S_OFF(log_level), "LEVEL",
     "debug, info, warn or error (default info)"},
    {"log-json", "CF_LOG_JSON", CF_OPTS_LOG, S_BOOL, S_OFF(log_json), NULL, "log as JSON lines"},
    {"server", "CF_SERVER", CF_OPTS_CLIENT, S_HTTP_URL, S_OFF(server), "URL",
     "clipfarm node to talk to (default http://127.0.0.1:8080)"},
    {"api-key", "CF_API_KEY", CF_OPTS_CLIENT, S_SECRET, S_OFF(api_key), "KEY", "API key"},
    {"json", NULL, CF_OPTS_CLIENT, S_BOOL, S_OFF(json), NULL, "print JSON instead of text"},
};
#define S_STD_COUNT (sizeof s_std_options / sizeof s_std_options[0])

static int s_fail(char *err, size_t errlen, const char *source, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int s_fail(char *err, size_t errlen, const char *source, const char *fmt, ...)
{
    int n = snprintf(err, errlen, "%s: ", source);
    if (n >= 0 && (size_t)n < errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    /* Messages quote the user's values: a newline or another control byte
     * in one must not break the "one line on stderr" rule. */
    for (char *p = err; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return -1;
}

static int s_parse_long(const char *text, long *value)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end)
        return -1;
    *value = v;
    return 0;
}

static int s_bool_value(const char *text, bool *value)
{
    if (!strcmp(text, "1") || !strcasecmp(text, "true") || !strcasecmp(text, "yes") ||
        !strcasecmp(text, "on")) {
        *value = true;
        return 0;
    }
    if (!strcmp(text, "0") || !strcasecmp(text, "false") || !strcasecmp(text, "no") ||
        !strcasecmp(text, "off") || !*text) {
        *value = false;
        return 0;
    }
    return -1;
}

static int s_add_tag(cf_config_t *cfg, const char *tag, size_t len)
{
    char **tags = realloc(cfg->tags, sizeof(char *) * (size_t)(cfg->tag_count + 1));
    if (!tags)
        return -1;
    cfg->tags = tags;
    if (!(cfg->tags[cfg->tag_count] = strndup(tag, len)))
        return -1;
    cfg->tag_count++;
    return 0;
}

static int s_set_string(char **slot, const char *value)
{
    free(*slot);
    *slot = strdup(value);
    return *slot ? 0 : -1;
}

/* Validates VALUE for option OPT and stores it; SOURCE names where it came
 * from ("--redis-url" or "CF_REDIS_URL") for the error message. */
static int s_apply_std(cf_config_t *cfg, const s_std_option_t *opt, const char *value,
                       const char *source, char *err, size_t errlen)
{
    void *slot = (char *)cfg + opt->offset;
    /* URLs in errors go through cf_url_mask_password: errors end up in logs,
     * and a URL that fails to parse may still carry a real password. */
    char why[256], masked[512];
    cf_url_t url;
    long number;
    switch (opt->kind) {
        case S_PG_URL: {
            if (strncmp(value, "postgres://", 11) && strncmp(value, "postgresql://", 13))
                return s_fail(err, errlen, source,
                              "malformed URL '%s' (expected postgresql://user@host[:port]/db)",
                              cf_url_mask_password(value, masked, sizeof masked));
            char *pq_err = NULL;
            PQconninfoOption *info = PQconninfoParse(value, &pq_err);
            if (!info) {
                s_fail(err, errlen, source, "malformed URL '%s' (%s)",
                       cf_url_mask_password(value, masked, sizeof masked),
                       pq_err ? strtok(pq_err, "\n") : "unparseable");
                PQfreemem(pq_err);
                return -1;
            }
            PQconninfoFree(info);
            if (s_set_string(slot, value) < 0)
                return s_fail(err, errlen, source, "out of memory");
            return 0;
        }
        case S_REDIS_URL:
            if (cf_url_parse(value, &url, why, sizeof why) < 0 || strcmp(url.scheme, "redis"))
                return s_fail(err, errlen, source,
                              "malformed URL '%s' (expected redis://[:password@]host[:port][/db])",
                              cf_url_mask_password(value, masked, sizeof masked));
            if (url.path[0] && strcmp(url.path, "/")) {
                long db;
                if (s_parse_long(url.path + 1, &db) < 0 || db < 0 || db > 15)
                    return s_fail(err, errlen, source,
                                  "malformed URL '%s' (database must be 0..15)",
                                  cf_url_mask_password(value, masked, sizeof masked));
            }
            if (s_set_string(slot, value) < 0)
                return s_fail(err, errlen, source, "out of memory");
            return 0;
        case S_HTTP_URL:
            if (cf_url_parse(value, &url, why, sizeof why) < 0)
                return s_fail(err, errlen, source, "malformed URL '%s' (%s)",
                              cf_url_mask_password(value, masked, sizeof masked), why);
            if (strcmp(url.scheme, "http") && strcmp(url.scheme, "https"))
                return s_fail(err, errlen, source,
                              "malformed URL '%s' (expected http://host[:port])",
                              cf_url_mask_password(value, masked, sizeof masked));
            if (s_set_string(slot, value) < 0)
                return s_fail(err, errlen, source, "out of memory");
            return 0;
        case S_HOSTPORT: {
            char host[256];
            int port;
            if (cf_hostport_parse(value, host, sizeof host, &port, why, sizeof why) < 0)
                return s_fail(err, errlen, source, "invalid address '%s' (%s)", value, why);
            if (s_set_string(slot, value) < 0)
                return s_fail(err, errlen, source, "out of memory");
            return 0;
        }
        case S_PATH:
            if (!*value)
                return s_fail(err, errlen, source, "must not be empty");
            if (s_set_string(slot, value) < 0)
                return s_fail(err, errlen, source, "out of memory");
            return 0;
        case S_READABLE_FILE: {
            FILE *f = fopen(value, "r");
            struct stat st;
            if (!f)
                return s_fail(err, errlen, source, "cannot read '%s': %s", value, strerror(errno));
            int is_file = fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode);
            fclose(f);
            if (!is_file)
                return s_fail(err, errlen, source, "cannot read '%s': not a regular file", value);
        }
            if (s_set_string(slot, value) < 0)
                return s_fail(err, errlen, source, "out of memory");
            return 0;
        case S_IFACE:
            if (!*value || strlen(value) >= IF_NAMESIZE)
                return s_fail(err, errlen, source, "invalid interface name '%s'", value);
            if (if_nametoindex(value) == 0)
                return s_fail(err, errlen, source, "no such network interface '%s'", value);
            if (s_set_string(slot, value) < 0)
                return s_fail(err, errlen, source, "out of memory");
            return 0;
        case S_PORT:
            if (s_parse_long(value, &number) < 0 || number < 1 || number > 65535)
                return s_fail(err, errlen, source,
                              "must be a port number from 1 to 65535, got '%s'", value);
            *(int *)slot = (int)number;
            return 0;
        case S_SLOTS:
            if (s_parse_long(value, &number) < 0 || number < 1 || number > 256)
                return s_fail(err, errlen, source, "must be a number from 1 to 256, got '%s'",
                              value);
            *(int *)slot = (int)number;
            return 0;
        case S_TAG: {
            /* From the environment: a comma-separated list; from a flag: one tag. */
            const char *p = value;
            do {
                size_t len = source[0] == '-' ? strlen(p) : strcspn(p, ",");
                if (len == 0 || len > 64)
                    return s_fail(err, errlen, source, "tags must be 1 to 64 characters");
                for (size_t i = 0; i < len; i++) {
                    char c = p[i];
                    if (!(c == '-' || c == '_' || c == '=' || c == '.' || c == ':' ||
                          (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                          (c >= '0' && c <= '9')))
                        return s_fail(err, errlen, source, "invalid character '%c' in tag '%.*s'",
                                      c, (int)len, p);
                }
                if (s_add_tag(cfg, p, len) < 0)
                    return s_fail(err, errlen, source, "out of memory");
                p += len;
            } while (*p == ',' && *++p);
            return 0;
        }
        case S_LOG_LEVEL:
            if (cf_log_level_parse(value, slot) < 0)
                return s_fail(err, errlen, source,
                              "unknown level '%s' (expected debug, info, warn or error)", value);
            return 0;
        case S_BOOL:
            if (s_bool_value(value, slot) < 0)
                return s_fail(err, errlen, source, "expected true or false, got '%s'", value);
            return 0;
        case S_SECRET:
            if (!*value)
                return s_fail(err, errlen, source, "must not be empty");
            if (s_set_string(slot, value) < 0)
                return s_fail(err, errlen, source, "out of memory");
            return 0;
    }
    return s_fail(err, errlen, source, "unhandled option kind");
}

static int s_apply_extra(const cf_option_t *opt, const char *value, const char *source, char *err,
                         size_t errlen)
{
    char *end = NULL;
    switch (opt->kind) {
        case CF_OPT_FLAG:
            if (s_bool_value(value, opt->target) < 0)
                return s_fail(err, errlen, source, "expected true or false, got '%s'", value);
            return 0;
        case CF_OPT_STRING:
            if (s_set_string(opt->target, value) < 0)
                return s_fail(err, errlen, source, "out of memory");
            return 0;
        case CF_OPT_LIST:
        case CF_OPT_PATH_LIST: {
            /* From the environment: the whole list, split at list_seps.
             * From a flag: one item, appended. */
            char **slot = opt->target;
            bool from_env = opt->env && !strcmp(source, opt->env);
            const char *seps = !from_env ? "" : opt->kind == CF_OPT_LIST ? "," : ":";
            size_t old = *slot ? strlen(*slot) : 0;
            char *joined = malloc(old + strlen(value) + 2);
            if (!joined)
                return s_fail(err, errlen, source, "out of memory");
            size_t n = 0;
            if (old) {
                memcpy(joined, *slot, old);
                n = old;
            }
            for (const char *p = value; *p;) {
                size_t len = *seps ? strcspn(p, seps) : strlen(p);
                if (len) {
                    if (n)
                        joined[n++] = '\n';
                    memcpy(joined + n, p, len);
                    n += len;
                }
                p += len;
                if (*p)
                    p++;
            }
            joined[n] = '\0';
            free(*slot);
            *slot = joined;
            return 0;
        }
        case CF_OPT_INT: {
            long number;
            if (s_parse_long(value, &number) < 0 || number < opt->min || number > opt->max)
                return s_fail(err, errlen, source,
                              "must be a whole number from %.0f to %.0f, got '%s'", opt->min,
                              opt->max, value);
            *(int *)opt->target = (int)number;
            return 0;
        }
        case CF_OPT_DOUBLE: {
            errno = 0;
            double number = strtod(value, &end);
            if (errno || end == value || *end || number < opt->min || number > opt->max)
                return s_fail(err, errlen, source, "must be a number from %g to %g, got '%s'",
                              opt->min, opt->max, value);
            *(double *)opt->target = number;
            return 0;
        }
    }
    return s_fail(err, errlen, source, "unhandled option kind");
}

char *cf_config_default_data_dir(void)
{
    char *dir = NULL;
    const char *xdg = getenv("XDG_DATA_HOME");
    const char *home = getenv("HOME");
    if (geteuid() == 0)
        dir = strdup("/var/lib/clipfarm");
    else if (xdg && *xdg && asprintf(&dir, "%s/clipfarm", xdg) < 0)
        dir = NULL;
    else if (!dir && asprintf(&dir, "%s/.local/share/clipfarm", home && *home ? home : ".") < 0)
        dir = NULL;
    return dir;
}

static void s_defaults(cf_config_t *cfg, int groups)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->log_level = CF_LOG_INFO;
    cfg->beacon_port = 5670;
    int cores = cf_cpu_count();
    cfg->slots = cores >= 2 ? cores / 2 : 1;
    if (groups & CF_OPTS_NODE) {
        cfg->http_addr = strdup("127.0.0.1:8080");
        cfg->control_addr = strdup("127.0.0.1:7070");
        cfg->data_dir = cf_config_default_data_dir();
    }
    if (groups & CF_OPTS_CLIENT)
        cfg->server = strdup("http://127.0.0.1:8080");
}

static const s_std_option_t *s_find_std(const char *name, size_t len, int groups)
{
    for (size_t i = 0; i < S_STD_COUNT; i++)
        if ((s_std_options[i].group & groups) && strlen(s_std_options[i].name) == len &&
            !strncmp(s_std_options[i].name, name, len))
            return &s_std_options[i];
    return NULL;
}

static const cf_option_t *s_find_extra(const cf_option_t *extra, const char *name, size_t len)
{
    for (; extra && extra->name; extra++)
        if (strlen(extra->name) == len && !strncmp(extra->name, name, len))
            return extra;
    return NULL;
}

int cf_config_parse(cf_config_t *cfg, int groups, const cf_option_t *extra, int argc, char **argv,
                    bool *help, char *err, size_t errlen)
{
    s_defaults(cfg, groups);
    *help = false;
    err[0] = '\0';

    /* Environment first, so flags override it. */
    for (size_t i = 0; i < S_STD_COUNT; i++) {
        const s_std_option_t *opt = &s_std_options[i];
        const char *value = opt->env ? getenv(opt->env) : NULL;
        if ((opt->group & groups) && value && *value &&
            s_apply_std(cfg, opt, value, opt->env, err, errlen) < 0)
            return -1;
    }
    for (const cf_option_t *opt = extra; opt && opt->name; opt++) {
        const char *value = opt->env ? getenv(opt->env) : NULL;
        if (value && *value && s_apply_extra(opt, value, opt->env, err, errlen) < 0)
            return -1;
    }

    /* A tag flag replaces the tags from the environment rather than adding. */
    bool tags_from_flags = false;
    unsigned long long lists_from_flags = 0; /* bit per extra option index */
    cfg->args = calloc((size_t)argc + 1, sizeof(char *));
    if (!cfg->args)
        return s_fail(err, errlen, argv[0], "out of memory");
    bool options_done = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (options_done || arg[0] != '-' || !strcmp(arg, "-")) {
            cfg->args[cfg->arg_count++] = argv[i];
            continue;
        }
        if (!strcmp(arg, "--")) {
            options_done = true;
            continue;
        }
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            *help = true;
            continue;
        }
        if (arg[1] != '-')
            return s_fail(err, errlen, arg, "unknown option (try --help)");
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const s_std_option_t *std = s_find_std(name, len, groups);
        const cf_option_t *ext = std ? NULL : s_find_extra(extra, name, len);
        if (!std && !ext)
            return s_fail(err, errlen, argv[i], "unknown option (try --help)");
        bool is_flag = std ? std->kind == S_BOOL : ext->kind == CF_OPT_FLAG;
        const char *value;
        if (eq)
            value = eq + 1;
        else if (is_flag)
            value = "true";
        else if (i + 1 < argc)
            value = argv[++i];
        else
            return s_fail(err, errlen, arg, "missing value");
        char source[80];
        snprintf(source, sizeof source, "--%.*s", (int)len, name);
        if (std && std->kind == S_TAG && !tags_from_flags) {
            for (int t = 0; t < cfg->tag_count; t++)
                free(cfg->tags[t]);
            cfg->tag_count = 0;
            tags_from_flags = true;
        }
        if (ext && (ext->kind == CF_OPT_LIST || ext->kind == CF_OPT_PATH_LIST)) {
            /* The first flag of a list replaces what the environment gave. */
            size_t index = (size_t)(ext - extra);
            unsigned long long bit = index < 64 ? 1ull << index : 0;
            if (bit && !(lists_from_flags & bit)) {
                free(*(char **)ext->target);
                *(char **)ext->target = NULL;
            }
            lists_from_flags |= bit;
        }
        if (std ? s_apply_std(cfg, std, value, source, err, errlen)
                : s_apply_extra(ext, value, source, err, errlen))
            return -1;
    }
    return 0;
}

void cf_config_free(cf_config_t *cfg, const cf_option_t *extra)
{
    if (!cfg)
        return;
    free(cfg->database_url);
    free(cfg->redis_url);
    free(cfg->http_addr);
    free(cfg->control_addr);
    free(cfg->data_dir);
    free(cfg->cluster_secret_file);
    free(cfg->beacon_iface);
    free(cfg->server);
    free(cfg->api_key);
    for (int i = 0; i < cfg->tag_count; i++)
        free(cfg->tags[i]);
    free(cfg->tags);
    free(cfg->args);
    memset(cfg, 0, sizeof *cfg);
    for (; extra && extra->name; extra++) {
        if (extra->kind == CF_OPT_STRING || extra->kind == CF_OPT_LIST ||
            extra->kind == CF_OPT_PATH_LIST) {
            free(*(char **)extra->target);
            *(char **)extra->target = NULL;
        }
    }
}

void cf_config_print_usage(int groups, const cf_option_t *extra, void *file)
{
    FILE *out = file;
    for (const cf_option_t *opt = extra; opt && opt->name; opt++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", opt->name, opt->metavar ? " " : "",
                 opt->metavar ? opt->metavar : "");
        fprintf(out, "  %-28s %s%s%s%s\n", left, opt->help, opt->env ? " [" : "",
                opt->env ? opt->env : "", opt->env ? "]" : "");
    }
    for (size_t i = 0; i < S_STD_COUNT; i++) {
        const s_std_option_t *opt = &s_std_options[i];
        if (!(opt->group & groups))
            continue;
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", opt->name, opt->metavar ? " " : "",
                 opt->metavar ? opt->metavar : "");
        fprintf(out, "  %-28s %s%s%s%s\n", left, opt->help, opt->env ? " [" : "",
                opt->env ? opt->env : "", opt->env ? "]" : "");
    }
    fprintf(out, "  %-28s %s\n", "-h, --help", "show this help");
}

void cf_config_print(const cf_config_t *cfg, int groups, void *file)
{
    FILE *out = file;
    char masked[1024];
    for (size_t i = 0; i < S_STD_COUNT; i++) {
        const s_std_option_t *opt = &s_std_options[i];
        if (!(opt->group & groups))
            continue;
        const void *slot = (const char *)cfg + opt->offset;
        fprintf(out, "%-20s = ", opt->name);
        switch (opt->kind) {
            case S_PG_URL:
            case S_REDIS_URL:
            case S_HTTP_URL:
                fprintf(out, "%s\n",
                        cf_url_mask_password(*(char *const *)slot, masked, sizeof masked));
                break;
            case S_SECRET:
                fprintf(out, "%s\n", *(char *const *)slot ? "***" : "(unset)");
                break;
            case S_PORT:
            case S_SLOTS:
                fprintf(out, "%d\n", *(const int *)slot);
                break;
            case S_TAG:
                for (int t = 0; t < cfg->tag_count; t++)
                    fprintf(out, "%s%s", t ? "," : "", cfg->tags[t]);
                fprintf(out, "%s\n", cfg->tag_count ? "" : "(none)");
                break;
            case S_LOG_LEVEL:
                fprintf(out, "%s\n", cf_log_level_name(cfg->log_level));
                break;
            case S_BOOL:
                fprintf(out, "%s\n", *(const bool *)slot ? "true" : "false");
                break;
            default: {
                const char *s = *(char *const *)slot;
                fprintf(out, "%s\n", s ? s : "(unset)");
            }
        }
    }
}
