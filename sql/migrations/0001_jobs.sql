-- Jobs, the log entries they produce and the lines they reject.
-- depends:

CREATE TABLE jobs (
    job_id          uuid PRIMARY KEY,
    file_name       text NOT NULL,
    size_bytes      bigint NOT NULL CHECK (size_bytes > 0),
    bucket          text NOT NULL,
    object_key      text NOT NULL,
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'processing', 'completed', 'failed')),
    -- Physical lines in the file, counted by the API while it streamed the upload.
    lines_total     bigint NOT NULL CHECK (lines_total >= 0),
    -- The checkpoint: lines and bytes of the file whose results are committed.
    -- Written in the same transaction as each batch, so a redelivered job resumes here.
    lines_processed bigint NOT NULL DEFAULT 0,
    bytes_processed bigint NOT NULL DEFAULT 0,
    lines_valid     bigint NOT NULL DEFAULT 0,
    lines_invalid   bigint NOT NULL DEFAULT 0,
    attempts        integer NOT NULL DEFAULT 0,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    completed_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX jobs_created_at_idx ON jobs (created_at DESC);
CREATE INDEX jobs_queued_idx ON jobs (created_at) WHERE status = 'queued';

CREATE TABLE log_entries (
    job_id      uuid NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    line_no     bigint NOT NULL,
    timestamp   timestamptz NOT NULL,
    level       text NOT NULL,
    service     text NOT NULL,
    event_type  text NOT NULL,
    environment text NOT NULL,
    message     text NOT NULL,
    context     jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (job_id, line_no)
);

CREATE TABLE line_errors (
    job_id  uuid NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    line_no bigint NOT NULL,
    reason  text NOT NULL,
    PRIMARY KEY (job_id, line_no)
);
