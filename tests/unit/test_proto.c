/* proto/cf_proto.c and proto/cf_beacon.c: every message round-trips; the
 * decoder rejects unknown versions and types, wrong field counts, wrong
 * types, out-of-bounds values and malformed msgpack; beacons authenticate. */
#include <msgpack.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_beacon.h"
#include "cf_proto.h"
#include "cf_testutil.h"

static const char *S_ID_A = "0f8e2c1a-5b6d-4e7f-8a9b-0c1d2e3f4a5b";
static const char *S_ID_B = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f1a2b3c4d";

/* Fills MSG with a representative value of TYPE. Returns false for a type
 * this test does not know, so a new message without a test fails here. */
static bool s_fill(cf_msg_t *msg, cf_msg_type_t type)
{
    cf_msg_init(msg, type);
    uint8_t hash[32];
    for (int i = 0; i < 32; i++)
        hash[i] = (uint8_t)(i * 7);
    switch (type) {
        case CF_MSG_HELLO:
            strcpy(msg->hello.node_id, S_ID_A);
            cf_msg_set_str(&msg->hello.software, "clipfarm 0.1.0");
            cf_msg_set_str(&msg->hello.control_endpoint, "tcp://10.1.2.3:7070");
            cf_msg_set_str(&msg->hello.http_endpoint, "http://10.1.2.3:8080");
            msg->hello.cores = 16;
            msg->hello.memory_mb = 64000;
            msg->hello.slots = 8;
            cf_proto_strlist_add(&msg->hello.encoders, "libx264");
            cf_proto_f64list_add(&msg->hello.encoder_fps, 312.5);
            cf_proto_strlist_add(&msg->hello.encoders, "h264_nvenc");
            cf_proto_f64list_add(&msg->hello.encoder_fps, 1200.25);
            cf_proto_strlist_add(&msg->hello.tags, "gpu");
            cf_proto_strlist_add(&msg->hello.tags, "site=lab");
            msg->hello.want_hello = true;
            return true;
        case CF_MSG_HEARTBEAT:
            msg->heartbeat.load = 1.75;
            msg->heartbeat.free_slots = 3;
            msg->heartbeat.in_flight = 5;
            msg->heartbeat.epoch = 42;
            return true;
        case CF_MSG_LEADER:
            msg->leader.epoch = 7;
            strcpy(msg->leader.node_id, S_ID_B);
            return true;
        case CF_MSG_ASSIGN:
            msg->assign.epoch = 7;
            strcpy(msg->assign.composition, S_ID_B);
            msg->assign.segment = 12;
            msg->assign.frame_start = 3000;
            msg->assign.attempt = 2;
            msg->assign.kind = 0;
            msg->assign.frame_count = 250;
            cf_msg_set_str(&msg->assign.encoder, "libx264");
            cf_msg_set_str(&msg->assign.task, "{\"plan\":{\"segments\":[]},\"sources\":[]}");
            return true;
        case CF_MSG_ACCEPT:
            msg->accept.epoch = 7;
            strcpy(msg->accept.composition, S_ID_B);
            msg->accept.segment = 12;
            msg->accept.attempt = 2;
            return true;
        case CF_MSG_REJECT:
            msg->reject.epoch = 7;
            strcpy(msg->reject.composition, S_ID_B);
            msg->reject.segment = 12;
            msg->reject.attempt = 2;
            cf_msg_set_str(&msg->reject.reason, "no free slot \xc3\xa9");
            return true;
        case CF_MSG_PROGRESS:
            msg->progress.epoch = 7;
            strcpy(msg->progress.composition, S_ID_B);
            msg->progress.segment = 12;
            msg->progress.attempt = 2;
            msg->progress.frames_done = 125;
            return true;
        case CF_MSG_DONE:
            msg->done.epoch = 7;
            strcpy(msg->done.composition, S_ID_B);
            msg->done.segment = 12;
            msg->done.attempt = 2;
            msg->done.frames = 250;
            cf_proto_bin_set(&msg->done.blob_hash, hash, sizeof hash);
            msg->done.size_bytes = 1234567;
            msg->done.encode_ms = 4200;
            msg->done.fps = 59.5;
            return true;
        case CF_MSG_FAILED:
            msg->failed.epoch = 7;
            strcpy(msg->failed.composition, S_ID_B);
            msg->failed.segment = 12;
            msg->failed.attempt = 2;
            cf_msg_set_str(&msg->failed.reason, "decoder error at frame 3012");
            msg->failed.retryable = true;
            return true;
        case CF_MSG_CANCEL:
            msg->cancel.epoch = 7;
            strcpy(msg->cancel.composition, S_ID_B);
            return true;
        case CF_MSG_BYE:
            cf_msg_set_str(&msg->bye.reason, "shutdown");
            return true;
        case CF_MSG_NONE:
            break;
    }
    return false;
}

