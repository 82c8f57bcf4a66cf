-- Distributed rendering (issue #13): the segments table is the live work
-- list the coordinator dispatches from. Every composition planned by the
-- coordinator has one row per segment (kind 'segment', idx 0..N-1), one for
-- the timeline's audio (kind 'audio', idx N) and one for the assembly (kind
-- 'assemble', idx N+1). A row's assignment token is (epoch, attempts,
-- node_id): a worker's result is accepted only for the token it was given.

-- What planning fixed: the plan (cf_plan_to_json: every frame range and
-- source range), the encoder (never mixed within one output), and why the
-- composition waits when no live node can take its work.
ALTER TABLE compositions ADD COLUMN plan jsonb;
ALTER TABLE compositions ADD COLUMN encoder text CHECK (length(encoder) <= 32);
ALTER TABLE compositions ADD COLUMN wait_reason text CHECK (length(wait_reason) <= 256);

ALTER TABLE segments ADD COLUMN kind text NOT NULL DEFAULT 'segment'
    CHECK (kind IN ('segment', 'audio', 'assemble'));
ALTER TABLE segments ADD COLUMN error text CHECK (length(error) <= 1024);

-- Failures of a composition's tasks per node: a node that failed 3 of them
-- gets no more of that composition.
CREATE TABLE segment_failures (
    composition_id uuid NOT NULL REFERENCES compositions (id) ON DELETE CASCADE,
    node_id        text NOT NULL,
    failures       integer NOT NULL DEFAULT 0,
    PRIMARY KEY (composition_id, node_id)
);

-- A composition whose planning coordinator was deposed goes back to the
-- intake (recorded as an event by the statement that does it).
INSERT INTO composition_transitions (from_state, to_state) VALUES ('planning', 'queued')
    ON CONFLICT DO NOTHING;

-- Equal outputs are one blob: retention asks whether another composition
-- still has an output location before removing its file.
CREATE INDEX compositions_output_location_idx ON compositions (output_location)
    WHERE output_location IS NOT NULL;

-- What each node finished lately (the cluster view's recent fps).
CREATE INDEX segments_finished_idx ON segments (finished_at) WHERE status = 'done';
