-- Every event the relay moves out of the Postgres outbox: one row per outbox row.
-- relay.py runs this at start-up (then event_log_upgrade.sql on a table made before job_id).
-- A re-sent batch carries the same insert_deduplication_token as the first try, and the
-- deduplication window makes ClickHouse drop it.
--
-- The sort key serves queries across jobs (an event type over time). A job's own events —
-- the API's events and histogram (explore.py) — are read through the `by_job` projection,
-- sorted by job and line: `job_id` and `line_no` are computed from the event's context on
-- insert (0 and the zero UUID where it has none). Lightweight DELETEs (a deleted job's events)
-- rebuild the projection's parts they touch.
CREATE TABLE IF NOT EXISTS event_log
(
    event_id         UUID,
    event_type       String,
    event_date_time  DateTime('UTC'),
    environment      String,
    event_context    JSON,
    metadata_version UInt64,
    job_id           UUID MATERIALIZED toUUIDOrZero(toString(event_context.job_id)),
    line_no          UInt64 MATERIALIZED toUInt64OrZero(toString(event_context.line_no)),
    PROJECTION by_job (SELECT * ORDER BY job_id, line_no)
)
ENGINE = MergeTree
ORDER BY (event_type, event_date_time)
SETTINGS non_replicated_deduplication_window = 1000,
         lightweight_mutation_projection_mode = 'rebuild'
