/* cf_node_actor: the node actor, its set-up, loop and peer messages (its
 * coordination half is cf_node_lease.c). See cf_node_actor.h. */
#define _GNU_SOURCE
#include "cf_node_actor.h"
#include "cf_node_actor_internal.h"

#include <errno.h>
#include <czmq.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "cf_beacon.h"
#include "cf_calibration.h"
#include "cf_caps.h"
#include "cf_discovery.h"
#include "cf_election.h"
#include "cf_election_fence.h"
#include "cf_identity.h"
#include "cf_log.h"
#include "cf_node_config.h"
#include "cf_node_status.h"
#include "cf_peer.h"
#include "cf_proto.h"
#include "cf_work_bus.h"
#include "cf_zap.h"

#define S_TICK_MS   100 /* liveness checks */
#define S_STATUS_MS 1000

/* ------------------------------------------------------------------ helpers */

static int64_t s_wall_ms(void)
{
    return zclock_time();
}

/* ------------------------------------------------------------------ peers */

/* A peer learned from an authenticated source (or configured): see
 * cf_peer_table_learn. From then on a beacon or registry key may connect
 * to us (cf_zap). */
cf_peer_t *cf_nactor_peer_learn(cf_nactor_t *self, const char *id, const char *key,
                                const char *control, const char *http, unsigned source)
{
    return cf_peer_table_learn(self->peers, &self->link, id, key, control, http, source,
                               &self->dirty);
}

/* ------------------------------------------------------------------ sending */

static int s_send(cf_nactor_t *self, cf_peer_t *peer, cf_msg_t *msg)
{
    if (cf_peer_send(peer, msg) < 0)
        return -1;
    cf_nactor_count(self, CF_NODE_MESSAGES_SENT);
    return 0;
}

static void s_build_hello(cf_nactor_t *self, cf_msg_t *msg, bool want_hello)
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

static void s_send_hello(cf_nactor_t *self, cf_peer_t *peer, bool want_hello)
{
    cf_msg_t msg;
    s_build_hello(self, &msg, want_hello);
    s_send(self, peer, &msg);
    cf_msg_clear(&msg);
    if (want_hello)
        cf_peer_hello_asked(peer, zclock_mono());
}

void cf_nactor_send_leader(cf_nactor_t *self, cf_peer_t *peer)
{
    cf_msg_t msg;
    cf_msg_init(&msg, CF_MSG_LEADER);
    msg.leader.epoch = self->my_epoch;
    snprintf(msg.leader.node_id, sizeof msg.leader.node_id, "%s", self->my_id);
    s_send(self, peer, &msg);
    cf_msg_clear(&msg);
}

