-- Every event the relay moves out of the Postgres outbox: one row per outbox row.
-- relay.py runs this at start-up (then event_log_upgrade.sql on a table made before job_id).
-- A re-sent batch carries the same insert_deduplication_token as the first try, and the
-- deduplication window makes ClickHouse drop it.
--
-- The sort key serves queries across jobs (an event type over time). A job's own events —
-- the API's events and histogram (explore.py) — are read through the `by_job` projection,
-- sorted by job and line: `job_id`, `line_no`, `level` and `service` are computed from the
-- event's context on insert (0, the zero UUID or '' where it has none), so that counting a
-- job's events by level reads two small columns, not the JSON. A deleted job's events go by
-- a mutation (event_log.DELETE_JOB_EVENTS), which rewrites the projections' parts too.
--
-- Search across an owner's jobs (explore.py's search_*) reads the `by_owner` projection,
-- sorted by (owner, event_time): an owner's read touches that owner's granules only, and the
-- newest-first page reads them in reverse order and stops. `owner` is the job's owner and
-- `event_time` the event's time to the millisecond, both sent by the relay (Postgres builds
-- them, sql/queries.sql's event_log_line); `event_date_time` (whole seconds) stays as it was.
--
-- Two more structures serve the reads over all of an owner's time (docs/design.md, "Search"):
-- `by_hour`, an aggregate projection counting events by (owner, hour, job, level, service,
-- event type, environment), answers a histogram of whole hours and the facets of those
-- fields from a few rows per hour instead of every event; `context_tokens`, a token bloom
-- filter of each granule's context JSON text, lets a context.<path>=<value> filter read the
-- granules holding the value's word, from the table itself (ClickHouse compares that with
-- what `by_owner` would read, and takes the smaller).
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
    level            LowCardinality(String) MATERIALIZED toString(event_context.level),
    service          LowCardinality(String) MATERIALIZED toString(event_context.service),
    owner            LowCardinality(String) DEFAULT '',
    event_time       DateTime64(3, 'UTC') DEFAULT toDateTime64(event_date_time, 3, 'UTC'),
    PROJECTION by_job (
        SELECT event_id, event_type, event_date_time, environment, event_context,
               metadata_version, job_id, line_no, level, service
        ORDER BY job_id, line_no),
    PROJECTION by_owner (
        SELECT event_id, event_type, event_date_time, environment, event_context,
               metadata_version, job_id, line_no, level, service, owner, event_time
        ORDER BY owner, event_time),
    PROJECTION by_hour (
        SELECT owner, toStartOfHour(event_time), line_no > 0, job_id, level, service,
               event_type, environment, count()
        GROUP BY owner, toStartOfHour(event_time), line_no > 0, job_id, level, service,
                 event_type, environment),
    INDEX context_tokens toJSONString(event_context.^context) TYPE tokenbf_v1(16384, 3, 0)
        GRANULARITY 1
)
ENGINE = MergeTree
ORDER BY (event_type, event_date_time)
SETTINGS non_replicated_deduplication_window = 1000,
         lightweight_mutation_projection_mode = 'rebuild'
