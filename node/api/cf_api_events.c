/* cf_api_events: GET /api/v1/compositions/{id}/events, a Server-Sent Events
 * stream of a composition's trail (status changes, progress, output, error)
 * read from the events table, so any node can serve any composition.
 *
 * The stream resumes after Last-Event-ID (or ?after=N), sends each event as
 *     id: N / event: TYPE / data: {"id","type","at","payload"}
 * polls for new ones, keeps idle connections alive with comments, and ends
 * with an "end" event once the composition reached a terminal status and
 * every event before it was sent. It holds one HTTP thread while open, so
 * open streams are capped per key and per node (429 beyond). */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cf_json.h"
#include "cf_api_internal.h"
#include "cf_cache.h"
#include "cf_db.h"
#include "cf_http_parse.h"

#define S_POLL_MS 250
/* A stream with nothing new polls ever less often, up to this: hundreds of
 * streams of idle compositions must not keep Postgres (and the pool that
 * /readyz and the API share) busy. */
#define S_POLL_MAX_MS 2000
/* A comment line this often keeps proxies from closing a quiet stream, and
 * is how a client that went away is noticed (the write after the one its
 * RST answered fails): a closed stream frees its thread within about two
 * of these. */
#define S_KEEPALIVE_MS 5000
/* With the composition's update channel (Redis pub/sub), a write wakes the
 * stream at once; Postgres is read again without one only this often, for
 * the events no status write announces. Without Redis the stream polls with
 * backoff as before. */
#define S_SUBSCRIBED_POLL_MS 5000
#define S_RESUBSCRIBE_MS     10000
#define S_BATCH              200

static int s_write(cf_api_req_t *req, const char *text, size_t len)
{
    return mg_write(req->conn, text, len) > 0 ? 0 : -1;
}

static int s_send_event(cf_api_req_t *req, const cf_db_event_t *ev)
{
    json_t *payload =
        cf_json_loads(ev->payload_json ? ev->payload_json : "null", JSON_DECODE_ANY, NULL);
    json_t *data = json_pack("{s:I,s:s,s:s,s:o}", "id", (json_int_t)ev->id, "type", ev->type, "at",
                             ev->at ? ev->at : "", "payload", payload ? payload : json_null());
    char *text = json_dumps(data, JSON_COMPACT);
    json_decref(data);
    if (!text)
        return -1;
    /* data: is one line: json_dumps with JSON_COMPACT never writes a newline. */
    char head[160];
    int n = snprintf(head, sizeof head, "id: %" PRId64 "\nevent: %s\ndata: ", ev->id, ev->type);
    int rc = s_write(req, head, (size_t)n) < 0 || s_write(req, text, strlen(text)) < 0 ||
                     s_write(req, "\n\n", 2) < 0
                 ? -1
                 : 0;
    free(text);
    return rc;
}

static int64_t s_start_after(cf_api_req_t *req)
{
    const char *last = mg_get_header(req->conn, "Last-Event-ID");
    char after[32];
    if (!last && cf_api_query(req, "after", after, sizeof after) > 0)
        last = after;
    return cf_http_parse_event_id(last);
}

