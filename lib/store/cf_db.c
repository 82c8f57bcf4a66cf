/* cf_db: the machinery of the module (connections, the pool, prepared
 * statements, exec with retries and lost answers, ping, explain) and the row
 * helpers the query files share. The queries are in cf_db_*.c; the statement
 * table in cf_db_statements.c (see cf_db_internal.h). */
#define _GNU_SOURCE
#include "cf_db.h"
#include "cf_db_internal.h"

#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cf_log.h"

/* ====================================================================== one connection */

char *cf_db_errstr(PGconn *conn, const PGresult *res, char *err, size_t errlen)
{
    const char *msg = res ? PQresultErrorMessage(res) : NULL;
    if (!msg || !*msg)
        msg = conn ? PQerrorMessage(conn) : "no connection";
    /* libpq messages span lines ("connection to server ... failed: \n ..."):
     * join them into one line. */
    size_t out = 0;
    for (const char *p = msg; *p && out + 1 < errlen; p++) {
        char c = (*p == '\n' || *p == '\t') ? ' ' : *p;
        if (c == ' ' && (out == 0 || err[out - 1] == ' '))
            continue;
        err[out++] = c;
    }
    while (out > 0 && err[out - 1] == ' ')
        out--;
    err[out] = '\0';
    return err;
}

static void s_ignore_notice(void *arg, const char *message)
{
}

PGconn *cf_db_connect(const char *url, int timeout_s, char *err, size_t errlen)
{
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%d", timeout_s > 0 ? timeout_s : 10);
    const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
    const char *values[] = {url, timeout, "clipfarm", NULL};
    PGconn *conn = PQconnectdbParams(keys, values, 1 /* expand dbname as a URL */);
    if (!conn) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        cf_db_errstr(conn, NULL, err, errlen);
        PQfinish(conn);
        return NULL;
    }
    /* Notices (e.g. "relation already exists, skipping") are not errors. */
    PQsetNoticeProcessor(conn, s_ignore_notice, NULL);
    return conn;
}

const char *cf_db_rc_name(int rc)
{
    switch (rc) {
        case CF_DB_OK:
            return "ok";
        case CF_DB_NOT_FOUND:
            return "not found";
        case CF_DB_CONFLICT:
            return "conflict";
        case CF_DB_ILLEGAL:
            return "illegal transition";
        case CF_DB_TERMINAL:
            return "already terminal";
        case CF_DB_UNAVAILABLE:
            return "database unavailable";
        case CF_DB_INVALID:
            return "invalid argument";
        case CF_DB_STALE:
            return "stale epoch";
        default:
            return "error";
    }
}

/* ====================================================================== pool */

typedef struct {
    PGconn *conn;
    uint64_t prepared[CF_DBI_PREPARED_WORDS]; /* bit per cf_dbi_stmt_t prepared here */
    int64_t born_ms;
} s_conn_t;

struct cf_db {
    cf_db_options_t opts;
    char *url;
    char conninfo_options[64]; /* "-c statement_timeout=N" */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    s_conn_t **idle; /* stack of idle connections, pool_size + max_overflow slots */
    int idle_count;
    int open; /* connections open or being opened */
    /* Reconnect backoff while Postgres is unreachable. */
    bool down;
    bool connecting; /* a thread is trying to connect while down */
    int backoff_ms;
    int64_t next_attempt_ms;
    char last_error[256];
    cf_db_stats_t stats;
    cf_db_write_hook_t hook;
    void *hook_arg;
};

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_deadline_ts(int64_t deadline_ms, struct timespec *ts)
{
    /* pthread_cond_timedwait uses CLOCK_REALTIME unless told otherwise; the
     * condition variable is set to CLOCK_MONOTONIC in cf_db_new. */
    ts->tv_sec = deadline_ms / 1000;
    ts->tv_nsec = (deadline_ms % 1000) * 1000000;
}

void cf_db_options_default(cf_db_options_t *opts)
{
    *opts = (cf_db_options_t){
        .url = NULL,
        .pool_size = 30,
        .max_overflow = 20,
        .acquire_timeout_ms = 30000,
        .connect_timeout_ms = 5000,
        .statement_timeout_ms = 30000,
        .recycle_s = 3600,
        .backoff_initial_ms = 50,
        .backoff_max_ms = 2000,
    };
}

