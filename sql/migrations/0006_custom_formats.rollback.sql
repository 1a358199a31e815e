ALTER TABLE jobs DROP COLUMN format_definition;
DROP TABLE log_formats;
