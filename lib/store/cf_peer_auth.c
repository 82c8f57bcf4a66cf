#define _GNU_SOURCE
#include "cf_peer_auth.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int cf_peer_auth_init(cf_peer_auth_t *auth, const uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES])
{
    static const char context[] = "clipfarm peer http v1";
    memset(auth, 0, sizeof *auth);
    uint8_t public_key[CF_APIKEY_HASHKEY_BYTES];
    cf_apikey_hashkey_derive(NULL, 0, public_key);
    /* Without a cluster secret the hashing key is public: so would be a
     * credential derived from it. */
    if (sodium_memcmp(public_key, hashkey, sizeof public_key) == 0)
        return -1;
    crypto_generichash(auth->key, sizeof auth->key, (const unsigned char *)context,
                       sizeof context - 1, hashkey, CF_APIKEY_HASHKEY_BYTES);
    auth->set = true;
    return 0;
}

/* MAC of "v1\nTIME\nMETHOD\nPATH" as lowercase hex (65 bytes). */
static void s_mac(const cf_peer_auth_t *auth, long long when, const char *method, const char *path,
                  char hex[65])
{
    char message[1200];
    int n = snprintf(message, sizeof message, "v1\n%lld\n%s\n%s", when, method, path);
    if (n < 0 || (size_t)n >= sizeof message)
        n = (int)sizeof message - 1; /* paths are short; a cut one never matches */
    uint8_t mac[32];
    crypto_generichash(mac, sizeof mac, (const unsigned char *)message, (size_t)n, auth->key,
                       sizeof auth->key);
    sodium_bin2hex(hex, 65, mac, sizeof mac);
}

int cf_peer_auth_line(const cf_peer_auth_t *auth, const char *method, const char *path,
                      long long now, char *out, size_t outlen)
{
    if (!auth || !auth->set)
        return -1;
    char hex[65];
    s_mac(auth, now, method, path, hex);
    int n = snprintf(out, outlen, CF_PEER_AUTH_HEADER ": v1 %lld %s", now, hex);
    return n > 0 && (size_t)n < outlen ? 0 : -1;
}

bool cf_peer_auth_verify(const cf_peer_auth_t *auth, const char *value, const char *method,
                         const char *path, long long now)
{
    long long when = 0;
    char hex[80] = "";
    if (!auth || !auth->set || !value || sscanf(value, "v1 %lld %79s", &when, hex) != 2 ||
        strlen(hex) != 64)
        return false;
    /* Compared this way round, a hostile TIME cannot overflow. */
    if (when < now - CF_PEER_AUTH_MAX_SKEW_S || when > now + CF_PEER_AUTH_MAX_SKEW_S)
        return false;
    char expected[65];
    s_mac(auth, when, method, path, expected);
    return sodium_memcmp(expected, hex, 64) == 0;
}

int cf_peer_auth_sign(void *arg, const char *method, const char *path, char *out, size_t outlen)
{
    return cf_peer_auth_line(arg, method, path, (long long)time(NULL), out, outlen);
}