cf_db_t *cf_db_new(const cf_db_options_t *opts, char *err, size_t errlen)
{
    if (!opts->url || !*opts->url) {
        snprintf(err, errlen, "no database URL");
        return NULL;
    }
    if (opts->pool_size < 1 || opts->pool_size > 1000 || opts->max_overflow < 0 ||
        opts->max_overflow > 1000) {
        snprintf(err, errlen, "pool size must be 1..1000 and overflow 0..1000");
        return NULL;
    }
    if (opts->acquire_timeout_ms < 0 || opts->connect_timeout_ms < 1000 ||
        opts->statement_timeout_ms < 0 || opts->recycle_s < 1 || opts->backoff_initial_ms < 1 ||
        opts->backoff_max_ms < opts->backoff_initial_ms) {
        snprintf(err, errlen,
                 "invalid pool timeouts (connect >= 1000 ms, others >= 0, backoff max >= "
                 "initial)");
        return NULL;
    }
    if (sodium_init() < 0) {
        snprintf(err, errlen, "libsodium failed to initialise");
        return NULL;
    }
    cf_db_t *db = calloc(1, sizeof *db);
    if (!db) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    db->opts = *opts;
    db->url = strdup(opts->url);
    db->opts.url = db->url;
    db->idle = calloc((size_t)(opts->pool_size + opts->max_overflow), sizeof *db->idle);
    if (!db->url || !db->idle) {
        free(db->url);
        free(db->idle);
        free(db);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(db->conninfo_options, sizeof db->conninfo_options, "-c statement_timeout=%d",
             opts->statement_timeout_ms);
    db->backoff_ms = opts->backoff_initial_ms;
    pthread_mutex_init(&db->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&db->cond, &attr);
    pthread_condattr_destroy(&attr);
    return db;
}

void cf_db_destroy(cf_db_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_db_t *db = *self_p;
    for (int i = 0; i < db->idle_count; i++) {
        PQfinish(db->idle[i]->conn);
        free(db->idle[i]);
    }
    free(db->idle);
    free(db->url);
    pthread_mutex_destroy(&db->lock);
    pthread_cond_destroy(&db->cond);
    free(db);
    *self_p = NULL;
}

void cf_db_set_write_hook(cf_db_t *db, cf_db_write_hook_t hook, void *arg)
{
    pthread_mutex_lock(&db->lock);
    db->hook = hook;
    db->hook_arg = arg;
    pthread_mutex_unlock(&db->lock);
}

void cf_db_stats(cf_db_t *db, cf_db_stats_t *stats)
{
    pthread_mutex_lock(&db->lock);
    *stats = db->stats;
    stats->open = db->open;
    stats->in_use = db->open - db->idle_count;
    pthread_mutex_unlock(&db->lock);
}

/* Opens a connection with the pool's settings: statement_timeout is a
 * connection option, so no SQL runs to set it up. */
static s_conn_t *s_conn_open(cf_db_t *db, int timeout_ms, char *err, size_t errlen)
{
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%d", (timeout_ms + 999) / 1000);
    const char *keys[] = {"dbname",     "connect_timeout", "application_name",    "options",
                          "keepalives", "keepalives_idle", "keepalives_interval", NULL};
    const char *values[] = {db->url, timeout, "clipfarm", db->conninfo_options,
                            "1",     "30",    "10",       NULL};
    PGconn *conn = PQconnectdbParams(keys, values, 1);
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        if (conn)
            cf_db_errstr(conn, NULL, err, errlen);
        else
            snprintf(err, errlen, "out of memory");
        PQfinish(conn);
        return NULL;
    }
    PQsetNoticeProcessor(conn, s_ignore_notice, NULL);
    s_conn_t *c = calloc(1, sizeof *c);
    if (!c) {
        PQfinish(conn);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->conn = conn;
    c->born_ms = s_now_ms();
    return c;
}

/* A pooled connection is usable when libpq thinks so and the server has sent
 * nothing since it went idle: an idle connection that became readable was
 * closed by the server (restart, idle timeout, pg_terminate_backend: all
 * send a FATAL message, then EOF). This costs no round trip. */
static bool s_conn_usable(const cf_db_t *db, const s_conn_t *c)
{
    if (PQstatus(c->conn) != CONNECTION_OK || PQtransactionStatus(c->conn) != PQTRANS_IDLE)
        return false;
    if (s_now_ms() - c->born_ms > (int64_t)db->opts.recycle_s * 1000)
        return false;
    struct pollfd p = {.fd = PQsocket(c->conn), .events = POLLIN};
    int n = poll(&p, 1, 0);
    return n == 0;
}

static void s_conn_close(s_conn_t *c)
{
    if (c) {
        PQfinish(c->conn);
        free(c);
    }
}

/* Takes a connection: an idle one that is still usable, else a new one while
 * the pool has room. While Postgres is down only one thread at a time tries
 * to connect, at growing intervals; the others wait for it. Gives up at
 * deadline_ms with CF_DB_UNAVAILABLE. */
static int s_acquire(cf_db_t *db, int64_t deadline_ms, s_conn_t **conn_p, char *err, size_t errlen)
{
    int max_open = db->opts.pool_size + db->opts.max_overflow;
    bool waited = false;
    pthread_mutex_lock(&db->lock);
    for (;;) {
        if (db->idle_count > 0) {
            s_conn_t *c = db->idle[--db->idle_count];
            if (s_conn_usable(db, c)) {
                pthread_mutex_unlock(&db->lock);
                *conn_p = c;
                return CF_DB_OK;
            }
            db->open--;
            db->stats.discarded++;
            pthread_mutex_unlock(&db->lock);
            s_conn_close(c);
            pthread_mutex_lock(&db->lock);
            continue;
        }
        int64_t now = s_now_ms();
        bool may_connect = db->open < max_open && !(db->down && db->connecting) &&
                           !(db->down && now < db->next_attempt_ms);
        if (may_connect) {
            db->open++;
            db->connecting = db->down;
            bool was_down = db->down;
            pthread_mutex_unlock(&db->lock);
            char why[256];
            int timeout_ms = db->opts.connect_timeout_ms;
            s_conn_t *c = s_conn_open(db, timeout_ms, why, sizeof why);
            pthread_mutex_lock(&db->lock);
            if (was_down)
                db->connecting = false;
            if (c) {
                db->stats.connects++;
                if (db->down)
                    cf_log_info("db", "connected to Postgres again");
                db->down = false;
                db->backoff_ms = db->opts.backoff_initial_ms;
                pthread_cond_broadcast(&db->cond);
                pthread_mutex_unlock(&db->lock);
                *conn_p = c;
                return CF_DB_OK;
            }
            db->open--;
            db->stats.failures++;
            if (!db->down)
                cf_log_warn("db", "cannot connect to Postgres: %s", why);
            db->down = true;
            snprintf(db->last_error, sizeof db->last_error, "%s", why);
            db->next_attempt_ms = s_now_ms() + db->backoff_ms;
            db->backoff_ms = db->backoff_ms * 2 > db->opts.backoff_max_ms ? db->opts.backoff_max_ms
                                                                          : db->backoff_ms * 2;
            pthread_cond_broadcast(&db->cond);
            continue;
        }
        now = s_now_ms();
        if (now >= deadline_ms) {
            if (db->down)
                snprintf(err, errlen, "database unavailable: %s", db->last_error);
            else
                snprintf(err, errlen, "database unavailable: no free connection within %d ms",
                         db->opts.acquire_timeout_ms);
            pthread_mutex_unlock(&db->lock);
            return CF_DB_UNAVAILABLE;
        }
        /* Wait for a connection to come back, or for the next attempt. */
        int64_t until = deadline_ms;
        if (db->down && !db->connecting && db->next_attempt_ms < until)
            until = db->next_attempt_ms;
        if (!waited && !db->down) {
            db->stats.waits++;
            waited = true;
        }
        struct timespec ts;
        s_deadline_ts(until, &ts);
        pthread_cond_timedwait(&db->cond, &db->lock, &ts);
    }
}

/* Gives a connection back; BROKEN ones and those over pool_size are closed. */
static void s_release(cf_db_t *db, s_conn_t *c, bool broken)
{
    if (!c)
        return;
    pthread_mutex_lock(&db->lock);
    if (broken || PQstatus(c->conn) != CONNECTION_OK || db->idle_count >= db->opts.pool_size) {
        db->open--;
        if (broken)
            db->stats.discarded++;
        pthread_cond_broadcast(&db->cond);
        pthread_mutex_unlock(&db->lock);
        s_conn_close(c);
        return;
    }
    db->idle[db->idle_count++] = c;
    pthread_cond_signal(&db->cond);
    pthread_mutex_unlock(&db->lock);
}

/* Maps a failed result to a cf_db_rc_t. *broken: the connection is unusable. */
static int s_classify(PGconn *conn, const PGresult *res, bool *broken, char *err, size_t errlen)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    char why[512];
    cf_db_errstr(conn, res, why, sizeof why);
    *broken = PQstatus(conn) != CONNECTION_OK;
    if (*broken || !state || !strncmp(state, "08", 2) || !strcmp(state, "57P01") ||
        !strcmp(state, "57P02") || !strcmp(state, "57P03") || !strcmp(state, "53300")) {
        *broken = true;
        snprintf(err, errlen, "database unavailable: %s", why);
        return CF_DB_UNAVAILABLE;
    }
    if (!strcmp(state, "57014")) {
        snprintf(err, errlen, "database unavailable: statement timeout: %s", why);
        return CF_DB_UNAVAILABLE;
    }
    snprintf(err, errlen, "%s", why);
    if (!strcmp(state, "CF001"))
        return CF_DB_ILLEGAL;
    if (!strcmp(state, "23505"))
        return CF_DB_CONFLICT;
    if (!strcmp(state, "23503"))
        return CF_DB_NOT_FOUND;
    if (!strncmp(state, "22", 2) || !strcmp(state, "23514"))
        return CF_DB_INVALID;
    return CF_DB_ERROR;
}