static void s_heartbeat_round(cf_nactor_t *self)
{
    double loads[1] = {0};
    if (getloadavg(loads, 1) < 1 || loads[0] < 0)
        loads[0] = 0;
    cf_msg_t msg;
    cf_msg_init(&msg, CF_MSG_HEARTBEAT);
    msg.heartbeat.load = loads[0] < 1e6 ? loads[0] : 1e6;
    int free_slots, in_flight;
    cf_node_load(self->node, &free_slots, &in_flight);
    msg.heartbeat.free_slots = (uint64_t)(free_slots < 0 ? 0 : free_slots > 256 ? 256 : free_slots);
    msg.heartbeat.in_flight = (uint64_t)(in_flight < 0 ? 0 : in_flight > 65536 ? 65536 : in_flight);
    msg.heartbeat.epoch = self->highest_epoch;
    int64_t now = zclock_mono();
    for (cf_peer_t *peer = zhashx_first(self->peers); peer; peer = zhashx_next(self->peers)) {
        /* The HELLO sent at connection time can be lost (the link may not be
         * writable yet when the handshake event arrives): ask again until
         * the peer's HELLO is in. */
        if (cf_peer_hello_due(peer, now))
            s_send_hello(self, peer, true);
        s_send(self, peer, &msg);
        if (self->leader)
            cf_nactor_send_leader(self, peer);
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

/* ------------------------------------------------------------------ liveness */

static void s_peer_alive(cf_nactor_t *self, cf_peer_t *peer)
{
    if (cf_peer_heard(peer, zclock_mono())) {
        cf_nactor_count(self, CF_NODE_PEERS_JOINED);
        self->dirty = true;
    }
}

static void s_tick(cf_nactor_t *self)
{
    int64_t now = zclock_mono();
    int64_t forget_after = 3 * (int64_t)self->cfg->peer_grace_ms;
    if (forget_after < 20000)
        forget_after = 20000;
    for (cf_peer_t *peer = zhashx_first(self->peers); peer; peer = zhashx_next(self->peers)) {
        if (cf_peer_reconnect_due(peer, now))
            cf_peer_connect(peer, &self->link);
        if (cf_peer_expire(peer, now, self->cfg->peer_grace_ms)) {
            /* The link is silent; whether the node is gone is Postgres'
             * call (its registry row), recorded by the coordinator's sweep. */
            cf_nactor_count(self, CF_NODE_PEERS_GONE);
            self->dirty = true;
        }
    }
    if (cf_peer_table_forget(self->peers, now, forget_after) > 0)
        self->dirty = true;
}

/* ------------------------------------------------------------------ snapshot */

static json_t *s_build_snapshot(cf_nactor_t *self)
{
    int free_slots, in_flight;
    cf_node_load(self->node, &free_slots, &in_flight);
    json_t *peers = cf_peer_table_to_json(self->peers, zclock_mono());
    return json_pack(
        "{s:s, s:s, s:s, s:I, s:s?, s:s, s:s, s:s, s:o, s:i, s:i, s:I, s:b, s:o, "
        "s:{s:i}, s:o}",
        "id", self->my_id, "liveness", self->registry_read ? "up" : "unknown", "role",
        self->leader ? "coordinator" : "worker", "epoch", (json_int_t)self->highest_epoch,
        "coordinator", self->coordinator[0] ? self->coordinator : NULL, "control_endpoint",
        self->cfg->control_endpoint, "http_endpoint", self->cfg->http_endpoint, "public_key",
        cf_identity_public_z85(self->identity), "capabilities", cf_caps_to_json(self->caps),
        "free_slots", free_slots, "in_flight", in_flight, "started_at_ms",
        (json_int_t)self->started_wall_ms, "database_reachable", self->db_reachable, "peers", peers,
        "fence", "pending", self->fence_pending, "counters", cf_node_status_counters(self->node));
}

static void s_publish(cf_nactor_t *self)
{
    json_t *snapshot = s_build_snapshot(self);
    if (!snapshot)
        return;
    cf_node_status_write(self->status, snapshot);
    cf_node_publish(self->node, &snapshot);
    cf_node_status_state(self->status, self->leader, self->highest_epoch, self->coordinator,
                         self->peers);
    self->dirty = false;
    self->next_status = zclock_mono() + S_STATUS_MS;
}

/* ------------------------------------------------------------------ handlers */

static void s_handle_zap(cf_nactor_t *self)
{
    int verdict = cf_zap_handle(self->zap);
    if (verdict >= 0)
        cf_nactor_count(self, verdict ? CF_NODE_ZAP_ALLOWED : CF_NODE_ZAP_DENIED);
}

/* Hands MSG from node FROM to a work actor after checking it may have it:
 * ASSIGN and CANCEL only from the node that holds the current epoch (the
 * one we know as coordinator, at exactly that epoch), worker replies only
 * while this node is the coordinator at the epoch they carry. Anything else
 * is counted and dropped. Returns whether it was a work message. */
static bool s_route_work(cf_nactor_t *self, const char *from, const cf_msg_t *msg)
{
    zsock_t *to = NULL;
    uint64_t epoch = cf_msg_epoch(msg);
    switch (msg->type) {
        case CF_MSG_ASSIGN:
        case CF_MSG_CANCEL:
            /* Only the node that holds the epoch (by the lease row, as
             * this node's election last read it) may assign under it. */
            if (epoch != self->highest_epoch || epoch != self->lease_epoch ||
                strcmp(from, self->lease_holder)) {
                cf_nactor_count(self, msg->type == CF_MSG_ASSIGN ? CF_NODE_ASSIGN_REFUSED
                                                                 : CF_NODE_WORK_REFUSED);
                cf_log_warn("node",
                            "refused %s of epoch %" PRIu64 " from %.8s: the coordinator "
                            "is %.8s at epoch %" PRIu64,
                            cf_msg_type_name(msg->type), epoch, from,
                            self->lease_holder[0] ? self->lease_holder : "(none)",
                            self->lease_epoch);
                return true;
            }
            if (msg->type == CF_MSG_ASSIGN && !cf_node_has_executor(self->node)) {
                /* Nobody here takes tasks: say no at once, so the
                 * coordinator never waits on us. */
                cf_msg_t reply;
                cf_msg_init(&reply, CF_MSG_REJECT);
                reply.reject.epoch = msg->assign.epoch;
                snprintf(reply.reject.composition, sizeof reply.reject.composition, "%s",
                         msg->assign.composition);
                reply.reject.segment = msg->assign.segment;
                reply.reject.attempt = msg->assign.attempt ? msg->assign.attempt : 1;
                cf_msg_set_str(&reply.reject.reason, "this node runs no executor");
                cf_peer_t *peer = cf_peer_table_find_id(self->peers, from);
                if (peer)
                    s_send(self, peer, &reply);
                cf_msg_clear(&reply);
                return true;
            }
            to = self->work_exec;
            break;
        case CF_MSG_ACCEPT:
        case CF_MSG_REJECT:
        case CF_MSG_PROGRESS:
        case CF_MSG_DONE:
        case CF_MSG_FAILED:
            if (!self->leader || epoch != self->my_epoch) {
                cf_nactor_count(self, CF_NODE_WORK_REFUSED);
                return true;
            }
            to = self->work_coord;
            break;
        default:
            return false;
    }
    uint8_t *data = NULL;
    size_t size = 0;
    char err[256];
    if (!to || cf_msg_encode(msg, &data, &size, err, sizeof err) < 0)
        return true;
    zmsg_t *zmsg = zmsg_new();
    zmsg_addstr(zmsg, from);
    zmsg_addmem(zmsg, data, size);
    free(data);
    if (zmsg_send(&zmsg, to) < 0)
        zmsg_destroy(&zmsg);
    return true;
}

/* A work actor's message for node TO: over its link, or back in when TO is
 * this node. */
static void s_handle_work_out(cf_nactor_t *self)
{
    zmsg_t *zmsg = zmsg_recv(self->work_out);
    if (!zmsg)
        return;
    char to[37] = "";
    zframe_t *who = zmsg_first(zmsg), *payload = zmsg_next(zmsg);
    cf_msg_t msg;
    char err[256];
    if (zmsg_size(zmsg) != 2 || !who || !payload || zframe_size(who) != 36 ||
        cf_msg_decode(zframe_data(payload), zframe_size(payload), &msg, err, sizeof err) < 0) {
        zmsg_destroy(&zmsg);
        return;
    }
    memcpy(to, zframe_data(who), 36);
    zmsg_destroy(&zmsg);
    if (!strcmp(to, self->my_id)) {
        s_route_work(self, self->my_id, &msg);
    } else {
        cf_peer_t *peer = cf_peer_table_find_id(self->peers, to);
        if (peer)
            s_send(self, peer, &msg);
        else
            cf_log_debug("node", "%s for %.8s: no such peer", cf_msg_type_name(msg.type), to);
    }
    cf_msg_clear(&msg);
}

static void s_handle_message(cf_nactor_t *self, cf_peer_t *peer, cf_msg_t *msg)
{
    /* Epoch-carrying messages older than what we have seen are ignored. */
    uint64_t epoch = cf_msg_epoch(msg);
    if (msg->type != CF_MSG_HEARTBEAT && epoch && epoch < self->highest_epoch) {
        cf_nactor_count(self, CF_NODE_MESSAGES_STALE_EPOCH);
        cf_log_info("node", "ignored %s of epoch %" PRIu64 " from %s: epoch %" PRIu64 " is current",
                    cf_msg_type_name(msg->type), epoch, cf_peer_name(peer), self->highest_epoch);
        s_peer_alive(self, peer);
        return;
    }
    s_peer_alive(self, peer);
    if (msg->type != CF_MSG_HELLO && cf_peer_hello_due(peer, zclock_mono()))
        s_send_hello(self, peer, true);

    switch (msg->type) {
        case CF_MSG_HELLO: {
            const cf_msg_hello_t *hello = &msg->hello;
            const char *id = cf_peer_id(peer);
            if (id[0] && strcmp(id, hello->node_id)) {
                cf_nactor_count(self, CF_NODE_MESSAGES_MALFORMED);
                cf_log_warn("node", "dropped a HELLO claiming node %s from the key of node %s",
                            hello->node_id, id);
                return;
            }
            if (!id[0]) {
                cf_peer_t *other = cf_peer_table_find_id(self->peers, hello->node_id);
                if (other && other != peer) {
                    cf_nactor_count(self, CF_NODE_MESSAGES_MALFORMED);
                    cf_log_warn("node", "dropped a HELLO claiming node %s from another key",
                                hello->node_id);
                    return;
                }
                cf_peer_set_id(peer, hello->node_id);
            }
            cf_peer_take_hello(peer, hello);
            if (hello->want_hello)
                s_send_hello(self, peer, false);
            self->dirty = true;
            break;
        }
        case CF_MSG_HEARTBEAT:
            cf_peer_take_heartbeat(peer, &msg->heartbeat);
            cf_nactor_see_epoch(self, msg->heartbeat.epoch);
            break;
        case CF_MSG_LEADER:
            if (strcmp(msg->leader.node_id, cf_peer_id(peer))) {
                cf_nactor_count(self, CF_NODE_MESSAGES_MALFORMED);
                cf_log_warn("node", "dropped a LEADER for node %s sent by node %s",
                            msg->leader.node_id, cf_peer_name(peer));
                return;
            }
            cf_nactor_see_epoch(self, msg->leader.epoch);
            if (msg->leader.epoch == self->highest_epoch &&
                strcmp(self->coordinator, msg->leader.node_id)) {
                snprintf(self->coordinator, sizeof self->coordinator, "%s", msg->leader.node_id);
                self->dirty = true;
            }
            break;
        case CF_MSG_ASSIGN:
        case CF_MSG_CANCEL:
        case CF_MSG_ACCEPT:
        case CF_MSG_REJECT:
        case CF_MSG_PROGRESS:
        case CF_MSG_DONE:
        case CF_MSG_FAILED:
            s_route_work(self, cf_peer_id(peer), msg);
            break;
        case CF_MSG_BYE:
            cf_peer_leave(peer, msg->bye.reason);
            cf_nactor_count(self, CF_NODE_PEERS_GONE);
            if (!strcmp(cf_peer_id(peer), self->coordinator))
                zstr_send(self->election, "RETRY"); /* its lease is free now */
            self->dirty = true;
            break;
        default:
            cf_log_debug("node", "%s from %s: not handled by this version",
                         cf_msg_type_name(msg->type), cf_peer_name(peer));
            break;
    }
}

static void s_handle_router(cf_nactor_t *self)
{
    zmsg_t *zmsg = zmsg_recv(self->router);
    if (!zmsg)
        return;
    zframe_t *routing = zmsg_first(zmsg);
    zframe_t *payload = zmsg_next(zmsg);
    if (zmsg_size(zmsg) != 2 || !routing || !payload) {
        cf_nactor_count(self, CF_NODE_MESSAGES_MALFORMED);
        zmsg_destroy(&zmsg);
        return;
    }
    const char *user = zframe_meta(payload, "User-Id");
    cf_peer_t *peer = user ? zhashx_lookup(self->peers, user) : NULL;
    if (!peer) {
        cf_log_debug("node", "message from a key no longer known: dropped");
        zmsg_destroy(&zmsg);
        return;
    }
    cf_msg_t msg;
    char err[256];
    if (cf_msg_decode(zframe_data(payload), zframe_size(payload), &msg, err, sizeof err) < 0) {
        cf_nactor_count(self, CF_NODE_MESSAGES_MALFORMED);
        cf_log_warn("node", "dropped a malformed message from %s: %s", cf_peer_name(peer), err);
        zmsg_destroy(&zmsg);
        return;
    }
    zmsg_destroy(&zmsg);
    cf_nactor_count(self, CF_NODE_MESSAGES_RECEIVED);
    s_handle_message(self, peer, &msg);
    cf_msg_clear(&msg);
}

static void s_handle_monitor(cf_nactor_t *self, cf_peer_t *peer)
{
    cf_peer_event_t event = cf_peer_recv_monitor(peer);
    if (event == CF_PEER_LINKED)
        s_send_hello(self, peer, true);
    else if (event == CF_PEER_REFUSED)
        cf_nactor_count(self, CF_NODE_CONNECT_AUTH_FAILED);
}

static void s_handle_beacon(cf_nactor_t *self)
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
    cf_peer_t *known = NULL;
    if (status == CF_BEACON_OK) {
        cf_key_to_z85(beacon.public_key, key);
        known = zhashx_lookup(self->peers, key);
        /* Older than one already accepted from that node: a replay. */
        if (known && beacon.timestamp_ms < cf_peer_beacon_ts(known))
            status = CF_BEACON_REPLAYED;
    }
    if (status != CF_BEACON_OK) {
        static const cf_node_counter_t which[] = {
            [CF_BEACON_MALFORMED] = CF_NODE_BEACONS_MALFORMED,
            [CF_BEACON_BAD_VERSION] = CF_NODE_BEACONS_BAD_VERSION,
            [CF_BEACON_BAD_MAC] = CF_NODE_BEACONS_BAD_MAC,
            [CF_BEACON_REPLAYED] = CF_NODE_BEACONS_REPLAYED,
        };
        cf_nactor_count(self, CF_NODE_BEACONS_REJECTED);
        cf_nactor_count(self, which[status]);
        cf_log_debug("node", "dropped a beacon from %s: %s", address,
                     cf_beacon_status_name(status));
        free(address);
        return;
    }
    cf_nactor_count(self, CF_NODE_BEACONS_ACCEPTED);
    char control[280], http[280] = "";
    snprintf(control, sizeof control, "tcp://%s:%u", address, beacon.control_port);
    if (beacon.http_port)
        snprintf(http, sizeof http, "http://%s:%u", address, beacon.http_port);
    cf_peer_t *peer =
        cf_nactor_peer_learn(self, beacon.node_id, key, control, http, CF_PEER_FROM_BEACON);
    if (peer)
        cf_peer_set_beacon_ts(peer, beacon.timestamp_ms);
    free(address);
}

static void s_send_beacon(cf_nactor_t *self)
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
    cf_nactor_count(self, CF_NODE_BEACONS_SENT);
}

