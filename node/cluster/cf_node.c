/* cf_node: the node actor. One thread owns the control plane: the CURVE
 * ROUTER peers talk to, one DEALER (and its socket monitor) per peer, the ZAP
 * handler that decides which keys may connect, the zbeacon actor, and the
 * three Postgres actors (election, registry, fenced writes) plus the one-off
 * calibration. Other threads see only cf_node_t: a JSON snapshot under a
 * mutex and atomic counters. */
#define _GNU_SOURCE
#include "cf_json.h"
#include "cf_node.h"

#include <arpa/inet.h>
#include <errno.h>
#include <czmq.h>
#include <ifaddrs.h>
#include <inttypes.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cf_beacon.h"
#include "cf_caps.h"
#include "cf_discovery.h"
#include "cf_election.h"
#include "cf_election_fence.h"
#include "cf_identity.h"
#include "cf_log.h"
#include "cf_proto.h"
#include "cf_url.h"

#define S_ZAP_ENDPOINT   "inproc://zeromq.zap.01"
#define S_ZAP_DOMAIN     "clipfarm"
#define S_TICK_MS        100 /* liveness checks */
#define S_STATUS_MS      1000
#define S_HELLO_RETRY_MS 1000
#define S_MAX_PEERS      256
#define S_MONITOR_EVENTS                                                                           \
    (ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |                             \
     ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_DISCONNECTED)

/* ------------------------------------------------------------------ counters */

static const struct {
    const char *name;
    const char *help;
} s_counter_info[CF_NODE_COUNTER_COUNT] = {
    [CF_NODE_BEACONS_SENT] = {"beacons_sent", "Discovery beacons sent"},
    [CF_NODE_BEACONS_ACCEPTED] = {"beacons_accepted", "Beacons that authenticated"},
    [CF_NODE_BEACONS_REJECTED] = {"beacons_rejected", "Beacons dropped (all reasons)"},
    [CF_NODE_BEACONS_MALFORMED] = {"beacons_malformed", "Beacons dropped: malformed"},
    [CF_NODE_BEACONS_BAD_VERSION] = {"beacons_bad_version",
                                     "Beacons dropped: other protocol version"},
    [CF_NODE_BEACONS_BAD_MAC] = {"beacons_bad_mac",
                                 "Beacons dropped: MAC fails (forged or another cluster's secret)"},
    [CF_NODE_BEACONS_REPLAYED] = {"beacons_replayed",
                                  "Beacons dropped: timestamp outside the replay window"},
    [CF_NODE_MESSAGES_SENT] = {"messages_sent", "Control messages sent"},
    [CF_NODE_MESSAGES_RECEIVED] = {"messages_received", "Control messages received and decoded"},
    [CF_NODE_MESSAGES_MALFORMED] = {"messages_malformed",
                                    "Control messages dropped: malformed, unknown version or type"},
    [CF_NODE_MESSAGES_STALE_EPOCH] = {"messages_stale_epoch",
                                      "Control messages ignored: older epoch than seen"},
    [CF_NODE_ZAP_ALLOWED] = {"zap_allowed", "CURVE handshakes admitted"},
    [CF_NODE_ZAP_DENIED] = {"zap_denied", "CURVE handshakes refused: key never learned"},
    [CF_NODE_CONNECT_AUTH_FAILED] = {"connect_auth_failed",
                                     "Our CURVE handshakes that a peer refused"},
    [CF_NODE_REGISTRY_REJECTED] = {"registry_rejected", "Registry rows with a bad MAC"},
    [CF_NODE_PEERS_JOINED] = {"peers_joined", "Peers that became alive"},
    [CF_NODE_PEERS_GONE] = {"peers_gone", "Peers that went silent past the grace or left"},
    [CF_NODE_ELECTIONS_WON] = {"elections_won", "Coordinator leases acquired"},
    [CF_NODE_LEASES_LOST] = {"leases_lost", "Coordinator leases lost or given up"},
    [CF_NODE_FENCED_WRITES_APPLIED] = {"fenced_writes_applied",
                                       "Coordinator writes that passed the epoch fence"},
    [CF_NODE_FENCED_WRITES_REJECTED] = {"fenced_writes_rejected",
                                        "Coordinator writes refused for a stale epoch"},
};

const char *cf_node_counter_name(cf_node_counter_t counter)
{
    return counter < CF_NODE_COUNTER_COUNT ? s_counter_info[counter].name : NULL;
}

const char *cf_node_counter_help(cf_node_counter_t counter)
{
    return counter < CF_NODE_COUNTER_COUNT ? s_counter_info[counter].help : NULL;
}

/* ------------------------------------------------------------------ types */

struct cf_node_t {
    zactor_t *actor;
    char node_id[37];
    pthread_mutex_t mutex;
    json_t *snapshot; /* guarded by mutex */
    atomic_uint_fast64_t counters[CF_NODE_COUNTER_COUNT];
    atomic_int free_slots;
    atomic_int in_flight;
    atomic_int_fast64_t coordinator_epoch; /* 0 while not coordinator */
};

/* Options with every string copied, for the actor. */
typedef struct {
    char *database_url;
    char *data_dir;
    char *beacon_iface;
    int beacon_port;
    bool registry_discovery;
    char *bind_endpoint;    /* tcp://HOST:PORT */
    char *control_endpoint; /* advertised */
    char *http_endpoint;    /* advertised, "" when none */
    int control_port, http_port;
    char *static_peers;
    int lease_ttl_ms, peer_grace_ms, heartbeat_ms, beacon_interval_ms, replay_window_ms;
    char *status_file;
    bool print_state;
    bool calibrate;
} s_config_t;

typedef enum { S_CONNECTING, S_ALIVE, S_GONE, S_LEFT } s_peer_state_t;
static const char *const s_state_names[] = {"connecting", "alive", "gone", "left"};

enum { S_SRC_BEACON = 1, S_SRC_REGISTRY = 2, S_SRC_STATIC = 4 };

typedef struct {
    char key[41]; /* Z85 public key: the peer's identity on the wire */
    char id[37];  /* node id, "" until known */
    char control_endpoint[280];
    char http_endpoint[280];
    char software[65];
    unsigned sources;
    s_peer_state_t state;
    bool ever_alive;
    bool hello_received;
    int64_t hello_requested_ms;
    int64_t discovered_ms; /* last beacon or registry refresh */
    int64_t heard_ms;      /* last control message, 0 never */
    int64_t beacon_ts;     /* newest accepted beacon timestamp */
    json_t *caps_hello;    /* from HELLO */
    json_t *caps_registry; /* from the registry */
    double load;
    int free_slots, in_flight;
    uint64_t epoch_seen;
    zsock_t *dealer;
    zsock_t *monitor;
    /* libzmq gives up on a connection whose handshake the other side
     * refused; we try again after this delay (doubling, capped). */
    int64_t reconnect_at_ms;
    int reconnect_delay_ms;
    int64_t connected_ms; /* when the DEALER was (re)created */
} s_peer_t;

#define S_ZAP_LOG_KEYS      64
#define S_ZAP_LOG_PERIOD_MS 60000

typedef struct {
    char key[41];
    int64_t logged_ms;   /* when its last line was written */
    unsigned suppressed; /* refusals since, not logged */
} s_zap_log_t;

typedef struct {
    zsock_t *pipe;
    cf_node_t *shared;
    s_config_t *cfg;
    cf_identity_t *identity;
    cf_secret_t *secret;
    cf_caps_t *caps;
    const char *my_id;
    bool terminated;
    bool started;

    zsock_t *router;
    zsock_t *zap;
    zactor_t *beacon;
    zactor_t *election;
    zactor_t *registry;
    zactor_t *fence;
    struct s_calibration_t *calibration; /* while the calibration thread runs */
    int shutdown_fd; /* eventfd, signalled to cut the database threads' calls short */

    zhashx_t *peers; /* key -> s_peer_t */
    int monitor_seq;

    /* Coordination. */
    bool leader;
    uint64_t my_epoch;
    uint64_t highest_epoch;
    char coordinator[37];
    int fence_pending;
    bool db_reachable;

    /* Timers (monotonic ms). */
    int64_t next_heartbeat, next_beacon, next_tick, next_status, next_view;
    int64_t started_ms;
    int64_t started_wall_ms;

    /* Refused handshakes are logged once per key per minute (a peer with a
     * stale key retries every few hundred ms); the rest are counted. */
    s_zap_log_t zap_log[S_ZAP_LOG_KEYS];

    bool dirty;
    char printed[4096]; /* the last state line printed */
    int last_free_slots, last_in_flight;
} s_self_t;

/* ------------------------------------------------------------------ helpers */

static void s_count(s_self_t *self, cf_node_counter_t counter)
{
    atomic_fetch_add(&self->shared->counters[counter], 1);
}

static int64_t s_wall_ms(void)
{
    return zclock_time();
}

static void s_config_free(s_config_t **cfg_p)
{
    s_config_t *cfg = *cfg_p;
    if (!cfg)
        return;
    free(cfg->database_url);
    free(cfg->data_dir);
    free(cfg->beacon_iface);
    free(cfg->bind_endpoint);
    free(cfg->control_endpoint);
    free(cfg->http_endpoint);
    free(cfg->static_peers);
    free(cfg->status_file);
    free(cfg);
    *cfg_p = NULL;
}

static bool s_is_wildcard(const char *host)
{
    return !*host || !strcmp(host, "0.0.0.0") || !strcmp(host, "*") || !strcmp(host, "::");
}

