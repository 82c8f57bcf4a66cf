/* A real clipfarm node for the C API tests (robustness, load): its own
 * database on the test Postgres, its own Redis key prefix, an API key, a
 * free port. Header-only: included by one test file each. */
#ifndef API_TESTNODE_H
#define API_TESTNODE_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cf_httpc.h"
#include "cf_testutil.h"

typedef struct {
    pid_t pid;
    int port;
    char url[96];
    char key[128];
    char db_url[512];
    char prefix[64];
    char *dir;
} api_testnode_t;

static inline double api_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Writes everything, ignoring a peer that closed early (EPIPE). */
static inline void api_send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        data += n;
        len -= (size_t)n;
    }
}

/* Lets this process and the node hold many sockets. */
static inline void api_raise_fd_limit(rlim_t want)
{
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < want) {
        lim.rlim_cur = lim.rlim_max < want ? lim.rlim_max : want;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
}

/* A port on 127.0.0.1 that was free a moment ago, below the kernel's range
 * for outgoing connections (10000-32767), so no client socket takes it in
 * between. Another process still can: api_testnode_start retries then. */
static inline int api_free_port(void)
{
    static unsigned seed;
    if (!seed)
        seed = (unsigned)getpid() ^ (unsigned)time(NULL);
    for (int tries = 0; tries < 200; tries++) {
        int port = 10000 + (int)(rand_r(&seed) % 22768);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in addr = {.sin_family = AF_INET,
                                   .sin_port = htons((uint16_t)port),
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int ok = fd >= 0 && bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0;
        if (fd >= 0)
            close(fd);
        if (ok)
            return port;
    }
    fail_msg("no free port");
    return -1;
}

/* GET PATH with the node's key; returns the status, 0 when unreachable. */
static inline long api_get_status(cf_httpc_t *client, const char *path)
{
    cf_httpc_response_t resp;
    char err[256];
    long status =
        cf_httpc_request(client, "GET", path, NULL, NULL, NULL, 0, &resp, err, sizeof err) == 0
            ? resp.status
            : 0;
    cf_httpc_response_clear(&resp);
    return status;
}

/* Starts a node with EXTRA (NULL-terminated flags). Fails the test when it
 * does not answer /healthz within 30 s. */
static inline void api_testnode_start(api_testnode_t *node, const char *const *extra)
{
    memset(node, 0, sizeof *node);
    const char *pg = cf_test_require_env("CF_TEST_DATABASE_URL");
    const char *redis = cf_test_require_env("CF_TEST_REDIS_URL");
    const char *bin = cf_test_bin();
    node->dir = cf_test_mkdtemp("apinode");
    const char *base = strrchr(node->dir, '/') + 1;
    char dbname[64];
    snprintf(dbname, sizeof dbname, "cf_%s", base);
    for (char *p = dbname; *p; p++)
        *p = (*p >= 'A' && *p <= 'Z')   ? (char)(*p - 'A' + 'a')
             : (*p == '.' || *p == '-') ? '_'
                                        : *p;
    char sql[128];
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", dbname);
    char *psql[] = {"psql", (char *)pg, "-qAtX", "-c", sql, NULL};
    cf_test_proc_t proc = cf_test_run(psql, NULL);
    if (proc.status != 0)
        fail_msg("createdb: %s", proc.err);
    cf_test_proc_free(&proc);
    snprintf(node->db_url, sizeof node->db_url, "%.*s/%s", (int)(strrchr(pg, '/') - pg), pg,
             dbname);
    snprintf(node->prefix, sizeof node->prefix, "cftest:%s:", base);

    char secret[600], data[600], log[600];
    snprintf(secret, sizeof secret, "%s/secret", node->dir);
    snprintf(data, sizeof data, "%s/data", node->dir);
    snprintf(log, sizeof log, "%s/log", node->dir);
    cf_test_write_file(secret, "5f0c9e2d7a1b4c3e8f6a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4");
    char *apikey[] = {(char *)bin,
                      "apikey",
                      "create",
                      "test",
                      "--database-url",
                      node->db_url,
                      "--cluster-secret-file",
                      secret,
                      NULL};
    proc = cf_test_run(apikey, NULL);
    if (proc.status != 0)
        fail_msg("apikey create: %s", proc.err);
    snprintf(node->key, sizeof node->key, "%.*s", (int)strcspn(proc.out, "\n"), proc.out);
    cf_test_proc_free(&proc);

    char http[64], control[64];

    const char *argv[64];
    int argc = 0;
    char *cmd_copy = NULL;
    const char *cmd = getenv("CF_NODE_CMD");
    if (cmd && *cmd) {
        cmd_copy = strdup(cmd);
        for (char *tok = strtok(cmd_copy, " "); tok && argc < 8; tok = strtok(NULL, " "))
            argv[argc++] = tok;
    } else {
        argv[argc++] = bin;
        argv[argc++] = "node";
    }
    const char *common[] = {"--database-url",        node->db_url, "--redis-url",  redis,
                            "--redis-prefix",        node->prefix, "--http-addr",  http,
                            "--control-addr",        control,      "--data-dir",   data,
                            "--cluster-secret-file", secret,       "--media-root", "/"};
    for (size_t i = 0; i < sizeof common / sizeof common[0]; i++)
        argv[argc++] = common[i];
    for (int i = 0; extra && extra[i] && argc < 62; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    /* A port free when we looked may be taken by the time the node binds
     * it: then the node exits saying so, and it gets other ports. */
    for (int attempt = 1;; attempt++) {
        node->port = api_free_port();
        snprintf(http, sizeof http, "127.0.0.1:%d", node->port);
        snprintf(control, sizeof control, "127.0.0.1:%d", api_free_port());
        snprintf(node->url, sizeof node->url, "http://%s", http);
        node->pid = fork();
        assert_true(node->pid >= 0);
        if (node->pid == 0) {
            int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            dup2(fd, 1);
            dup2(fd, 2);
            execvp(argv[0], (char *const *)argv);
            _exit(127);
        }
        char err[256];
        cf_httpc_t *client = cf_httpc_new(node->url, NULL, 500, 2000, err, sizeof err);
        double deadline = api_now() + 30;
        bool up = true;
        while (up && api_get_status(client, "/healthz") != 200) {
            int status;
            if (waitpid(node->pid, &status, WNOHANG) == node->pid) {
                node->pid = 0;
                up = false;
            } else if (api_now() > deadline) {
                up = false;
            }
            if (up)
                usleep(100 * 1000);
        }
        cf_httpc_destroy(&client);
        if (up)
            break;
        char *grep[] = {"grep", "-q", "Address already in use", log, NULL};
        proc = cf_test_run(grep, NULL);
        bool port_taken = proc.status == 0 && node->pid == 0;
        cf_test_proc_free(&proc);
        if (!port_taken || attempt == 3) {
            char *cat[] = {"tail", "-n", "20", log, NULL};
            proc = cf_test_run(cat, NULL);
            fail_msg("node did not come up: %s", proc.out);
        }
    }
    free(cmd_copy);
}

/* The end of the node's log (its last 16 KiB), for failure messages; a
 * static buffer. */
static inline const char *api_testnode_log(const api_testnode_t *node)
{
    static char text[16384];
    char path[600];
    snprintf(path, sizeof path, "%s/log", node->dir);
    FILE *f = fopen(path, "r");
    size_t n = 0;
    if (f) {
        if (fseek(f, -(long)(sizeof text - 1), SEEK_END) != 0)
            rewind(f);
        n = fread(text, 1, sizeof text - 1, f);
        fclose(f);
    }
    text[n] = '\0';
    return text;
}

/* Whether the node's whole log holds a sanitizer report (ASan, LSan, UBSan:
 * "runtime error:" is UBSan's line when it goes on). */
static inline bool api_testnode_log_has_report(const api_testnode_t *node)
{
    char path[600];
    snprintf(path, sizeof path, "%s/log", node->dir);
    char *grep[] = {"grep", "-qE", "Sanitizer|runtime error:", path, NULL};
    cf_test_proc_t proc = cf_test_run(grep, NULL);
    bool found = proc.status == 0;
    cf_test_proc_free(&proc);
    return found;
}

/* SIGTERM, then SIGKILL after 10 s. The node must leave cleanly: exit 0
 * within those 10 s, and no sanitizer report anywhere in its log. Call it
 * from a test, never only from a group teardown: cmocka 1.1 does not count
 * a failure there (the run still exits 0). The directory stays for
 * api_testnode_cleanup. */
static inline void api_testnode_stop(api_testnode_t *node)
{
    assert_true(node->pid > 0);
    pid_t pid = node->pid;
    node->pid = 0;
    int status = 0;
    bool killed = false;
    if (waitpid(pid, &status, WNOHANG) == 0) {
        kill(pid, SIGTERM);
        double deadline = api_now() + 10;
        while (waitpid(pid, &status, WNOHANG) == 0) {
            if (api_now() > deadline) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                killed = true;
                break;
            }
            usleep(50 * 1000);
        }
    }
    bool report = api_testnode_log_has_report(node);
    if (killed || !WIFEXITED(status) || WEXITSTATUS(status) != 0 || report)
        fail_msg("node did not stop cleanly (%s, status %d%s): %s",
                 killed                ? "needed SIGKILL"
                 : WIFSIGNALED(status) ? "killed by a signal"
                                       : "exit status",
                 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
                 report ? ", sanitizer report in its log" : "", api_testnode_log(node));
}

/* Group teardown: kills a node a failed test left running (no checks:
 * those belong in api_testnode_stop, called by a test) and removes its
 * directory. */
static inline void api_testnode_cleanup(api_testnode_t *node)
{
    if (node->pid > 0) {
        kill(node->pid, SIGKILL);
        waitpid(node->pid, NULL, 0);
    }
    if (node->dir) {
        cf_test_rmtree(node->dir);
        free(node->dir);
    }
    memset(node, 0, sizeof *node);
}

#endif
