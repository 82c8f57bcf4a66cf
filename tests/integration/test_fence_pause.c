/* A coordinator process paused past its lease (SIGSTOP, as a long GC pause or
 * a frozen VM) wakes up after another took over: none of its segment or
 * composition writes lands afterwards, checked in Postgres (a trigger of
 * this test records every segment write with its epoch; every composition
 * transition records its epoch in its event), not by its own counters.
 *
 * The coordinators are real processes: this binary run as
 *     test_fence_pause coordinator URL NODE_ID TTL_MS
 * runs the node's election actor and fence actor (cf_election,
 * cf_election_fence) and, while it holds the lease, writes continuously as a
 * coordinator does once it dispatches work: segment progress and composition
 * transitions through the fence actor, and the same directly on its own
 * thread, each decided one tick before it is sent, so that the pause falls
 * between a decision and its write. It prints what it does on stdout:
 *     LEADER epoch | WOKE gap_ms | LATE what epoch rc   (a write made after
 *     waking on the token it held before) | FENCE kind verdict epoch */
#define _GNU_SOURCE
#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cf_db.h"
#include "cf_db_cluster.h"
#include "cf_election.h"
#include "cf_election_fence.h"
#include "cf_testutil.h"

#define S_COMPOSITIONS 200
#define S_TICK_MS      20

/* ------------------------------------------------------------ the coordinator */

typedef struct {
    cf_db_t *db;
    zactor_t *election, *fence;
    char node_id[37];
    char (*ids)[CF_DB_ID_LEN];
    int count;
    bool leader;
    cf_fence_token_t token;
    int64_t deadline_ms;
    /* The composition being moved along, and its next state. */
    int current;
    cf_state_t next;
    uint64_t writes;
} s_coord_t;

static void s_coord_election(s_coord_t *c)
{
    zmsg_t *msg = zmsg_recv(c->election);
    char *command = zmsg_popstr(msg);
    if (command && !strcmp(command, "LEASE")) {
        char *flag = zmsg_popstr(msg), *holder = zmsg_popstr(msg), *epoch = zmsg_popstr(msg);
        char *deadline = zmsg_popstr(msg);
        bool held = flag && flag[0] == '1';
        if (held && (!c->leader || c->token.epoch != (int64_t)strtoull(epoch, NULL, 10)))
            printf("LEADER %s\n", epoch);
        c->leader = held;
        if (held) {
            c->token.epoch = (int64_t)strtoull(epoch, NULL, 10);
            c->deadline_ms = strtoll(deadline, NULL, 10);
        }
        zsock_send(c->fence, "s8s8", "LEASE", held ? (uint64_t)c->token.epoch : 0, c->node_id,
                   held ? (uint64_t)c->deadline_ms : 0);
        free(flag);
        free(holder);
        free(epoch);
        free(deadline);
    }
    free(command);
    zmsg_destroy(&msg);
}

static void s_coord_fence(s_coord_t *c)
{
    char *command = NULL, *kind = NULL, *verdict = NULL, *subject = NULL;
    uint64_t epoch = 0;
    zsock_recv(c->fence, "sss8s", &command, &kind, &verdict, &epoch, &subject);
    if (verdict && strcmp(verdict, "passed"))
        printf("FENCE %s %s %" PRIu64 "\n", kind, verdict, epoch);
    free(command);
    free(kind);
    free(verdict);
    free(subject);
}

/* The writes decided at one tick: run at the next. */
typedef struct {
    bool due;
    cf_fence_token_t token;
    int composition;
    cf_state_t to;
    double progress;
} s_decision_t;

