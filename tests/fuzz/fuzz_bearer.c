/* libFuzzer target for the bearer-token path of every /api/v1 request: the
 * Authorization header is cut to a key (cf_apikey_from_bearer), the key is
 * parsed (cf_apikey_parse) and, when well-formed, hashed and verified. A
 * parsed key is exactly cf_<16 hex>_<43 base64url>; verification of a key
 * against its own hash holds and against any other byte string fails. */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cf_apikey.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *header = malloc(size + 1);
    if (!header)
        return 0;
    memcpy(header, data, size);
    header[size] = '\0';
    const char *key = cf_apikey_from_bearer(header);
    if (key) {
        if (key < header || key > header + size || !*key)
            abort();
        char id[CF_APIKEY_ID_CHARS + 1], err[256];
        if (cf_apikey_parse(key, id, err, sizeof err) == 0) {
            if (strlen(id) != CF_APIKEY_ID_CHARS || strncmp(key, "cf_", 3) ||
                strncmp(key + 3, id, CF_APIKEY_ID_CHARS))
                abort();
            for (int i = 0; i < CF_APIKEY_ID_CHARS; i++)
                if (!isxdigit((unsigned char)id[i]) || isupper((unsigned char)id[i]))
                    abort();
            uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES], hash[CF_APIKEY_HASH_BYTES];
            cf_apikey_hashkey_derive(header, size, hashkey);
            cf_apikey_hash(hashkey, key, hash);
            if (!cf_apikey_verify(hashkey, key, hash, sizeof hash))
                abort();
            hash[0] ^= 1;
            if (cf_apikey_verify(hashkey, key, hash, sizeof hash))
                abort();
        } else if (!err[0]) {
            abort();
        }
    }
    free(header);
    return 0;
}
