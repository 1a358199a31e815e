-- The relay's ledger of batches. relay.py records a batch of outbox rows here (and commits)
-- before it sends them to ClickHouse, and deletes the record with the rows once ClickHouse has
-- them. A record that outlives its relay is re-sent with exactly the same rows and the same
-- insert_deduplication_token, so ClickHouse drops it if it already had it: exactly once even
-- when new rows arrived in the meantime.
-- depends: 0002_outbox

CREATE TABLE outbox_batch (
    batch_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    first_id   bigint NOT NULL,
    last_id    bigint NOT NULL,
    ids        bigint[] NOT NULL,
    token      text NOT NULL,
    -- How many times ClickHouse refused the batch as malformed; the third refusal salvages it
    -- (relay.salvage: sent again in halves; only events refused on their own go to outbox_dead).
    attempts   integer NOT NULL DEFAULT 0,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now()
);
