/* cf_identity: who a node is and the secret its cluster shares.
 *
 * The identity is a random node id (UUID) and a Curve25519 keypair for CURVE,
 * created on a node's first start in DATA_DIR/identity (mode 0600, the data
 * dir 0700) and loaded on every later start. The cluster secret is 32 random
 * bytes, written as 64 hex digits by `clipfarm secret generate`; it keys the
 * MACs of beacons and registry rows (libsodium crypto_auth). */
#ifndef CF_IDENTITY_H
#define CF_IDENTITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CF_IDENTITY_ID_LEN  37 /* UUID text with its NUL */
#define CF_IDENTITY_Z85_LEN 41 /* Z85 text of a 32-byte key with its NUL */
#define CF_SECRET_SIZE      32
#define CF_SECRET_HEX_LEN   65 /* 64 hex digits and a NUL */
#define CF_MAC_HEX_LEN      65

typedef struct cf_identity_t cf_identity_t;

/* Loads DATA_DIR/identity, creating DATA_DIR (0700) and the identity (0600)
 * when absent; two processes starting at once end up with the same one.
 * Refuses a file readable by group or others, a malformed one, or one whose
 * public key does not belong to its secret key. Returns NULL with a one-line
 * reason in err. */
cf_identity_t *cf_identity_load(const char *data_dir, char *err, size_t errlen);

/* Frees the identity, wiping the secret key. Safe on NULL; NULLs *self_p. */
void cf_identity_destroy(cf_identity_t **self_p);

/* True when cf_identity_load created the identity (first start). */
bool cf_identity_created(const cf_identity_t *self);

/* The node id (canonical lowercase UUID text). */
const char *cf_identity_node_id(const cf_identity_t *self);

/* The keys as Z85 text (for zsock_set_curve_*) and the public key as bytes. */
const char *cf_identity_public_z85(const cf_identity_t *self);
const char *cf_identity_secret_z85(const cf_identity_t *self);
const uint8_t *cf_identity_public_key(const cf_identity_t *self);

/* A new random UUID (version 4) as text. */
void cf_identity_new_uuid(char out[CF_IDENTITY_ID_LEN]);

/* Z85 <-> 32-byte key. Return 0, or -1 when the text is not a Z85 key. */
int cf_key_to_z85(const uint8_t key[32], char out[CF_IDENTITY_Z85_LEN]);
int cf_key_from_z85(const char *text, uint8_t key[32]);

typedef struct cf_secret_t cf_secret_t;

/* Writes a new random cluster secret as 64 lowercase hex digits. */
void cf_secret_generate_hex(char out[CF_SECRET_HEX_LEN]);

/* Loads the cluster secret from PATH: 64 hex digits, surrounding whitespace
 * and '#' comment lines allowed. Returns NULL with a reason in err. The key
 * lives in guarded memory (sodium_malloc) and is wiped on destroy. When the
 * file is readable by group or others, *loose_mode (may be NULL) is set so
 * the caller can warn. */
cf_secret_t *cf_secret_load(const char *path, bool *loose_mode, char *err, size_t errlen);
void cf_secret_destroy(cf_secret_t **self_p);

/* The 32-byte key (for cf_beacon_encode / cf_beacon_decode). */
const uint8_t *cf_secret_key(const cf_secret_t *self);

/* MAC of DATA under the secret, as 64 hex digits; and its constant-time
 * check (false for malformed hex). */
void cf_secret_mac_hex(const cf_secret_t *self, const void *data, size_t len,
                       char out[CF_MAC_HEX_LEN]);
bool cf_secret_verify_hex(const cf_secret_t *self, const void *data, size_t len, const char *hex);

#endif
