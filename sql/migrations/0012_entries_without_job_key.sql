-- A log entry's and a line error's foreign key to its job, dropped: Postgres checked it for
-- every row the worker copied (a look-up of the job's row and a share lock on it, per row),
-- about half of Postgres's CPU per entry (docs/benchmarks.md). What it guarded still holds:
-- the worker writes a job's rows only in the transaction that moves the job's checkpoint,
-- which finds no row for a deleted job and rolls the batch back (jobs.advance), and a job's
-- entries and line errors are deleted with it, after its row (jobs.delete).
-- depends: 0011_retention
ALTER TABLE log_entries DROP CONSTRAINT log_entries_job_id_fkey;
ALTER TABLE line_errors DROP CONSTRAINT line_errors_job_id_fkey;
