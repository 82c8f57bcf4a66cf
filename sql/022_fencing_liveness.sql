-- Fencing, lease adoption and liveness (issue #12). Forward-only.

-- The process that holds the lease: a random token each election process
-- makes at start. A process whose acquire committed but whose answer was
-- lost finds its own token here on the next call and adopts the lease at
-- once, instead of waiting for it to expire (see cf_db_cluster_lease_acquire).
ALTER TABLE coordinator_lease ADD COLUMN holder_token text;

-- Liveness is computed, not stored: a node is up while its own registry
-- heartbeat reaches Postgres, judged by the database clock against the grace
-- the node declares (grace_ms, its --peer-grace), gone after that, left after
-- a clean leave. The state column keeps only what the node itself says (up,
-- or left at shutdown): a coordinator's record of a departure (gone_at,
-- gone_epoch, gone_by) is history, never a state a node's upsert could undo.
ALTER TABLE nodes ADD COLUMN grace_ms integer NOT NULL DEFAULT 5000 CHECK (grace_ms > 0);
UPDATE nodes SET state = 'up' WHERE state = 'gone';
ALTER TABLE nodes DROP CONSTRAINT nodes_state_check;
ALTER TABLE nodes ADD CONSTRAINT nodes_state_check CHECK (state IN ('up', 'left'));

CREATE FUNCTION cf_node_liveness(state text, last_seen timestamptz, grace_ms integer)
    RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
    RETURN CASE WHEN state = 'left' THEN 'left'
                WHEN now() - last_seen > grace_ms * interval '1 millisecond' THEN 'gone'
                ELSE 'up' END;

-- The assignment token of a segment: the coordinator epoch that assigned
-- it; with attempts (the attempt number) and node_id it names one
-- assignment. A worker's result is accepted only with the token of the
-- segment's current assignment, so the result of an assignment that was
-- replaced (a newer coordinator, a reassignment) changes nothing.
ALTER TABLE segments ADD COLUMN assigned_epoch bigint;
