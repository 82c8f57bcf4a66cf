/* cf_election: the coordinator election, an actor (its own thread and
 * Postgres connection) that competes for the lease row in coordinator_lease.
 *
 * Acquiring a free or expired lease sets its epoch, the fencing token, above
 * every epoch known to have been used (the row's, the highest this node has
 * seen, the published view's), so epochs never repeat, even after the row
 * was reset to a lower one. The holder renews every TTL/3. It considers
 * itself coordinator only until 80 % of the TTL after it *sent* its last
 * confirmed renewal: the database starts the row's TTL later than that, so
 * the old holder has stepped down before anyone else can acquire, even when
 * Postgres cannot be reached (every call here is bounded by that deadline,
 * and the server's statement timeout is below it). Deadlines run on
 * CLOCK_BOOTTIME, which counts a host's suspended time. The margin assumes
 * the node's clock and the database's run at the same rate within 20 % over
 * one TTL; a process that is paused (SIGSTOP, a frozen VM) past its deadline
 * is caught by the fence every coordinator write carries in SQL, which is the
 * real authority. Followers retry right after the current lease expires, so
 * a dead coordinator is replaced within about TTL.
 *
 * The lease row records this process's token (cf_db_cluster_token): when
 * an acquire commits but its answer is lost, the next attempt finds the
 * token and adopts the lease at once instead of waiting for it to expire.
 *
 * The actor sends on its pipe, whenever the picture changes (and after
 * every renewal, with the new deadline):
 *     "LEASE" held(i) holder(s) epoch(8) deadline(8)
 * (held: this node is coordinator until deadline, milliseconds on
 * CLOCK_BOOTTIME, 0 when not held; holder "" when nobody holds it) and
 *     "DB" reachable(i) reason(s)
 * It accepts
 *     "SEEN" epoch(8)    the node saw this epoch in use (peers): held below
 *                        it, stop acting as coordinator now and try again
 *                        at once (the row is bumped above it if still ours);
 *     "REFUSE" epoch(8)  the node will not act on this epoch (another node
 *                        announced it): release it now and acquire above it;
 *     "RETRY"            try for the lease now (its holder just left).
 * On $TERM it releases the lease if held (within 500 ms) and exits. */
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

/* Milliseconds on CLOCK_BOOTTIME: the clock of every lease deadline. */
int64_t cf_election_clock_ms(void);

/* The local deadline as a fraction of the TTL, and the renewal period. */
#define CF_ELECTION_DEADLINE_FRACTION 0.8
#define CF_ELECTION_RENEW_FRACTION    (1.0 / 3.0)

#endif
