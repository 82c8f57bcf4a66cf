/* cf_queue: the Redis intake queue (hiredis), consumer and node liveness.
 *
 * Postgres is the source of truth; Redis may lose everything at any moment
 * without losing a composition:
 *   - producers store a composition in Postgres (queued), then push its id on
 *     the intake list of its priority (PREFIX q:high, q:default, q:low);
 *   - a consumer moves one item (by priority and age, below) into its own
 *     processing list (PREFIX q:proc:CONSUMER) atomically, applies its effect
 *     in Postgres (cf_db_composition_claim: idempotent, a duplicate is
 *     refused), and only then acks (removes it from the processing list);
 *     a composition whose consumer dies after that is not the queue's
 *     business any more: its claim expires and the coordinator pushes it
 *     again (cf_db_claims_expire);
 *   - a consumer proves it is alive with a heartbeat key with a TTL; the
 *     reaper moves the processing list of a consumer whose key expired back
 *     to the head of the intake lists;
 *   - the reconcile loop pushes again every composition Postgres says is
 *     queued but no Redis list holds (after FLUSHALL or a Redis restart).
 *     Duplicates are harmless because taking is idempotent in Postgres.
 *
 * Taking in priority order, with aging: every item carries the time it was
 * pushed (Redis' clock, one clock for every node). An item of class c
 * (high 0, default 1, low 2) pushed at time t is served as if it were a
 * high item pushed at t + c x aging_ms: its priority rises by one class per
 * aging_ms it waits (default 300 s). So high goes before default before low
 * while they arrive within aging_ms of each other, and a low item waits at
 * most 2 x aging_ms (plus the high work that arrived before that) under
 * any steady load of high work: nothing starves. Within a class it is FIFO.
 * BLMOVE blocks on one list only, so a consumer moves with one Lua script
 * that compares the oldest item of high, default and low and LMOVEs the one
 * due first (atomic, one round trip), and when all are empty blocks on a
 * wake list (BLPOP PREFIX q:wake) that every push also feeds, so an idle
 * consumer wakes at once whatever the priority of the new item.
 *
 * A cf_queue_t owns one Redis connection: use it from one thread. It
 * reconnects by itself (with backoff) after Redis went away; a call made
 * while Redis is unreachable returns -1 with the reason in err. */
#ifndef CF_QUEUE_H
#define CF_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_db.h"
#include "cf_state.h"

typedef struct cf_queue cf_queue_t;

typedef struct {
    const char *url;      /* redis://... (copied) */
    const char *prefix;   /* key prefix (default "cf:"; tests use their own) */
    const char *consumer; /* this consumer's unique name; NULL for a producer only */
    int timeout_ms;       /* connect and command timeout (default 5000: origin socket_timeout) */
    int heartbeat_ttl_ms; /* a consumer silent this long is dead (default 10000) */
    int backoff_max_ms;   /* reconnect delays double up to this (default 2000) */
    int aging_ms;         /* a waiting item rises one priority class per this (default
                             CF_QUEUE_AGING_MS); every consumer of a queue should use the same */
} cf_queue_options_t;

#define CF_QUEUE_AGING_MS (300 * 1000)

/* Fills OPTS with the defaults above. */
void cf_queue_options_default(cf_queue_options_t *opts);

/* Creates a queue client and connects. Returns NULL with a reason in err
 * when an option is invalid; an unreachable Redis is not an error here (the
 * first call reports it and later calls retry). */
cf_queue_t *cf_queue_new(const cf_queue_options_t *opts, char *err, size_t errlen);

/* Frees the client (the processing list and heartbeat stay in Redis: a
 * consumer that stops with an item in hand leaves it to the reaper). Safe on
 * NULL; NULLs *self_p. */
void cf_queue_destroy(cf_queue_t **self_p);

