/* cf_peer: one peer of a node, as the node actor knows it (after zyre's
 * zyre_peer). Its Z85 public key is its identity on the wire; the rest is
 * what it said about itself (HELLO, HEARTBEAT, its registry row), where it
 * was learned from, its liveness and the CURVE DEALER, with a socket
 * monitor, that the node talks to it through.
 *
 * Peers live in the node's peer table, a zhashx_t keyed by public key that
 * owns them (cf_peer_table_new); cf_peer_new puts a new peer in it. A peer
 * and its table belong to the node actor's thread.
 *
 *     zhashx_t *peers = cf_peer_table_new();
 *     cf_peer_t *peer = cf_peer_new(peers, key, "tcp://10.0.0.2:7070");
 *     cf_peer_connect(peer, &link);
 *     cf_peer_send(peer, &msg);
 *     zhashx_delete(peers, key);              // destroys the peer
 *     zhashx_destroy(&peers); */
#ifndef CF_PEER_H
#define CF_PEER_H

#include <czmq.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "cf_proto.h"

typedef struct cf_peer_t cf_peer_t;

typedef enum { CF_PEER_CONNECTING, CF_PEER_ALIVE, CF_PEER_GONE, CF_PEER_LEFT } cf_peer_state_t;

/* Where a peer was learned from: a set of these bits. */
enum { CF_PEER_FROM_BEACON = 1, CF_PEER_FROM_REGISTRY = 2, CF_PEER_FROM_STATIC = 4 };

/* This node's side of every link. */
typedef struct {
    const char *node_id;    /* ours: a peer with it is ourselves */
    const char *public_z85; /* our CURVE keys */
    const char *secret_z85;
    int heartbeat_ms;  /* ZMTP heartbeats on the link */
    int peer_grace_ms; /* and their timeout */
} cf_peer_link_t;

/* What cf_peer_recv_monitor saw. */
typedef enum {
    CF_PEER_NO_EVENT,
    CF_PEER_LINKED,  /* CURVE handshake done: say HELLO */
    CF_PEER_REFUSED, /* the peer refused our handshake: retried later */
} cf_peer_event_t;

/* ------------------------------------------------------------------ the peer */

/* A peer with public KEY (Z85) reachable at CONTROL_ENDPOINT, in state
 * "connecting", not yet connected; it is inserted into CONTAINER (a peer
 * table), which owns it from then on. Returns NULL when out of memory. */
cf_peer_t *cf_peer_new(zhashx_t *container, const char *key, const char *control_endpoint);

/* Closes its sockets and frees it. Safe on NULL; NULLs *self_p. */
void cf_peer_destroy(cf_peer_t **self_p);

/* (Re)opens the DEALER to the peer's control endpoint (CURVE client, the
 * peer's key as server key) with a monitor that reports handshakes. Returns
 * 0, or -1 (logged) with no link. */
int cf_peer_connect(cf_peer_t *self, const cf_peer_link_t *link);

/* Closes the DEALER and its monitor. */
void cf_peer_disconnect(cf_peer_t *self);

/* Encodes MSG and sends it without ever blocking (a slow or absent peer
 * drops it). Returns 0, or -1 when not connected, unencodable (logged) or
 * not sent. */
int cf_peer_send(cf_peer_t *self, const cf_msg_t *msg);

/* The monitor socket to poll; NULL when not connected. */
zsock_t *cf_peer_monitor(cf_peer_t *self);

/* Reads one monitor event. A refused handshake schedules a reconnection
 * (200 ms, doubling up to 5 s) and is logged; libzmq itself gives up on a
 * connection whose handshake the other side refused. */
cf_peer_event_t cf_peer_recv_monitor(cf_peer_t *self);

/* True once a reconnection scheduled by a refusal is due at NOW; it is then
 * no longer scheduled (the caller reconnects). */
bool cf_peer_reconnect_due(cf_peer_t *self, int64_t now);

/* The peer was learned (again) at NOW from SOURCE: ID (may be NULL or "")
 * is kept unless one is known, HTTP_ENDPOINT (may be NULL or "") replaces
 * the known one. */
void cf_peer_learned(cf_peer_t *self, const char *id, const char *http_endpoint, unsigned source,
                     int64_t now);

/* A control message came in at NOW. Returns true when that makes the peer
 * alive (it joined, or is back: logged). */
bool cf_peer_heard(cf_peer_t *self, int64_t now);

/* Returns true when an alive peer has been silent longer than GRACE_MS at
 * NOW: it is gone from now on (logged). */
bool cf_peer_expire(cf_peer_t *self, int64_t now, int grace_ms);

/* True when the peer may be forgotten at NOW: not configured, not alive,
 * neither discovered nor heard for FORGET_AFTER_MS. */
bool cf_peer_forgettable(const cf_peer_t *self, int64_t now, int64_t forget_after_ms);