/* Runs prepared statement STMT with text parameters (lengths/formats may be
 * NULL; binary ones for bytea). *res_p gets the result on CF_DB_OK (caller
 * PQclear's it). Read-only statements are retried once on a fresh connection
 * when the first one broke under them. *maybe_applied (may be NULL) is set
 * when a write failed after it was sent: it may have committed. */
int cf_dbi_exec_ex(cf_db_t *db, cf_dbi_stmt_t stmt, int nparams, const char *const *values,
                   const int *lengths, const int *formats, PGresult **res_p, bool *maybe_applied,
                   char *err, size_t errlen)
{
    int64_t deadline = s_now_ms() + db->opts.acquire_timeout_ms;
    if (maybe_applied)
        *maybe_applied = false;
    for (int attempt = 0;; attempt++) {
        s_conn_t *c = NULL;
        int rc = s_acquire(db, deadline, &c, err, errlen);
        if (rc < 0)
            return rc;
        bool broken = false;
        if (!(c->prepared[stmt / 64] & (UINT64_C(1) << (stmt % 64)))) {
            PGresult *prep =
                PQprepare(c->conn, cf_dbi_stmts[stmt].name, cf_dbi_stmt_sql(stmt), 0, NULL);
            if (PQresultStatus(prep) != PGRES_COMMAND_OK) {
                rc = s_classify(c->conn, prep, &broken, err, errlen);
                PQclear(prep);
                s_release(db, c, broken);
                /* Nothing ran: safe to retry on a new connection. */
                if (broken && attempt == 0)
                    continue;
                return rc;
            }
            PQclear(prep);
            c->prepared[stmt / 64] |= UINT64_C(1) << (stmt % 64);
        }
        PGresult *res =
            PQexecPrepared(c->conn, cf_dbi_stmts[stmt].name, nparams, values, lengths, formats, 0);
        ExecStatusType status = PQresultStatus(res);
        if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) {
            s_release(db, c, false);
            *res_p = res;
            return CF_DB_OK;
        }
        rc = s_classify(c->conn, res, &broken, err, errlen);
        PQclear(res);
        s_release(db, c, broken);
        if (broken && attempt == 0 && cf_dbi_stmts[stmt].readonly)
            continue;
        if (broken && maybe_applied && !cf_dbi_stmts[stmt].readonly)
            *maybe_applied = true;
        return rc;
    }
}

