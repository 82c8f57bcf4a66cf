#include "cf_queue.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cf_log.h"
#include "cf_redis.h"

/* Wake tokens kept at most: enough to wake every idle consumer of a cluster;
 * more would only cause empty wake-ups. */
#define S_WAKE_CAP 256

/* An item in a Redis list is "<p>:<id>:<ms>" with p = h, d or l and ms the
 * push time (Redis' clock, ms since the epoch): the priority travels with
 * the id, so the reaper puts an item back where it came from, and the time
 * with both, so an item keeps its age. "<p>:<id>" (no time) is read too. */
#define S_ITEM_MIN (2 + CF_DB_ID_LEN - 1)
#define S_ITEM_MAX 64

static const char s_priority_letter[CF_PRIORITY_COUNT] = {'h', 'd', 'l'};

/* Takes the item due first into the processing list, atomically: of the
 * oldest item of high, default and low (the consuming end of each list),
 * the one whose push time + class x aging is smallest (ties: the higher
 * class). KEYS = high, default, low, processing; ARGV[1] = aging in ms. */
static const char s_take_script[] =
    "local aging = tonumber(ARGV[1])\n"
    "local best, due = nil, nil\n"
    "for i = 1, 3 do\n"
    "  local item = redis.call('LINDEX', KEYS[i], -1)\n"
    "  if item then\n"
    "    local ms = tonumber(string.match(item, '^%a:[%x%-]+:(%d+)$')) or 0\n"
    "    local key = ms + (i - 1) * aging\n"
    "    if best == nil or key < due then best, due = i, key end\n"
    "  end\n"
    "end\n"
    "if best == nil then return false end\n"
    "return redis.call('LMOVE', KEYS[best], KEYS[4], 'RIGHT', 'LEFT')\n";

/* Pushes the items of ARGV ("<p>:<id>") on their intake lists, stamped with
 * the Redis clock, and one wake token per item (at most ARGV[1] kept).
 * KEYS = high, default, low, wake; ARGV[1] = wake cap, ARGV[2..] = items. */
static const char s_push_script[] =
    "local t = redis.call('TIME')\n"
    "local ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))\n"
    "local lists = {h = KEYS[1], d = KEYS[2], l = KEYS[3]}\n"
    "for i = 2, #ARGV do\n"
    "  local item = ARGV[i]\n"
    "  redis.call('LPUSH', lists[string.sub(item, 1, 1)] or KEYS[2], item .. ':' .. ms)\n"
    "end\n"
    "local cap = tonumber(ARGV[1])\n"
    "for i = 1, math.min(#ARGV - 1, cap) do redis.call('LPUSH', KEYS[4], '1') end\n"
    "redis.call('LTRIM', KEYS[4], 0, cap - 1)\n"
    "return #ARGV - 1\n";

/* Moves a processing list (KEYS[1]) back to the consuming end of the
 * intake lists. ARGV[1] = key prefix. Returns the number of items moved. */
static const char s_recover_script[] =
    "local lists = {h = ARGV[1] .. 'q:high', d = ARGV[1] .. 'q:default', l = ARGV[1] .. 'q:low'}\n"
    "local moved = 0\n"
    "while true do\n"
    "  local item = redis.call('RPOP', KEYS[1])\n"
    "  if not item then break end\n"
    "  redis.call('RPUSH', lists[string.sub(item, 1, 1)] or lists.d, item)\n"
    "  moved = moved + 1\n"
    "end\n"
    "return moved\n";

/* Returns the processing lists of consumers whose heartbeat expired to the
 * consuming end of their intake lists. KEYS[1] = consumer registry;
 * ARGV[1] = key prefix. Returns the number of items moved. (Computed key
 * names are fine on a single Redis; clipfarm does not use Redis Cluster.) */
static const char s_reap_script[] =
    "local moved = 0\n"
    "local lists = {h = ARGV[1] .. 'q:high', d = ARGV[1] .. 'q:default', l = ARGV[1] .. 'q:low'}\n"
    "for _, c in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
    "  if redis.call('EXISTS', ARGV[1] .. 'q:alive:' .. c) == 0 then\n"
    "    local proc = ARGV[1] .. 'q:proc:' .. c\n"
    "    while true do\n"
    "      local item = redis.call('RPOP', proc)\n"
    "      if not item then break end\n"
    "      redis.call('RPUSH', lists[string.sub(item, 1, 1)] or lists.d, item)\n"
    "      moved = moved + 1\n"
    "    end\n"
    "    redis.call('SREM', KEYS[1], c)\n"
    "  end\n"
    "end\n"
    "return moved\n";

