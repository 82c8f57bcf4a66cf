/* A TCP relay between a libpq client and Postgres that can hold answers
 * back or go silent, for the tests of lost and late answers (a thread in
 * the test process, so the test switches it exactly when it needs to).
 * Header-only: included by one test file each.
 *
 *   hold_answers: a connection that has sent a query (a Parse or Query
 *     message, after its startup) gets nothing back while this is set; what
 *     the server answered waits, and is passed on once it is cleared (to a
 *     client that may have given up and gone meanwhile);
 *   silent: nothing moves at all, and new connections are not served (their
 *     TCP handshake completes, their startup is never answered): Postgres
 *     as seen through a cut network. */
#ifndef CF_TEST_PROXY_H
#define CF_TEST_PROXY_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cf_testutil.h"
#include "cf_url.h"

#define CF_TEST_PROXY_PAIRS 32

typedef struct {
    int listen_fd;
    int port;
    char server_host[256];
    int server_port;
    int client[CF_TEST_PROXY_PAIRS], server[CF_TEST_PROXY_PAIRS];
    bool queried[CF_TEST_PROXY_PAIRS]; /* the client sent a query since it connected */
    bool counted[CF_TEST_PROXY_PAIRS]; /* its answer was counted as held */
    atomic_bool hold_answers;
    atomic_bool silent;
    atomic_int held; /* connections whose answer was held back */
    atomic_bool stop;
    pthread_t thread;
} cf_test_proxy_t;

static inline void cf_test_proxy_close_pair(cf_test_proxy_t *p, int i)
{
    close(p->client[i]);
    close(p->server[i]);
    p->client[i] = p->server[i] = -1;
}

static inline void *cf_test_proxy_main(void *arg)
{
    cf_test_proxy_t *p = arg;
    while (!atomic_load(&p->stop)) {
        bool silent = atomic_load(&p->silent), hold = atomic_load(&p->hold_answers);
        struct pollfd fds[1 + 2 * CF_TEST_PROXY_PAIRS];
        int n = 0;
        fds[n++] = (struct pollfd){silent ? -1 : p->listen_fd, POLLIN, 0};
        for (int i = 0; i < CF_TEST_PROXY_PAIRS; i++) {
            bool live = p->client[i] >= 0 && !silent;
            fds[n++] = (struct pollfd){live ? p->client[i] : -1, POLLIN, 0};
            bool answer = live && !(hold && p->queried[i]);
            fds[n++] = (struct pollfd){answer ? p->server[i] : -1, POLLIN, 0};
            if (live && hold && p->queried[i] && !p->counted[i]) {
                p->counted[i] = true;
                atomic_fetch_add(&p->held, 1);
            }
        }
        if (poll(fds, (nfds_t)n, 20) <= 0)
            continue;
        if (fds[0].revents & POLLIN) {
            int c = accept(p->listen_fd, NULL, NULL);
            int s = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in addr = {.sin_family = AF_INET,
                                       .sin_port = htons((uint16_t)p->server_port)};
            inet_pton(AF_INET, p->server_host, &addr.sin_addr);
            int slot = -1;
            for (int i = 0; i < CF_TEST_PROXY_PAIRS && slot < 0; i++)
                if (p->client[i] < 0)
                    slot = i;
            if (c < 0 || slot < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) {
                close(c);
                close(s);
            } else {
                p->client[slot] = c;
                p->server[slot] = s;
                p->queried[slot] = p->counted[slot] = false;
            }
        }
        for (int i = 0; i < CF_TEST_PROXY_PAIRS; i++) {
            if (p->client[i] < 0)
                continue;
            struct pollfd *cf = &fds[1 + 2 * i], *sf = &fds[2 + 2 * i];
            char buf[65536];
            if (cf->revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t got = read(p->client[i], buf, sizeof buf);
                if (got <= 0 || write(p->server[i], buf, (size_t)got) != got) {
                    cf_test_proxy_close_pair(p, i);
                    continue;
                }
                if (buf[0] == 'P' || buf[0] == 'Q')
                    p->queried[i] = true;
            }
            if (sf->revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t got = read(p->server[i], buf, sizeof buf);
                if (got <= 0 || write(p->client[i], buf, (size_t)got) != got)
                    cf_test_proxy_close_pair(p, i);
            }
        }
    }
    return NULL;
}

/* Starts a relay to the server of URL on a free port of 127.0.0.1. */
static inline void cf_test_proxy_start(cf_test_proxy_t *p, const char *url)
{
    memset(p, 0, sizeof *p);
    for (int i = 0; i < CF_TEST_PROXY_PAIRS; i++)
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
    pthread_create(&p->thread, NULL, cf_test_proxy_main, p);
}

/* URL with its host and port replaced by the relay's. */
static inline void cf_test_proxy_url(const cf_test_proxy_t *p, const char *url, char *out,
                                     size_t outlen)
{
    const char *db = strrchr(url, '/');
    snprintf(out, outlen, "postgresql://postgres@127.0.0.1:%d%s", p->port, db ? db : "/");
}

static inline void cf_test_proxy_stop(cf_test_proxy_t *p)
{
    atomic_store(&p->stop, true);
    pthread_join(p->thread, NULL);
    for (int i = 0; i < CF_TEST_PROXY_PAIRS; i++)
        if (p->client[i] >= 0)
            cf_test_proxy_close_pair(p, i);
    close(p->listen_fd);
}

#endif