int cf_dbi_exec(cf_db_t *db, cf_dbi_stmt_t stmt, int nparams, const char *const *values,
                const int *lengths, const int *formats, PGresult **res_p, char *err, size_t errlen)
{
    return cf_dbi_exec_ex(db, stmt, nparams, values, lengths, formats, res_p, NULL, err, errlen);
}

int cf_db_ping(cf_db_t *db, char *err, size_t errlen)
{
    PGresult *res = NULL;
    int rc = cf_dbi_exec(db, CF_DBI_PING, 0, NULL, NULL, NULL, &res, err, errlen);
    PQclear(res);
    return rc;
}

int cf_db_explain(cf_db_t *db, const char *name, int nparams, const char *const *params,
                  char **plan_p, char *err, size_t errlen)
{
    int stmt = -1;
    for (int i = 0; i < CF_DBI_STMT_COUNT; i++)
        if (!strcmp(cf_dbi_stmts[i].name, name))
            stmt = i;
    if (stmt < 0) {
        snprintf(err, errlen, "no statement named '%s'", name);
        return CF_DB_INVALID;
    }
    s_conn_t *c = NULL;
    int rc = s_acquire(db, s_now_ms() + db->opts.acquire_timeout_ms, &c, err, errlen);
    if (rc < 0)
        return rc;
    /* Constant SQL text with "EXPLAIN " in front; parameters stay bound. */
    char *sql = NULL;
    if (asprintf(&sql, "EXPLAIN %s", cf_dbi_stmt_sql((cf_dbi_stmt_t)stmt)) < 0) {
        s_release(db, c, false);
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    PGresult *res = PQexecParams(c->conn, sql, nparams, NULL, params, NULL, NULL, 0);
    free(sql);
    bool broken = false;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = s_classify(c->conn, res, &broken, err, errlen);
        PQclear(res);
        s_release(db, c, broken);
        return rc;
    }
    size_t len = 0;
    FILE *out = open_memstream(plan_p, &len);
    for (int i = 0; out && i < PQntuples(res); i++)
        fprintf(out, "%s\n", PQgetvalue(res, i, 0));
    if (out)
        fclose(out);
    PQclear(res);
    s_release(db, c, false);
    return *plan_p ? CF_DB_OK : CF_DB_ERROR;
}

