DROP TABLE outbox_batch;