/* Every item in an intake or processing list, in one atomic snapshot.
 * KEYS[1..3] = intake lists, KEYS[4] = registry; ARGV[1] = prefix. */
static const char s_snapshot_script[] =
    "local all = {}\n"
    "local function add(key)\n"
    "  for _, item in ipairs(redis.call('LRANGE', key, 0, -1)) do all[#all + 1] = item end\n"
    "end\n"
    "for i = 1, 3 do add(KEYS[i]) end\n"
    "for _, c in ipairs(redis.call('SMEMBERS', KEYS[4])) do add(ARGV[1] .. 'q:proc:' .. c) end\n"
    "return all\n";

struct cf_queue {
    char *url;
    char *prefix;
    char *consumer;
    int timeout_ms;
    int ttl_ms;
    int backoff_max_ms;
    int aging_ms;
    redisContext *ctx;
    int backoff_ms;
    int64_t next_attempt_ms;
    int64_t last_heartbeat_ms;
    char key_list[CF_PRIORITY_COUNT][160];
    char key_proc[320];
    char key_alive[320];
    char key_wake[160];
    char key_consumers[160];
    char key_marker[160];
};

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void cf_queue_options_default(cf_queue_options_t *opts)
{
    *opts = (cf_queue_options_t){
        .url = NULL,
        .prefix = "cf:",
        .consumer = NULL,
        .timeout_ms = 5000,
        .heartbeat_ttl_ms = 10000,
        .backoff_max_ms = 2000,
        .aging_ms = CF_QUEUE_AGING_MS,
    };
}

static bool s_valid_name(const char *name)
{
    if (!name || !*name || strlen(name) > 120)
        return false;
    for (const char *p = name; *p; p++)
        if (*p <= ' ' || *p == 127)
            return false;
    return true;
}

cf_queue_t *cf_queue_new(const cf_queue_options_t *opts, char *err, size_t errlen)
{
    if (!opts->url || !*opts->url) {
        snprintf(err, errlen, "no Redis URL");
        return NULL;
    }
    const char *prefix = opts->prefix ? opts->prefix : "cf:";
    if (strlen(prefix) > 100 || (opts->consumer && !s_valid_name(opts->consumer))) {
        snprintf(err, errlen, "key prefix too long or invalid consumer name");
        return NULL;
    }
    if (opts->timeout_ms < 1 || opts->heartbeat_ttl_ms < 300 || opts->backoff_max_ms < 1 ||
        opts->aging_ms < 1) {
        snprintf(err, errlen, "timeouts and aging must be positive (heartbeat TTL >= 300 ms)");
        return NULL;
    }
    cf_queue_t *q = calloc(1, sizeof *q);
    if (!q) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    q->url = strdup(opts->url);
    q->prefix = strdup(prefix);
    q->consumer = opts->consumer ? strdup(opts->consumer) : NULL;
    if (!q->url || !q->prefix || (opts->consumer && !q->consumer)) {
        cf_queue_destroy(&q);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    q->timeout_ms = opts->timeout_ms;
    q->ttl_ms = opts->heartbeat_ttl_ms;
    q->backoff_max_ms = opts->backoff_max_ms;
    q->aging_ms = opts->aging_ms;
    q->backoff_ms = 50;
    for (int p = 0; p < CF_PRIORITY_COUNT; p++)
        snprintf(q->key_list[p], sizeof q->key_list[p], "%sq:%s", prefix,
                 cf_priority_name((cf_priority_t)p));
    snprintf(q->key_wake, sizeof q->key_wake, "%sq:wake", prefix);
    snprintf(q->key_consumers, sizeof q->key_consumers, "%sq:consumers", prefix);
    snprintf(q->key_marker, sizeof q->key_marker, "%sq:reconciled", prefix);
    if (q->consumer) {
        snprintf(q->key_proc, sizeof q->key_proc, "%sq:proc:%s", prefix, q->consumer);
        snprintf(q->key_alive, sizeof q->key_alive, "%sq:alive:%s", prefix, q->consumer);
    }
    return q;
}

void cf_queue_destroy(cf_queue_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_queue_t *q = *self_p;
    if (q->ctx)
        redisFree(q->ctx);
    free(q->url);
    free(q->prefix);
    free(q->consumer);
    free(q);
    *self_p = NULL;
}

/* Makes sure there is a connection, reconnecting at growing intervals while
 * Redis is unreachable. Returns 0 or -1. */
static int s_connected(cf_queue_t *q, char *err, size_t errlen)
{
    if (q->ctx)
        return 0;
    int64_t now = s_now_ms();
    if (now < q->next_attempt_ms) {
        snprintf(err, errlen, "Redis unavailable (next reconnect in %d ms)",
                 (int)(q->next_attempt_ms - now));
        return -1;
    }
    q->ctx = cf_redis_connect(q->url, q->timeout_ms, err, errlen);
    if (!q->ctx) {
        q->next_attempt_ms = now + q->backoff_ms;
        q->backoff_ms =
            q->backoff_ms * 2 > q->backoff_max_ms ? q->backoff_max_ms : q->backoff_ms * 2;
        return -1;
    }
    q->backoff_ms = 50;
    q->next_attempt_ms = 0;
    return 0;
}

/* After a NULL reply the hiredis context is unusable: drop it. */
static void s_disconnect(cf_queue_t *q, char *err, size_t errlen)
{
    snprintf(err, errlen, "Redis connection failed: %s",
             q->ctx && q->ctx->errstr[0] ? q->ctx->errstr : "no reply");
    if (q->ctx)
        redisFree(q->ctx);
    q->ctx = NULL;
}

/* Runs one command given as argv. Returns the reply (caller frees), or NULL
 * with err set for a dead connection or an error reply. */
static redisReply *s_command(cf_queue_t *q, int argc, const char **argv, char *err, size_t errlen)
{
    if (s_connected(q, err, errlen) < 0)
        return NULL;
    redisReply *reply = redisCommandArgv(q->ctx, argc, argv, NULL);
    if (!reply) {
        s_disconnect(q, err, errlen);
        return NULL;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "Redis %s: %s", argv[0], reply->str);
        freeReplyObject(reply);
        return NULL;
    }
    return reply;
}

