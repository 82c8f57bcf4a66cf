-- Cluster membership (issue #4): the node registry, the second discovery
-- path next to UDP beacons, and the coordinator lease whose epoch is the
-- fencing token of every coordinator write.

-- One row per node that ever joined. A node upserts its own row every
-- heartbeat interval; the coordinator marks rows gone (fenced by its epoch)
-- when a node stops heartbeating. mac authenticates the identity columns with
-- the cluster secret (see proto/PROTOCOL.md), so write access to this table
-- alone cannot introduce a key into the cluster.
CREATE TABLE nodes (
    id uuid PRIMARY KEY,
    control_endpoint text NOT NULL CHECK (length(control_endpoint) BETWEEN 1 AND 256),
    http_endpoint text NOT NULL DEFAULT '' CHECK (length(http_endpoint) <= 256),
    public_key text NOT NULL CHECK (length(public_key) = 40),
    mac text NOT NULL CHECK (length(mac) = 64),
    capabilities jsonb NOT NULL DEFAULT '{}',
    free_slots integer NOT NULL DEFAULT 0 CHECK (free_slots >= 0),
    in_flight integer NOT NULL DEFAULT 0 CHECK (in_flight >= 0),
    state text NOT NULL DEFAULT 'up' CHECK (state IN ('up', 'gone', 'left')),
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    -- Set by the coordinator that marked the node gone, with its epoch.
    gone_at timestamptz,
    gone_epoch bigint,
    gone_by uuid
);
CREATE INDEX nodes_last_seen ON nodes (last_seen);

-- The coordinator lease: a single row. Acquiring a free or expired lease
-- increments epoch; renewing keeps it. expires_at is judged by the database
-- clock only.
CREATE TABLE coordinator_lease (
    id smallint PRIMARY KEY CHECK (id = 1),
    holder uuid,
    epoch bigint NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    acquired_at timestamptz,
    renewed_at timestamptz,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO coordinator_lease (id) VALUES (1);

-- The membership as the coordinator sees it, published every second or so.
-- Written only through the fence: while the writer holds the lease at the
-- epoch it writes (see cf_db_cluster_publish_view).
CREATE TABLE cluster_view (
    id smallint PRIMARY KEY CHECK (id = 1),
    coordinator uuid,
    epoch bigint NOT NULL DEFAULT 0,
    members jsonb NOT NULL DEFAULT '[]',
    updated_at timestamptz
);
INSERT INTO cluster_view (id) VALUES (1);
