#define _GNU_SOURCE
#include "cf_discovery.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_db_cluster.h"
#include "cf_log.h"

#define S_LEAVE_TIMEOUT_MS 500

typedef struct {
    char *url;
    char node_id[37];
    char public_key[41];
    char *control;
    char *http;
    char *capabilities;
    const cf_secret_t *secret;
    int interval_ms;
    int max_age_ms;
    int grace_ms;
    bool read_peers;
    int interrupt_fd;
} s_args_t;

typedef struct {
    zsock_t *pipe;
    s_args_t *args;
    cf_db_cluster_t *db;
    char mac[CF_MAC_HEX_LEN];
    int free_slots, in_flight;
    bool upserted;
    bool terminated;
    bool db_reported, db_reachable;
    zhashx_t *rejected; /* "id mac" of rows already reported */
} s_self_t;

static char *s_mac_text(const char *id, const char *control, const char *http, const char *key)
{
    char *text = NULL;
    if (asprintf(&text, "clipfarm-node-v1\n%s\n%s\n%s\n%s", id, control, http, key) < 0)
        return NULL;
    return text;
}

void cf_discovery_row_mac(const cf_secret_t *secret, const char *id, const char *control,
                          const char *http, const char *key, char out[CF_MAC_HEX_LEN])
{
    char *text = s_mac_text(id, control, http, key);
    out[0] = '\0';
    if (text)
        cf_secret_mac_hex(secret, text, strlen(text), out);
    free(text);
}

bool cf_discovery_row_verify(const cf_secret_t *secret, const char *id, const char *control,
                             const char *http, const char *key, const char *mac)
{
    char *text = s_mac_text(id, control, http, key);
    bool ok = text && cf_secret_verify_hex(secret, text, strlen(text), mac);
    free(text);
    return ok;
}

static void s_args_free(s_args_t *args)
{
    if (!args)
        return;
    free(args->url);
    free(args->control);
    free(args->http);
    free(args->capabilities);
    free(args);
}

static void s_report_db(s_self_t *self, bool reachable, const char *reason)
{
    if (self->db_reported && self->db_reachable == reachable)
        return;
    self->db_reported = true;
    self->db_reachable = reachable;
    if (!reachable)
        cf_log_warn("registry", "Postgres unreachable: %s", reason);
    zsock_send(self->pipe, "sis", "DB", reachable ? 1 : 0, reason);
}

static void s_round(s_self_t *self)
{
    s_args_t *a = self->args;
    int timeout = a->interval_ms < 1000 ? 1000 : a->interval_ms;
    cf_db_node_t me = {.control_endpoint = a->control,
                       .http_endpoint = a->http,
                       .capabilities = a->capabilities,
                       .free_slots = self->free_slots,
                       .in_flight = self->in_flight,
                       .grace_ms = a->grace_ms};
    snprintf(me.id, sizeof me.id, "%s", a->node_id);
    snprintf(me.public_key, sizeof me.public_key, "%s", a->public_key);
    snprintf(me.mac, sizeof me.mac, "%s", self->mac);
    char err[512];
    if (cf_db_cluster_node_upsert(self->db, &me, !self->upserted, timeout, err, sizeof err) !=
        CF_DBC_OK) {
        s_report_db(self, false, err);
        zsock_send(self->pipe, "si", "ROUND", 0);
        return;
    }
    self->upserted = true;
    if (!a->read_peers) {
        s_report_db(self, true, "");
        return;
    }
    cf_db_node_t *rows = NULL;
    int count = 0;
    if (cf_db_cluster_peers(self->db, a->node_id, a->max_age_ms, &rows, &count, timeout, err,
                            sizeof err) != CF_DBC_OK) {
        s_report_db(self, false, err);
        zsock_send(self->pipe, "si", "ROUND", 0);
        return;
    }
    s_report_db(self, true, "");
    for (int i = 0; i < count; i++) {
        cf_db_node_t *row = &rows[i];
        if (!cf_discovery_row_verify(a->secret, row->id, row->control_endpoint, row->http_endpoint,
                                     row->public_key, row->mac)) {
            char key[128];
            snprintf(key, sizeof key, "%s %s", row->id, row->mac);
            if (!zhashx_lookup(self->rejected, key)) {
                zhashx_insert(self->rejected, key, (void *)1);
                cf_log_warn("registry",
                            "ignored the registry row of node %s: its MAC does not verify "
                            "(another cluster's secret, or forged)",
                            row->id);
                zsock_send(self->pipe, "ss", "REJECTED", row->id);
            }
            continue;
        }
        zsock_send(self->pipe, "ssssssiis8", "PEER", row->id, row->public_key,
                   row->control_endpoint, row->http_endpoint, row->capabilities, row->free_slots,
                   row->in_flight, row->state, (uint64_t)(row->age_ms > 0 ? row->age_ms : 0));
    }
    cf_db_cluster_nodes_free(&rows, count);
    zsock_send(self->pipe, "si", "ROUND", 1);
}

