/* cf_zap: the ZAP handler and its allow-list. See cf_zap.h. */
#include "cf_zap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_identity.h"
#include "cf_log.h"
#include "cf_peer.h"

#define S_ZAP_ENDPOINT  "inproc://zeromq.zap.01"
#define S_LOG_KEYS      64
#define S_LOG_PERIOD_MS 60000

typedef struct {
    char key[41];
    int64_t logged_ms;   /* when its last line was written */
    unsigned suppressed; /* refusals since, not logged */
} s_refusal_t;

struct cf_zap_t {
    zsock_t *sock;   /* REP, bound to the ZAP endpoint */
    zhashx_t *peers; /* the allow-list: the node's peer table, borrowed */
    s_refusal_t refusals[S_LOG_KEYS];
};

cf_zap_t *cf_zap_new(zhashx_t *peers)
{
    cf_zap_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->peers = peers;
    self->sock = zsock_new(ZMQ_REP);
    if (!self->sock || zsock_bind(self->sock, S_ZAP_ENDPOINT) < 0)
        cf_zap_destroy(&self);
    return self;
}

void cf_zap_destroy(cf_zap_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_zap_t *self = *self_p;
    zsock_destroy(&self->sock);
    free(self);
    *self_p = NULL;
}

zsock_t *cf_zap_sock(cf_zap_t *self)
{
    return self->sock;
}

bool cf_zap_allowed(cf_zap_t *self, const char *key)
{
    cf_peer_t *peer = zhashx_lookup(self->peers, key);
    return peer && (cf_peer_sources(peer) & (CF_PEER_FROM_BEACON | CF_PEER_FROM_REGISTRY));
}

/* Logs a refused handshake from KEY unless one was logged in the last
 * minute; then it is only counted, and the next line says how many were
 * not logged. An attacker with ever new keys evicts the oldest entry, so
 * the table stays small and a line per new key is still at most what the
 * handshakes themselves cost. */
static void s_log_refusal(cf_zap_t *self, const char *address, const char *key)
{
    int64_t now = zclock_mono();
    s_refusal_t *entry = NULL, *oldest = &self->refusals[0];
    for (int i = 0; i < S_LOG_KEYS && !entry; i++) {
        s_refusal_t *e = &self->refusals[i];
        if (e->key[0] && !strcmp(e->key, key))
            entry = e;
        else if (e->logged_ms < oldest->logged_ms)
            oldest = e;
    }
    if (entry && now - entry->logged_ms < S_LOG_PERIOD_MS) {
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

int cf_zap_handle(cf_zap_t *self)
{
    zmsg_t *request = zmsg_recv(self->sock);
    if (!request)
        return -1;
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
        cf_key_to_z85(zframe_data(credentials), key) == 0)
        allowed = cf_zap_allowed(self, key);
    if (!allowed)
        s_log_refusal(self, address ? address : "?", key[0] ? key : "?");
    zmsg_t *reply = zmsg_new();
    zmsg_addstr(reply, "1.0");
    zmsg_addstr(reply, sequence ? sequence : "");
    zmsg_addstr(reply, allowed ? "200" : "400");
    zmsg_addstr(reply, allowed ? "OK" : "unknown key");
    zmsg_addstr(reply, allowed ? key : "");
    zmsg_addmem(reply, NULL, 0);
    zmsg_send(&reply, self->sock);

    free(version);
    free(sequence);
    free(domain);
    free(address);
    zframe_destroy(&routing);
    free(mechanism);
    zframe_destroy(&credentials);
    zmsg_destroy(&request);
    return allowed ? 1 : 0;
}
