/* cf_zap: the node's ZAP handler (ZeroMQ's authentication protocol, RFC 27).
 * libzmq asks it about every CURVE handshake on the control ROUTER; it lets
 * in the keys on its allow-list and refuses the rest.
 *
 * The allow-list is the node's peer table (cf_peer), read, never changed:
 * a key may connect once it authenticated itself, that is when its peer was
 * learned from a beacon or a registry row with a valid MAC. A --peer entry
 * is ours to dial, not a reason to let that key in; a forgotten peer's key
 * is refused again.
 *
 * Refusals are logged at most once a minute per key (a peer with a stale
 * key retries every few hundred ms); the rest are counted in the next line.
 *
 * A cf_zap_t belongs to the thread that owns the peer table (the node
 * actor's). libzmq has one ZAP endpoint per process
 * (inproc://zeromq.zap.01), so there is one handler per process.
 *
 *     cf_zap_t *zap = cf_zap_new(peers);           // before the ROUTER binds
 *     zsock_set_zap_domain(router, CF_ZAP_DOMAIN);
 *     ... when cf_zap_sock(zap) is readable:
 *     int verdict = cf_zap_handle(zap);            // 1 admitted, 0 refused
 *     cf_zap_destroy(&zap); */
#ifndef CF_ZAP_H
#define CF_ZAP_H

#include <czmq.h>
#include <stdbool.h>

#define CF_ZAP_DOMAIN "clipfarm"

typedef struct cf_zap_t cf_zap_t;

/* Binds the ZAP endpoint, admitting by PEERS (a cf_peer table, borrowed: it
 * must outlive every cf_zap_handle call). Must run before any CURVE server socket binds:
 * without a handler libzmq lets every CURVE client in. Returns NULL when
 * the endpoint is taken (another node in this process) or out of memory. */
cf_zap_t *cf_zap_new(zhashx_t *peers);

/* Unbinds and frees. Safe on NULL; NULLs *self_p. */
void cf_zap_destroy(cf_zap_t **self_p);

/* The REP socket to poll: readable when libzmq has a request. */
zsock_t *cf_zap_sock(cf_zap_t *self);

/* True when the Z85 public KEY may connect. */
bool cf_zap_allowed(cf_zap_t *self, const char *key);

/* Answers one request: admits a CURVE client whose key is allowed, refuses
 * anything else (other mechanisms, malformed requests) and logs the refusal
 * as above. Returns 1 when it admitted, 0 when it refused, -1 when there
 * was no request to read. */
int cf_zap_handle(cf_zap_t *self);

#endif