/* The first IPv4 address of IFACE, for advertising a wildcard bind. */
static int s_iface_address(const char *iface, char *out, size_t outlen)
{
    struct ifaddrs *list = NULL;
    if (!iface || getifaddrs(&list) < 0)
        return -1;
    int rc = -1;
    for (struct ifaddrs *ifa = list; ifa; ifa = ifa->ifa_next) {
        if (!ifa->ifa_addr || ifa->ifa_addr->sa_family != AF_INET || strcmp(ifa->ifa_name, iface))
            continue;
        struct sockaddr_in *sin = (struct sockaddr_in *)ifa->ifa_addr;
        if (inet_ntop(AF_INET, &sin->sin_addr, out, (socklen_t)outlen)) {
            rc = 0;
            break;
        }
    }
    freeifaddrs(list);
    return rc;
}

/* ------------------------------------------------------------------ peers */

static void s_peer_close(s_peer_t *peer)
{
    if (peer->dealer)
        zmq_socket_monitor(zsock_resolve(peer->dealer), NULL, 0);
    zsock_destroy(&peer->monitor);
    zsock_destroy(&peer->dealer);
}

static void s_peer_destroy(s_peer_t **peer_p)
{
    s_peer_t *peer = *peer_p;
    if (!peer)
        return;
    s_peer_close(peer);
    json_decref(peer->caps_hello);
    json_decref(peer->caps_registry);
    free(peer);
    *peer_p = NULL;
}

/* Opens the DEALER to PEER (CURVE client, peer's key as server key) with a
 * monitor that reports handshakes. */
static int s_peer_connect(s_self_t *self, s_peer_t *peer)
{
    s_peer_close(peer);
    zsock_t *dealer = zsock_new(ZMQ_DEALER);
    if (!dealer)
        return -1;
    zsock_set_curve_serverkey(dealer, peer->key);
    zsock_set_curve_publickey(dealer, cf_identity_public_z85(self->identity));
    zsock_set_curve_secretkey(dealer, cf_identity_secret_z85(self->identity));
    zsock_set_linger(dealer, 200); /* lets a BYE out at shutdown */
    zsock_set_sndhwm(dealer, 100);
    zsock_set_immediate(dealer, 1); /* queue nothing for a peer we are not connected to */
    zsock_set_reconnect_ivl(dealer, 100);
    zsock_set_reconnect_ivl_max(dealer, 1000);
    zsock_set_heartbeat_ivl(dealer, self->cfg->heartbeat_ms);
    zsock_set_heartbeat_timeout(dealer, self->cfg->peer_grace_ms);
    char monitor_ep[64];
    snprintf(monitor_ep, sizeof monitor_ep, "inproc://cf-node-monitor-%d", ++self->monitor_seq);
    if (zmq_socket_monitor(zsock_resolve(dealer), monitor_ep, S_MONITOR_EVENTS) < 0) {
        zsock_destroy(&dealer);
        return -1;
    }
    zsock_t *monitor = zsock_new(ZMQ_PAIR);
    if (!monitor || zsock_connect(monitor, "%s", monitor_ep) < 0 ||
        zsock_connect(dealer, "%s", peer->control_endpoint) < 0) {
        cf_log_warn("node", "cannot connect to peer %s at %s", peer->id[0] ? peer->id : peer->key,
                    peer->control_endpoint);
        zmq_socket_monitor(zsock_resolve(dealer), NULL, 0);
        zsock_destroy(&monitor);
        zsock_destroy(&dealer);
        return -1;
    }
    peer->dealer = dealer;
    peer->monitor = monitor;
    peer->connected_ms = zclock_mono();
    return 0;
}

static s_peer_t *s_peer_by_id(s_self_t *self, const char *id)
{
    for (s_peer_t *peer = zhashx_first(self->peers); peer; peer = zhashx_next(self->peers))
        if (!strcmp(peer->id, id))
            return peer;
    return NULL;
}

static const char *s_peer_name(const s_peer_t *peer)
{
    return peer->id[0] ? peer->id : peer->key;
}

/* A peer learned from an authenticated source (or configured). Creates it,
 * or refreshes it; a new endpoint replaces the old one unless the link works. */
static s_peer_t *s_peer_learn(s_self_t *self, const char *id, const char *key, const char *control,
                              const char *http, unsigned source)
{
    if (!strcmp(key, cf_identity_public_z85(self->identity)) || (id && !strcmp(id, self->my_id)))
        return NULL;
    s_peer_t *peer = zhashx_lookup(self->peers, key);
    int64_t now = zclock_mono();
    if (!peer) {
        if (id && *id) {
            /* Same node, new key (its identity was recreated): the old entry
             * is someone else now and is forgotten. */
            s_peer_t *old = s_peer_by_id(self, id);
            if (old) {
                cf_log_warn("node", "peer %s changed its key; forgetting the old one", id);
                zhashx_delete(self->peers, old->key);
            }
        }
        if (zhashx_size(self->peers) >= S_MAX_PEERS) {
            cf_log_warn("node", "ignoring peer %s: already %d peers", id ? id : key, S_MAX_PEERS);
            return NULL;
        }
        peer = calloc(1, sizeof *peer);
        if (!peer)
            return NULL;
        snprintf(peer->key, sizeof peer->key, "%s", key);
        snprintf(peer->control_endpoint, sizeof peer->control_endpoint, "%s", control);
        zhashx_insert(self->peers, key, peer);
        cf_log_info("node", "discovered peer %s via %s at %s", id && *id ? id : key,
                    source == S_SRC_BEACON     ? "beacon"
                    : source == S_SRC_REGISTRY ? "registry"
                                               : "configuration",
                    control);
        s_peer_connect(self, peer);
        self->dirty = true;
    } else if (strcmp(peer->control_endpoint, control) && peer->state != S_ALIVE &&
               now - peer->connected_ms > 3000) {
        /* Beacon and registry may name different addresses: try another
         * only after giving the current one a fair chance. */
        cf_log_info("node", "peer %s moved to %s", s_peer_name(peer), control);
        snprintf(peer->control_endpoint, sizeof peer->control_endpoint, "%s", control);
        s_peer_connect(self, peer);
        self->dirty = true;
    }
    if (id && *id && !peer->id[0])
        snprintf(peer->id, sizeof peer->id, "%s", id);
    if (http && *http)
        snprintf(peer->http_endpoint, sizeof peer->http_endpoint, "%s", http);
    peer->sources |= source;
    peer->discovered_ms = now;
    return peer;
}

/* ------------------------------------------------------------------ sending */

static int s_send(s_self_t *self, s_peer_t *peer, cf_msg_t *msg)
{
    uint8_t *data = NULL;
    size_t size = 0;
    char err[256];
    if (!peer->dealer)
        return -1;
    if (cf_msg_encode(msg, &data, &size, err, sizeof err) < 0) {
        cf_log_error("node", "not sending %s: %s", cf_msg_type_name(msg->type), err);
        return -1;
    }
    zframe_t *frame = zframe_new(data, size);
    free(data);
    if (!frame)
        return -1;
    /* Never block the actor on a slow or absent peer. */
    if (zframe_send(&frame, peer->dealer, ZFRAME_DONTWAIT) < 0) {
        zframe_destroy(&frame);
        return -1;
    }
    s_count(self, CF_NODE_MESSAGES_SENT);
    return 0;
}

static void s_build_hello(s_self_t *self, cf_msg_t *msg, bool want_hello)
{
    cf_msg_init(msg, CF_MSG_HELLO);
    snprintf(msg->hello.node_id, sizeof msg->hello.node_id, "%s", self->my_id);
    cf_msg_set_str(&msg->hello.software, "clipfarm " CF_VERSION);
    cf_msg_set_str(&msg->hello.control_endpoint, self->cfg->control_endpoint);
    cf_msg_set_str(&msg->hello.http_endpoint, self->cfg->http_endpoint);
    msg->hello.cores = (uint64_t)cf_caps_cores(self->caps);
    msg->hello.memory_mb = (uint64_t)cf_caps_memory_mb(self->caps);
    msg->hello.slots = (uint64_t)cf_caps_slots(self->caps);
    for (int i = 0; i < cf_caps_encoder_count(self->caps) && i < 16; i++) {
        cf_proto_strlist_add(&msg->hello.encoders, cf_caps_encoder_name(self->caps, i));
        cf_proto_f64list_add(&msg->hello.encoder_fps, cf_caps_encoder_fps(self->caps, i));
    }
    for (int i = 0; i < cf_caps_tag_count(self->caps) && i < 32; i++)
        cf_proto_strlist_add(&msg->hello.tags, cf_caps_tag(self->caps, i));
    msg->hello.want_hello = want_hello;
}

static void s_send_hello(s_self_t *self, s_peer_t *peer, bool want_hello)
{
    cf_msg_t msg;
    s_build_hello(self, &msg, want_hello);
    s_send(self, peer, &msg);
    cf_msg_clear(&msg);
    if (want_hello)
        peer->hello_requested_ms = zclock_mono();
}

static void s_send_leader(s_self_t *self, s_peer_t *peer)
{
    cf_msg_t msg;
    cf_msg_init(&msg, CF_MSG_LEADER);
    msg.leader.epoch = self->my_epoch;
    snprintf(msg.leader.node_id, sizeof msg.leader.node_id, "%s", self->my_id);
    s_send(self, peer, &msg);
    cf_msg_clear(&msg);
}