int cf_api_h_composition_events(cf_api_req_t *req)
{
    cf_api_t *api = req->api;
    char err[256];
    int rc = cf_api_composition_visible(req, NULL, NULL);
    if (rc)
        return rc;
    cf_db_composition_t comp;

    /* Each stream holds a thread for as long as it is open: capped per key
     * and per node, so streams never take the threads /healthz needs. */
    int refused = cf_api_stream_enter(req);
    if (refused)
        return refused;

    /* No Content-Length: the stream ends when the connection closes. */
    static const char head[] = "HTTP/1.1 200 OK\r\n"
                               "Content-Type: text/event-stream\r\n"
                               "Cache-Control: no-cache\r\n"
                               "X-Accel-Buffering: no\r\n"
                               "Connection: close\r\n\r\n"
                               "retry: 2000\n\n";
    cf_api_close_after(req);
    req->status = 200;
    if (s_write(req, head, sizeof head - 1) < 0) {
        cf_api_stream_leave(req);
        return 200;
    }

    int64_t after = s_start_after(req);
    int64_t last_write = cf_api_now_ms();
    int poll_ms = S_POLL_MS;
    char sub_err[256];
    cf_updates_t *updates =
        cf_updates_subscribe(api->redis_url, api->redis_prefix, req->id, sub_err, sizeof sub_err);
    int64_t subscribed_at = cf_api_now_ms();
    while (!atomic_load(&api->stopping)) {
        cf_db_event_t *events = NULL;
        int count = 0;
        rc = cf_db_events_since(api->opts.db, req->id, after, S_BATCH, &events, &count, err,
                                sizeof err);
        int failed = 0;
        for (int i = 0; rc == CF_DB_OK && i < count && !failed; i++) {
            failed = s_send_event(req, &events[i]) < 0;
            after = events[i].id;
        }
        cf_db_events_free(&events, count);
        if (failed)
            break;
        if (count > 0)
            last_write = cf_api_now_ms();
        poll_ms = count > 0 ? S_POLL_MS : poll_ms * 2 > S_POLL_MAX_MS ? S_POLL_MAX_MS : poll_ms * 2;
        if (rc == CF_DB_OK && count == S_BATCH)
            continue; /* more waiting: no pause */
        if (rc == CF_DB_OK && count == 0) {
            /* Caught up: stop once nothing more can happen. */
            memset(&comp, 0, sizeof comp);
            int got = cf_db_composition_get(api->opts.db, req->id, &comp, err, sizeof err);
            bool terminal = got == CF_DB_OK && cf_state_is_terminal(comp.state);
            cf_state_t state = comp.state;
            cf_db_composition_clear(&comp);
            if (got == CF_DB_NOT_FOUND)
                break; /* purged while we watched */
            if (terminal) {
                /* Events written just before the final status may land after
                 * our read: read once more before ending. */
                cf_db_event_t *late = NULL;
                int late_count = 0;
                if (cf_db_events_since(api->opts.db, req->id, after, S_BATCH, &late, &late_count,
                                       err, sizeof err) == CF_DB_OK &&
                    late_count > 0) {
                    cf_db_events_free(&late, late_count);
                    continue;
                }
                cf_db_events_free(&late, late_count);
                char end[160];
                int n = snprintf(end, sizeof end, "event: end\ndata: {\"status\":\"%s\"}\n\n",
                                 cf_state_status(state));
                s_write(req, end, (size_t)n);
                break;
            }
        }
        /* Database trouble: keep the stream, try again at the next poll. */
        if (cf_api_now_ms() - last_write >= S_KEEPALIVE_MS) {
            if (s_write(req, ": keep-alive\n\n", 14) < 0)
                break;
            last_write = cf_api_now_ms();
        }
        if (!updates && cf_api_now_ms() - subscribed_at >= S_RESUBSCRIBE_MS) {
            updates = cf_updates_subscribe(api->redis_url, api->redis_prefix, req->id, sub_err,
                                           sizeof sub_err);
            subscribed_at = cf_api_now_ms();
        }
        if (updates) {
            /* Wake on a write to the composition, or read again after a
             * while; both in slices so a stopping node is not kept. */
            int wait_ms = count > 0 ? S_POLL_MS : S_SUBSCRIBED_POLL_MS;
            for (int waited = 0; waited < wait_ms && !atomic_load(&api->stopping);
                 waited += S_POLL_MS) {
                char *message = NULL;
                int got = cf_updates_next(updates, S_POLL_MS, &message, sub_err, sizeof sub_err);
                free(message);
                if (got < 0)
                    cf_updates_destroy(&updates); /* Redis gone: poll Postgres */
                if (got != 0)
                    break;
            }
            continue;
        }
        for (int slept = 0; slept < poll_ms && !atomic_load(&api->stopping); slept += S_POLL_MS)
            usleep(S_POLL_MS * 1000);
    }
    cf_updates_destroy(&updates);
    cf_api_stream_leave(req);
    return 200;
}
