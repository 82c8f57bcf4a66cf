/* Integration test of a node in-process (node/cluster/cf_node.c against the Postgres
 * tests/run starts) and of its capabilities (lib/media/cf_caps.c): the probe, the
 * calibration and its cache; the snapshot, counters, load and coordinator
 * state other threads read; the bounded, clean shutdown. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>
#include <zmq.h>

#include "cf_caps.h"
#include "cf_db.h"
#include "cf_db_cluster.h"
#include "cf_discovery.h"
#include "cf_proto.h"
#include "cf_identity.h"
#include "cf_migrate.h"
#include "cf_node.h"
#include "cf_testutil.h"

static char *s_dir;

static int s_setup(void **state)
{
    s_dir = cf_test_mkdtemp("node");
    return s_dir ? 0 : -1;
}

static int s_teardown(void **state)
{
    cf_test_rmtree(s_dir);
    free(s_dir);
    return 0;
}

static int64_t s_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------ caps */

static void s_caps_probe_and_calibrate(void **state)
{
    char data_dir[1024], cache[1100], err[512];
    snprintf(data_dir, sizeof data_dir, "%s/caps", s_dir);
    mkdir(data_dir, 0700);
    char *tags[] = {"gpu", "site=lab"};
    cf_caps_t *caps = cf_caps_probe(data_dir, tags, 2, 3);
    assert_non_null(caps);
    assert_int_equal(cf_caps_cores(caps), (int)sysconf(_SC_NPROCESSORS_ONLN));
    assert_true(cf_caps_memory_mb(caps) > 0);
    assert_int_equal(cf_caps_slots(caps), 3);
    assert_int_equal(cf_caps_tag_count(caps), 2);
    assert_string_equal(cf_caps_tag(caps, 1), "site=lab");
    /* Debian's libavcodec has libx264; whatever else opened is a candidate. */
    assert_true(cf_caps_has_encoder(caps, "libx264"));
    for (int i = 0; i < cf_caps_encoder_count(caps); i++) {
        bool candidate = false;
        for (const char *const *c = cf_caps_candidates; *c; c++)
            candidate |= !strcmp(*c, cf_caps_encoder_name(caps, i));
        assert_true(candidate);
        assert_true(cf_caps_encoder_fps(caps, i) == 0); /* not measured yet */
    }
    assert_false(cf_caps_calibrated(caps));

    /* A stop request ends calibration early and changes nothing. */
    atomic_int stop = 1;
    assert_int_equal(cf_caps_calibrate(caps, data_dir, &stop, err, sizeof err), -1);
    assert_false(cf_caps_calibrated(caps));
    snprintf(cache, sizeof cache, "%s/calibration.json", data_dir);
    assert_int_not_equal(access(cache, F_OK), 0);

    int64_t t0 = s_ms();
    if (cf_caps_calibrate(caps, data_dir, NULL, err, sizeof err) < 0)
        fail_msg("calibrate: %s", err);
    int64_t took = s_ms() - t0;
    print_message("calibration took %lld ms for %d encoder(s)\n", (long long)took,
                  cf_caps_encoder_count(caps));
    assert_true(cf_caps_calibrated(caps));
    for (int i = 0; i < cf_caps_encoder_count(caps); i++)
        assert_true(cf_caps_encoder_fps(caps, i) > 0);
    assert_int_equal(access(cache, F_OK), 0);

    /* The next start reads the cache instead of measuring again. */
    cf_caps_t *again = cf_caps_probe(data_dir, NULL, 0, 1);
    assert_true(cf_caps_calibrated(again));
    assert_int_equal(cf_caps_encoder_count(again), cf_caps_encoder_count(caps));
    for (int i = 0; i < cf_caps_encoder_count(caps); i++)
        assert_true(cf_caps_encoder_fps(again, i) == cf_caps_encoder_fps(caps, i));
    cf_caps_destroy(&again);

    /* A cache measured elsewhere (another core count) is not trusted. */
    json_t *root = json_load_file(cache, 0, NULL);
    assert_non_null(root);
    json_object_set_new(root, "cores", json_integer(cf_caps_cores(caps) + 7));
    assert_int_equal(json_dump_file(root, cache, 0), 0);
    json_decref(root);
    again = cf_caps_probe(data_dir, NULL, 0, 1);
    assert_false(cf_caps_calibrated(again));
    cf_caps_destroy(&again);
    cf_test_write_file(cache, "not json");
    again = cf_caps_probe(data_dir, NULL, 0, 1);
    assert_false(cf_caps_calibrated(again));
    cf_caps_destroy(&again);

    /* The JSON and the summary line carry everything. */
    json_t *json = cf_caps_to_json(caps);
    assert_int_equal(json_integer_value(json_object_get(json, "slots")), 3);
    assert_true(json_is_true(json_object_get(json, "calibrated")));
    json_t *first = json_array_get(json_object_get(json, "encoders"), 0);
    assert_string_equal(json_string_value(json_object_get(first, "name")),
                        cf_caps_encoder_name(caps, 0));
    assert_true(json_real_value(json_object_get(first, "fps")) > 0);
    assert_string_equal(json_string_value(json_array_get(json_object_get(json, "tags"), 0)), "gpu");
    json_decref(json);
    char *summary = cf_caps_summary(caps);
    assert_non_null(strstr(summary, "slots=3 encoders=libx264("));
    assert_non_null(strstr(summary, " fps)"));
    assert_non_null(strstr(summary, "tags=gpu,site=lab"));
    free(summary);

    cf_caps_t *copy = cf_caps_dup(caps);
    cf_caps_destroy(&caps);
    assert_string_equal(cf_caps_tag(copy, 0), "gpu");
    cf_caps_destroy(&copy);
    assert_null(copy);
}

