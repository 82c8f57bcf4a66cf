#define _GNU_SOURCE
#include "cf_migrate.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_db.h"
#include "cf_log.h"

/* "clipmigr" as a 64-bit advisory lock key shared by every clipfarm node. */
#define S_LOCK_KEY "7155135811298183026"

typedef struct {
    int version;
    char *name;
    char *sql;
} s_migration_t;

static int s_version_of(const char *name)
{
    if (!isdigit((unsigned char)name[0]))
        return -1;
    char *end = NULL;
    long v = strtol(name, &end, 10);
    if (*end != '_' || v <= 0 || v > 1000000)
        return -1;
    size_t len = strlen(name);
    if (len < 5 || strcmp(name + len - 4, ".sql"))
        return -1;
    return (int)v;
}

static int s_compare(const void *a, const void *b)
{
    return ((const s_migration_t *)a)->version - ((const s_migration_t *)b)->version;
}

static void s_free_list(s_migration_t *list, int count)
{
    for (int i = 0; i < count; i++) {
        free(list[i].name);
        free(list[i].sql);
    }
    free(list);
}

static char *s_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *data = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&data, &len);
    char chunk[8192];
    size_t n;
    while (mem && (n = fread(chunk, 1, sizeof chunk, f)) > 0)
        fwrite(chunk, 1, n, mem);
    int failed = ferror(f);
    fclose(f);
    if (mem)
        fclose(mem);
    if (failed) {
        free(data);
        return NULL;
    }
    return data;
}

/* Loads the migrations from DIR or the embedded table, sorted by version.
 * Two files with one version are an error. */
static int s_load(const char *dir, s_migration_t **list_p, int *count_p, char *err, size_t errlen)
{
    s_migration_t *list = NULL;
    int count = 0, cap = 0;
    if (dir) {
        DIR *d = opendir(dir);
        if (!d) {
            snprintf(err, errlen, "cannot open migrations directory '%s': %s", dir,
                     strerror(errno));
            return -1;
        }
        struct dirent *entry;
        while ((entry = readdir(d))) {
            int version = s_version_of(entry->d_name);
            if (version < 0)
                continue;
            if (count == cap) {
                s_migration_t *grown = realloc(list, sizeof *list * (size_t)(cap ? cap * 2 : 16));
                if (!grown) {
                    snprintf(err, errlen, "out of memory");
                    closedir(d);
                    s_free_list(list, count);
                    return -1;
                }
                list = grown;
                cap = cap ? cap * 2 : 16;
            }
            char *path = NULL;
            if (asprintf(&path, "%s/%s", dir, entry->d_name) < 0)
                path = NULL;
            char *sql = path ? s_read_file(path) : NULL;
            free(path);
            char *name = sql ? strdup(entry->d_name) : NULL;
            if (!name) {
                snprintf(err, errlen, "cannot read migration '%s/%s'", dir, entry->d_name);
                free(sql);
                closedir(d);
                s_free_list(list, count);
                return -1;
            }
            list[count++] = (s_migration_t){version, name, sql};
        }
        closedir(d);
    } else {
        list = calloc((size_t)cf_embedded_migration_count + 1, sizeof *list);
        for (int i = 0; list && i < cf_embedded_migration_count; i++) {
            const cf_migration_source_t *src = &cf_embedded_migrations[i];
            list[count++] =
                (s_migration_t){s_version_of(src->name), strdup(src->name), strdup(src->sql)};
            if (!list[count - 1].name || !list[count - 1].sql) {
                s_free_list(list, count);
                list = NULL;
            }
        }
        if (!list) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    qsort(list, (size_t)count, sizeof *list, s_compare);
    for (int i = 1; i < count; i++) {
        if (list[i].version == list[i - 1].version) {
            snprintf(err, errlen, "migrations '%s' and '%s' share version %d", list[i - 1].name,
                     list[i].name, list[i].version);
            s_free_list(list, count);
            return -1;
        }
    }
    *list_p = list;
    *count_p = count;
    return 0;
}

static void s_checksum(const char *sql, char hex[65])
{
    unsigned char hash[32];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)sql, strlen(sql), NULL, 0);
    sodium_bin2hex(hex, 65, hash, sizeof hash);
}

/* Runs a command with no result rows; on failure writes err and returns -1. */
static int s_exec(PGconn *conn, const char *sql, const char *what, char *err, size_t errlen)
{
    PGresult *res = PQexec(conn, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok) {
        char why[512];
        snprintf(err, errlen, "%s: %s", what, cf_db_errstr(conn, res, why, sizeof why));
    }
    PQclear(res);
    return ok ? 0 : -1;
}