static void s_handle_pipe(s_self_t *self)
{
    char *command = NULL, *caps = NULL;
    int free_slots = 0, in_flight = 0;
    if (zsock_recv(self->pipe, "ssii", &command, &caps, &free_slots, &in_flight) < 0 || !command) {
        self->terminated = true;
        return;
    }
    if (!strcmp(command, "$TERM")) {
        self->terminated = true;
    } else if (!strcmp(command, "SELF") && caps) {
        free(self->args->capabilities);
        self->args->capabilities = caps;
        caps = NULL;
        self->free_slots = free_slots;
        self->in_flight = in_flight;
    }
    free(command);
    free(caps);
}

static void s_actor(zsock_t *pipe, void *arg)
{
    s_self_t self = {.pipe = pipe, .args = arg};
    self.db = cf_db_cluster_new(self.args->url);
    if (self.db)
        cf_db_cluster_set_interrupt(self.db, self.args->interrupt_fd);
    self.rejected = zhashx_new();
    cf_discovery_row_mac(self.args->secret, self.args->node_id, self.args->control, self.args->http,
                         self.args->public_key, self.mac);
    zsock_signal(pipe, 0);
    int64_t next = zclock_mono();
    while (self.db && self.rejected && !self.terminated) {
        int64_t now = zclock_mono();
        if (now >= next) {
            s_round(&self);
            next = now + self.args->interval_ms;
            continue;
        }
        zmq_pollitem_t items[] = {{zsock_resolve(pipe), 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 1, (long)(next - now)) < 0)
            break;
        if (items[0].revents & ZMQ_POLLIN)
            s_handle_pipe(&self);
    }
    if (self.db && self.upserted) {
        cf_db_cluster_set_interrupt(self.db, -1); /* this one is still tried */
        char err[512];
        if (cf_db_cluster_node_leave(self.db, self.args->node_id, S_LEAVE_TIMEOUT_MS, err,
                                     sizeof err) != CF_DBC_OK)
            cf_log_warn("registry", "could not mark this node left in the registry: %s", err);
    }
    zhashx_destroy(&self.rejected);
    cf_db_cluster_destroy(&self.db);
    s_args_free(self.args);
}

zactor_t *cf_discovery_new(const cf_discovery_args_t *args)
{
    s_args_t *copy = calloc(1, sizeof *copy);
    if (!copy)
        return NULL;
    copy->url = strdup(args->database_url);
    copy->control = strdup(args->control_endpoint);
    copy->http = strdup(args->http_endpoint ? args->http_endpoint : "");
    copy->capabilities = strdup(args->capabilities ? args->capabilities : "{}");
    snprintf(copy->node_id, sizeof copy->node_id, "%s", args->node_id);
    snprintf(copy->public_key, sizeof copy->public_key, "%s", args->public_key);
    copy->secret = args->secret;
    copy->interval_ms = args->interval_ms > 0 ? args->interval_ms : 1000;
    copy->max_age_ms = args->max_age_ms > 0 ? args->max_age_ms : 15000;
    copy->grace_ms = args->grace_ms > 0 ? args->grace_ms : 5000;
    copy->read_peers = args->read_peers;
    copy->interrupt_fd = args->interrupt_fd;
    zactor_t *actor = NULL;
    if (copy->url && copy->control && copy->http && copy->capabilities)
        actor = zactor_new(s_actor, copy);
    if (!actor)
        s_args_free(copy);
    return actor;
}
