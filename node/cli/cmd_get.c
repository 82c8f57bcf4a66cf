/* clipfarm get ID: one composition. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "cf_api_client.h"
#include "cf_cli.h"

static const char *s_str(json_t *obj, const char *key)
{
    const char *value = json_string_value(json_object_get(obj, key));
    return value ? value : "-";
}

static void s_print(json_t *comp)
{
    char bar[40];
    double progress = json_number_value(json_object_get(comp, "progress"));
    const char *stage = json_string_value(json_object_get(comp, "stage"));
    printf("id          %s\n", s_str(comp, "id"));
    printf("title       %s\n", s_str(comp, "title"));
    printf("status      %s%s%s%s\n", s_str(comp, "status"), stage ? " (" : "", stage ? stage : "",
           stage ? ")" : "");
    printf("priority    %s\n", s_str(comp, "priority"));
    printf("progress    %s %3.0f%%\n", cf_api_client_bar(progress, 20, bar, sizeof bar),
           progress * 100);
    printf("attempts    %lld\n", (long long)json_integer_value(json_object_get(comp, "attempts")));
    printf("created     %s\n", s_str(comp, "created_at"));
    printf("started     %s\n", s_str(comp, "started_at"));
    printf("finished    %s\n", s_str(comp, "finished_at"));
    json_t *output = json_object_get(comp, "output");
    if (json_is_object(output))
        printf("output      %s (%lld bytes, %.2f s, blake2b %s)\n", s_str(output, "location"),
               (long long)json_integer_value(json_object_get(output, "size_bytes")),
               json_number_value(json_object_get(output, "duration_s")), s_str(output, "hash"));
    json_t *error = json_object_get(comp, "error");
    if (json_is_object(error))
        printf("error       %s: %s\n", s_str(error, "code"), s_str(error, "message"));
    if (json_is_string(json_object_get(comp, "waiting")))
        printf("waiting     %s\n", s_str(comp, "waiting"));
}

/* The work list: which node did what, how often it was tried, how fast. */
static void s_print_segments(json_t *segs)
{
    printf("%-9s %5s  %-8s  %-8s  %8s  %8s  %9s  %s\n", "task", "index", "node", "status",
           "attempts", "frames", "fps", "error");
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(segs, "items"), i, s)
    {
        const char *node = json_string_value(json_object_get(s, "node_id"));
        const char *err = json_string_value(json_object_get(s, "error"));
        long long frames = (long long)(json_integer_value(json_object_get(s, "frame_end")) -
                                       json_integer_value(json_object_get(s, "frame_start")));
        printf("%-9s %5lld  %-8.8s  %-8s  %8lld  %8lld  %9.1f  %s\n", s_str(s, "kind"),
               (long long)json_integer_value(json_object_get(s, "index")), node ? node : "-",
               s_str(s, "status"), (long long)json_integer_value(json_object_get(s, "attempts")),
               frames, json_number_value(json_object_get(s, "encode_fps")), err ? err : "");
    }
}

int cf_cmd_get(int argc, char **argv)
{
    cf_config_t cfg;
    cf_api_client_t client = {0};
    bool segments = false;
    cf_option_t extra[] = {
        {"segments", NULL, CF_OPT_FLAG, &segments, 0, 0,
         "also list the composition's tasks: node, status, attempts, fps", NULL},
        {0},
    };
    int rc = cf_cli_parse(&cfg, "get", extra, 1, 1, argc, argv);
    if (rc >= 0 || (rc = cf_api_client_check_id("get", cfg.args[0])) >= 0 ||
        (rc = cf_api_client_open(&client, &cfg, "get")) >= 0)
        goto end;
    char path[128];
    snprintf(path, sizeof path, "/api/v1/compositions/%s", cfg.args[0]);
    json_t *comp = NULL;
    rc = cf_api_client_call(&client, "GET", path, NULL, NULL, NULL, 0, &comp);
    json_t *segs = NULL;
    if (rc < 0 && segments) {
        snprintf(path, sizeof path, "/api/v1/compositions/%s/segments", cfg.args[0]);
        rc = cf_api_client_call(&client, "GET", path, NULL, NULL, NULL, 0, &segs);
    }
    if (rc < 0) {
        if (client.json && segs) {
            json_object_set(comp, "segments", json_object_get(segs, "items"));
            cf_api_client_print_json(comp);
        } else if (client.json) {
            cf_api_client_print_json(comp);
        } else {
            s_print(comp);
            if (segs) {
                printf("\n");
                s_print_segments(segs);
            }
        }
        rc = CF_EXIT_OK;
    }
    json_decref(segs);
    json_decref(comp);
end:
    cf_api_client_close(&client);
    cf_config_free(&cfg, extra);
    return rc;
}
