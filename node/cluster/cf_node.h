/* cf_node: one clipfarm cluster node. It loads the node identity, measures
 * the capabilities, discovers peers (authenticated UDP beacons on the
 * interface the operator named, and the Postgres node registry), links to
 * them over CURVE-encrypted ROUTER/DEALER sockets, takes part in the
 * coordinator election (a Postgres lease whose epoch is the fencing token)
 * and keeps a view of the cluster that other threads read.
 *
 * The node runs in its own threads (an actor for the control plane, one each
 * for the election, the registry and the coordinator's fenced writes). Every
 * function below is safe to call from any thread while the node lives.
 *
 *     cf_node_options_t opts;
 *     cf_node_options_default(&opts);
 *     opts.database_url = ...; opts.data_dir = ...; opts.secret_file = ...;
 *     cf_node_t *node = cf_node_new(&opts, err, sizeof err);
 *     ...
 *     json_t *view = cf_node_snapshot(node);   // GET /api/v1/cluster
 *     cf_node_destroy(&node);                  // leaves cleanly */
#ifndef CF_NODE_H
#define CF_NODE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cf_node_t cf_node_t;

typedef struct {
    const char *database_url; /* required */
    const char *data_dir;     /* required: identity (mode 0600) and calibration cache */
    const char *secret_file;  /* required: cluster secret (clipfarm secret generate) */
    const char *control_addr; /* HOST:PORT the control ROUTER binds and advertises */
    const char *http_addr;    /* HOST:PORT of the REST API, advertised to peers */
    const char *beacon_iface; /* interface to beacon on; NULL: no beacons at all */
    bool registry_discovery;  /* learn peers from the registry too (default true; the node
                                 always publishes its own row) */
    int beacon_port;          /* UDP port of beacons (default 5670) */
    char *const *tags;        /* operator tags (borrowed while cf_node_new runs) */
    int tag_count;
    int slots;                /* segments this node encodes at once */
    const char *encoders;     /* comma-separated encoders offered (NULL: all it can open) */
    const char *static_peers; /* "Z85KEY@HOST:PORT,..." peers to connect to even when
                                 undiscovered (they still admit us only when they learned
                                 our key from a beacon or the registry); NULL: none */
    int lease_ttl_ms;         /* coordinator lease (default 5000) */
    int peer_grace_ms;        /* silence after which a peer's link is gone, and (at least two
                                 heartbeats + 1 s) the grace after which the registry
                                 judges this node gone (default 5000) */
    int heartbeat_ms;         /* HEARTBEAT and registry interval (default 1000) */
    int beacon_interval_ms;   /* default 500 */
    int replay_window_ms;     /* beacons older or newer than this are dropped (default 30000) */
    const char *status_file;  /* JSON snapshot rewritten on every change; NULL: none */
    bool print_state;         /* print id, role, epoch, peers, capabilities on stdout */
    bool calibrate;           /* measure encoder frames/s (cached in data_dir); default true */
} cf_node_options_t;

/* Fills OPTS with the defaults above (pointers NULL). */
void cf_node_options_default(cf_node_options_t *opts);

/* Checks OPTS without starting anything: timings, addresses, --peer list,
 * the secret file. Returns 0, or -1 with a one-line reason naming the
 * option in err. cf_node_new runs it too. */
int cf_node_check_options(const cf_node_options_t *opts, char *err, size_t errlen);

/* Loads (or creates) the identity, probes capabilities, binds the control
 * socket and starts discovery and the election. Returns the node, or NULL
 * with a one-line reason in err (bad option, unreadable secret, address in
 * use, ...). Postgres being unreachable is not an error here: the node keeps
 * retrying and runs without a coordinator meanwhile. */
cf_node_t *cf_node_new(const cf_node_options_t *opts, char *err, size_t errlen);

/* Leaves the cluster cleanly: releases the lease if held, says BYE to peers,
 * marks itself left in the registry, stops every thread. Bounded time (well
 * under 2 s even when Postgres is unreachable). Safe on NULL; NULLs *self_p. */
void cf_node_destroy(cf_node_t **self_p);

/* This node's id (canonical UUID text), valid while the node lives. */
const char *cf_node_id(cf_node_t *self);

