/* cf_node: the node as other threads see it. cf_node_new loads what the
 * node is (identity, cluster secret, capabilities) and starts the node
 * actor (cf_node_actor), which does all the work; everything else here
 * reads or writes the few things the actor shares: a JSON snapshot under a
 * mutex, the load, the coordinator epoch and the counters, as atomics.
 * Options are checked and resolved by cf_node_config. */
#include "cf_node.h"

#include <czmq.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_caps.h"
#include "cf_identity.h"
#include "cf_log.h"
#include "cf_node_actor.h"
#include "cf_node_config.h"
#include "cf_node_status.h"

struct cf_node_t {
    zactor_t *actor;
    char node_id[37];
    pthread_mutex_t mutex;
    json_t *snapshot; /* guarded by mutex */
    atomic_uint_fast64_t counters[CF_NODE_COUNTER_COUNT];
    atomic_int free_slots;
    atomic_int in_flight;
    atomic_int_fast64_t coordinator_epoch; /* 0 while not coordinator */
    atomic_bool executor;                  /* an executor takes this node's ASSIGNs */
};

cf_node_t *cf_node_new(const cf_node_options_t *opts, char *err, size_t errlen)
{
    if (cf_node_check_options(opts, err, errlen) < 0)
        return NULL;
    /* czmq would otherwise install its own SIGINT/SIGTERM handler and stop
     * every socket on a signal; the caller decides what a signal means. */
    zsys_handler_set(NULL);
    zsys_set_logstream(stderr);

    cf_node_t *self = calloc(1, sizeof *self);
    cf_node_config_t *cfg = NULL;
    cf_secret_t *secret = NULL;
    cf_identity_t *identity = NULL;
    cf_caps_t *caps = NULL;
    cf_node_actor_args_t *init = NULL;
    if (!self) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&self->mutex, NULL);
    atomic_store(&self->free_slots, opts->slots > 0 ? opts->slots : opts->slots < 0 ? 0 : 1);

    if (!(cfg = cf_node_config_new(opts, err, errlen)))
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
    if (cf_caps_restrict(caps, opts->encoders, err, errlen) < 0)
        goto fail;
    if (opts->beacon_iface)
        zsys_set_interface(opts->beacon_iface);

    init = calloc(1, sizeof *init);
    if (!init) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    *init = (cf_node_actor_args_t){self, cfg, identity, secret, caps};
    cfg = NULL;
    identity = NULL;
    secret = NULL;
    caps = NULL;
    /* The actor owns INIT's contents from here, whatever happens. */
    self->actor = zactor_new(cf_node_actor, init);
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
    cf_node_config_destroy(&cfg);
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
    if (copy) /* counters move between snapshots: give the current values */
        json_object_set_new(copy, "counters", cf_node_status_counters(self));
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

/* ------------------------------------------------------------------ the actor's side */

void cf_node_count(cf_node_t *self, cf_node_counter_t counter)
{
    atomic_fetch_add(&self->counters[counter], 1);
}

void cf_node_publish(cf_node_t *self, json_t **snapshot_p)
{
    pthread_mutex_lock(&self->mutex);
    json_decref(self->snapshot);
    self->snapshot = *snapshot_p;
    pthread_mutex_unlock(&self->mutex);
    *snapshot_p = NULL;
}

void cf_node_load(cf_node_t *self, int *free_slots_p, int *in_flight_p)
{
    *free_slots_p = atomic_load(&self->free_slots);
    *in_flight_p = atomic_load(&self->in_flight);
}

void cf_node_set_coordinator_epoch(cf_node_t *self, int64_t epoch)
{
    atomic_store(&self->coordinator_epoch, epoch);
}

void cf_node_set_executor(cf_node_t *self, bool running)
{
    atomic_store(&self->executor, running);
}

bool cf_node_has_executor(cf_node_t *self)
{
    return atomic_load(&self->executor);
}
