ALTER TABLE jobs DROP COLUMN formats_seen;
ALTER TABLE jobs DROP COLUMN default_environment;
ALTER TABLE jobs DROP COLUMN default_service;
ALTER TABLE jobs DROP COLUMN format;
