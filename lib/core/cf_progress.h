/* cf_progress: shows the progress of long work (frames done of a total) as
 * a one-line bar redrawn in place on a terminal, or as JSON lines, one per
 * update, for programs:
 *
 *   encode [##########..........]  52%  780/1500 frames  61.2 fps  ETA 0:12
 *   {"phase":"encode","done":780,"total":1500,"percent":52.0,"fps":61.2,...}
 *
 * Speed is measured from the first update of a phase with work done; ETA is
 * what is left at that speed. Not thread-safe: call it from one thread. */
#ifndef CF_PROGRESS_H
#define CF_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef enum { CF_PROGRESS_NONE, CF_PROGRESS_BAR, CF_PROGRESS_JSON } cf_progress_mode_t;

typedef struct cf_progress_t cf_progress_t;

/* Parses "auto", "bar", "json" or "none"; "auto" is a bar when OUT is a
 * terminal, else none. Returns 0 or -1 when NAME is none of these. */
int cf_progress_mode_parse(const char *name, FILE *out, cf_progress_mode_t *mode);

/* Draws on OUT (not owned). Returns NULL on ENOMEM. */
cf_progress_t *cf_progress_new(cf_progress_mode_t mode, FILE *out);

/* Names what done/total count: "frames" (the default; speed shown as fps),
 * "bytes" (shown in MiB and MiB/s), or any other word (shown as is, speed as
 * WORD/s). UNIT is copied. */
void cf_progress_set_unit(cf_progress_t *self, const char *unit);

/* Reports DONE of TOTAL units in PHASE (a short word: "fetch", "encode").
 * The bar redraws at most every 100 ms, JSON lines at most every
 * 500 ms, and always when the phase changes or done reaches total. */
void cf_progress_update(cf_progress_t *self, const char *phase, int64_t done, int64_t total);

/* Ends the bar's line (so later output starts on a fresh line) and, in JSON
 * mode, writes EXTRA_JSON (a JSON object's members, e.g. "\"ok\":true", or
 * NULL) as a final {"phase":"done",...} line. */
void cf_progress_finish(cf_progress_t *self, const char *extra_json);

void cf_progress_destroy(cf_progress_t **self_p);

/* Formats SECONDS as H:MM:SS or M:SS into buf. Returns buf. */
char *cf_progress_format_duration(double seconds, char *buf, size_t len);

#endif