static void s_heartbeat_round(s_self_t *self)
{
    double loads[1] = {0};
    if (getloadavg(loads, 1) < 1 || loads[0] < 0)
        loads[0] = 0;
    cf_msg_t msg;
    cf_msg_init(&msg, CF_MSG_HEARTBEAT);
    msg.heartbeat.load = loads[0] < 1e6 ? loads[0] : 1e6;
    int free_slots = atomic_load(&self->shared->free_slots);
    int in_flight = atomic_load(&self->shared->in_flight);
    msg.heartbeat.free_slots = (uint64_t)(free_slots < 0 ? 0 : free_slots > 256 ? 256 : free_slots);
    msg.heartbeat.in_flight = (uint64_t)(in_flight < 0 ? 0 : in_flight > 65536 ? 65536 : in_flight);
    msg.heartbeat.epoch = self->highest_epoch;
    int64_t now = zclock_mono();
    for (s_peer_t *peer = zhashx_first(self->peers); peer; peer = zhashx_next(self->peers)) {
        /* The HELLO sent at connection time can be lost (the link may not be
         * writable yet when the handshake event arrives): ask again until
         * the peer's HELLO is in. */
        if (!peer->hello_received && now - peer->hello_requested_ms > S_HELLO_RETRY_MS)
            s_send_hello(self, peer, true);
        s_send(self, peer, &msg);
        if (self->leader)
            s_send_leader(self, peer);
    }
    cf_msg_clear(&msg);
    if (free_slots != self->last_free_slots || in_flight != self->last_in_flight) {
        self->last_free_slots = free_slots;
        self->last_in_flight = in_flight;
        json_t *caps = cf_caps_to_json(self->caps);
        char *text = json_dumps(caps, JSON_COMPACT);
        if (text)
            zsock_send(self->registry, "ssii", "SELF", text, free_slots, in_flight);
        free(text);
        json_decref(caps);
        self->dirty = true;
    }
}

/* ------------------------------------------------------------------ epochs */

static void s_set_shared_epoch(s_self_t *self)
{
    atomic_store(&self->shared->coordinator_epoch, self->leader ? (int64_t)self->my_epoch : 0);
}

/* Records EPOCH as seen. A coordinator that sees a newer epoch than its own
 * has been replaced, whatever its lease thread believes: it stops now. */
static void s_see_epoch(s_self_t *self, uint64_t epoch)
{
    if (epoch <= self->highest_epoch)
        return;
    self->highest_epoch = epoch;
    self->dirty = true;
    if (self->leader && epoch > self->my_epoch) {
        cf_log_warn("node", "epoch %" PRIu64 " exists: no longer coordinator (epoch %" PRIu64 ")",
                    epoch, self->my_epoch);
        self->leader = false;
        s_count(self, CF_NODE_LEASES_LOST);
        s_set_shared_epoch(self);
        zstr_sendfm(self->election, "DEPOSED");
        zstr_sendf(self->election, "%" PRIu64, epoch);
    }
}

static void s_queue_gone(s_self_t *self, s_peer_t *peer)
{
    if (!self->leader || !peer->id[0])
        return;
    zsock_send(self->fence, "s8ss", "GONE", (uint64_t)self->my_epoch, self->my_id, peer->id);
    self->fence_pending++;
    self->dirty = true;
}

/* ------------------------------------------------------------------ liveness */

static void s_peer_alive(s_self_t *self, s_peer_t *peer)
{
    peer->heard_ms = zclock_mono();
    if (peer->state == S_ALIVE)
        return;
    cf_log_info("node", "peer %s %s", s_peer_name(peer), peer->ever_alive ? "is back" : "joined");
    peer->state = S_ALIVE;
    peer->ever_alive = true;
    s_count(self, CF_NODE_PEERS_JOINED);
    self->dirty = true;
}

static void s_tick(s_self_t *self)
{
    int64_t now = zclock_mono();
    int64_t forget_after = 3 * (int64_t)self->cfg->peer_grace_ms;
    if (forget_after < 20000)
        forget_after = 20000;
    zlistx_t *forget = zlistx_new();
    for (s_peer_t *peer = zhashx_first(self->peers); peer; peer = zhashx_next(self->peers)) {
        if (peer->reconnect_at_ms && now >= peer->reconnect_at_ms) {
            peer->reconnect_at_ms = 0;
            s_peer_connect(self, peer);
        }
        if (peer->state == S_ALIVE && now - peer->heard_ms > self->cfg->peer_grace_ms) {
            cf_log_warn("node", "peer %s gone: no heartbeat for %" PRId64 " ms", s_peer_name(peer),
                        now - peer->heard_ms);
            peer->state = S_GONE;
            s_count(self, CF_NODE_PEERS_GONE);
            s_queue_gone(self, peer);
            self->dirty = true;
        }
        if (!(peer->sources & S_SRC_STATIC) && peer->state != S_ALIVE &&
            now - peer->discovered_ms > forget_after && now - peer->heard_ms > forget_after)
            zlistx_add_end(forget, peer->key);
    }
    for (const char *key = zlistx_first(forget); key; key = zlistx_next(forget)) {
        cf_log_info("node", "forgetting peer %s (not seen for %" PRId64 " s)", key,
                    forget_after / 1000);
        zhashx_delete(self->peers, key);
        self->dirty = true;
    }
    zlistx_destroy(&forget);
}

/* ------------------------------------------------------------------ snapshot */

static json_t *s_peer_caps(const s_peer_t *peer)
{
    json_t *caps = peer->caps_hello ? peer->caps_hello : peer->caps_registry;
    return caps ? json_incref(caps) : json_null();
}

static json_t *s_build_snapshot(s_self_t *self)
{
    int64_t now = zclock_mono();
    json_t *peers = json_array();
    for (s_peer_t *peer = zhashx_first(self->peers); peer; peer = zhashx_next(self->peers)) {
        json_t *sources = json_array();
        if (peer->sources & S_SRC_BEACON)
            json_array_append_new(sources, json_string("beacon"));
        if (peer->sources & S_SRC_REGISTRY)
            json_array_append_new(sources, json_string("registry"));
        if (peer->sources & S_SRC_STATIC)
            json_array_append_new(sources, json_string("static"));
        json_array_append_new(
            peers, json_pack("{s:s?, s:s, s:s, s:s, s:s, s:o, s:o, s:f, s:i, s:i, s:I, s:o}", "id",
                             peer->id[0] ? peer->id : NULL, "state", s_state_names[peer->state],
                             "control_endpoint", peer->control_endpoint, "http_endpoint",
                             peer->http_endpoint, "public_key", peer->key, "discovered_by", sources,
                             "capabilities", s_peer_caps(peer), "load", peer->load, "free_slots",
                             peer->free_slots, "in_flight", peer->in_flight, "epoch_seen",
                             (json_int_t)peer->epoch_seen, "last_seen_ms_ago",
                             peer->heard_ms ? json_integer(now - peer->heard_ms) : json_null()));
    }
    json_t *counters = json_object();
    for (int i = 0; i < CF_NODE_COUNTER_COUNT; i++)
        json_object_set_new(counters, s_counter_info[i].name,
                            json_integer((json_int_t)atomic_load(&self->shared->counters[i])));
    return json_pack("{s:s, s:s, s:I, s:s?, s:s, s:s, s:s, s:o, s:i, s:i, s:I, s:b, s:o, "
                     "s:{s:i}, s:o}",
                     "id", self->my_id, "role", self->leader ? "coordinator" : "worker", "epoch",
                     (json_int_t)self->highest_epoch, "coordinator",
                     self->coordinator[0] ? self->coordinator : NULL, "control_endpoint",
                     self->cfg->control_endpoint, "http_endpoint", self->cfg->http_endpoint,
                     "public_key", cf_identity_public_z85(self->identity), "capabilities",
                     cf_caps_to_json(self->caps), "free_slots",
                     atomic_load(&self->shared->free_slots), "in_flight",
                     atomic_load(&self->shared->in_flight), "started_at_ms",
                     (json_int_t)self->started_wall_ms, "database_reachable", self->db_reachable,
                     "peers", peers, "fence", "pending", self->fence_pending, "counters", counters);
}

static void s_write_status_file(s_self_t *self, json_t *snapshot)
{
    if (!self->cfg->status_file)
        return;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", self->cfg->status_file);
    if (json_dump_file(snapshot, tmp, JSON_INDENT(1) | JSON_SORT_KEYS) < 0 ||
        rename(tmp, self->cfg->status_file) < 0)
        cf_log_warn("node", "cannot write the status file %s", self->cfg->status_file);
}

/* Prints the state line (and logs it) when role, epoch, coordinator or the
 * set of live peers changed. */
static void s_print_state(s_self_t *self)
{
    char line[sizeof self->printed];
    int alive = 0;
    size_t len = 0;
    char list[3500] = "";
    for (s_peer_t *peer = zhashx_first(self->peers); peer; peer = zhashx_next(self->peers)) {
        if (peer->state != S_ALIVE)
            continue;
        alive++;
        int n = snprintf(list + len, sizeof list - len, "%s%s", len ? "," : "", s_peer_name(peer));
        if (n > 0 && (size_t)n < sizeof list - len)
            len += (size_t)n;
    }
    snprintf(line, sizeof line, "role=%s epoch=%" PRIu64 " coordinator=%s peers=%d [%s]",
             self->leader ? "coordinator" : "worker", self->highest_epoch,
             self->coordinator[0] ? self->coordinator : "none", alive, list);
    if (!strcmp(line, self->printed))
        return;
    snprintf(self->printed, sizeof self->printed, "%s", line);
    cf_log_info("node", "%s", line);
    if (self->cfg->print_state) {
        printf("node %s: %s\n", self->my_id, line);
        fflush(stdout);
    }
}

static void s_print_caps(s_self_t *self)
{
    char *summary = cf_caps_summary(self->caps);
    cf_log_info("node", "capabilities: %s", summary ? summary : "?");
    if (self->cfg->print_state) {
        printf("node %s: capabilities: %s\n", self->my_id, summary ? summary : "?");
        fflush(stdout);
    }
    free(summary);
}

