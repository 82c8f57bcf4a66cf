/* cf_peer: a peer of the node and the peer table. See cf_peer.h. */
#include "cf_peer.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_json.h"
#include "cf_log.h"

#define S_HELLO_RETRY_MS 1000
#define S_MONITOR_EVENTS                                                                           \
    (ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |                             \
     ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_DISCONNECTED)

static const char *const s_state_names[] = {"connecting", "alive", "gone", "left"};

struct cf_peer_t {
    char key[41]; /* Z85 public key: the peer's identity on the wire */
    char id[37];  /* node id, "" until known */
    char control_endpoint[280];
    char http_endpoint[280];
    char software[65];
    unsigned sources;
    cf_peer_state_t state;
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
    char liveness[8];     /* the registry's judgment, "" while unknown */
    int64_t registry_age_ms;
    unsigned liveness_round;
};

/* Monitor endpoints are inproc, so unique in the process. */
static atomic_int s_monitor_seq;

/* ------------------------------------------------------------------ the peer */

cf_peer_t *cf_peer_new(zhashx_t *container, const char *key, const char *control_endpoint)
{
    cf_peer_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    snprintf(self->key, sizeof self->key, "%s", key);
    snprintf(self->control_endpoint, sizeof self->control_endpoint, "%s", control_endpoint);
    if (zhashx_insert(container, key, self) < 0) {
        free(self);
        return NULL;
    }
    return self;
}

void cf_peer_destroy(cf_peer_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_peer_t *self = *self_p;
    cf_peer_disconnect(self);
    json_decref(self->caps_hello);
    json_decref(self->caps_registry);
    free(self);
    *self_p = NULL;
}

void cf_peer_disconnect(cf_peer_t *self)
{
    if (self->dealer)
        zmq_socket_monitor(zsock_resolve(self->dealer), NULL, 0);
    zsock_destroy(&self->monitor);
    zsock_destroy(&self->dealer);
}

int cf_peer_connect(cf_peer_t *self, const cf_peer_link_t *link)
{
    cf_peer_disconnect(self);
    zsock_t *dealer = zsock_new(ZMQ_DEALER);
    if (!dealer)
        return -1;
    zsock_set_curve_serverkey(dealer, self->key);
    zsock_set_curve_publickey(dealer, link->public_z85);
    zsock_set_curve_secretkey(dealer, link->secret_z85);
    zsock_set_linger(dealer, 200); /* lets a BYE out at shutdown */
    zsock_set_sndhwm(dealer, 100);
    zsock_set_immediate(dealer, 1); /* queue nothing for a peer we are not connected to */
    zsock_set_reconnect_ivl(dealer, 100);
    zsock_set_reconnect_ivl_max(dealer, 1000);
    zsock_set_heartbeat_ivl(dealer, link->heartbeat_ms);
    zsock_set_heartbeat_timeout(dealer, link->peer_grace_ms);
    char monitor_ep[64];
    snprintf(monitor_ep, sizeof monitor_ep, "inproc://cf-node-monitor-%d",
             atomic_fetch_add(&s_monitor_seq, 1) + 1);
    if (zmq_socket_monitor(zsock_resolve(dealer), monitor_ep, S_MONITOR_EVENTS) < 0) {
        zsock_destroy(&dealer);
        return -1;
    }
    zsock_t *monitor = zsock_new(ZMQ_PAIR);
    if (!monitor || zsock_connect(monitor, "%s", monitor_ep) < 0 ||
        zsock_connect(dealer, "%s", self->control_endpoint) < 0) {
        cf_log_warn("node", "cannot connect to peer %s at %s", cf_peer_name(self),
                    self->control_endpoint);
        zmq_socket_monitor(zsock_resolve(dealer), NULL, 0);
        zsock_destroy(&monitor);
        zsock_destroy(&dealer);
        return -1;
    }
    self->dealer = dealer;
    self->monitor = monitor;
    self->connected_ms = zclock_mono();
    return 0;
}

int cf_peer_send(cf_peer_t *self, const cf_msg_t *msg)
{
    uint8_t *data = NULL;
    size_t size = 0;
    char err[256];
    if (!self->dealer)
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
    if (zframe_send(&frame, self->dealer, ZFRAME_DONTWAIT) < 0) {
        zframe_destroy(&frame);
        return -1;
    }
    return 0;
}