static void s_round_trip_every_message(void **state)
{
    for (size_t i = 0; i < cf_proto_message_count(); i++) {
        cf_msg_type_t type = cf_proto_message_type(i);
        cf_msg_t msg, back;
        assert_true(s_fill(&msg, type));
        uint8_t *data = NULL;
        size_t size = 0;
        char err[256];
        if (cf_msg_encode(&msg, &data, &size, err, sizeof err) < 0)
            fail_msg("encode %s: %s", cf_msg_type_name(type), err);
        /* The version leads, then the type. */
        assert_true(size > 3);
        assert_int_equal(data[1], CF_PROTO_VERSION);
        assert_int_equal(data[2], type);
        if (cf_msg_decode(data, size, &back, err, sizeof err) < 0)
            fail_msg("decode %s: %s", cf_msg_type_name(type), err);
        assert_int_equal(back.type, type);
        assert_true(cf_msg_equal(&msg, &back));
        /* Re-encoding gives the same bytes. */
        uint8_t *again = NULL;
        size_t again_size = 0;
        assert_int_equal(cf_msg_encode(&back, &again, &again_size, err, sizeof err), 0);
        assert_int_equal(again_size, size);
        assert_memory_equal(again, data, size);
        free(again);
        free(data);
        cf_msg_clear(&back);
        cf_msg_clear(&msg);
    }
}

static void s_fields_survive(void **state)
{
    cf_msg_t msg, back;
    char err[256];
    uint8_t *data;
    size_t size;
    s_fill(&msg, CF_MSG_HELLO);
    assert_int_equal(cf_msg_encode(&msg, &data, &size, err, sizeof err), 0);
    assert_int_equal(cf_msg_decode(data, size, &back, err, sizeof err), 0);
    assert_string_equal(back.hello.node_id, S_ID_A);
    assert_string_equal(back.hello.control_endpoint, "tcp://10.1.2.3:7070");
    assert_int_equal(back.hello.encoders.count, 2);
    assert_string_equal(back.hello.encoders.items[1], "h264_nvenc");
    assert_true(back.hello.encoder_fps.items[1] == 1200.25);
    assert_string_equal(back.hello.tags.items[1], "site=lab");
    assert_true(back.hello.want_hello);
    assert_int_equal(cf_msg_epoch(&back), 0);
    free(data);
    cf_msg_clear(&back);
    cf_msg_clear(&msg);

    s_fill(&msg, CF_MSG_LEADER);
    assert_int_equal(cf_msg_epoch(&msg), 7);
    cf_msg_clear(&msg);
    s_fill(&msg, CF_MSG_HEARTBEAT);
    assert_int_equal(cf_msg_epoch(&msg), 42);
    cf_msg_clear(&msg);
}

/* Packs [version, type, ...] by hand for the rejection tests. */
typedef struct {
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
} s_raw_t;

static void s_raw_init(s_raw_t *raw)
{
    msgpack_sbuffer_init(&raw->sbuf);
    msgpack_packer_init(&raw->pk, &raw->sbuf, msgpack_sbuffer_write);
}

static int s_decode_raw(s_raw_t *raw, char *err, size_t errlen)
{
    cf_msg_t msg;
    int rc = cf_msg_decode((const uint8_t *)raw->sbuf.data, raw->sbuf.size, &msg, err, errlen);
    if (rc == 0)
        cf_msg_clear(&msg);
    msgpack_sbuffer_destroy(&raw->sbuf);
    return rc;
}

static void s_pack_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

