/* cf_source_policy: what a composition may make a node read or fetch.
 *
 * A composition comes from an API client, and a node reads its sources with
 * the node's own rights: without a policy any key could read the node's
 * files (file:///etc/...) or make it talk to services only the node can
 * reach (http://127.0.0.1:6379/, the cloud metadata address, the LAN).
 *
 *   file://   allowed only under the operator's media roots (--media-root).
 *             The *resolved* path is checked (realpath: "..", symlinks and
 *             %-escapes cannot leave a root). No roots: file:// refused.
 *   http(s):  the address actually connected to (checked in libcurl's
 *             open-socket callback, so redirects and DNS rebinding are
 *             covered) must not be loopback, private, link-local, CGNAT,
 *             multicast, reserved or unspecified, nor an IPv4-mapped,
 *             -compatible, NAT64 or 6to4 form of one, unless it lies in a
 *             network the operator allowed (--allow-source-net CIDR).
 *
 * `clipfarm render` (a user on their own machine) runs without a policy
 * (cf_source_policy_open): any readable file, any address.
 *
 * A policy is built once at start-up and then only read: it is safe to
 * share between threads. */
#ifndef CF_SOURCE_POLICY_H
#define CF_SOURCE_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct cf_source_policy_t cf_source_policy_t;

/* A restricted policy: no media roots, no allowed internal networks.
 * Returns NULL when out of memory. */
cf_source_policy_t *cf_source_policy_new(void);

/* The unrestricted policy of `clipfarm render` (static; never destroy). */
const cf_source_policy_t *cf_source_policy_open(void);

void cf_source_policy_destroy(cf_source_policy_t **self_p);

/* Adds a media root. DIR must be an existing directory; it is stored
 * resolved. Returns 0, or -1 with a reason in err. */
int cf_source_policy_add_root(cf_source_policy_t *self, const char *dir, char *err, size_t errlen);

/* Allows a network, "10.1.0.0/16", "fd00::/8" or a single address. Returns
 * 0, or -1 with a reason in err. */
int cf_source_policy_add_net(cf_source_policy_t *self, const char *cidr, char *err, size_t errlen);

/* Adds each item of LIST, separated by any of SEPS (e.g. ":" for roots,
 * ",\n" for nets). Returns 0 or -1 (err names the item). */
int cf_source_policy_add_roots(cf_source_policy_t *self, const char *list, const char *seps,
                               char *err, size_t errlen);
int cf_source_policy_add_nets(cf_source_policy_t *self, const char *list, const char *seps,
                              char *err, size_t errlen);

/* Limits applied to downloads (0: the fetcher's defaults). */
void cf_source_policy_set_limits(cf_source_policy_t *self, uint64_t max_source_bytes,
                                 long fetch_timeout_s);
uint64_t cf_source_policy_max_bytes(const cf_source_policy_t *self);
long cf_source_policy_fetch_timeout_s(const cf_source_policy_t *self);

int cf_source_policy_root_count(const cf_source_policy_t *self);
const char *cf_source_policy_root(const cf_source_policy_t *self, int i);

/* True for a policy made by cf_source_policy_new. */
bool cf_source_policy_restricted(const cf_source_policy_t *self);

/* Resolves PATH (already %-decoded, absolute) and checks it against the
 * roots. Returns 0 with the resolved path in RESOLVED; -1 with a reason in
 * err that never reveals whether a file outside the roots exists:
 * "outside the media roots", "file:// sources are disabled on this node
 * (start it with --media-root DIR)"; or -2 with "no such file" for a path
 * inside a root that does not exist. */
int cf_source_policy_check_path(const cf_source_policy_t *self, const char *path, char *resolved,
                                size_t resolved_len, char *err, size_t errlen);

/* True when a connection to ADDR is allowed. */
bool cf_source_policy_addr_allowed(const cf_source_policy_t *self, const struct sockaddr *addr);

/* True when ADDR is one of the internal or special ranges above. */
bool cf_source_addr_is_internal(const struct sockaddr *addr);

/* Checks a source reference as far as possible without any I/O on the
 * network: file:// against the roots (resolved), http(s) hosts that are IP
 * literals in any form the resolver accepts (127.1, 2130706433, 0x7f.1,
 * [::1], [::ffff:127.0.0.1]) against the address rules. Returns 0 when the
 * source may be used (a host name is checked again at connect time, a file
 * inside a root that is not there yet when the render opens it), -1 with a
 * reason in err. */
int cf_source_policy_check_source(const cf_source_policy_t *self, const char *source, char *err,
                                  size_t errlen);

/* Decodes the %XX escapes of a file:// URL's path into OUT. Returns 0, or
 * -1 on a malformed escape, an escaped NUL or when it does not fit. */
int cf_source_decode_file_url(const char *source, char *out, size_t outlen);

#endif