zsock_t *cf_peer_monitor(cf_peer_t *self)
{
    return self->monitor;
}

cf_peer_event_t cf_peer_recv_monitor(cf_peer_t *self)
{
    cf_peer_event_t result = CF_PEER_NO_EVENT;
    zmsg_t *event = self->monitor ? zmsg_recv(self->monitor) : NULL;
    if (!event)
        return result;
    zframe_t *head = zmsg_first(event);
    if (head && zframe_size(head) >= 6) {
        uint16_t id;
        uint32_t value;
        memcpy(&id, zframe_data(head), 2);
        memcpy(&value, zframe_data(head) + 2, 4);
        if (id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            cf_log_debug("node", "linked to %s", cf_peer_name(self));
            self->hello_received = false;
            self->reconnect_delay_ms = 0;
            result = CF_PEER_LINKED;
        } else if (id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH ||
                   id == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
            /* Usually the peer has not learned our key yet (its beacon or
             * registry round is still to come); a stranger keeps failing. */
            self->reconnect_delay_ms =
                self->reconnect_delay_ms
                    ? (self->reconnect_delay_ms * 2 > 5000 ? 5000 : self->reconnect_delay_ms * 2)
                    : 200;
            self->reconnect_at_ms = zclock_mono() + self->reconnect_delay_ms;
            cf_log_info("node", "peer %s at %s refused our CURVE handshake (%s %u); again in %d ms",
                        cf_peer_name(self), self->control_endpoint,
                        id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH ? "auth status" : "protocol error",
                        value, self->reconnect_delay_ms);
            result = CF_PEER_REFUSED;
        }
    }
    zmsg_destroy(&event);
    return result;
}

bool cf_peer_reconnect_due(cf_peer_t *self, int64_t now)
{
    if (!self->reconnect_at_ms || now < self->reconnect_at_ms)
        return false;
    self->reconnect_at_ms = 0;
    return true;
}

void cf_peer_learned(cf_peer_t *self, const char *id, const char *http_endpoint, unsigned source,
                     int64_t now)
{
    if (id && *id && !self->id[0])
        snprintf(self->id, sizeof self->id, "%s", id);
    if (http_endpoint && *http_endpoint)
        snprintf(self->http_endpoint, sizeof self->http_endpoint, "%s", http_endpoint);
    self->sources |= source;
    self->discovered_ms = now;
}

bool cf_peer_heard(cf_peer_t *self, int64_t now)
{
    self->heard_ms = now;
    if (self->state == CF_PEER_ALIVE)
        return false;
    cf_log_info("node", "peer %s %s", cf_peer_name(self), self->ever_alive ? "is back" : "joined");
    self->state = CF_PEER_ALIVE;
    self->ever_alive = true;
    return true;
}

bool cf_peer_expire(cf_peer_t *self, int64_t now, int grace_ms)
{
    if (self->state != CF_PEER_ALIVE || now - self->heard_ms <= grace_ms)
        return false;
    cf_log_warn("node", "peer %s gone: no heartbeat for %" PRId64 " ms", cf_peer_name(self),
                now - self->heard_ms);
    self->state = CF_PEER_GONE;
    return true;
}

bool cf_peer_forgettable(const cf_peer_t *self, int64_t now, int64_t forget_after_ms)
{
    return !(self->sources & CF_PEER_FROM_STATIC) && self->state != CF_PEER_ALIVE &&
           now - self->discovered_ms > forget_after_ms && now - self->heard_ms > forget_after_ms;
}

void cf_peer_leave(cf_peer_t *self, const char *reason)
{
    cf_log_info("node", "peer %s left: %s", cf_peer_name(self), reason);
    self->state = CF_PEER_LEFT;
    self->hello_received = false;
}

bool cf_peer_hello_due(const cf_peer_t *self, int64_t now)
{
    return !self->hello_received && now - self->hello_requested_ms > S_HELLO_RETRY_MS;
}

