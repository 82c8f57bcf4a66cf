-- clipfarm state: compositions, segments (the jobs), events, api keys.
-- The nodes and coordinator_lease tables come with the cluster migrations
-- (010-019). Forward-only: change this schema with a new migration.

-- Hashed API key secrets only; the key format and hashing belong to the API.
CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    secret_hash bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- The state machine. A composition's state is its status, or for status
-- 'processing' its stage. Every legal move is one row here; the trigger
-- below refuses any other, whoever writes.
CREATE TABLE composition_transitions (
    from_state text NOT NULL,
    to_state   text NOT NULL,
    PRIMARY KEY (from_state, to_state)
);
INSERT INTO composition_transitions (from_state, to_state) VALUES
    ('pending', 'queued'), ('pending', 'failed'), ('pending', 'cancelled'),
    ('queued', 'planning'), ('queued', 'failed'), ('queued', 'cancelled'),
    ('planning', 'encoding'), ('planning', 'failed'), ('planning', 'cancelled'),
    ('encoding', 'assembling'), ('encoding', 'failed'), ('encoding', 'cancelled'),
    ('assembling', 'completed'), ('assembling', 'failed'), ('assembling', 'cancelled');

CREATE FUNCTION cf_state(status text, stage text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN status = 'processing' THEN stage ELSE status END;

CREATE TABLE compositions (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    title             text,
    status            text NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('pending', 'queued', 'processing', 'completed', 'failed',
                                        'cancelled')),
    stage             text CHECK (stage IN ('planning', 'encoding', 'assembling')),
    priority          text NOT NULL DEFAULT 'default' CHECK (priority IN ('high', 'default', 'low')),
    spec              jsonb NOT NULL,
    progress          double precision NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 1),
    error_code        text,
    error_message     text,
    output_location   text,
    output_size_bytes bigint,
    output_duration_s double precision,
    output_hash       text,
    api_key_id        text,
    idempotency_key   text,
    request_hash      text,
    attempts          integer NOT NULL DEFAULT 0,
    -- Grows with every update (trigger): the cache keeps only the newest.
    version           bigint NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    CHECK ((status = 'processing') = (stage IS NOT NULL)),
    CHECK (idempotency_key IS NULL OR request_hash IS NOT NULL)
);

-- The origin's essential indexes, shaped for the queries in lib/cf_db.c:
-- newest first with a keyset cursor on (created_at, id); the same within one
-- status (its leading column also serves plain status lookups); a partial
-- index on the active statuses (reconcile, dashboards); retention purge.
CREATE INDEX compositions_created_idx ON compositions (created_at DESC, id DESC);
CREATE INDEX compositions_status_created_idx ON compositions (status, created_at DESC, id DESC);
CREATE INDEX compositions_active_idx ON compositions (status, created_at)
    WHERE status IN ('pending', 'queued', 'processing');
CREATE INDEX compositions_finished_idx ON compositions (finished_at)
    WHERE finished_at IS NOT NULL;
-- An idempotency key is unique per API key (requests without a key share one
-- namespace).
CREATE UNIQUE INDEX compositions_idempotency_idx
    ON compositions ((coalesce(api_key_id, '')), idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE FUNCTION cf_compositions_guard() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    old_state text := cf_state(OLD.status, OLD.stage);
    new_state text := cf_state(NEW.status, NEW.stage);
BEGIN
    IF old_state IS DISTINCT FROM new_state AND NOT EXISTS (
            SELECT 1 FROM composition_transitions
            WHERE from_state = old_state AND to_state = new_state) THEN
        RAISE EXCEPTION 'illegal composition transition % -> %', old_state, new_state
            USING ERRCODE = 'CF001';
    END IF;
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
CREATE TRIGGER compositions_guard BEFORE UPDATE ON compositions
    FOR EACH ROW EXECUTE FUNCTION cf_compositions_guard();

-- The jobs. node_id is plain text: the nodes table belongs to the cluster
-- migrations and a segment outlives the node that encoded it. epoch is the
-- coordinator epoch (fencing token) of the last write.
CREATE TABLE segments (
    composition_id uuid NOT NULL REFERENCES compositions (id) ON DELETE CASCADE,
    idx            integer NOT NULL CHECK (idx >= 0),
    frame_start    bigint NOT NULL CHECK (frame_start >= 0),
    frame_end      bigint NOT NULL,
    sources        jsonb NOT NULL DEFAULT '[]',
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'assigned', 'encoding', 'done', 'failed')),
    progress       double precision NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 1),
    node_id        text,
    attempts       integer NOT NULL DEFAULT 0,
    epoch          bigint NOT NULL,
    blob_hash      text,
    size_bytes     bigint,
    encode_fps     double precision,
    fetch_ms       bigint,
    encode_ms      bigint,
    created_at     timestamptz NOT NULL DEFAULT now(),
    assigned_at    timestamptz,
    started_at     timestamptz,
    finished_at    timestamptz,
    PRIMARY KEY (composition_id, idx), -- also the "segments by composition" index
    CHECK (frame_end > frame_start)
);
-- Requeueing a dead node's work, and the scheduler's open segments.
CREATE INDEX segments_node_active_idx ON segments (node_id)
    WHERE status IN ('assigned', 'encoding');
CREATE INDEX segments_open_idx ON segments (status)
    WHERE status IN ('pending', 'assigned', 'encoding', 'failed');

-- Audit and progress trail; Server-Sent Events resume from an event id.
CREATE TABLE events (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    composition_id uuid NOT NULL REFERENCES compositions (id) ON DELETE CASCADE,
    at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    type           text NOT NULL,
    payload        jsonb
);
CREATE INDEX events_composition_idx ON events (composition_id, id);