/* ------------------------------------------------------------------ node */

static char s_url[512];

static void s_fresh_database(void)
{
    const char *base = cf_test_require_env("CF_TEST_DATABASE_URL");
    char err[512], name[64], sql[128];
    PGconn *admin = cf_db_connect(base, 10, err, sizeof err);
    assert_non_null(admin);
    static int count;
    snprintf(name, sizeof name, "cf_node_%d_%ld_%d", (int)getpid(), (long)time(NULL) % 100000,
             ++count);
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
    PGresult *res = PQexec(admin, sql);
    assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    PQfinish(admin);
    snprintf(s_url, sizeof s_url, "%.*s/%s", (int)(strrchr(base, '/') - base), base, name);
    PGconn *conn = cf_db_connect(s_url, 10, err, sizeof err);
    assert_non_null(conn);
    cf_migrate_report_t report;
    if (cf_migrate_run(conn, NULL, &report, err, sizeof err) < 0)
        fail_msg("migrate: %s", err);
    PQfinish(conn);
}

static char *s_query(const char *sql)
{
    char err[512];
    PGconn *conn = cf_db_connect(s_url, 10, err, sizeof err);
    assert_non_null(conn);
    PGresult *res = PQexec(conn, sql);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    char *value = strdup(PQntuples(res) ? PQgetvalue(res, 0, 0) : "");
    PQclear(res);
    PQfinish(conn);
    return value;
}

/* A TCP port on 127.0.0.1 that nothing uses, below the ephemeral range so
 * no outgoing connection takes it meanwhile. */
