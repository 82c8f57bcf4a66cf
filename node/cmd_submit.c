/* clipfarm submit: lands with issue #6; until then it parses its options and
 * says it is not implemented. */
#include "cf_cli.h"

int cf_cmd_submit(int argc, char **argv)
{
    cf_config_t cfg;
    int rc = cf_cli_parse(&cfg, "submit", NULL, 1, -1, argc, argv);
    if (rc < 0) {
        cf_cli_error("submit", "not implemented yet");
        rc = CF_EXIT_FAILURE;
    }
    cf_config_free(&cfg, NULL);
    return rc;
}
