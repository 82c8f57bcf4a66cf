/* node/cluster/cf_peer.c and cf_zap.c: the peer table learns, refreshes,
 * replaces and forgets peers as the node actor relies on, and the ZAP
 * handler admits exactly the keys learned from an authenticated source. */
#include <czmq.h>
#include <string.h>

#include "cf_peer.h"
#include "cf_testutil.h"
#include "cf_zap.h"

#define S_OUR_ID   "11111111-1111-4111-8111-111111111111"
#define S_THEIR_ID "22222222-2222-4222-8222-222222222222"

static zcert_t *s_ours;
static cf_peer_link_t s_link;

static int s_setup(void **state)
{
    s_ours = zcert_new();
    s_link = (cf_peer_link_t){.node_id = S_OUR_ID,
                              .public_z85 = zcert_public_txt(s_ours),
                              .secret_z85 = zcert_secret_txt(s_ours),
                              .heartbeat_ms = 100,
                              .peer_grace_ms = 500};
    return s_ours ? 0 : -1;
}

static int s_teardown(void **state)
{
    zcert_destroy(&s_ours);
    return 0;
}

static void s_table_learns_and_forgets(void **state)
{
    zhashx_t *peers = cf_peer_table_new();
    zcert_t *theirs = zcert_new(), *renewed = zcert_new(), *configured = zcert_new();
    const char *key = zcert_public_txt(theirs);
    bool changed = false;

    /* Ourselves, by key or by id, is never a peer. */
    assert_null(cf_peer_table_learn(peers, &s_link, NULL, s_link.public_z85, "tcp://127.0.0.1:1",
                                    NULL, CF_PEER_FROM_BEACON, &changed));
    assert_null(cf_peer_table_learn(peers, &s_link, S_OUR_ID, key, "tcp://127.0.0.1:1", NULL,
                                    CF_PEER_FROM_BEACON, &changed));
    assert_false(changed);

    cf_peer_t *peer = cf_peer_table_learn(peers, &s_link, S_THEIR_ID, key, "tcp://127.0.0.1:1",
                                          "http://127.0.0.1:2", CF_PEER_FROM_BEACON, &changed);
    assert_non_null(peer);
    assert_true(changed);
    assert_ptr_equal(zhashx_lookup(peers, key), peer);
    assert_ptr_equal(cf_peer_table_find_id(peers, S_THEIR_ID), peer);
    assert_string_equal(cf_peer_id(peer), S_THEIR_ID);
    assert_string_equal(cf_peer_http_endpoint(peer), "http://127.0.0.1:2");
    assert_int_equal(cf_peer_state(peer), CF_PEER_CONNECTING);
    assert_non_null(cf_peer_monitor(peer)); /* connected */

    /* Learned again, from the registry: refreshed, not changed. */
    changed = false;
    assert_ptr_equal(cf_peer_table_learn(peers, &s_link, S_THEIR_ID, key, "tcp://127.0.0.1:1", NULL,
                                         CF_PEER_FROM_REGISTRY, &changed),
                     peer);
    assert_false(changed);
    assert_int_equal(cf_peer_sources(peer), CF_PEER_FROM_BEACON | CF_PEER_FROM_REGISTRY);

    /* Heard from: alive once; silent past the grace: gone. */
    int64_t now = zclock_mono();
    assert_true(cf_peer_heard(peer, now));
    assert_false(cf_peer_heard(peer, now));
    assert_false(cf_peer_expire(peer, now + 500, 500));
    assert_true(cf_peer_expire(peer, now + 501, 500));
    assert_int_equal(cf_peer_state(peer), CF_PEER_GONE);

    json_t *json = cf_peer_to_json(peer, now + 10);
    assert_string_equal(json_string_value(json_object_get(json, "state")), "gone");
    assert_int_equal(json_array_size(json_object_get(json, "discovered_by")), 2);
    assert_int_equal(json_integer_value(json_object_get(json, "last_seen_ms_ago")), 10);
    json_decref(json);

    /* The same node with a new key replaces the old entry. */
    const char *new_key = zcert_public_txt(renewed);
    cf_peer_t *replaced =
        cf_peer_table_learn(peers, &s_link, S_THEIR_ID, new_key, "tcp://127.0.0.1:3", NULL,
                            CF_PEER_FROM_BEACON, &changed);
    assert_non_null(replaced);
    assert_null(zhashx_lookup(peers, key));
    assert_int_equal(zhashx_size(peers), 1);

    /* A configured peer has no id until it says HELLO, and is never
     * forgotten; a discovered one is, once stale. */
    const char *static_key = zcert_public_txt(configured);
    cf_peer_t *fixed = cf_peer_table_learn(peers, &s_link, NULL, static_key, "tcp://127.0.0.1:4",
                                           NULL, CF_PEER_FROM_STATIC, &changed);
    assert_non_null(fixed);
    assert_string_equal(cf_peer_id(fixed), "");
    assert_string_equal(cf_peer_name(fixed), static_key);
    assert_int_equal(cf_peer_table_forget(peers, zclock_mono(), 20000), 0);
    assert_int_equal(cf_peer_table_forget(peers, zclock_mono() + 20001, 20000), 1);
    assert_null(zhashx_lookup(peers, new_key));
    assert_ptr_equal(zhashx_lookup(peers, static_key), fixed);

    zhashx_destroy(&peers);
    zcert_destroy(&theirs);
    zcert_destroy(&renewed);
    zcert_destroy(&configured);
}

