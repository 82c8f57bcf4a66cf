/* cf_election: the coordinator election, an actor (its own thread and
 * Postgres connection) that competes for the lease row in coordinator_lease.
 *
 * Acquiring a free or expired lease increments its epoch, the fencing token.
 * The holder renews every TTL/3. It considers itself coordinator only until
 * 80 % of the TTL after it *sent* its last confirmed renewal: the database
 * starts the row's TTL later than that, so the old holder has stepped down
 * before anyone else can acquire, even when Postgres cannot be reached (every
 * call here is bounded by that deadline). Followers retry right after the
 * current lease expires, so a dead coordinator is replaced within about TTL.
 *
 * The actor sends on its pipe, whenever the picture changes:
 *     "LEASE" held(i) holder(s) epoch(8)
 * (held: this node is coordinator; holder "" when nobody holds it) and
 *     "DB" reachable(i) reason(s)
 * It accepts "DEPOSED" epoch(8): a newer epoch was seen elsewhere, stop
 * acting as coordinator now; and "RETRY": try for the lease now (its holder
 * just left). On $TERM it releases the lease if held (within
 * 500 ms) and exits. */
#ifndef CF_ELECTION_H
#define CF_ELECTION_H

#include <czmq.h>

typedef struct {
    const char *database_url;
    const char *node_id;
    int ttl_ms;
    int interrupt_fd; /* readable when the node shuts down (-1: none): ends any
                         database call at once */
} cf_election_args_t;

/* Starts the election actor (ARGS are copied). NULL when out of memory. */
zactor_t *cf_election_new(const cf_election_args_t *args);

/* The local deadline as a fraction of the TTL, and the renewal period. */
#define CF_ELECTION_DEADLINE_FRACTION 0.8
#define CF_ELECTION_RENEW_FRACTION    (1.0 / 3.0)

#endif
