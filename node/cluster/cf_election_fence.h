/* cf_election_fence: the coordinator's writes to Postgres, each carrying the
 * epoch it was issued under and applied only while that epoch still holds
 * the lease (cf_db_cluster_mark_gone, cf_db_cluster_publish_view). An actor
 * with its own connection, so a slow or unreachable database never blocks
 * the control plane; it retries a write until the database answers, and the
 * answer for a deposed coordinator's write, however late, is "stale".
 *
 * Commands on its pipe:
 *     "GONE" epoch(8) coordinator(s) node(s)      mark NODE gone
 *     "VIEW" epoch(8) coordinator(s) members(s)   publish the membership; a
 *                                                 newer VIEW replaces a
 *                                                 queued one
 * For every command it answers, in order, with
 *     "FENCE" kind(s) verdict(s) epoch(8) subject(s)
 * kind "gone" or "view"; verdict "passed" (the write ran under a valid
 * epoch), "stale" (refused: another epoch holds the lease), "superseded"
 * (a newer VIEW replaced it before it got through), "error" (the statement
 * failed; logged) or "expired" (the database stayed away for 10 minutes). */
#ifndef CF_ELECTION_FENCE_H
#define CF_ELECTION_FENCE_H

#include <czmq.h>

/* Starts the actor for DATABASE_URL (copied). INTERRUPT_FD (-1: none) is
 * readable when the node shuts down: it ends a pending call at once. NULL
 * when out of memory. */
zactor_t *cf_election_fence_new(const char *database_url, int interrupt_fd);

#endif
