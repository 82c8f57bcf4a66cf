#define _GNU_SOURCE
#include "cf_db_cluster.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cf_db.h"

struct cf_db_cluster_t {
    char *url;
    PGconn *conn;
    int interrupt_fd;         /* -1: none */
    int statement_timeout_ms; /* what the open connection has set (0: unknown) */
    char token[33];           /* hex, names this handle in the lease row */
};

/* Deadlines: CLOCK_BOOTTIME counts the time a host spends suspended, which
 * CLOCK_MONOTONIC does not, so a deadline never stretches over a suspend. */
static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int cf_db_cluster_statement_timeout_ms(int timeout_ms)
{
    /* A quarter of the time (at least 20 ms) is left for the round trip and
     * for the SET that may precede the statement; rounded down to 50 ms
     * steps above 200 ms, so a caller whose deadline varies a little does
     * not change the setting on every call. */
    int margin = timeout_ms / 4 > 20 ? timeout_ms / 4 : 20;
    int wanted = timeout_ms - margin;
    if (wanted > 200)
        wanted -= wanted % 50;
    return wanted < 10 ? 10 : wanted;
}

static int s_fail(int rc, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int s_fail(int rc, char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

static void s_drop(cf_db_cluster_t *self)
{
    if (self->conn) {
        PQfinish(self->conn);
        self->conn = NULL;
    }
    self->statement_timeout_ms = 0;
}

/* Waits until CONN's socket is ready for EVENTS or DEADLINE passes, or
 * INTERRUPT_FD (when >= 0) is readable. Returns 1 ready, 0 timed out,
 * -1 error, -2 interrupted. */
static int s_wait(PGconn *conn, short events, int64_t deadline, int interrupt_fd)
{
    int fd = PQsocket(conn);
    if (fd < 0)
        return -1;
    for (;;) {
        int64_t left = deadline - s_now_ms();
        if (left <= 0)
            return 0;
        struct pollfd pfd[2] = {{.fd = fd, .events = events},
                                {.fd = interrupt_fd, .events = POLLIN}};
        int rc = poll(pfd, interrupt_fd >= 0 ? 2 : 1, (int)left);
        if (rc > 0 && interrupt_fd >= 0 && (pfd[1].revents & POLLIN))
            return -2;
        if (rc > 0)
            return 1;
        if (rc == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

static int s_connect(cf_db_cluster_t *self, int64_t deadline, int statement_timeout_ms, char *err,
                     size_t errlen)
{
    char options[64];
    snprintf(options, sizeof options, "-c statement_timeout=%d", statement_timeout_ms);
    const char *keys[] = {"dbname", "application_name", "options", NULL};
    const char *values[] = {self->url, "clipfarm-cluster", options, NULL};
    PGconn *conn = PQconnectStartParams(keys, values, 1);
    if (!conn)
        return s_fail(CF_DBC_UNAVAILABLE, err, errlen, "out of memory");
    if (PQstatus(conn) == CONNECTION_BAD) {
        cf_db_errstr(conn, NULL, err, errlen);
        PQfinish(conn);
        return CF_DBC_UNAVAILABLE;
    }
    PostgresPollingStatusType status = PGRES_POLLING_WRITING;
    while (status != PGRES_POLLING_OK) {
        if (status == PGRES_POLLING_FAILED) {
            cf_db_errstr(conn, NULL, err, errlen);
            PQfinish(conn);
            return CF_DBC_UNAVAILABLE;
        }
        int ready = s_wait(conn, status == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline,
                           self->interrupt_fd);
        if (ready <= 0) {
            PQfinish(conn);
            return s_fail(CF_DBC_UNAVAILABLE, err, errlen,
                          ready == -2 ? "interrupted" : "connecting to Postgres timed out");
        }
        status = PQconnectPoll(conn);
    }
    if (PQsetnonblocking(conn, 1) != 0) {
        PQfinish(conn);
        return s_fail(CF_DBC_UNAVAILABLE, err, errlen, "cannot make the connection non-blocking");
    }
    self->conn = conn;
    self->statement_timeout_ms = statement_timeout_ms;
    return CF_DBC_OK;
}

static bool s_result_ok(const PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    return st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK;
}

/* Sends SQL with PARAMS on the open connection and waits for its result
 * until DEADLINE. On CF_DBC_OK *res_p holds the result (PGRES_TUPLES_OK or
 * PGRES_COMMAND_OK; caller clears). */
static int s_roundtrip(cf_db_cluster_t *self, const char *sql, int nparams,
                       const char *const *params, int64_t deadline, int timeout_ms,
                       PGresult **res_p, char *err, size_t errlen)
{
    PGconn *conn = self->conn;
    if (!PQsendQueryParams(conn, sql, nparams, NULL, params, NULL, NULL, 0)) {
        cf_db_errstr(conn, NULL, err, errlen);
        s_drop(self);
        return CF_DBC_UNAVAILABLE;
    }
    int flushed, ready = 1;
    while ((flushed = PQflush(conn)) == 1) {
        if ((ready = s_wait(conn, POLLOUT | POLLIN, deadline, self->interrupt_fd)) <= 0 ||
            !PQconsumeInput(conn))
            goto unavailable;
    }
    if (flushed < 0)
        goto unavailable;

    PGresult *keep = NULL;
    for (;;) {
        while (PQisBusy(conn)) {
            if ((ready = s_wait(conn, POLLIN, deadline, self->interrupt_fd)) <= 0 ||
                !PQconsumeInput(conn)) {
                PQclear(keep);
                goto unavailable;
            }
        }
        PGresult *res = PQgetResult(conn);
        if (!res)
            break;
        /* Keep the first error, else the last result. */
        if (keep && !s_result_ok(keep)) {
            PQclear(res);
            continue;
        }
        PQclear(keep);
        keep = res;
    }
    if (!keep)
        return s_fail(CF_DBC_ERROR, err, errlen, "no result");
    if (!s_result_ok(keep)) {
        const char *state = PQresultErrorField(keep, PG_DIAG_SQLSTATE);
        /* Cancelled by statement_timeout: the server gave up in time, as
         * the caller would have. (Read before the result is freed.) */
        bool cancelled = state && !strcmp(state, "57014");
        cf_db_errstr(conn, keep, err, errlen);
        PQclear(keep);
        if (cancelled)
            return CF_DBC_UNAVAILABLE;
        return PQstatus(conn) == CONNECTION_OK ? CF_DBC_ERROR : CF_DBC_UNAVAILABLE;
    }
    *res_p = keep;
    return CF_DBC_OK;

unavailable:
    if (ready == -2)
        s_fail(0, err, errlen, "interrupted");
    else if (s_now_ms() >= deadline)
        s_fail(0, err, errlen, "Postgres did not answer within %d ms", timeout_ms);
    else
        cf_db_errstr(conn, NULL, err, errlen);
    s_drop(self);
    return CF_DBC_UNAVAILABLE;
}

/* Runs SQL with PARAMS before TIMEOUT_MS runs out, with the server's
 * statement_timeout below that (cf_db_cluster_statement_timeout_ms). On
 * CF_DBC_OK *res_p holds the result (caller clears). */
static int s_exec(cf_db_cluster_t *self, const char *sql, int nparams, const char *const *params,
                  int timeout_ms, PGresult **res_p, char *err, size_t errlen)
{
    *res_p = NULL;
    if (timeout_ms < 1)
        timeout_ms = 1;
    int64_t deadline = s_now_ms() + timeout_ms;
    int wanted = cf_db_cluster_statement_timeout_ms(timeout_ms);
    if (self->conn && PQstatus(self->conn) != CONNECTION_OK)
        s_drop(self);
    if (!self->conn) {
        int rc = s_connect(self, deadline, wanted, err, errlen);
        if (rc != CF_DBC_OK)
            return rc;
    }
    if (self->statement_timeout_ms != wanted) {
        /* Session-wide, so it is set again only when a caller's deadline
         * changes; a plain SET commits nothing a lost answer could hide. */
        char set[64];
        snprintf(set, sizeof set, "SET statement_timeout = %d", wanted);
        PGresult *res = NULL;
        int rc = s_roundtrip(self, set, 0, NULL, deadline, timeout_ms, &res, err, errlen);
        PQclear(res);
        if (rc != CF_DBC_OK)
            return rc;
        self->statement_timeout_ms = wanted;
    }
    return s_roundtrip(self, sql, nparams, params, deadline, timeout_ms, res_p, err, errlen);
}

cf_db_cluster_t *cf_db_cluster_new(const char *url)
{
    if (sodium_init() < 0)
        return NULL;
    cf_db_cluster_t *self = calloc(1, sizeof *self);
    if (!self || !(self->url = strdup(url))) {
        free(self);
        return NULL;
    }
    self->interrupt_fd = -1;
    unsigned char raw[16];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(self->token, sizeof self->token, raw, sizeof raw);
    return self;
}

const char *cf_db_cluster_token(const cf_db_cluster_t *self)
{
    return self->token;
}

void cf_db_cluster_destroy(cf_db_cluster_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_db_cluster_t *self = *self_p;
    s_drop(self);
    free(self->url);
    free(self);
    *self_p = NULL;
}

void cf_db_cluster_set_interrupt(cf_db_cluster_t *self, int fd)
{
    self->interrupt_fd = fd;
}

bool cf_db_cluster_connected(const cf_db_cluster_t *self)
{
    return self->conn && PQstatus(self->conn) == CONNECTION_OK;
}

/* ------------------------------------------------------------------ registry */

int cf_db_cluster_node_upsert(cf_db_cluster_t *self, const cf_db_node_t *node, bool first,
                              int timeout_ms, char *err, size_t errlen)
{
    /* The state is the node's own word only: up when (re)started, left at
     * a clean shutdown. Liveness is computed from last_seen (sql/022). */
    static const char sql[] =
        "INSERT INTO nodes (id, control_endpoint, http_endpoint, public_key, mac, capabilities,"
        " free_slots, in_flight, grace_ms, state, started_at, last_seen)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $10, 'up', now(), now())"
        " ON CONFLICT (id) DO UPDATE SET control_endpoint = EXCLUDED.control_endpoint,"
        " http_endpoint = EXCLUDED.http_endpoint, public_key = EXCLUDED.public_key,"
        " mac = EXCLUDED.mac, capabilities = EXCLUDED.capabilities,"
        " free_slots = EXCLUDED.free_slots, in_flight = EXCLUDED.in_flight,"
        " grace_ms = EXCLUDED.grace_ms,"
        " state = CASE WHEN $9 THEN 'up' ELSE nodes.state END,"
        " started_at = CASE WHEN $9 THEN now() ELSE nodes.started_at END, last_seen = now()";
    char free_slots[16], in_flight[16], grace[16];
    snprintf(free_slots, sizeof free_slots, "%d", node->free_slots);
    snprintf(in_flight, sizeof in_flight, "%d", node->in_flight);
    snprintf(grace, sizeof grace, "%d", node->grace_ms > 0 ? node->grace_ms : 5000);
    const char *params[] = {node->id,
                            node->control_endpoint,
                            node->http_endpoint ? node->http_endpoint : "",
                            node->public_key,
                            node->mac,
                            node->capabilities ? node->capabilities : "{}",
                            free_slots,
                            in_flight,
                            first ? "true" : "false",
                            grace};
    PGresult *res;
    int rc = s_exec(self, sql, 10, params, timeout_ms, &res, err, errlen);
    PQclear(res);
    return rc;
}

int cf_db_cluster_node_leave(cf_db_cluster_t *self, const char *node_id, int timeout_ms, char *err,
                             size_t errlen)
{
    static const char sql[] = "UPDATE nodes SET state = 'left', last_seen = now() WHERE id = $1";
    const char *params[] = {node_id};
    PGresult *res;
    int rc = s_exec(self, sql, 1, params, timeout_ms, &res, err, errlen);
    PQclear(res);
    return rc;
}

#define S_NODE_COLUMNS                                                                             \
    "id, control_endpoint, http_endpoint, public_key, mac, capabilities::text, free_slots,"        \
    " in_flight, cf_node_liveness(state, last_seen, grace_ms),"                                    \
    " (extract(epoch FROM (now() - last_seen)) * 1000)::bigint, gone_epoch"

static int s_read_node(PGresult *res, int row, cf_db_node_t *node)
{
    memset(node, 0, sizeof *node);
    snprintf(node->id, sizeof node->id, "%.36s", PQgetvalue(res, row, 0));
    node->control_endpoint = strdup(PQgetvalue(res, row, 1));
    node->http_endpoint = strdup(PQgetvalue(res, row, 2));
    snprintf(node->public_key, sizeof node->public_key, "%.40s", PQgetvalue(res, row, 3));
    snprintf(node->mac, sizeof node->mac, "%.64s", PQgetvalue(res, row, 4));
    node->capabilities = strdup(PQgetvalue(res, row, 5));
    node->free_slots = atoi(PQgetvalue(res, row, 6));
    node->in_flight = atoi(PQgetvalue(res, row, 7));
    snprintf(node->state, sizeof node->state, "%.7s", PQgetvalue(res, row, 8));
    node->age_ms = strtoll(PQgetvalue(res, row, 9), NULL, 10);
    return node->control_endpoint && node->http_endpoint && node->capabilities ? 0 : -1;
}

static void s_node_clear(cf_db_node_t *node)
{
    free(node->control_endpoint);
    free(node->http_endpoint);
    free(node->capabilities);
    memset(node, 0, sizeof *node);
}

int cf_db_cluster_peers(cf_db_cluster_t *self, const char *self_id, int max_age_ms,
                        cf_db_node_t **nodes_p, int *count_p, int timeout_ms, char *err,
                        size_t errlen)
{
    static const char sql[] = "SELECT " S_NODE_COLUMNS " FROM nodes"
                              " WHERE id <> $1 AND state <> 'left'"
                              " AND last_seen > now() - $2 * interval '1 millisecond'"
                              " ORDER BY id";
    *nodes_p = NULL;
    *count_p = 0;
    char age[16];
    snprintf(age, sizeof age, "%d", max_age_ms);
    const char *params[] = {self_id, age};
    PGresult *res;
    int rc = s_exec(self, sql, 2, params, timeout_ms, &res, err, errlen);
    if (rc != CF_DBC_OK)
        return rc;
    int rows = PQntuples(res);
    cf_db_node_t *nodes = calloc(rows ? (size_t)rows : 1, sizeof *nodes);
    if (!nodes) {
        PQclear(res);
        return s_fail(CF_DBC_ERROR, err, errlen, "out of memory");
    }
    for (int i = 0; i < rows; i++) {
        if (s_read_node(res, i, &nodes[i]) < 0) {
            PQclear(res);
            cf_db_cluster_nodes_free(&nodes, i + 1);
            return s_fail(CF_DBC_ERROR, err, errlen, "out of memory");
        }
    }
    PQclear(res);
    *nodes_p = nodes;
    *count_p = rows;
    return CF_DBC_OK;
}

void cf_db_cluster_nodes_free(cf_db_node_t **nodes_p, int count)
{
    if (!nodes_p || !*nodes_p)
        return;
    for (int i = 0; i < count; i++)
        s_node_clear(&(*nodes_p)[i]);
    free(*nodes_p);
    *nodes_p = NULL;
}

int cf_db_cluster_node_get(cf_db_cluster_t *self, const char *node_id, cf_db_node_t *node,
                           int64_t *gone_epoch_p, int timeout_ms, char *err, size_t errlen)
{
    static const char sql[] = "SELECT " S_NODE_COLUMNS " FROM nodes WHERE id = $1";
    memset(node, 0, sizeof *node);
    const char *params[] = {node_id};
    PGresult *res;
    int rc = s_exec(self, sql, 1, params, timeout_ms, &res, err, errlen);
    if (rc != CF_DBC_OK)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return s_fail(CF_DBC_ERROR, err, errlen, "no such node");
    }
    if (s_read_node(res, 0, node) < 0) {
        s_node_clear(node);
        PQclear(res);
        return s_fail(CF_DBC_ERROR, err, errlen, "out of memory");
    }
    if (gone_epoch_p)
        *gone_epoch_p = PQgetisnull(res, 0, 10) ? 0 : strtoll(PQgetvalue(res, 0, 10), NULL, 10);
    PQclear(res);
    return CF_DBC_OK;
}

void cf_db_cluster_node_clear(cf_db_node_t *node)
{
    s_node_clear(node);
}

/* ------------------------------------------------------------------ lease */

/* Remaining time as milliseconds; the clamp keeps '-infinity' (never held)
 * out of the interval arithmetic. */
#define S_REMAINING_MS                                                                             \
    "(extract(epoch FROM (greatest(expires_at, now() - interval '1 hour') - now())) * "            \
    "1000)::bigint"

static void s_read_lease(PGresult *res, cf_db_lease_t *lease)
{
    memset(lease, 0, sizeof *lease);
    if (PQntuples(res) < 1)
        return;
    snprintf(lease->holder, sizeof lease->holder, "%.36s", PQgetvalue(res, 0, 0));
    lease->epoch = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    lease->remaining_ms = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
    lease->held = PQnfields(res) > 3 && !strcmp(PQgetvalue(res, 0, 3), "t");
}

int cf_db_cluster_lease_acquire(cf_db_cluster_t *self, const char *node_id, int64_t seen_epoch,
                                int ttl_ms, cf_db_lease_t *lease, int timeout_ms, char *err,
                                size_t errlen)
{
    /* Every SET expression sees the row as it was, so "renewing" is decided
     * on the old holder, token, epoch and expiry. A concurrent acquirer
     * waits for the row lock and then re-checks the WHERE against the new
     * row. $1 node, $2 TTL, $3 the highest epoch seen, $4 this handle's
     * token. A fresh epoch is above every one known to have been used: the
     * row's, the caller's, the last published view's (a row reset below
     * them by a restore or a lossy failover cannot make an epoch repeat). */
    static const char sql[] =
        "WITH attempt AS ("
        " UPDATE coordinator_lease SET"
        "  epoch = CASE WHEN holder = $1 AND holder_token = $4 AND expires_at > now()"
        "               AND epoch >= $3 THEN epoch"
        "          ELSE greatest(epoch, $3,"
        "                        (SELECT v.epoch FROM cluster_view v WHERE v.id = 1)) + 1 END,"
        "  acquired_at = CASE WHEN holder = $1 AND holder_token = $4 AND expires_at > now()"
        "                     AND epoch >= $3 THEN acquired_at ELSE now() END,"
        "  holder = $1, holder_token = $4, renewed_at = now(),"
        "  expires_at = now() + $2 * interval '1 millisecond'"
        " WHERE id = 1 AND ((holder = $1 AND holder_token = $4 AND expires_at > now())"
        "                   OR holder IS NULL OR expires_at <= now())"
        " RETURNING holder, epoch, expires_at)"
        " SELECT holder::text, epoch, " S_REMAINING_MS ", true FROM attempt"
        " UNION ALL"
        " SELECT coalesce(holder::text, ''), epoch, " S_REMAINING_MS ", false"
        " FROM coordinator_lease WHERE id = 1 AND NOT EXISTS (SELECT 1 FROM attempt)";
    char ttl[16], seen[24];
    snprintf(ttl, sizeof ttl, "%d", ttl_ms);
    snprintf(seen, sizeof seen, "%" PRId64, seen_epoch > 0 ? seen_epoch : 0);
    const char *params[] = {node_id, ttl, seen, self->token};
    PGresult *res;
    int rc = s_exec(self, sql, 4, params, timeout_ms, &res, err, errlen);
    if (rc != CF_DBC_OK)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return s_fail(CF_DBC_ERROR, err, errlen, "the coordinator_lease row is missing");
    }
    s_read_lease(res, lease);
    PQclear(res);
    return CF_DBC_OK;
}

int cf_db_cluster_lease_release(cf_db_cluster_t *self, const char *node_id, int64_t epoch,
                                bool *released, int timeout_ms, char *err, size_t errlen)
{
    static const char sql[] =
        "UPDATE coordinator_lease SET holder = NULL, holder_token = NULL, expires_at = now()"
        " WHERE id = 1 AND holder = $1 AND epoch = $2 AND holder_token = $3";
    char epoch_text[24];
    snprintf(epoch_text, sizeof epoch_text, "%" PRId64, epoch);
    const char *params[] = {node_id, epoch_text, self->token};
    PGresult *res;
    int rc = s_exec(self, sql, 3, params, timeout_ms, &res, err, errlen);
    if (released)
        *released = rc == CF_DBC_OK && !strcmp(PQcmdTuples(res), "1");
    PQclear(res);
    return rc;
}

int cf_db_cluster_lease_get(cf_db_cluster_t *self, cf_db_lease_t *lease, int timeout_ms, char *err,
                            size_t errlen)
{
    static const char sql[] = "SELECT coalesce(holder::text, ''), epoch, " S_REMAINING_MS
                              " FROM coordinator_lease WHERE id = 1";
    PGresult *res;
    int rc = s_exec(self, sql, 0, NULL, timeout_ms, &res, err, errlen);
    if (rc != CF_DBC_OK)
        return rc;
    s_read_lease(res, lease);
    lease->held = false;
    PQclear(res);
    return CF_DBC_OK;
}

/* ------------------------------------------------------------------ fenced writes */

/* The fence (see cf_db_cluster.h and S_FENCE in cf_db_statements.c): the
 * lease row, locked FOR SHARE, carries our epoch and names us, and has not
 * expired when it is locked. If another node acquired in the meantime, the
 * lock waits for it and the re-check fails; nothing is written. */
#define S_FENCE_CTE                                                                                \
    "fence AS (SELECT epoch FROM coordinator_lease WHERE id = 1 AND epoch = $1::bigint"            \
    " AND holder = $2::uuid AND expires_at > clock_timestamp() FOR SHARE)"

static bool s_token_ok(const cf_fence_token_t *token, char *err, size_t errlen)
{
    if (token && token->epoch >= 1 && token->holder[0])
        return true;
    s_fail(0, err, errlen, "a fence token needs an epoch >= 1 and the holder's node id");
    return false;
}

int cf_db_cluster_sweep_gone(cf_db_cluster_t *self, const cf_fence_token_t *token,
                             cf_dbc_fence_t *fence, char **gone_p, int timeout_ms, char *err,
                             size_t errlen)
{
    /* One record per absence: a node that came back since the last record
     * (last_seen after gone_at) and is gone again gets a new one. */
    static const char sql[] =
        "WITH " S_FENCE_CTE ","
        " marked AS (UPDATE nodes SET gone_at = now(), gone_epoch = $1::bigint, gone_by = $2::uuid"
        "  WHERE cf_node_liveness(state, last_seen, grace_ms) = 'gone'"
        "  AND (gone_at IS NULL OR gone_at < last_seen) AND EXISTS (SELECT 1 FROM fence)"
        "  RETURNING id::text)"
        " SELECT (SELECT count(*) FROM fence), (SELECT string_agg(id, ',' ORDER BY id) FROM "
        "marked)";
    *fence = CF_DBC_FENCE_STALE;
    if (gone_p)
        *gone_p = NULL;
    if (!s_token_ok(token, err, errlen))
        return CF_DBC_ERROR;
    char epoch_text[24];
    snprintf(epoch_text, sizeof epoch_text, "%" PRId64, token->epoch);
    const char *params[] = {epoch_text, token->holder};
    PGresult *res;
    int rc = s_exec(self, sql, 2, params, timeout_ms, &res, err, errlen);
    if (rc != CF_DBC_OK)
        return rc;
    *fence = strcmp(PQgetvalue(res, 0, 0), "1") ? CF_DBC_FENCE_STALE : CF_DBC_FENCE_PASSED;
    if (gone_p && !PQgetisnull(res, 0, 1))
        *gone_p = strdup(PQgetvalue(res, 0, 1));
    PQclear(res);
    return CF_DBC_OK;
}

int cf_db_cluster_publish_view(cf_db_cluster_t *self, const cf_fence_token_t *token,
                               const char *links_json, cf_dbc_fence_t *fence, int timeout_ms,
                               char *err, size_t errlen)
{
    /* The members are the registry's: liveness has one judge, Postgres'
     * clock; the coordinator adds only what its links say. */
    static const char sql[] =
        "WITH " S_FENCE_CTE ","
        " members AS (SELECT coalesce(jsonb_agg(jsonb_build_object('id', n.id, 'state', 'up',"
        "   'http_endpoint', n.http_endpoint, 'link', $3::jsonb -> (n.id::text)) ORDER BY n.id),"
        "   '[]') AS list FROM nodes n"
        "  WHERE cf_node_liveness(n.state, n.last_seen, n.grace_ms) = 'up'),"
        " changed AS (UPDATE cluster_view SET coordinator = $2::uuid, epoch = $1::bigint,"
        "             members = (SELECT list FROM members), updated_at = now()"
        "             WHERE id = 1 AND EXISTS (SELECT 1 FROM fence) RETURNING id)"
        " SELECT (SELECT count(*) FROM fence), (SELECT count(*) FROM changed)";
    *fence = CF_DBC_FENCE_STALE;
    if (!s_token_ok(token, err, errlen))
        return CF_DBC_ERROR;
    char epoch_text[24];
    snprintf(epoch_text, sizeof epoch_text, "%" PRId64, token->epoch);
    const char *params[] = {epoch_text, token->holder, links_json ? links_json : "{}"};
    PGresult *res;
    int rc = s_exec(self, sql, 3, params, timeout_ms, &res, err, errlen);
    if (rc != CF_DBC_OK)
        return rc;
    *fence = strcmp(PQgetvalue(res, 0, 0), "1") ? CF_DBC_FENCE_STALE : CF_DBC_FENCE_PASSED;
    PQclear(res);
    return CF_DBC_OK;
}

int cf_db_cluster_view_get(cf_db_cluster_t *self, cf_db_view_t *view, int timeout_ms, char *err,
                           size_t errlen)
{
    static const char sql[] =
        "SELECT coalesce(coordinator::text, ''), epoch, members::text,"
        " coalesce((extract(epoch FROM (now() - updated_at)) * 1000)::bigint, -1)"
        " FROM cluster_view WHERE id = 1";
    memset(view, 0, sizeof *view);
    PGresult *res;
    int rc = s_exec(self, sql, 0, NULL, timeout_ms, &res, err, errlen);
    if (rc != CF_DBC_OK)
        return rc;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return s_fail(CF_DBC_ERROR, err, errlen, "the cluster_view row is missing");
    }
    snprintf(view->coordinator, sizeof view->coordinator, "%.36s", PQgetvalue(res, 0, 0));
    view->epoch = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    view->members = strdup(PQgetvalue(res, 0, 2));
    view->age_ms = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
    PQclear(res);
    return view->members ? CF_DBC_OK : s_fail(CF_DBC_ERROR, err, errlen, "out of memory");
}
