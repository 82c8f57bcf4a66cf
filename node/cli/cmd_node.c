/* clipfarm node: one cluster node. Applies the migrations, joins the cluster
 * (identity, discovery, election, control plane: cf_node) and then runs the
 * node's services until SIGTERM or SIGINT, when it leaves cleanly: the lease
 * is released if held, peers get a BYE, the registry row is marked left.
 *
 * Services start in the order of s_services and stop in reverse; adding one
 * is a start and a stop function and a line in that table. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_api_service.h"
#include "cf_cli.h"
#include "cf_db.h"
#include "cf_log.h"
#include "cf_migrate.h"
#include "cf_node.h"

typedef struct {
    cf_config_t cfg;
    /* Command-specific options. */
    bool print_config;
    double lease_ttl_s, peer_grace_s, heartbeat_s, beacon_interval_s, replay_window_s;
    char *status_file;
    char *peers;
    char *discovery;
    char *encoders;
    bool no_calibrate;
    cf_api_service_options_t api_opts; /* REST API and renderer flags */
    /* Running services. */
    cf_node_t *node;
    cf_api_service_t *api;
} s_node_cmd_t;

/* ------------------------------------------------------------------ services */

static void s_membership_options(s_node_cmd_t *cmd, cf_node_options_t *opts)
{
    cf_node_options_default(opts);
    opts->database_url = cmd->cfg.database_url;
    opts->data_dir = cmd->cfg.data_dir;
    opts->secret_file = cmd->cfg.cluster_secret_file;
    opts->control_addr = cmd->cfg.control_addr;
    opts->http_addr = cmd->cfg.http_addr;
    /* --discovery registry: no beacons even when an interface is named. */
    bool registry_only = cmd->discovery && !strcmp(cmd->discovery, "registry");
    opts->beacon_iface = registry_only ? NULL : cmd->cfg.beacon_iface;
    opts->beacon_port = cmd->cfg.beacon_port;
    opts->registry_discovery = !cmd->discovery || strcmp(cmd->discovery, "beacon") != 0;
    opts->tags = cmd->cfg.tags;
    opts->tag_count = cmd->cfg.tag_count;
    /* A node that serves the API only takes no tasks: it says so. */
    opts->slots = cmd->api_opts.no_render ? -1 : cmd->cfg.slots;
    opts->encoders = cmd->encoders;
    opts->static_peers = cmd->peers;
    opts->lease_ttl_ms = (int)(cmd->lease_ttl_s * 1000);
    opts->peer_grace_ms = (int)(cmd->peer_grace_s * 1000);
    opts->heartbeat_ms = (int)(cmd->heartbeat_s * 1000);
    opts->beacon_interval_ms = (int)(cmd->beacon_interval_s * 1000);
    opts->replay_window_ms = (int)(cmd->replay_window_s * 1000);
    opts->status_file = cmd->status_file;
    opts->print_state = true;
    opts->calibrate = !cmd->no_calibrate;
}

static int s_start_membership(s_node_cmd_t *cmd, char *err, size_t errlen)
{
    cf_node_options_t opts;
    s_membership_options(cmd, &opts);
    cmd->node = cf_node_new(&opts, err, errlen);
    return cmd->node ? 0 : -1;
}

static void s_stop_membership(s_node_cmd_t *cmd)
{
    cf_node_destroy(&cmd->node);
}

static json_t *s_cluster_view(void *arg)
{
    return cf_node_snapshot(arg);
}

static void s_report_load(void *arg, int free_slots, int in_flight)
{
    cf_node_set_load(arg, free_slots, in_flight);
}

static bool s_is_coordinator(void *arg)
{
    return cf_node_is_coordinator(arg, NULL);
}

