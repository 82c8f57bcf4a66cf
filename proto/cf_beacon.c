#include "cf_beacon.h"

#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "cf_proto.h"

#define S_MAC_OFFSET 64

static void s_put_be(uint8_t *p, uint64_t v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}

static uint64_t s_get_be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

static int s_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* UUID text -> 16 bytes. The caller checked the text with cf_proto_is_uuid. */
static void s_uuid_to_bin(const char *text, uint8_t out[16])
{
    size_t k = 0;
    for (size_t i = 0; i < 36 && k < 16; i++) {
        if (text[i] == '-')
            continue;
        out[k++] = (uint8_t)(s_hex_digit(text[i]) << 4 | s_hex_digit(text[i + 1]));
        i++;
    }
}

static void s_uuid_to_text(const uint8_t in[16], char out[37])
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[in[i] >> 4];
        out[o++] = hex[in[i] & 15];
    }
    out[o] = '\0';
}

int cf_beacon_encode(const cf_beacon_t *beacon, const uint8_t key[CF_BEACON_KEY_SIZE],
                     uint8_t out[CF_BEACON_SIZE])
{
    if (sodium_init() < 0 ||
        !cf_proto_is_uuid(beacon->node_id, strnlen(beacon->node_id, sizeof beacon->node_id)) ||
        beacon->control_port == 0)
        return -1;
    memcpy(out, CF_BEACON_MAGIC, CF_BEACON_MAGIC_LEN);
    out[3] = CF_PROTO_VERSION;
    s_uuid_to_bin(beacon->node_id, out + 4);
    s_put_be(out + 20, beacon->control_port, 2);
    s_put_be(out + 22, beacon->http_port, 2);
    memcpy(out + 24, beacon->public_key, 32);
    s_put_be(out + 56, (uint64_t)beacon->timestamp_ms, 8);
    crypto_auth(out + S_MAC_OFFSET, out, S_MAC_OFFSET, key);
    return 0;
}

cf_beacon_status_t cf_beacon_decode(const uint8_t *data, size_t size,
                                    const uint8_t key[CF_BEACON_KEY_SIZE], int64_t now_ms,
                                    int64_t window_ms, cf_beacon_t *beacon)
{
    memset(beacon, 0, sizeof *beacon);
    if (!data || size < CF_BEACON_MAGIC_LEN + 1 ||
        memcmp(data, CF_BEACON_MAGIC, CF_BEACON_MAGIC_LEN))
        return CF_BEACON_MALFORMED;
    /* The version decides the layout, so it is read before the size. */
    if (data[3] != CF_PROTO_VERSION)
        return CF_BEACON_BAD_VERSION;
    if (size != CF_BEACON_SIZE || sodium_init() < 0)
        return CF_BEACON_MALFORMED;
    if (crypto_auth_verify(data + S_MAC_OFFSET, data, S_MAC_OFFSET, key) != 0)
        return CF_BEACON_BAD_MAC;

    uint16_t control_port = (uint16_t)s_get_be(data + 20, 2);
    if (control_port == 0)
        return CF_BEACON_MALFORMED;
    int64_t timestamp_ms = (int64_t)s_get_be(data + 56, 8);
    /* Written to avoid overflow for any timestamp a peer sends. */
    bool in_window = timestamp_ms >= 0 && window_ms >= 0 &&
                     (timestamp_ms <= now_ms ? now_ms - timestamp_ms <= window_ms
                                             : timestamp_ms - now_ms <= window_ms);
    if (!in_window)
        return CF_BEACON_REPLAYED;

    beacon->version = data[3];
    s_uuid_to_text(data + 4, beacon->node_id);
    beacon->control_port = control_port;
    beacon->http_port = (uint16_t)s_get_be(data + 22, 2);
    memcpy(beacon->public_key, data + 24, 32);
    beacon->timestamp_ms = timestamp_ms;
    return CF_BEACON_OK;
}

const char *cf_beacon_status_name(cf_beacon_status_t status)
{
    switch (status) {
        case CF_BEACON_OK:
            return "ok";
        case CF_BEACON_MALFORMED:
            return "malformed";
        case CF_BEACON_BAD_VERSION:
            return "bad version";
        case CF_BEACON_BAD_MAC:
            return "bad MAC";
        case CF_BEACON_REPLAYED:
            return "replayed";
    }
    return "unknown";
}
