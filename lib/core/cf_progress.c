#define _GNU_SOURCE
#include "cf_progress.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define S_BAR_WIDTH 24

struct cf_progress_t {
    cf_progress_mode_t mode;
    FILE *out;
    char unit[24];
    char phase[32];
    double phase_start; /* when the phase's first work was seen */
    int64_t phase_base; /* done at phase_start */
    double last_draw;   /* monotonic seconds */
    int64_t last_done;
    int last_len; /* characters of the bar line drawn */
    bool drawn;
};

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int cf_progress_mode_parse(const char *name, FILE *out, cf_progress_mode_t *mode)
{
    if (!strcmp(name, "auto"))
        *mode = isatty(fileno(out)) ? CF_PROGRESS_BAR : CF_PROGRESS_NONE;
    else if (!strcmp(name, "bar"))
        *mode = CF_PROGRESS_BAR;
    else if (!strcmp(name, "json"))
        *mode = CF_PROGRESS_JSON;
    else if (!strcmp(name, "none"))
        *mode = CF_PROGRESS_NONE;
    else
        return -1;
    return 0;
}

cf_progress_t *cf_progress_new(cf_progress_mode_t mode, FILE *out)
{
    cf_progress_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->mode = mode;
    self->out = out;
    self->phase_start = -1;
    snprintf(self->unit, sizeof self->unit, "frames");
    return self;
}

void cf_progress_set_unit(cf_progress_t *self, const char *unit)
{
    if (self && unit && *unit)
        snprintf(self->unit, sizeof self->unit, "%s", unit);
}

char *cf_progress_format_duration(double seconds, char *buf, size_t len)
{
    if (!isfinite(seconds) || seconds < 0) {
        snprintf(buf, len, "--:--");
        return buf;
    }
    long s = lround(seconds);
    if (s >= 3600)
        snprintf(buf, len, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, len, "%ld:%02ld", s / 60, s % 60);
    return buf;
}

void cf_progress_update(cf_progress_t *self, const char *phase, int64_t done, int64_t total)
{
    if (!self || self->mode == CF_PROGRESS_NONE)
        return;
    double now = s_now();
    bool new_phase = strcmp(self->phase, phase) != 0;
    if (new_phase) {
        snprintf(self->phase, sizeof self->phase, "%s", phase);
        self->phase_start = -1;
    }
    if (self->phase_start < 0 && done > 0) {
        /* Speed counts from the first unit seen, so start-up time (opening
         * files, encoder set-up) does not drag the figure down. */
        self->phase_start = now;
        self->phase_base = done;
    }
    bool complete = total > 0 && done >= total;
    double interval = self->mode == CF_PROGRESS_BAR ? 0.1 : 0.5;
    if (!new_phase && complete && done == self->last_done)
        return; /* finished: keep the final figures on screen */
    if (!new_phase && !complete && now - self->last_draw < interval)
        return;
    self->last_draw = now;
    self->last_done = done;

    double elapsed = self->phase_start >= 0 ? now - self->phase_start : 0;
    double rate = elapsed > 0.2 ? (double)(done - self->phase_base) / elapsed : 0;
    double eta = rate > 0 && total > 0 ? (double)(total - done) / rate : -1;
    double percent = total > 0 ? 100.0 * (double)done / (double)total : 0;
    if (percent > 100)
        percent = 100;

    bool frames = !strcmp(self->unit, "frames");
    if (self->mode == CF_PROGRESS_JSON) {
        fprintf(self->out,
                "{\"phase\":\"%s\",\"done\":%lld,\"total\":%lld,\"percent\":%.1f,"
                "\"%s\":%.1f,\"eta_seconds\":%.1f,\"unit\":\"%s\"}\n",
                self->phase, (long long)done, (long long)total, percent,
                frames ? "fps" : "per_second", rate, eta >= 0 ? eta : -1.0, self->unit);
        fflush(self->out);
        return;
    }
    char bar[S_BAR_WIDTH + 1];
    int filled = total > 0 ? (int)(S_BAR_WIDTH * percent / 100.0) : 0;
    for (int i = 0; i < S_BAR_WIDTH; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[S_BAR_WIDTH] = '\0';
    char eta_text[32], line[200];
    cf_progress_format_duration(eta, eta_text, sizeof eta_text);
    int len;
    if (!strcmp(self->unit, "bytes"))
        len = snprintf(line, sizeof line, "%-7s [%s] %3.0f%%  %.1f/%.1f MiB  %5.1f MiB/s  ETA %s",
                       self->phase, bar, percent, (double)done / 1048576.0,
                       (double)total / 1048576.0, rate / 1048576.0, eta_text);
    else
        len = snprintf(line, sizeof line, "%-7s [%s] %3.0f%%  %lld/%lld %s  %5.1f %s%s  ETA %s",
                       self->phase, bar, percent, (long long)done, (long long)total, self->unit,
                       rate, frames ? "fps" : self->unit, frames ? "" : "/s", eta_text);
    /* Pad over what a longer previous line left behind. */
    fprintf(self->out, "\r%s%*s", line, self->last_len > len ? self->last_len - len : 0, "");
    fflush(self->out);
    self->last_len = len;
    self->drawn = true;
}

void cf_progress_finish(cf_progress_t *self, const char *extra_json)
{
    if (!self)
        return;
    if (self->mode == CF_PROGRESS_BAR && self->drawn) {
        fputc('\n', self->out);
        self->drawn = false;
    } else if (self->mode == CF_PROGRESS_JSON) {
        fprintf(self->out, "{\"phase\":\"done\"%s%s}\n", extra_json ? "," : "",
                extra_json ? extra_json : "");
    }
    fflush(self->out);
}

void cf_progress_destroy(cf_progress_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free(*self_p);
    *self_p = NULL;
}