/* The calibration actor said it is done: take the figures, tell peers and
 * the registry, and let it end. */
static void s_handle_calibration(cf_nactor_t *self)
{
    char *result = zstr_recv(self->calibration);
    cf_caps_t *caps =
        result && !strcmp(result, "CALIBRATED") ? cf_calibration_take(self->calibration) : NULL;
    free(result);
    zactor_destroy(&self->calibration);
    if (!caps)
        return;
    cf_caps_destroy(&self->caps);
    self->caps = caps;
    cf_node_status_caps(self->status, self->caps);
    for (cf_peer_t *peer = zhashx_first(self->peers); peer; peer = zhashx_next(self->peers))
        s_send_hello(self, peer, false);
    self->last_free_slots = -1;
    self->dirty = true;
}

/* ------------------------------------------------------------------ set-up */

static void s_add_static_peer(const char *key, const char *control_endpoint, void *arg)
{
    cf_nactor_peer_learn(arg, NULL, key, control_endpoint, NULL, CF_PEER_FROM_STATIC);
}

static int s_self_start(cf_nactor_t *self, char *err, size_t errlen)
{
    cf_node_config_t *cfg = self->cfg;
    self->shutdown_fd = eventfd(0, EFD_CLOEXEC);
    if (self->shutdown_fd < 0) {
        snprintf(err, errlen, "cannot create an eventfd: %s", strerror(errno));
        return -1;
    }
    self->peers = cf_peer_table_new();
    self->status = cf_node_status_new(self->my_id, cfg);
    if (!self->peers || !self->status) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }

    /* The ZAP handler must exist before the ROUTER binds: without one, libzmq
     * lets every CURVE client in. */
    self->zap = cf_zap_new(self->peers);
    if (!self->zap) {
        snprintf(err, errlen, "cannot start the ZAP handler (another node in this process?)");
        return -1;
    }
    self->router = zsock_new(ZMQ_ROUTER);
    if (!self->router) {
        snprintf(err, errlen, "cannot create the control socket");
        return -1;
    }
    zsock_set_zap_domain(self->router, CF_ZAP_DOMAIN);
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

    char ep[128];
    cf_work_bus_endpoint(self->my_id, "out", ep, sizeof ep);
    self->work_out = zsock_new_pull(NULL);
    if (!self->work_out || zsock_bind(self->work_out, "%s", ep) < 0) {
        snprintf(err, errlen, "cannot bind the work outbox");
        return -1;
    }
    cf_work_bus_endpoint(self->my_id, "exec", ep, sizeof ep);
    self->work_exec = zsock_new(ZMQ_PUSH);
    if (self->work_exec) {
        zsock_set_sndtimeo(self->work_exec, 0);
        zsock_set_linger(self->work_exec, 0);
    }
    char ep2[128];
    cf_work_bus_endpoint(self->my_id, "coord", ep2, sizeof ep2);
    self->work_coord = zsock_new(ZMQ_PUSH);
    if (self->work_coord) {
        zsock_set_sndtimeo(self->work_coord, 0);
        zsock_set_linger(self->work_coord, 0);
    }
    if (!self->work_exec || !self->work_coord || zsock_connect(self->work_exec, "%s", ep) < 0 ||
        zsock_connect(self->work_coord, "%s", ep2) < 0) {
        snprintf(err, errlen, "cannot connect the work plane");
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
        /* Rows are read in any case: they tell every peer's liveness. */
        .read_peers = true,
        .grace_ms = cfg->peer_grace_ms > 2 * cfg->heartbeat_ms + 1000
                        ? cfg->peer_grace_ms
                        : 2 * cfg->heartbeat_ms + 1000,
        .interrupt_fd = self->shutdown_fd,
    };
    self->registry = cf_discovery_new(&registry);
    free(caps_text);
    cf_election_args_t election = {.database_url = cfg->database_url,
                                   .node_id = self->my_id,
                                   .ttl_ms = cfg->lease_ttl_ms,
                                   .interrupt_fd = self->shutdown_fd};
    self->election = cf_election_new(&election);
    /* No state pool yet: the coordinator writes segments and compositions
     * when distributed rendering lands (cf_election_fence.h). */
    cf_election_fence_args_t fence = {
        .database_url = cfg->database_url, .pool = NULL, .interrupt_fd = self->shutdown_fd};
    self->fence = cf_election_fence_new(&fence);
    if (!self->registry || !self->election || !self->fence) {
        snprintf(err, errlen, "cannot start the cluster threads");
        return -1;
    }
    if (cfg->calibrate && !cf_caps_calibrated(self->caps)) {
        self->calibration = cf_calibration_new(self->caps, cfg->data_dir);
        if (!self->calibration)
            cf_log_warn("node", "cannot start the calibration; encoder speeds stay unknown");
    }
    return cf_node_config_static_peers(cfg->static_peers, s_add_static_peer, self, err, errlen);
}

