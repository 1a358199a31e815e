ALTER TABLE line_errors ADD CONSTRAINT line_errors_job_id_fkey
    FOREIGN KEY (job_id) REFERENCES jobs (job_id) ON DELETE CASCADE;
ALTER TABLE log_entries ADD CONSTRAINT log_entries_job_id_fkey
    FOREIGN KEY (job_id) REFERENCES jobs (job_id) ON DELETE CASCADE;