static void s_publish(s_self_t *self)
{
    json_t *snapshot = s_build_snapshot(self);
    if (!snapshot)
        return;
    s_write_status_file(self, snapshot);
    pthread_mutex_lock(&self->shared->mutex);
    json_decref(self->shared->snapshot);
    self->shared->snapshot = snapshot;
    pthread_mutex_unlock(&self->shared->mutex);
    s_print_state(self);
    self->dirty = false;
    self->next_status = zclock_mono() + S_STATUS_MS;
}

static void s_publish_view(s_self_t *self)
{
    json_t *members = json_array();
    json_array_append_new(members, json_pack("{s:s, s:s, s:s}", "id", self->my_id, "state", "alive",
                                             "http_endpoint", self->cfg->http_endpoint));
    for (s_peer_t *peer = zhashx_first(self->peers); peer; peer = zhashx_next(self->peers))
        if (peer->id[0] && peer->state == S_ALIVE)
            json_array_append_new(members,
                                  json_pack("{s:s, s:s, s:s}", "id", peer->id, "state", "alive",
                                            "http_endpoint", peer->http_endpoint));
    char *text = json_dumps(members, JSON_COMPACT);
    json_decref(members);
    if (!text)
        return;
    zsock_send(self->fence, "s8ss", "VIEW", (uint64_t)self->my_epoch, self->my_id, text);
    self->fence_pending++;
    free(text);
}

/* ------------------------------------------------------------------ handlers */

/* Logs a refused handshake from KEY unless one was logged in the last
 * minute; then it is only counted, and the next line says how many were
 * not logged. An attacker with ever new keys evicts the oldest entry, so
 * the table stays small and a line per new key is still at most what the
 * handshakes themselves cost. */
static void s_log_zap_refusal(s_self_t *self, const char *address, const char *key)
{
    int64_t now = zclock_mono();
    s_zap_log_t *entry = NULL, *oldest = &self->zap_log[0];
    for (int i = 0; i < S_ZAP_LOG_KEYS && !entry; i++) {
        s_zap_log_t *e = &self->zap_log[i];
        if (e->key[0] && !strcmp(e->key, key))
            entry = e;
        else if (e->logged_ms < oldest->logged_ms)
            oldest = e;
    }
    if (entry && now - entry->logged_ms < S_ZAP_LOG_PERIOD_MS) {
        entry->suppressed++;
        return;
    }
    unsigned suppressed = entry ? entry->suppressed : 0;
    if (!entry) {
        entry = oldest;
        snprintf(entry->key, sizeof entry->key, "%s", key);
    }
    entry->logged_ms = now;
    entry->suppressed = 0;
    cf_log_warn("node",
                "refused a CURVE handshake from %s (key %s): not learned from an "
                "authenticated beacon or the registry (%u more from this key not logged in "
                "the last minute)",
                address, key, suppressed);
}

static void s_handle_zap(s_self_t *self)
{
    zmsg_t *request = zmsg_recv(self->zap);
    if (!request)
        return;
    char *version = zmsg_popstr(request);
    char *sequence = zmsg_popstr(request);
    char *domain = zmsg_popstr(request);
    char *address = zmsg_popstr(request);
    zframe_t *routing = zmsg_pop(request);
    char *mechanism = zmsg_popstr(request);
    zframe_t *credentials = zmsg_pop(request);

    char key[41] = "";
    bool allowed = false;
    if (version && !strcmp(version, "1.0") && mechanism && !strcmp(mechanism, "CURVE") &&
        credentials && zframe_size(credentials) == 32 &&
        cf_key_to_z85(zframe_data(credentials), key) == 0) {
        /* Only keys that authenticated themselves: a --peer entry is ours
         * to dial, not a reason to let that key in. */
        s_peer_t *peer = zhashx_lookup(self->peers, key);
        allowed = peer && (peer->sources & (S_SRC_BEACON | S_SRC_REGISTRY));
    }
    if (allowed) {
        s_count(self, CF_NODE_ZAP_ALLOWED);
    } else {
        s_count(self, CF_NODE_ZAP_DENIED);
        s_log_zap_refusal(self, address ? address : "?", key[0] ? key : "?");
    }
    zmsg_t *reply = zmsg_new();
    zmsg_addstr(reply, "1.0");
    zmsg_addstr(reply, sequence ? sequence : "");
    zmsg_addstr(reply, allowed ? "200" : "400");
    zmsg_addstr(reply, allowed ? "OK" : "unknown key");
    zmsg_addstr(reply, allowed ? key : "");
    zmsg_addmem(reply, NULL, 0);
    zmsg_send(&reply, self->zap);

    free(version);
    free(sequence);
    free(domain);
    free(address);
    zframe_destroy(&routing);
    free(mechanism);
    zframe_destroy(&credentials);
    zmsg_destroy(&request);
}

static json_t *s_caps_from_hello(const cf_msg_hello_t *hello)
{
    json_t *encoders = json_array();
    for (size_t i = 0; i < hello->encoders.count; i++)
        json_array_append_new(encoders, json_pack("{s:s, s:f}", "name", hello->encoders.items[i],
                                                  "fps", hello->encoder_fps.items[i]));
    json_t *tags = json_array();
    for (size_t i = 0; i < hello->tags.count; i++)
        json_array_append_new(tags, json_string(hello->tags.items[i]));
    return json_pack("{s:I, s:I, s:I, s:o, s:o}", "cores", (json_int_t)hello->cores, "memory_mb",
                     (json_int_t)hello->memory_mb, "slots", (json_int_t)hello->slots, "encoders",
                     encoders, "tags", tags);
}

static void s_handle_message(s_self_t *self, s_peer_t *peer, cf_msg_t *msg)
{
    /* Epoch-carrying messages older than what we have seen are ignored. */
    uint64_t epoch = cf_msg_epoch(msg);
    if (msg->type != CF_MSG_HEARTBEAT && epoch && epoch < self->highest_epoch) {
        s_count(self, CF_NODE_MESSAGES_STALE_EPOCH);
        cf_log_info("node", "ignored %s of epoch %" PRIu64 " from %s: epoch %" PRIu64 " is current",
                    cf_msg_type_name(msg->type), epoch, s_peer_name(peer), self->highest_epoch);
        s_peer_alive(self, peer);
        return;
    }
    s_peer_alive(self, peer);
    if (msg->type != CF_MSG_HELLO && !peer->hello_received &&
        zclock_mono() - peer->hello_requested_ms > S_HELLO_RETRY_MS)
        s_send_hello(self, peer, true);

    switch (msg->type) {
        case CF_MSG_HELLO: {
            const cf_msg_hello_t *hello = &msg->hello;
            if (peer->id[0] && strcmp(peer->id, hello->node_id)) {
                s_count(self, CF_NODE_MESSAGES_MALFORMED);
                cf_log_warn("node", "dropped a HELLO claiming node %s from the key of node %s",
                            hello->node_id, peer->id);
                return;
            }
            if (!peer->id[0]) {
                s_peer_t *other = s_peer_by_id(self, hello->node_id);
                if (other && other != peer) {
                    s_count(self, CF_NODE_MESSAGES_MALFORMED);
                    cf_log_warn("node", "dropped a HELLO claiming node %s from another key",
                                hello->node_id);
                    return;
                }
                snprintf(peer->id, sizeof peer->id, "%s", hello->node_id);
            }
            if (!peer->hello_received)
                cf_log_info("node", "peer %s: %s, %zu encoder(s)", peer->id, hello->software,
                            hello->encoders.count);
            peer->hello_received = true;
            snprintf(peer->software, sizeof peer->software, "%s", hello->software);
            if (hello->http_endpoint[0])
                snprintf(peer->http_endpoint, sizeof peer->http_endpoint, "%s",
                         hello->http_endpoint);
            json_decref(peer->caps_hello);
            peer->caps_hello = s_caps_from_hello(hello);
            if (hello->want_hello)
                s_send_hello(self, peer, false);
            self->dirty = true;
            break;
        }
        case CF_MSG_HEARTBEAT:
            peer->load = msg->heartbeat.load;
            peer->free_slots = (int)msg->heartbeat.free_slots;
            peer->in_flight = (int)msg->heartbeat.in_flight;
            peer->epoch_seen = msg->heartbeat.epoch;
            s_see_epoch(self, msg->heartbeat.epoch);
            break;
        case CF_MSG_LEADER:
            if (strcmp(msg->leader.node_id, peer->id)) {
                s_count(self, CF_NODE_MESSAGES_MALFORMED);
                cf_log_warn("node", "dropped a LEADER for node %s sent by node %s",
                            msg->leader.node_id, s_peer_name(peer));
                return;
            }
            s_see_epoch(self, msg->leader.epoch);
            if (msg->leader.epoch == self->highest_epoch &&
                strcmp(self->coordinator, msg->leader.node_id)) {
                snprintf(self->coordinator, sizeof self->coordinator, "%s", msg->leader.node_id);
                self->dirty = true;
            }
            break;
        case CF_MSG_ASSIGN: {
            /* Dispatch arrives with the scheduler; until then say no, so a
             * coordinator never waits on us. */
            cf_msg_t reply;
            cf_msg_init(&reply, CF_MSG_REJECT);
            reply.reject.epoch = msg->assign.epoch;
            snprintf(reply.reject.composition, sizeof reply.reject.composition, "%s",
                     msg->assign.composition);
            reply.reject.segment = msg->assign.segment;
            cf_msg_set_str(&reply.reject.reason, "this node takes no segments over the network");
            s_send(self, peer, &reply);
            cf_msg_clear(&reply);
            break;
        }
        case CF_MSG_BYE:
            cf_log_info("node", "peer %s left: %s", s_peer_name(peer), msg->bye.reason);
            peer->state = S_LEFT;
            peer->hello_received = false;
            s_count(self, CF_NODE_PEERS_GONE);
            if (!strcmp(peer->id, self->coordinator))
                zstr_send(self->election, "RETRY"); /* its lease is free now */
            self->dirty = true;
            break;
        default:
            cf_log_debug("node", "%s from %s: not handled by this version",
                         cf_msg_type_name(msg->type), s_peer_name(peer));
            break;
    }
}

