#include "cf_apikey.h"

#include <ctype.h>
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Domain separation: the same cluster secret also keys beacons' MACs. */
static const char s_context[] = "clipfarm api key hashing v1";

int cf_apikey_init(void)
{
    /* sodium_init is thread-safe and returns 1 when already initialised. */
    return sodium_init() < 0 ? -1 : 0;
}

int cf_apikey_generate(char key[CF_APIKEY_TEXT_SIZE], char id[CF_APIKEY_ID_CHARS + 1])
{
    if (cf_apikey_init() < 0)
        return -1;
    uint8_t id_bytes[CF_APIKEY_ID_CHARS / 2];
    uint8_t secret[32];
    randombytes_buf(id_bytes, sizeof id_bytes);
    randombytes_buf(secret, sizeof secret);
    sodium_bin2hex(id, CF_APIKEY_ID_CHARS + 1, id_bytes, sizeof id_bytes);
    char secret_text[CF_APIKEY_SECRET_CHARS + 1];
    sodium_bin2base64(secret_text, sizeof secret_text, secret, sizeof secret,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    snprintf(key, CF_APIKEY_TEXT_SIZE, "cf_%s_%s", id, secret_text);
    sodium_memzero(secret, sizeof secret);
    sodium_memzero(secret_text, sizeof secret_text);
    return 0;
}

int cf_apikey_parse(const char *text, char id[CF_APIKEY_ID_CHARS + 1], char *err, size_t errlen)
{
    if (!text || strlen(text) != CF_APIKEY_TEXT_SIZE - 1 || strncmp(text, "cf_", 3) ||
        text[3 + CF_APIKEY_ID_CHARS] != '_') {
        snprintf(err, errlen, "not a clipfarm API key (expected cf_<id>_<secret>)");
        return -1;
    }
    const char *p = text + 3;
    for (int i = 0; i < CF_APIKEY_ID_CHARS; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f'))) {
            snprintf(err, errlen, "not a clipfarm API key (bad id)");
            return -1;
        }
    const char *secret = p + CF_APIKEY_ID_CHARS + 1;
    for (int i = 0; i < CF_APIKEY_SECRET_CHARS; i++) {
        char c = secret[i];
        if (!(isalnum((unsigned char)c) || c == '-' || c == '_')) {
            snprintf(err, errlen, "not a clipfarm API key (bad secret)");
            return -1;
        }
    }
    memcpy(id, p, CF_APIKEY_ID_CHARS);
    id[CF_APIKEY_ID_CHARS] = '\0';
    return 0;
}

void cf_apikey_hashkey_derive(const void *secret, size_t secret_len,
                              uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES])
{
    const unsigned char *bytes = secret;
    while (bytes && secret_len && isspace(bytes[0])) {
        bytes++;
        secret_len--;
    }
    while (bytes && secret_len && isspace(bytes[secret_len - 1]))
        secret_len--;
    crypto_generichash_state state;
    crypto_generichash_init(&state, NULL, 0, CF_APIKEY_HASHKEY_BYTES);
    crypto_generichash_update(&state, (const unsigned char *)s_context, sizeof s_context);
    if (bytes && secret_len)
        crypto_generichash_update(&state, bytes, secret_len);
    crypto_generichash_final(&state, hashkey, CF_APIKEY_HASHKEY_BYTES);
}

int cf_apikey_hashkey_load(const char *path, uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES], char *err,
                           size_t errlen)
{
    if (cf_apikey_init() < 0) {
        snprintf(err, errlen, "libsodium cannot be initialised");
        return -1;
    }
    if (!path) {
        cf_apikey_hashkey_derive(NULL, 0, hashkey);
        return 0;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read cluster secret '%s': %s", path, strerror(errno));
        return -1;
    }
    unsigned char data[4096];
    size_t len = fread(data, 1, sizeof data, f);
    int too_long = len == sizeof data && fgetc(f) != EOF;
    int failed = ferror(f);
    fclose(f);
    if (failed || too_long || len == 0) {
        snprintf(err, errlen, "cluster secret '%s' is %s", path,
                 failed     ? "unreadable"
                 : too_long ? "longer than 4 KiB"
                            : "empty");
        sodium_memzero(data, sizeof data);
        return -1;
    }
    cf_apikey_hashkey_derive(data, len, hashkey);
    sodium_memzero(data, sizeof data);
    return 0;
}

void cf_apikey_hash(const uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES], const char *key,
                    uint8_t hash[CF_APIKEY_HASH_BYTES])
{
    crypto_generichash(hash, CF_APIKEY_HASH_BYTES, (const unsigned char *)key, strlen(key), hashkey,
                       CF_APIKEY_HASHKEY_BYTES);
}

int cf_apikey_verify(const uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES], const char *key,
                     const uint8_t *stored, size_t stored_len)
{
    if (!key || !stored || stored_len != CF_APIKEY_HASH_BYTES)
        return 0;
    uint8_t hash[CF_APIKEY_HASH_BYTES];
    cf_apikey_hash(hashkey, key, hash);
    return sodium_memcmp(hash, stored, CF_APIKEY_HASH_BYTES) == 0;
}

const char *cf_apikey_from_bearer(const char *value)
{
    if (!value || strncasecmp(value, "Bearer ", 7))
        return NULL;
    value += 7;
    while (*value == ' ')
        value++;
    return *value ? value : NULL;
}

void cf_apikey_webhook_secret(const uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES], const char *key_id,
                              char out[CF_APIKEY_WEBHOOK_SECRET_SIZE])
{
    static const char context[] = "clipfarm webhook v1:";
    crypto_generichash_state state;
    unsigned char digest[32];
    crypto_generichash_init(&state, hashkey, CF_APIKEY_HASHKEY_BYTES, sizeof digest);
    crypto_generichash_update(&state, (const unsigned char *)context, sizeof context - 1);
    crypto_generichash_update(&state, (const unsigned char *)key_id, strlen(key_id));
    crypto_generichash_final(&state, digest, sizeof digest);
    memcpy(out, "whsec_", 6);
    sodium_bin2hex(out + 6, 65, digest, sizeof digest);
    sodium_memzero(digest, sizeof digest);
}