/* The peer said BYE with REASON (logged): it has left. */
void cf_peer_leave(cf_peer_t *self, const char *reason);

/* The HELLO is outstanding and the last request is older than the retry
 * interval at NOW: ask again. */
bool cf_peer_hello_due(const cf_peer_t *self, int64_t now);

/* A HELLO asking for the peer's was sent at NOW. */
void cf_peer_hello_asked(cf_peer_t *self, int64_t now);

/* Takes the peer's HELLO (its id is the caller's to check and set):
 * software, HTTP endpoint, capabilities. */
void cf_peer_take_hello(cf_peer_t *self, const cf_msg_hello_t *hello);

/* Takes the peer's HEARTBEAT: load, free slots, in flight, epoch seen. */
void cf_peer_take_heartbeat(cf_peer_t *self, const cf_msg_heartbeat_t *heartbeat);

/* Takes what its registry row says: CAPS_JSON (an object, else ignored)
 * and, until the peer is heard from, FREE_SLOTS and IN_FLIGHT. */
void cf_peer_take_registry(cf_peer_t *self, const char *caps_json, int free_slots, int in_flight);

/* What the registry says of the peer in registry round ROUND: LIVENESS
 * ("up", "gone" or "left", judged by the database clock) and the age of its
 * row. True when its liveness changed. */
bool cf_peer_set_liveness(cf_peer_t *self, const char *liveness, int64_t age_ms, unsigned round);

/* Registry round ROUND is over. READ: it was read (else Postgres could not
 * be reached, and every peer's liveness is unknown). A peer its round did
 * not return any more, once known to the registry, is gone (left when it
 * said BYE). True when a peer's liveness changed. */
bool cf_peer_table_liveness_end(zhashx_t *peers, unsigned round, bool read);

/* The peer as it appears in the node's snapshot (cf_node.h), at NOW:
 * "state" is its control link (connecting, alive, gone, left), "liveness"
 * the registry's judgment (up, gone, left, unknown), the cluster's one
 * membership rule. */
json_t *cf_peer_to_json(const cf_peer_t *self, int64_t now);

/* Accessors. Strings are borrowed, valid until the peer changes. */
const char *cf_peer_key(const cf_peer_t *self);
const char *cf_peer_id(const cf_peer_t *self); /* "" until known */
void cf_peer_set_id(cf_peer_t *self, const char *id);
const char *cf_peer_name(const cf_peer_t *self); /* id, or the key while unknown */
const char *cf_peer_control_endpoint(const cf_peer_t *self);
void cf_peer_set_control_endpoint(cf_peer_t *self, const char *endpoint);
const char *cf_peer_http_endpoint(const cf_peer_t *self);
unsigned cf_peer_sources(const cf_peer_t *self);
cf_peer_state_t cf_peer_state(const cf_peer_t *self);
int64_t cf_peer_connected_ms(const cf_peer_t *self); /* when the DEALER was (re)created */
int64_t cf_peer_beacon_ts(const cf_peer_t *self);    /* newest accepted beacon timestamp */
void cf_peer_set_beacon_ts(cf_peer_t *self, int64_t timestamp_ms);

/* ------------------------------------------------------------------ the table */

/* The most peers a table holds. */
#define CF_PEER_TABLE_MAX 256

/* An empty peer table: a zhashx_t that destroys the peers it holds. NULL
 * when out of memory. */
zhashx_t *cf_peer_table_new(void);

/* The peer in PEERS with node id ID, or NULL. */
cf_peer_t *cf_peer_table_find_id(zhashx_t *peers, const char *id);

/* Learns the peer with KEY (Z85) from SOURCE (an authenticated beacon or
 * registry row, or the configuration), reachable at CONTROL; ID and HTTP
 * may be NULL or "". A new key is a new peer, connected through LINK; a new
 * key for a known ID replaces that peer (its identity was recreated). A
 * known peer is refreshed (cf_peer_learned) and, when CONTROL differs, moved
 * there unless its link works: beacon and registry may name different
 * addresses, so the current one gets 3 s first. Returns the peer, or NULL
 * for ourselves (LINK's key or node id), past CF_PEER_TABLE_MAX peers, or
 * out of memory. Sets *CHANGED_P when a peer was added or moved (it is
 * left alone otherwise). Logged. */
cf_peer_t *cf_peer_table_learn(zhashx_t *peers, const cf_peer_link_t *link, const char *id,
                               const char *key, const char *control, const char *http,
                               unsigned source, bool *changed_p);

/* Forgets (logged) the peers that are cf_peer_forgettable at NOW. Returns
 * how many. */
int cf_peer_table_forget(zhashx_t *peers, int64_t now, int64_t forget_after_ms);

/* The peers as a JSON array of cf_peer_to_json objects, at NOW. */
json_t *cf_peer_table_to_json(zhashx_t *peers, int64_t now);

#endif