static int s_apply_one(PGconn *conn, const s_migration_t *m, const char *checksum, char *err,
                       size_t errlen)
{
    char what[300];
    snprintf(what, sizeof what, "migration %s failed", m->name);
    if (s_exec(conn, "BEGIN", what, err, errlen) < 0)
        return -1;
    if (s_exec(conn, m->sql, what, err, errlen) < 0)
        goto rollback;
    char version[16];
    snprintf(version, sizeof version, "%d", m->version);
    const char *params[] = {version, m->name, checksum};
    PGresult *res = PQexecParams(conn,
                                 "INSERT INTO schema_migrations (version, name, checksum) "
                                 "VALUES ($1::int, $2, $3)",
                                 3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        char why[512];
        snprintf(err, errlen, "%s: %s", what, cf_db_errstr(conn, res, why, sizeof why));
        PQclear(res);
        goto rollback;
    }
    PQclear(res);
    if (s_exec(conn, "COMMIT", what, err, errlen) < 0)
        goto rollback;
    return 0;
rollback:
    PQclear(PQexec(conn, "ROLLBACK"));
    return -1;
}

int cf_migrate_run(PGconn *conn, const char *dir, cf_migrate_report_t *report, char *err,
                   size_t errlen)
{
    memset(report, 0, sizeof *report);
    s_migration_t *list = NULL;
    int count = 0, rc = -1;
    PGresult *applied = NULL;
    if (sodium_init() < 0) {
        snprintf(err, errlen, "libsodium failed to initialise");
        return -1;
    }
    if (s_load(dir, &list, &count, err, errlen) < 0)
        return -1;
    /* Session-level lock: held across the per-migration transactions and
     * released below (or by Postgres when the connection drops). */
    if (s_exec(conn, "SELECT pg_advisory_lock(" S_LOCK_KEY ")", "taking the migration lock", err,
               errlen) < 0)
        goto end;
    if (s_exec(conn,
               "CREATE TABLE IF NOT EXISTS schema_migrations ("
               " version integer PRIMARY KEY,"
               " name text NOT NULL,"
               " checksum text NOT NULL,"
               " applied_at timestamptz NOT NULL DEFAULT now())",
               "creating schema_migrations", err, errlen) < 0)
        goto unlock;
    applied =
        PQexec(conn, "SELECT version, name, checksum FROM schema_migrations ORDER BY version");
    if (PQresultStatus(applied) != PGRES_TUPLES_OK) {
        char why[512];
        snprintf(err, errlen, "reading schema_migrations: %s",
                 cf_db_errstr(conn, applied, why, sizeof why));
        goto unlock;
    }
    for (int i = 0; i < count; i++) {
        char checksum[65];
        s_checksum(list[i].sql, checksum);
        int found = -1;
        for (int row = 0; row < PQntuples(applied); row++)
            if (atoi(PQgetvalue(applied, row, 0)) == list[i].version)
                found = row;
        if (found >= 0) {
            /* An edited migration would leave databases that applied the old
             * text different from new ones: refuse rather than drift. */
            if (strcmp(PQgetvalue(applied, found, 2), checksum)) {
                snprintf(err, errlen,
                         "migration %s was changed after it was applied (checksum mismatch); "
                         "add a new migration instead",
                         list[i].name);
                goto unlock;
            }
            report->already++;
            continue;
        }
        if (s_apply_one(conn, &list[i], checksum, err, errlen) < 0)
            goto unlock;
        cf_log_info("migrate", "applied %s", list[i].name);
        report->applied++;
    }
    for (int row = 0; row < PQntuples(applied); row++) {
        int version = atoi(PQgetvalue(applied, row, 0));
        int known = 0;
        for (int i = 0; i < count; i++)
            known |= list[i].version == version;
        if (!known)
            cf_log_warn("migrate",
                        "database has migration %s that this clipfarm does not know "
                        "(a newer version applied it)",
                        PQgetvalue(applied, row, 1));
        if (version > report->latest_version)
            report->latest_version = version;
    }
    if (count > 0 && list[count - 1].version > report->latest_version)
        report->latest_version = list[count - 1].version;
    rc = 0;
unlock:
    if (PQstatus(conn) == CONNECTION_OK)
        PQclear(PQexec(conn, "SELECT pg_advisory_unlock(" S_LOCK_KEY ")"));
end:
    PQclear(applied);
    s_free_list(list, count);
    return rc;
}