static void s_handle_router(s_self_t *self)
{
    zmsg_t *zmsg = zmsg_recv(self->router);
    if (!zmsg)
        return;
    zframe_t *routing = zmsg_first(zmsg);
    zframe_t *payload = zmsg_next(zmsg);
    if (zmsg_size(zmsg) != 2 || !routing || !payload) {
        s_count(self, CF_NODE_MESSAGES_MALFORMED);
        zmsg_destroy(&zmsg);
        return;
    }
    const char *user = zframe_meta(payload, "User-Id");
    s_peer_t *peer = user ? zhashx_lookup(self->peers, user) : NULL;
    if (!peer) {
        cf_log_debug("node", "message from a key no longer known: dropped");
        zmsg_destroy(&zmsg);
        return;
    }
    cf_msg_t msg;
    char err[256];
    if (cf_msg_decode(zframe_data(payload), zframe_size(payload), &msg, err, sizeof err) < 0) {
        s_count(self, CF_NODE_MESSAGES_MALFORMED);
        cf_log_warn("node", "dropped a malformed message from %s: %s", s_peer_name(peer), err);
        zmsg_destroy(&zmsg);
        return;
    }
    zmsg_destroy(&zmsg);
    s_count(self, CF_NODE_MESSAGES_RECEIVED);
    s_handle_message(self, peer, &msg);
    cf_msg_clear(&msg);
}

static void s_handle_monitor(s_self_t *self, s_peer_t *peer)
{
    zmsg_t *event = zmsg_recv(peer->monitor);
    if (!event)
        return;
    zframe_t *head = zmsg_first(event);
    if (head && zframe_size(head) >= 6) {
        uint16_t id;
        uint32_t value;
        memcpy(&id, zframe_data(head), 2);
        memcpy(&value, zframe_data(head) + 2, 4);
        if (id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            cf_log_debug("node", "linked to %s", s_peer_name(peer));
            peer->hello_received = false;
            peer->reconnect_delay_ms = 0;
            s_send_hello(self, peer, true);
        } else if (id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH ||
                   id == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
            s_count(self, CF_NODE_CONNECT_AUTH_FAILED);
            /* Usually the peer has not learned our key yet (its beacon or
             * registry round is still to come); a stranger keeps failing. */
            peer->reconnect_delay_ms =
                peer->reconnect_delay_ms
                    ? (peer->reconnect_delay_ms * 2 > 5000 ? 5000 : peer->reconnect_delay_ms * 2)
                    : 200;
            peer->reconnect_at_ms = zclock_mono() + peer->reconnect_delay_ms;
            cf_log_info("node", "peer %s at %s refused our CURVE handshake (%s %u); again in %d ms",
                        s_peer_name(peer), peer->control_endpoint,
                        id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH ? "auth status" : "protocol error",
                        value, peer->reconnect_delay_ms);
        }
    }
    zmsg_destroy(&event);
}

static void s_handle_beacon(s_self_t *self)
{
    char *address = zstr_recv(self->beacon);
    zframe_t *frame = address ? zframe_recv(self->beacon) : NULL;
    if (!frame) {
        free(address);
        return;
    }
    cf_beacon_t beacon;
    cf_beacon_status_t status =
        cf_beacon_decode(zframe_data(frame), zframe_size(frame), cf_secret_key(self->secret),
                         s_wall_ms(), self->cfg->replay_window_ms, &beacon);
    zframe_destroy(&frame);
    if (status == CF_BEACON_OK && !strcmp(beacon.node_id, self->my_id)) {
        free(address); /* our own, echoed by the network */
        return;
    }
    char key[41] = "";
    s_peer_t *known = NULL;
    if (status == CF_BEACON_OK) {
        cf_key_to_z85(beacon.public_key, key);
        known = zhashx_lookup(self->peers, key);
        /* Older than one already accepted from that node: a replay. */
        if (known && beacon.timestamp_ms < known->beacon_ts)
            status = CF_BEACON_REPLAYED;
    }
    if (status != CF_BEACON_OK) {
        static const cf_node_counter_t which[] = {
            [CF_BEACON_MALFORMED] = CF_NODE_BEACONS_MALFORMED,
            [CF_BEACON_BAD_VERSION] = CF_NODE_BEACONS_BAD_VERSION,
            [CF_BEACON_BAD_MAC] = CF_NODE_BEACONS_BAD_MAC,
            [CF_BEACON_REPLAYED] = CF_NODE_BEACONS_REPLAYED,
        };
        s_count(self, CF_NODE_BEACONS_REJECTED);
        s_count(self, which[status]);
        cf_log_debug("node", "dropped a beacon from %s: %s", address,
                     cf_beacon_status_name(status));
        free(address);
        return;
    }
    s_count(self, CF_NODE_BEACONS_ACCEPTED);
    char control[280], http[280] = "";
    snprintf(control, sizeof control, "tcp://%s:%u", address, beacon.control_port);
    if (beacon.http_port)
        snprintf(http, sizeof http, "http://%s:%u", address, beacon.http_port);
    s_peer_t *peer = s_peer_learn(self, beacon.node_id, key, control, http, S_SRC_BEACON);
    if (peer)
        peer->beacon_ts = beacon.timestamp_ms;
    free(address);
}

static void s_send_beacon(s_self_t *self)
{
    cf_beacon_t beacon = {.control_port = (uint16_t)self->cfg->control_port,
                          .http_port = (uint16_t)self->cfg->http_port,
                          .timestamp_ms = s_wall_ms()};
    snprintf(beacon.node_id, sizeof beacon.node_id, "%s", self->my_id);
    memcpy(beacon.public_key, cf_identity_public_key(self->identity), 32);
    uint8_t frame[CF_BEACON_SIZE];
    if (cf_beacon_encode(&beacon, cf_secret_key(self->secret), frame) < 0)
        return;
    /* A fresh timestamp (and MAC) on every beacon; PUBLISH sends at once. */
    zsock_send(self->beacon, "sbi", "PUBLISH", frame, sizeof frame,
               self->cfg->beacon_interval_ms * 4);
    s_count(self, CF_NODE_BEACONS_SENT);
}

static void s_handle_election(s_self_t *self)
{
    char *command = NULL, *holder = NULL;
    int held = 0;
    uint64_t epoch = 0;
    zmsg_t *msg = zmsg_recv(self->election);
    if (!msg)
        return;
    command = zmsg_popstr(msg);
    if (command && !strcmp(command, "DB")) {
        char *flag = zmsg_popstr(msg);
        self->db_reachable = flag && flag[0] == '1';
        free(flag);
        self->dirty = true;
    } else if (command && !strcmp(command, "LEASE")) {
        char *held_text = zmsg_popstr(msg);
        holder = zmsg_popstr(msg);
        char *epoch_text = zmsg_popstr(msg); /* czmq sends '8' as decimal text */
        held = held_text && held_text[0] == '1';
        epoch = epoch_text ? strtoull(epoch_text, NULL, 10) : 0;
        free(epoch_text);
        free(held_text);
        s_see_epoch(self, epoch);
        if (held && !(self->leader && self->my_epoch == epoch) && epoch >= self->highest_epoch) {
            self->leader = true;
            self->my_epoch = epoch;
            snprintf(self->coordinator, sizeof self->coordinator, "%s", self->my_id);
            s_count(self, CF_NODE_ELECTIONS_WON);
            cf_log_info("node", "this node is the coordinator, epoch %" PRIu64, epoch);
            /* Tell everyone now, and record the departures seen so far. */
            for (s_peer_t *peer = zhashx_first(self->peers); peer;
                 peer = zhashx_next(self->peers)) {
                s_send_leader(self, peer);
                if (peer->state == S_GONE)
                    s_queue_gone(self, peer);
            }
            self->next_view = 0;
        } else if (!held) {
            if (self->leader) {
                self->leader = false;
                s_count(self, CF_NODE_LEASES_LOST);
            }
            if (epoch >= self->highest_epoch && holder)
                snprintf(self->coordinator, sizeof self->coordinator, "%s", holder);
        }
        s_set_shared_epoch(self);
        self->dirty = true;
    }
    free(command);
    free(holder);
    zmsg_destroy(&msg);
}

static void s_handle_registry(s_self_t *self)
{
    zmsg_t *msg = zmsg_recv(self->registry);
    if (!msg)
        return;
    char *command = zmsg_popstr(msg);
    if (command && !strcmp(command, "PEER") && zmsg_size(msg) == 9) {
        char *id = zmsg_popstr(msg), *key = zmsg_popstr(msg), *control = zmsg_popstr(msg);
        char *http = zmsg_popstr(msg), *caps = zmsg_popstr(msg);
        char *free_slots = zmsg_popstr(msg), *in_flight = zmsg_popstr(msg);
        char *state = zmsg_popstr(msg);
        uint8_t raw[32];
        if (id && key && control && http && caps && cf_key_from_z85(key, raw) == 0 &&
            cf_proto_is_uuid(id, strlen(id))) {
            s_peer_t *peer = s_peer_learn(self, id, key, control, http, S_SRC_REGISTRY);
            if (peer) {
                json_t *parsed = strlen(caps) <= 16384 ? cf_json_loads(caps, 0, NULL) : NULL;
                json_decref(peer->caps_registry);
                peer->caps_registry = json_is_object(parsed) ? parsed : NULL;
                if (!peer->caps_registry)
                    json_decref(parsed);
                if (!peer->heard_ms) {
                    peer->free_slots = free_slots ? atoi(free_slots) : 0;
                    peer->in_flight = in_flight ? atoi(in_flight) : 0;
                }
            }
        }
        free(id);
        free(key);
        free(control);
        free(http);
        free(caps);
        free(free_slots);
        free(in_flight);
        free(state);
    } else if (command && !strcmp(command, "REJECTED")) {
        s_count(self, CF_NODE_REGISTRY_REJECTED);
    }
    free(command);
    zmsg_destroy(&msg);
}

