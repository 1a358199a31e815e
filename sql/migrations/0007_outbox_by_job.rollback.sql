DROP INDEX outbox_dead_job_id_idx;
DROP INDEX outbox_job_id_idx;