/* The REST API and the single-node renderer (node/cf_api_service.h). */
static int s_start_api(s_node_cmd_t *cmd, char *err, size_t errlen)
{
    if (!cmd->cfg.redis_url) {
        /* Membership alone (e.g. the cluster tests): no queue, no API. */
        cf_log_warn("node", "no --redis-url: the REST API and the renderer are not started");
        return 0;
    }
    cmd->api_opts.cfg = &cmd->cfg;
    cmd->api_opts.node_id = cf_node_id(cmd->node);
    cmd->api_opts.cluster = s_cluster_view;
    cmd->api_opts.cluster_arg = cmd->node;
    cmd->api_opts.on_load = s_report_load;
    cmd->api_opts.on_load_arg = cmd->node;
    /* --render-mode local: whole compositions per node, no distribution. */
    cmd->api_opts.node =
        cmd->api_opts.render_mode && !strcmp(cmd->api_opts.render_mode, "local") ? NULL : cmd->node;
    cmd->api_opts.encoders = cmd->encoders;
    cmd->api_opts.is_coordinator = s_is_coordinator;
    cmd->api_opts.is_coordinator_arg = cmd->node;
    cmd->api = cf_api_service_new(&cmd->api_opts, err, errlen);
    return cmd->api ? 0 : -1;
}

static void s_stop_api(s_node_cmd_t *cmd)
{
    cf_api_service_destroy(&cmd->api);
}

static const struct {
    const char *name;
    int (*start)(s_node_cmd_t *cmd, char *err, size_t errlen);
    void (*stop)(s_node_cmd_t *cmd);
} s_services[] = {
    {"cluster membership", s_start_membership, s_stop_membership},
    {"REST API and renderer", s_start_api, s_stop_api},
};
#define S_SERVICE_COUNT (int)(sizeof s_services / sizeof s_services[0])

/* ------------------------------------------------------------------ command */

static int s_migrate(const char *url)
{
    char err[1024];
    PGconn *conn = cf_db_connect(url, 10, err, sizeof err);
    if (!conn) {
        cf_cli_error("node", "--database-url: cannot connect: %s", err);
        return CF_EXIT_USAGE;
    }
    cf_migrate_report_t report;
    int rc = cf_migrate_run(conn, NULL, &report, err, sizeof err);
    PQfinish(conn);
    if (rc < 0) {
        cf_cli_error("node", "%s", err);
        return CF_EXIT_FAILURE;
    }
    cf_log_info("node", "schema at version %d (%d migration(s) applied now)", report.latest_version,
                report.applied);
    return CF_EXIT_OK;
}

