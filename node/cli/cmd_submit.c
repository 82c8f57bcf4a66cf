/* clipfarm submit COMP.json [--wait]: sends a composition to a node. With
 * --wait it follows the composition's event stream (Server-Sent Events) to
 * its end, drawing a live progress bar on a terminal (frames, fps, ETA while
 * encoding), and exits non-zero unless it completed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cf_json.h"
#include "cf_api_client.h"
#include "cf_cli.h"
#include "cf_progress.h"

#define S_MAX_FILE (16 << 20)

static char *s_read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *f = !strcmp(path, "-") ? stdin : fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read '%s': %s", path, strerror(errno));
        return NULL;
    }
    char *data = malloc(S_MAX_FILE + 1);
    size_t n = data ? fread(data, 1, S_MAX_FILE + 1, f) : 0;
    int failed = !data || ferror(f);
    if (f != stdin)
        fclose(f);
    if (failed || n > S_MAX_FILE) {
        snprintf(err, errlen, "cannot read '%s': %s", path,
                 failed ? "read error" : "larger than 16 MiB");
        free(data);
        return NULL;
    }
    data[n] = '\0';
    *len = n;
    return data;
}

/* What the event stream told so far. */
typedef struct {
    cf_progress_t *bar;
    char phase[32];
    int64_t frames_done, frames_total;
    int64_t last_id;
    bool ended;
    char line[8192];
    size_t line_len;
    char event[32];
    char data[8192];
} s_follow_t;

static void s_draw(s_follow_t *f)
{
    int64_t total = f->frames_total > 0 ? f->frames_total : 0;
    int64_t done = f->frames_done;
    /* Past encoding every frame is done; before it none is. */
    if (!strcmp(f->phase, "assembling") || !strcmp(f->phase, "completed"))
        done = total;
    cf_progress_update(f->bar, f->phase, done, total);
}

/* One complete Server-Sent Event. */
static void s_dispatch(s_follow_t *f)
{
    json_t *data = cf_json_loads(f->data, 0, NULL);
    json_t *payload = json_object_get(data, "payload");
    if (!strcmp(f->event, "end")) {
        f->ended = true;
    } else if (!strcmp(f->event, "status") || !strcmp(f->event, "created")) {
        const char *to = json_string_value(json_object_get(payload, "to"));
        if (!to)
            to = json_string_value(json_object_get(payload, "status"));
        if (to)
            snprintf(f->phase, sizeof f->phase, "%s", to);
    } else if (!strcmp(f->event, "frames")) {
        f->frames_done = json_integer_value(json_object_get(payload, "done"));
        f->frames_total = json_integer_value(json_object_get(payload, "total"));
        snprintf(f->phase, sizeof f->phase, "encoding");
    }
    json_decref(data);
    s_draw(f);
    f->event[0] = f->data[0] = '\0';
}

/* Feeds stream bytes: lines "id: N", "event: T", "data: J", blank = end. */
static int s_sink(void *arg, const void *bytes, size_t len)
{
    s_follow_t *f = arg;
    for (const char *p = bytes; p < (const char *)bytes + len; p++) {
        if (*p != '\n') {
            if (f->line_len + 1 < sizeof f->line)
                f->line[f->line_len++] = *p;
            continue;
        }
        f->line[f->line_len] = '\0';
        f->line_len = 0;
        if (!f->line[0]) {
            if (f->event[0])
                s_dispatch(f);
        } else if (!strncmp(f->line, "event: ", 7)) {
            snprintf(f->event, sizeof f->event, "%s", f->line + 7);
        } else if (!strncmp(f->line, "data: ", 6)) {
            snprintf(f->data, sizeof f->data, "%s", f->line + 6);
        } else if (!strncmp(f->line, "id: ", 4)) {
            f->last_id = strtoll(f->line + 4, NULL, 10);
        }
    }
    return 0;
}

/* Follows the composition's event stream until it ends (reconnecting with
 * Last-Event-ID when the connection drops), then reads its final state.
 * Returns the exit code. */
