/* Robustness of the REST API against hostile and heavy clients: raw-socket
 * garbage, a 1 MB header, a slow client sending one byte a second, and 500
 * concurrent connections. Throughout, a probe client keeps asking the node
 * for /healthz and a list of compositions; every probe must be answered
 * correctly and promptly. Runs against a real node. */
#include "api_testnode.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#define S_CONNECTIONS   500
#define S_PROBE_MAX_S   5.0 /* a probe slower than this counts as "not answered" */
#define S_REQUEST_TO_MS 3000

static api_testnode_t s_node;

typedef struct {
    atomic_bool stop;
    atomic_int probes, failures;
    double worst_s;
    char last_failure[256];
} s_probe_t;

static void *s_probe_main(void *arg)
{
    s_probe_t *probe = arg;
    char err[256];
    cf_httpc_t *client = cf_httpc_new(s_node.url, s_node.key, 2000, 10, err, sizeof err);
    while (!atomic_load(&probe->stop)) {
        const char *paths[] = {"/healthz", "/api/v1/compositions?limit=5"};
        for (int i = 0; i < 2; i++) {
            double t0 = api_now();
            long status = api_get_status(client, paths[i]);
            double took = api_now() - t0;
            if (took > probe->worst_s)
                probe->worst_s = took;
            atomic_fetch_add(&probe->probes, 1);
            if (status != 200 || took > S_PROBE_MAX_S) {
                atomic_fetch_add(&probe->failures, 1);
                snprintf(probe->last_failure, sizeof probe->last_failure,
                         "%s answered %ld after %.2f s", paths[i], status, took);
            }
        }
        usleep(100 * 1000);
    }
    cf_httpc_destroy(&client);
    return NULL;
}

static int s_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)s_node.port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* Reads until the peer closes or TIMEOUT_MS passes; returns bytes read
 * (the first ones in buf), or -1 on timeout with the connection open. */
static ssize_t s_read_until_close(int fd, char *buf, size_t len, int timeout_ms)
{
    size_t got = 0;
    double deadline = api_now() + timeout_ms / 1000.0;
    for (;;) {
        int left = (int)((deadline - api_now()) * 1000);
        if (left <= 0)
            return -1;
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, left) <= 0)
            continue;
        char tmp[4096];
        ssize_t n = recv(fd, tmp, sizeof tmp, 0);
        if (n <= 0)
            return (ssize_t)got;
        if (got < len - 1) {
            size_t copy = (size_t)n < len - 1 - got ? (size_t)n : len - 1 - got;
            memcpy(buf + got, tmp, copy);
            got += copy;
            buf[got] = '\0';
        }
    }
}

static void test_garbage(void)
{
    unsigned seed = 7;
    for (int round = 0; round < 20; round++) {
        int fd = s_connect();
        assert_true(fd >= 0);
        char junk[4096];
        for (size_t i = 0; i < sizeof junk; i++)
            junk[i] = (char)(rand_r(&seed) & 0xff);
        if (round % 4 == 0)
            memcpy(junk, "GET /healthz HTTP/1.1\r\n\x01\x02", 25); /* a broken header */
        api_send_all(fd, junk, sizeof junk);
        char reply[512] = "";
        ssize_t n = s_read_until_close(fd, reply, sizeof reply, 10000);
        close(fd);
        /* Either a 4xx or a closed connection; never a hang or a crash. */
        assert_true(n >= 0);
        if (n > 0)
            assert_non_null(strstr(reply, "HTTP/1.1 4"));
    }
}

static void test_huge_header(void)
{
    int fd = s_connect();
    assert_true(fd >= 0);
    const char head[] = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ";
    size_t big = 1 << 20;
    char *request = malloc(sizeof head + big + 4);
    memcpy(request, head, sizeof head - 1);
    memset(request + sizeof head - 1, 'a', big);
    memcpy(request + sizeof head - 1 + big, "\r\n\r\n", 4);
    api_send_all(fd, request, sizeof head - 1 + big + 4);
    free(request);
    char reply[512] = "";
    ssize_t n = s_read_until_close(fd, reply, sizeof reply, 10000);
    close(fd);
    assert_true(n >= 0);
    if (n > 0)
        assert_true(strstr(reply, "HTTP/1.1 413") || strstr(reply, "HTTP/1.1 431") ||
                    strstr(reply, "HTTP/1.1 400"));
}

static void *s_slow_main(void *arg)
{
    double *closed_after = arg;
    int fd = s_connect();
    if (fd < 0)
        return NULL;
    const char request[] =
        "GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: one byte a second\r\n\r\n";
    double t0 = api_now();
    *closed_after = -1;
    for (size_t i = 0; i < sizeof request - 1; i++) {
        if (send(fd, request + i, 1, MSG_NOSIGNAL) != 1) {
            *closed_after = api_now() - t0;
            break;
        }
        /* Anything readable (an error answer or the close) means the
         * server gave up on us. */
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 1000) > 0) {
            *closed_after = api_now() - t0;
            break;
        }
    }
    close(fd);
    return NULL;
}

typedef struct {
    int fds[S_CONNECTIONS];
    int answered;
} s_crowd_t;