int cf_cmd_node(int argc, char **argv)
{
    s_node_cmd_t cmd = {.lease_ttl_s = 5,
                        .peer_grace_s = 5,
                        .heartbeat_s = 1,
                        .beacon_interval_s = 0.5,
                        .replay_window_s = 30};
    cf_option_t extra[96] = {
        {"print-config", NULL, CF_OPT_FLAG, &cmd.print_config, 0, 0,
         "print the effective configuration (secrets masked) and exit", NULL},
        {"lease-ttl", "CF_LEASE_TTL", CF_OPT_DOUBLE, &cmd.lease_ttl_s, 0.3, 3600,
         "coordinator lease time to live in seconds (default 5)", "S"},
        {"peer-grace", "CF_PEER_GRACE", CF_OPT_DOUBLE, &cmd.peer_grace_s, 0.1, 3600,
         "seconds without a heartbeat before a peer is gone (default 5)", "S"},
        {"heartbeat-interval", "CF_HEARTBEAT_INTERVAL", CF_OPT_DOUBLE, &cmd.heartbeat_s, 0.02, 600,
         "seconds between heartbeats and registry updates (default 1)", "S"},
        {"beacon-interval", "CF_BEACON_INTERVAL", CF_OPT_DOUBLE, &cmd.beacon_interval_s, 0.05, 600,
         "seconds between beacons (default 0.5)", "S"},
        {"replay-window", "CF_REPLAY_WINDOW", CF_OPT_DOUBLE, &cmd.replay_window_s, 1, 86400,
         "beacons further than this many seconds from our clock are dropped (default 30)", "S"},
        {"status-file", "CF_STATUS_FILE", CF_OPT_STRING, &cmd.status_file, 0, 0,
         "keep the node's view of the cluster (JSON) in this file", "FILE"},
        {"peer", "CF_PEERS", CF_OPT_STRING, &cmd.peers, 0, 0,
         "also connect to these peers: Z85KEY@HOST:PORT[,...] (they admit us only once they "
         "learned our key from a beacon or the registry)",
         "LIST"},
        {"discovery", "CF_DISCOVERY", CF_OPT_STRING, &cmd.discovery, 0, 0,
         "how peers are found: both (default), beacon (beacons only; the registry row is still "
         "published) or registry (no beacons even with --beacon-iface)",
         "MODE"},
        {"encoders", "CF_ENCODERS", CF_OPT_STRING, &cmd.encoders, 0, 0,
         "encoders this node offers, comma-separated (default: every one it can open), e.g. "
         "libx264 to keep a GPU box for CPU work",
         "LIST"},
        {"no-calibrate", "CF_NO_CALIBRATE", CF_OPT_FLAG, &cmd.no_calibrate, 0, 0,
         "do not measure encoder speed (frames/s stay 0 until a calibration is cached)", NULL},
        {0},
    };
    cf_api_service_options_default(&cmd.api_opts);
    cf_api_service_add_options(&cmd.api_opts, extra, sizeof extra / sizeof extra[0]);
    int rc = cf_cli_parse(&cmd.cfg, "node", extra, 0, 0, argc, argv);
    if (rc >= 0)
        goto end;
    if (cmd.print_config) {
        cf_config_print(&cmd.cfg, cf_command_find("node")->groups, stdout);
        rc = CF_EXIT_OK;
        goto end;
    }
    rc = CF_EXIT_USAGE;
    if (!cmd.cfg.database_url) {
        cf_cli_error("node", "--database-url (or CF_DATABASE_URL) is required");
        goto end;
    }
    if (!cmd.cfg.cluster_secret_file) {
        cf_cli_error("node", "--cluster-secret-file (or CF_CLUSTER_SECRET_FILE) is required "
                             "(create one with: clipfarm secret generate > FILE)");
        goto end;
    }
    const char *mode = cmd.api_opts.render_mode;
    if (mode && strcmp(mode, "cluster") && strcmp(mode, "local")) {
        cf_cli_error("node", "--render-mode: expected cluster or local, got '%s'", mode);
        goto end;
    }
    if (cmd.discovery && strcmp(cmd.discovery, "both") && strcmp(cmd.discovery, "beacon") &&
        strcmp(cmd.discovery, "registry")) {
        cf_cli_error("node", "--discovery: expected both, beacon or registry, got '%s'",
                     cmd.discovery);
        goto end;
    }
    if (cmd.discovery && !strcmp(cmd.discovery, "beacon") && !cmd.cfg.beacon_iface) {
        cf_cli_error("node", "--discovery beacon needs --beacon-iface");
        goto end;
    }
    if (!cmd.cfg.data_dir) {
        cf_cli_error("node", "--data-dir (or CF_DATA_DIR) is required");
        goto end;
    }

    /* Bad cluster options are usage errors, found before touching anything. */
    cf_node_options_t check;
    char err[1024];
    s_membership_options(&cmd, &check);
    if (cf_node_check_options(&check, err, sizeof err) < 0) {
        cf_cli_error("node", "%s", err);
        goto end;
    }

    /* Signals are taken by this thread with sigwait: block them before any
     * thread starts, so every thread inherits the mask. */
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &signals, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);

    if ((rc = s_migrate(cmd.cfg.database_url)) != CF_EXIT_OK)
        goto end;

    int started = 0;
    for (; started < S_SERVICE_COUNT; started++) {
        if (s_services[started].start(&cmd, err, sizeof err) < 0) {
            cf_cli_error("node", "%s", err);
            rc = CF_EXIT_USAGE;
            break;
        }
        cf_log_debug("node", "%s started", s_services[started].name);
    }
    if (started == S_SERVICE_COUNT) {
        int sig = 0;
        while (sigwait(&signals, &sig) == 0 && sig == SIGHUP)
            cf_log_info("node", "SIGHUP ignored (restart the node to change its configuration)");
        cf_log_info("node", "signal %d: leaving the cluster", sig);
        rc = CF_EXIT_OK;
    }
    while (started-- > 0)
        s_services[started].stop(&cmd);
end:
    cf_config_free(&cmd.cfg, extra);
    return rc;
}
