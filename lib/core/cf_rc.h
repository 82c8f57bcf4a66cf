/* cf_rc: what a return value means, the same in every module of lib/ and
 * node/ (written down once, here).
 *
 *   0      success.
 *   -1     failed; a one-line reason is in the caller's err buffer (or the
 *          object's errstr). A caller that does not need to tell failures
 *          apart tests `< 0`.
 *   < -1   a named failure the caller must tell apart from others, from
 *          the module's own enum (CF_DB_NOT_FOUND, CF_BLOB_TOO_LARGE,
 *          CF_BLOB_PULL_CORRUPT, ...), each documented with the functions
 *          that return it. One outcome has one number everywhere:
 *          CF_RC_UNAVAILABLE (-6) is "a server (Postgres, Redis, a peer) was
 *          unreachable or timed out: try again later" in every module that
 *          can say it, and no module uses -6 for anything else.
 *   > 0    for functions that count, the count; for functions that ask or
 *          wait, 1 "yes / got one" and 0 "no / none in time" (cf_queue_take,
 *          cf_ratelimit_take, cf_cache_set, cf_updates_next), -1 an error.
 *   NULL   from a constructor or a getter that allocates: failed, reason in
 *          err.
 *
 * HTTP handlers (node/api) are the one exception: they return the status
 * of the response they sent (cf_api_internal.h). */
#ifndef CF_RC_H
#define CF_RC_H

#define CF_RC_OK          0
#define CF_RC_ERROR       (-1)
#define CF_RC_UNAVAILABLE (-6)

#endif
