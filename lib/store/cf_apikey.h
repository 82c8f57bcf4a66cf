/* cf_apikey: the API key format and its keyed hash (libsodium).
 *
 * A key reads "cf_<id>_<secret>": <id> is 16 lowercase hex characters (the
 * api_keys row id, public, used to find the row), <secret> is 43 base64url
 * characters (32 random bytes). The key is printed once when created; the
 * database keeps only BLAKE2b-256(key = hashing key, message = whole key).
 *
 * The hashing key is derived from the cluster secret, so a copy of the
 * api_keys table alone does not let anyone test guesses offline. Every node
 * and `clipfarm apikey` must use the same cluster secret file. Without one,
 * a fixed public hashing key is used: the stored hash is still one-way (the
 * secret has 256 random bits) but no longer keyed. */
#ifndef CF_APIKEY_H
#define CF_APIKEY_H

#include <stddef.h>
#include <stdint.h>

#define CF_APIKEY_ID_CHARS     16
#define CF_APIKEY_SECRET_CHARS 43
/* "cf_" + id + "_" + secret + NUL */
#define CF_APIKEY_TEXT_SIZE     (3 + CF_APIKEY_ID_CHARS + 1 + CF_APIKEY_SECRET_CHARS + 1)
#define CF_APIKEY_HASH_BYTES    32
#define CF_APIKEY_HASHKEY_BYTES 32

/* Initialises libsodium (idempotent, thread-safe). Returns 0 or -1. */
int cf_apikey_init(void);

/* Generates a new key: KEY gets the full text (CF_APIKEY_TEXT_SIZE bytes),
 * ID its id (CF_APIKEY_ID_CHARS + 1 bytes). Returns 0, or -1 when libsodium
 * cannot be initialised. */
int cf_apikey_generate(char key[CF_APIKEY_TEXT_SIZE], char id[CF_APIKEY_ID_CHARS + 1]);

/* Checks the format of TEXT and copies its id into ID. Returns 0, or -1 with
 * a reason in err when TEXT is not a clipfarm key. */
int cf_apikey_parse(const char *text, char id[CF_APIKEY_ID_CHARS + 1], char *err, size_t errlen);

/* Derives the hashing key from the cluster secret file's bytes (SECRET,
 * secret_len; surrounding whitespace ignored), or the fixed public key when
 * SECRET is NULL. */
void cf_apikey_hashkey_derive(const void *secret, size_t secret_len,
                              uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES]);

/* Reads PATH (NULL: no cluster secret) and derives the hashing key from it.
 * Returns 0, or -1 with a reason naming the file. */
int cf_apikey_hashkey_load(const char *path, uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES], char *err,
                           size_t errlen);

/* Computes the stored hash of KEY (the full text). */
void cf_apikey_hash(const uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES], const char *key,
                    uint8_t hash[CF_APIKEY_HASH_BYTES]);

/* Returns 1 when KEY hashes to STORED (compared in constant time), else 0. */
int cf_apikey_verify(const uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES], const char *key,
                     const uint8_t *stored, size_t stored_len);

/* Extracts the key from an Authorization header value "Bearer KEY" (scheme
 * case-insensitive). Returns a pointer into VALUE, or NULL when the header is
 * not a bearer credential. */
const char *cf_apikey_from_bearer(const char *value);

/* "whsec_" + 64 hex + NUL */
#define CF_APIKEY_WEBHOOK_SECRET_SIZE (6 + 64 + 1)

/* The webhook secret of key KEY_ID: "whsec_" + hex of a BLAKE2b-256 of
 * "clipfarm webhook v1:" + KEY_ID keyed by HASHKEY (derived from the
 * cluster secret). Every node computes it; nothing stores it; `clipfarm
 * apikey create` shows it once. Receivers use the whole string, as shown,
 * as the HMAC-SHA256 key. */
void cf_apikey_webhook_secret(const uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES], const char *key_id,
                              char out[CF_APIKEY_WEBHOOK_SECRET_SIZE]);

#endif
