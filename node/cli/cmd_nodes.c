/* clipfarm nodes: the cluster's nodes as the answering node sees them. */
#include <stdio.h>

#include "cf_api_client.h"
#include "cf_cli.h"

int cf_cmd_nodes(int argc, char **argv)
{
    cf_config_t cfg;
    cf_api_client_t client = {0};
    int rc = cf_cli_parse(&cfg, "nodes", NULL, 0, 0, argc, argv);
    if (rc >= 0 || (rc = cf_api_client_open(&client, &cfg, "nodes")) >= 0)
        goto end;
    json_t *cluster = NULL;
    rc = cf_api_client_call(&client, "GET", "/api/v1/cluster", NULL, NULL, NULL, 0, &cluster);
    if (rc < 0) {
        if (client.json)
            cf_api_client_print_json(json_object_get(cluster, "nodes"));
        else
            cf_api_client_print_nodes(cluster);
        rc = CF_EXIT_OK;
    }
    json_decref(cluster);
end:
    cf_api_client_close(&client);
    cf_config_free(&cfg, NULL);
    return rc;
}