static void s_handle_fence(s_self_t *self)
{
    char *command = NULL, *kind = NULL, *verdict = NULL, *subject = NULL;
    uint64_t epoch = 0;
    if (zsock_recv(self->fence, "sss8s", &command, &kind, &verdict, &epoch, &subject) < 0)
        return;
    if (command && !strcmp(command, "FENCE") && verdict) {
        if (self->fence_pending > 0)
            self->fence_pending--;
        if (!strcmp(verdict, "passed"))
            s_count(self, CF_NODE_FENCED_WRITES_APPLIED);
        else if (!strcmp(verdict, "stale"))
            s_count(self, CF_NODE_FENCED_WRITES_REJECTED);
        self->dirty = true;
    }
    free(command);
    free(kind);
    free(verdict);
    free(subject);
}

/* ------------------------------------------------------------------ calibration */

/* The calibration runs in a detached thread: an encoder cannot be
 * interrupted mid-frame, and under load (or a sanitizer) draining one can
 * take longer than a node may take to leave. The job is shared by the thread
 * and the actor and freed by whichever lets go last. */
typedef struct s_calibration_t {
    atomic_int refs;
    atomic_int stop;
    atomic_int done; /* caps holds the result */
    int fds[2];      /* the thread writes one byte to [1] when it finishes */
    cf_caps_t *caps;
    char *data_dir;
} s_calibration_t;

static void s_calibration_release(s_calibration_t **job_p)
{
    s_calibration_t *job = *job_p;
    *job_p = NULL;
    if (!job || atomic_fetch_sub(&job->refs, 1) != 1)
        return;
    cf_caps_destroy(&job->caps);
    free(job->data_dir);
    close(job->fds[0]);
    close(job->fds[1]);
    free(job);
}

static void *s_calibrator(void *arg)
{
    s_calibration_t *job = arg;
    char err[512];
    int rc = cf_caps_calibrate(job->caps, job->data_dir, &job->stop, err, sizeof err);
    if (!atomic_load(&job->stop)) {
        if (rc < 0)
            cf_log_warn("node", "calibration: %s", err);
        atomic_store(&job->done, 1);
    }
    /* Never blocks or raises SIGPIPE: the socket stays open until the
     * last reference goes. */
    (void)!send(job->fds[1], "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    s_calibration_release(&job);
    return NULL;
}

static void s_start_calibration(s_self_t *self)
{
    s_calibration_t *job = calloc(1, sizeof *job);
    if (!job)
        return;
    job->fds[0] = job->fds[1] = -1;
    atomic_store(&job->refs, 2);
    job->caps = cf_caps_dup(self->caps);
    job->data_dir = strdup(self->cfg->data_dir);
    pthread_attr_t attr;
    pthread_t thread;
    bool started = false;
    if (job->caps && job->data_dir &&
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, job->fds) == 0 &&
        pthread_attr_init(&attr) == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        started = pthread_create(&thread, &attr, s_calibrator, job) == 0;
        pthread_attr_destroy(&attr);
    }
    if (!started) {
        cf_log_warn("node", "cannot start the calibration; encoder speeds stay unknown");
        atomic_store(&job->refs, 1);
        s_calibration_release(&job);
        return;
    }
    self->calibration = job;
}

static void s_handle_calibration(s_self_t *self)
{
    s_calibration_t *job = self->calibration;
    char byte;
    (void)!read(job->fds[0], &byte, 1);
    if (atomic_load(&job->done) && job->caps) {
        cf_caps_destroy(&self->caps);
        self->caps = job->caps;
        job->caps = NULL;
        s_print_caps(self);
        /* Peers and the registry learn the figures. */
        for (s_peer_t *peer = zhashx_first(self->peers); peer; peer = zhashx_next(self->peers))
            s_send_hello(self, peer, false);
        self->last_free_slots = -1;
        self->dirty = true;
    }
    s_calibration_release(&self->calibration);
}

/* At shutdown: stop it, give it a moment to finish, then let it go. */
static void s_stop_calibration(s_self_t *self)
{
    s_calibration_t *job = self->calibration;
    if (!job)
        return;
    atomic_store(&job->stop, 1);
    struct pollfd pfd = {.fd = job->fds[0], .events = POLLIN};
    if (poll(&pfd, 1, 300) <= 0)
        cf_log_debug("node", "leaving while the calibration winds down");
    s_calibration_release(&self->calibration);
}

/* ------------------------------------------------------------------ set-up */

/* Parses one "Z85KEY@HOST:PORT" (a Z85 key may itself hold '@', the address
 * cannot: split at the last one). Returns 0 with the key and endpoint. */
static int s_parse_static_peer(char *item, const char **key_p, char *control, size_t len)
{
    char *at = strrchr(item, '@');
    uint8_t raw[32];
    char host[256], why[128];
    int port;
    if (!at)
        return -1;
    *at = '\0';
    if (cf_key_from_z85(item, raw) < 0 ||
        cf_hostport_parse(at + 1, host, sizeof host, &port, why, sizeof why) < 0)
        return -1;
    snprintf(control, len, "tcp://%s:%d", host, port);
    *key_p = item;
    return 0;
}

/* Checks (SELF NULL) or adds the --peer list. */
static int s_static_peers(s_self_t *self, const char *spec, char *err, size_t errlen)
{
    if (!spec || !*spec)
        return 0;
    char *list = strdup(spec);
    int rc = list ? 0 : -1;
    for (char *save = NULL, *item = list ? strtok_r(list, ",", &save) : NULL; item && rc == 0;
         item = strtok_r(NULL, ",", &save)) {
        char shown[128], control[300];
        const char *key = NULL;
        snprintf(shown, sizeof shown, "%s", item);
        if (s_parse_static_peer(item, &key, control, sizeof control) < 0) {
            snprintf(err, errlen, "--peer: expected Z85KEY@HOST:PORT, got '%s'", shown);
            rc = -1;
        } else if (self) {
            s_peer_learn(self, NULL, key, control, NULL, S_SRC_STATIC);
        }
    }
    free(list);
    return rc;
}

static int s_self_start(s_self_t *self, char *err, size_t errlen)
{
    s_config_t *cfg = self->cfg;
    self->shutdown_fd = eventfd(0, EFD_CLOEXEC);
    if (self->shutdown_fd < 0) {
        snprintf(err, errlen, "cannot create an eventfd: %s", strerror(errno));
        return -1;
    }
    self->peers = zhashx_new();
    zhashx_set_destructor(self->peers, (zhashx_destructor_fn *)s_peer_destroy);

    /* The ZAP handler must exist before the ROUTER binds: without one, libzmq
     * lets every CURVE client in. */
    self->zap = zsock_new(ZMQ_REP);
    if (!self->zap || zsock_bind(self->zap, S_ZAP_ENDPOINT) < 0) {
        snprintf(err, errlen, "cannot start the ZAP handler (another node in this process?)");
        return -1;
    }
    self->router = zsock_new(ZMQ_ROUTER);
    if (!self->router) {
        snprintf(err, errlen, "cannot create the control socket");
        return -1;
    }
    zsock_set_zap_domain(self->router, S_ZAP_DOMAIN);
    zsock_set_curve_server(self->router, 1);
    zsock_set_curve_publickey(self->router, cf_identity_public_z85(self->identity));
    zsock_set_curve_secretkey(self->router, cf_identity_secret_z85(self->identity));
    zsock_set_linger(self->router, 0);
    zsock_set_heartbeat_ivl(self->router, cfg->heartbeat_ms);
    zsock_set_heartbeat_timeout(self->router, cfg->peer_grace_ms);
    zsock_set_maxmsgsize(self->router, CF_PROTO_MAX_SIZE);
    if (zsock_bind(self->router, "%s", cfg->bind_endpoint) < 0) {
        snprintf(err, errlen, "--control-addr: cannot listen on %s: %s", cfg->bind_endpoint,
                 zmq_strerror(zmq_errno()));
        return -1;
    }

    if (cfg->beacon_iface) {
        self->beacon = zactor_new(zbeacon, NULL);
        if (!self->beacon) {
            snprintf(err, errlen, "cannot start the beacon");
            return -1;
        }
        zsock_send(self->beacon, "si", "CONFIGURE", cfg->beacon_port);
        char *hostname = zstr_recv(self->beacon);
        bool ok = hostname && *hostname;
        free(hostname);
        if (!ok) {
            snprintf(err, errlen,
                     "--beacon-iface %s: no IPv4 broadcast address to beacon on (port %d)",
                     cfg->beacon_iface, cfg->beacon_port);
            return -1;
        }
        zsock_send(self->beacon, "sb", "SUBSCRIBE", CF_BEACON_MAGIC, (size_t)CF_BEACON_MAGIC_LEN);
    }

    json_t *caps = cf_caps_to_json(self->caps);
    char *caps_text = json_dumps(caps, JSON_COMPACT);
    json_decref(caps);
    cf_discovery_args_t registry = {
        .database_url = cfg->database_url,
        .node_id = self->my_id,
        .public_key = cf_identity_public_z85(self->identity),
        .control_endpoint = cfg->control_endpoint,
        .http_endpoint = cfg->http_endpoint,
        .capabilities = caps_text,
        .secret = self->secret,
        .interval_ms = cfg->heartbeat_ms,
        .max_age_ms = 3 * cfg->peer_grace_ms > 15000 ? 3 * cfg->peer_grace_ms : 15000,
        .read_peers = cfg->registry_discovery,
        .interrupt_fd = self->shutdown_fd,
    };
    self->registry = cf_discovery_new(&registry);
    free(caps_text);
    cf_election_args_t election = {.database_url = cfg->database_url,
                                   .node_id = self->my_id,
                                   .ttl_ms = cfg->lease_ttl_ms,
                                   .interrupt_fd = self->shutdown_fd};
    self->election = cf_election_new(&election);
    self->fence = cf_election_fence_new(cfg->database_url, self->shutdown_fd);
    if (!self->registry || !self->election || !self->fence) {
        snprintf(err, errlen, "cannot start the cluster threads");
        return -1;
    }
    if (cfg->calibrate && !cf_caps_calibrated(self->caps))
        s_start_calibration(self);
    return s_static_peers(self, self->cfg->static_peers, err, errlen);
}

