/* Lost answers: a transition whose connection breaks after the statement was
 * sent. Both outcomes are made to happen on purpose:
 *   - committed, answer lost: a TCP proxy between the pool and Postgres drops
 *     the server's reply and closes the connection; the data layer must find
 *     its own operation committed and answer OK without applying it twice;
 *   - not committed: the backend is terminated while the statement waits on
 *     a row lock; the data layer must run it again and answer OK once;
 *   - committed, answer lost, and Postgres away for longer than the pool
 *     waits: the take answers "unavailable"; the caller's retry with the
 *     same claim token, once Postgres is back, must answer OK (applied once),
 *     where a retry with a new token is refused (the composition would be
 *     stranded). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cf_db.h"
#include "cf_testutil.h"
#include "cf_url.h"

static char s_db_url[512];
static PGconn *s_raw;

/* ------------------------------------------------------------ proxy */

#define S_PAIRS 16

typedef struct {
    int listen_fd;
    int port;
    char server_host[256];
    int server_port;
    int client[S_PAIRS], server[S_PAIRS];
    atomic_int drop_next_reply; /* 1: swallow the next server data, close that pair */
    atomic_int dropped;
    atomic_int refuse_ms;         /* after a drop: refuse connections this long */
    atomic_llong refuse_until_ms; /* CLOCK_MONOTONIC */
    atomic_bool stop;
    pthread_t thread;
} s_proxy_t;

static void s_close_pair(s_proxy_t *p, int i)
{
    close(p->client[i]);
    close(p->server[i]);
    p->client[i] = p->server[i] = -1;
}

static long long s_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *s_proxy_main(void *arg)
{
    s_proxy_t *p = arg;
    while (!atomic_load(&p->stop)) {
        struct pollfd fds[1 + 2 * S_PAIRS];
        int n = 0;
        fds[n++] = (struct pollfd){p->listen_fd, POLLIN, 0};
        for (int i = 0; i < S_PAIRS; i++) {
            fds[n++] = (struct pollfd){p->client[i], POLLIN, 0};
            fds[n++] = (struct pollfd){p->server[i], POLLIN, 0};
        }
        if (poll(fds, (nfds_t)n, 50) <= 0)
            continue;
        if ((fds[0].revents & POLLIN) && s_mono_ms() < atomic_load(&p->refuse_until_ms)) {
            close(accept(p->listen_fd, NULL, NULL)); /* "down": refused */
        } else if (fds[0].revents & POLLIN) {
            int c = accept(p->listen_fd, NULL, NULL);
            int s = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in addr = {.sin_family = AF_INET,
                                       .sin_port = htons((uint16_t)p->server_port)};
            inet_pton(AF_INET, p->server_host, &addr.sin_addr);
            int slot = -1;
            for (int i = 0; i < S_PAIRS && slot < 0; i++)
                if (p->client[i] < 0)
                    slot = i;
            if (c < 0 || slot < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) {
                close(c);
                close(s);
            } else {
                p->client[slot] = c;
                p->server[slot] = s;
            }
        }
        for (int i = 0; i < S_PAIRS; i++) {
            if (p->client[i] < 0)
                continue;
            struct pollfd *cf = &fds[1 + 2 * i], *sf = &fds[2 + 2 * i];
            char buf[65536];
            if (cf->revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t got = read(p->client[i], buf, sizeof buf);
                if (got <= 0 || write(p->server[i], buf, (size_t)got) != got) {
                    s_close_pair(p, i);
                    continue;
                }
            }
            if (sf->revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t got = read(p->server[i], buf, sizeof buf);
                int expected = 1;
                if (got > 0 && atomic_compare_exchange_strong(&p->drop_next_reply, &expected, 0)) {
                    /* The server answered (the statement committed): the
                     * client never hears it. */
                    atomic_fetch_add(&p->dropped, 1);
                    atomic_store(&p->refuse_until_ms, s_mono_ms() + atomic_load(&p->refuse_ms));
                    s_close_pair(p, i);
                    continue;
                }
                if (got <= 0 || write(p->client[i], buf, (size_t)got) != got)
                    s_close_pair(p, i);
            }
        }
    }
    return NULL;
}

static void s_proxy_start(s_proxy_t *p, const char *url)
{
    memset(p, 0, sizeof *p);
    for (int i = 0; i < S_PAIRS; i++)
        p->client[i] = p->server[i] = -1;
    cf_url_t parsed;
    char err[256];
    assert_int_equal(cf_url_parse(url, &parsed, err, sizeof err), 0);
    snprintf(p->server_host, sizeof p->server_host, "%s", parsed.host);
    p->server_port = parsed.port ? parsed.port : 5432;
    p->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    assert_int_equal(bind(p->listen_fd, (struct sockaddr *)&addr, sizeof addr), 0);
    assert_int_equal(listen(p->listen_fd, 16), 0);
    socklen_t len = sizeof addr;
    getsockname(p->listen_fd, (struct sockaddr *)&addr, &len);
    p->port = ntohs(addr.sin_port);
    pthread_create(&p->thread, NULL, s_proxy_main, p);
}