/* Leaves in bounded time: the lease is released and the registry row marked
 * left at the same time, each within 500 ms, while peers get a BYE. */
static void s_self_stop(cf_nactor_t *self)
{
    /* Whatever the database threads wait for, they stop waiting now; the
     * lease release and the registry's "left" are then tried (500 ms each,
     * at the same time). */
    if (self->shutdown_fd >= 0)
        (void)!eventfd_write(self->shutdown_fd, 1);
    zactor_destroy(&self->calibration); /* within 300 ms */
    if (self->election)
        zstr_send(self->election, "$TERM");
    if (self->registry)
        zstr_send(self->registry, "$TERM");
    if (self->peers) {
        cf_msg_t bye;
        cf_msg_init(&bye, CF_MSG_BYE);
        cf_msg_set_str(&bye.bye.reason, "shutdown");
        for (cf_peer_t *peer = zhashx_first(self->peers); peer; peer = zhashx_next(self->peers))
            s_send(self, peer, &bye);
        cf_msg_clear(&bye);
    }
    zactor_destroy(&self->election);
    zactor_destroy(&self->registry);
    zactor_destroy(&self->fence);
    zactor_destroy(&self->beacon);
    if (self->leader) {
        cf_nactor_count(self, CF_NODE_LEASES_LOST);
        self->coordinator[0] = '\0'; /* released */
    }
    self->leader = false;
    cf_nactor_set_shared_epoch(self);
    if (self->started)
        s_publish(self); /* the final state: no longer coordinator */
    zhashx_destroy(&self->peers);
    zsock_destroy(&self->router);
    zsock_destroy(&self->work_out);
    zsock_destroy(&self->work_exec);
    zsock_destroy(&self->work_coord);
    cf_zap_destroy(&self->zap);
    cf_node_status_destroy(&self->status);
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
    S_ITEM_CALIBRATION,
    S_ITEM_MONITOR,
    S_ITEM_WORK,
} s_item_kind_t;

