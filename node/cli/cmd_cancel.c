/* clipfarm cancel ID: cancels a composition (an error when it already
 * finished). */
#include <stdio.h>

#include "cf_api_client.h"
#include "cf_cli.h"

int cf_cmd_cancel(int argc, char **argv)
{
    cf_config_t cfg;
    cf_api_client_t client = {0};
    int rc = cf_cli_parse(&cfg, "cancel", NULL, 1, 1, argc, argv);
    if (rc >= 0 || (rc = cf_api_client_check_id("cancel", cfg.args[0])) >= 0 ||
        (rc = cf_api_client_open(&client, &cfg, "cancel")) >= 0)
        goto end;
    char path[128];
    snprintf(path, sizeof path, "/api/v1/compositions/%s", cfg.args[0]);
    json_t *comp = NULL;
    rc = cf_api_client_call(&client, "DELETE", path, NULL, NULL, NULL, 0, &comp);
    if (rc < 0) {
        if (client.json)
            cf_api_client_print_json(comp);
        else
            printf("cancelled %s\n", cfg.args[0]);
        rc = CF_EXIT_OK;
    }
    json_decref(comp);
end:
    cf_api_client_close(&client);
    cf_config_free(&cfg, NULL);
    return rc;
}
