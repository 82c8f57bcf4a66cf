#define _GNU_SOURCE
#include "cf_election.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cf_db_cluster.h"
#include "cf_log.h"

#define S_RELEASE_TIMEOUT_MS 500
#define S_FOLLOWER_MAX_WAIT  1000

typedef struct {
    char *url;
    char node_id[37];
    int ttl_ms;
    int interrupt_fd;
} s_args_t;

typedef struct {
    zsock_t *pipe;
    s_args_t *args;
    cf_db_cluster_t *db;
    bool terminated;
    /* What we hold. */
    bool leader;
    int64_t my_epoch;
    int64_t deadline_ms; /* CLOCK_BOOTTIME: stop being coordinator at this time */
    /* The highest epoch known to be in use: the row's, and what the node
     * saw (SEEN) or refused (REFUSE: counts as one above). A lease of ours
     * below it is bumped above it on the next attempt. Our own lease, when
     * the database still shows it unexpired under our token (a renewal that
     * was only slow, an answer that was lost), is renewed or adopted. */
    int64_t seen_epoch;
    /* What we last reported. */
    bool reported_held;
    char reported_holder[37];
    int64_t reported_epoch;
    int64_t reported_deadline;
    bool db_reachable;
    bool db_reported;
    int64_t next_attempt_ms;
} s_self_t;

int64_t cf_election_clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_report(s_self_t *self, bool held, const char *holder, int64_t epoch)
{
    int64_t deadline = held ? self->deadline_ms : 0;
    if (self->reported_held == held && self->reported_epoch == epoch &&
        self->reported_deadline == deadline && !strcmp(self->reported_holder, holder))
        return;
    self->reported_held = held;
    self->reported_epoch = epoch;
    self->reported_deadline = deadline;
    snprintf(self->reported_holder, sizeof self->reported_holder, "%s", holder);
    zsock_send(self->pipe, "sis88", "LEASE", held ? 1 : 0, holder, (uint64_t)epoch,
               (uint64_t)deadline);
}

static void s_report_db(s_self_t *self, bool reachable, const char *reason)
{
    if (self->db_reported && self->db_reachable == reachable)
        return;
    self->db_reported = true;
    self->db_reachable = reachable;
    if (reachable)
        cf_log_info("election", "Postgres reachable");
    else
        cf_log_warn("election", "Postgres unreachable: %s", reason);
    zsock_send(self->pipe, "sis", "DB", reachable ? 1 : 0, reason);
}

static void s_step_down(s_self_t *self, const char *why, const char *holder, int64_t epoch)
{
    if (self->leader)
        cf_log_warn("election", "no longer coordinator (epoch %" PRId64 "): %s", self->my_epoch,
                    why);
    self->leader = false;
    self->my_epoch = 0;
    s_report(self, false, holder, epoch);
}

static void s_attempt(s_self_t *self)
{
    int ttl = self->args->ttl_ms;
    int64_t sent = cf_election_clock_ms();
    /* A holder must learn the outcome before its deadline; a follower has
     * no deadline but should not hang for long either. */
    int timeout = ttl / 2;
    if (self->leader && self->deadline_ms - sent < timeout)
        timeout = (int)(self->deadline_ms - sent);
    if (timeout < 50)
        timeout = 50;
    cf_db_lease_t lease;
    char err[512];
    int rc = cf_db_cluster_lease_acquire(self->db, self->args->node_id, self->seen_epoch, ttl,
                                         &lease, timeout, err, sizeof err);
    int64_t now = cf_election_clock_ms();
    if (rc != CF_DBC_OK) {
        s_report_db(self, false, err);
        /* A holder keeps trying until its deadline; a follower backs off. */
        self->next_attempt_ms = now + (self->leader ? ttl / 10 : ttl / 3);
        return;
    }
    s_report_db(self, true, "");
    if (lease.epoch > self->seen_epoch)
        self->seen_epoch = lease.epoch;
    if (lease.held) {
        if (!self->leader || self->my_epoch != lease.epoch)
            cf_log_info("election", "coordinator now, epoch %" PRId64, lease.epoch);
        self->leader = true;
        self->my_epoch = lease.epoch;
        self->deadline_ms = sent + (int64_t)(ttl * CF_ELECTION_DEADLINE_FRACTION);
        self->next_attempt_ms = now + (int64_t)(ttl * CF_ELECTION_RENEW_FRACTION);
        s_report(self, true, self->args->node_id, lease.epoch);
        return;
    }
    if (self->leader)
        s_step_down(self, "the lease is held by another node", lease.holder, lease.epoch);
    s_report(self, false, lease.holder, lease.epoch);
    /* Try again right after the current lease runs out. */
    int64_t wait = lease.remaining_ms + 20;
    if (wait < 20)
        wait = 20;
    if (wait > S_FOLLOWER_MAX_WAIT)
        wait = S_FOLLOWER_MAX_WAIT;
    self->next_attempt_ms = now + wait;
}

