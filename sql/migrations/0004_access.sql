-- Access: API tokens, the owner of each job, and the deletions still to be carried out in
-- ClickHouse.
-- depends: 0003_outbox_batch

-- A token is `eh_<token_id>_<secret>`; only the SHA-256 of the secret is kept. The secret
-- is 256 random bits, so a plain hash is enough (nothing to brute-force, unlike a password).
CREATE TABLE api_tokens (
    token_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner        text NOT NULL CHECK (owner ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    admin        boolean NOT NULL DEFAULT false,
    secret_hash  bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- Who uploaded the job. NULL for jobs uploaded before access control: only admins see them.
ALTER TABLE jobs ADD COLUMN owner text;
CREATE INDEX jobs_owner_created_at_idx ON jobs (owner, created_at DESC);

-- A deleted job: its rows are gone from Postgres at once; its events are deleted from
-- ClickHouse's event_log by the relay once none of them is left in the outbox (so no insert
-- can land after the delete), and the record stays as the audit trail.
CREATE TABLE job_deletions (
    job_id           uuid PRIMARY KEY,
    owner            text,
    file_name        text NOT NULL,
    deleted_by       text NOT NULL,
    deleted_at       timestamptz NOT NULL DEFAULT now(),
    clickhouse_at    timestamptz  -- when event_log's rows of the job were deleted
);
CREATE INDEX job_deletions_pending_idx ON job_deletions (deleted_at) WHERE clickhouse_at IS NULL;
