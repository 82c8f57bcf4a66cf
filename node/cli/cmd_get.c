/* clipfarm get ID: one composition. */
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
}

int cf_cmd_get(int argc, char **argv)
{
    cf_config_t cfg;
    cf_api_client_t client = {0};
    int rc = cf_cli_parse(&cfg, "get", NULL, 1, 1, argc, argv);
    if (rc >= 0 || (rc = cf_api_client_check_id("get", cfg.args[0])) >= 0 ||
        (rc = cf_api_client_open(&client, &cfg, "get")) >= 0)
        goto end;
    char path[128];
    snprintf(path, sizeof path, "/api/v1/compositions/%s", cfg.args[0]);
    json_t *comp = NULL;
    rc = cf_api_client_call(&client, "GET", path, NULL, NULL, NULL, 0, &comp);
    if (rc < 0) {
        if (client.json)
            cf_api_client_print_json(comp);
        else
            s_print(comp);
        rc = CF_EXIT_OK;
    }
    json_decref(comp);
end:
    cf_api_client_close(&client);
    cf_config_free(&cfg, NULL);
    return rc;
}