static void s_rejects_versions_and_types(void **state)
{
    char err[256];
    s_raw_t raw;

    /* A valid LEADER first, to show the hand-packing is right. */
    s_raw_init(&raw);
    msgpack_pack_array(&raw.pk, 4);
    msgpack_pack_uint8(&raw.pk, CF_PROTO_VERSION);
    msgpack_pack_uint8(&raw.pk, CF_MSG_LEADER);
    msgpack_pack_uint64(&raw.pk, 3);
    s_pack_str(&raw.pk, S_ID_A);
    assert_int_equal(s_decode_raw(&raw, err, sizeof err), 0);

    /* The next version (from the future), the previous one and 0. */
    const int versions[] = {CF_PROTO_VERSION + 1, CF_PROTO_VERSION - 1, 0};
    for (size_t v = 0; v < 3; v++) {
        int version = versions[v];
        s_raw_init(&raw);
        msgpack_pack_array(&raw.pk, 4);
        msgpack_pack_uint8(&raw.pk, (uint8_t)version);
        msgpack_pack_uint8(&raw.pk, CF_MSG_LEADER);
        msgpack_pack_uint64(&raw.pk, 3);
        s_pack_str(&raw.pk, S_ID_A);
        assert_int_equal(s_decode_raw(&raw, err, sizeof err), -1);
        assert_non_null(strstr(err, "version"));
    }
    /* Version as a string. */
    s_raw_init(&raw);
    msgpack_pack_array(&raw.pk, 4);
    s_pack_str(&raw.pk, "1");
    msgpack_pack_uint8(&raw.pk, CF_MSG_LEADER);
    msgpack_pack_uint64(&raw.pk, 3);
    s_pack_str(&raw.pk, S_ID_A);
    assert_int_equal(s_decode_raw(&raw, err, sizeof err), -1);

    /* Unknown types: 0, 99, 2^40. */
    uint64_t types[] = {0, 99, 1ULL << 40};
    for (size_t i = 0; i < 3; i++) {
        s_raw_init(&raw);
        msgpack_pack_array(&raw.pk, 2);
        msgpack_pack_uint8(&raw.pk, CF_PROTO_VERSION);
        msgpack_pack_uint64(&raw.pk, types[i]);
        assert_int_equal(s_decode_raw(&raw, err, sizeof err), -1);
        assert_non_null(strstr(err, "unknown message type"));
    }
    /* Too few and too many fields. */
    for (int count = 3; count <= 5; count += 2) {
        s_raw_init(&raw);
        msgpack_pack_array(&raw.pk, (size_t)count);
        msgpack_pack_uint8(&raw.pk, CF_PROTO_VERSION);
        msgpack_pack_uint8(&raw.pk, CF_MSG_LEADER);
        msgpack_pack_uint64(&raw.pk, 3);
        if (count == 5) {
            s_pack_str(&raw.pk, S_ID_A);
            msgpack_pack_nil(&raw.pk);
        }
        assert_int_equal(s_decode_raw(&raw, err, sizeof err), -1);
        assert_non_null(strstr(err, "fields"));
    }
    /* Not an array at all. */
    s_raw_init(&raw);
    msgpack_pack_map(&raw.pk, 0);
    assert_int_equal(s_decode_raw(&raw, err, sizeof err), -1);
}

