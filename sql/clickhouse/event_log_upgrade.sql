-- An event_log made before `job_id` (and `level`, `service`) (Event Horizon before its explore API) brought to the
-- shape of event_log.sql. relay.py runs these once, when it finds the table without `job_id`;
-- each is idempotent, so a relay stopped halfway simply runs them all again.
--
-- The two MATERIALIZE statements are mutations: ClickHouse rewrites the existing parts in
-- the background (watch system.mutations). Until they finish, a job's events from before the
-- upgrade are still found, only by reading more of the table; new events are in the
-- projection as they are inserted. On a large table, run them at a quiet hour.
ALTER TABLE event_log
    ADD COLUMN IF NOT EXISTS job_id UUID
        MATERIALIZED toUUIDOrZero(toString(event_context.job_id)),
    ADD COLUMN IF NOT EXISTS line_no UInt64
        MATERIALIZED toUInt64OrZero(toString(event_context.line_no)),
    ADD COLUMN IF NOT EXISTS level LowCardinality(String)
        MATERIALIZED toString(event_context.level),
    ADD COLUMN IF NOT EXISTS service LowCardinality(String)
        MATERIALIZED toString(event_context.service);
ALTER TABLE event_log MODIFY SETTING lightweight_mutation_projection_mode = 'rebuild';
ALTER TABLE event_log ADD PROJECTION IF NOT EXISTS by_job (
        SELECT event_id, event_type, event_date_time, environment, event_context,
               metadata_version, job_id, line_no, level, service
        ORDER BY job_id, line_no);
ALTER TABLE event_log MATERIALIZE COLUMN job_id, MATERIALIZE COLUMN line_no,
    MATERIALIZE COLUMN level, MATERIALIZE COLUMN service;
ALTER TABLE event_log MATERIALIZE PROJECTION by_job
