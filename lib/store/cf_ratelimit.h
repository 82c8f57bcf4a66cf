/* cf_ratelimit: per-key token buckets kept in Redis, shared by every node.
 *
 * A bucket holds at most `burst` tokens and refills at `rate` tokens per
 * second; each request takes one. The read-refill-take-write step runs as one
 * Lua script, so concurrent requests on any number of nodes never take the
 * same token twice, and the clock is Redis's (TIME), so nodes with skewed
 * clocks agree. Buckets expire once they would be full again. */
#ifndef CF_RATELIMIT_H
#define CF_RATELIMIT_H

#include <hiredis/hiredis.h>
#include <stddef.h>

/* Results of cf_ratelimit_take. */
enum { CF_RATELIMIT_ERROR = -1, CF_RATELIMIT_LIMITED = 0, CF_RATELIMIT_ALLOWED = 1 };

/* Takes one token from the bucket stored at Redis key KEY on CTX.
 * RATE is in tokens per second (> 0), BURST the bucket size (>= 1).
 * Returns CF_RATELIMIT_ALLOWED, CF_RATELIMIT_LIMITED with *retry_after_s set
 * to the seconds until a token is available, or CF_RATELIMIT_ERROR with a
 * reason in err (Redis unreachable; the caller decides whether to fail open). */
int cf_ratelimit_take(redisContext *ctx, const char *key, double rate, double burst,
                      double *retry_after_s, char *err, size_t errlen);

/* Takes up to WANT tokens at once (a node leasing a few tokens so that
 * most requests need no round trip to Redis). *granted gets how many were
 * taken (0 when the bucket is dry, with *retry_after_s set). Returns 0, or -1
 * with a reason in err. */
int cf_ratelimit_take_n(redisContext *ctx, const char *key, double rate, double burst, int want,
                        int *granted, double *retry_after_s, char *err, size_t errlen);

#endif