static void s_rejects_bad_fields(void **state)
{
    char err[256];
    s_raw_t raw;

    /* Epoch 0 is below LEADER's bound; a negative epoch is the wrong type. */
    s_raw_init(&raw);
    msgpack_pack_array(&raw.pk, 4);
    msgpack_pack_uint8(&raw.pk, CF_PROTO_VERSION);
    msgpack_pack_uint8(&raw.pk, CF_MSG_LEADER);
    msgpack_pack_uint64(&raw.pk, 0);
    s_pack_str(&raw.pk, S_ID_A);
    assert_int_equal(s_decode_raw(&raw, err, sizeof err), -1);
    assert_non_null(strstr(err, "LEADER.epoch"));

    s_raw_init(&raw);
    msgpack_pack_array(&raw.pk, 4);
    msgpack_pack_uint8(&raw.pk, CF_PROTO_VERSION);
    msgpack_pack_uint8(&raw.pk, CF_MSG_LEADER);
    msgpack_pack_int64(&raw.pk, -5);
    s_pack_str(&raw.pk, S_ID_A);
    assert_int_equal(s_decode_raw(&raw, err, sizeof err), -1);
    assert_non_null(strstr(err, "expected uint"));

    /* Epoch beyond a Postgres bigint. */
    s_raw_init(&raw);
    msgpack_pack_array(&raw.pk, 4);
    msgpack_pack_uint8(&raw.pk, CF_PROTO_VERSION);
    msgpack_pack_uint8(&raw.pk, CF_MSG_LEADER);
    msgpack_pack_uint64(&raw.pk, UINT64_MAX);
    s_pack_str(&raw.pk, S_ID_A);
    assert_int_equal(s_decode_raw(&raw, err, sizeof err), -1);

    /* Node ids must be canonical lowercase UUIDs. */
    const char *bad_ids[] = {"0F8E2C1A-5B6D-4E7F-8A9B-0C1D2E3F4A5B", "not-a-uuid", "",
                             "0f8e2c1a-5b6d-4e7f-8a9b-0c1d2e3f4a5b0"};
    for (size_t i = 0; i < 4; i++) {
        s_raw_init(&raw);
        msgpack_pack_array(&raw.pk, 4);
        msgpack_pack_uint8(&raw.pk, CF_PROTO_VERSION);
        msgpack_pack_uint8(&raw.pk, CF_MSG_LEADER);
        msgpack_pack_uint64(&raw.pk, 3);
        s_pack_str(&raw.pk, bad_ids[i]);
        assert_int_equal(s_decode_raw(&raw, err, sizeof err), -1);
        assert_non_null(strstr(err, "UUID"));
    }

    /* HEARTBEAT: load as an int (wrong type), NaN, a negative float, free
     * slots over the bound. */
    for (int variant = 0; variant < 4; variant++) {
        s_raw_init(&raw);
        msgpack_pack_array(&raw.pk, 6);
        msgpack_pack_uint8(&raw.pk, CF_PROTO_VERSION);
        msgpack_pack_uint8(&raw.pk, CF_MSG_HEARTBEAT);
        if (variant == 0)
            msgpack_pack_uint8(&raw.pk, 1);
        else if (variant == 1)
            msgpack_pack_double(&raw.pk, 0.0 / 0.0);
        else if (variant == 2)
            msgpack_pack_double(&raw.pk, -1.0);
        else
            msgpack_pack_double(&raw.pk, 1.0);
        msgpack_pack_uint64(&raw.pk, variant == 3 ? 257 : 1);
        msgpack_pack_uint64(&raw.pk, 0);
        msgpack_pack_uint64(&raw.pk, 1);
        assert_int_equal(s_decode_raw(&raw, err, sizeof err), -1);
        assert_non_null(strstr(err, "HEARTBEAT."));
    }

    /* REJECT: a reason with a control character, with a NUL, too long, empty. */
    const char *reasons[] = {"bad\nline", NULL, NULL, ""};
    char longreason[300];
    memset(longreason, 'x', sizeof longreason - 1);
    longreason[sizeof longreason - 1] = '\0';
    reasons[2] = longreason;
    for (size_t i = 0; i < 4; i++) {
        s_raw_init(&raw);
        msgpack_pack_array(&raw.pk, 7);
        msgpack_pack_uint8(&raw.pk, CF_PROTO_VERSION);
        msgpack_pack_uint8(&raw.pk, CF_MSG_REJECT);
        msgpack_pack_uint64(&raw.pk, 3);
        s_pack_str(&raw.pk, S_ID_A);
        msgpack_pack_uint64(&raw.pk, 1); /* segment */
        msgpack_pack_uint64(&raw.pk, 1); /* attempt */
        if (i == 1) {
            msgpack_pack_str(&raw.pk, 5);
            msgpack_pack_str_body(&raw.pk, "ab\0cd", 5);
        } else {
            s_pack_str(&raw.pk, reasons[i]);
        }
        assert_int_equal(s_decode_raw(&raw, err, sizeof err), -1);
        assert_non_null(strstr(err, "REJECT.reason"));
    }
    /* Invalid UTF-8 (a lone continuation byte, an overlong '/'). */
    const char *bad_utf8[] = {"ab\x80", "a\xc0\xaf"};
    for (size_t i = 0; i < 2; i++) {
        s_raw_init(&raw);
        msgpack_pack_array(&raw.pk, 3);
        msgpack_pack_uint8(&raw.pk, CF_PROTO_VERSION);
        msgpack_pack_uint8(&raw.pk, CF_MSG_BYE);
        s_pack_str(&raw.pk, bad_utf8[i]);
        assert_int_equal(s_decode_raw(&raw, err, sizeof err), -1);
    }
}

