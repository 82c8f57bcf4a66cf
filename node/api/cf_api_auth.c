/* cf_api_auth: who a request comes from. API keys are verified against
 * Postgres and trusted for auth_cache_ms; key ids Postgres does not know
 * are answered 401 without a query for auth_negative_ms; an address that
 * fails too often in a minute gets 429 before any lookup. Nodes of the
 * cluster authenticate to each other with a MAC derived from the cluster
 * secret (cf_peer_auth.h): on the routes peers fetch from each other only. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cf_api_internal.h"
#include "cf_db.h"
#include "cf_peer_auth.h"

#define S_AUTH_WINDOW_MS 60000

/* ------------------------------------------------------------ key cache */

static int s_auth_lookup(cf_api_t *api, const char *id, cf_api_auth_entry_t *out)
{
    unsigned slot = 0;
    for (const char *p = id; *p; p++)
        slot = slot * 31 + (unsigned char)*p;
    slot %= CF_API_AUTH_CACHE_SLOTS;
    int found = 0;
    pthread_rwlock_rdlock(&api->auth_lock);
    cf_api_auth_entry_t *entry = &api->auth_cache[slot];
    if (entry->expires_ms > cf_api_now_ms() && !strcmp(entry->id, id)) {
        *out = *entry;
        found = 1;
    }
    pthread_rwlock_unlock(&api->auth_lock);
    return found;
}

static void s_auth_store(cf_api_t *api, const cf_api_auth_entry_t *entry)
{
    if (api->opts.auth_cache_ms <= 0)
        return;
    unsigned slot = 0;
    for (const char *p = entry->id; *p; p++)
        slot = slot * 31 + (unsigned char)*p;
    slot %= CF_API_AUTH_CACHE_SLOTS;
    pthread_rwlock_wrlock(&api->auth_lock);
    api->auth_cache[slot] = *entry;
    api->auth_cache[slot].expires_ms = cf_api_now_ms() + api->opts.auth_cache_ms;
    pthread_rwlock_unlock(&api->auth_lock);
}

/* ------------------------------------------------------------ negative cache */

/* True when Postgres said recently that key ID does not exist. */
static bool s_auth_known_missing(cf_api_t *api, const char *id)
{
    cf_api_auth_miss_t *slot = &api->auth_miss[cf_api_hash(id) % CF_API_AUTH_MISS_SLOTS];
    pthread_rwlock_rdlock(&api->auth_lock);
    bool missing = slot->expires_ms > cf_api_now_ms() && !strcmp(slot->id, id);
    pthread_rwlock_unlock(&api->auth_lock);
    return missing;
}

static void s_auth_store_missing(cf_api_t *api, const char *id)
{
    if (api->opts.auth_negative_ms <= 0)
        return;
    cf_api_auth_miss_t *slot = &api->auth_miss[cf_api_hash(id) % CF_API_AUTH_MISS_SLOTS];
    pthread_rwlock_wrlock(&api->auth_lock);
    snprintf(slot->id, sizeof slot->id, "%s", id);
    slot->expires_ms = cf_api_now_ms() + api->opts.auth_negative_ms;
    pthread_rwlock_unlock(&api->auth_lock);
}

/* ------------------------------------------------------------ failed logins */

/* Seconds ADDR must wait before its next try after too many failed
 * authentications this minute; 0 when it may try. Counted per node: an
 * attacker spreading over N nodes gets N times the limit, never a query per
 * guess beyond it. */
static int s_auth_wait_s(cf_api_t *api, const char *addr, bool failed_now)
{
    if (api->opts.auth_fail_limit <= 0)
        return 0;
    cf_api_auth_fail_t *slot = &api->auth_fail[cf_api_hash(addr) % CF_API_AUTH_FAIL_SLOTS];
    int64_t now = cf_api_now_ms();
    int wait_s = 0;
    pthread_mutex_lock(&api->fail_lock);
    bool mine = !strcmp(slot->addr, addr);
    bool expired = now - slot->window_ms >= S_AUTH_WINDOW_MS;
    if (failed_now) {
        /* A colliding address takes the slot over: at worst one attacker's
         * count restarts, which the limit per minute still bounds. */
        if (!mine || expired) {
            snprintf(slot->addr, sizeof slot->addr, "%s", addr);
            slot->window_ms = now;
            slot->failures = 0;
        }
        slot->failures++;
    } else if (mine && !expired && slot->failures >= api->opts.auth_fail_limit) {
        wait_s = (int)((slot->window_ms + S_AUTH_WINDOW_MS - now + 999) / 1000);
    }
    pthread_mutex_unlock(&api->fail_lock);
    return wait_s > 0 ? wait_s : 0;
}

/* ------------------------------------------------------------ API keys */

/* Checks the request's API key. Returns 0 when it may go on, or the status
 * of the error response sent. */
