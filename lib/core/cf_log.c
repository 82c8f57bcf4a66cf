#include "cf_log.h"

#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
/* Read without the lock by every log call on every thread: atomic. */
static atomic_int s_level = CF_LOG_INFO;
static bool s_json = false;
static char s_node_id[64];

static const char *s_names[] = {"debug", "info", "warn", "error"};

int cf_log_level_parse(const char *name, cf_log_level_t *level)
{
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(name, s_names[i]) == 0) {
            *level = (cf_log_level_t)i;
            return 0;
        }
    }
    if (strcasecmp(name, "warning") == 0) {
        *level = CF_LOG_WARN;
        return 0;
    }
    return -1;
}

const char *cf_log_level_name(cf_log_level_t level)
{
    return level >= CF_LOG_DEBUG && level <= CF_LOG_ERROR ? s_names[level] : "?";
}

void cf_log_configure(cf_log_level_t level, bool json)
{
    pthread_mutex_lock(&s_lock);
    atomic_store(&s_level, (int)level);
    s_json = json;
    pthread_mutex_unlock(&s_lock);
}

void cf_log_set_node_id(const char *node_id)
{
    pthread_mutex_lock(&s_lock);
    snprintf(s_node_id, sizeof s_node_id, "%s", node_id ? node_id : "");
    pthread_mutex_unlock(&s_lock);
}

bool cf_log_enabled(cf_log_level_t level)
{
    return (int)level >= atomic_load_explicit(&s_level, memory_order_relaxed);
}

void cf_log_write(cf_log_level_t level, const char *module, const char *fmt, ...)
{
    if ((int)level < atomic_load_explicit(&s_level, memory_order_relaxed))
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    char stamp[40];
    size_t n = strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(stamp + n, sizeof stamp - n, ".%03ldZ", now.tv_nsec / 1000000);

    pthread_mutex_lock(&s_lock);
    /* A message that is not valid UTF-8 cannot be a JSON string: it falls
     * back to a text line rather than being lost. */
    json_t *line =
        s_json ? json_pack("{s:s, s:s, s:s, s:s}", "ts", stamp, "level", cf_log_level_name(level),
                           "module", module ? module : "", "msg", msg)
               : NULL;
    if (line) {
        if (s_node_id[0])
            json_object_set_new(line, "node", json_string(s_node_id));
        char *text = json_dumps(line, JSON_COMPACT);
        if (text)
            fprintf(stderr, "%s\n", text);
        free(text);
        json_decref(line);
    } else {
        fprintf(stderr, "%s %-5s %s%s%s%s: %s\n", stamp, cf_log_level_name(level),
                s_node_id[0] ? "[" : "", s_node_id, s_node_id[0] ? "] " : "", module ? module : "",
                msg);
    }
    fflush(stderr);
    pthread_mutex_unlock(&s_lock);
}
