-- Every event the relay moves out of the Postgres outbox: one row per outbox row.
-- relay.py runs this at start-up. A re-sent batch carries the same insert_deduplication_token
-- as the first try, and the deduplication window makes ClickHouse drop it.
CREATE TABLE IF NOT EXISTS event_log
(
    event_id         UUID,
    event_type       String,
    event_date_time  DateTime('UTC'),
    environment      String,
    event_context    JSON,
    metadata_version UInt64
)
ENGINE = MergeTree
ORDER BY (event_type, event_date_time)
SETTINGS non_replicated_deduplication_window = 1000
