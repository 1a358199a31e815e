-- The transactional outbox: events written in the same transaction as the domain change,
-- drained into ClickHouse by relay.py.
-- depends: 0001_jobs

CREATE TABLE outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         uuid NOT NULL,
    event_type       text NOT NULL,
    event_date_time  timestamptz NOT NULL,
    environment      text NOT NULL,
    event_context    jsonb NOT NULL,
    metadata_version bigint NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- Batches ClickHouse refused as malformed, kept with the error for a person to look at.
CREATE TABLE outbox_dead (
    id               bigint PRIMARY KEY,
    event_id         uuid NOT NULL,
    event_type       text NOT NULL,
    event_date_time  timestamptz NOT NULL,
    environment      text NOT NULL,
    event_context    jsonb NOT NULL,
    metadata_version bigint NOT NULL,
    created_at       timestamptz NOT NULL,
    error            text NOT NULL,
    failed_at        timestamptz NOT NULL DEFAULT now()
);
