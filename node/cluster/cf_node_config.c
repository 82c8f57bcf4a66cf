/* cf_node_config: options checked and resolved. See cf_node_config.h. */
#define _GNU_SOURCE
#include "cf_node_config.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "cf_identity.h"
#include "cf_url.h"

void cf_node_config_destroy(cf_node_config_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_node_config_t *cfg = *self_p;
    free(cfg->database_url);
    free(cfg->data_dir);
    free(cfg->beacon_iface);
    free(cfg->bind_endpoint);
    free(cfg->control_endpoint);
    free(cfg->http_endpoint);
    free(cfg->static_peers);
    free(cfg->status_file);
    free(cfg);
    *self_p = NULL;
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

int cf_node_config_static_peers(const char *spec, cf_node_static_peer_fn *fn, void *arg, char *err,
                                size_t errlen)
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
        } else if (fn) {
            fn(key, control, arg);
        }
    }
    free(list);
    return rc;
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

cf_node_config_t *cf_node_config_new(const cf_node_options_t *opts, char *err, size_t errlen)
{
    cf_node_config_t *cfg = calloc(1, sizeof *cfg);
    if (!cfg)
        return NULL;
    cfg->database_url = strdup(opts->database_url);
    cfg->data_dir = strdup(opts->data_dir);
    cfg->beacon_iface = opts->beacon_iface ? strdup(opts->beacon_iface) : NULL;
    cfg->beacon_port = opts->beacon_port > 0 ? opts->beacon_port : 5670;
    cfg->registry_discovery = opts->registry_discovery;
    cfg->static_peers = opts->static_peers ? strdup(opts->static_peers) : NULL;
    if (cf_node_config_static_peers(cfg->static_peers, NULL, NULL, err, errlen) < 0) {
        cf_node_config_destroy(&cfg);
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
        cf_node_config_destroy(&cfg);
        return NULL;
    }
    if (opts->http_addr && *opts->http_addr) {
        if (s_endpoints("--http-addr", opts->http_addr, opts->beacon_iface, "http://", NULL,
                        &cfg->http_endpoint, &cfg->http_port, err, errlen) < 0) {
            cf_node_config_destroy(&cfg);
            return NULL;
        }
    } else {
        cfg->http_endpoint = strdup("");
    }
    return cfg;
}

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
    cf_node_config_t *cfg = cf_node_config_new(opts, err, errlen);
    if (!cfg)
        return -1;
    cf_node_config_destroy(&cfg);
    char why[512];
    cf_secret_t *secret = cf_secret_load(opts->secret_file, NULL, why, sizeof why);
    if (!secret) {
        snprintf(err, errlen, "--cluster-secret-file: %s", why);
        return -1;
    }
    cf_secret_destroy(&secret);
    return 0;
}
