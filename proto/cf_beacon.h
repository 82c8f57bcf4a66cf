/* cf_beacon: the UDP discovery beacon. A fixed 96-byte frame, authenticated
 * with the cluster secret (libsodium crypto_auth, HMAC-SHA-512-256):
 *
 *   offset size field
 *        0    3 magic "CFB"
 *        3    1 protocol version (CF_PROTO_VERSION)
 *        4   16 node id (UUID, binary)
 *       20    2 control port (big endian)
 *       22    2 HTTP port (big endian, 0: none)
 *       24   32 CURVE public key (binary)
 *       56    8 timestamp, ms since the Unix epoch (big endian)
 *       64   32 MAC over bytes 0..63
 *
 * The sender's address is the UDP source address; the beacon carries ports
 * only. A receiver drops (and counts) a beacon that is malformed, of another
 * version, whose MAC does not verify under its secret (forged, or another
 * cluster's), or whose timestamp is further than the replay window from its
 * clock. */
#ifndef CF_BEACON_H
#define CF_BEACON_H

#include <stddef.h>
#include <stdint.h>

#define CF_BEACON_SIZE      96
#define CF_BEACON_MAGIC     "CFB"
#define CF_BEACON_MAGIC_LEN 3
#define CF_BEACON_KEY_SIZE  32 /* the cluster secret */

typedef struct {
    uint8_t version;
    char node_id[37]; /* canonical UUID text */
    uint16_t control_port;
    uint16_t http_port;
    uint8_t public_key[32];
    int64_t timestamp_ms;
} cf_beacon_t;

typedef enum {
    CF_BEACON_OK = 0,
    CF_BEACON_MALFORMED,   /* wrong size or magic, bad port or id */
    CF_BEACON_BAD_VERSION, /* another protocol version */
    CF_BEACON_BAD_MAC,     /* forged, altered, or another cluster's secret */
    CF_BEACON_REPLAYED,    /* timestamp outside the replay window */
} cf_beacon_status_t;

/* Writes BEACON (version is set to CF_PROTO_VERSION) with its MAC under KEY
 * into out. Returns 0, or -1 when the node id is not a UUID or the control
 * port is 0. */
int cf_beacon_encode(const cf_beacon_t *beacon, const uint8_t key[CF_BEACON_KEY_SIZE],
                     uint8_t out[CF_BEACON_SIZE]);

/* Parses and authenticates DATA (SIZE bytes from the network). now_ms is the
 * receiver's clock and window_ms the replay window. On CF_BEACON_OK, *beacon
 * holds the fields; on any other status *beacon is zeroed. The MAC is checked
 * in constant time before any field is trusted. */
cf_beacon_status_t cf_beacon_decode(const uint8_t *data, size_t size,
                                    const uint8_t key[CF_BEACON_KEY_SIZE], int64_t now_ms,
                                    int64_t window_ms, cf_beacon_t *beacon);

/* "ok", "malformed", "bad version", "bad MAC", "replayed". */
const char *cf_beacon_status_name(cf_beacon_status_t status);

#endif
