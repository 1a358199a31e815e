-- How the stored file is compressed, as its name said at the upload (decoding.py): NULL for
-- a plain file. For a compressed file, bytes_processed counts decoded bytes: a resumed job
-- decodes from the start and skips them.
-- depends: 0008_traceparent

ALTER TABLE jobs ADD COLUMN compression text CHECK (compression IN ('gzip', 'zstd'));