static void s_proxy_stop(s_proxy_t *p)
{
    atomic_store(&p->stop, true);
    pthread_join(p->thread, NULL);
    for (int i = 0; i < S_PAIRS; i++)
        if (p->client[i] >= 0)
            s_close_pair(p, i);
    close(p->listen_fd);
}

/* ------------------------------------------------------------ setup */

static int s_setup(void **state)
{
    char err[512];
    cf_test_fresh_database("cf_lost", s_db_url, sizeof s_db_url);
    s_raw = cf_db_connect(s_db_url, 10, err, sizeof err);
    if (!s_raw)
        fail_msg("connect: %s", err);
    return 0;
}

static int s_teardown(void **state)
{
    PQfinish(s_raw);
    return 0;
}

static cf_db_t *s_pool_waiting(const char *url, int acquire_timeout_ms)
{
    cf_db_options_t opts;
    cf_db_options_default(&opts);
    opts.url = url;
    opts.pool_size = 1;
    opts.max_overflow = 0;
    opts.acquire_timeout_ms = acquire_timeout_ms;
    opts.connect_timeout_ms = 1000;
    char err[256];
    cf_db_t *db = cf_db_new(&opts, err, sizeof err);
    assert_non_null(db);
    return db;
}

static cf_db_t *s_pool(const char *url)
{
    return s_pool_waiting(url, 10000);
}

static char *s_value(const char *sql, const char *param)
{
    const char *params[] = {param};
    PGresult *res = PQexecParams(s_raw, sql, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    char *value = strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    return value;
}

/* ------------------------------------------------------------ tests */

static void test_committed_but_answer_lost(void **state)
{
    s_proxy_t proxy;
    s_proxy_start(&proxy, s_db_url);
    char via[1024];
    cf_url_t parsed;
    char err[256];
    assert_int_equal(cf_url_parse(s_db_url, &parsed, err, sizeof err), 0);
    snprintf(via, sizeof via, "postgresql://%s@127.0.0.1:%d%s", parsed.user, proxy.port,
             parsed.path);
    cf_db_t *db = s_pool(via);
    char warm[CF_DB_ID_LEN], id[CF_DB_ID_LEN];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, warm);
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, id);
    /* Prepare the transition statement on the pool's one connection. */
    assert_int_equal(cf_db_composition_take(db, warm, "w", err, sizeof err), CF_DB_OK);

    atomic_store(&proxy.drop_next_reply, 1);
    int rc = cf_db_composition_take(db, id, "consumer-x", err, sizeof err);
    assert_int_equal(atomic_load(&proxy.dropped), 1); /* the reply really was lost */
    if (rc != CF_DB_OK)
        fail_msg("take after a lost answer: %d %s", rc, err);
    /* Applied exactly once. */
    char *n = s_value("SELECT attempts || ' ' || cf_state(status, stage) || ' ' ||"
                      " (SELECT count(*) FROM events WHERE composition_id = c.id"
                      "  AND type = 'status') FROM compositions c WHERE id = $1",
                      id);
    assert_string_equal(n, "1 planning 1");
    free(n);
    cf_db_stats_t stats;
    cf_db_stats(db, &stats);
    assert_true(stats.discarded >= 1);
    assert_true(stats.connects >= 2);
    cf_db_destroy(&db);
    s_proxy_stop(&proxy);
}

typedef struct {
    cf_db_t *db;
    const char *id;
    int rc;
    char err[256];
} s_call_t;

static void *s_cancel_thread(void *arg)
{
    s_call_t *call = arg;
    call->rc = cf_db_composition_cancel(call->db, call->id, NULL, call->err, sizeof call->err);
    return NULL;
}

/* The pid (other than EXCEPT) of the pool's backend once it waits on a
 * lock, or 0. Asked on MON, outside any transaction: inside one,
 * pg_stat_activity is a snapshot that never changes. */
static int s_blocked_backend(PGconn *mon, int except)
{
    for (int i = 0; i < 200; i++) {
        PGresult *res = PQexec(mon, "SELECT pid FROM pg_stat_activity WHERE application_name ="
                                    " 'clipfarm' AND wait_event_type = 'Lock'");
        int pid = PQntuples(res) == 1 ? atoi(PQgetvalue(res, 0, 0)) : 0;
        PQclear(res);
        if (pid && pid != except)
            return pid;
        usleep(20000);
    }
    return 0;
}