static int s_authenticate(cf_api_req_t *req)
{
    cf_api_t *api = req->api;
    const char *header = mg_get_header(req->conn, "Authorization");
    if (!header)
        return cf_api_send_error(req, 401, "unauthorized", NULL,
                                 "missing API key: send 'Authorization: Bearer KEY'");
    const char *key = cf_apikey_from_bearer(header);
    char id[CF_APIKEY_ID_CHARS + 1], why[128];
    if (!key || cf_apikey_parse(key, id, why, sizeof why) < 0)
        return cf_api_send_error(req, 401, "unauthorized", NULL, "invalid API key");
    cf_api_auth_entry_t entry;
    if (!s_auth_lookup(api, id, &entry)) {
        if (s_auth_known_missing(api, id))
            return cf_api_send_error(req, 401, "unauthorized", NULL, "invalid API key");
        cf_db_api_key_t row = {0};
        char err[256];
        cf_metric_inc(api->m_auth_db, NULL, 1);
        int rc = cf_db_api_key_find(api->opts.db, id, &row, err, sizeof err);
        if (rc == CF_DB_NOT_FOUND) {
            s_auth_store_missing(api, id);
            return cf_api_send_error(req, 401, "unauthorized", NULL, "invalid API key");
        }
        if (rc != CF_DB_OK) {
            cf_db_api_key_clear(&row);
            return cf_api_send_db_error(req, rc, "API key", err);
        }
        memset(&entry, 0, sizeof entry);
        snprintf(entry.id, sizeof entry.id, "%s", id);
        if (row.hash && row.hash_len == CF_APIKEY_HASH_BYTES)
            memcpy(entry.hash, row.hash, CF_APIKEY_HASH_BYTES);
        entry.revoked = row.revoked_at != NULL;
        entry.admin = row.admin;
        cf_db_api_key_clear(&row);
        s_auth_store(api, &entry);
    }
    if (!cf_apikey_verify(api->opts.hashkey, key, entry.hash, sizeof entry.hash))
        return cf_api_send_error(req, 401, "unauthorized", NULL, "invalid API key");
    if (entry.revoked)
        return cf_api_send_error(req, 403, "key_revoked", NULL, "this API key has been revoked");
    snprintf(req->key_id, sizeof req->key_id, "%s", id);
    req->admin = entry.admin;
    return 0;
}

/* ------------------------------------------------------------ peers */

int cf_api_peer_credential(cf_api_t *api, const char *method, const char *path, char *out,
                           size_t outlen)
{
    return cf_peer_auth_line(&api->peer_auth, method, path, (long long)time(NULL), out, outlen);
}

/* True when VALUE is a credential of a node of this cluster for this
 * request (cf_peer_auth_verify). */
static bool s_peer_verify(cf_api_req_t *req, const char *value)
{
    return cf_peer_auth_verify(&req->api->peer_auth, value, req->ri->request_method,
                               req->ri->local_uri ? req->ri->local_uri : "", (long long)time(NULL));
}

/* For an address that failed too often this minute: sends 429 (with how
 * long to wait) and returns it; 0 when it may try. */
static int s_auth_blocked(cf_api_req_t *req)
{
    int wait_s = s_auth_wait_s(req->api, req->ri->remote_addr, false);
    if (wait_s <= 0)
        return 0;
    cf_api_count_rejected(req->api, "auth_blocked");
    return cf_api_send_429(req, "too_many_failures",
                           "too many failed authentications from this address; retry later",
                           wait_s);
}

int cf_api_peer_gate(cf_api_req_t *req)
{
    int status = s_auth_blocked(req);
    if (status)
        return status;
    const char *peer = mg_get_header(req->conn, CF_PEER_AUTH_HEADER);
    if (peer && s_peer_verify(req, peer)) {
        req->peer = true;
        return 0;
    }
    /* An API key, an admin's included, never opens a peer route: these
     * serve any blob of the node, whoever uploaded it. */
    status = peer ? cf_api_send_error(req, 401, "unauthorized", NULL, "invalid peer credential")
             : mg_get_header(req->conn, "Authorization")
                 ? cf_api_send_error(req, 403, "peer_only", NULL,
                                     "this route serves the nodes of the cluster only; API keys "
                                     "are not accepted")
                 : cf_api_send_error(req, 401, "unauthorized", NULL,
                                     "missing peer credential (" CF_PEER_AUTH_HEADER ")");
    cf_api_count_rejected(req->api, "peer_auth_failed");
    s_auth_wait_s(req->api, req->ri->remote_addr, true);
    return status;
}

/* Authentication of a route that needs it: a peer's credential (only where
 * peers fetch from each other) or an API key, refused outright for an
 * address that failed too often this minute. Returns 0 or the status sent. */
int cf_api_auth_gate(cf_api_req_t *req)
{
    cf_api_t *api = req->api;
    const char *addr = req->ri->remote_addr;
    int status = s_auth_blocked(req);
    if (status)
        return status;
    const char *peer = mg_get_header(req->conn, CF_PEER_AUTH_HEADER);
    if (peer && req->route->handler == cf_api_h_composition_output) {
        req->peer = s_peer_verify(req, peer);
        /* The node that proxied the request checked the caller's key and
         * its tenancy; here the peer stands for it. */
        req->admin = req->peer;
        status = req->peer
                     ? 0
                     : cf_api_send_error(req, 401, "unauthorized", NULL, "invalid peer credential");
    } else {
        status = s_authenticate(req);
    }
    if (status == 401 || status == 403) {
        cf_api_count_rejected(api, peer ? "peer_auth_failed" : "auth_failed");
        s_auth_wait_s(api, addr, true);
    }
    return status;
}

/* ------------------------------------------------------------ lifecycle */

void cf_api_auth_init(cf_api_t *api)
{
    pthread_rwlock_init(&api->auth_lock, NULL);
    pthread_mutex_init(&api->fail_lock, NULL);
    /* Without a cluster secret none is sent or accepted (peer_auth unset). */
    cf_peer_auth_init(&api->peer_auth, api->opts.hashkey);
}

void cf_api_auth_fini(cf_api_t *api)
{
    pthread_rwlock_destroy(&api->auth_lock);
    pthread_mutex_destroy(&api->fail_lock);
}