static int s_free_port(void)
{
    for (int tries = 0; tries < 200; tries++) {
        int port = 20000 + (int)(random() % 12000);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in addr = {.sin_family = AF_INET,
                                   .sin_port = htons((uint16_t)port),
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int rc = bind(fd, (struct sockaddr *)&addr, sizeof addr);
        close(fd);
        if (rc == 0)
            return port;
    }
    fail_msg("no free port");
    return -1;
}

static void s_options(cf_node_options_t *opts, char *data_dir, char *secret, char *control,
                      char *http)
{
    cf_node_options_default(opts);
    opts->database_url = s_url;
    opts->data_dir = data_dir;
    opts->secret_file = secret;
    opts->control_addr = control;
    opts->http_addr = http;
    opts->lease_ttl_ms = 2000;
    opts->heartbeat_ms = 100;
    opts->peer_grace_ms = 500;
    opts->calibrate = false;
}

static void s_node_alone(void **state)
{
    s_fresh_database();
    char data_dir[1024], secret_path[1100], control[64], http[64], status[1100];
    char hex[CF_SECRET_HEX_LEN], text[80], err[512];
    snprintf(data_dir, sizeof data_dir, "%s/node", s_dir);
    snprintf(secret_path, sizeof secret_path, "%s/secret", s_dir);
    snprintf(status, sizeof status, "%s/status.json", s_dir);
    cf_secret_generate_hex(hex);
    snprintf(text, sizeof text, "%s\n", hex);
    cf_test_write_file(secret_path, text);
    snprintf(control, sizeof control, "127.0.0.1:%d", s_free_port());
    snprintf(http, sizeof http, "127.0.0.1:%d", s_free_port());

    cf_node_options_t opts;
    s_options(&opts, data_dir, secret_path, control, http);
    opts.status_file = status;
    char *tags[] = {"edge"};
    opts.tags = tags;
    opts.tag_count = 1;
    opts.slots = 4;

    /* Bad options are refused with a reason. */
    cf_node_options_t bad = opts;
    bad.heartbeat_ms = 400; /* grace 500 < 2 x heartbeat */
    assert_null(cf_node_new(&bad, err, sizeof err));
    assert_non_null(strstr(err, "--peer-grace"));
    bad = opts;
    bad.static_peers = "not-a-peer";
    assert_null(cf_node_new(&bad, err, sizeof err));
    assert_non_null(strstr(err, "--peer"));
    bad = opts;
    bad.control_addr = "0.0.0.0:7070"; /* a wildcard needs an interface to advertise */
    assert_null(cf_node_new(&bad, err, sizeof err));
    assert_non_null(strstr(err, "wildcard"));
    bad = opts;
    bad.secret_file = data_dir; /* not a file */
    assert_null(cf_node_new(&bad, err, sizeof err));
    assert_non_null(strstr(err, "--cluster-secret-file"));

    cf_node_t *node = cf_node_new(&opts, err, sizeof err);
    if (!node)
        fail_msg("cf_node_new: %s", err);
    const char *id = cf_node_id(node);
    assert_int_equal(strlen(id), 36);

    /* Alone, it becomes coordinator at epoch 1. */
    int64_t epoch = 0;
    for (int i = 0; i < 100 && !cf_node_is_coordinator(node, &epoch); i++)
        usleep(50 * 1000);
    assert_true(cf_node_is_coordinator(node, &epoch));
    assert_int_equal(epoch, 1);
    cf_node_set_load(node, 3, 1);
    /* The actor applies the load when it gets to it: wait for it to show. */
    json_t *snap = NULL;
    for (int i = 0; i < 250; i++) {
        json_decref(snap);
        snap = cf_node_snapshot(node);
        if (snap && json_integer_value(json_object_get(snap, "free_slots")) == 3 &&
            json_integer_value(json_object_get(snap, "in_flight")) == 1)
            break;
        usleep(20 * 1000);
    }
    assert_non_null(snap);
    assert_string_equal(json_string_value(json_object_get(snap, "id")), id);
    assert_string_equal(json_string_value(json_object_get(snap, "role")), "coordinator");
    assert_int_equal(json_integer_value(json_object_get(snap, "epoch")), 1);
    assert_string_equal(json_string_value(json_object_get(snap, "coordinator")), id);
    char expect[80];
    snprintf(expect, sizeof expect, "tcp://%s", control);
    assert_string_equal(json_string_value(json_object_get(snap, "control_endpoint")), expect);
    snprintf(expect, sizeof expect, "http://%s", http);
    assert_string_equal(json_string_value(json_object_get(snap, "http_endpoint")), expect);
    assert_int_equal(json_array_size(json_object_get(snap, "peers")), 0);
    assert_int_equal(json_integer_value(json_object_get(snap, "free_slots")), 3);
    assert_int_equal(json_integer_value(json_object_get(snap, "in_flight")), 1);
    json_t *caps = json_object_get(snap, "capabilities");
    assert_int_equal(json_integer_value(json_object_get(caps, "slots")), 4);
    assert_string_equal(json_string_value(json_array_get(json_object_get(caps, "tags"), 0)),
                        "edge");
    json_t *counters = json_object_get(snap, "counters");
    for (int i = 0; i < CF_NODE_COUNTER_COUNT; i++) {
        assert_non_null(cf_node_counter_name(i));
        assert_non_null(cf_node_counter_help(i));
        assert_true(json_is_integer(json_object_get(counters, cf_node_counter_name(i))));
    }
    assert_int_equal(cf_node_counter(node, CF_NODE_ELECTIONS_WON), 1);
    assert_true(cf_node_counter(node, CF_NODE_FENCED_WRITES_APPLIED) >= 1);
    assert_int_equal(cf_node_counter(node, CF_NODE_BEACONS_SENT), 0); /* no --beacon-iface */
    json_decref(snap);

    /* The status file holds the same view. */
    json_t *file = json_load_file(status, 0, NULL);
    assert_non_null(file);
    assert_string_equal(json_string_value(json_object_get(file, "role")), "coordinator");
    json_decref(file);

    /* Its row, the lease and the published view are in Postgres. */
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT state || ' ' || free_slots FROM nodes WHERE id = '%s'", id);
    /* The row is rewritten at the next heartbeat: wait for the load there. */
    char *value = s_query(sql);
    for (int i = 0; i < 250 && strcmp(value, "up 3"); i++) {
        free(value);
        usleep(20 * 1000);
        value = s_query(sql);
    }
    assert_string_equal(value, "up 3");
    free(value);
    value = s_query("SELECT holder::text || ' ' || epoch FROM coordinator_lease");
    snprintf(expect, sizeof expect, "%s 1", id);
    assert_string_equal(value, expect);
    free(value);
    value = s_query("SELECT coordinator::text FROM cluster_view");
    assert_string_equal(value, id);
    free(value);

    /* A second node in the same process is refused (one ZAP handler per
     * process), and that failure leaves the first one running. */
    char data_dir2[1100], control2[64];
    snprintf(data_dir2, sizeof data_dir2, "%s/node2", s_dir);
    snprintf(control2, sizeof control2, "127.0.0.1:%d", s_free_port());
    cf_node_options_t opts2;
    s_options(&opts2, data_dir2, secret_path, control2, NULL);
    assert_null(cf_node_new(&opts2, err, sizeof err));
    assert_non_null(strstr(err, "ZAP"));
    assert_true(cf_node_is_coordinator(node, NULL));

    /* Leaving: bounded, the lease released, the row marked left. */
    char saved_id[37];
    snprintf(saved_id, sizeof saved_id, "%s", id);
    int64_t t0 = s_ms();
    cf_node_destroy(&node);
    int64_t took = s_ms() - t0;
    assert_null(node);
    assert_true(took < 2000);
    value = s_query("SELECT coalesce(holder::text, 'none') || ' ' || epoch FROM coordinator_lease");
    assert_string_equal(value, "none 1");
    free(value);
    snprintf(sql, sizeof sql, "SELECT state FROM nodes WHERE id = '%s'", saved_id);
    value = s_query(sql);
    assert_string_equal(value, "left");
    free(value);
    file = json_load_file(status, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(file, "role")), "worker");
    json_decref(file);

    /* Started again on the same data dir: same identity, next epoch. */
    node = cf_node_new(&opts, err, sizeof err);
    assert_non_null(node);
    assert_string_equal(cf_node_id(node), saved_id);
    for (int i = 0; i < 100 && !cf_node_is_coordinator(node, &epoch); i++)
        usleep(50 * 1000);
    assert_int_equal(epoch, 2);
    cf_node_destroy(&node);
}

