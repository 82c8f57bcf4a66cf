-- Baseline. The state issue (#5) brings the full schema in later migrations.
CREATE EXTENSION IF NOT EXISTS pgcrypto;
