/* cf_peer_auth: the credential the nodes of a cluster present to each
 * other's HTTP API (X-Clipfarm-Peer-Auth), never a user's API key.
 *
 * The header reads "v1 TIME MAC": MAC is the BLAKE2b-256 (hex) of
 * "v1\nTIME\nMETHOD\nPATH" keyed by a key derived from the API key hashing
 * key (itself derived from the cluster secret, cf_apikey.h), TIME the
 * sender's Unix time. A receiver accepts it for that method and path while
 * its own clock is within CF_PEER_AUTH_MAX_SKEW_S of TIME, so a copy seen
 * on the wire fetches the same path for two minutes at most. A node
 * without a cluster secret (the public hashing key) has no peer key:
 * it neither sends nor accepts a credential. */
#ifndef CF_PEER_AUTH_H
#define CF_PEER_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_apikey.h"

#define CF_PEER_AUTH_HEADER     "X-Clipfarm-Peer-Auth"
#define CF_PEER_AUTH_MAX_SKEW_S 120
/* "X-Clipfarm-Peer-Auth: v1 " + 20 digits + " " + 64 hex + NUL, rounded up */
#define CF_PEER_AUTH_LINE_SIZE 128

/* The peer key; a value (no resources), zero when unset. */
typedef struct {
    uint8_t key[32];
    bool set;
} cf_peer_auth_t;

/* Derives the peer key from HASHKEY. Returns 0, or -1 (AUTH left unset)
 * when HASHKEY is the public one of a node without a cluster secret. */
int cf_peer_auth_init(cf_peer_auth_t *auth, const uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES]);

/* Writes the header line ("X-Clipfarm-Peer-Auth: v1 TIME MAC", no CRLF)
 * for METHOD PATH made at NOW (Unix seconds). Returns 0, or -1 when AUTH is
 * unset or the line does not fit OUT. */
int cf_peer_auth_line(const cf_peer_auth_t *auth, const char *method, const char *path,
                      long long now, char *out, size_t outlen);

/* True when VALUE (the header's value, as received) is a credential made
 * with AUTH's key for METHOD PATH within CF_PEER_AUTH_MAX_SKEW_S of NOW.
 * Compares in constant time; any malformed VALUE is false. */
bool cf_peer_auth_verify(const cf_peer_auth_t *auth, const char *value, const char *method,
                         const char *path, long long now);

/* cf_peer_auth_line for the current time, in the shape of a request
 * signer (cf_blob_pull_sign_fn): ARG is a const cf_peer_auth_t *. */
int cf_peer_auth_sign(void *arg, const char *method, const char *path, char *out, size_t outlen);

#endif