/* S_CONNECTIONS keep-alive clients, all connected at once, each sends a
 * request; all stay open while their answers are read. */
static void test_many_connections(s_crowd_t *crowd)
{
    int opened = 0;
    for (int i = 0; i < S_CONNECTIONS; i++) {
        crowd->fds[i] = s_connect();
        opened += crowd->fds[i] >= 0;
    }
    assert_int_equal(opened, S_CONNECTIONS);
    const char request[] = "GET /healthz HTTP/1.1\r\nHost: crowd\r\n\r\n";
    for (int i = 0; i < S_CONNECTIONS; i++)
        api_send_all(crowd->fds[i], request, sizeof request - 1);
    crowd->answered = 0;
    double deadline = api_now() + 60;
    char got[S_CONNECTIONS] = {0};
    while (crowd->answered < S_CONNECTIONS && api_now() < deadline) {
        for (int i = 0; i < S_CONNECTIONS; i++) {
            if (got[i])
                continue;
            struct pollfd p = {crowd->fds[i], POLLIN, 0};
            if (poll(&p, 1, 0) <= 0)
                continue;
            char buf[1024];
            ssize_t n = recv(crowd->fds[i], buf, sizeof buf - 1, 0);
            if (n > 0) {
                buf[n] = '\0';
                if (strstr(buf, "HTTP/1.1 200") && strstr(buf, "{\"status\":\"ok\"}")) {
                    got[i] = 1;
                    crowd->answered++;
                }
            }
        }
        usleep(5000);
    }
    assert_int_equal(crowd->answered, S_CONNECTIONS);
}

static void test_robustness(void **state)
{
    s_probe_t probe = {0};
    pthread_t prober, slow;
    double slow_closed_after = -2;
    assert_int_equal(pthread_create(&prober, NULL, s_probe_main, &probe), 0);
    assert_int_equal(pthread_create(&slow, NULL, s_slow_main, &slow_closed_after), 0);

    test_garbage();
    test_huge_header();
    s_crowd_t *crowd = calloc(1, sizeof *crowd);
    test_many_connections(crowd);
    /* While the crowd still holds its connections open, others get through. */
    char err[256];
    cf_httpc_t *client = cf_httpc_new(s_node.url, s_node.key, 2000, 10, err, sizeof err);
    for (int i = 0; i < 20; i++)
        assert_int_equal(api_get_status(client, "/api/v1/cluster"), 200);
    cf_httpc_destroy(&client);
    for (int i = 0; i < S_CONNECTIONS; i++)
        close(crowd->fds[i]);
    free(crowd);

    pthread_join(slow, NULL);
    atomic_store(&probe.stop, true);
    pthread_join(prober, NULL);
    /* The slow client was cut off by the request timeout, long before its
     * 70-byte request could have finished at one byte a second. */
    if (!(slow_closed_after > 0 && slow_closed_after < S_REQUEST_TO_MS / 1000.0 + 5))
        fail_msg("slow client not cut off in time (%.1f s)", slow_closed_after);
    if (atomic_load(&probe.failures) != 0)
        fail_msg("%d of %d probes failed; last: %s", atomic_load(&probe.failures),
                 atomic_load(&probe.probes), probe.last_failure);
    assert_true(atomic_load(&probe.probes) >= 20);
    printf("probes: %d, worst %.3f s; slow client cut off after %.1f s\n",
           atomic_load(&probe.probes), probe.worst_s, slow_closed_after);

    /* Still alive, and it counted what it refused. */
    client = cf_httpc_new(s_node.url, NULL, 2000, 10, err, sizeof err);
    cf_httpc_response_t resp;
    assert_int_equal(
        cf_httpc_request(client, "GET", "/metrics", NULL, NULL, NULL, 0, &resp, err, sizeof err),
        0);
    assert_int_equal(resp.status, 200);
    assert_non_null(strstr(resp.body, "route=\"unmatched\",status=\"4"));
    cf_httpc_response_clear(&resp);
    cf_httpc_destroy(&client);
}

static int s_setup(void **state)
{
    api_raise_fd_limit(8192);
    signal(SIGPIPE, SIG_IGN);
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%d", S_REQUEST_TO_MS);
    /* Threads sized for the crowd plus the probe and the others: civetweb
     * serves one connection per thread. The crowd and the probe share one
     * address here, so no cap per address (test_api_hostile_conn has it). */
    const char *extra[] = {"--no-render", "--rate-limit",
                           "0",           "--http-threads",
                           "640",         "--http-request-timeout-ms",
                           timeout,       "--http-keepalive-timeout-ms",
                           "30000",       "--max-conns-per-addr",
                           "0",           NULL};
    api_testnode_start(&s_node, extra);
    return 0;
}

/* The node leaves cleanly after the load: exit 0 on SIGTERM, no sanitizer
 * report. A test of its own (not the group teardown, whose failures cmocka
 * does not count), run even when the one before failed. */
static void test_node_stops_cleanly(void **state)
{
    api_testnode_stop(&s_node);
}

static int s_teardown(void **state)
{
    api_testnode_cleanup(&s_node);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_robustness),
        cmocka_unit_test(test_node_stops_cleanly),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
