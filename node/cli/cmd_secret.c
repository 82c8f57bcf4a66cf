/* clipfarm secret generate: prints a new cluster secret (64 hex digits).
 * Every node of a cluster reads the same one with --cluster-secret-file. */
#include <stdio.h>
#include <string.h>

#include "cf_cli.h"
#include "cf_identity.h"

int cf_cmd_secret(int argc, char **argv)
{
    cf_config_t cfg;
    int rc = cf_cli_parse(&cfg, "secret", NULL, 1, 1, argc, argv);
    if (rc >= 0)
        goto end;
    if (strcmp(cfg.args[0], "generate")) {
        cf_cli_error("secret", "unknown action '%s' (usage: clipfarm secret generate)",
                     cfg.args[0]);
        rc = CF_EXIT_USAGE;
        goto end;
    }
    char hex[CF_SECRET_HEX_LEN];
    cf_secret_generate_hex(hex);
    printf("%s\n", hex);
    rc = fflush(stdout) == 0 ? CF_EXIT_OK : CF_EXIT_FAILURE;
end:
    cf_config_free(&cfg, NULL);
    return rc;
}
