/* clipfarm status: the cluster at a glance: coordinator and epoch, each
 * node, queue depth per priority, and the active compositions with their
 * progress. */
#include <stdio.h>
#include <string.h>

#include "cf_api_client.h"
#include "cf_cli.h"

static int s_active(cf_api_client_t *client, const char *status, json_t *into)
{
    char path[128];
    snprintf(path, sizeof path, "/api/v1/compositions?status=%s&limit=100", status);
    json_t *page = NULL;
    int rc = cf_api_client_call(client, "GET", path, NULL, NULL, NULL, 0, &page);
    if (rc < 0)
        json_array_extend(into, json_object_get(page, "items"));
    json_decref(page);
    return rc;
}

int cf_cmd_status(int argc, char **argv)
{
    cf_config_t cfg;
    cf_api_client_t client = {0};
    json_t *cluster = NULL, *active = json_array();
    int rc = cf_cli_parse(&cfg, "status", NULL, 0, 0, argc, argv);
    if (rc >= 0 || (rc = cf_api_client_open(&client, &cfg, "status")) >= 0)
        goto end;
    if ((rc = cf_api_client_call(&client, "GET", "/api/v1/cluster", NULL, NULL, NULL, 0,
                                 &cluster)) >= 0 ||
        (rc = s_active(&client, "processing", active)) >= 0 ||
        (rc = s_active(&client, "queued", active)) >= 0)
        goto end;
    rc = CF_EXIT_OK;
    if (client.json) {
        json_t *out = json_pack("{s:O,s:O}", "cluster", cluster, "active", active);
        cf_api_client_print_json(out);
        json_decref(out);
        goto end;
    }
    const char *coordinator = json_string_value(json_object_get(cluster, "coordinator"));
    json_t *depth = json_object_get(cluster, "queue_depth");
    printf("cluster     %zu node%s, coordinator %s, epoch %lld\n",
           json_array_size(json_object_get(cluster, "nodes")),
           json_array_size(json_object_get(cluster, "nodes")) == 1 ? "" : "s",
           coordinator ? coordinator : "(none)",
           (long long)json_integer_value(json_object_get(cluster, "epoch")));
    printf("queue       high %lld, default %lld, low %lld\n\n",
           (long long)json_integer_value(json_object_get(depth, "high")),
           (long long)json_integer_value(json_object_get(depth, "default")),
           (long long)json_integer_value(json_object_get(depth, "low")));
    cf_api_client_print_nodes(cluster);
    printf("\n");
    if (json_array_size(active) == 0) {
        printf("no active compositions\n");
        goto end;
    }
    printf("%-36s  %-10s  %-24s  %s\n", "ACTIVE", "STATUS", "PROGRESS", "TITLE");
    size_t i;
    json_t *c;
    json_array_foreach(active, i, c)
    {
        char bar[32], cell[48];
        double progress = json_number_value(json_object_get(c, "progress"));
        const char *stage = json_string_value(json_object_get(c, "stage"));
        snprintf(cell, sizeof cell, "%s %3.0f%%", cf_api_client_bar(progress, 16, bar, sizeof bar),
                 progress * 100);
        printf("%-36s  %-10s  %-24s  %s\n", json_string_value(json_object_get(c, "id")),
               stage ? stage : json_string_value(json_object_get(c, "status")), cell,
               json_string_value(json_object_get(c, "title")));
    }
end:
    json_decref(cluster);
    json_decref(active);
    cf_api_client_close(&client);
    cf_config_free(&cfg, NULL);
    return rc;
}