static void test_not_committed_runs_again(void **state)
{
    cf_db_t *db = s_pool(s_db_url);
    char id[CF_DB_ID_LEN], err[256];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, id);
    PGconn *mon = cf_db_connect(s_db_url, 10, err, sizeof err);
    assert_non_null(mon);
    /* Hold the row: the cancel below waits on the lock, inside its
     * statement, when its backend is terminated. */
    PQclear(PQexec(s_raw, "BEGIN"));
    const char *params[] = {id};
    PGresult *res = PQexecParams(s_raw, "SELECT 1 FROM compositions WHERE id = $1 FOR UPDATE", 1,
                                 NULL, params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    PQclear(res);
    s_call_t call = {.db = db, .id = id};
    pthread_t thread;
    pthread_create(&thread, NULL, s_cancel_thread, &call);
    int pid = s_blocked_backend(mon, 0);
    assert_true(pid > 0);
    char pid_text[16];
    snprintf(pid_text, sizeof pid_text, "%d", pid);
    const char *kill_params[] = {pid_text};
    res = PQexecParams(mon, "SELECT pg_terminate_backend($1::int)", 1, NULL, kill_params, NULL,
                       NULL, 0);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    PQclear(res);
    /* The data layer finds its statement did not commit and runs it again:
     * it waits on the lock once more until we let go. */
    int again = s_blocked_backend(mon, pid);
    assert_true(again > 0 && again != pid);
    PQclear(PQexec(s_raw, "COMMIT"));
    pthread_join(thread, NULL);
    if (call.rc != CF_DB_OK)
        fail_msg("cancel after a terminated backend: %d %s", call.rc, call.err);
    char *n = s_value("SELECT cf_state(status, stage) || ' ' || (SELECT count(*) FROM events"
                      " WHERE composition_id = c.id AND type = 'status')"
                      " FROM compositions c WHERE id = $1",
                      id);
    assert_string_equal(n, "cancelled 1");
    free(n);
    PQfinish(mon);
    cf_db_destroy(&db);
}

static void test_take_answer_lost_past_the_pool_wait(void **state)
{
    s_proxy_t proxy;
    s_proxy_start(&proxy, s_db_url);
    atomic_store(&proxy.refuse_ms, 4000); /* the pool waits 1 s */
    char via[1024];
    cf_url_t parsed;
    char err[256];
    assert_int_equal(cf_url_parse(s_db_url, &parsed, err, sizeof err), 0);
    snprintf(via, sizeof via, "postgresql://%s@127.0.0.1:%d%s", parsed.user, proxy.port,
             parsed.path);
    cf_db_t *db = s_pool_waiting(via, 1000);
    char warm[CF_DB_ID_LEN], id[CF_DB_ID_LEN];
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, warm);
    cf_test_create_queued(db, CF_PRIORITY_DEFAULT, id);
    assert_int_equal(cf_db_composition_take(db, warm, "w", err, sizeof err), CF_DB_OK);

    cf_db_claim_t claim = {.owner = "node-x", .token = "lost-take-1", .ttl_ms = 60000};
    atomic_store(&proxy.drop_next_reply, 1);
    int rc = cf_db_composition_claim(db, id, &claim, err, sizeof err);
    assert_int_equal(atomic_load(&proxy.dropped), 1);
    /* The answer is lost and Postgres stays away past the pool's wait: the
     * outcome is unknown to this call. */
    assert_int_equal(rc, CF_DB_UNAVAILABLE);
    /* Retried (as the worker does) until Postgres is back: the same token
     * recognises the earlier, committed take. */
    int tries = 0;
    while ((rc = cf_db_composition_claim(db, id, &claim, err, sizeof err)) == CF_DB_UNAVAILABLE &&
           tries++ < 30)
        usleep(200 * 1000);
    if (rc != CF_DB_OK)
        fail_msg("retry of a take whose answer was lost: %d %s", rc, err);
    char *n = s_value("SELECT attempts || ' ' || claimed_by || ' ' || claim_op || ' ' ||"
                      " (SELECT count(*) FROM events WHERE composition_id = c.id"
                      "  AND type = 'status') FROM compositions c WHERE id = $1",
                      id);
    assert_string_equal(n, "1 node-x lost-take-1 1");
    free(n);
    /* What a retry with a new id (the code before claims) got: refused,
     * and the composition would have stayed processing with nobody on it. */
    cf_db_claim_t fresh = {.owner = "node-x", .token = "lost-take-2", .ttl_ms = 60000};
    assert_int_equal(cf_db_composition_claim(db, id, &fresh, err, sizeof err), CF_DB_ILLEGAL);
    cf_db_destroy(&db);
    s_proxy_stop(&proxy);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_committed_but_answer_lost),
        cmocka_unit_test(test_not_committed_runs_again),
        cmocka_unit_test(test_take_answer_lost_past_the_pool_wait),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
