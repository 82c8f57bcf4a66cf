#include "cf_election_fence.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cf_db_cluster.h"
#include "cf_election.h"
#include "cf_log.h"

#define S_ATTEMPT_TIMEOUT_MS 1000
#define S_MIN_ATTEMPT_MS     20 /* less time than this left: the lease is over */
#define S_RETRY_MIN_MS       100
#define S_RETRY_MAX_MS       1000

typedef enum { S_VIEW, S_SWEEP, S_STATE, S_SEGMENT, S_PLAN, S_KIND_COUNT } s_kind_t;

static const char *const s_kind_names[S_KIND_COUNT] = {"view", "sweep", "state", "segment", "plan"};
static const char *const s_commands[S_KIND_COUNT] = {"VIEW", "SWEEP", "STATE", "SEGMENT", "PLAN"};

typedef struct {
    s_kind_t kind;
    cf_fence_token_t token;
    char *subject; /* links JSON, or the write as JSON ("" for a sweep) */
    int attempts;
} s_job_t;

typedef struct {
    zsock_t *pipe;
    cf_db_cluster_t *db;
    cf_db_t *pool;
    zlistx_t *jobs; /* of s_job_t, oldest first */
    bool terminated;
    /* The node's lease: writes of other epochs are dropped, and writes of
     * this one are tried only until the deadline (CLOCK_BOOTTIME). */
    int64_t lease_epoch;
    int64_t lease_deadline_ms;
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

/* The composition a STATE/SEGMENT/PLAN names, else "". */
static void s_subject_of(const s_job_t *job, char *out, size_t outlen)
{
    out[0] = '\0';
    if (job->kind == S_VIEW || job->kind == S_SWEEP)
        return;
    json_t *doc = json_loads(job->subject, 0, NULL);
    const char *id = json_string_value(json_object_get(doc, "composition"));
    snprintf(out, outlen, "%s", id ? id : "");
    json_decref(doc);
}

static void s_answer(s_self_t *self, const s_job_t *job, const char *verdict, const char *subject)
{
    char composition[64];
    if (!subject) {
        s_subject_of(job, composition, sizeof composition);
        subject = composition;
    }
    zsock_send(self->pipe, "sss8s", "FENCE", s_kind_names[job->kind], verdict,
               (uint64_t)job->token.epoch, subject);
}

/* Answers and deletes the job under the list's cursor. */
static void s_finish(s_self_t *self, s_job_t *job, const char *verdict, const char *subject)
{
    s_answer(self, job, verdict, subject);
    zlistx_delete(self->jobs, zlistx_cursor(self->jobs));
}

/* Drops every queued write not of the current lease's epoch. */
static void s_drop_deposed(s_self_t *self)
{
    for (s_job_t *job = zlistx_first(self->jobs); job;) {
        if (job->token.epoch != self->lease_epoch) {
            cf_log_warn("fence",
                        "dropped a %s write of epoch %" PRId64 ": this node no longer holds it",
                        s_kind_names[job->kind], job->token.epoch);
            s_finish(self, job, "dropped", NULL);
            job = zlistx_first(self->jobs);
            continue;
        }
        job = zlistx_next(self->jobs);
    }
}

static void s_handle_pipe(s_self_t *self)
{
    zmsg_t *msg = zmsg_recv(self->pipe);
    if (!msg) {
        self->terminated = true;
        return;
    }
    char *command = zmsg_popstr(msg), *epoch_text = zmsg_popstr(msg);
    char *holder = zmsg_popstr(msg), *subject = zmsg_popstr(msg);
    int64_t epoch = epoch_text ? strtoll(epoch_text, NULL, 10) : 0;
    if (!command || !strcmp(command, "$TERM")) {
        self->terminated = true;
    } else if (!strcmp(command, "LEASE")) {
        self->lease_epoch = epoch;
        self->lease_deadline_ms = subject ? strtoll(subject, NULL, 10) : 0;
        s_drop_deposed(self);
    } else if (holder && subject) {
        s_kind_t kind = S_KIND_COUNT;
        for (int k = 0; k < S_KIND_COUNT; k++)
            if (!strcmp(command, s_commands[k]))
                kind = (s_kind_t)k;
        s_job_t *job = kind < S_KIND_COUNT ? calloc(1, sizeof *job) : NULL;
        if (job) {
            job->kind = kind;
            job->token.epoch = epoch;
            snprintf(job->token.holder, sizeof job->token.holder, "%s", holder);
            job->subject = subject;
            subject = NULL;
            if (kind == S_VIEW || kind == S_SWEEP) {
                /* Only the newest view or sweep matters. */
                for (s_job_t *old = zlistx_first(self->jobs); old;) {
                    if (old->kind == kind) {
                        s_finish(self, old, "superseded", NULL);
                        old = zlistx_first(self->jobs);
                        continue;
                    }
                    old = zlistx_next(self->jobs);
                }
            }
            zlistx_add_end(self->jobs, job);
            zlistx_last(self->jobs);
            if (job->token.epoch != self->lease_epoch)
                s_finish(self, job, "dropped", NULL); /* made after stepping down */
        }
    }
    free(command);
    free(epoch_text);
    free(holder);
    free(subject);
    zmsg_destroy(&msg);
}

/* ------------------------------------------------------------ the writes */

/* cf_db_rc_t of a pool write -> a verdict; NULL: try again. */
static const char *s_pool_verdict(int rc)
{
    switch (rc) {
        case CF_DB_OK:
            return "passed";
        case CF_DB_STALE:
            return "stale";
        case CF_DB_UNAVAILABLE:
            return NULL;
        case CF_DB_ILLEGAL:
        case CF_DB_TERMINAL:
        case CF_DB_NOT_FOUND:
        case CF_DB_CONFLICT:
            return "illegal";
        default:
            return "error";
    }
}

static int s_write_state(s_self_t *self, const s_job_t *job, json_t *doc, char *err, size_t errlen)
{
    const char *id = json_string_value(json_object_get(doc, "composition"));
    const char *to_name = json_string_value(json_object_get(doc, "to"));
    cf_state_t to;
    if (!id || !to_name || cf_state_parse(to_name, &to) < 0) {
        snprintf(err, errlen, "a STATE write needs composition and to");
        return CF_DB_INVALID;
    }
    return cf_db_composition_transition_fenced(
        self->pool, &job->token, id, to, NULL,
        json_string_value(json_object_get(doc, "error_code")),
        json_string_value(json_object_get(doc, "error_message")), NULL, err, errlen);
}

static int s_write_segment(s_self_t *self, const s_job_t *job, json_t *doc, char *err,
                           size_t errlen)
{
    const char *id = json_string_value(json_object_get(doc, "composition"));
    json_t *index = json_object_get(doc, "index");
    if (!id || !json_is_integer(index)) {
        snprintf(err, errlen, "a SEGMENT write needs composition and index");
        return CF_DB_INVALID;
    }
    const char *assign = json_string_value(json_object_get(doc, "assign"));
    if (assign) {
        cf_db_assignment_t assignment;
        return cf_db_segment_assign_fenced(self->pool, &job->token, id,
                                           (int)json_integer_value(index), assign, &assignment, err,
                                           errlen);
    }
    cf_db_segment_update_t up = {0};
    const char *state = json_string_value(json_object_get(doc, "state"));
    if (state) {
        if (cf_seg_state_parse(state, &up.state) < 0) {
            snprintf(err, errlen, "unknown segment state %s", state);
            return CF_DB_INVALID;
        }
        up.fields |= CF_SEG_F_STATE;
    }
    json_t *progress = json_object_get(doc, "progress");
    if (json_is_number(progress)) {
        up.progress = json_number_value(progress);
        up.fields |= CF_SEG_F_PROGRESS;
    }
    if ((up.node_id = json_string_value(json_object_get(doc, "node"))))
        up.fields |= CF_SEG_F_NODE;
    return cf_db_segment_update_fenced(self->pool, &job->token, id, (int)json_integer_value(index),
                                       &up, err, errlen);
}

static int s_write_plan(s_self_t *self, const s_job_t *job, json_t *doc, char *err, size_t errlen)
{
    const char *id = json_string_value(json_object_get(doc, "composition"));
    json_t *segments = json_object_get(doc, "segments");
    size_t count = json_array_size(segments);
    if (!id || count < 1 || count > 100000) {
        snprintf(err, errlen, "a PLAN write needs composition and segments");
        return CF_DB_INVALID;
    }
    cf_db_segment_plan_t *plan = calloc(count, sizeof *plan);
    if (!plan) {
        snprintf(err, errlen, "out of memory");
        return CF_DB_ERROR;
    }
    size_t i;
    json_t *seg;
    json_array_foreach(segments, i, seg)
    {
        plan[i] =
            (cf_db_segment_plan_t){(int)json_integer_value(json_object_get(seg, "idx")),
                                   json_integer_value(json_object_get(seg, "frame_start")),
                                   json_integer_value(json_object_get(seg, "frame_end")), NULL};
    }
    int rc =
        cf_db_segments_create_fenced(self->pool, &job->token, id, plan, (int)count, err, errlen);
    free(plan);
    return rc;
}

/* A STATE, SEGMENT or PLAN write through the state pool. Its own timeouts
 * bound it; the fence in its statement refuses it once the lease is over,
 * however late it runs. */
static const char *s_pool_write(s_self_t *self, const s_job_t *job, char *err, size_t errlen)
{
    if (!self->pool) {
        snprintf(err, errlen, "this node has no state pool for %s writes", s_kind_names[job->kind]);
        return "error";
    }
    json_error_t jerr;
    json_t *doc = json_loads(job->subject, 0, &jerr);
    if (!json_is_object(doc)) {
        json_decref(doc);
        snprintf(err, errlen, "a %s write is not a JSON object", s_kind_names[job->kind]);
        return "error";
    }
    int rc = job->kind == S_STATE     ? s_write_state(self, job, doc, err, errlen)
             : job->kind == S_SEGMENT ? s_write_segment(self, job, doc, err, errlen)
                                      : s_write_plan(self, job, doc, err, errlen);
    json_decref(doc);
    return s_pool_verdict(rc);
}

/* Tries the oldest job once. */
static void s_attempt(s_self_t *self)
{
    s_job_t *job = zlistx_first(self->jobs);
    if (!job)
        return;
    int64_t now = cf_election_clock_ms();
    if (job->token.epoch != self->lease_epoch) {
        s_drop_deposed(self);
        return;
    }
    int64_t left = self->lease_deadline_ms - now;
    if (left < S_MIN_ATTEMPT_MS) {
        cf_log_warn("fence",
                    "gave up a %s write of epoch %" PRId64
                    " after %d attempt(s): its lease ran out first",
                    s_kind_names[job->kind], job->token.epoch, job->attempts);
        s_finish(self, job, "expired", NULL);
        return;
    }
    int timeout = left < S_ATTEMPT_TIMEOUT_MS ? (int)left : S_ATTEMPT_TIMEOUT_MS;
    job->attempts++;
    char err[512] = "", *gone = NULL;
    const char *verdict = NULL;
    if (job->kind == S_VIEW || job->kind == S_SWEEP) {
        cf_dbc_fence_t fence = CF_DBC_FENCE_STALE;
        int rc = job->kind == S_VIEW
                     ? cf_db_cluster_publish_view(self->db, &job->token, job->subject, &fence,
                                                  timeout, err, sizeof err)
                     : cf_db_cluster_sweep_gone(self->db, &job->token, &fence, &gone, timeout, err,
                                                sizeof err);
        if (rc == CF_DBC_OK)
            verdict = fence == CF_DBC_FENCE_PASSED ? "passed" : "stale";
        else if (rc == CF_DBC_ERROR)
            verdict = "error";
    } else {
        verdict = s_pool_write(self, job, err, sizeof err);
    }
    if (!verdict) {
        if (!self->warned)
            cf_log_warn("fence", "coordinator write of epoch %" PRId64 " waits for Postgres: %s",
                        job->token.epoch, err);
        self->warned = true;
        self->retry_at_ms = cf_election_clock_ms() + self->retry_ms;
        self->retry_ms = self->retry_ms * 2 > S_RETRY_MAX_MS ? S_RETRY_MAX_MS : self->retry_ms * 2;
        return;
    }
    self->warned = false;
    self->retry_ms = S_RETRY_MIN_MS;
    if (!strcmp(verdict, "error"))
        cf_log_error("fence", "coordinator %s write failed: %s", s_kind_names[job->kind], err);
    else if (!strcmp(verdict, "stale"))
        cf_log_warn("fence",
                    "refused a %s write of epoch %" PRId64
                    " after %d attempt(s): that epoch no longer holds the lease",
                    s_kind_names[job->kind], job->token.epoch, job->attempts);
    else if (!strcmp(verdict, "illegal"))
        cf_log_info("fence", "a %s write of epoch %" PRId64 " changed nothing: %s",
                    s_kind_names[job->kind], job->token.epoch, err);
    else if (gone)
        cf_log_info("fence", "recorded the departure of %s (epoch %" PRId64 ")", gone,
                    job->token.epoch);
    s_finish(self, job, verdict, job->kind == S_SWEEP ? (gone ? gone : "") : NULL);
    free(gone);
}

typedef struct {
    char *url;
    cf_db_t *pool;
    int interrupt_fd;
} s_args_t;

static void s_actor(zsock_t *pipe, void *arg)
{
    s_args_t *args = arg;
    s_self_t self = {.pipe = pipe, .pool = args->pool, .retry_ms = S_RETRY_MIN_MS};
    self.db = cf_db_cluster_new(args->url);
    if (self.db)
        cf_db_cluster_set_interrupt(self.db, args->interrupt_fd);
    self.jobs = zlistx_new();
    zlistx_set_destructor(self.jobs, (zlistx_destructor_fn *)s_job_destroy);
    zsock_signal(pipe, 0);
    while (self.db && self.jobs && !self.terminated) {
        int64_t now = cf_election_clock_ms();
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
        if (zlistx_size(self.jobs) && cf_election_clock_ms() >= self.retry_at_ms)
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

zactor_t *cf_election_fence_new(const cf_election_fence_args_t *args)
{
    s_args_t *copy = calloc(1, sizeof *copy);
    if (!copy || !(copy->url = strdup(args->database_url))) {
        free(copy);
        return NULL;
    }
    copy->pool = args->pool;
    copy->interrupt_fd = args->interrupt_fd;
    zactor_t *actor = zactor_new(s_actor, copy);
    if (!actor) {
        free(copy->url);
        free(copy);
    }
    return actor;
}
