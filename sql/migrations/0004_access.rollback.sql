DROP TABLE job_deletions;
DROP INDEX jobs_owner_created_at_idx;
ALTER TABLE jobs DROP COLUMN owner;
DROP TABLE api_tokens;