/* One queue item. */
typedef struct {
    char id[CF_DB_ID_LEN];
    cf_priority_t priority;
    int64_t pushed_ms; /* when it was pushed (Redis clock, ms since the epoch); set by take,
                          0 for an item that carries no time (served as the oldest) */
} cf_queue_item_t;

/* Pushes a composition id on its priority's intake list. Returns 0 or -1. */
int cf_queue_push(cf_queue_t *q, const char *id, cf_priority_t priority, char *err, size_t errlen);

/* Pushes COUNT items in one pipelined round trip. Returns 0 or -1. */
int cf_queue_push_many(cf_queue_t *q, const cf_queue_item_t *items, int count, char *err,
                       size_t errlen);

/* Consumer: moves the next item (by priority and age, see above) into this
 * consumer's processing list, waiting up to timeout_ms for one. Refreshes the
 * heartbeat as it waits. Returns 1 with the item, 0 when none came in time,
 * -1 on error. A consumer holds at most one item: ack it before taking the
 * next (the processing list stays short, and ack's LREM cheap). */
int cf_queue_take(cf_queue_t *q, int timeout_ms, cf_queue_item_t *item, char *err, size_t errlen);

/* Consumer: removes ITEM from the processing list once its effect is
 * committed in Postgres (or was found already applied). Returns 0 or -1. */
int cf_queue_ack(cf_queue_t *q, const cf_queue_item_t *item, char *err, size_t errlen);

/* Consumer: refreshes this consumer's heartbeat key (TTL heartbeat_ttl_ms)
 * and its entry in the consumer registry. take() does this itself; call it
 * while working longer than a third of the TTL on one item. Returns 0 or -1. */
int cf_queue_heartbeat(cf_queue_t *q, char *err, size_t errlen);

/* Consumer: moves what this consumer's processing list still holds back to
 * the consuming end of the intake lists: run it when a consumer starts, as
 * its name's previous process may have died holding items (a restarted
 * node's consumers keep their names and heartbeat at once, so the reaper
 * never sees them dead). *returned_p (may be NULL) gets the number of
 * items. Returns 0 or -1. */
int cf_queue_recover(cf_queue_t *q, int *returned_p, char *err, size_t errlen);

/* Reaper: for every registered consumer whose heartbeat expired, moves its
 * processing list back to the head of the intake lists (atomically, in a
 * script, so a consumer that comes back meanwhile cannot race it) and drops
 * it from the registry. *returned_p (may be NULL) gets the number of items
 * moved. Returns 0 or -1. */
int cf_queue_reap(cf_queue_t *q, int *returned_p, char *err, size_t errlen);

/* Reconcile: pushes every composition queued in Postgres that is in no
 * intake or processing list, and marks Redis as reconciled. *pushed_p (may be
 * NULL) gets the number pushed. Returns 0, or -1 when Redis or Postgres
 * failed. */
int cf_queue_reconcile(cf_queue_t *q, cf_db_t *db, int *pushed_p, char *err, size_t errlen);

/* True when Redis lost its data since the last reconcile (the marker key that
 * cf_queue_reconcile sets is gone): the caller should reconcile now rather
 * than at its next interval. Returns 0 or -1. */
int cf_queue_needs_reconcile(cf_queue_t *q, bool *needed_p, char *err, size_t errlen);

/* Items waiting per priority (LLEN of each intake list), for metrics. */
int cf_queue_depth(cf_queue_t *q, int64_t depth[CF_PRIORITY_COUNT], char *err, size_t errlen);

/* Node liveness: sets PREFIX node:NODE_ID to PAYLOAD (may be NULL) with a TTL
 * of ttl_ms. Returns 0 or -1. */
int cf_queue_node_heartbeat(cf_queue_t *q, const char *node_id, const char *payload, int ttl_ms,
                            char *err, size_t errlen);

/* *alive_p: whether NODE_ID's heartbeat key exists. Returns 0 or -1. */
int cf_queue_node_alive(cf_queue_t *q, const char *node_id, bool *alive_p, char *err,
                        size_t errlen);

#endif