/* Sends COUNT pipelined commands already appended to the context and reads
 * their replies. Returns 0, or -1 at the first failure (the connection is
 * dropped on I/O errors so the rest of the replies cannot confuse a later
 * command). */
static int s_pipeline_replies(cf_queue_t *q, int count, char *err, size_t errlen)
{
    int rc = 0;
    for (int i = 0; i < count; i++) {
        void *r = NULL;
        if (redisGetReply(q->ctx, &r) != REDIS_OK || !r) {
            s_disconnect(q, err, errlen);
            return -1;
        }
        redisReply *reply = r;
        if (reply->type == REDIS_REPLY_ERROR && rc == 0) {
            snprintf(err, errlen, "Redis: %s", reply->str);
            rc = -1;
        }
        freeReplyObject(reply);
    }
    return rc;
}

/* The item's text as the lists hold it (with its push time, if it has one). */
static void s_item_text(const cf_queue_item_t *item, char out[S_ITEM_MAX])
{
    if (item->pushed_ms > 0)
        snprintf(out, S_ITEM_MAX, "%c:%s:%lld", s_priority_letter[item->priority], item->id,
                 (long long)item->pushed_ms);
    else
        snprintf(out, S_ITEM_MAX, "%c:%s", s_priority_letter[item->priority], item->id);
}

static int s_item_parse(const char *text, size_t len, cf_queue_item_t *item)
{
    if (len < S_ITEM_MIN || len >= S_ITEM_MAX || text[1] != ':')
        return -1;
    int p;
    for (p = 0; p < CF_PRIORITY_COUNT; p++)
        if (text[0] == s_priority_letter[p])
            break;
    if (p == CF_PRIORITY_COUNT)
        return -1;
    int64_t ms = 0;
    if (len > S_ITEM_MIN) {
        if (text[S_ITEM_MIN] != ':' || len == S_ITEM_MIN + 1 || len > S_ITEM_MIN + 19)
            return -1;
        for (size_t i = S_ITEM_MIN + 1; i < len; i++) {
            if (text[i] < '0' || text[i] > '9')
                return -1;
            ms = ms * 10 + (text[i] - '0');
        }
    }
    item->priority = (cf_priority_t)p;
    item->pushed_ms = ms;
    memcpy(item->id, text + 2, CF_DB_ID_LEN - 1);
    item->id[CF_DB_ID_LEN - 1] = '\0';
    return 0;
}

