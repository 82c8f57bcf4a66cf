/* clipfarm node: one cluster node. */
#include <stdio.h>

#include "cf_cli.h"
#include "cf_db.h"
#include "cf_migrate.h"

int cf_cmd_node(int argc, char **argv)
{
    bool print_config = false;
    const cf_option_t extra[] = {
        {"print-config", NULL, CF_OPT_FLAG, &print_config, 0, 0,
         "print the effective configuration (secrets masked) and exit", NULL},
        {0},
    };
    cf_config_t cfg;
    int rc = cf_cli_parse(&cfg, "node", extra, 0, 0, argc, argv);
    if (rc >= 0)
        goto end;
    if (print_config) {
        cf_config_print(&cfg, cf_command_find("node")->groups, stdout);
        rc = CF_EXIT_OK;
        goto end;
    }
    if (!cfg.database_url) {
        cf_cli_error("node", "--database-url (or CF_DATABASE_URL) is required");
        rc = CF_EXIT_USAGE;
        goto end;
    }
    char err[1024];
    PGconn *conn = cf_db_connect(cfg.database_url, 10, err, sizeof err);
    if (!conn) {
        cf_cli_error("node", "--database-url: cannot connect: %s", err);
        rc = CF_EXIT_USAGE;
        goto end;
    }
    cf_migrate_report_t report;
    if (cf_migrate_run(conn, NULL, &report, err, sizeof err) < 0) {
        cf_cli_error("node", "%s", err);
        PQfinish(conn);
        rc = CF_EXIT_FAILURE;
        goto end;
    }
    PQfinish(conn);
    cf_cli_error("node", "schema at version %d; the node's services are not implemented yet",
                 report.latest_version);
    rc = CF_EXIT_FAILURE;
end:
    cf_config_free(&cfg, extra);
    return rc;
}
