/* clipfarm migrate: apply the database migrations compiled into the binary. */
#include <stdio.h>
#include <stdlib.h>

#include "cf_cli.h"
#include "cf_db.h"
#include "cf_migrate.h"

int cf_cmd_migrate(int argc, char **argv)
{
    char *migrations_dir = NULL;
    const cf_option_t extra[] = {
        {"migrations-dir", "CF_MIGRATIONS_DIR", CF_OPT_STRING, &migrations_dir, 0, 0,
         "apply NNN_*.sql from DIR instead of the built-in migrations", "DIR"},
        {0},
    };
    cf_config_t cfg;
    int rc = cf_cli_parse(&cfg, "migrate", extra, 0, 0, argc, argv);
    if (rc >= 0)
        goto end;
    if (!cfg.database_url) {
        cf_cli_error("migrate", "--database-url (or CF_DATABASE_URL) is required");
        rc = CF_EXIT_USAGE;
        goto end;
    }
    char err[1024];
    PGconn *conn = cf_db_connect(cfg.database_url, 10, err, sizeof err);
    if (!conn) {
        cf_cli_error("migrate", "--database-url: cannot connect: %s", err);
        rc = CF_EXIT_USAGE;
        goto end;
    }
    cf_migrate_report_t report;
    if (cf_migrate_run(conn, migrations_dir, &report, err, sizeof err) < 0) {
        cf_cli_error("migrate", "%s", err);
        rc = CF_EXIT_FAILURE;
    } else {
        printf("migrations: %d applied, %d already applied, schema version %d\n", report.applied,
               report.already, report.latest_version);
        rc = CF_EXIT_OK;
    }
    PQfinish(conn);
end:
    cf_config_free(&cfg, extra);
    return rc;
}
