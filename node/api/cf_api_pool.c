/* cf_api_pool: small blocking pools of the connections request threads
 * share (Redis contexts for rate limits and pings, queue producers): HTTP
 * threads far outnumber the connections worth keeping open. */
#define _GNU_SOURCE
#include <stdlib.h>

#include "cf_api_internal.h"
#include "cf_log.h"
#include "cf_queue.h"
#include "cf_redis.h"

#define S_REDIS_MAX 16
#define S_QUEUE_MAX 4

static void s_pool_init(cf_api_pool_t *pool, int max)
{
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->freed, NULL);
    pool->max = max;
    pool->idle = calloc((size_t)max, sizeof(void *));
}

static void s_pool_drain(cf_api_pool_t *pool, void (*destroy)(void *item))
{
    for (int i = 0; i < pool->idle_count; i++)
        destroy(pool->idle[i]);
    free(pool->idle);
    pool->idle = NULL;
    pool->idle_count = 0;
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->freed);
}

void *cf_api_pool_get(cf_api_pool_t *pool, void *(*create)(void *arg), void *arg)
{
    pthread_mutex_lock(&pool->lock);
    while (pool->idle_count == 0 && pool->created >= pool->max)
        pthread_cond_wait(&pool->freed, &pool->lock);
    if (pool->idle_count > 0) {
        void *item = pool->idle[--pool->idle_count];
        pthread_mutex_unlock(&pool->lock);
        return item;
    }
    pool->created++;
    pthread_mutex_unlock(&pool->lock);
    /* Connecting happens outside the lock: others keep using idle items. */
    void *item = create(arg);
    if (!item) {
        pthread_mutex_lock(&pool->lock);
        pool->created--;
        pthread_cond_signal(&pool->freed);
        pthread_mutex_unlock(&pool->lock);
    }
    return item;
}

void cf_api_pool_put(cf_api_pool_t *pool, void *item)
{
    pthread_mutex_lock(&pool->lock);
    if (item)
        pool->idle[pool->idle_count++] = item;
    else
        pool->created--; /* the caller dropped a broken item */
    pthread_cond_signal(&pool->freed);
    pthread_mutex_unlock(&pool->lock);
}

/* ------------------------------------------------------------ Redis */

typedef struct {
    cf_api_t *api;
    char *err;
    size_t errlen;
} s_create_arg_t;

static void *s_redis_create(void *arg)
{
    s_create_arg_t *a = arg;
    return cf_redis_connect(a->api->redis_url, 1000, a->err, a->errlen);
}

static void s_redis_destroy(void *item)
{
    redisFree(item);
}

redisContext *cf_api_redis_get(cf_api_t *api, char *err, size_t errlen)
{
    s_create_arg_t arg = {api, err, errlen};
    return cf_api_pool_get(&api->redis_pool, s_redis_create, &arg);
}

void cf_api_redis_put(cf_api_t *api, redisContext *ctx)
{
    if (!ctx)
        return; /* cf_api_redis_get failed: nothing was lent */
    if (ctx->err) {
        redisFree(ctx);
        ctx = NULL; /* tells the pool one connection is gone */
    }
    cf_api_pool_put(&api->redis_pool, ctx);
}

/* ------------------------------------------------------------ queue */

static void *s_queue_create(void *arg)
{
    cf_api_t *api = arg;
    cf_queue_options_t qo;
    cf_queue_options_default(&qo);
    qo.url = api->redis_url;
    qo.prefix = api->redis_prefix;
    qo.timeout_ms = 2000;
    char err[256];
    cf_queue_t *q = cf_queue_new(&qo, err, sizeof err);
    if (!q)
        cf_log_warn("api", "queue client: %s", err);
    return q;
}

cf_queue_t *cf_api_queue_get(cf_api_t *api)
{
    return cf_api_pool_get(&api->queue_pool, s_queue_create, api);
}

void cf_api_queue_put(cf_api_t *api, cf_queue_t *q)
{
    cf_api_pool_put(&api->queue_pool, q);
}

static void s_queue_destroy(void *item)
{
    cf_queue_t *q = item;
    cf_queue_destroy(&q);
}

/* ------------------------------------------------------------ lifecycle */

void cf_api_pools_init(cf_api_t *api)
{
    s_pool_init(&api->redis_pool, S_REDIS_MAX);
    s_pool_init(&api->queue_pool, S_QUEUE_MAX);
}

void cf_api_pools_drain(cf_api_t *api)
{
    s_pool_drain(&api->redis_pool, s_redis_destroy);
    s_pool_drain(&api->queue_pool, s_queue_destroy);
}
