/* clipfarm ls [--status S] [--limit N] [--all]: compositions, newest first. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "cf_api_client.h"
#include "cf_cli.h"

int cf_cmd_ls(int argc, char **argv)
{
    char *status = NULL;
    int limit = 20;
    bool all = false;
    const cf_option_t extra[] = {
        {"status", NULL, CF_OPT_STRING, &status, 0, 0,
         "only this status: pending, queued, processing, completed, failed, cancelled", "S"},
        {"limit", NULL, CF_OPT_INT, &limit, 1, 100, "compositions per page (default 20)", "N"},
        {"all", NULL, CF_OPT_FLAG, &all, 0, 0, "follow the pages to the end", NULL},
        {0},
    };
    cf_config_t cfg;
    cf_api_client_t client = {0};
    json_t *items = json_array();
    char *cursor = NULL;
    int rc = cf_cli_parse(&cfg, "ls", extra, 0, 0, argc, argv);
    if (rc >= 0 || (rc = cf_api_client_open(&client, &cfg, "ls")) >= 0)
        goto end;
    do {
        char path[1024];
        int n = snprintf(path, sizeof path, "/api/v1/compositions?limit=%d", limit);
        if (status) {
            char *escaped = curl_easy_escape(NULL, status, 0);
            n += snprintf(path + n, sizeof path - (size_t)n, "&status=%s", escaped);
            curl_free(escaped);
        }
        if (cursor) {
            char *escaped = curl_easy_escape(NULL, cursor, 0);
            snprintf(path + n, sizeof path - (size_t)n, "&cursor=%s", escaped);
            curl_free(escaped);
        }
        json_t *page = NULL;
        rc = cf_api_client_call(&client, "GET", path, NULL, NULL, NULL, 0, &page);
        if (rc >= 0)
            goto end;
        json_array_extend(items, json_object_get(page, "items"));
        const char *next = json_string_value(json_object_get(page, "next_cursor"));
        free(cursor);
        cursor = next ? strdup(next) : NULL;
        json_decref(page);
    } while (all && cursor);

    if (client.json) {
        cf_api_client_print_json(items);
    } else {
        printf("%-36s  %-10s  %-10s  %5s  %-27s  %s\n", "ID", "STATUS", "STAGE", "PROG", "CREATED",
               "TITLE");
        size_t i;
        json_t *c;
        json_array_foreach(items, i, c)
        {
            const char *stage = json_string_value(json_object_get(c, "stage"));
            printf("%-36s  %-10s  %-10s  %4.0f%%  %-27s  %s\n",
                   json_string_value(json_object_get(c, "id")),
                   json_string_value(json_object_get(c, "status")), stage ? stage : "-",
                   json_number_value(json_object_get(c, "progress")) * 100,
                   json_string_value(json_object_get(c, "created_at")),
                   json_string_value(json_object_get(c, "title")));
        }
        if (cursor)
            printf("(more: --all, or --limit up to 100)\n");
    }
    rc = CF_EXIT_OK;
end:
    free(cursor);
    json_decref(items);
    cf_api_client_close(&client);
    cf_config_free(&cfg, extra);
    return rc;
}
