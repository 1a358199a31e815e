DROP TABLE line_errors;
DROP TABLE log_entries;
DROP TABLE jobs;