static int s_coordinator(const char *url, const char *node_id, int ttl_ms)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    s_coord_t c = {0};
    snprintf(c.node_id, sizeof c.node_id, "%s", node_id);
    snprintf(c.token.holder, sizeof c.token.holder, "%s", node_id);
    cf_db_options_t opts;
    cf_db_options_default(&opts);
    opts.url = url;
    opts.pool_size = 2;
    char err[512];
    c.db = cf_db_new(&opts, err, sizeof err);
    PGconn *conn = cf_db_connect(url, 10, err, sizeof err);
    if (!c.db || !conn)
        return 2;
    PGresult *res = PQexec(conn, "SELECT id FROM compositions ORDER BY id");
    c.count = PQntuples(res);
    c.ids = calloc((size_t)c.count + 1, sizeof *c.ids);
    for (int i = 0; i < c.count; i++)
        snprintf(c.ids[i], CF_DB_ID_LEN, "%s", PQgetvalue(res, i, 0));
    PQclear(res);
    PQfinish(conn);
    cf_election_args_t election = {
        .database_url = url, .node_id = node_id, .ttl_ms = ttl_ms, .interrupt_fd = -1};
    cf_election_fence_args_t fence = {.database_url = url, .pool = c.db, .interrupt_fd = -1};
    c.election = cf_election_new(&election);
    c.fence = cf_election_fence_new(&fence);
    zpoller_t *poller = zpoller_new(c.election, c.fence, NULL);
    s_decision_t decided = {0};
    int64_t last = cf_election_clock_ms();
    int late = 0;
    while (!zsys_interrupted) {
        void *which = zpoller_wait(poller, S_TICK_MS);
        if (which == c.election)
            s_coord_election(&c);
        else if (which == c.fence)
            s_coord_fence(&c);
        else if (zpoller_terminated(poller))
            break;
        int64_t now = cf_election_clock_ms();
        if (now - last < S_TICK_MS && which)
            continue;
        if (now - last > 1000) {
            printf("WOKE %" PRId64 "\n", now - last);
            late = 3;
        }
        last = now;
        /* What was decided a tick ago is written now, on its token. */
        if (decided.due) {
            const char *id = c.ids[decided.composition];
            cf_db_segment_update_t up = {.fields = CF_SEG_F_PROGRESS, .progress = decided.progress};
            int seg_rc =
                cf_db_segment_update_fenced(c.db, &decided.token, id, 1, &up, err, sizeof err);
            int state_rc = cf_db_composition_transition_fenced(
                c.db, &decided.token, id, decided.to, NULL, NULL, NULL, NULL, err, sizeof err);
            if (late > 0) {
                printf("LATE segment %" PRId64 " %d\n", decided.token.epoch, seg_rc);
                printf("LATE state %" PRId64 " %d\n", decided.token.epoch, state_rc);
                late--;
            }
            if (state_rc == CF_DB_OK || state_rc == CF_DB_ILLEGAL) {
                /* Move on along the state machine, then to the next one. */
                if (decided.to == CF_STATE_COMPLETED || state_rc == CF_DB_ILLEGAL)
                    c.current = (c.current + 1) % c.count, c.next = CF_STATE_PLANNING;
                else
                    c.next = (cf_state_t)(decided.to + 1);
            }
            decided.due = false;
        }
        if (!c.leader || !c.count)
            continue;
        if (c.next < CF_STATE_PLANNING)
            c.next = CF_STATE_PLANNING;
        decided = (s_decision_t){.due = true,
                                 .token = c.token,
                                 .composition = c.current,
                                 .to = c.next,
                                 .progress = (double)(++c.writes % 1000) / 1000.0};
        /* And the same kind of write through the fence actor, for a segment
         * of another composition. */
        char json[160];
        snprintf(json, sizeof json, "{\"composition\": \"%s\", \"index\": 0, \"progress\": %.3f}",
                 c.ids[(c.current + c.count / 2) % c.count], decided.progress);
        zsock_send(c.fence, "s8ss", "SEGMENT", (uint64_t)c.token.epoch, c.node_id, json);
    }
    zpoller_destroy(&poller);
    zactor_destroy(&c.fence);
    zactor_destroy(&c.election);
    cf_db_destroy(&c.db);
    free(c.ids);
    return 0;
}

/* ------------------------------------------------------------ the test */

static char s_url[512];
static PGconn *s_raw;

static const char *S_A = "aaaaaaaa-0000-4000-8000-0000000000a1";
static const char *S_B = "bbbbbbbb-0000-4000-8000-0000000000b2";
enum { S_TTL_MS = 2000 };

typedef struct {
    pid_t pid;
    int out; /* its stdout, non-blocking */
    char *text;
    size_t len;
} s_child_t;

/* Children still running when a test fails are ended by the teardown. */
static pid_t s_children[4];

static int s_kill_children(void **state)
{
    for (size_t i = 0; i < sizeof s_children / sizeof *s_children; i++)
        if (s_children[i] > 0) {
            kill(s_children[i], SIGKILL);
            waitpid(s_children[i], NULL, 0);
            s_children[i] = 0;
        }
    return 0;
}

