-- An event_log made before owner-wide search brought to the shape of event_log.sql: `owner`,
-- `event_time` and the `by_owner` projection. relay.py runs these when it finds the table
-- without the projection (after event_log_upgrade.sql, for a table older still); each is
-- idempotent, so a relay stopped halfway runs them all again.
--
-- `event_time` of an event stored before this is its `event_date_time` (whole seconds: the
-- milliseconds were never sent to ClickHouse), computed on read until MATERIALIZE writes it.
-- `owner` comes from Postgres: event_log.fill_missing_owners sets it for the events of every job
-- Postgres still has, each time the relay connects. A part without the projection (until
-- MATERIALIZE PROJECTION reaches it) is read from the table itself: slower, never wrong.
ALTER TABLE event_log
    ADD COLUMN IF NOT EXISTS owner LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS event_time DateTime64(3, 'UTC')
        DEFAULT toDateTime64(event_date_time, 3, 'UTC');
ALTER TABLE event_log MATERIALIZE COLUMN event_time;
ALTER TABLE event_log ADD PROJECTION IF NOT EXISTS by_owner (
        SELECT event_id, event_type, event_date_time, environment, event_context,
               metadata_version, job_id, line_no, level, service, owner, event_time
        ORDER BY owner, event_time);
ALTER TABLE event_log MATERIALIZE PROJECTION by_owner