/* Postgres away: the node starts anyway (no coordinator) and still leaves
 * within its bound. */
static void s_node_without_database(void **state)
{
    char data_dir[1024], secret_path[1100], control[64], hex[CF_SECRET_HEX_LEN], text[80];
    char err[512];
    snprintf(data_dir, sizeof data_dir, "%s/nodb", s_dir);
    snprintf(secret_path, sizeof secret_path, "%s/secret-nodb", s_dir);
    cf_secret_generate_hex(hex);
    snprintf(text, sizeof text, "%s\n", hex);
    cf_test_write_file(secret_path, text);
    snprintf(control, sizeof control, "127.0.0.1:%d", s_free_port());
    cf_node_options_t opts;
    s_options(&opts, data_dir, secret_path, control, NULL);
    snprintf(s_url, sizeof s_url, "postgresql://postgres@127.0.0.1:%d/none", s_free_port());
    cf_node_t *node = cf_node_new(&opts, err, sizeof err);
    if (!node)
        fail_msg("%s", err);
    usleep(800 * 1000);
    assert_false(cf_node_is_coordinator(node, NULL));
    json_t *snap = cf_node_snapshot(node);
    assert_true(json_is_false(json_object_get(snap, "database_reachable")));
    json_decref(snap);
    int64_t t0 = s_ms();
    cf_node_destroy(&node);
    assert_true(s_ms() - t0 < 2000);
}

/* ------------------------------------------------------------------ protocol */

/* A hand-made peer F speaks the protocol to a real node N: it gets in only
 * through a registry row signed with the cluster secret; N ignores messages
 * carrying an epoch older than it has seen, steps down when a newer epoch
 * exists, drops malformed messages and answers ASSIGN with REJECT. F's
 * sockets live in their own ZeroMQ context: N's ZAP handler serves N's. */