/* The node's view of the cluster, as a new JSON object (caller decrefs):
 *   {"id","liveness":"up"|"unknown","role":"coordinator"|"worker","epoch","coordinator":ID|null,
 *    "control_endpoint","http_endpoint","public_key","capabilities":{...},
 *    "free_slots","in_flight","started_at_ms","database_reachable",
 *    "peers":[{"id","state":"alive"|"gone"|"left"|"connecting" (the link),
 *              "liveness":"up"|"gone"|"left"|"unknown" (the registry's judgment),
 *              "registry_age_ms"|null,"control_endpoint",
 *              "http_endpoint","public_key","discovered_by":["beacon","registry","static"],
 *              "capabilities":{...}|null,"load","free_slots","in_flight","epoch_seen",
 *              "last_seen_ms_ago"|null}],
 *    "fence":{"pending"},"counters":{NAME: N, ...}}
 * "epoch" is the highest coordinator epoch this node has seen; "liveness"
 * is this node's own: up while its registry rows are read and written.
 * Returns NULL
 * only when out of memory. */
json_t *cf_node_snapshot(cf_node_t *self);

/* Tells the node what its renderer is doing, for HEARTBEAT and the registry. */
void cf_node_set_load(cf_node_t *self, int free_slots, int in_flight);

/* Whether an executor (node/work/cf_executor.h) takes the ASSIGNs this node
 * receives; without one the node answers each valid ASSIGN with REJECT. */
void cf_node_set_executor(cf_node_t *self, bool running);
bool cf_node_has_executor(cf_node_t *self);

/* True when this node holds the coordinator lease now; *epoch_p (may be NULL)
 * gets the epoch it holds (0 when not coordinator). */
bool cf_node_is_coordinator(cf_node_t *self, int64_t *epoch_p);

/* Counters, readable as plain numbers at any time (for /metrics). */
typedef enum {
    CF_NODE_BEACONS_SENT,
    CF_NODE_BEACONS_ACCEPTED,
    CF_NODE_BEACONS_REJECTED, /* all of the four below */
    CF_NODE_BEACONS_MALFORMED,
    CF_NODE_BEACONS_BAD_VERSION,
    CF_NODE_BEACONS_BAD_MAC,  /* forged, or another cluster's secret */
    CF_NODE_BEACONS_REPLAYED, /* timestamp outside the window or older than the last one */
    CF_NODE_MESSAGES_SENT,
    CF_NODE_MESSAGES_RECEIVED,
    CF_NODE_MESSAGES_MALFORMED,   /* undecodable, unknown version or type: dropped */
    CF_NODE_MESSAGES_STALE_EPOCH, /* carried an older epoch than seen: ignored */
    CF_NODE_ZAP_ALLOWED,
    CF_NODE_ZAP_DENIED,          /* CURVE handshakes from keys we never learned */
    CF_NODE_CONNECT_AUTH_FAILED, /* our own handshakes a peer refused */
    CF_NODE_REGISTRY_REJECTED,   /* registry rows with a bad MAC */
    CF_NODE_PEERS_JOINED,
    CF_NODE_PEERS_GONE,
    CF_NODE_ELECTIONS_WON,
    CF_NODE_LEASES_LOST,
    CF_NODE_FENCED_WRITES_APPLIED,
    CF_NODE_FENCED_WRITES_REJECTED, /* coordinator writes refused for a stale epoch */
    CF_NODE_WORK_REFUSED, /* ASSIGN/CANCEL not from the epoch's holder, replies to a non-coordinator
                           */
    CF_NODE_FENCED_WRITES_DROPPED, /* queued coordinator writes dropped (deposed, or the
                                      lease ran out before Postgres answered) */
    CF_NODE_ASSIGN_REFUSED,        /* ASSIGNs from a node not holding their epoch */
    CF_NODE_LEASES_REFUSED,        /* leases won at an epoch already announced: released */
    CF_NODE_COUNTER_COUNT
} cf_node_counter_t;

/* Prometheus-style name ("beacons_rejected") and one-line help of a counter. */
const char *cf_node_counter_name(cf_node_counter_t counter);
const char *cf_node_counter_help(cf_node_counter_t counter);

/* The current value of a counter. */
uint64_t cf_node_counter(cf_node_t *self, cf_node_counter_t counter);

#endif
