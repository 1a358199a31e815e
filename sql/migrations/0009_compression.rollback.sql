ALTER TABLE jobs DROP COLUMN compression;