static void s_rejects_inconsistent_hello(void **state)
{
    cf_msg_t msg;
    s_fill(&msg, CF_MSG_HELLO);
    cf_proto_f64list_add(&msg.hello.encoder_fps, 5.0); /* 3 values for 2 encoders */
    uint8_t *data = NULL;
    size_t size = 0;
    char err[256];
    assert_int_equal(cf_msg_encode(&msg, &data, &size, err, sizeof err), -1);
    assert_non_null(strstr(err, "encoder_fps"));
    assert_null(data);
    cf_msg_clear(&msg);

    /* Too many tags is refused by the encoder too. */
    s_fill(&msg, CF_MSG_HELLO);
    for (int i = 0; i < 40; i++)
        cf_proto_strlist_add(&msg.hello.tags, "t");
    assert_int_equal(cf_msg_encode(&msg, &data, &size, err, sizeof err), -1);
    assert_non_null(strstr(err, "HELLO.tags"));
    cf_msg_clear(&msg);

    /* DONE with a short hash. */
    s_fill(&msg, CF_MSG_DONE);
    cf_proto_bin_set(&msg.done.blob_hash, "abc", 3);
    assert_int_equal(cf_msg_encode(&msg, &data, &size, err, sizeof err), -1);
    cf_msg_clear(&msg);
}

static void s_rejects_malformed_msgpack(void **state)
{
    char err[256];
    cf_msg_t msg;
    /* Array32 claiming 4 billion elements: must be refused before msgpack-c
     * allocates for them. */
    const uint8_t huge_array[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x01};
    assert_int_equal(cf_msg_decode(huge_array, sizeof huge_array, &msg, err, sizeof err), -1);
    const uint8_t huge_map[] = {0xdf, 0x7f, 0xff, 0xff, 0xff};
    assert_int_equal(cf_msg_decode(huge_map, sizeof huge_map, &msg, err, sizeof err), -1);
    /* str32 longer than the input. */
    const uint8_t long_str[] = {0x93, 0x01, 0x0b, 0xdb, 0x00, 0x01, 0x00, 0x00, 'a'};
    assert_int_equal(cf_msg_decode(long_str, sizeof long_str, &msg, err, sizeof err), -1);
    /* Deep nesting. */
    uint8_t deep[64];
    memset(deep, 0x91, sizeof deep);
    deep[63] = 0x01;
    assert_int_equal(cf_msg_decode(deep, sizeof deep, &msg, err, sizeof err), -1);
    /* The reserved byte 0xc1, an empty input, NULL. */
    const uint8_t reserved[] = {0x92, 0x01, 0xc1};
    assert_int_equal(cf_msg_decode(reserved, sizeof reserved, &msg, err, sizeof err), -1);
    assert_int_equal(cf_msg_decode(reserved, 0, &msg, err, sizeof err), -1);
    assert_int_equal(cf_msg_decode(NULL, 5, &msg, err, sizeof err), -1);

    /* Every strict prefix of every valid message is refused, and so is every
     * message with a byte appended. */
    for (size_t i = 0; i < cf_proto_message_count(); i++) {
        cf_msg_t full;
        s_fill(&full, cf_proto_message_type(i));
        uint8_t *data;
        size_t size;
        assert_int_equal(cf_msg_encode(&full, &data, &size, err, sizeof err), 0);
        for (size_t len = 0; len < size; len++)
            assert_int_equal(cf_msg_decode(data, len, &msg, err, sizeof err), -1);
        uint8_t *longer = malloc(size + 1);
        memcpy(longer, data, size);
        longer[size] = 0xc0;
        assert_int_equal(cf_msg_decode(longer, size + 1, &msg, err, sizeof err), -1);
        assert_non_null(strstr(err, "msgpack"));
        free(longer);
        free(data);
        cf_msg_clear(&full);
    }
}

