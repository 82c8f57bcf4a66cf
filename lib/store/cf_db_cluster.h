/* cf_db_cluster: the cluster's tables in Postgres (sql/010_cluster.sql,
 * sql/022_fencing_liveness.sql): the node registry and the coordinator lease,
 * and the coordinator's fenced writes to them. All their SQL lives here, as
 * parameterised statements. (The coordinator's fenced writes to compositions
 * and segments are in cf_db.h, on the state pool, next to the rest of that
 * state.)
 *
 * A cf_db_cluster_t is one connection used by one thread. Unlike the state
 * pool (cf_db), every call is bounded by a deadline in milliseconds that
 * covers connecting too: the election must know within its lease whether a
 * renewal went through, even when the network to Postgres is cut and TCP
 * would wait for minutes. The server's statement_timeout is set below that
 * deadline on every call, so a statement stuck on a lock is cancelled by the
 * server before its caller gives up on it, instead of committing later
 * unseen. A call that runs out of time drops the connection (its statement
 * may or may not have run) and returns CF_DBC_UNAVAILABLE; the next call
 * reconnects. Deadlines are measured on CLOCK_BOOTTIME, which keeps counting
 * while the host is suspended. */
#ifndef CF_DB_CLUSTER_H
#define CF_DB_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_db.h"

typedef enum {
    /* The values of cf_rc.h: -1 failed, -6 unavailable, as in cf_db. */
    CF_DBC_OK = CF_RC_OK,
    CF_DBC_ERROR = CF_RC_ERROR,             /* the statement failed (a bug or bad data) */
    CF_DBC_UNAVAILABLE = CF_RC_UNAVAILABLE, /* could not connect, timed out, connection lost */
} cf_dbc_rc_t;

typedef struct cf_db_cluster_t cf_db_cluster_t;

/* Creates the handle for URL (copied); connects on first use. Each handle
 * draws a random token (cf_db_cluster_token) that names it in the lease row.
 * Returns NULL when out of memory. */
cf_db_cluster_t *cf_db_cluster_new(const char *url);

/* The handle's token (32 hex digits): the lease row records it beside the
 * holder, so the handle that won a lease recognises it as its own even when
 * the answer to its acquire was lost. */
const char *cf_db_cluster_token(const cf_db_cluster_t *self);

/* The statement_timeout a call with TIMEOUT_MS gets on the server: below
 * the caller's deadline by a margin for the round trip (exposed for tests). */
int cf_db_cluster_statement_timeout_ms(int timeout_ms);

/* Closes the connection. Safe on NULL; NULLs *self_p. */
void cf_db_cluster_destroy(cf_db_cluster_t **self_p);

/* Makes every call give up at once (CF_DBC_UNAVAILABLE, "interrupted",
 * connection dropped) while FD is readable, e.g. an eventfd a node signals
 * when it shuts down, so no thread waits out a deadline on its way out.
 * -1 turns it off. */
void cf_db_cluster_set_interrupt(cf_db_cluster_t *self, int fd);

/* True while a connection is open (it may still turn out dead). */
bool cf_db_cluster_connected(const cf_db_cluster_t *self);

/* ------------------------------------------------------------------ registry */

typedef struct {
    char id[37];
    char *control_endpoint;
    char *http_endpoint;
    char public_key[41]; /* Z85 */
    char mac[65];        /* hex, see proto/PROTOCOL.md */
    char *capabilities;  /* JSON text */
    int free_slots;
    int in_flight;
    int grace_ms;   /* upsert: how long after its last upsert the node counts as gone */
    char state[8];  /* read: its liveness, "up", "gone" or "left" (cf_node_liveness
                       in sql/022: computed from last_seen by the database clock) */
    int64_t age_ms; /* since last_seen, by the database clock */
} cf_db_node_t;

/* Inserts or refreshes this node's row (last_seen = now(), by the database
 * clock, and grace_ms). FIRST marks the first upsert of this process
 * (started_at = now, and a row left by an earlier run is up again); later
 * upserts change no state: a node's liveness is computed from last_seen,
 * never stored, so nothing a node writes undoes what a coordinator
 * recorded. */
int cf_db_cluster_node_upsert(cf_db_cluster_t *self, const cf_db_node_t *node, bool first,
                              int timeout_ms, char *err, size_t errlen);

/* Marks this node's row left (a clean shutdown). */
int cf_db_cluster_node_leave(cf_db_cluster_t *self, const char *node_id, int timeout_ms, char *err,
                             size_t errlen);

/* The rows of other nodes seen within max_age_ms, not left, in id order,
 * each with its liveness in state.
 * *nodes_p is the caller's (cf_db_cluster_nodes_free). Rows are returned as
 * stored: the caller checks each MAC. */
int cf_db_cluster_peers(cf_db_cluster_t *self, const char *self_id, int max_age_ms,
                        cf_db_node_t **nodes_p, int *count_p, int timeout_ms, char *err,
                        size_t errlen);
