/* cf_node_lease: the node actor's coordination half: the epochs it has
 * seen, the lease its election holds, the membership the registry judges,
 * and the coordinator's fenced writes (cf_election_fence). Runs on the node
 * actor's thread. See cf_node_actor_internal.h. */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_election.h"
#include "cf_log.h"
#include "cf_node_actor_internal.h"

void cf_nactor_set_shared_epoch(cf_nactor_t *self)
{
    cf_node_set_coordinator_epoch(self->node, self->leader ? (int64_t)self->my_epoch : 0);
}

/* Tells the fence actor which lease the node acts under (epoch 0: none):
 * its queued writes of any other epoch are dropped. */
void cf_nactor_tell_fence_lease(cf_nactor_t *self)
{
    zsock_send(self->fence, "s8s8", "LEASE", self->leader ? (uint64_t)self->my_epoch : 0,
               self->my_id, self->leader ? (uint64_t)self->lease_deadline_ms : 0);
}

/* This node stops acting as coordinator now (WHY logged). */
void cf_nactor_lose_lease(cf_nactor_t *self, const char *why)
{
    if (!self->leader)
        return;
    cf_log_warn("node", "no longer coordinator (epoch %" PRIu64 "): %s", self->my_epoch, why);
    self->leader = false;
    cf_nactor_count(self, CF_NODE_LEASES_LOST);
    cf_nactor_set_shared_epoch(self);
    cf_nactor_tell_fence_lease(self);
    self->dirty = true;
}

/* Records EPOCH as seen, and tells the election (its next acquisition goes
 * above it). A coordinator that sees a newer epoch than its own has been
 * replaced, or its lease row was reset below what peers saw; either way it
 * stops now, whatever its lease thread believes. */
void cf_nactor_see_epoch(cf_nactor_t *self, uint64_t epoch)
{
    if (epoch <= self->highest_epoch)
        return;
    self->highest_epoch = epoch;
    self->dirty = true;
    zstr_sendfm(self->election, "SEEN");
    zstr_sendf(self->election, "%" PRIu64, epoch);
    if (self->leader && epoch > self->my_epoch) {
        char why[64];
        snprintf(why, sizeof why, "epoch %" PRIu64 " exists", epoch);
        cf_nactor_lose_lease(self, why);
    }
}

/* The coordinator records departures judged by the database clock (every
 * node whose registry row is older than its grace), at takeover and then
 * with every view. */
void cf_nactor_queue_sweep(cf_nactor_t *self)
{
    if (!self->leader)
        return;
    zsock_send(self->fence, "s8ss", "SWEEP", (uint64_t)self->my_epoch, self->my_id, "");
    self->fence_pending++;
    self->dirty = true;
}

/* The membership Postgres judges, with the state of this coordinator's
 * links beside it. */
void cf_nactor_publish_view(cf_nactor_t *self)
{
    static const char *const link_names[] = {
        [CF_PEER_CONNECTING] = "connecting",
        [CF_PEER_ALIVE] = "alive",
        [CF_PEER_GONE] = "gone",
        [CF_PEER_LEFT] = "left",
    };
    json_t *links = json_object();
    json_object_set_new(links, self->my_id, json_string("self"));
    for (cf_peer_t *peer = zhashx_first(self->peers); peer; peer = zhashx_next(self->peers))
        if (cf_peer_id(peer)[0])
            json_object_set_new(links, cf_peer_id(peer),
                                json_string(link_names[cf_peer_state(peer)]));
    char *text = json_dumps(links, JSON_COMPACT);
    json_decref(links);
    if (!text)
        return;
    zsock_send(self->fence, "s8ss", "VIEW", (uint64_t)self->my_epoch, self->my_id, text);
    self->fence_pending++;
    free(text);
    cf_nactor_queue_sweep(self);
}

