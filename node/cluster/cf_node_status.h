/* cf_node_status: what a node tells its operator about itself. The status
 * file (the snapshot as JSON, replaced whole on every change), the state
 * line (role, epoch, coordinator, live peers: logged when it changes) and
 * the start and capabilities lines, all also printed on stdout when the
 * operator asked for --print-state. Its file also holds the counters' names
 * and help (cf_node_counter_name, cf_node_counter_help in cf_node.h).
 *
 * A cf_node_status_t belongs to the node actor's thread. */
#ifndef CF_NODE_STATUS_H
#define CF_NODE_STATUS_H

#include <czmq.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "cf_caps.h"
#include "cf_node.h"
#include "cf_node_config.h"

typedef struct cf_node_status_t cf_node_status_t;

/* Reports for node NODE_ID as CFG says (status file, --print-state; both
 * copied). NULL when out of memory. */
cf_node_status_t *cf_node_status_new(const char *node_id, const cf_node_config_t *cfg);

/* Safe on NULL; NULLs *self_p. */
void cf_node_status_destroy(cf_node_status_t **self_p);

/* Replaces the status file, if there is one, with SNAPSHOT (written to a
 * temporary file, then renamed; a failure is logged). */
void cf_node_status_write(cf_node_status_t *self, json_t *snapshot);

/* Logs (and prints) the state line when it differs from the last one:
 * COORDINATOR says whether this node is, EPOCH is the highest seen,
 * COORDINATOR_ID the known coordinator ("": none), the live peers come
 * from PEERS (a cf_peer table). */
void cf_node_status_state(cf_node_status_t *self, bool coordinator, uint64_t epoch,
                          const char *coordinator_id, zhashx_t *peers);

/* Logs (and prints) the capabilities line. */
void cf_node_status_caps(cf_node_status_t *self, const cf_caps_t *caps);

/* Logs (and prints) that the node listens as CFG says, with PUBLIC_KEY,
 * beaconing or not. */
void cf_node_status_started(cf_node_status_t *self, const cf_node_config_t *cfg,
                            const char *public_key, bool beacons);

/* Every counter of NODE by name, as a new JSON object (caller decrefs). */
json_t *cf_node_status_counters(cf_node_t *node);

#endif
