/* cf_webhook: delivers completion webhooks, on every node.
 *
 * Postgres holds what is to be delivered (a trigger adds a row when a
 * composition with a webhook_url reaches completed, failed or cancelled),
 * so deliveries survive restarts and any node may send them: each sender
 * claims due rows for a short lease (one sender per row at a time), POSTs
 * the row's body with
 *
 *     Clipfarm-Signature: t=UNIX_SECONDS,v1=HEX
 *
 * where HEX is HMAC-SHA256 over "UNIX_SECONDS." + BODY keyed by the webhook
 * secret of the API key that created the composition (cf_apikey.h), and
 * records every attempt (status code, error, duration) as a "webhook" event
 * of the composition. A 2xx answer ends it; anything else is tried again
 * after an exponential backoff with jitter until max_age_s has passed since
 * the terminal status, then given up (recorded too). Webhook URLs follow the
 * source address rules with their own allowed networks (--allow-webhook-net),
 * checked on every connection; redirects are not followed.
 *
 * Delivery is at least once: a node that dies after the receiver answered
 * but before recording it leaves the row to be sent again when its claim
 * lapses. Receivers deduplicate by the body's "id" and "status". */
#ifndef CF_WEBHOOK_H
#define CF_WEBHOOK_H

#include <stddef.h>
#include <stdint.h>

#include "cf_apikey.h"

typedef struct cf_webhook_t cf_webhook_t;
typedef struct cf_db cf_db_t;
typedef struct cf_source_policy_t cf_source_policy_t;

typedef struct {
    cf_db_t *db;                      /* borrowed */
    const cf_source_policy_t *policy; /* addresses webhooks may reach (borrowed; NULL: any) */
    const char *holder;               /* this node's id (claims) */
    uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES];
    int max_age_s;     /* give up this long after the terminal status (default 3600) */
    int retry_base_ms; /* first backoff (default 2000); doubles per attempt, with jitter */
    int retry_max_ms;  /* backoff ceiling (default 300000) */
    int timeout_ms;    /* one attempt (default 10000) */
    int poll_ms;       /* how often due rows are looked for (default 500) */
} cf_webhook_options_t;

void cf_webhook_options_default(cf_webhook_options_t *opts);

/* Starts the sender thread. Returns NULL with a reason in err. */
cf_webhook_t *cf_webhook_new(const cf_webhook_options_t *opts, char *err, size_t errlen);

/* Stops (an attempt in flight is cut short; its row is due again when the
 * claim lapses) and frees. Safe on NULL. */
void cf_webhook_destroy(cf_webhook_t **self_p);

/* The signature header value for BODY at time T with SECRET, into OUT. */
void cf_webhook_sign(const char *secret, int64_t t, const char *body, char *out, size_t outlen);

#endif
