/* cf_coordinator: the cluster's scheduler, active only on the node that
 * holds the coordinator lease (it watches the lease and starts or stops
 * itself with it). While active it
 *
 *   - takes compositions from the Redis intake (high before default before
 *     low), prepares them (fetch, probe, plan in frames: the render stages'
 *     prepare) on a planning thread and persists their tasks (one per
 *     segment, one for the timeline's audio, one for the assembly);
 *   - dispatches pending tasks with cf_schedule (capability, speed, free
 *     slots, longest first) as ASSIGN messages, and records each
 *     assignment in Postgres before sending it;
 *   - takes the workers' ACCEPT / REJECT / PROGRESS / DONE / FAILED,
 *     accepting a result only with its assignment token;
 *   - sends a task back to pending when its node is gone (heartbeat grace)
 *     or never answered, fails a composition whose task exhausted its
 *     tries, hands the assembly to the node holding the most segment bytes
 *     and completes the composition with the output it stored;
 *   - tells workers to CANCEL the tasks of cancelled compositions.
 *
 * It holds no state Postgres does not: every tick reads the work list, so
 * a new coordinator (after a takeover that voids the old epoch's
 * assignments) carries on from the database. Every write is fenced by the
 * lease (cf_db_work.h). */
#ifndef CF_COORDINATOR_H
#define CF_COORDINATOR_H

#include <stddef.h>
#include <stdint.h>

#include "cf_render.h"

typedef struct cf_coordinator_t cf_coordinator_t;
typedef struct cf_node_t cf_node_t;
typedef struct cf_db cf_db_t;
typedef struct cf_metrics_t cf_metrics_t;

typedef struct {
    cf_node_t *node; /* required: the lease, the membership, the work bus */
    cf_db_t *db;     /* required */
    const char *redis_url;
    const char *redis_prefix;
    /* What planning may fetch (policy, S3, the source cache, blob
     * resolver, a parent directory for its workspaces). */
    cf_render_opts_t prepare;
    int accept_timeout_ms; /* an ASSIGN not answered in this time is sent elsewhere (10000) */
    int tick_ms;           /* dispatch round (100) */
} cf_coordinator_options_t;

void cf_coordinator_options_default(cf_coordinator_options_t *opts);

/* Starts the coordinator's thread (idle until this node holds the lease).
 * Returns NULL with a reason in err. */
cf_coordinator_t *cf_coordinator_new(const cf_coordinator_options_t *opts, char *err,
                                     size_t errlen);

/* Stops it (a planning in progress is abandoned: the next coordinator
 * plans it again). Safe on NULL; NULLs *self_p. */
void cf_coordinator_destroy(cf_coordinator_t **self_p);

typedef struct {
    uint64_t takeovers; /* times it became active */
    uint64_t planned;   /* compositions planned */
    uint64_t assigned;  /* ASSIGN sent */
    uint64_t rejected;  /* REJECT received */
    uint64_t done;      /* results accepted */
    uint64_t discarded; /* results refused (stale token, duplicate, deposed) */
    uint64_t retried;   /* tasks sent back to pending */
    uint64_t failed;    /* compositions failed by a task */
    uint64_t completed; /* compositions completed */
} cf_coordinator_stats_t;

void cf_coordinator_stats(cf_coordinator_t *self, cf_coordinator_stats_t *stats);

#endif
