/* cf_log: levelled, timestamped log lines on stderr, as text or JSON lines.
 * Safe to call from any thread; each line is written whole. */
#ifndef CF_LOG_H
#define CF_LOG_H

#include <stdbool.h>

typedef enum { CF_LOG_DEBUG = 0, CF_LOG_INFO, CF_LOG_WARN, CF_LOG_ERROR } cf_log_level_t;

/* Parses "debug", "info", "warn"/"warning", "error". Returns 0, or -1 when
 * NAME is not a level. */
int cf_log_level_parse(const char *name, cf_log_level_t *level);
const char *cf_log_level_name(cf_log_level_t level);

/* Sets the lowest level written and the format (JSON lines when json). */
void cf_log_configure(cf_log_level_t level, bool json);
/* Sets the node id shown on every line (copied; NULL clears it). */
void cf_log_set_node_id(const char *node_id);
bool cf_log_enabled(cf_log_level_t level);

/* Writes one line; MODULE names the part of the program ("db", "media"). */
void cf_log_write(cf_log_level_t level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define cf_log_debug(module, ...) cf_log_write(CF_LOG_DEBUG, module, __VA_ARGS__)
#define cf_log_info(module, ...)  cf_log_write(CF_LOG_INFO, module, __VA_ARGS__)
#define cf_log_warn(module, ...)  cf_log_write(CF_LOG_WARN, module, __VA_ARGS__)
#define cf_log_error(module, ...) cf_log_write(CF_LOG_ERROR, module, __VA_ARGS__)

#endif