int cf_queue_push_many(cf_queue_t *q, const cf_queue_item_t *items, int count, char *err,
                       size_t errlen)
{
    if (count <= 0)
        return 0;
    for (int i = 0; i < count; i++) {
        if ((unsigned)items[i].priority >= CF_PRIORITY_COUNT ||
            strlen(items[i].id) != CF_DB_ID_LEN - 1) {
            snprintf(err, errlen, "invalid queue item '%.40s'", items[i].id);
            return -1;
        }
    }
    /* Batches keep one script's arguments bounded. */
    enum { S_BATCH = 1000 };
    const char **argv = calloc(S_BATCH + 9, sizeof *argv);
    char(*texts)[S_ITEM_MAX] = calloc(S_BATCH, sizeof *texts);
    if (!argv || !texts) {
        free(argv);
        free(texts);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    char cap[16];
    snprintf(cap, sizeof cap, "%d", S_WAKE_CAP);
    int rc = 0;
    for (int start = 0; start < count && rc == 0; start += S_BATCH) {
        int n = count - start < S_BATCH ? count - start : S_BATCH;
        int argc = 0;
        argv[argc++] = "EVAL";
        argv[argc++] = s_push_script;
        argv[argc++] = "4";
        argv[argc++] = q->key_list[0];
        argv[argc++] = q->key_list[1];
        argv[argc++] = q->key_list[2];
        argv[argc++] = q->key_wake;
        argv[argc++] = cap;
        for (int i = 0; i < n; i++) {
            cf_queue_item_t plain = items[start + i];
            plain.pushed_ms = 0; /* the script stamps it */
            s_item_text(&plain, texts[i]);
            argv[argc++] = texts[i];
        }
        redisReply *reply = s_command(q, argc, argv, err, errlen);
        if (!reply)
            rc = -1;
        freeReplyObject(reply);
    }
    free(argv);
    free(texts);
    return rc;
}

int cf_queue_push(cf_queue_t *q, const char *id, cf_priority_t priority, char *err, size_t errlen)
{
    cf_queue_item_t item = {.priority = priority};
    snprintf(item.id, sizeof item.id, "%s", id ? id : "");
    return cf_queue_push_many(q, &item, 1, err, errlen);
}

int cf_queue_heartbeat(cf_queue_t *q, char *err, size_t errlen)
{
    if (!q->consumer) {
        snprintf(err, errlen, "not a consumer");
        return -1;
    }
    if (s_connected(q, err, errlen) < 0)
        return -1;
    redisAppendCommand(q->ctx, "SET %s 1 PX %d", q->key_alive, q->ttl_ms);
    redisAppendCommand(q->ctx, "SADD %s %s", q->key_consumers, q->consumer);
    if (s_pipeline_replies(q, 2, err, errlen) < 0)
        return -1;
    q->last_heartbeat_ms = s_now_ms();
    return 0;
}

int cf_queue_take(cf_queue_t *q, int timeout_ms, cf_queue_item_t *item, char *err, size_t errlen)
{
    if (!q->consumer) {
        snprintf(err, errlen, "not a consumer");
        return -1;
    }
    int64_t deadline = s_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        /* Alive before holding anything, and on every third of the TTL. */
        if (s_now_ms() - q->last_heartbeat_ms > q->ttl_ms / 3 &&
            cf_queue_heartbeat(q, err, errlen) < 0)
            return -1;
        char aging[16];
        snprintf(aging, sizeof aging, "%d", q->aging_ms);
        const char *argv[] = {"EVAL",         s_take_script,  "4",         q->key_list[0],
                              q->key_list[1], q->key_list[2], q->key_proc, aging};
        redisReply *reply = s_command(q, 8, argv, err, errlen);
        if (!reply)
            return -1;
        if (reply->type == REDIS_REPLY_STRING) {
            int ok = s_item_parse(reply->str, reply->len, item);
            if (ok < 0) {
                /* Not ours: drop it from the processing list, never loop on it. */
                snprintf(err, errlen, "malformed queue item '%.40s' dropped", reply->str);
                const char *rem[] = {"LREM", q->key_proc, "1", reply->str};
                freeReplyObject(s_command(q, 4, rem, err, errlen));
                freeReplyObject(reply);
                cf_log_warn("queue", "%s", err);
                continue;
            }
            freeReplyObject(reply);
            return 1;
        }
        freeReplyObject(reply);
        int64_t left = deadline - s_now_ms();
        if (left <= 0)
            return 0;
        int block_ms = (int)(left < q->ttl_ms / 3 ? left : q->ttl_ms / 3);
        if (block_ms < 1)
            block_ms = 1;
        /* The socket timeout must outlast the blocking command. */
        struct timeval longer = {(block_ms + q->timeout_ms) / 1000,
                                 ((block_ms + q->timeout_ms) % 1000) * 1000};
        struct timeval normal = {q->timeout_ms / 1000, (q->timeout_ms % 1000) * 1000};
        char block[32];
        snprintf(block, sizeof block, "%d.%03d", block_ms / 1000, block_ms % 1000);
        redisSetTimeout(q->ctx, longer);
        const char *blpop[] = {"BLPOP", q->key_wake, block};
        reply = s_command(q, 3, blpop, err, errlen);
        if (!reply)
            return -1;
        redisSetTimeout(q->ctx, normal);
        freeReplyObject(reply);
    }
}