/* Polls the handler and ROUTER for up to TIMEOUT_MS; returns the payload
 * the ROUTER got (caller frees) or NULL, with the handler's last verdict. */
static char *s_exchange(cf_zap_t *zap, zsock_t *router, int timeout_ms, int *verdict_p)
{
    zpoller_t *poller = zpoller_new(cf_zap_sock(zap), router, NULL);
    char *payload = NULL;
    int64_t until = zclock_mono() + timeout_ms;
    while (!payload && zclock_mono() < until) {
        void *which = zpoller_wait(poller, 50);
        if (which == cf_zap_sock(zap)) {
            *verdict_p = cf_zap_handle(zap);
        } else if (which == router) {
            zmsg_t *msg = zmsg_recv(router);
            zframe_t *routing = zmsg_pop(msg);
            zframe_destroy(&routing);
            payload = zmsg_popstr(msg);
            zmsg_destroy(&msg);
        }
    }
    zpoller_destroy(&poller);
    return payload;
}

static zsock_t *s_client(zcert_t *cert, zcert_t *server, int port)
{
    zsock_t *client = zsock_new(ZMQ_DEALER);
    zsock_set_curve_serverkey(client, zcert_public_txt(server));
    zcert_apply(cert, client);
    zsock_set_linger(client, 0);
    zsock_connect(client, "tcp://127.0.0.1:%d", port);
    zstr_send(client, "hello");
    return client;
}

static void s_zap_admits_authenticated_keys(void **state)
{
    zhashx_t *peers = cf_peer_table_new();
    zcert_t *beaconed = zcert_new(), *registered = zcert_new(), *configured = zcert_new();
    zcert_t *stranger = zcert_new();
    bool changed = false;
    assert_non_null(cf_peer_table_learn(peers, &s_link, NULL, zcert_public_txt(beaconed),
                                        "tcp://127.0.0.1:1", NULL, CF_PEER_FROM_BEACON, &changed));
    assert_non_null(cf_peer_table_learn(peers, &s_link, NULL, zcert_public_txt(registered),
                                        "tcp://127.0.0.1:1", NULL, CF_PEER_FROM_REGISTRY,
                                        &changed));
    assert_non_null(cf_peer_table_learn(peers, &s_link, NULL, zcert_public_txt(configured),
                                        "tcp://127.0.0.1:1", NULL, CF_PEER_FROM_STATIC, &changed));

    cf_zap_t *zap = cf_zap_new(peers);
    assert_non_null(zap);
    assert_true(cf_zap_allowed(zap, zcert_public_txt(beaconed)));
    assert_true(cf_zap_allowed(zap, zcert_public_txt(registered)));
    assert_false(cf_zap_allowed(zap, zcert_public_txt(configured))); /* ours to dial only */
    assert_false(cf_zap_allowed(zap, zcert_public_txt(stranger)));

    /* Through a real CURVE handshake. */
    zcert_t *server = zcert_new();
    zsock_t *router = zsock_new(ZMQ_ROUTER);
    zsock_set_zap_domain(router, CF_ZAP_DOMAIN);
    zsock_set_curve_server(router, 1);
    zcert_apply(server, router);
    int port = zsock_bind(router, "tcp://127.0.0.1:*");
    assert_true(port > 0);

    int verdict = -1;
    zsock_t *client = s_client(beaconed, server, port);
    char *payload = s_exchange(zap, router, 5000, &verdict);
    assert_non_null(payload);
    assert_string_equal(payload, "hello");
    assert_int_equal(verdict, 1);
    free(payload);
    zsock_destroy(&client);

    verdict = -1;
    client = s_client(stranger, server, port);
    payload = s_exchange(zap, router, 1000, &verdict);
    assert_null(payload);
    assert_int_equal(verdict, 0);
    zsock_destroy(&client);

    /* A forgotten peer's key is refused again. */
    zhashx_delete(peers, zcert_public_txt(beaconed));
    assert_false(cf_zap_allowed(zap, zcert_public_txt(beaconed)));

    zsock_destroy(&router);
    cf_zap_destroy(&zap);
    zhashx_destroy(&peers);
    zcert_destroy(&server);
    zcert_destroy(&beaconed);
    zcert_destroy(&registered);
    zcert_destroy(&configured);
    zcert_destroy(&stranger);
}

int main(void)
{
    zsys_set_logstream(stderr);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(s_table_learns_and_forgets),
        cmocka_unit_test(s_zap_admits_authenticated_keys),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
