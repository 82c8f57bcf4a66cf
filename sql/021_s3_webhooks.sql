-- S3 destinations and completion webhooks. Forward-only.

-- Where the output was uploaded (s3://BUCKET/KEY), beside the local copy.
ALTER TABLE compositions ADD COLUMN output_s3_location text;

-- One row per webhook to deliver: made by the trigger below when a
-- composition with a webhook_url reaches a terminal status, so every path
-- to completed, failed or cancelled (renderer, API, purge of a dead node's
-- work) notifies, and a node restart loses nothing. The body is fixed when
-- the row is made: every attempt sends the same bytes.
CREATE TABLE webhook_deliveries (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    composition_id uuid NOT NULL REFERENCES compositions (id) ON DELETE CASCADE,
    api_key_id     text,        -- whose webhook secret signs it (NULL: no-auth node)
    url            text NOT NULL,
    body           text NOT NULL,
    attempts       integer NOT NULL DEFAULT 0,
    next_at        timestamptz NOT NULL DEFAULT now(),
    claimed_by     text,
    claimed_until  timestamptz, -- a sender holds it until then (one sender at a time)
    delivered_at   timestamptz,
    abandoned_at   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_at)
    WHERE delivered_at IS NULL AND abandoned_at IS NULL;

CREATE FUNCTION cf_webhook_enqueue() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (composition_id, api_key_id, url, body)
    VALUES (NEW.id, NEW.api_key_id, NEW.spec->>'webhook_url', json_build_object(
        'event', 'composition.' || NEW.status,
        'id', NEW.id,
        'title', NEW.title,
        'status', NEW.status,
        'error', CASE WHEN NEW.error_code IS NULL THEN NULL
                 ELSE json_build_object('code', NEW.error_code, 'message', NEW.error_message) END,
        'output', CASE WHEN NEW.status <> 'completed' OR NEW.output_location IS NULL THEN NULL
                  ELSE json_build_object('location', NEW.output_location,
                                         's3', NEW.output_s3_location,
                                         'size_bytes', NEW.output_size_bytes,
                                         'duration_s', NEW.output_duration_s,
                                         'hash', NEW.output_hash) END,
        'created_at', NEW.created_at,
        'started_at', NEW.started_at,
        'finished_at', NEW.finished_at)::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER compositions_webhook AFTER UPDATE OF status ON compositions
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('completed', 'failed', 'cancelled')
          AND NEW.spec ? 'webhook_url')
    EXECUTE FUNCTION cf_webhook_enqueue();