int cf_queue_ack(cf_queue_t *q, const cf_queue_item_t *item, char *err, size_t errlen)
{
    if (!q->consumer) {
        snprintf(err, errlen, "not a consumer");
        return -1;
    }
    char text[S_ITEM_MAX];
    s_item_text(item, text);
    const char *argv[] = {"LREM", q->key_proc, "1", text};
    redisReply *reply = s_command(q, 4, argv, err, errlen);
    if (!reply)
        return -1;
    freeReplyObject(reply);
    return 0;
}

int cf_queue_recover(cf_queue_t *q, int *returned_p, char *err, size_t errlen)
{
    if (returned_p)
        *returned_p = 0;
    if (!q->consumer) {
        snprintf(err, errlen, "not a consumer");
        return -1;
    }
    const char *argv[] = {"EVAL", s_recover_script, "1", q->key_proc, q->prefix};
    redisReply *reply = s_command(q, 5, argv, err, errlen);
    if (!reply)
        return -1;
    int moved = reply->type == REDIS_REPLY_INTEGER ? (int)reply->integer : 0;
    freeReplyObject(reply);
    if (moved > 0) {
        const char *wake[] = {"LPUSH", q->key_wake, "1"};
        freeReplyObject(s_command(q, 3, wake, err, errlen));
        cf_log_info("queue", "%s: returned %d item(s) its previous process held", q->consumer,
                    moved);
    }
    if (returned_p)
        *returned_p = moved;
    return 0;
}

int cf_queue_reap(cf_queue_t *q, int *returned_p, char *err, size_t errlen)
{
    if (returned_p)
        *returned_p = 0;
    const char *argv[] = {"EVAL", s_reap_script, "1", q->key_consumers, q->prefix};
    redisReply *reply = s_command(q, 5, argv, err, errlen);
    if (!reply)
        return -1;
    int moved = reply->type == REDIS_REPLY_INTEGER ? (int)reply->integer : 0;
    freeReplyObject(reply);
    if (moved > 0) {
        /* Wake consumers for the returned items. */
        const char *wake[] = {"LPUSH", q->key_wake, "1"};
        freeReplyObject(s_command(q, 3, wake, err, errlen));
        cf_log_info("queue", "reaper returned %d item(s) of dead consumers", moved);
    }
    if (returned_p)
        *returned_p = moved;
    return 0;
}

