/* clipfarm submit COMP.json [--wait]: sends a composition to a node. With
 * --wait it follows the composition to its end, drawing a live progress bar
 * on a terminal, and exits non-zero unless it completed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cf_api_client.h"
#include "cf_cli.h"
#include "cf_progress.h"

#define S_MAX_FILE (16 << 20)
#define S_POLL_MS  300

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

static bool s_terminal(const char *status)
{
    return status && (!strcmp(status, "completed") || !strcmp(status, "failed") ||
                      !strcmp(status, "cancelled"));
}

/* Polls the composition until it ends. Returns the exit code. */
static int s_wait(cf_api_client_t *client, const char *id, const char *progress_mode)
{
    char path[128];
    snprintf(path, sizeof path, "/api/v1/compositions/%s", id);
    cf_progress_mode_t mode;
    if (cf_progress_mode_parse(progress_mode, stderr, &mode) < 0)
        mode = CF_PROGRESS_NONE;
    cf_progress_t *bar = cf_progress_new(mode, stderr);
    json_t *comp = NULL;
    int rc, failures = 0;
    for (;;) {
        json_decref(comp);
        comp = NULL;
        rc = cf_api_client_call(client, "GET", path, NULL, NULL, NULL, 0, &comp);
        if (rc == CF_EXIT_USAGE && ++failures < 30) {
            usleep(1000 * 1000); /* the node restarting: give it half a minute */
            continue;
        }
        if (rc >= 0)
            break;
        failures = 0;
        const char *status = json_string_value(json_object_get(comp, "status"));
        const char *stage = json_string_value(json_object_get(comp, "stage"));
        double progress = json_number_value(json_object_get(comp, "progress"));
        if (bar)
            cf_progress_update(bar,
                               stage    ? stage
                               : status ? status
                                        : "?",
                               (int64_t)(progress * 1000), 1000);
        if (s_terminal(status))
            break;
        usleep(S_POLL_MS * 1000);
    }
    if (bar)
        cf_progress_finish(bar, NULL);
    cf_progress_destroy(&bar);
    if (rc >= 0) {
        json_decref(comp);
        return rc;
    }
    const char *status = json_string_value(json_object_get(comp, "status"));
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