static int s_wait(cf_api_client_t *client, const char *id, const char *progress_mode)
{
    cf_progress_mode_t mode;
    if (cf_progress_mode_parse(progress_mode, stderr, &mode) < 0)
        mode = CF_PROGRESS_NONE;
    s_follow_t *f = calloc(1, sizeof *f);
    if (!f) {
        cf_cli_error(client->command, "out of memory");
        return CF_EXIT_FAILURE;
    }
    f->bar = cf_progress_new(mode, stderr);
    snprintf(f->phase, sizeof f->phase, "queued");
    char path[160], err[1024], last[64];
    snprintf(path, sizeof path, "/api/v1/compositions/%s/events", id);
    int rc = -1, failures = 0;
    while (!f->ended) {
        const char *headers[] = {last, NULL};
        snprintf(last, sizeof last, "Last-Event-ID: %lld", (long long)f->last_id);
        cf_httpc_response_t resp;
        int got = cf_httpc_get_stream(client->http, path, headers, NULL, s_sink, NULL, f, &resp,
                                      err, sizeof err);
        if (got == 0 && resp.status >= 400) {
            char line[1024];
            cf_httpc_error_line(&resp, line, sizeof line);
            cf_cli_error(client->command, "%s", line);
            rc = CF_EXIT_FAILURE;
        }
        cf_httpc_response_clear(&resp);
        if (rc >= 0)
            break;
        if (!f->ended) {
            /* Cut off (a node restarting, a proxy timeout): resume shortly. */
            if (got < 0 && ++failures >= 30) {
                cf_cli_error(client->command, "%s", err);
                rc = CF_EXIT_USAGE;
                break;
            }
            usleep(1000 * 1000);
        }
    }
    if (f->bar)
        cf_progress_finish(f->bar, NULL);
    cf_progress_destroy(&f->bar);
    free(f);
    if (rc >= 0)
        return rc;

    snprintf(path, sizeof path, "/api/v1/compositions/%s", id);
    json_t *comp = NULL;
    if ((rc = cf_api_client_call(client, "GET", path, NULL, NULL, NULL, 0, &comp)) >= 0)
        return rc;
    const char *status = json_string_value(json_object_get(comp, "status"));
    if (!status)
        status = "unknown";
    if (client->json) {
        cf_api_client_print_json(comp);
    } else if (!strcmp(status, "completed")) {
        json_t *output = json_object_get(comp, "output");
        printf("completed %s (%lld bytes, %.2f s of video)\n", id,
               (long long)json_integer_value(json_object_get(output, "size_bytes")),
               json_number_value(json_object_get(output, "duration_s")));
    }
    if (!strcmp(status, "completed")) {
        rc = CF_EXIT_OK;
    } else {
        json_t *error = json_object_get(comp, "error");
        const char *code = json_string_value(json_object_get(error, "code"));
        const char *message = json_string_value(json_object_get(error, "message"));
        cf_cli_error(client->command, "composition %s %s%s%s%s%s", id, status, code ? ": " : "",
                     code ? code : "", message ? ": " : "", message ? message : "");
        rc = CF_EXIT_FAILURE;
    }
    json_decref(comp);
    return rc;
}

int cf_cmd_submit(int argc, char **argv)
{
    bool wait = false;
    char *idempotency_key = NULL, *progress = NULL;
    const cf_option_t extra[] = {
        {"wait", NULL, CF_OPT_FLAG, &wait, 0, 0,
         "follow the composition to its end; exit 1 unless it completed", NULL},
        {"idempotency-key", NULL, CF_OPT_STRING, &idempotency_key, 0, 0,
         "resubmitting with the same key returns the same composition", "KEY"},
        {"progress", NULL, CF_OPT_STRING, &progress, 0, 0,
         "with --wait: auto (a bar on a terminal), bar, json or none", "MODE"},
        {0},
    };
    cf_config_t cfg;
    cf_api_client_t client = {0};
    char *body = NULL;
    json_t *comp = NULL;
    int rc = cf_cli_parse(&cfg, "submit", extra, 1, 1, argc, argv);
    if (rc >= 0)
        goto end;
    cf_progress_mode_t mode;
    if (progress && cf_progress_mode_parse(progress, stderr, &mode) < 0) {
        cf_cli_error("submit", "--progress: expected auto, bar, json or none, got '%s'", progress);
        rc = CF_EXIT_USAGE;
        goto end;
    }
    char err[512];
    size_t len = 0;
    if (!(body = s_read_file(cfg.args[0], &len, err, sizeof err))) {
        cf_cli_error("submit", "%s", err);
        rc = CF_EXIT_USAGE;
        goto end;
    }
    if ((rc = cf_api_client_open(&client, &cfg, "submit")) >= 0)
        goto end;
    char header[300];
    const char *headers[] = {header, NULL};
    if (idempotency_key)
        snprintf(header, sizeof header, "Idempotency-Key: %s", idempotency_key);
    rc = cf_api_client_call(&client, "POST", "/api/v1/compositions",
                            idempotency_key ? headers : NULL, "application/json", body, len, &comp);
    if (rc >= 0)
        goto end;
    const char *id = json_string_value(json_object_get(comp, "id"));
    if (!id) {
        cf_cli_error("submit", "the server's answer has no composition id");
        rc = CF_EXIT_FAILURE;
        goto end;
    }
    if (!wait) {
        if (client.json)
            cf_api_client_print_json(comp);
        else
            printf("%s\n", id);
        rc = CF_EXIT_OK;
        goto end;
    }
    /* On a terminal, say which composition the bar belongs to; in scripts,
     * stderr carries only errors (one line each). */
    if (!client.json && isatty(fileno(stderr)))
        fprintf(stderr, "submitted %s\n", id);
    rc = s_wait(&client, id, progress ? progress : "auto");
end:
    json_decref(comp);
    free(body);
    cf_api_client_close(&client);
    cf_config_free(&cfg, extra);
    return rc;
}