/* Deterministic mutation: flip bytes of valid messages; whatever decodes
 * must re-encode and decode to an equal message (nothing half-checked). */
static void s_mutations_are_safe(void **state)
{
    uint32_t seed = 12345;
    char err[256];
    for (size_t i = 0; i < cf_proto_message_count(); i++) {
        cf_msg_t full;
        s_fill(&full, cf_proto_message_type(i));
        uint8_t *data;
        size_t size;
        assert_int_equal(cf_msg_encode(&full, &data, &size, err, sizeof err), 0);
        for (int round = 0; round < 2000; round++) {
            uint8_t *copy = malloc(size);
            memcpy(copy, data, size);
            for (int k = 0; k < 1 + round % 3; k++) {
                seed = seed * 1103515245u + 12345u;
                copy[(seed >> 8) % size] = (uint8_t)(seed >> 20);
            }
            cf_msg_t msg, again;
            if (cf_msg_decode(copy, size, &msg, err, sizeof err) == 0) {
                uint8_t *re;
                size_t re_size;
                assert_int_equal(cf_msg_encode(&msg, &re, &re_size, err, sizeof err), 0);
                assert_int_equal(cf_msg_decode(re, re_size, &again, err, sizeof err), 0);
                assert_true(cf_msg_equal(&msg, &again));
                cf_msg_clear(&again);
                cf_msg_clear(&msg);
                free(re);
            }
            free(copy);
        }
        free(data);
        cf_msg_clear(&full);
    }
}

static void s_protocol_md_documents_every_field(void **state)
{
    const char *src = cf_test_require_env("CF_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/proto/PROTOCOL.md", src);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static char text[256 * 1024];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    /* The reference section is cf_proto_describe's output, verbatim. */
    char *generated = NULL;
    size_t generated_size = 0;
    FILE *mem = open_memstream(&generated, &generated_size);
    cf_proto_describe(mem);
    fclose(mem);
    if (!strstr(text, generated))
        fail_msg("proto/PROTOCOL.md is out of date with the message table: paste the output "
                 "of cf_proto_describe() (see the note in PROTOCOL.md)");
    free(generated);
}

/* ------------------------------------------------------------------ beacons */

static void s_beacon_sample(cf_beacon_t *b)
{
    memset(b, 0, sizeof *b);
    strcpy(b->node_id, S_ID_A);
    b->control_port = 7070;
    b->http_port = 8080;
    for (int i = 0; i < 32; i++)
        b->public_key[i] = (uint8_t)(200 - i);
    b->timestamp_ms = 1700000000000LL;
}

static void s_beacon_round_trip(void **state)
{
    assert_true(sodium_init() >= 0);
    uint8_t key[32], frame[CF_BEACON_SIZE];
    randombytes_buf(key, sizeof key);
    cf_beacon_t b, back;
    s_beacon_sample(&b);
    assert_int_equal(cf_beacon_encode(&b, key, frame), 0);
    assert_memory_equal(frame, "CFB", 3);
    assert_int_equal(frame[3], CF_PROTO_VERSION);
    assert_int_equal(cf_beacon_decode(frame, sizeof frame, key, b.timestamp_ms + 500, 30000, &back),
                     CF_BEACON_OK);
    assert_string_equal(back.node_id, S_ID_A);
    assert_int_equal(back.control_port, 7070);
    assert_int_equal(back.http_port, 8080);
    assert_memory_equal(back.public_key, b.public_key, 32);
    assert_int_equal(back.timestamp_ms, b.timestamp_ms);

    /* A bad id or port 0 is not encoded. */
    cf_beacon_t bad = b;
    strcpy(bad.node_id, "nope");
    assert_int_equal(cf_beacon_encode(&bad, key, frame), -1);
    bad = b;
    bad.control_port = 0;
    assert_int_equal(cf_beacon_encode(&bad, key, frame), -1);
}

