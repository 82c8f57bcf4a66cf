/* cf_election_fence: the coordinator's writes to Postgres, each carrying the
 * fence token (epoch, holder) it was issued under and applied only while
 * that token still holds the lease, checked in SQL in the same statement
 * (cf_db_cluster.h, "fenced writes" in cf_db.h). An actor with its own
 * connection, so a slow or unreachable database never blocks the control
 * plane.
 *
 * A write lives only as long as the lease it was made under: the actor is
 * told the node's lease (LEASE) and drops every queued write of another
 * epoch at once ("dropped": the coordinator was deposed or stepped down),
 * and retries a write only until that lease's local deadline ("expired"
 * after it), each attempt bounded by the time left. So a decision never
 * lands long after it was made, and the SQL fence refuses whatever still
 * arrives late.
 *
 * Commands on its pipe (numbers as decimal text, as zsock_send sends them):
 *     "LEASE" epoch(8) holder(s) deadline(8)   the node's lease: epoch 0 when
 *                                              it holds none; deadline in ms
 *                                              on CLOCK_BOOTTIME
 *     "VIEW" epoch(8) holder(s) links(s)       publish the membership (links:
 *                                              JSON object id -> link state)
 *     "SWEEP" epoch(8) holder(s) ""            record departures (liveness)
 *     "STATE" epoch(8) holder(s) json(s)       composition transition:
 *                                              {"composition", "to",
 *                                               "error_code"?, "error_message"?}
 *     "SEGMENT" epoch(8) holder(s) json(s)     {"composition", "index",
 *                                               "assign": NODE} or
 *                                              {"composition", "index",
 *                                               "state"?, "progress"?, "node"?}
 *     "PLAN" epoch(8) holder(s) json(s)        {"composition", "segments":
 *                                               [{"idx", "frame_start",
 *                                                 "frame_end"}]}
 * A newer VIEW or SWEEP replaces a queued one. STATE, SEGMENT and PLAN need
 * the state pool given at start (otherwise "error").
 *
 * For every write it answers, in order, with
 *     "FENCE" kind(s) verdict(s) epoch(8) subject(s)
 * kind "view", "sweep", "state", "segment" or "plan"; verdict "passed" (the
 * write ran under a valid token), "stale" (the fence refused it: another
 * epoch or holder, or the lease expired in Postgres), "illegal" (a
 * composition or segment state refused it), "superseded" (a newer VIEW or
 * SWEEP replaced it), "dropped" (the node's lease is no longer that epoch),
 * "expired" (the lease's deadline passed before Postgres answered) or
 * "error" (the statement failed; logged). subject: the composition, or for
 * a sweep the node ids whose departure it recorded (comma-separated). */
#ifndef CF_ELECTION_FENCE_H
#define CF_ELECTION_FENCE_H

#include <czmq.h>

#include "cf_db.h"

typedef struct {
    const char *database_url; /* the lease and registry tables (copied) */
    cf_db_t *pool;            /* the state pool for STATE/SEGMENT/PLAN (borrowed,
                                 thread-safe, may be NULL) */
    int interrupt_fd;         /* readable when the node shuts down (-1: none): ends
                                 a pending call at once */
} cf_election_fence_args_t;

/* Starts the actor. NULL when out of memory. */
zactor_t *cf_election_fence_new(const cf_election_fence_args_t *args);

#endif