static void s_handle_pipe(cf_nactor_t *self)
{
    char *command = zstr_recv(self->pipe);
    if (!command || !strcmp(command, "$TERM"))
        self->terminated = true;
    free(command);
}

static void s_run(cf_nactor_t *self)
{
    enum { MAX_ITEMS = 8 + CF_PEER_TABLE_MAX };
    zmq_pollitem_t items[MAX_ITEMS];
    s_item_kind_t kinds[MAX_ITEMS];
    cf_peer_t *owners[MAX_ITEMS];
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
        S_ADD(self->work_out, S_ITEM_WORK, NULL);
        S_ADD(cf_zap_sock(self->zap), S_ITEM_ZAP, NULL);
        if (self->beacon)
            S_ADD(self->beacon, S_ITEM_BEACON, NULL);
        S_ADD(self->election, S_ITEM_ELECTION, NULL);
        S_ADD(self->registry, S_ITEM_REGISTRY, NULL);
        S_ADD(self->fence, S_ITEM_FENCE, NULL);
        if (self->calibration)
            S_ADD(self->calibration, S_ITEM_CALIBRATION, NULL);
        for (cf_peer_t *peer = zhashx_first(self->peers); peer && n < MAX_ITEMS;
             peer = zhashx_next(self->peers))
            if (cf_peer_monitor(peer))
                S_ADD(cf_peer_monitor(peer), S_ITEM_MONITOR, peer);
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
        if (self->leader) {
            int64_t lease_left = self->lease_deadline_ms - cf_election_clock_ms();
            if (now + lease_left < wake)
                wake = now + (lease_left > 0 ? lease_left : 0);
        }
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
                case S_ITEM_WORK:
                    s_handle_work_out(self);
                    break;
                case S_ITEM_ZAP:
                    s_handle_zap(self);
                    break;
                case S_ITEM_BEACON:
                    s_handle_beacon(self);
                    break;
                case S_ITEM_ELECTION:
                    cf_nactor_handle_election(self);
                    break;
                case S_ITEM_REGISTRY:
                    cf_nactor_handle_registry(self);
                    break;
                case S_ITEM_FENCE:
                    cf_nactor_handle_fence(self);
                    break;
                case S_ITEM_CALIBRATION:
                    if (self->calibration)
                        s_handle_calibration(self);
                    break;
                case S_ITEM_MONITOR:
                    /* The peer may have been dropped by an earlier item in
                     * this round; look it up again before touching it. */
                    for (cf_peer_t *p = zhashx_first(self->peers); p; p = zhashx_next(self->peers))
                        if (p == owners[i] && cf_peer_monitor(p)) {
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
        /* The lease's deadline passed without a confirmed renewal: stop now,
         * before the election says so (its report may be late). */
        if (self->leader && cf_election_clock_ms() >= self->lease_deadline_ms)
            cf_nactor_lose_lease(self, "its lease deadline passed");
        if (self->leader && now >= self->next_view) {
            cf_nactor_publish_view(self);
            self->next_view =
                now + (self->cfg->heartbeat_ms > 1000 ? self->cfg->heartbeat_ms : 1000);
        }
        if (self->dirty || now >= self->next_status)
            s_publish(self);
    }
}