typedef struct {
    void *ctx, *router, *dealer;
    char id[37], pub[41], sec[41], endpoint[128];
} s_fake_t;

static void s_fake_send(s_fake_t *f, cf_msg_t *msg)
{
    uint8_t *data;
    size_t size;
    char err[256];
    if (cf_msg_encode(msg, &data, &size, err, sizeof err) < 0)
        fail_msg("encode: %s", err);
    assert_int_equal(zmq_send(f->dealer, data, size, 0), (int)size);
    free(data);
    cf_msg_clear(msg);
}

/* Receives the next message on F's ROUTER of TYPE (others are skipped);
 * false after TIMEOUT_MS. */
static bool s_fake_recv(s_fake_t *f, cf_msg_type_t type, cf_msg_t *msg, int timeout_ms)
{
    int64_t deadline = s_ms() + timeout_ms;
    while (s_ms() < deadline) {
        zmq_pollitem_t item = {f->router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, (long)(deadline - s_ms())) <= 0)
            continue;
        char routing[256];
        char *payload = malloc(CF_PROTO_MAX_SIZE);
        assert_non_null(payload);
        int more = 0;
        size_t more_size = sizeof more;
        assert_true(zmq_recv(f->router, routing, sizeof routing, 0) >= 0);
        int n = zmq_recv(f->router, payload, CF_PROTO_MAX_SIZE, 0);
        zmq_getsockopt(f->router, ZMQ_RCVMORE, &more, &more_size);
        assert_false(more);
        char err[256];
        int rc = cf_msg_decode((uint8_t *)payload, (size_t)n, msg, err, sizeof err);
        free(payload);
        if (rc < 0)
            fail_msg("the node sent a malformed message: %s", err);
        if (msg->type == type)
            return true;
        cf_msg_clear(msg);
    }
    return false;
}

static json_t *s_peer_view(cf_node_t *node, const char *id)
{
    json_t *snap = cf_node_snapshot(node);
    json_t *peers = json_object_get(snap, "peers"), *found = NULL;
    for (size_t i = 0; i < json_array_size(peers); i++) {
        json_t *peer = json_array_get(peers, i);
        if (!strcmp(json_string_value(json_object_get(peer, "id")) ?: "", id))
            found = json_incref(peer);
    }
    json_decref(snap);
    return found;
}

