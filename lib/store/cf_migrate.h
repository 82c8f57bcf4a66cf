/* cf_migrate: applies sql/NNN_name.sql migrations in order, each in its own
 * transaction, recorded in schema_migrations with a checksum. A Postgres
 * advisory lock makes concurrent runs (many nodes starting at once) apply
 * each migration exactly once. */
#ifndef CF_MIGRATE_H
#define CF_MIGRATE_H

#include <libpq-fe.h>
#include <stddef.h>

typedef struct {
    const char *name; /* file name, e.g. "001_schema.sql" */
    const char *sql;
} cf_migration_source_t;

/* The migrations compiled into the binary from sql/ (cmake/embed_sql.cmake),
 * ending with a {NULL, NULL} entry. */
extern const cf_migration_source_t cf_embedded_migrations[];
extern const int cf_embedded_migration_count;

typedef struct {
    int applied;        /* migrations applied by this run */
    int already;        /* migrations found already applied */
    int latest_version; /* highest version now in the database */
} cf_migrate_report_t;

/* Applies the migrations not yet in schema_migrations. DIR names a folder of
 * NNN_*.sql files to use instead of the embedded ones (tests), or NULL.
 * Returns 0, or -1 with a one-line reason in err; nothing of a failed
 * migration is left applied. */
int cf_migrate_run(PGconn *conn, const char *dir, cf_migrate_report_t *report, char *err,
                   size_t errlen);

#endif
