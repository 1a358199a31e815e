-- Log formats: the format a job's lines are read in, the upload's defaults for what a format
-- may lack, and the formats the worker recognised.
-- depends: 0004_access

-- `auto` (recognise each line's format), `eventhorizon` or a built-in format's name
-- (formats.py). Not checked against a list here: custom formats will add names.
ALTER TABLE jobs ADD COLUMN format text NOT NULL DEFAULT 'auto';
-- Given with the upload: a line's service or environment when its format has none.
ALTER TABLE jobs ADD COLUMN default_service text;
ALTER TABLE jobs ADD COLUMN default_environment text;
-- Valid lines per format seen, e.g. {"pino": 120, "zap": 80}: moved with each batch
-- (advance_checkpoint), so it always agrees with lines_valid.
ALTER TABLE jobs ADD COLUMN formats_seen jsonb NOT NULL DEFAULT '{}';
