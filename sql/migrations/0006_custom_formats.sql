-- Custom log formats: named mappings an owner registers (POST /api/v1/formats) and names in
-- uploads; and the mapping a job was uploaded with.
-- depends: 0005_formats

-- A format's name is its owner's own: two owners may each have a "myapp". `definition` is
-- the JSON as registered, checked against log_format.schema.json by the API.
CREATE TABLE log_formats (
    owner      text NOT NULL,
    name       text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    definition jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, name)
);

-- A copy of the custom format a job names, taken at upload: deleting or registering the
-- format again later changes nothing for a job already uploaded. NULL for built-in formats.
ALTER TABLE jobs ADD COLUMN format_definition jsonb;