static int s_compare_ids(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int cf_queue_reconcile(cf_queue_t *q, cf_db_t *db, int *pushed_p, char *err, size_t errlen)
{
    if (pushed_p)
        *pushed_p = 0;
    /* The marker goes first: if Redis loses its data while we work, the
     * marker is gone too and the next check asks for another pass. */
    const char *mark[] = {"SET", q->key_marker, "1"};
    redisReply *reply = s_command(q, 3, mark, err, errlen);
    if (!reply)
        return -1;
    freeReplyObject(reply);

    cf_db_queued_t *queued = NULL;
    int count = 0;
    char why[512];
    if (cf_db_composition_queued(db, 1000000, &queued, &count, why, sizeof why) < 0) {
        snprintf(err, errlen, "reconcile: %s", why);
        return -1;
    }
    const char *snap[] = {"EVAL",           s_snapshot_script, "4",
                          q->key_list[0],   q->key_list[1],    q->key_list[2],
                          q->key_consumers, q->prefix};
    reply = s_command(q, 8, snap, err, errlen);
    if (!reply) {
        free(queued);
        return -1;
    }
    /* Ids Redis holds, sorted for lookups. */
    size_t held_count = reply->type == REDIS_REPLY_ARRAY ? reply->elements : 0;
    char **held = calloc(held_count + 1, sizeof *held);
    char(*ids)[CF_DB_ID_LEN] = calloc(held_count + 1, sizeof *ids);
    cf_queue_item_t *missing = calloc((size_t)count + 1, sizeof *missing);
    if (!held || !ids || !missing) {
        free(held);
        free(ids);
        free(missing);
        free(queued);
        freeReplyObject(reply);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    size_t n = 0;
    for (size_t i = 0; i < held_count; i++) {
        redisReply *e = reply->element[i];
        cf_queue_item_t parsed;
        if (e->type == REDIS_REPLY_STRING && s_item_parse(e->str, e->len, &parsed) == 0) {
            memcpy(ids[n], parsed.id, CF_DB_ID_LEN);
            held[n] = ids[n];
            n++;
        }
    }
    qsort(held, n, sizeof *held, s_compare_ids);
    int pushes = 0;
    for (int i = 0; i < count; i++) {
        const char *id = queued[i].id;
        if (!bsearch(&id, held, n, sizeof *held, s_compare_ids)) {
            snprintf(missing[pushes].id, sizeof missing[pushes].id, "%s", id);
            missing[pushes].priority = queued[i].priority;
            pushes++;
        }
    }
    free(held);
    free(ids);
    freeReplyObject(reply);
    free(queued);
    int rc = cf_queue_push_many(q, missing, pushes, err, errlen);
    free(missing);
    if (rc < 0)
        return -1;
    if (pushes > 0)
        cf_log_info("queue", "reconcile pushed %d queued composition(s) Redis did not hold",
                    pushes);
    if (pushed_p)
        *pushed_p = pushes;
    return 0;
}

int cf_queue_needs_reconcile(cf_queue_t *q, bool *needed_p, char *err, size_t errlen)
{
    const char *argv[] = {"EXISTS", q->key_marker};
    redisReply *reply = s_command(q, 2, argv, err, errlen);
    if (!reply)
        return -1;
    *needed_p = reply->type == REDIS_REPLY_INTEGER && reply->integer == 0;
    freeReplyObject(reply);
    return 0;
}

int cf_queue_depth(cf_queue_t *q, int64_t depth[CF_PRIORITY_COUNT], char *err, size_t errlen)
{
    if (s_connected(q, err, errlen) < 0)
        return -1;
    for (int p = 0; p < CF_PRIORITY_COUNT; p++)
        redisAppendCommand(q->ctx, "LLEN %s", q->key_list[p]);
    for (int p = 0; p < CF_PRIORITY_COUNT; p++) {
        void *r = NULL;
        if (redisGetReply(q->ctx, &r) != REDIS_OK || !r) {
            s_disconnect(q, err, errlen);
            return -1;
        }
        redisReply *reply = r;
        depth[p] = reply->type == REDIS_REPLY_INTEGER ? reply->integer : 0;
        freeReplyObject(reply);
    }
    return 0;
}

int cf_queue_node_heartbeat(cf_queue_t *q, const char *node_id, const char *payload, int ttl_ms,
                            char *err, size_t errlen)
{
    if (!s_valid_name(node_id) || ttl_ms < 1) {
        snprintf(err, errlen, "invalid node id or TTL");
        return -1;
    }
    char key[320], ttl[16];
    snprintf(key, sizeof key, "%snode:%s", q->prefix, node_id);
    snprintf(ttl, sizeof ttl, "%d", ttl_ms);
    const char *argv[] = {"SET", key, payload ? payload : "1", "PX", ttl};
    redisReply *reply = s_command(q, 5, argv, err, errlen);
    if (!reply)
        return -1;
    freeReplyObject(reply);
    return 0;
}

int cf_queue_node_alive(cf_queue_t *q, const char *node_id, bool *alive_p, char *err, size_t errlen)
{
    if (!s_valid_name(node_id)) {
        snprintf(err, errlen, "invalid node id");
        return -1;
    }
    char key[320];
    snprintf(key, sizeof key, "%snode:%s", q->prefix, node_id);
    const char *argv[] = {"EXISTS", key};
    redisReply *reply = s_command(q, 2, argv, err, errlen);
    if (!reply)
        return -1;
    *alive_p = reply->type == REDIS_REPLY_INTEGER && reply->integer == 1;
    freeReplyObject(reply);
    return 0;
}