void cf_node_actor(zsock_t *pipe, void *args)
{
    cf_node_actor_args_t *init = args;
    cf_nactor_t self = {.pipe = pipe,
                        .node = init->node,
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
    self.link = (cf_peer_link_t){.node_id = self.my_id,
                                 .public_z85 = cf_identity_public_z85(self.identity),
                                 .secret_z85 = cf_identity_secret_z85(self.identity),
                                 .heartbeat_ms = self.cfg->heartbeat_ms,
                                 .peer_grace_ms = self.cfg->peer_grace_ms};
    self.started_ms = zclock_mono();
    self.started_wall_ms = s_wall_ms();
    zsock_signal(pipe, 0);

    char err[512] = "";
    if (s_self_start(&self, err, sizeof err) < 0) {
        s_self_stop(&self);
        zstr_send(pipe, err[0] ? err : "cannot start the node");
    } else {
        cf_node_status_started(self.status, self.cfg, cf_identity_public_z85(self.identity),
                               self.beacon != NULL);
        cf_node_status_caps(self.status, self.caps);
        s_publish(&self);
        zstr_send(pipe, "OK");
        self.started = true;
        s_run(&self);
        s_self_stop(&self);
    }
    cf_caps_destroy(&self.caps);
    cf_secret_destroy(&self.secret);
    cf_identity_destroy(&self.identity);
    cf_node_config_destroy(&self.cfg);
}
