-- Back to per-line rows: each pending range becomes the per-line rows it stands for (built
-- from the log entries as the relay builds them), then the columns go. A refused line of a
-- range is kept under an id of its own.
INSERT INTO outbox (event_id, event_type, event_date_time, environment, event_context,
                    metadata_version, created_at)
SELECT encode(set_byte(set_byte(substr(d.h, 1, 16), 6, (get_byte(d.h, 6) & 15) | 80),
                       8, (get_byte(d.h, 8) & 63) | 128), 'hex')::uuid,
       e.event_type, e.timestamp, e.environment,
       jsonb_build_object('job_id', e.job_id, 'line_no', e.line_no, 'level', e.level,
                          'service', e.service, 'message', e.message, 'context', e.context)
       || CASE WHEN o.trace_id IS NULL THEN '{}'::jsonb
               ELSE jsonb_build_object('trace_id', o.trace_id) END,
       1, o.created_at
FROM outbox o
JOIN log_entries e ON e.job_id = o.job_id AND e.line_no BETWEEN o.first_line AND o.last_line
CROSS JOIN LATERAL (SELECT digest(uuid_send(e.job_id) || convert_to(e.line_no::text, 'UTF8'), 'sha1') AS h) d
WHERE o.job_id IS NOT NULL
ORDER BY o.id, e.line_no;
DELETE FROM outbox_batch b WHERE EXISTS (
    SELECT 1 FROM outbox o WHERE o.id = ANY(b.ids) AND o.job_id IS NOT NULL);
DELETE FROM outbox WHERE job_id IS NOT NULL;
UPDATE outbox_dead SET id = nextval(pg_get_serial_sequence('outbox', 'id')) WHERE line_no <> 0;
ALTER TABLE outbox_dead DROP CONSTRAINT outbox_dead_pkey, ADD PRIMARY KEY (id);
ALTER TABLE outbox_dead DROP COLUMN line_no;
DROP INDEX outbox_range_job_id_idx;
ALTER TABLE outbox
    DROP CONSTRAINT outbox_event_or_range,
    DROP COLUMN trace_id,
    DROP COLUMN events,
    DROP COLUMN last_line,
    DROP COLUMN first_line,
    DROP COLUMN job_id,
    ALTER COLUMN event_context SET NOT NULL,
    ALTER COLUMN environment SET NOT NULL,
    ALTER COLUMN event_date_time SET NOT NULL,
    ALTER COLUMN event_type SET NOT NULL,
    ALTER COLUMN event_id SET NOT NULL;
-- pgcrypto stays: other code of the database may use it.