/* ====================================================================== helpers */

/* Canonical UUID text: 8-4-4-4-12 hex digits. Anything else names nothing. */
bool cf_dbi_valid_uuid(const char *id)
{
    if (!id || strlen(id) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        char ch = id[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (ch != '-')
                return false;
        } else if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') ||
                     (ch >= 'A' && ch <= 'F'))) {
            return false;
        }
    }
    return true;
}

int cf_dbi_not_found(const char *what, const char *id, char *err, size_t errlen)
{
    snprintf(err, errlen, "no %s '%.64s'", what, id ? id : "(null)");
    return CF_DB_NOT_FOUND;
}

char *cf_dbi_strdup_or_null(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : strdup(PQgetvalue(res, row, col));
}

int64_t cf_dbi_int64(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

double cf_dbi_double(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtod(PQgetvalue(res, row, col), NULL);
}

void cf_dbi_notify(cf_db_t *db, const char *id, int64_t version, cf_state_t state, double progress,
                   const char *event)
{
    pthread_mutex_lock(&db->lock);
    cf_db_write_hook_t hook = db->hook;
    void *arg = db->hook_arg;
    pthread_mutex_unlock(&db->lock);
    if (hook) {
        cf_db_write_t write = {id, version, state, progress, event};
        hook(arg, &write);
    }
}