/* The node will not act on EPOCH: give it up now (others may take the
 * lease at once) and make sure the next acquisition is above it. */
static void s_refuse(s_self_t *self, int64_t epoch)
{
    if (epoch + 1 > self->seen_epoch)
        self->seen_epoch = epoch + 1;
    if (self->leader && self->my_epoch == epoch) {
        char err[512];
        bool released = false;
        int timeout = self->args->ttl_ms / 4 < S_RELEASE_TIMEOUT_MS ? self->args->ttl_ms / 4
                                                                    : S_RELEASE_TIMEOUT_MS;
        if (cf_db_cluster_lease_release(self->db, self->args->node_id, epoch, &released, timeout,
                                        err, sizeof err) != CF_DBC_OK)
            cf_log_warn("election", "could not release epoch %" PRId64 ": %s", epoch, err);
        s_step_down(self, "the node will not act on this epoch (already announced)", "", epoch);
    }
    self->next_attempt_ms = cf_election_clock_ms();
}

static void s_handle_pipe(s_self_t *self)
{
    char *command = NULL;
    uint64_t epoch = 0;
    zmsg_t *msg = zmsg_recv(self->pipe);
    if (!msg) {
        self->terminated = true;
        return;
    }
    command = zmsg_popstr(msg);
    char *text = command && strcmp(command, "$TERM") ? zmsg_popstr(msg) : NULL;
    epoch = text ? strtoull(text, NULL, 10) : 0;
    free(text);
    if (command && !strcmp(command, "$TERM")) {
        self->terminated = true;
    } else if (command && !strcmp(command, "RETRY")) {
        /* The holder said goodbye: its lease is free, try now. */
        self->next_attempt_ms = cf_election_clock_ms();
    } else if (command && !strcmp(command, "SEEN")) {
        if ((int64_t)epoch > self->seen_epoch)
            self->seen_epoch = (int64_t)epoch;
        if (self->leader && (int64_t)epoch > self->my_epoch) {
            char why[96];
            snprintf(why, sizeof why, "a peer announced epoch %" PRIu64, epoch);
            s_step_down(self, why, "", (int64_t)epoch);
            /* Try at once: if the row is still ours (it was reset below
             * what the peers saw), it is bumped above their epoch. */
            self->next_attempt_ms = cf_election_clock_ms();
        }
    } else if (command && !strcmp(command, "REFUSE")) {
        s_refuse(self, (int64_t)epoch);
    }
    free(command);
    zmsg_destroy(&msg);
}

static void s_actor(zsock_t *pipe, void *arg)
{
    s_self_t self = {.pipe = pipe, .args = arg};
    self.db = cf_db_cluster_new(self.args->url);
    if (self.db)
        cf_db_cluster_set_interrupt(self.db, self.args->interrupt_fd);
    zsock_signal(pipe, 0);
    while (self.db && !self.terminated) {
        int64_t now = cf_election_clock_ms();
        if (self.leader && now >= self.deadline_ms)
            s_step_down(&self, "renewal not confirmed in time", "", self.my_epoch);
        if (now >= self.next_attempt_ms) {
            s_attempt(&self);
            continue;
        }
        int64_t wake = self.next_attempt_ms;
        if (self.leader && self.deadline_ms < wake)
            wake = self.deadline_ms;
        zmq_pollitem_t items[] = {{zsock_resolve(pipe), 0, ZMQ_POLLIN, 0}};
        long timeout = (long)(wake - now);
        if (zmq_poll(items, 1, timeout < 0 ? 0 : timeout) < 0)
            break;
        if (items[0].revents & ZMQ_POLLIN)
            s_handle_pipe(&self);
    }
    if (self.leader) {
        /* The release is the one call that must still be tried. */
        cf_db_cluster_set_interrupt(self.db, -1);
        char err[512];
        bool released = false;
        if (cf_db_cluster_lease_release(self.db, self.args->node_id, self.my_epoch, &released,
                                        S_RELEASE_TIMEOUT_MS, err, sizeof err) == CF_DBC_OK)
            cf_log_info("election", "lease released (epoch %" PRId64 ")%s", self.my_epoch,
                        released ? "" : ": it was no longer ours");
        else
            cf_log_warn("election", "could not release the lease (it expires on its own): %s", err);
    }
    cf_db_cluster_destroy(&self.db);
    free(self.args->url);
    free(self.args);
}

zactor_t *cf_election_new(const cf_election_args_t *args)
{
    s_args_t *copy = calloc(1, sizeof *copy);
    if (!copy || !(copy->url = strdup(args->database_url))) {
        free(copy);
        return NULL;
    }
    snprintf(copy->node_id, sizeof copy->node_id, "%s", args->node_id);
    copy->ttl_ms = args->ttl_ms;
    copy->interrupt_fd = args->interrupt_fd;
    zactor_t *actor = zactor_new(s_actor, copy);
    if (!actor) {
        free(copy->url);
        free(copy);
    }
    return actor;
}