/* Leaves in bounded time: the lease is released and the registry row marked
 * left at the same time, each within 500 ms, while peers get a BYE. */
static void s_self_stop(s_self_t *self)
{
    /* Whatever the database threads wait for, they stop waiting now; the
     * lease release and the registry's "left" are then tried (500 ms each,
     * at the same time). */
    if (self->shutdown_fd >= 0)
        (void)!eventfd_write(self->shutdown_fd, 1);
    s_stop_calibration(self);
    if (self->election)
        zstr_send(self->election, "$TERM");
    if (self->registry)
        zstr_send(self->registry, "$TERM");
    if (self->peers) {
        cf_msg_t bye;
        cf_msg_init(&bye, CF_MSG_BYE);
        cf_msg_set_str(&bye.bye.reason, "shutdown");
        for (s_peer_t *peer = zhashx_first(self->peers); peer; peer = zhashx_next(self->peers))
            s_send(self, peer, &bye);
        cf_msg_clear(&bye);
    }
    zactor_destroy(&self->election);
    zactor_destroy(&self->registry);
    zactor_destroy(&self->fence);
    zactor_destroy(&self->beacon);
    if (self->leader) {
        s_count(self, CF_NODE_LEASES_LOST);
        self->coordinator[0] = '\0'; /* released */
    }
    self->leader = false;
    s_set_shared_epoch(self);
    if (self->started)
        s_publish(self); /* the final state: no longer coordinator */
    zhashx_destroy(&self->peers);
    zsock_destroy(&self->router);
    zsock_destroy(&self->zap);
    if (self->shutdown_fd >= 0)
        close(self->shutdown_fd);
    self->shutdown_fd = -1;
}

/* ------------------------------------------------------------------ actor */

typedef enum {
    S_ITEM_PIPE,
    S_ITEM_ROUTER,
    S_ITEM_ZAP,
    S_ITEM_BEACON,
    S_ITEM_ELECTION,
    S_ITEM_REGISTRY,
    S_ITEM_FENCE,
    S_ITEM_CALIBRATOR,
    S_ITEM_MONITOR,
} s_item_kind_t;

static void s_handle_pipe(s_self_t *self)
{
    char *command = zstr_recv(self->pipe);
    if (!command || !strcmp(command, "$TERM"))
        self->terminated = true;
    free(command);
}

static void s_run(s_self_t *self)
{
    enum { MAX_ITEMS = 8 + S_MAX_PEERS };
    zmq_pollitem_t items[MAX_ITEMS];
    s_item_kind_t kinds[MAX_ITEMS];
    s_peer_t *owners[MAX_ITEMS];
    while (!self->terminated) {
        int n = 0;
#define S_ADD(sock, kind, owner)                                                                   \
    do {                                                                                           \
        items[n] = (zmq_pollitem_t){zsock_resolve(sock), 0, ZMQ_POLLIN, 0};                        \
        kinds[n] = (kind);                                                                         \
        owners[n++] = (owner);                                                                     \
    } while (0)
        S_ADD(self->pipe, S_ITEM_PIPE, NULL);
        S_ADD(self->router, S_ITEM_ROUTER, NULL);
        S_ADD(self->zap, S_ITEM_ZAP, NULL);
        if (self->beacon)
            S_ADD(self->beacon, S_ITEM_BEACON, NULL);
        S_ADD(self->election, S_ITEM_ELECTION, NULL);
        S_ADD(self->registry, S_ITEM_REGISTRY, NULL);
        S_ADD(self->fence, S_ITEM_FENCE, NULL);
        if (self->calibration) {
            items[n] = (zmq_pollitem_t){NULL, self->calibration->fds[0], ZMQ_POLLIN, 0};
            kinds[n] = S_ITEM_CALIBRATOR;
            owners[n++] = NULL;
        }
        for (s_peer_t *peer = zhashx_first(self->peers); peer && n < MAX_ITEMS;
             peer = zhashx_next(self->peers))
            if (peer->monitor)
                S_ADD(peer->monitor, S_ITEM_MONITOR, peer);
#undef S_ADD

        int64_t now = zclock_mono();
        int64_t wake = self->next_heartbeat;
        if (self->next_tick < wake)
            wake = self->next_tick;
        if (self->next_status < wake)
            wake = self->next_status;
        if (self->beacon && self->next_beacon < wake)
            wake = self->next_beacon;
        if (self->leader && self->next_view < wake)
            wake = self->next_view;
        long timeout = wake > now ? (long)(wake - now) : 0;
        if (zmq_poll(items, n, timeout) < 0)
            break;
        for (int i = 0; i < n && !self->terminated; i++) {
            if (!(items[i].revents & ZMQ_POLLIN))
                continue;
            switch (kinds[i]) {
                case S_ITEM_PIPE:
                    s_handle_pipe(self);
                    break;
                case S_ITEM_ROUTER:
                    s_handle_router(self);
                    break;
                case S_ITEM_ZAP:
                    s_handle_zap(self);
                    break;
                case S_ITEM_BEACON:
                    s_handle_beacon(self);
                    break;
                case S_ITEM_ELECTION:
                    s_handle_election(self);
                    break;
                case S_ITEM_REGISTRY:
                    s_handle_registry(self);
                    break;
                case S_ITEM_FENCE:
                    s_handle_fence(self);
                    break;
                case S_ITEM_CALIBRATOR:
                    if (self->calibration)
                        s_handle_calibration(self);
                    break;
                case S_ITEM_MONITOR:
                    /* The peer may have been dropped by an earlier item in
                     * this round; look it up again before touching it. */
                    for (s_peer_t *p = zhashx_first(self->peers); p; p = zhashx_next(self->peers))
                        if (p == owners[i] && p->monitor) {
                            s_handle_monitor(self, p);
                            break;
                        }
                    break;
            }
        }
        now = zclock_mono();
        if (self->beacon && now >= self->next_beacon) {
            s_send_beacon(self);
            self->next_beacon = now + self->cfg->beacon_interval_ms;
        }
        if (now >= self->next_heartbeat) {
            s_heartbeat_round(self);
            self->next_heartbeat = now + self->cfg->heartbeat_ms;
        }
        if (now >= self->next_tick) {
            s_tick(self);
            self->next_tick = now + S_TICK_MS;
        }
        if (self->leader && now >= self->next_view) {
            s_publish_view(self);
            self->next_view =
                now + (self->cfg->heartbeat_ms > 1000 ? self->cfg->heartbeat_ms : 1000);
        }
        if (self->dirty || now >= self->next_status)
            s_publish(self);
    }
}

typedef struct {
    cf_node_t *shared;
    s_config_t *cfg;
    cf_identity_t *identity;
    cf_secret_t *secret;
    cf_caps_t *caps;
} s_init_t;

static void s_actor(zsock_t *pipe, void *arg)
{
    s_init_t *init = arg;
    s_self_t self = {.pipe = pipe,
                     .shared = init->shared,
                     .cfg = init->cfg,
                     .identity = init->identity,
                     .secret = init->secret,
                     .caps = init->caps,
                     .db_reachable = false,
                     .last_free_slots = -1,
                     .last_in_flight = -1,
                     .shutdown_fd = -1};
    free(init);
    self.my_id = cf_identity_node_id(self.identity);
    self.started_ms = zclock_mono();
    self.started_wall_ms = s_wall_ms();
    zsock_signal(pipe, 0);

    char err[512] = "";
    if (s_self_start(&self, err, sizeof err) < 0) {
        s_self_stop(&self);
        zstr_send(pipe, err[0] ? err : "cannot start the node");
    } else {
        cf_log_info("node", "node %s listening on %s (control %s, http %s)%s%s", self.my_id,
                    self.cfg->bind_endpoint, self.cfg->control_endpoint,
                    self.cfg->http_endpoint[0] ? self.cfg->http_endpoint : "none",
                    self.beacon ? ", beacons on " : ", no beacons",
                    self.beacon ? self.cfg->beacon_iface : "");
        if (self.cfg->print_state) {
            printf("node %s: control=%s http=%s key=%s beacons=%s registry=%s\n", self.my_id,
                   self.cfg->control_endpoint,
                   self.cfg->http_endpoint[0] ? self.cfg->http_endpoint : "none",
                   cf_identity_public_z85(self.identity),
                   self.beacon ? self.cfg->beacon_iface : "off",
                   self.cfg->registry_discovery ? "on" : "publish-only");
            fflush(stdout);
        }
        s_print_caps(&self);
        s_publish(&self);
        zstr_send(pipe, "OK");
        self.started = true;
        s_run(&self);
        s_self_stop(&self);
    }
    cf_caps_destroy(&self.caps);
    cf_secret_destroy(&self.secret);
    cf_identity_destroy(&self.identity);
    s_config_free(&self.cfg);
}

