/* libFuzzer target for the beacon parser (proto/cf_beacon.c). Each input is
 * parsed twice: as received (almost everything fails the MAC), and with a
 * valid MAC written over it, so the field parsing behind the MAC check is
 * fuzzed too. */
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cf_beacon.h"

/* The seed corpus is signed with this key at this time
 * (tests/unit/test_proto.c writes it with CF_FUZZ_WRITE_SEEDS). */
#define S_NOW_MS    1700000000000LL
#define S_WINDOW_MS 30000

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t key[CF_BEACON_KEY_SIZE];
    memset(key, 0x42, sizeof key);
    if (sodium_init() < 0)
        abort();
    cf_beacon_t beacon;
    cf_beacon_status_t status = cf_beacon_decode(data, size, key, S_NOW_MS, S_WINDOW_MS, &beacon);
    if (status != CF_BEACON_OK && beacon.control_port != 0)
        abort(); /* a refused beacon must leave nothing behind */

    if (size == CF_BEACON_SIZE) {
        uint8_t signed_copy[CF_BEACON_SIZE];
        memcpy(signed_copy, data, size);
        crypto_auth(signed_copy + 64, signed_copy, 64, key);
        status = cf_beacon_decode(signed_copy, size, key, S_NOW_MS, S_WINDOW_MS, &beacon);
        if (status == CF_BEACON_OK) {
            /* Accepted fields round-trip to the same bytes. */
            uint8_t again[CF_BEACON_SIZE];
            if (cf_beacon_encode(&beacon, key, again) < 0 || memcmp(again, signed_copy, size))
                abort();
        }
    }
    return 0;
}
