-- Where a job's events stand (GET /api/v1/jobs/{id}: "delivery"): the events still in the
-- outbox, and those ClickHouse refused, counted by job without reading the whole table.
-- depends: 0006_custom_formats

CREATE INDEX outbox_job_id_idx ON outbox ((event_context ->> 'job_id'));
CREATE INDEX outbox_dead_job_id_idx ON outbox_dead ((event_context ->> 'job_id'));
