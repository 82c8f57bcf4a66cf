/* cf_node_status: the node's status file, state and capability lines, and
 * the counters' vocabulary. See cf_node_status.h. */
#include "cf_node_status.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_log.h"
#include "cf_peer.h"

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
    [CF_NODE_WORK_REFUSED] = {"work_messages_refused",
                              "ASSIGN or CANCEL not from the coordinator of the current epoch, or "
                              "worker replies this node may not take"},
    [CF_NODE_FENCED_WRITES_DROPPED] = {"fenced_writes_dropped",
                                       "Queued coordinator writes dropped: deposed, or the "
                                       "lease ran out first"},
    [CF_NODE_ASSIGN_REFUSED] = {"assign_refused",
                                "ASSIGN messages from a node that does not hold their epoch"},
    [CF_NODE_LEASES_REFUSED] = {"leases_refused",
                                "Leases won at an epoch another node announced, released"},
};

const char *cf_node_counter_name(cf_node_counter_t counter)
{
    return counter < CF_NODE_COUNTER_COUNT ? s_counter_info[counter].name : NULL;
}

const char *cf_node_counter_help(cf_node_counter_t counter)
{
    return counter < CF_NODE_COUNTER_COUNT ? s_counter_info[counter].help : NULL;
}

json_t *cf_node_status_counters(cf_node_t *node)
{
    json_t *counters = json_object();
    for (int i = 0; i < CF_NODE_COUNTER_COUNT; i++)
        json_object_set_new(counters, s_counter_info[i].name,
                            json_integer((json_int_t)cf_node_counter(node, i)));
    return counters;
}

/* ------------------------------------------------------------------ reports */

struct cf_node_status_t {
    char node_id[37];
    char *status_file; /* NULL: none */
    bool print_state;
    char printed[4096]; /* the last state line */
};

cf_node_status_t *cf_node_status_new(const char *node_id, const cf_node_config_t *cfg)
{
    cf_node_status_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    snprintf(self->node_id, sizeof self->node_id, "%s", node_id);
    self->print_state = cfg->print_state;
    if (cfg->status_file && !(self->status_file = strdup(cfg->status_file)))
        cf_node_status_destroy(&self);
    return self;
}

void cf_node_status_destroy(cf_node_status_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->status_file);
    free(*self_p);
    *self_p = NULL;
}

void cf_node_status_write(cf_node_status_t *self, json_t *snapshot)
{
    if (!self->status_file)
        return;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", self->status_file);
    if (json_dump_file(snapshot, tmp, JSON_INDENT(1) | JSON_SORT_KEYS) < 0 ||
        rename(tmp, self->status_file) < 0)
        cf_log_warn("node", "cannot write the status file %s", self->status_file);
}

void cf_node_status_state(cf_node_status_t *self, bool coordinator, uint64_t epoch,
                          const char *coordinator_id, zhashx_t *peers)
{
    char line[sizeof self->printed];
    int alive = 0;
    size_t len = 0;
    char list[3500] = "";
    for (cf_peer_t *peer = zhashx_first(peers); peer; peer = zhashx_next(peers)) {
        if (cf_peer_state(peer) != CF_PEER_ALIVE)
            continue;
        alive++;
        int n = snprintf(list + len, sizeof list - len, "%s%s", len ? "," : "", cf_peer_name(peer));
        if (n > 0 && (size_t)n < sizeof list - len)
            len += (size_t)n;
    }
    snprintf(line, sizeof line, "role=%s epoch=%" PRIu64 " coordinator=%s peers=%d [%s]",
             coordinator ? "coordinator" : "worker", epoch,
             coordinator_id[0] ? coordinator_id : "none", alive, list);
    if (!strcmp(line, self->printed))
        return;
    snprintf(self->printed, sizeof self->printed, "%s", line);
    cf_log_info("node", "%s", line);
    if (self->print_state) {
        printf("node %s: %s\n", self->node_id, line);
        fflush(stdout);
    }
}

void cf_node_status_caps(cf_node_status_t *self, const cf_caps_t *caps)
{
    char *summary = cf_caps_summary(caps);
    cf_log_info("node", "capabilities: %s", summary ? summary : "?");
    if (self->print_state) {
        printf("node %s: capabilities: %s\n", self->node_id, summary ? summary : "?");
        fflush(stdout);
    }
    free(summary);
}

void cf_node_status_started(cf_node_status_t *self, const cf_node_config_t *cfg,
                            const char *public_key, bool beacons)
{
    const char *http = cfg->http_endpoint[0] ? cfg->http_endpoint : "none";
    cf_log_info("node", "node %s listening on %s (control %s, http %s)%s%s", self->node_id,
                cfg->bind_endpoint, cfg->control_endpoint, http,
                beacons ? ", beacons on " : ", no beacons", beacons ? cfg->beacon_iface : "");
    if (self->print_state) {
        printf("node %s: control=%s http=%s key=%s beacons=%s registry=%s\n", self->node_id,
               cfg->control_endpoint, http, public_key, beacons ? cfg->beacon_iface : "off",
               cfg->registry_discovery ? "on" : "publish-only");
        fflush(stdout);
    }
}
