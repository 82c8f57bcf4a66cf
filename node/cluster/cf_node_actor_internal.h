/* cf_node_actor_internal: PRIVATE to node/cluster/cf_node_actor*.c and
 * cf_node_lease.c, the two halves of the node actor: its state, and what one
 * half calls of the other. The node actor's only contract is
 * cf_node_actor.h. */
#ifndef CF_NODE_ACTOR_INTERNAL_H
#define CF_NODE_ACTOR_INTERNAL_H

#include <czmq.h>
#include <stdbool.h>
#include <stdint.h>

#include "cf_caps.h"
#include "cf_identity.h"
#include "cf_node.h"
#include "cf_node_actor.h"
#include "cf_node_config.h"
#include "cf_node_status.h"
#include "cf_peer.h"
#include "cf_proto.h"
#include "cf_zap.h"

/* The actor's state, owned by its thread. */
struct cf_nactor {
    zsock_t *pipe;
    cf_node_t *node; /* what other threads see */
    cf_node_config_t *cfg;
    cf_identity_t *identity;
    cf_secret_t *secret;
    cf_caps_t *caps;
    const char *my_id;
    bool terminated;
    bool started;

    zsock_t *router;
    zsock_t *work_out;   /* the work actors' outbox (PULL, cf_work_bus.h) */
    zsock_t *work_exec;  /* to the executor (PUSH) */
    zsock_t *work_coord; /* to the coordinator (PUSH) */
    cf_zap_t *zap;
    zactor_t *beacon;
    zactor_t *election;
    zactor_t *registry;
    zactor_t *fence;
    zactor_t *calibration; /* while it runs */
    int shutdown_fd;       /* eventfd, signalled to cut the database threads' calls short */

    zhashx_t *peers;     /* key -> cf_peer_t */
    cf_peer_link_t link; /* our side of every peer link */
    cf_node_status_t *status;

    /* Coordination. */
    bool leader;
    uint64_t my_epoch;
    int64_t lease_deadline_ms; /* CLOCK_BOOTTIME: coordinator until then */
    uint64_t highest_epoch;
    char coordinator[37]; /* of the highest epoch, "" while unknown */
    /* The lease row as the election last read it from Postgres: only its
     * holder may send this node an ASSIGN of its epoch. */
    char lease_holder[37];
    uint64_t lease_epoch;
    int fence_pending;
    bool db_reachable;
    bool registry_read; /* the last registry round could read the rows */
    unsigned registry_round;

    /* Timers (monotonic ms). */
    int64_t next_heartbeat, next_beacon, next_tick, next_status, next_view;
    int64_t started_ms;
    int64_t started_wall_ms;

    bool dirty;
    int last_free_slots, last_in_flight;
};
typedef struct cf_nactor cf_nactor_t;

static inline void cf_nactor_count(cf_nactor_t *self, cf_node_counter_t counter)
{
    cf_node_count(self->node, counter);
}

/* ------------------------------------------------ cf_node_actor.c */

/* Sends PEER a LEADER of this node's epoch. */
void cf_nactor_send_leader(cf_nactor_t *self, cf_peer_t *peer);

/* A peer learned from an authenticated source: see cf_peer_table_learn. */
cf_peer_t *cf_nactor_peer_learn(cf_nactor_t *self, const char *id, const char *key,
                                const char *control, const char *http, unsigned source);

/* ------------------------------------------------ cf_node_lease.c: epochs, the lease,
 * membership and the coordinator's fenced writes */

/* What other threads see of this node's epoch (cf_node_is_coordinator). */
void cf_nactor_set_shared_epoch(cf_nactor_t *self);

/* Tells the fence actor the lease this node acts under (epoch 0: none). */
void cf_nactor_tell_fence_lease(cf_nactor_t *self);

/* Stops acting as coordinator now (WHY logged); no-op when not. */
void cf_nactor_lose_lease(cf_nactor_t *self, const char *why);

/* Records EPOCH as seen (a peer's HEARTBEAT or LEADER, the lease). */
void cf_nactor_see_epoch(cf_nactor_t *self, uint64_t epoch);

/* The coordinator's periodic writes: the membership view and the sweep of
 * departures. */
void cf_nactor_publish_view(cf_nactor_t *self);
void cf_nactor_queue_sweep(cf_nactor_t *self);

/* A message from the election, registry or fence actor. */
void cf_nactor_handle_election(cf_nactor_t *self);
void cf_nactor_handle_registry(cf_nactor_t *self);
void cf_nactor_handle_fence(cf_nactor_t *self);

#endif
