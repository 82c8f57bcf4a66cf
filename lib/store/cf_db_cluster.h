/* cf_db_cluster: the cluster's tables in Postgres (sql/010_cluster.sql): the
 * node registry and the coordinator lease, and the coordinator's fenced
 * writes. All their SQL lives here, as parameterised statements.
 *
 * A cf_db_cluster_t is one connection used by one thread. Unlike the state
 * pool (cf_db), every call is bounded by a deadline in milliseconds that
 * covers connecting too: the election must know within its lease whether a
 * renewal went through, even when the network to Postgres is cut and TCP
 * would wait for minutes. A call that runs out of time drops the connection
 * (its statement may or may not have run) and returns CF_DBC_UNAVAILABLE; the
 * next call reconnects. */
#ifndef CF_DB_CLUSTER_H
#define CF_DB_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    CF_DBC_OK = 0,
    CF_DBC_UNAVAILABLE = -1, /* could not connect, timed out, connection lost */
    CF_DBC_ERROR = -2,       /* the statement failed (a bug or bad data) */
} cf_dbc_rc_t;

typedef struct cf_db_cluster_t cf_db_cluster_t;

/* Creates the handle for URL (copied); connects on first use. Returns NULL
 * when out of memory. */
cf_db_cluster_t *cf_db_cluster_new(const char *url);

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
    char state[8];  /* "up", "gone" or "left" */
    int64_t age_ms; /* since last_seen, by the database clock */
} cf_db_node_t;

/* Inserts or refreshes this node's row (state up, last_seen now). FIRST marks
 * the first upsert of this process (started_at = now). */
int cf_db_cluster_node_upsert(cf_db_cluster_t *self, const cf_db_node_t *node, bool first,
                              int timeout_ms, char *err, size_t errlen);

/* Marks this node's row left (a clean shutdown). */
int cf_db_cluster_node_leave(cf_db_cluster_t *self, const char *node_id, int timeout_ms, char *err,
                             size_t errlen);

/* The rows of other nodes seen within max_age_ms, not left, in id order.
 * *nodes_p is the caller's (cf_db_cluster_nodes_free). Rows are returned as
 * stored: the caller checks each MAC. */
int cf_db_cluster_peers(cf_db_cluster_t *self, const char *self_id, int max_age_ms,
                        cf_db_node_t **nodes_p, int *count_p, int timeout_ms, char *err,
                        size_t errlen);
void cf_db_cluster_nodes_free(cf_db_node_t **nodes_p, int count);

/* Frees what one row owns. */
void cf_db_cluster_node_clear(cf_db_node_t *node);

/* One node's row (any state); CF_DBC_ERROR with "no such node" when absent. */
int cf_db_cluster_node_get(cf_db_cluster_t *self, const char *node_id, cf_db_node_t *node,
                           int64_t *gone_epoch_p, int timeout_ms, char *err, size_t errlen);

/* ------------------------------------------------------------------ lease */

typedef struct {
    bool held;            /* the caller holds it after this call */
    char holder[37];      /* "" when free */
    int64_t epoch;        /* the current (highest) epoch */
    int64_t remaining_ms; /* until expiry by the database clock; <= 0 when expired */
} cf_db_lease_t;

/* Acquires the lease for NODE_ID when it is free or expired (the epoch goes
 * up by one), or renews it when NODE_ID holds it with epoch MY_EPOCH and it
 * has not expired (the epoch stays). Either way it then expires ttl_ms after
 * the database's now(). Otherwise nothing changes and *lease describes the
 * current holder. One statement: two nodes can never both acquire. */
int cf_db_cluster_lease_acquire(cf_db_cluster_t *self, const char *node_id, int64_t my_epoch,
                                int ttl_ms, cf_db_lease_t *lease, int timeout_ms, char *err,
                                size_t errlen);

/* Gives the lease up (expires now) if NODE_ID still holds it at EPOCH;
 * *released (may be NULL) says whether it did. The epoch is kept, so the
 * next holder's is higher. */
int cf_db_cluster_lease_release(cf_db_cluster_t *self, const char *node_id, int64_t epoch,
                                bool *released, int timeout_ms, char *err, size_t errlen);

/* Reads the lease without changing it (held is false). */
int cf_db_cluster_lease_get(cf_db_cluster_t *self, cf_db_lease_t *lease, int timeout_ms, char *err,
                            size_t errlen);

/* ------------------------------------------------------------------ fenced writes */

typedef enum {
    CF_DBC_FENCE_PASSED = 0, /* the epoch holds the lease: the write ran */
    CF_DBC_FENCE_STALE = 1,  /* another epoch holds the lease now: nothing changed */
} cf_dbc_fence_t;

/* The coordinator's write "node NODE_ID is gone", guarded by the lease: it
 * changes the row only while COORDINATOR holds the lease at EPOCH (the lease
 * row is locked FOR SHARE within the statement, so acquiring waits for it).
 * *fence gets the verdict; *changed whether the row went from up to gone. */
int cf_db_cluster_mark_gone(cf_db_cluster_t *self, int64_t epoch, const char *coordinator,
                            const char *node_id, cf_dbc_fence_t *fence, bool *changed,
                            int timeout_ms, char *err, size_t errlen);

/* The coordinator's write "the cluster is MEMBERS_JSON" (a JSON array) into
 * cluster_view, behind the same fence. */
int cf_db_cluster_publish_view(cf_db_cluster_t *self, int64_t epoch, const char *coordinator,
                               const char *members_json, cf_dbc_fence_t *fence, int timeout_ms,
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
