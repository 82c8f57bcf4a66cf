/* cf_redis: hiredis connections from redis:// URLs. */
#ifndef CF_REDIS_H
#define CF_REDIS_H

#include <hiredis/hiredis.h>
#include <stddef.h>

/* Connects to URL (redis://[[user]:password@]host[:port][/db]), authenticates
 * and selects the database, with timeout_ms for connect and for each command.
 * Returns the context, or NULL with a one-line reason in err. */
redisContext *cf_redis_connect(const char *url, int timeout_ms, char *err, size_t errlen);

/* Runs PING on CTX. Returns 0 when Redis answered PONG, -1 otherwise. */
int cf_redis_ping(redisContext *ctx, char *err, size_t errlen);

#endif