void cf_nactor_handle_election(cf_nactor_t *self)
{
    char *command = NULL, *holder = NULL;
    int held = 0;
    uint64_t epoch = 0;
    zmsg_t *msg = zmsg_recv(self->election);
    if (!msg)
        return;
    command = zmsg_popstr(msg);
    if (command && !strcmp(command, "DB")) {
        char *flag = zmsg_popstr(msg);
        self->db_reachable = flag && flag[0] == '1';
        free(flag);
        self->dirty = true;
    } else if (command && !strcmp(command, "LEASE")) {
        char *held_text = zmsg_popstr(msg);
        holder = zmsg_popstr(msg);
        char *epoch_text = zmsg_popstr(msg); /* czmq sends '8' as decimal text */
        char *deadline_text = zmsg_popstr(msg);
        held = held_text && held_text[0] == '1';
        epoch = epoch_text ? strtoull(epoch_text, NULL, 10) : 0;
        int64_t deadline = deadline_text ? strtoll(deadline_text, NULL, 10) : 0;
        free(epoch_text);
        free(held_text);
        free(deadline_text);
        snprintf(self->lease_holder, sizeof self->lease_holder, "%s",
                 held     ? self->my_id
                 : holder ? holder
                          : "");
        self->lease_epoch = epoch;
        /* An epoch above every one seen is ours to act on; so is the one
         * we already act on, or one nobody else announced. Any other
         * (another node announced it, or a higher one exists: the lease
         * row was reset below them) is released at once, and the election
         * acquires above it. Two coordinators never share an epoch. */
        bool ours = self->leader && self->my_epoch == epoch;
        bool acceptable = epoch > self->highest_epoch ||
                          (epoch == self->highest_epoch &&
                           (!self->coordinator[0] || !strcmp(self->coordinator, self->my_id)));
        if (held && ours) {
            self->lease_deadline_ms = deadline; /* a renewal */
            cf_nactor_tell_fence_lease(self);
        } else if (held && !acceptable) {
            cf_nactor_lose_lease(self, "its epoch is no longer current");
            cf_nactor_count(self, CF_NODE_LEASES_REFUSED);
            cf_log_warn("node",
                        "refused the lease at epoch %" PRIu64 ": epoch %" PRIu64
                        " is already in use (%s); released",
                        epoch, self->highest_epoch,
                        self->coordinator[0] ? self->coordinator : "by a peer");
            zstr_sendfm(self->election, "REFUSE");
            zstr_sendf(self->election, "%" PRIu64, epoch);
        } else if (held) {
            cf_nactor_see_epoch(self, epoch);
            self->leader = true;
            self->my_epoch = epoch;
            self->lease_deadline_ms = deadline;
            snprintf(self->coordinator, sizeof self->coordinator, "%s", self->my_id);
            cf_nactor_count(self, CF_NODE_ELECTIONS_WON);
            cf_log_info("node", "this node is the coordinator, epoch %" PRIu64, epoch);
            cf_nactor_tell_fence_lease(self);
            /* Tell everyone now; record the departures Postgres already
             * judges, including those while there was no coordinator. */
            for (cf_peer_t *peer = zhashx_first(self->peers); peer; peer = zhashx_next(self->peers))
                cf_nactor_send_leader(self, peer);
            cf_nactor_queue_sweep(self);
            self->next_view = 0;
        } else {
            cf_nactor_see_epoch(self, epoch);
            cf_nactor_lose_lease(self, "the lease is not ours");
            if (epoch >= self->highest_epoch && holder)
                snprintf(self->coordinator, sizeof self->coordinator, "%s", holder);
        }
        cf_nactor_set_shared_epoch(self);
        self->dirty = true;
    }
    free(command);
    free(holder);
    zmsg_destroy(&msg);
}

void cf_nactor_handle_registry(cf_nactor_t *self)
{
    zmsg_t *msg = zmsg_recv(self->registry);
    if (!msg)
        return;
    char *command = zmsg_popstr(msg);
    if (command && !strcmp(command, "PEER") && zmsg_size(msg) == 9) {
        char *id = zmsg_popstr(msg), *key = zmsg_popstr(msg), *control = zmsg_popstr(msg);
        char *http = zmsg_popstr(msg), *caps = zmsg_popstr(msg);
        char *free_slots = zmsg_popstr(msg), *in_flight = zmsg_popstr(msg);
        char *liveness = zmsg_popstr(msg), *age = zmsg_popstr(msg);
        uint8_t raw[32];
        if (id && key && control && http && caps && liveness && cf_key_from_z85(key, raw) == 0 &&
            cf_proto_is_uuid(id, strlen(id))) {
            /* Every row tells a known peer's liveness; only with registry
             * discovery does a row introduce a peer. */
            cf_peer_t *peer =
                self->cfg->registry_discovery
                    ? cf_nactor_peer_learn(self, id, key, control, http, CF_PEER_FROM_REGISTRY)
                    : cf_peer_table_find_id(self->peers, id);
            if (peer) {
                if (self->cfg->registry_discovery)
                    cf_peer_take_registry(peer, caps, free_slots ? atoi(free_slots) : 0,
                                          in_flight ? atoi(in_flight) : 0);
                if (strcmp(cf_peer_key(peer), key) == 0 &&
                    cf_peer_set_liveness(peer, liveness, age ? strtoll(age, NULL, 10) : 0,
                                         self->registry_round))
                    self->dirty = true;
            }
        }
        free(age);
        free(id);
        free(key);
        free(control);
        free(http);
        free(caps);
        free(free_slots);
        free(in_flight);
        free(liveness);
    } else if (command && !strcmp(command, "ROUND")) {
        char *read = zmsg_popstr(msg);
        bool was_read = self->registry_read;
        self->registry_read = read && read[0] == '1';
        free(read);
        if (cf_peer_table_liveness_end(self->peers, self->registry_round, self->registry_read) ||
            was_read != self->registry_read)
            self->dirty = true;
        self->registry_round++;
    } else if (command && !strcmp(command, "REJECTED")) {
        cf_nactor_count(self, CF_NODE_REGISTRY_REJECTED);
    }
    free(command);
    zmsg_destroy(&msg);
}

void cf_nactor_handle_fence(cf_nactor_t *self)
{
    char *command = NULL, *kind = NULL, *verdict = NULL, *subject = NULL;
    uint64_t epoch = 0;
    if (zsock_recv(self->fence, "sss8s", &command, &kind, &verdict, &epoch, &subject) < 0)
        return;
    if (command && !strcmp(command, "FENCE") && verdict) {
        if (self->fence_pending > 0)
            self->fence_pending--;
        if (!strcmp(verdict, "passed"))
            cf_nactor_count(self, CF_NODE_FENCED_WRITES_APPLIED);
        else if (!strcmp(verdict, "dropped") || !strcmp(verdict, "expired"))
            cf_nactor_count(self, CF_NODE_FENCED_WRITES_DROPPED);
        else if (!strcmp(verdict, "stale"))
            cf_nactor_count(self, CF_NODE_FENCED_WRITES_REJECTED);
        self->dirty = true;
    }
    free(command);
    free(kind);
    free(verdict);
    free(subject);
}
