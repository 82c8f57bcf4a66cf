/* cf_calibration: the calibration actor and its worker. See cf_calibration.h. */
#define _GNU_SOURCE
#include "cf_calibration.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cf_log.h"

#define S_STOP_WAIT_MS 300

/* What the actor and its worker share, freed by whichever lets go last. */
typedef struct {
    atomic_int refs;
    atomic_int stop;
    atomic_int done; /* caps holds the result */
    int fds[2];      /* the worker writes one byte to [1] when it finishes */
    cf_caps_t *caps;
    char *data_dir;
} s_job_t;

/* A pointer that crosses a zmq pipe carries no ordering ThreadSanitizer can
 * see (libzmq is not instrumented, tests/tsan.supp): the figures handed
 * over by "TAKE" are published under this lock, taken by the actor before
 * it sends them and by cf_calibration_take after it received them. */
static pthread_mutex_t s_handoff = PTHREAD_MUTEX_INITIALIZER;

static void s_job_release(s_job_t **job_p)
{
    s_job_t *job = *job_p;
    *job_p = NULL;
    if (!job || atomic_fetch_sub(&job->refs, 1) != 1)
        return;
    cf_caps_destroy(&job->caps);
    free(job->data_dir);
    if (job->fds[0] >= 0)
        close(job->fds[0]);
    if (job->fds[1] >= 0)
        close(job->fds[1]);
    free(job);
}

static void *s_worker(void *arg)
{
    s_job_t *job = arg;
    char err[512];
    int rc = cf_caps_calibrate(job->caps, job->data_dir, &job->stop, err, sizeof err);
    if (!atomic_load(&job->stop)) {
        if (rc < 0)
            cf_log_warn("node", "calibration: %s", err);
        atomic_store(&job->done, 1);
    }
    /* Never blocks or raises SIGPIPE: the socket stays open until the
     * last reference goes. */
    (void)!send(job->fds[1], "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    s_job_release(&job);
    return NULL;
}

/* Starts the detached worker on JOB, which it then holds a reference to. */
static int s_start_worker(s_job_t *job)
{
    pthread_attr_t attr;
    pthread_t thread;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, job->fds) < 0)
        return -1;
    if (pthread_attr_init(&attr) != 0)
        return -1;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    atomic_fetch_add(&job->refs, 1);
    int rc = pthread_create(&thread, &attr, s_worker, job) == 0 ? 0 : -1;
    if (rc < 0)
        atomic_fetch_sub(&job->refs, 1);
    pthread_attr_destroy(&attr);
    return rc;
}

static void s_actor(zsock_t *pipe, void *arg)
{
    s_job_t *job = arg; /* NULL once the worker is done with it */
    cf_caps_t *result = NULL;
    bool started = s_start_worker(job) == 0;
    zsock_signal(pipe, 0);
    if (!started) {
        cf_log_warn("node", "cannot start the calibration; encoder speeds stay unknown");
        s_job_release(&job);
        zstr_send(pipe, "FAILED");
    }
    bool terminated = false;
    while (!terminated) {
        zmq_pollitem_t items[] = {{zsock_resolve(pipe), 0, ZMQ_POLLIN, 0},
                                  {NULL, job ? job->fds[0] : -1, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, job ? 2 : 1, -1) < 0) {
            if (zmq_errno() == EINTR)
                continue;
            break;
        }
        if (job && (items[1].revents & ZMQ_POLLIN)) {
            char byte;
            (void)!read(job->fds[0], &byte, 1);
            if (atomic_load(&job->done)) {
                result = job->caps;
                job->caps = NULL;
            }
            s_job_release(&job);
            zstr_send(pipe, result ? "CALIBRATED" : "FAILED");
        }
        if (items[0].revents & ZMQ_POLLIN) {
            char *command = zstr_recv(pipe);
            if (!command || !strcmp(command, "$TERM")) {
                terminated = true;
            } else if (!strcmp(command, "TAKE")) {
                pthread_mutex_lock(&s_handoff);
                pthread_mutex_unlock(&s_handoff);
                zsock_send(pipe, "p", result);
                result = NULL;
            }
            free(command);
        }
    }
    if (job) {
        /* Stopped before the worker finished: give it a moment, then let
         * it go. */
        atomic_store(&job->stop, 1);
        struct pollfd pfd = {.fd = job->fds[0], .events = POLLIN};
        if (poll(&pfd, 1, S_STOP_WAIT_MS) <= 0)
            cf_log_debug("node", "leaving while the calibration winds down");
        s_job_release(&job);
    }
    cf_caps_destroy(&result);
}

zactor_t *cf_calibration_new(const cf_caps_t *caps, const char *data_dir)
{
    s_job_t *job = calloc(1, sizeof *job);
    if (!job)
        return NULL;
    job->fds[0] = job->fds[1] = -1;
    atomic_store(&job->refs, 1); /* the actor's */
    job->caps = cf_caps_dup(caps);
    job->data_dir = data_dir ? strdup(data_dir) : NULL;
    zactor_t *actor = NULL;
    if (job->caps && (job->data_dir || !data_dir))
        actor = zactor_new(s_actor, job);
    if (!actor)
        s_job_release(&job);
    return actor;
}

cf_caps_t *cf_calibration_take(zactor_t *self)
{
    void *caps = NULL;
    if (zstr_send(self, "TAKE") < 0 || zsock_recv(self, "p", &caps) < 0)
        return NULL;
    pthread_mutex_lock(&s_handoff);
    pthread_mutex_unlock(&s_handoff);
    return caps;
}
