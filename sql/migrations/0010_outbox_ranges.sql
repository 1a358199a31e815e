-- Line events as ranges: a batch of a job's lines commits one outbox row naming the job and its
-- line range (first_line..last_line, `events` of them valid, so in log_entries), not one row per
-- line carrying the event again. The relay builds each line's event from its log entry
-- (sql/queries.sql: range_event_log_line), exactly as it was built from a per-line row. Other
-- events (a job's lifecycle) keep their per-event rows; per-line rows written before this are
-- drained as they were. docs/design.md: "Line events: the outbox holds ranges".
-- depends: 0009_compression

-- SHA-1, for a line event's id (outbox.line_event_id, in SQL: queries.sql line_event_id).
-- Postgres has no sha1() of its own; pgcrypto ships with it and is a trusted extension (the
-- database's owner may create it).
CREATE EXTENSION IF NOT EXISTS pgcrypto;

ALTER TABLE outbox
    ALTER COLUMN event_id DROP NOT NULL,
    ALTER COLUMN event_type DROP NOT NULL,
    ALTER COLUMN event_date_time DROP NOT NULL,
    ALTER COLUMN environment DROP NOT NULL,
    ALTER COLUMN event_context DROP NOT NULL,
    ADD COLUMN job_id uuid,
    ADD COLUMN first_line bigint,
    ADD COLUMN last_line bigint,
    ADD COLUMN events integer,
    -- The trace the job's line events name (their context's `trace_id`), NULL for none.
    ADD COLUMN trace_id text,
    ADD CONSTRAINT outbox_event_or_range CHECK (
        (job_id IS NULL AND first_line IS NULL AND last_line IS NULL AND events IS NULL
         AND trace_id IS NULL AND event_id IS NOT NULL AND event_type IS NOT NULL
         AND event_date_time IS NOT NULL AND environment IS NOT NULL
         AND event_context IS NOT NULL)
        OR (job_id IS NOT NULL AND first_line >= 1 AND last_line >= first_line AND events >= 1
            AND event_id IS NULL AND event_type IS NULL AND event_date_time IS NULL
            AND environment IS NULL AND event_context IS NULL));

-- A job's ranges: its delivery figures, its deletion.
CREATE INDEX outbox_range_job_id_idx ON outbox (job_id) WHERE job_id IS NOT NULL;

-- A line event ClickHouse refused is kept whole, as a per-event row's is, under its range row's
-- id and its line (0 for a per-event row): several lines of one range may be refused.
ALTER TABLE outbox_dead ADD COLUMN line_no bigint NOT NULL DEFAULT 0;
ALTER TABLE outbox_dead DROP CONSTRAINT outbox_dead_pkey, ADD PRIMARY KEY (id, line_no);
