-- The W3C traceparent of the upload's span: the job's message carries it to the worker, and
-- the reconciler, re-publishing a lost job, sends it again, so the job stays in its upload's
-- trace. NULL for jobs uploaded before this, and when the API traces nothing.
-- depends: 0007_outbox_by_job

ALTER TABLE jobs ADD COLUMN traceparent text;