void cf_peer_hello_asked(cf_peer_t *self, int64_t now)
{
    self->hello_requested_ms = now;
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

void cf_peer_take_hello(cf_peer_t *self, const cf_msg_hello_t *hello)
{
    if (!self->hello_received)
        cf_log_info("node", "peer %s: %s, %zu encoder(s)", self->id, hello->software,
                    hello->encoders.count);
    self->hello_received = true;
    snprintf(self->software, sizeof self->software, "%s", hello->software);
    if (hello->http_endpoint[0])
        snprintf(self->http_endpoint, sizeof self->http_endpoint, "%s", hello->http_endpoint);
    json_decref(self->caps_hello);
    self->caps_hello = s_caps_from_hello(hello);
}

void cf_peer_take_heartbeat(cf_peer_t *self, const cf_msg_heartbeat_t *heartbeat)
{
    self->load = heartbeat->load;
    self->free_slots = (int)heartbeat->free_slots;
    self->in_flight = (int)heartbeat->in_flight;
    self->epoch_seen = heartbeat->epoch;
}

void cf_peer_take_registry(cf_peer_t *self, const char *caps_json, int free_slots, int in_flight)
{
    json_t *parsed = strlen(caps_json) <= 16384 ? cf_json_loads(caps_json, 0, NULL) : NULL;
    json_decref(self->caps_registry);
    self->caps_registry = json_is_object(parsed) ? parsed : NULL;
    if (!self->caps_registry)
        json_decref(parsed);
    if (!self->heard_ms) {
        self->free_slots = free_slots;
        self->in_flight = in_flight;
    }
}

bool cf_peer_set_liveness(cf_peer_t *self, const char *liveness, int64_t age_ms, unsigned round)
{
    bool changed = strcmp(self->liveness, liveness) != 0;
    snprintf(self->liveness, sizeof self->liveness, "%s", liveness);
    self->registry_age_ms = age_ms;
    self->liveness_round = round;
    return changed;
}

bool cf_peer_table_liveness_end(zhashx_t *peers, unsigned round, bool read)
{
    bool changed = false;
    for (cf_peer_t *peer = zhashx_first(peers); peer; peer = zhashx_next(peers)) {
        const char *now = peer->liveness;
        if (!read)
            now = "";
        else if (peer->liveness_round != round && peer->liveness[0])
            now = peer->state == CF_PEER_LEFT ? "left" : "gone";
        if (strcmp(now, peer->liveness)) {
            snprintf(peer->liveness, sizeof peer->liveness, "%s", now);
            changed = true;
        }
    }
    return changed;
}

json_t *cf_peer_to_json(const cf_peer_t *self, int64_t now)
{
    json_t *sources = json_array();
    if (self->sources & CF_PEER_FROM_BEACON)
        json_array_append_new(sources, json_string("beacon"));
    if (self->sources & CF_PEER_FROM_REGISTRY)
        json_array_append_new(sources, json_string("registry"));
    if (self->sources & CF_PEER_FROM_STATIC)
        json_array_append_new(sources, json_string("static"));
    json_t *caps = self->caps_hello ? self->caps_hello : self->caps_registry;
    return json_pack("{s:s?, s:s, s:s, s:o, s:s, s:s, s:s, s:o, s:o, s:f, s:i, s:i, s:I, s:o}",
                     "id", self->id[0] ? self->id : NULL, "state", s_state_names[self->state],
                     "liveness", self->liveness[0] ? self->liveness : "unknown", "registry_age_ms",
                     self->liveness[0] ? json_integer(self->registry_age_ms) : json_null(),
                     "control_endpoint", self->control_endpoint, "http_endpoint",
                     self->http_endpoint, "public_key", self->key, "discovered_by", sources,
                     "capabilities", caps ? json_incref(caps) : json_null(), "load", self->load,
                     "free_slots", self->free_slots, "in_flight", self->in_flight, "epoch_seen",
                     (json_int_t)self->epoch_seen, "last_seen_ms_ago",
                     self->heard_ms ? json_integer(now - self->heard_ms) : json_null());
}

const char *cf_peer_key(const cf_peer_t *self)
{
    return self->key;
}

const char *cf_peer_id(const cf_peer_t *self)
{
    return self->id;
}

void cf_peer_set_id(cf_peer_t *self, const char *id)
{
    snprintf(self->id, sizeof self->id, "%s", id);
}

const char *cf_peer_name(const cf_peer_t *self)
{
    return self->id[0] ? self->id : self->key;
}

const char *cf_peer_control_endpoint(const cf_peer_t *self)
{
    return self->control_endpoint;
}

void cf_peer_set_control_endpoint(cf_peer_t *self, const char *endpoint)
{
    snprintf(self->control_endpoint, sizeof self->control_endpoint, "%s", endpoint);
}

const char *cf_peer_http_endpoint(const cf_peer_t *self)
{
    return self->http_endpoint;
}

unsigned cf_peer_sources(const cf_peer_t *self)
{
    return self->sources;
}

cf_peer_state_t cf_peer_state(const cf_peer_t *self)
{
    return self->state;
}

int64_t cf_peer_connected_ms(const cf_peer_t *self)
{
    return self->connected_ms;
}

int64_t cf_peer_beacon_ts(const cf_peer_t *self)
{
    return self->beacon_ts;
}

void cf_peer_set_beacon_ts(cf_peer_t *self, int64_t timestamp_ms)
{
    self->beacon_ts = timestamp_ms;
}

/* ------------------------------------------------------------------ the table */

zhashx_t *cf_peer_table_new(void)
{
    zhashx_t *peers = zhashx_new();
    if (peers)
        zhashx_set_destructor(peers, (zhashx_destructor_fn *)cf_peer_destroy);
    return peers;
}

cf_peer_t *cf_peer_table_find_id(zhashx_t *peers, const char *id)
{
    for (cf_peer_t *peer = zhashx_first(peers); peer; peer = zhashx_next(peers))
        if (!strcmp(peer->id, id))
            return peer;
    return NULL;
}

cf_peer_t *cf_peer_table_learn(zhashx_t *peers, const cf_peer_link_t *link, const char *id,
                               const char *key, const char *control, const char *http,
                               unsigned source, bool *changed_p)
{
    if (!strcmp(key, link->public_z85) || (id && !strcmp(id, link->node_id)))
        return NULL;
    cf_peer_t *peer = zhashx_lookup(peers, key);
    int64_t now = zclock_mono();
    if (!peer) {
        if (id && *id) {
            /* Same node, new key (its identity was recreated): the old entry
             * is someone else now and is forgotten. */
            cf_peer_t *old = cf_peer_table_find_id(peers, id);
            if (old) {
                cf_log_warn("node", "peer %s changed its key; forgetting the old one", id);
                zhashx_delete(peers, old->key);
            }
        }
        if (zhashx_size(peers) >= CF_PEER_TABLE_MAX) {
            cf_log_warn("node", "ignoring peer %s: already %d peers", id ? id : key,
                        CF_PEER_TABLE_MAX);
            return NULL;
        }
        if (!(peer = cf_peer_new(peers, key, control)))
            return NULL;
        cf_log_info("node", "discovered peer %s via %s at %s", id && *id ? id : key,
                    source == CF_PEER_FROM_BEACON     ? "beacon"
                    : source == CF_PEER_FROM_REGISTRY ? "registry"
                                                      : "configuration",
                    control);
        cf_peer_connect(peer, link);
        *changed_p = true;
    } else if (strcmp(peer->control_endpoint, control) && peer->state != CF_PEER_ALIVE &&
               now - peer->connected_ms > 3000) {
        /* Beacon and registry may name different addresses: try another
         * only after giving the current one a fair chance. */
        cf_log_info("node", "peer %s moved to %s", cf_peer_name(peer), control);
        cf_peer_set_control_endpoint(peer, control);
        cf_peer_connect(peer, link);
        *changed_p = true;
    }
    cf_peer_learned(peer, id, http, source, now);
    return peer;
}

int cf_peer_table_forget(zhashx_t *peers, int64_t now, int64_t forget_after_ms)
{
    zlistx_t *forget = zlistx_new();
    if (!forget)
        return 0;
    for (cf_peer_t *peer = zhashx_first(peers); peer; peer = zhashx_next(peers))
        if (cf_peer_forgettable(peer, now, forget_after_ms))
            zlistx_add_end(forget, peer->key);
    int count = 0;
    for (const char *key = zlistx_first(forget); key; key = zlistx_next(forget)) {
        cf_log_info("node", "forgetting peer %s (not seen for %" PRId64 " s)", key,
                    forget_after_ms / 1000);
        zhashx_delete(peers, key);
        count++;
    }
    zlistx_destroy(&forget);
    return count;
}

json_t *cf_peer_table_to_json(zhashx_t *peers, int64_t now)
{
    json_t *list = json_array();
    for (cf_peer_t *peer = zhashx_first(peers); peer; peer = zhashx_next(peers))
        json_array_append_new(list, cf_peer_to_json(peer, now));
    return list;
}
