/* cf_node_actor: the thread behind cf_node_t, as zyre_node is behind zyre_t.
 * It owns the control plane: the CURVE ROUTER peers talk to, the peer table
 * (cf_peer), the ZAP handler (cf_zap), the zbeacon actor, the three Postgres
 * actors (election, registry, fenced writes) and, while it runs, the
 * calibration actor; it tells the operator what it does (cf_node_status).
 *
 * cf_node_new starts it with zactor_new(cf_node_actor, args). It signals
 * once running, then answers "OK" when the node is up, or a one-line reason
 * when it could not start, and then ends. On $TERM it leaves the cluster
 * (bounded time) and ends.
 *
 * What other threads read, the actor writes into the cf_node_t through the
 * functions at the bottom (cf_node.c): the snapshot under a mutex, the
 * counters and the coordinator epoch as atomics. */
#ifndef CF_NODE_ACTOR_H
#define CF_NODE_ACTOR_H

#include <czmq.h>
#include <jansson.h>

#include "cf_caps.h"
#include "cf_identity.h"
#include "cf_node.h"
#include "cf_node_config.h"

typedef struct {
    cf_node_t *node; /* borrowed: it outlives the actor */
    cf_node_config_t *cfg;
    cf_identity_t *identity;
    cf_secret_t *secret;
    cf_caps_t *caps;
} cf_node_actor_args_t;

/* The actor. ARGS is a heap cf_node_actor_args_t: the actor takes it, and
 * what it holds but NODE, whatever happens. */
void cf_node_actor(zsock_t *pipe, void *args);

/* ---------------------------------------------- the actor's side of cf_node_t
 * Safe from any thread. */

/* Adds one to COUNTER. */
void cf_node_count(cf_node_t *self, cf_node_counter_t counter);

/* Replaces the snapshot cf_node_snapshot copies with *SNAPSHOT_P (taken;
 * NULLs it). */
void cf_node_publish(cf_node_t *self, json_t **snapshot_p);

/* What cf_node_set_load last said (free slots, segments in flight). */
void cf_node_load(cf_node_t *self, int *free_slots_p, int *in_flight_p);

/* The epoch this node holds the coordinator lease under, 0: none. */
void cf_node_set_coordinator_epoch(cf_node_t *self, int64_t epoch);

#endif
