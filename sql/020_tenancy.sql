-- Tenancy: every composition and every upload belongs to the API key that
-- made it; other keys cannot see it. Admin keys see and manage everything.
-- Forward-only.

ALTER TABLE api_keys ADD COLUMN admin boolean NOT NULL DEFAULT false;
-- Keys created before tenancy could see every composition; they keep that
-- (an operator demotes them by creating ordinary keys and revoking these).
-- Compositions keep the key they were recorded with.
UPDATE api_keys SET admin = true;

-- An ordinary key's list: its own compositions, newest first.
CREATE INDEX compositions_owner_created_idx
    ON compositions (api_key_id, created_at DESC, id DESC);

-- Uploads (POST /api/v1/media): which key stored which blob on which node.
-- The same bytes uploaded by two keys are one file and two rows; the file
-- goes when no row and no composition refers to it any more.
CREATE TABLE blob_uploads (
    hash       text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    api_key_id text NOT NULL, -- '' when the node runs --insecure-no-auth
    node_id    text NOT NULL,
    size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hash, api_key_id)
);
CREATE INDEX blob_uploads_key_idx ON blob_uploads (api_key_id);
CREATE INDEX blob_uploads_node_created_idx ON blob_uploads (node_id, created_at);
