/* clipfarm render: lands with issue #3; until then it parses its options and
 * says it is not implemented. */
#include "cf_cli.h"

int cf_cmd_render(int argc, char **argv)
{
    cf_config_t cfg;
    int rc = cf_cli_parse(&cfg, "render", NULL, 1, -1, argc, argv);
    if (rc < 0) {
        cf_cli_error("render", "not implemented yet");
        rc = CF_EXIT_FAILURE;
    }
    cf_config_free(&cfg, NULL);
    return rc;
}