/* Waits until EXPR (using node) holds, up to 5 s. */
#define S_EVENTUALLY(expr)                                                                         \
    do {                                                                                           \
        int64_t until_ = s_ms() + 15000;                                                           \
        while (!(expr) && s_ms() < until_)                                                         \
            usleep(20 * 1000);                                                                     \
        if (!(expr))                                                                               \
            fail_msg("not true within 15 s: %s", #expr);                                           \
    } while (0)

static bool s_peer_state(cf_node_t *node, const char *id, const char *state)
{
    json_t *peer = s_peer_view(node, id);
    bool ok = peer && !strcmp(json_string_value(json_object_get(peer, "state")), state);
    json_decref(peer);
    return ok;
}

static bool s_snapshot_is(cf_node_t *node, const char *role, int64_t epoch, const char *coordinator)
{
    json_t *snap = cf_node_snapshot(node);
    const char *c = json_string_value(json_object_get(snap, "coordinator"));
    bool ok = !strcmp(json_string_value(json_object_get(snap, "role")), role) &&
              json_integer_value(json_object_get(snap, "epoch")) == epoch &&
              (!coordinator || (c && !strcmp(c, coordinator)));
    json_decref(snap);
    return ok;
}

static void *s_fake_dealer(s_fake_t *f, const char *node_key, const char *node_endpoint)
{
    int linger = 0;
    void *dealer = zmq_socket(f->ctx, ZMQ_DEALER);
    zmq_setsockopt(dealer, ZMQ_CURVE_SERVERKEY, node_key, 40);
    zmq_setsockopt(dealer, ZMQ_CURVE_PUBLICKEY, f->pub, 40);
    zmq_setsockopt(dealer, ZMQ_CURVE_SECRETKEY, f->sec, 40);
    zmq_setsockopt(dealer, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(dealer, node_endpoint), 0);
    return dealer;
}

static void s_protocol_with_fake_peer(void **state)
{
    s_fresh_database();
    char data_dir[1024], secret_path[1100], control[64], hex[CF_SECRET_HEX_LEN], text[80];
    char err[512];
    snprintf(data_dir, sizeof data_dir, "%s/proto-node", s_dir);
    snprintf(secret_path, sizeof secret_path, "%s/secret-proto", s_dir);
    cf_secret_generate_hex(hex);
    snprintf(text, sizeof text, "%s\n", hex);
    cf_test_write_file(secret_path, text);
    snprintf(control, sizeof control, "127.0.0.1:%d", s_free_port());

    /* F: identity, a CURVE ROUTER for N to connect to. */
    s_fake_t f = {.ctx = zmq_ctx_new()};
    uint8_t pk[32], sk[32];
    crypto_box_keypair(pk, sk);
    cf_key_to_z85(pk, f.pub);
    cf_key_to_z85(sk, f.sec);
    cf_identity_new_uuid(f.id);
    int one = 1, linger = 0;
    f.router = zmq_socket(f.ctx, ZMQ_ROUTER);
    zmq_setsockopt(f.router, ZMQ_CURVE_SERVER, &one, sizeof one);
    zmq_setsockopt(f.router, ZMQ_CURVE_SECRETKEY, f.sec, 40);
    zmq_setsockopt(f.router, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_bind(f.router, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof f.endpoint;
    zmq_getsockopt(f.router, ZMQ_LAST_ENDPOINT, f.endpoint, &len);

    /* N knows F only as a --peer to dial. */
    char static_peer[200];
    snprintf(static_peer, sizeof static_peer, "%s@%s", f.pub, f.endpoint + strlen("tcp://"));
    cf_node_options_t opts;
    s_options(&opts, data_dir, secret_path, control, NULL);
    opts.peer_grace_ms = 3000; /* F heartbeats by hand */
    opts.static_peers = static_peer;
    cf_node_t *node = cf_node_new(&opts, err, sizeof err);
    if (!node)
        fail_msg("%s", err);
    S_EVENTUALLY(cf_node_is_coordinator(node, NULL));
    json_t *snap = cf_node_snapshot(node);
    char node_key[41], node_id[37], node_endpoint[128];
    snprintf(node_key, sizeof node_key, "%s",
             json_string_value(json_object_get(snap, "public_key")));
    snprintf(node_id, sizeof node_id, "%s", cf_node_id(node));
    snprintf(node_endpoint, sizeof node_endpoint, "%s",
             json_string_value(json_object_get(snap, "control_endpoint")));
    json_decref(snap);

    /* N dials its --peer and introduces itself. */
    cf_msg_t msg;
    assert_true(s_fake_recv(&f, CF_MSG_HELLO, &msg, 5000));
    assert_string_equal(msg.hello.node_id, node_id);
    assert_true(msg.hello.want_hello);
    cf_msg_clear(&msg);

    /* But a --peer key is not admitted: F's handshake is refused, nothing
     * it sends is delivered. So is a stranger's. */
    f.dealer = s_fake_dealer(&f, node_key, node_endpoint);
    zmq_send(f.dealer, "x", 1, ZMQ_DONTWAIT);
    S_EVENTUALLY(cf_node_counter(node, CF_NODE_ZAP_DENIED) >= 1);
    s_fake_t stranger = f;
    crypto_box_keypair(pk, sk);
    cf_key_to_z85(pk, stranger.pub);
    cf_key_to_z85(sk, stranger.sec);
    void *stranger_dealer = s_fake_dealer(&stranger, node_key, node_endpoint);
    zmq_send(stranger_dealer, "x", 1, ZMQ_DONTWAIT);
    S_EVENTUALLY(cf_node_counter(node, CF_NODE_ZAP_DENIED) >= 2);
    usleep(200 * 1000);
    assert_int_equal(cf_node_counter(node, CF_NODE_ZAP_ALLOWED), 0);
    assert_int_equal(cf_node_counter(node, CF_NODE_MESSAGES_RECEIVED), 0);
    assert_int_equal(cf_node_counter(node, CF_NODE_MESSAGES_MALFORMED), 0);
    zmq_close(stranger_dealer);
    zmq_close(f.dealer);

    /* A registry row with a forged MAC is rejected... */
    cf_db_cluster_t *db = cf_db_cluster_new(s_url);
    cf_db_node_t row = {.control_endpoint = f.endpoint, .http_endpoint = "", .capabilities = "{}"};
    snprintf(row.id, sizeof row.id, "%s", f.id);
    snprintf(row.public_key, sizeof row.public_key, "%s", f.pub);
    memset(row.mac, 'f', 64);
    assert_int_equal(cf_db_cluster_node_upsert(db, &row, true, 3000, err, sizeof err), CF_DBC_OK);
    S_EVENTUALLY(cf_node_counter(node, CF_NODE_REGISTRY_REJECTED) == 1);
    assert_null(s_peer_view(node, f.id));
    /* ... one signed with the cluster secret is trusted. */
    cf_secret_t *secret = cf_secret_load(secret_path, NULL, err, sizeof err);
    assert_non_null(secret);
    cf_discovery_row_mac(secret, f.id, f.endpoint, "", f.pub, row.mac);
    assert_int_equal(cf_db_cluster_node_upsert(db, &row, false, 3000, err, sizeof err), CF_DBC_OK);
    cf_secret_destroy(&secret);
    S_EVENTUALLY(s_peer_state(node, f.id, "connecting"));

    /* F links to N again (its key is admitted now) and says HELLO. */
    f.dealer = s_fake_dealer(&f, node_key, node_endpoint);
    cf_msg_init(&msg, CF_MSG_HELLO);
    snprintf(msg.hello.node_id, sizeof msg.hello.node_id, "%s", f.id);
    cf_msg_set_str(&msg.hello.software, "fake 1");
    cf_msg_set_str(&msg.hello.control_endpoint, f.endpoint);
    cf_msg_set_str(&msg.hello.http_endpoint, "");
    msg.hello.cores = 64;
    msg.hello.slots = 8;
    cf_proto_strlist_add(&msg.hello.encoders, "h264_nvenc");
    cf_proto_f64list_add(&msg.hello.encoder_fps, 900);
    msg.hello.want_hello = true;
    s_fake_send(&f, &msg);
    S_EVENTUALLY(s_peer_state(node, f.id, "alive"));
    json_t *peer = s_peer_view(node, f.id);
    json_t *caps = json_object_get(peer, "capabilities");
    assert_int_equal(json_integer_value(json_object_get(caps, "cores")), 64);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(caps, "encoders"), 0), "name")),
                        "h264_nvenc");
    json_decref(peer);
    /* It answers want_hello with its own HELLO. */
    bool answered = false;
    while (!answered && s_fake_recv(&f, CF_MSG_HELLO, &msg, 3000)) {
        answered = !msg.hello.want_hello;
        cf_msg_clear(&msg);
    }
    assert_true(answered);

    /* F has seen epoch 5 in use, above N's lease row (epoch 1: as after a
     * restore that reset the row). N stops acting at epoch 1 at once, and
     * its election acquires above what was seen: epoch 6, never 5 again. */
    cf_msg_init(&msg, CF_MSG_HEARTBEAT);
    msg.heartbeat.epoch = 5;
    msg.heartbeat.free_slots = 8;
    s_fake_send(&f, &msg);
    S_EVENTUALLY(s_snapshot_is(node, "coordinator", 6, node_id));
    assert_int_equal(cf_node_counter(node, CF_NODE_LEASES_LOST), 1);
    char *lease_row = s_query("SELECT holder::text || ' ' || epoch FROM coordinator_lease");
    char expect_row[64];
    snprintf(expect_row, sizeof expect_row, "%s 6", node_id);
    assert_string_equal(lease_row, expect_row);
    free(lease_row);

    /* A LEADER of an older epoch is ignored and counted. */
    cf_msg_init(&msg, CF_MSG_LEADER);
    msg.leader.epoch = 3;
    snprintf(msg.leader.node_id, sizeof msg.leader.node_id, "%s", f.id);
    s_fake_send(&f, &msg);
    S_EVENTUALLY(cf_node_counter(node, CF_NODE_MESSAGES_STALE_EPOCH) == 1);
    /* An ASSIGN at N's own epoch from F, which does not hold it: refused,
     * counted, not answered. */
    cf_msg_init(&msg, CF_MSG_ASSIGN);
    msg.assign.epoch = 6;
    snprintf(msg.assign.composition, sizeof msg.assign.composition, "%s", f.id);
    msg.assign.segment = 3;
    msg.assign.frame_count = 10;
    msg.assign.attempt = 1;
    cf_msg_set_str(&msg.assign.encoder, "libx264");
    cf_msg_set_str(&msg.assign.task, "{}");
    s_fake_send(&f, &msg);
    S_EVENTUALLY(cf_node_counter(node, CF_NODE_ASSIGN_REFUSED) == 1);

    /* F takes the lease (made so in Postgres, the authority): N follows. */
    char sql_f[256];
    snprintf(sql_f, sizeof sql_f,
             "UPDATE coordinator_lease SET epoch = 10, holder = '%s', holder_token = 'f',"
             " expires_at = now() + interval '1 hour' RETURNING 1",
             f.id);
    free(s_query(sql_f));
    cf_msg_init(&msg, CF_MSG_LEADER);
    msg.leader.epoch = 10;
    snprintf(msg.leader.node_id, sizeof msg.leader.node_id, "%s", f.id);
    s_fake_send(&f, &msg);
    S_EVENTUALLY(s_snapshot_is(node, "worker", 10, f.id));
    assert_false(cf_node_is_coordinator(node, NULL));

    /* Malformed: garbage, a two-frame message, a LEADER naming another node,
     * a HELLO claiming another id. Each dropped and counted. */
    uint64_t malformed = cf_node_counter(node, CF_NODE_MESSAGES_MALFORMED);
    zmq_send(f.dealer, "\x93\x01\x63\xc1", 4, 0);
    zmq_send(f.dealer, "a", 1, ZMQ_SNDMORE);
    zmq_send(f.dealer, "b", 1, 0);
    cf_msg_init(&msg, CF_MSG_LEADER);
    msg.leader.epoch = 10;
    snprintf(msg.leader.node_id, sizeof msg.leader.node_id, "%s", node_id);
    s_fake_send(&f, &msg);
    cf_msg_init(&msg, CF_MSG_HELLO);
    snprintf(msg.hello.node_id, sizeof msg.hello.node_id, "%s", node_id);
    cf_msg_set_str(&msg.hello.software, "impostor");
    cf_msg_set_str(&msg.hello.control_endpoint, f.endpoint);
    cf_msg_set_str(&msg.hello.http_endpoint, "");
    msg.hello.cores = 1;
    s_fake_send(&f, &msg);
    S_EVENTUALLY(cf_node_counter(node, CF_NODE_MESSAGES_MALFORMED) == malformed + 4);
    assert_true(s_snapshot_is(node, "worker", 10, f.id));

    /* ASSIGN from the lease's holder at the current epoch: a REJECT comes
     * back; at an older one: ignored. */
    cf_msg_init(&msg, CF_MSG_ASSIGN);
    msg.assign.epoch = 9;
    snprintf(msg.assign.composition, sizeof msg.assign.composition, "%s", f.id);
    msg.assign.segment = 7;
    msg.assign.frame_count = 10;
    msg.assign.attempt = 1;
    cf_msg_set_str(&msg.assign.encoder, "libx264");
    cf_msg_set_str(&msg.assign.task, "{}");
    s_fake_send(&f, &msg);
    cf_msg_init(&msg, CF_MSG_ASSIGN);
    msg.assign.epoch = 10;
    snprintf(msg.assign.composition, sizeof msg.assign.composition, "%s", f.id);
    msg.assign.segment = 9;
    msg.assign.frame_count = 10;
    msg.assign.attempt = 1;
    cf_msg_set_str(&msg.assign.encoder, "libx264");
    cf_msg_set_str(&msg.assign.task, "{}");
    s_fake_send(&f, &msg);
    assert_true(s_fake_recv(&f, CF_MSG_REJECT, &msg, 3000));
    assert_int_equal(msg.reject.epoch, 10);
    assert_int_equal(msg.reject.segment, 9); /* not 7: that one was stale; not 3: refused */
    assert_string_equal(msg.reject.composition, f.id);
    cf_msg_clear(&msg);
    assert_int_equal(cf_node_counter(node, CF_NODE_MESSAGES_STALE_EPOCH), 2);
    assert_int_equal(cf_node_counter(node, CF_NODE_ASSIGN_REFUSED), 1);

    /* BYE: F has left. */
    cf_msg_init(&msg, CF_MSG_BYE);
    cf_msg_set_str(&msg.bye.reason, "test over");
    s_fake_send(&f, &msg);
    S_EVENTUALLY(s_peer_state(node, f.id, "left"));

    zmq_close(f.dealer);
    zmq_close(f.router);
    zmq_ctx_term(f.ctx);
    cf_db_cluster_destroy(&db);
    cf_node_destroy(&node);
}

int main(void)
{
    srandom((unsigned)time(NULL) ^ (unsigned)getpid()); /* for free ports */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(s_caps_probe_and_calibrate),
        cmocka_unit_test(s_node_alone),
        cmocka_unit_test(s_protocol_with_fake_peer),
        cmocka_unit_test(s_node_without_database),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
