-- An event_log made before the `by_hour` projection and the `context_tokens` index
-- (event_log.sql) gains both; relay.py runs these when it finds the table without `by_hour`
-- (after the older upgrades). Each is idempotent, so a relay stopped halfway runs them all
-- again. Until MATERIALIZE reaches a part, that part is read from the table as before:
-- slower, never wrong.
ALTER TABLE event_log ADD PROJECTION IF NOT EXISTS by_hour (
        SELECT owner, toStartOfHour(event_time), line_no > 0, job_id, level, service,
               event_type, environment, count()
        GROUP BY owner, toStartOfHour(event_time), line_no > 0, job_id, level, service,
                 event_type, environment);
ALTER TABLE event_log ADD INDEX IF NOT EXISTS context_tokens
        toJSONString(event_context.^context) TYPE tokenbf_v1(16384, 3, 0) GRANULARITY 1;
ALTER TABLE event_log MATERIALIZE PROJECTION by_hour;
ALTER TABLE event_log MATERIALIZE INDEX context_tokens