static void s_beacon_rejections(void **state)
{
    assert_true(sodium_init() >= 0);
    uint8_t key[32], other[32], frame[CF_BEACON_SIZE], copy[CF_BEACON_SIZE + 1];
    randombytes_buf(key, sizeof key);
    randombytes_buf(other, sizeof other);
    cf_beacon_t b, back;
    s_beacon_sample(&b);
    int64_t now = b.timestamp_ms;
    assert_int_equal(cf_beacon_encode(&b, key, frame), 0);

    /* Another cluster's secret. */
    assert_int_equal(cf_beacon_decode(frame, sizeof frame, other, now, 30000, &back),
                     CF_BEACON_BAD_MAC);
    /* Every single-byte change after the version is caught by the MAC. */
    for (size_t i = 4; i < CF_BEACON_SIZE; i++) {
        memcpy(copy, frame, sizeof frame);
        copy[i] ^= 0x01;
        assert_int_equal(cf_beacon_decode(copy, CF_BEACON_SIZE, key, now, 30000, &back),
                         CF_BEACON_BAD_MAC);
        assert_int_equal(back.control_port, 0);
    }
    /* Magic and version. */
    memcpy(copy, frame, sizeof frame);
    copy[0] = 'X';
    assert_int_equal(cf_beacon_decode(copy, CF_BEACON_SIZE, key, now, 30000, &back),
                     CF_BEACON_MALFORMED);
    memcpy(copy, frame, sizeof frame);
    copy[3] = CF_PROTO_VERSION + 1;
    assert_int_equal(cf_beacon_decode(copy, CF_BEACON_SIZE, key, now, 30000, &back),
                     CF_BEACON_BAD_VERSION);
    /* Sizes. */
    memcpy(copy, frame, sizeof frame);
    copy[CF_BEACON_SIZE] = 0;
    assert_int_equal(cf_beacon_decode(copy, CF_BEACON_SIZE + 1, key, now, 30000, &back),
                     CF_BEACON_MALFORMED);
    for (size_t len = 0; len < CF_BEACON_SIZE; len++)
        assert_int_not_equal(cf_beacon_decode(frame, len, key, now, 30000, &back), CF_BEACON_OK);
    assert_int_equal(cf_beacon_decode(NULL, 96, key, now, 30000, &back), CF_BEACON_MALFORMED);

    /* The replay window, both ways, at and past its edge. */
    assert_int_equal(cf_beacon_decode(frame, sizeof frame, key, now + 30000, 30000, &back),
                     CF_BEACON_OK);
    assert_int_equal(cf_beacon_decode(frame, sizeof frame, key, now + 30001, 30000, &back),
                     CF_BEACON_REPLAYED);
    assert_int_equal(cf_beacon_decode(frame, sizeof frame, key, now - 30001, 30000, &back),
                     CF_BEACON_REPLAYED);
    assert_int_equal(cf_beacon_decode(frame, sizeof frame, key, now - 5000, 30000, &back),
                     CF_BEACON_OK);
    /* Extreme timestamps do not overflow the window arithmetic. */
    b.timestamp_ms = INT64_MAX;
    assert_int_equal(cf_beacon_encode(&b, key, frame), 0);
    assert_int_equal(cf_beacon_decode(frame, sizeof frame, key, now, 30000, &back),
                     CF_BEACON_REPLAYED);
    b.timestamp_ms = -1;
    assert_int_equal(cf_beacon_encode(&b, key, frame), 0);
    assert_int_equal(cf_beacon_decode(frame, sizeof frame, key, now, 30000, &back),
                     CF_BEACON_REPLAYED);
}

static void s_write(const char *dir, const char *target, const char *name, const void *data,
                    size_t size)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/%s", dir, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size) {
        perror(path);
        exit(1);
    }
    fclose(f);
}

/* Writes the seed corpora of tests/fuzz (run once by hand; the files are
 * checked in): every message, a few malformed ones, and beacons signed with
 * the fuzz target's key and clock. */
