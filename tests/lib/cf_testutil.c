#define _GNU_SOURCE
#include "cf_testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cf_db.h"
#include "cf_migrate.h"
#include "cf_redis.h"

const char *cf_test_require_env(const char *name)
{
    const char *value = getenv(name);
    if (!value || !*value) {
        fprintf(stderr, "skip: %s is not set (run the suite with tests/run)\n", name);
        exit(CF_TEST_SKIP);
    }
    return value;
}

const char *cf_test_bin(void)
{
    return cf_test_require_env("CF_BIN");
}

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} s_buf_t;

static void s_buf_append(s_buf_t *buf, const char *data, size_t len)
{
    if (buf->len + len + 1 > buf->cap) {
        buf->cap = (buf->len + len + 1) * 2;
        buf->data = realloc(buf->data, buf->cap);
        assert_non_null(buf->data);
    }
    memcpy(buf->data + buf->len, data, len);
    buf->len += len;
    buf->data[buf->len] = '\0';
}

cf_test_proc_t cf_test_run(char *const argv[], char *const env[])
{
    cf_test_proc_t proc = {0};
    int out_pipe[2], err_pipe[2];
    assert_int_equal(pipe2(out_pipe, O_CLOEXEC), 0);
    assert_int_equal(pipe2(err_pipe, O_CLOEXEC), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(out_pipe[1], 1);
        dup2(err_pipe[1], 2);
        for (int i = 0; env && env[i]; i++)
            putenv(env[i]);
        execvp(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(out_pipe[1]);
    close(err_pipe[1]);
    s_buf_t out = {0}, err = {0};
    s_buf_append(&out, "", 0);
    s_buf_append(&err, "", 0);
    struct pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
    int open_fds = 2;
    while (open_fds > 0) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char chunk[4096];
            ssize_t n = read(fds[i].fd, chunk, sizeof chunk);
            if (n <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
            } else {
                s_buf_append(i == 0 ? &out : &err, chunk, (size_t)n);
            }
        }
    }
    int wstatus = 0;
    while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR)
        ;
    proc.status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
    proc.out = out.data;
    proc.err = err.data;
    return proc;
}

cf_test_proc_t cf_test_runl(const char *arg0, ...)
{
    const char *argv[64];
    int n = 0;
    va_list ap;
    va_start(ap, arg0);
    for (const char *a = arg0; a; a = va_arg(ap, const char *)) {
        assert_true(n < 63);
        argv[n++] = a;
    }
    va_end(ap);
    argv[n] = NULL;
    return cf_test_run((char *const *)argv, NULL);
}

void cf_test_expect_success(const cf_test_proc_t *proc, const char *what)
{
    if (proc->status != 0)
        fail_msg("%s exited %d: %s", what, proc->status, proc->err);
}

void cf_test_proc_free(cf_test_proc_t *proc)
{
    free(proc->out);
    free(proc->err);
    proc->out = proc->err = NULL;
}

char *cf_test_mkdtemp(const char *prefix)
{
    const char *tmp = getenv("TMPDIR");
    char *path = NULL;
    assert_true(asprintf(&path, "%s/%s.XXXXXX", tmp && *tmp ? tmp : "/tmp", prefix) > 0);
    assert_non_null(mkdtemp(path));
    return path;
}

static int s_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

void cf_test_rmtree(const char *path)
{
    if (path)
        nftw(path, s_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void cf_test_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

int cf_test_count_lines(const char *text)
{
    int lines = 0;
    for (const char *p = text; *p; p++)
        if (*p == '\n')
            lines++;
    if (*text && text[strlen(text) - 1] != '\n')
        lines++;
    return lines;
}

void cf_test_fresh_database(const char *prefix, char *url, size_t urllen)
{
    const char *base = cf_test_require_env("CF_TEST_DATABASE_URL");
    static int count;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    char name[64], err[512];
    int n = snprintf(name, sizeof name, "%s_%d_%d_%ld", prefix, (int)getpid(), ++count,
                     (long)(now.tv_nsec / 1000) % 1000000);
    assert_true(n > 0 && (size_t)n < sizeof name);
    /* The URL's last path element is the database: swap it, keep any query. */
    const char *query = strchr(base, '?');
    size_t head = query ? (size_t)(query - base) : strlen(base);
    const char *slash = memrchr(base, '/', head);
    if (!slash || slash < strstr(base, "://") + 3)
        fail_msg("CF_TEST_DATABASE_URL has no database name: %s", base);
    n = snprintf(url, urllen, "%.*s/%s%s", (int)(slash - base), base, name, query ? query : "");
    assert_true(n > 0 && (size_t)n < urllen);

    PGconn *admin = cf_db_connect(base, 10, err, sizeof err);
    if (!admin)
        fail_msg("connect %s: %s", base, err);
    char sql[128];
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
    PGresult *res = PQexec(admin, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        fail_msg("%s: %s", sql, cf_db_errstr(admin, res, err, sizeof err));
    PQclear(res);
    PQfinish(admin);

    PGconn *conn = cf_db_connect(url, 10, err, sizeof err);
    if (!conn)
        fail_msg("connect %s: %s", url, err);
    cf_migrate_report_t report;
    if (cf_migrate_run(conn, NULL, &report, err, sizeof err) < 0)
        fail_msg("migrate: %s", err);
    PQfinish(conn);
}

void cf_test_redis_delete_prefix(const char *url, const char *prefix)
{
    char err[256];
    redisContext *ctx = cf_redis_connect(url, 2000, err, sizeof err);
    if (!ctx)
        return;
    redisReply *keys = redisCommand(ctx, "KEYS %s*", prefix);
    for (size_t i = 0; keys && keys->type == REDIS_REPLY_ARRAY && i < keys->elements; i++)
        freeReplyObject(redisCommand(ctx, "DEL %b", keys->element[i]->str, keys->element[i]->len));
    freeReplyObject(keys);
    redisFree(ctx);
}

char *cf_test_video_md5(const char *path, bool packets)
{
    cf_test_proc_t p = packets ? cf_test_runl("ffmpeg", "-v", "error", "-i", path, "-map", "0:v",
                                              "-c", "copy", "-f", "framemd5", "-", NULL)
                               : cf_test_runl("ffmpeg", "-v", "error", "-i", path, "-map", "0:v",
                                              "-f", "framemd5", "-", NULL);
    cf_test_expect_success(&p, "ffmpeg framemd5");
    size_t cap = strlen(p.out) + 1, len = 0;
    char *hashes = calloc(1, cap);
    assert_non_null(hashes);
    for (char *line = strtok(p.out, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#')
            continue;
        const char *hash = strrchr(line, ',');
        len += (size_t)snprintf(hashes + len, cap - len, "%s\n", hash ? hash + 1 : line);
    }
    cf_test_proc_free(&p);
    return hashes;
}

void cf_test_create_queued(cf_db_t *db, cf_priority_t priority, char id[CF_DB_ID_LEN])
{
    char err[256];
    cf_db_composition_new_t c = {
        .priority = priority, .spec_json = "{}", .initial_state = CF_STATE_QUEUED};
    if (cf_db_composition_create(db, &c, id, NULL, err, sizeof err) != CF_DB_OK)
        fail_msg("create: %s", err);
}

char *cf_test_sql_value(PGconn *conn, const char *fmt, ...)
{
    char sql[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    PGresult *res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    char *value = strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    return value;
}

void cf_test_sql_exec(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
}