void cf_db_cluster_nodes_free(cf_db_node_t **nodes_p, int count);

/* Frees what one row owns. */
void cf_db_cluster_node_clear(cf_db_node_t *node);

/* One node's row (any state); CF_DBC_ERROR with "no such node" when absent.
 * *gone_epoch_p (may be NULL): the epoch of the coordinator that last
 * recorded a departure of the node, 0 when none did. */
int cf_db_cluster_node_get(cf_db_cluster_t *self, const char *node_id, cf_db_node_t *node,
                           int64_t *gone_epoch_p, int timeout_ms, char *err, size_t errlen);

/* ------------------------------------------------------------------ lease */

typedef struct {
    bool held;            /* the caller holds it after this call */
    char holder[37];      /* "" when free */
    int64_t epoch;        /* the current (highest) epoch */
    int64_t remaining_ms; /* until expiry by the database clock; <= 0 when expired */
} cf_db_lease_t;

/* One statement; two callers can never both acquire (the row lock
 * serialises them), and one epoch never has two holders:
 *   - renews when the row names NODE_ID and this handle's token, has not
 *     expired and its epoch is at least SEEN_EPOCH: the epoch stays. The
 *     token, not the epoch the caller believes it holds, decides, so a
 *     caller adopts a lease it won without hearing the answer;
 *   - acquires when the lease is free or expired, or is this handle's but
 *     behind SEEN_EPOCH (the row was reset below an epoch the node saw in
 *     use): the epoch becomes greatest(row epoch, SEEN_EPOCH, the published
 *     view's epoch) + 1, so it never repeats one in use before a reset;
 *   - otherwise changes nothing and *lease describes the current holder.
 * A held lease then expires ttl_ms after the database's now(). SEEN_EPOCH is
 * the highest epoch the caller has seen anywhere (peers' heartbeats and
 * LEADERs, the row itself); 0 when none. */
int cf_db_cluster_lease_acquire(cf_db_cluster_t *self, const char *node_id, int64_t seen_epoch,
                                int ttl_ms, cf_db_lease_t *lease, int timeout_ms, char *err,
                                size_t errlen);

/* Gives the lease up (expires now) if NODE_ID still holds it at EPOCH with
 * this handle's token; *released (may be NULL) says whether it did. The
 * epoch is kept, so the next holder's is higher. */
int cf_db_cluster_lease_release(cf_db_cluster_t *self, const char *node_id, int64_t epoch,
                                bool *released, int timeout_ms, char *err, size_t errlen);

/* Reads the lease without changing it (held is false). */
int cf_db_cluster_lease_get(cf_db_cluster_t *self, cf_db_lease_t *lease, int timeout_ms, char *err,
                            size_t errlen);

/* ------------------------------------------------------------------ fenced writes */

typedef enum {
    CF_DBC_FENCE_PASSED = 0, /* the token holds the lease: the write ran */
    CF_DBC_FENCE_STALE = 1,  /* it does not (another epoch or holder, or the lease
                                expired): nothing changed */
} cf_dbc_fence_t;

/* Every write below is a coordinator's, made with its fence token
 * (cf_fence_token_t in cf_db.h): it changes something only while the lease
 * row carries the token's epoch and holder and has not expired by the
 * database clock, checked in the same statement (the lease row is locked
 * FOR SHARE until it commits, so a successor's acquire waits for it, and
 * a write is never applied after its epoch ended). */

/* Records the departure of every node whose liveness is gone by the
 * database clock and whose current absence nobody recorded yet (gone_at,
 * gone_epoch = the token's epoch, gone_by = its holder): one record per
 * absence, however many coordinators sweep. A coordinator sweeps at
 * takeover and then periodically, so a node that died while there was no
 * coordinator is recorded by the next one. *fence gets the verdict;
 * *gone_p (may be NULL) the ids recorded, comma-separated (caller frees;
 * NULL when none). */
int cf_db_cluster_sweep_gone(cf_db_cluster_t *self, const cf_fence_token_t *token,
                             cf_dbc_fence_t *fence, char **gone_p, int timeout_ms, char *err,
                             size_t errlen);

/* Publishes the membership into cluster_view: every node that is up by the
 * database clock, as [{"id", "state": "up", "http_endpoint", "link"}] in id
 * order, where "link" is what LINKS_JSON (an object: node id -> the
 * coordinator's link state, e.g. "alive"; may be "{}") says, or null. */
int cf_db_cluster_publish_view(cf_db_cluster_t *self, const cf_fence_token_t *token,
                               const char *links_json, cf_dbc_fence_t *fence, int timeout_ms,
                               char *err, size_t errlen);

typedef struct {
    char coordinator[37]; /* "" when never written */
    int64_t epoch;
    char *members; /* JSON text, caller frees */
    int64_t age_ms;
} cf_db_view_t;

/* Reads cluster_view. */
int cf_db_cluster_view_get(cf_db_cluster_t *self, cf_db_view_t *view, int timeout_ms, char *err,
                           size_t errlen);

#endif