static s_child_t s_spawn(const char *node_id)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    s_child_t child = {0};
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%d", S_TTL_MS);
    child.pid = fork();
    assert_true(child.pid >= 0);
    if (child.pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        execl("/proc/self/exe", "test_fence_pause", "coordinator", s_url, node_id, ttl,
              (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    for (size_t i = 0; i < sizeof s_children / sizeof *s_children; i++)
        if (!s_children[i]) {
            s_children[i] = child.pid;
            break;
        }
    child.out = fds[0];
    fcntl(child.out, F_SETFL, O_NONBLOCK);
    return child;
}

/* Reads what the child printed so far. */
static const char *s_output(s_child_t *child)
{
    char buf[4096];
    ssize_t got;
    while ((got = read(child->out, buf, sizeof buf)) > 0) {
        child->text = realloc(child->text, child->len + (size_t)got + 1);
        memcpy(child->text + child->len, buf, (size_t)got);
        child->len += (size_t)got;
        child->text[child->len] = '\0';
    }
    return child->text ? child->text : "";
}

static void s_stop(s_child_t *child)
{
    kill(child->pid, SIGCONT);
    kill(child->pid, SIGTERM);
    int status;
    waitpid(child->pid, &status, 0);
    for (size_t i = 0; i < sizeof s_children / sizeof *s_children; i++)
        if (s_children[i] == child->pid)
            s_children[i] = 0;
    close(child->out);
    free(child->text);
}

/* Segment writes (the audit) after id AFTER under EPOCH. */
static int64_t s_seg_writes(int64_t after, int64_t epoch)
{
    char *text = cf_test_sql_value(
        s_raw, "SELECT count(*) FROM cf_test_audit WHERE id > %" PRId64 " AND epoch = %" PRId64,
        after, epoch);
    int64_t value = strtoll(text, NULL, 10);
    free(text);
    return value;
}

/* Composition transitions (their events) after id AFTER under EPOCH. */
static int64_t s_state_writes(int64_t after, int64_t epoch)
{
    char *text =
        cf_test_sql_value(s_raw,
                          "SELECT count(*) FROM events WHERE id > %" PRId64
                          " AND type = 'status' AND (payload->>'epoch')::bigint = %" PRId64,
                          after, epoch);
    int64_t value = strtoll(text, NULL, 10);
    free(text);
    return value;
}

/* The lease row: its holder is NODE at an epoch above ABOVE; the epoch. */
static int64_t s_wait_holder(const char *node, int64_t above, int timeout_ms)
{
    for (int waited = 0; waited < timeout_ms; waited += 50) {
        char *row = cf_test_sql_value(
            s_raw, "SELECT coalesce(holder::text, '') || ' ' || epoch || ' ' ||"
                   " CASE WHEN expires_at > now() THEN 't' ELSE 'f' END FROM coordinator_lease");
        char holder[64] = "", live[8] = "";
        long long epoch = 0;
        sscanf(row, "%63s %lld %7s", holder, &epoch, live);
        free(row);
        if (!strcmp(holder, node) && epoch > above && !strcmp(live, "t"))
            return epoch;
        usleep(50 * 1000);
    }
    fail_msg("%s did not hold the lease above epoch %" PRId64, node, above);
    return 0;
}

static void s_paused_coordinator(void **state)
{
    cf_test_fresh_database("cf_pause", s_url, sizeof s_url);
    char err[512];
    s_raw = cf_db_connect(s_url, 10, err, sizeof err);
    assert_non_null(s_raw);
    /* Postgres' own record of every segment write and its epoch. */
    cf_test_sql_exec(
        s_raw, "CREATE TABLE cf_test_audit (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
               " epoch bigint, what text)");
    cf_test_sql_exec(
        s_raw, "CREATE FUNCTION cf_test_audit_segment() RETURNS trigger LANGUAGE plpgsql AS $$"
               " BEGIN INSERT INTO cf_test_audit (epoch, what) VALUES (NEW.epoch, 'segment');"
               " RETURN NEW; END $$");
    cf_test_sql_exec(s_raw,
                     "CREATE TRIGGER cf_test_audit_segment AFTER INSERT OR UPDATE ON segments"
                     " FOR EACH ROW EXECUTE FUNCTION cf_test_audit_segment()");
    cf_db_options_t opts;
    cf_db_options_default(&opts);
    opts.url = s_url;
    cf_db_t *db = cf_db_new(&opts, err, sizeof err);
    cf_db_segment_plan_t plan[2] = {{0, 0, 100, NULL}, {1, 100, 200, NULL}};
    for (int i = 0; i < S_COMPOSITIONS; i++) {
        char id[CF_DB_ID_LEN];
        cf_test_create_queued(db, CF_PRIORITY_DEFAULT, id);
        assert_int_equal(cf_db_segments_create(db, id, 0, plan, 2, err, sizeof err), CF_DB_OK);
    }
    cf_db_destroy(&db);

    /* A starts first and coordinates; B follows. */
    s_child_t a = s_spawn(S_A);
    int64_t epoch_a = s_wait_holder(S_A, 0, 10000);
    s_child_t b = s_spawn(S_B);
    for (int i = 0; i < 100 && (s_seg_writes(0, epoch_a) < 20 || s_state_writes(0, epoch_a) < 5);
         i++)
        usleep(50 * 1000);
    assert_true(s_seg_writes(0, epoch_a) >= 20);
    assert_true(s_state_writes(0, epoch_a) >= 5);

    /* Pause A mid-stream, past its lease. What it had sent lands first. */
    assert_int_equal(kill(a.pid, SIGSTOP), 0);
    usleep(300 * 1000);
    char *text = cf_test_sql_value(s_raw, "SELECT coalesce(max(id), 0) FROM cf_test_audit");
    int64_t seg_mark = strtoll(text, NULL, 10);
    free(text);
    text = cf_test_sql_value(s_raw, "SELECT coalesce(max(id), 0) FROM events");
    int64_t ev_mark = strtoll(text, NULL, 10);
    free(text);
    int64_t epoch_b = s_wait_holder(S_B, epoch_a, 4 * S_TTL_MS);
    for (int i = 0;
         i < 100 && (s_seg_writes(seg_mark, epoch_b) < 20 || s_state_writes(ev_mark, epoch_b) < 5);
         i++)
        usleep(50 * 1000);
    assert_true(s_seg_writes(seg_mark, epoch_b) >= 20);
    assert_true(s_state_writes(ev_mark, epoch_b) >= 5);

    /* A wakes up, still believing for a moment, and writes what it decided
     * before the pause; then it follows B. */
    assert_int_equal(kill(a.pid, SIGCONT), 0);
    for (int i = 0; i < 100 && !strstr(s_output(&a), "LATE state"); i++)
        usleep(50 * 1000);
    usleep(1500 * 1000);
    const char *out = s_output(&a);
    printf("# coordinator A (epoch %" PRId64 ") after waking:\n%s", epoch_a,
           strstr(out, "WOKE") ? strstr(out, "WOKE") : out);
    /* It did try: its late writes were sent, on its old token. */
    assert_non_null(strstr(out, "WOKE"));
    char late[64];
    snprintf(late, sizeof late, "LATE segment %" PRId64 " %d", epoch_a, CF_DB_STALE);
    assert_non_null(strstr(out, late));
    snprintf(late, sizeof late, "LATE state %" PRId64 " %d", epoch_a, CF_DB_STALE);
    assert_non_null(strstr(out, late));

    /* Postgres: after the pause, no segment and no composition was written
     * under A's epoch, while B's writes went on. */
    assert_int_equal(s_seg_writes(seg_mark, epoch_a), 0);
    assert_int_equal(s_state_writes(ev_mark, epoch_a), 0);
    assert_true(s_seg_writes(seg_mark, epoch_b) >= 20);
    char *lease =
        cf_test_sql_value(s_raw, "SELECT holder::text || ' ' || epoch FROM coordinator_lease");
    char expect[64];
    snprintf(expect, sizeof expect, "%s %" PRId64, S_B, epoch_b);
    assert_string_equal(lease, expect);
    free(lease);
    s_stop(&a);
    s_stop(&b);
    PQfinish(s_raw);
}

int main(int argc, char **argv)
{
    if (argc == 5 && !strcmp(argv[1], "coordinator"))
        return s_coordinator(argv[2], argv[3], atoi(argv[4]));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(s_paused_coordinator, s_kill_children),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