/* ------------------------------------------------------------------ public */

void cf_node_options_default(cf_node_options_t *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->beacon_port = 5670;
    opts->slots = 1;
    opts->lease_ttl_ms = 5000;
    opts->peer_grace_ms = 5000;
    opts->heartbeat_ms = 1000;
    opts->beacon_interval_ms = 500;
    opts->replay_window_ms = 30000;
    opts->registry_discovery = true;
    opts->calibrate = true;
}

/* Turns HOST:PORT into the bind endpoint and the advertised one. */
static int s_endpoints(const char *flag, const char *addr, const char *iface, const char *scheme,
                       char **bind_p, char **advertised_p, int *port_p, char *err, size_t errlen)
{
    char host[256], why[128], advertised_host[INET_ADDRSTRLEN];
    int port;
    if (cf_hostport_parse(addr, host, sizeof host, &port, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s: invalid address '%s' (%s)", flag, addr, why);
        return -1;
    }
    const char *shown = host;
    if (s_is_wildcard(host)) {
        if (s_iface_address(iface, advertised_host, sizeof advertised_host) < 0) {
            snprintf(err, errlen,
                     "%s: a wildcard address needs --beacon-iface to tell peers where to reach "
                     "this node; give a specific address",
                     flag);
            return -1;
        }
        shown = advertised_host;
    }
    bool v6 = strchr(host, ':') != NULL;
    if (bind_p && asprintf(bind_p, "tcp://%s%s%s:%d", v6 ? "[" : "",
                           s_is_wildcard(host) ? "*" : host, v6 ? "]" : "", port) < 0)
        return -1;
    if (asprintf(advertised_p, "%s%s%s%s:%d", scheme, strchr(shown, ':') ? "[" : "", shown,
                 strchr(shown, ':') ? "]" : "", port) < 0)
        return -1;
    *port_p = port;
    return 0;
}

static s_config_t *s_config_new(const cf_node_options_t *opts, char *err, size_t errlen)
{
    s_config_t *cfg = calloc(1, sizeof *cfg);
    if (!cfg)
        return NULL;
    cfg->database_url = strdup(opts->database_url);
    cfg->data_dir = strdup(opts->data_dir);
    cfg->beacon_iface = opts->beacon_iface ? strdup(opts->beacon_iface) : NULL;
    cfg->beacon_port = opts->beacon_port > 0 ? opts->beacon_port : 5670;
    cfg->registry_discovery = opts->registry_discovery;
    cfg->static_peers = opts->static_peers ? strdup(opts->static_peers) : NULL;
    if (s_static_peers(NULL, cfg->static_peers, err, errlen) < 0) {
        s_config_free(&cfg);
        return NULL;
    }
    cfg->status_file = opts->status_file ? strdup(opts->status_file) : NULL;
    cfg->lease_ttl_ms = opts->lease_ttl_ms;
    cfg->peer_grace_ms = opts->peer_grace_ms;
    cfg->heartbeat_ms = opts->heartbeat_ms;
    cfg->beacon_interval_ms = opts->beacon_interval_ms;
    cfg->replay_window_ms = opts->replay_window_ms;
    cfg->print_state = opts->print_state;
    cfg->calibrate = opts->calibrate;
    if (s_endpoints("--control-addr", opts->control_addr ? opts->control_addr : "127.0.0.1:7070",
                    opts->beacon_iface, "tcp://", &cfg->bind_endpoint, &cfg->control_endpoint,
                    &cfg->control_port, err, errlen) < 0) {
        s_config_free(&cfg);
        return NULL;
    }
    if (opts->http_addr && *opts->http_addr) {
        if (s_endpoints("--http-addr", opts->http_addr, opts->beacon_iface, "http://", NULL,
                        &cfg->http_endpoint, &cfg->http_port, err, errlen) < 0) {
            s_config_free(&cfg);
            return NULL;
        }
    } else {
        cfg->http_endpoint = strdup("");
    }
    return cfg;
}

int cf_node_check_options(const cf_node_options_t *opts, char *err, size_t errlen)
{
    if (!opts->database_url || !opts->data_dir || !opts->secret_file) {
        snprintf(err, errlen, "a node needs a database URL, a data dir and a cluster secret file");
        return -1;
    }
    if (opts->lease_ttl_ms < 300 || opts->peer_grace_ms < 100 || opts->heartbeat_ms < 20 ||
        opts->beacon_interval_ms < 50 || opts->replay_window_ms < 1000) {
        snprintf(err, errlen, "a timing option is below its minimum");
        return -1;
    }
    if (!opts->registry_discovery && !opts->beacon_iface) {
        snprintf(err, errlen, "without the registry, discovery needs --beacon-iface");
        return -1;
    }
    if (opts->heartbeat_ms * 2 > opts->peer_grace_ms) {
        snprintf(err, errlen,
                 "--peer-grace (%d ms) must be at least twice --heartbeat-interval (%d ms)",
                 opts->peer_grace_ms, opts->heartbeat_ms);
        return -1;
    }
    s_config_t *cfg = s_config_new(opts, err, errlen);
    if (!cfg)
        return -1;
    s_config_free(&cfg);
    char why[512];
    cf_secret_t *secret = cf_secret_load(opts->secret_file, NULL, why, sizeof why);
    if (!secret) {
        snprintf(err, errlen, "--cluster-secret-file: %s", why);
        return -1;
    }
    cf_secret_destroy(&secret);
    return 0;
}

cf_node_t *cf_node_new(const cf_node_options_t *opts, char *err, size_t errlen)
{
    if (cf_node_check_options(opts, err, errlen) < 0)
        return NULL;
    /* czmq would otherwise install its own SIGINT/SIGTERM handler and stop
     * every socket on a signal; the caller decides what a signal means. */
    zsys_handler_set(NULL);
    zsys_set_logstream(stderr);

    cf_node_t *self = calloc(1, sizeof *self);
    s_config_t *cfg = NULL;
    cf_secret_t *secret = NULL;
    cf_identity_t *identity = NULL;
    cf_caps_t *caps = NULL;
    s_init_t *init = NULL;
    if (!self) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&self->mutex, NULL);
    atomic_store(&self->free_slots, opts->slots > 0 ? opts->slots : 1);

    if (!(cfg = s_config_new(opts, err, errlen)))
        goto fail;
    bool loose = false;
    char why[512];
    if (!(secret = cf_secret_load(opts->secret_file, &loose, why, sizeof why))) {
        snprintf(err, errlen, "--cluster-secret-file: %s", why);
        goto fail;
    }
    if (loose)
        cf_log_warn("node", "%s is readable by other users: chmod 600 it", opts->secret_file);
    if (!(identity = cf_identity_load(opts->data_dir, why, sizeof why))) {
        snprintf(err, errlen, "--data-dir: %s", why);
        goto fail;
    }
    snprintf(self->node_id, sizeof self->node_id, "%s", cf_identity_node_id(identity));
    cf_log_set_node_id(self->node_id);
    cf_log_info("node", "%s node id %s", cf_identity_created(identity) ? "created" : "loaded",
                self->node_id);
    if (!(caps = cf_caps_probe(opts->data_dir, opts->tags, opts->tag_count, opts->slots))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (opts->beacon_iface)
        zsys_set_interface(opts->beacon_iface);

    init = calloc(1, sizeof *init);
    if (!init) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    *init = (s_init_t){self, cfg, identity, secret, caps};
    cfg = NULL;
    identity = NULL;
    secret = NULL;
    caps = NULL;
    /* The actor owns INIT's contents from here, whatever happens. */
    self->actor = zactor_new(s_actor, init);
    if (!self->actor) {
        snprintf(err, errlen, "cannot start the node thread");
        goto fail;
    }
    char *status = zstr_recv(self->actor);
    if (!status || strcmp(status, "OK")) {
        snprintf(err, errlen, "%s", status ? status : "the node thread stopped");
        free(status);
        goto fail;
    }
    free(status);
    return self;

fail:
    cf_caps_destroy(&caps);
    cf_identity_destroy(&identity);
    cf_secret_destroy(&secret);
    s_config_free(&cfg);
    cf_node_destroy(&self);
    return NULL;
}

void cf_node_destroy(cf_node_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_node_t *self = *self_p;
    zactor_destroy(&self->actor);
    json_decref(self->snapshot);
    pthread_mutex_destroy(&self->mutex);
    free(self);
    *self_p = NULL;
}

const char *cf_node_id(cf_node_t *self)
{
    return self->node_id;
}

json_t *cf_node_snapshot(cf_node_t *self)
{
    pthread_mutex_lock(&self->mutex);
    json_t *copy = self->snapshot ? json_deep_copy(self->snapshot) : json_object();
    pthread_mutex_unlock(&self->mutex);
    if (copy) {
        /* Counters move between snapshots: give the current values. */
        json_t *counters = json_object();
        for (int i = 0; i < CF_NODE_COUNTER_COUNT; i++)
            json_object_set_new(counters, s_counter_info[i].name,
                                json_integer((json_int_t)atomic_load(&self->counters[i])));
        json_object_set_new(copy, "counters", counters);
    }
    return copy;
}

void cf_node_set_load(cf_node_t *self, int free_slots, int in_flight)
{
    atomic_store(&self->free_slots, free_slots);
    atomic_store(&self->in_flight, in_flight);
}

bool cf_node_is_coordinator(cf_node_t *self, int64_t *epoch_p)
{
    int64_t epoch = atomic_load(&self->coordinator_epoch);
    if (epoch_p)
        *epoch_p = epoch;
    return epoch > 0;
}

uint64_t cf_node_counter(cf_node_t *self, cf_node_counter_t counter)
{
    return counter < CF_NODE_COUNTER_COUNT ? atomic_load(&self->counters[counter]) : 0;
}
