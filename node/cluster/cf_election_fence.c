#include "cf_election_fence.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cf_db_cluster.h"
#include "cf_log.h"

#define S_ATTEMPT_TIMEOUT_MS 1000
#define S_RETRY_MIN_MS       100
#define S_RETRY_MAX_MS       1000
#define S_EXPIRE_MS          (10 * 60 * 1000)

typedef struct {
    bool is_view;
    int64_t epoch;
    char coordinator[37];
    char *subject; /* node id, or the members JSON */
    int64_t queued_ms;
    int attempts;
} s_job_t;

typedef struct {
    zsock_t *pipe;
    cf_db_cluster_t *db;
    zlistx_t *jobs; /* of s_job_t, oldest first */
    bool terminated;
    int64_t retry_at_ms;
    int retry_ms;
    bool warned;
} s_self_t;

static void s_job_destroy(s_job_t **job_p)
{
    if (*job_p) {
        free((*job_p)->subject);
        free(*job_p);
        *job_p = NULL;
    }
}

static void s_answer(s_self_t *self, const s_job_t *job, const char *verdict)
{
    zsock_send(self->pipe, "sss8s", "FENCE", job->is_view ? "view" : "gone", verdict,
               (uint64_t)job->epoch, job->is_view ? "" : job->subject);
}

static void s_handle_pipe(s_self_t *self)
{
    char *command = NULL, *coordinator = NULL, *subject = NULL;
    uint64_t epoch = 0;
    if (zsock_recv(self->pipe, "s8ss", &command, &epoch, &coordinator, &subject) < 0 || !command) {
        self->terminated = true;
        return;
    }
    if (!strcmp(command, "$TERM")) {
        self->terminated = true;
    } else if (coordinator && subject) {
        s_job_t *job = calloc(1, sizeof *job);
        if (job) {
            job->is_view = !strcmp(command, "VIEW");
            job->epoch = (int64_t)epoch;
            snprintf(job->coordinator, sizeof job->coordinator, "%s", coordinator);
            job->subject = subject;
            subject = NULL;
            job->queued_ms = zclock_mono();
            if (job->is_view) {
                /* Only the newest view matters. */
                for (s_job_t *old = zlistx_first(self->jobs); old;) {
                    if (old->is_view) {
                        s_answer(self, old, "superseded");
                        zlistx_delete(self->jobs, zlistx_cursor(self->jobs));
                        old = zlistx_first(self->jobs);
                        continue;
                    }
                    old = zlistx_next(self->jobs);
                }
            }
            zlistx_add_end(self->jobs, job);
        }
    }
    free(command);
    free(coordinator);
    free(subject);
}

/* Tries the oldest job once. */
static void s_attempt(s_self_t *self)
{
    s_job_t *job = zlistx_first(self->jobs);
    if (!job)
        return;
    int64_t now = zclock_mono();
    if (now - job->queued_ms > S_EXPIRE_MS) {
        cf_log_error("fence", "gave up a %s write of epoch %" PRId64 ": Postgres unreachable",
                     job->is_view ? "view" : "gone", job->epoch);
        s_answer(self, job, "expired");
        zlistx_delete(self->jobs, zlistx_cursor(self->jobs));
        return;
    }
    job->attempts++;
    cf_dbc_fence_t fence = CF_DBC_FENCE_STALE;
    bool changed = false;
    char err[512];
    int rc = job->is_view
                 ? cf_db_cluster_publish_view(self->db, job->epoch, job->coordinator, job->subject,
                                              &fence, S_ATTEMPT_TIMEOUT_MS, err, sizeof err)
                 : cf_db_cluster_mark_gone(self->db, job->epoch, job->coordinator, job->subject,
                                           &fence, &changed, S_ATTEMPT_TIMEOUT_MS, err, sizeof err);
    if (rc == CF_DBC_UNAVAILABLE) {
        if (!self->warned)
            cf_log_warn("fence", "coordinator write of epoch %" PRId64 " waits for Postgres: %s",
                        job->epoch, err);
        self->warned = true;
        self->retry_at_ms = zclock_mono() + self->retry_ms;
        self->retry_ms = self->retry_ms * 2 > S_RETRY_MAX_MS ? S_RETRY_MAX_MS : self->retry_ms * 2;
        return;
    }
    self->warned = false;
    self->retry_ms = S_RETRY_MIN_MS;
    if (rc == CF_DBC_ERROR) {
        cf_log_error("fence", "coordinator write failed: %s", err);
        s_answer(self, job, "error");
    } else if (fence == CF_DBC_FENCE_STALE) {
        cf_log_warn("fence",
                    "refused a %s write of epoch %" PRId64
                    " after %d attempt(s): that epoch no longer holds the lease",
                    job->is_view ? "view" : "gone", job->epoch, job->attempts);
        s_answer(self, job, "stale");
    } else {
        if (!job->is_view && changed)
            cf_log_info("fence", "recorded node %s as gone (epoch %" PRId64 ")", job->subject,
                        job->epoch);
        s_answer(self, job, "passed");
    }
    zlistx_delete(self->jobs, zlistx_cursor(self->jobs));
}

typedef struct {
    char *url;
    int interrupt_fd;
} s_args_t;

static void s_actor(zsock_t *pipe, void *arg)
{
    s_args_t *args = arg;
    s_self_t self = {.pipe = pipe, .retry_ms = S_RETRY_MIN_MS};
    self.db = cf_db_cluster_new(args->url);
    if (self.db)
        cf_db_cluster_set_interrupt(self.db, args->interrupt_fd);
    self.jobs = zlistx_new();
    zlistx_set_destructor(self.jobs, (zlistx_destructor_fn *)s_job_destroy);
    zsock_signal(pipe, 0);
    while (self.db && self.jobs && !self.terminated) {
        int64_t now = zclock_mono();
        long timeout = -1;
        if (zlistx_size(self.jobs))
            timeout = self.retry_at_ms > now ? (long)(self.retry_at_ms - now) : 0;
        zmq_pollitem_t items[] = {{zsock_resolve(pipe), 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 1, timeout) < 0)
            break;
        if (items[0].revents & ZMQ_POLLIN) {
            s_handle_pipe(&self);
            continue; /* take every queued command before writing */
        }
        if (zlistx_size(self.jobs) && zclock_mono() >= self.retry_at_ms)
            s_attempt(&self);
    }
    if (self.jobs && zlistx_size(self.jobs))
        cf_log_warn("fence", "%zu coordinator write(s) abandoned at shutdown",
                    zlistx_size(self.jobs));
    zlistx_destroy(&self.jobs);
    cf_db_cluster_destroy(&self.db);
    free(args->url);
    free(args);
}

zactor_t *cf_election_fence_new(const char *database_url, int interrupt_fd)
{
    s_args_t *args = calloc(1, sizeof *args);
    if (!args || !(args->url = strdup(database_url))) {
        free(args);
        return NULL;
    }
    args->interrupt_fd = interrupt_fd;
    zactor_t *actor = zactor_new(s_actor, args);
    if (!actor) {
        free(args->url);
        free(args);
    }
    return actor;
}
