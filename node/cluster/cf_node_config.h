/* cf_node_config: a node's options, checked and turned into what the node
 * actor runs with: every string copied, addresses resolved into the
 * endpoint to bind and the one to advertise. Also implements
 * cf_node_options_default and cf_node_check_options (cf_node.h). */
#ifndef CF_NODE_CONFIG_H
#define CF_NODE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "cf_node.h"

typedef struct {
    char *database_url;
    char *data_dir;
    char *beacon_iface; /* NULL: no beacons */
    int beacon_port;
    bool registry_discovery;
    char *bind_endpoint;    /* tcp://HOST:PORT */
    char *control_endpoint; /* advertised */
    char *http_endpoint;    /* advertised, "" when none */
    int control_port, http_port;
    char *static_peers; /* the --peer list, NULL: none */
    int lease_ttl_ms, peer_grace_ms, heartbeat_ms, beacon_interval_ms, replay_window_ms;
    char *status_file; /* NULL: none */
    bool print_state;
    bool calibrate;
} cf_node_config_t;

/* The configuration for OPTS, or NULL with a one-line reason naming the
 * option in err (an address that does not parse, a wildcard without
 * --beacon-iface, a bad --peer entry), or NULL when out of memory. Checks
 * only what it resolves: cf_node_check_options checks the rest. */
cf_node_config_t *cf_node_config_new(const cf_node_options_t *opts, char *err, size_t errlen);

/* Safe on NULL; NULLs *self_p. */
void cf_node_config_destroy(cf_node_config_t **self_p);

/* Called for each entry of a --peer list with its Z85 key and its control
 * endpoint (tcp://HOST:PORT), both borrowed for the call. */
typedef void(cf_node_static_peer_fn)(const char *key, const char *control_endpoint, void *arg);

/* Parses SPEC ("Z85KEY@HOST:PORT,...", NULL or "": none), calling FN (may
 * be NULL: only check) for each entry. Returns 0, or -1 with the offending
 * entry in err. */
int cf_node_config_static_peers(const char *spec, cf_node_static_peer_fn *fn, void *arg, char *err,
                                size_t errlen);

#endif