static void s_write_seeds(const char *dir)
{
    char err[256], name[64];
    for (size_t i = 0; i < cf_proto_message_count(); i++) {
        cf_msg_t msg;
        s_fill(&msg, cf_proto_message_type(i));
        uint8_t *data;
        size_t size;
        if (cf_msg_encode(&msg, &data, &size, err, sizeof err) < 0)
            exit(1);
        snprintf(name, sizeof name, "%s.msgpack", cf_msg_type_name(msg.type));
        s_write(dir, "fuzz_proto_decode", name, data, size);
        free(data);
        cf_msg_clear(&msg);
    }
    const uint8_t huge_array[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x01};
    s_write(dir, "fuzz_proto_decode", "huge-array.msgpack", huge_array, sizeof huge_array);
    const uint8_t bad_version[] = {0x94, 0x02, 0x03, 0x01, 0xc0};
    s_write(dir, "fuzz_proto_decode", "bad-version.msgpack", bad_version, sizeof bad_version);

    uint8_t key[CF_BEACON_KEY_SIZE], frame[CF_BEACON_SIZE];
    memset(key, 0x42, sizeof key);
    cf_beacon_t b;
    s_beacon_sample(&b);
    if (cf_beacon_encode(&b, key, frame) < 0)
        exit(1);
    s_write(dir, "fuzz_beacon_parse", "valid.beacon", frame, sizeof frame);
    b.http_port = 0;
    b.timestamp_ms += 29999;
    cf_beacon_encode(&b, key, frame);
    s_write(dir, "fuzz_beacon_parse", "no-http.beacon", frame, sizeof frame);
    frame[3] = CF_PROTO_VERSION + 1;
    s_write(dir, "fuzz_beacon_parse", "next-version.beacon", frame, sizeof frame);
    s_write(dir, "fuzz_beacon_parse", "short.beacon", frame, 40);
}

/* The largest task there may be (an assembly of 14 400 pieces, about 2 MiB)
 * goes through; one over CF_PROTO_TASK_JSON_MAX is refused at encoding. */
static void s_large_tasks(void **state)
{
    (void)state;
    size_t sizes[] = {2200 * 1024, CF_PROTO_TASK_JSON_MAX, CF_PROTO_TASK_JSON_MAX + 1};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        cf_msg_t msg;
        cf_msg_init(&msg, CF_MSG_ASSIGN);
        assert_true(s_fill(&msg, CF_MSG_ASSIGN));
        char *task = malloc(sizes[i] + 1);
        assert_non_null(task);
        memset(task, 'x', sizes[i]);
        task[sizes[i]] = '\0';
        assert_int_equal(cf_msg_set_str(&msg.assign.task, task), 0);
        free(task);
        uint8_t *data = NULL;
        size_t size = 0;
        char err[256];
        int rc = cf_msg_encode(&msg, &data, &size, err, sizeof err);
        if (sizes[i] > CF_PROTO_TASK_JSON_MAX) {
            assert_int_equal(rc, -1);
        } else {
            if (rc != 0)
                fail_msg("a task of %zu bytes: %s", sizes[i], err);
            assert_true(size <= CF_PROTO_MAX_SIZE);
            cf_msg_t back;
            assert_int_equal(cf_msg_decode(data, size, &back, err, sizeof err), 0);
            assert_true(cf_msg_equal(&msg, &back));
            cf_msg_clear(&back);
        }
        free(data);
        cf_msg_clear(&msg);
    }
}

int main(void)
{
    if (getenv("CF_FUZZ_WRITE_SEEDS")) {
        s_write_seeds(getenv("CF_FUZZ_WRITE_SEEDS"));
        return 0;
    }
    /* Prints the reference section of proto/PROTOCOL.md. */
    if (getenv("CF_PROTO_DESCRIBE")) {
        cf_proto_describe(stdout);
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(s_round_trip_every_message),
        cmocka_unit_test(s_fields_survive),
        cmocka_unit_test(s_rejects_versions_and_types),
        cmocka_unit_test(s_rejects_bad_fields),
        cmocka_unit_test(s_rejects_inconsistent_hello),
        cmocka_unit_test(s_rejects_malformed_msgpack),
        cmocka_unit_test(s_mutations_are_safe),
        cmocka_unit_test(s_protocol_md_documents_every_field),
        cmocka_unit_test(s_beacon_round_trip),
        cmocka_unit_test(s_beacon_rejections),
        cmocka_unit_test(s_large_tasks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
