/* cf_discovery: the Postgres node registry, the discovery path that works
 * where UDP broadcast does not. An actor with its own connection: every
 * interval it upserts this node's row and reads the rows of the others seen
 * recently, passing on those whose MAC verifies under the cluster secret.
 * (Beacons, the other path, are handled by the node actor with zbeacon.)
 *
 * The row carries the node's grace (grace_ms): Postgres judges every node's
 * liveness from last_seen by its own clock against it (sql/022), the one
 * membership rule of the cluster, so every reader sees the same.
 *
 * Commands on its pipe:
 *     "SELF" capabilities(s: JSON) free_slots(i) in_flight(i)
 * Messages it sends:
 *     "PEER" id key control http capabilities free_slots(i) in_flight(i)
 *            liveness age_ms(8)      a row that authenticated (liveness: up
 *                                    or gone, by the database clock)
 *     "ROUND" read(i)                a round is over (read 0: the rows could
 *                                    not be read)
 *     "REJECTED" id                  a row whose MAC did not verify (once
 *                                    per id and MAC)
 *     "DB" reachable(i) reason
 * On $TERM it marks the row left (within 500 ms) and exits. */
#ifndef CF_DISCOVERY_H
#define CF_DISCOVERY_H

#include <czmq.h>

#include "cf_identity.h"

typedef struct {
    const char *database_url;
    const char *node_id;
    const char *public_key; /* Z85 */
    const char *control_endpoint;
    const char *http_endpoint;
    const char *capabilities;  /* JSON text */
    const cf_secret_t *secret; /* borrowed, read-only, must outlive the actor */
    int interval_ms;
    int max_age_ms;   /* rows not refreshed for this long are not read */
    int grace_ms;     /* this node counts as gone this long after its last upsert */
    bool read_peers;  /* false: only publish this node's row */
    int interrupt_fd; /* readable when the node shuts down (-1: none) */
} cf_discovery_args_t;

/* Starts the registry actor (ARGS copied, except secret). NULL on failure. */
zactor_t *cf_discovery_new(const cf_discovery_args_t *args);

/* The MAC of a registry row: hex crypto_auth of
 * "clipfarm-node-v1\n" ID "\n" CONTROL "\n" HTTP "\n" KEY under the secret. */
void cf_discovery_row_mac(const cf_secret_t *secret, const char *id, const char *control,
                          const char *http, const char *key, char out[CF_MAC_HEX_LEN]);
bool cf_discovery_row_verify(const cf_secret_t *secret, const char *id, const char *control,
                             const char *http, const char *key, const char *mac);

#endif
