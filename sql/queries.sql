-- The statements the code runs, as named blocks loaded once by core.load_queries(). The only
-- others are LISTEN (its channel is an identifier, composed by core.listen with psycopg.sql)
-- and the `SELECT 1` liveness pings of idle connections. Parameters are always bound
-- (%(name)s); nothing here is built by string formatting.

-- name: job_columns --
-- A job row, in the order of jobs.Job's fields (a fragment: `$job_columns` in the queries).
job_id, file_name, size_bytes, bucket, object_key, status, lines_total, lines_processed,
bytes_processed, lines_valid, lines_invalid, attempts, error, created_at, started_at,
completed_at, updated_at, owner, format, default_service, default_environment, formats_seen,
format_definition, traceparent, compression

-- name: insert_job --
INSERT INTO jobs (job_id, file_name, size_bytes, bucket, object_key, lines_total, owner,
                  format, format_definition, default_service, default_environment, traceparent,
                  compression)
VALUES (%(job_id)s, %(file_name)s, %(size_bytes)s, %(bucket)s, %(object_key)s, %(lines_total)s,
        %(owner)s, %(format)s, %(format_definition)s, %(default_service)s,
        %(default_environment)s, %(traceparent)s, %(compression)s)
RETURNING $job_columns;

-- name: get_job --
SELECT $job_columns FROM jobs WHERE job_id = %(job_id)s;

-- name: get_visible_job --
-- owner: the requesting owner's name, or NULL for an admin (every job).
SELECT $job_columns FROM jobs
WHERE job_id = %(job_id)s AND (%(owner)s::text IS NULL OR owner = %(owner)s::text);

-- name: list_jobs --
-- status: one status only, or NULL for any.
SELECT $job_columns FROM jobs
WHERE (%(owner)s::text IS NULL OR owner = %(owner)s::text)
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
ORDER BY created_at DESC, job_id
LIMIT %(limit)s;

-- name: job_counts --
SELECT status, count(*) AS n FROM jobs GROUP BY status;

-- name: list_line_errors --
-- A page of invalid lines for each of several jobs at once (GraphQL's `jobs { errors }` is
-- one query, not one per job); REST asks for one job.
SELECT j.job_id, e.line_no, e.reason
FROM unnest(%(job_ids)s::uuid[]) AS j(job_id)
CROSS JOIN LATERAL (
    SELECT line_no, reason FROM line_errors
    WHERE line_errors.job_id = j.job_id AND line_no > %(after_line)s
    ORDER BY line_no
    LIMIT %(limit)s
) e
ORDER BY j.job_id, e.line_no;

-- name: claim_job --
-- Takes a queued job, or resumes one whose earlier worker died mid-file (the caller holds
-- the job's advisory lock, so no live worker is on it). Finished jobs are not returned.
UPDATE jobs
SET status = 'processing',
    started_at = coalesce(started_at, now()),
    attempts = attempts + 1,
    updated_at = now()
WHERE job_id = %(job_id)s AND status IN ('queued', 'processing')
RETURNING $job_columns, (started_at = now()) AS first_start;

-- name: take_lost_jobs --
-- Jobs queued for longer than the grace period whose message must have been lost: the job
-- queue is empty (the caller says so), or a job uploaded more than the grace period after
-- this one was last published has started already (the queue is first in, first out: this
-- one's message is no longer ahead of it). updated_at is when a queued job was last
-- published: set at the upload, bumped here, so each job is re-published at most once per
-- grace period, by one worker, and a re-published one waits for its new message's turn.
UPDATE jobs SET updated_at = now()
WHERE job_id IN (
    SELECT job_id FROM jobs
    WHERE status = 'queued' AND updated_at < now() - make_interval(secs => %(after_s)s)
      AND (%(queue_empty)s
           OR updated_at < (SELECT max(created_at) FROM jobs WHERE started_at IS NOT NULL)
                           - make_interval(secs => %(after_s)s))
    ORDER BY created_at
    LIMIT 100
    FOR UPDATE SKIP LOCKED
)
RETURNING $job_columns;

-- name: try_lock_job --
-- Session-level lock: released when the worker's connection ends, whatever way it ends.
SELECT pg_try_advisory_lock(hashtextextended(%(job_id)s::text, 0)) AS locked;

-- name: unlock_job --
SELECT pg_advisory_unlock(hashtextextended(%(job_id)s::text, 0));

-- name: advance_checkpoint --
-- Moves a job's checkpoint past a committed batch of lines; guarded on the old checkpoint so a
-- stale worker cannot. formats: the batch's valid lines per format ({"pino": 3}), added to the
-- job's formats_seen.
UPDATE jobs
SET lines_processed = %(lines_processed)s,
    bytes_processed = %(bytes_processed)s,
    lines_valid = lines_valid + %(valid)s,
    lines_invalid = lines_invalid + %(invalid)s,
    formats_seen = formats_seen || coalesce(
        (SELECT jsonb_object_agg(f.key, coalesce((formats_seen ->> f.key)::bigint, 0)
                                        + f.value::bigint)
         FROM jsonb_each_text(%(formats)s::jsonb) AS f), '{}'),
    updated_at = now()
WHERE job_id = %(job_id)s AND status = 'processing' AND lines_processed = %(previous_lines)s
RETURNING $job_columns;

-- name: complete_job --
-- A compressed file's lines are counted as it is decoded: its total is known at the end.
UPDATE jobs
SET status = 'completed', completed_at = now(), updated_at = now(), error = NULL,
    lines_total = CASE WHEN compression IS NULL THEN lines_total ELSE lines_processed END
WHERE job_id = %(job_id)s AND status = 'processing'
RETURNING $job_columns;

-- name: fail_job --
UPDATE jobs
SET status = 'failed', completed_at = now(), updated_at = now(), error = %(error)s
WHERE job_id = %(job_id)s AND status IN ('queued', 'processing')
RETURNING $job_columns;

-- name: all_errors_are_encoding --
-- reason_prefix: the start of every UTF-8 decoding error's reason (lines.NOT_UTF8).
SELECT coalesce(bool_and(starts_with(reason, %(reason_prefix)s)), false) AS all_encoding
FROM line_errors WHERE job_id = %(job_id)s;

-- name: record_attempt_error --
UPDATE jobs SET error = %(error)s, updated_at = now()
WHERE job_id = %(job_id)s AND status = 'processing';

-- name: give_back_attempt --
-- The attempt a worker took was not the job's fault: it stopped cleanly (SIGTERM), or a
-- service was unreachable. Only failures of the job itself count toward EH_MAX_ATTEMPTS.
UPDATE jobs SET attempts = greatest(attempts - 1, 0), updated_at = now()
WHERE job_id = %(job_id)s AND status = 'processing';

-- name: notify --
-- The channels are core.JOB_CHANNEL (a job's new state) and core.OUTBOX_CHANNEL (new events).
SELECT pg_notify(%(channel)s, %(payload)s);

-- name: insert_outbox_event --
INSERT INTO outbox (event_id, event_type, event_date_time, environment, event_context, metadata_version)
VALUES (%(event_id)s, %(event_type)s, %(event_date_time)s, %(environment)s, %(event_context)s, %(metadata_version)s);

-- name: copy_outbox --
COPY outbox (event_id, event_type, event_date_time, environment, event_context, metadata_version) FROM STDIN;

-- name: insert_outbox_range --
-- A batch's line events, in the batch's transaction: the job's lines first_line..last_line,
-- `events` of them valid (log_entries has them). The relay builds the events from the entries.
INSERT INTO outbox (job_id, first_line, last_line, events, trace_id)
VALUES (%(job_id)s, %(first_line)s, %(last_line)s, %(events)s, %(trace_id)s);

-- name: copy_log_entries --
-- Binary: the values' binary forms cost the worker half the CPU of their text (core.copy_entries).
COPY log_entries (job_id, line_no, timestamp, level, service, event_type, environment, message, context)
FROM STDIN (FORMAT BINARY);

-- name: copy_line_errors --
COPY line_errors (job_id, line_no, reason) FROM STDIN;

-- relay --------------------------------------------------------------------------------------
-- relay.py drains the outbox into ClickHouse in batches. A batch is recorded in outbox_batch
-- (row ids and dedup token, committed) before it is sent, and sent while its outbox_batch row
-- is locked; the rows and the record are deleted in the transaction that follows ClickHouse's
-- acknowledgement. Rows covered by a recorded batch are never claimed into another one.

-- name: event_log_line --
-- An outbox row `o`'s event as the JSONEachRow line ClickHouse takes, built here so that the
-- relay sends the lines as they are, never decoding an event: the time as whole Unix seconds
-- (event_log's DateTime; ClickHouse refuses one out of its range, event_log.INSERT_SETTINGS), the
-- context as jsonb prints it. UTF-8 bytes (bytea), so the driver does not decode them either.
-- `event_time` is the time to the millisecond (truncated, as event_log's DateTime64(3) text)
-- and `owner` the owner of the job the event names (a primary-key look-up; '' for an event
-- of no job, or of a job gone, whose events are being deleted; for an `audit.*` event, its
-- actor, audit.py): owner-wide search reads by both (sql/clickhouse/event_log.sql). A job's owner never changes, so a re-sent line is
-- the same line.
convert_to(json_build_object(
    'event_id', o.event_id,
    'event_type', o.event_type,
    'event_date_time', floor(extract(epoch FROM o.event_date_time))::bigint,
    'event_time', to_char(o.event_date_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'),
    'environment', o.environment,
    'event_context', o.event_context,
    'metadata_version', o.metadata_version,
    'owner', CASE WHEN starts_with(o.event_type, 'audit.')
        THEN coalesce(o.event_context->'context'->>'actor', '')
        ELSE coalesce((SELECT j.owner FROM jobs j WHERE j.job_id = CASE
        WHEN o.event_context->>'job_id' ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
        THEN (o.event_context->>'job_id')::uuid END), '') END)::text, 'UTF8')

-- name: line_event_id --
-- A log entry `e`'s event id, outbox.line_event_id: the first 16 bytes of the SHA-1 of the job
-- id's 16 bytes and the line number in decimal, marked version 5 and RFC 4122 variant. `d.h` is
-- that digest (the queries join `$line_event_digest AS d`).
encode(set_byte(set_byte(substr(d.h, 1, 16), 6, (get_byte(d.h, 6) & 15) | 80),
                8, (get_byte(d.h, 8) & 63) | 128), 'hex')::uuid

-- name: line_event_digest --
-- OFFSET 0 keeps the planner from folding the subquery into its uses: folded, the digest was
-- computed once for each `d.h` (six times an event in outbox_batch_rows, a quarter of the
-- relay's Postgres time per event).
LATERAL (SELECT digest(uuid_send(e.job_id) || convert_to(e.line_no::text, 'UTF8'), 'sha1') AS h
         OFFSET 0)

-- name: line_event_context --
-- A log entry `e`'s event context, of its range row `o`: the members the worker wrote in a
-- per-line row (jsonb orders them itself, so the text is the same).
jsonb_build_object('job_id', e.job_id, 'line_no', e.line_no, 'level', e.level,
                   'service', e.service, 'message', e.message, 'context', e.context)
|| CASE WHEN o.trace_id IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('trace_id', o.trace_id) END

-- name: range_event_log_line --
-- event_log_line for a log entry `e` of a range row `o`, its job `j` (LEFT JOINed: '' for
-- a job without an owner): the same line, byte for byte, a per-line row of it gave. Written
-- out as the text json_build_object would print (`"key" : value`, in this order) around the
-- event context as jsonb prints $line_event_context (`"key": value`, its keys ordered by
-- length, then bytes: level, job_id, context, line_no, message, service, trace_id), each string
-- escaped by to_json as both do: building the jsonb and printing it again cost a third of the
-- relay's Postgres time per event (tests/test_relay_ranges.py compares the two).
convert_to('{"event_id" : "' || $line_event_id
    || '", "event_type" : ' || to_json(e.event_type)::text
    || ', "event_date_time" : ' || floor(extract(epoch FROM e.timestamp))::bigint
    || ', "event_time" : "' || to_char(e.timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')
    || '", "environment" : ' || to_json(e.environment)::text
    || ', "event_context" : {"level": ' || to_json(e.level)::text
    || ', "job_id": "' || e.job_id
    || '", "context": ' || e.context::text
    || ', "line_no": ' || e.line_no
    || ', "message": ' || to_json(e.message)::text
    || ', "service": ' || to_json(e.service)::text
    || CASE WHEN o.trace_id IS NULL THEN '' ELSE ', "trace_id": ' || to_json(o.trace_id)::text END
    || '}, "metadata_version" : 1, "owner" : ' || to_json(coalesce(j.owner, ''))::text || '}',
    'UTF8')

-- name: claim_outbox_batch --
-- The oldest rows no other relay holds and no recorded batch covers, up to max_rows events (a
-- range row counts its events; the first row is taken whatever its size). The caller re-reads
-- outbox_batch (outbox_batch_overlap) in a new statement before recording them: a batch
-- recorded after this statement's snapshot was taken is only visible there.
WITH locked AS (
    SELECT o.id, coalesce(o.events, 1) AS events, o.created_at
    FROM outbox o
    WHERE NOT EXISTS (SELECT 1 FROM outbox_batch b WHERE o.id BETWEEN b.first_id AND b.last_id)
    ORDER BY o.id
    LIMIT %(max_rows)s
    FOR UPDATE OF o SKIP LOCKED
)
SELECT id, events, extract(epoch FROM clock_timestamp() - created_at)::float8 AS age_s
FROM (SELECT *, sum(events) OVER (ORDER BY id) AS upto FROM locked) l
WHERE upto - events < %(max_rows)s
ORDER BY id;

-- name: lock_outbox_claims --
-- Relays claim one at a time: each claim then sees the batches recorded before it and takes
-- the rows after them, a full batch, rather than rows another claim holds (skipped) or has
-- just recorded (dropped by outbox_batch_overlap). Held until the claim commits.
SELECT pg_advisory_xact_lock(hashtextextended('eventhorizon:outbox_claim', 0));

-- name: outbox_batch_overlap --
SELECT unnest(ids) AS id FROM outbox_batch
WHERE first_id <= %(last_id)s AND last_id >= %(first_id)s;

-- name: record_outbox_batch --
INSERT INTO outbox_batch (first_id, last_id, ids, token, attempts)
VALUES (%(first_id)s, %(last_id)s, %(ids)s, %(token)s, %(attempts)s)
RETURNING batch_id, ids, token, attempts;

-- name: lock_outbox_batch --
SELECT batch_id, ids, token, attempts FROM outbox_batch
WHERE batch_id = %(batch_id)s
FOR UPDATE SKIP LOCKED;

-- name: take_unfinished_outbox_batch --
-- A recorded batch no relay is sending: its relay died, or ClickHouse failed it.
SELECT batch_id, ids, token, attempts FROM outbox_batch
ORDER BY batch_id
LIMIT 1
FOR UPDATE SKIP LOCKED;

-- name: outbox_batch_rows --
-- A recorded batch's events, in order: a per-event row's (line_no 0), and a range row's, one
-- per log entry in its range (none once its job is deleted), each with its JSONEachRow `line`.
SELECT o.id, o.event_id, 0::bigint AS line_no, o.created_at,
       extract(epoch FROM clock_timestamp() - o.created_at)::float8 AS age_s,
       $event_log_line AS line
FROM outbox o
WHERE o.id = ANY(%(ids)s) AND o.job_id IS NULL
UNION ALL
SELECT o.id, $line_event_id AS event_id, e.line_no, o.created_at,
       extract(epoch FROM clock_timestamp() - o.created_at)::float8 AS age_s,
       $range_event_log_line AS line
FROM outbox o
JOIN log_entries e ON e.job_id = o.job_id AND e.line_no BETWEEN o.first_line AND o.last_line
CROSS JOIN $line_event_digest AS d
LEFT JOIN jobs j ON j.job_id = o.job_id
WHERE o.id = ANY(%(ids)s) AND o.job_id IS NOT NULL
ORDER BY id, line_no;

-- name: split_outbox_range --
-- Part of a range row, as a row of its own (a salvage leaves that part for later).
INSERT INTO outbox (job_id, first_line, last_line, events, trace_id, created_at)
SELECT job_id, %(first_line)s, %(last_line)s, %(events)s, trace_id, created_at
FROM outbox WHERE id = %(id)s
RETURNING id;

-- name: delete_outbox_rows --
DELETE FROM outbox WHERE id = ANY(%(ids)s);

-- name: delete_outbox_batch --
DELETE FROM outbox_batch WHERE batch_id = %(batch_id)s;

-- name: reject_outbox_batch --
UPDATE outbox_batch SET attempts = attempts + 1, last_error = %(error)s
WHERE batch_id = %(batch_id)s
RETURNING attempts;

-- name: dead_letter_outbox_rows --
INSERT INTO outbox_dead (id, event_id, event_type, event_date_time, environment, event_context,
                         metadata_version, created_at, error)
SELECT id, event_id, event_type, event_date_time, environment, event_context,
       metadata_version, created_at, %(error)s
FROM outbox
WHERE id = ANY(%(ids)s) AND job_id IS NULL;

-- name: dead_letter_line_events --
-- Line events of range rows, each whole as outbox_batch_rows built it, under its row's id and line.
INSERT INTO outbox_dead (id, line_no, event_id, event_type, event_date_time, environment,
                         event_context, metadata_version, created_at, error)
SELECT o.id, e.line_no, $line_event_id, e.event_type, e.timestamp, e.environment,
       $line_event_context, 1, o.created_at, %(error)s
FROM unnest(%(ids)s::bigint[], %(lines)s::bigint[]) AS x(id, line_no)
JOIN outbox o ON o.id = x.id
JOIN log_entries e ON e.job_id = o.job_id AND e.line_no = x.line_no
CROSS JOIN $line_event_digest AS d;

-- name: outbox_pending --
-- What the next claim would find: the events of up to max_rows unclaimed rows and the age of
-- the oldest.
SELECT coalesce(sum(events), 0)::bigint AS rows, coalesce(max(age_s), 0)::float8 AS oldest_age_s
FROM (SELECT extract(epoch FROM clock_timestamp() - o.created_at) AS age_s,
             coalesce(o.events, 1) AS events
      FROM outbox o
      WHERE NOT EXISTS (SELECT 1 FROM outbox_batch b WHERE o.id BETWEEN b.first_id AND b.last_id)
      ORDER BY o.id
      LIMIT %(max_rows)s) pending;

-- name: outbox_status --
-- For GET /api/v1/stats: events not yet in ClickHouse, the oldest one's age, dead-lettered ones.
SELECT o.backlog,
       coalesce(extract(epoch FROM clock_timestamp() - o.oldest), 0)::float8 AS oldest_age_s,
       (SELECT count(*) FROM outbox_dead) AS dead
FROM (SELECT coalesce(sum(coalesce(events, 1)), 0)::bigint AS backlog, min(created_at) AS oldest
      FROM outbox) o;

-- access -------------------------------------------------------------------------------------

-- name: create_token --
INSERT INTO api_tokens (owner, admin, secret_hash)
VALUES (%(owner)s, %(admin)s, %(secret_hash)s)
RETURNING token_id;

-- name: list_tokens --
SELECT token_id, owner, admin, created_at, last_used_at, revoked_at
FROM api_tokens ORDER BY token_id;

-- name: revoke_token --
-- The NOTIFY goes out with the commit: every API process closes the token's sockets
-- (revocation.TokenSockets).
WITH revoked AS (
    UPDATE api_tokens SET revoked_at = now()
    WHERE token_id = %(token_id)s AND revoked_at IS NULL
    RETURNING token_id
)
SELECT token_id, pg_notify(%(channel)s, json_build_object('token_id', token_id)::text)
FROM revoked;

-- name: live_token_ids --
-- Which of these tokens still work (revocation.TokenSockets.recheck).
SELECT token_id FROM api_tokens
WHERE token_id = ANY(%(token_ids)s::bigint[]) AND revoked_at IS NULL;

-- name: live_token --
-- The caller compares secret_hash in constant time (auth.authenticate).
SELECT token_id, owner, admin, secret_hash FROM api_tokens
WHERE token_id = %(token_id)s AND revoked_at IS NULL;

-- name: touch_token --
-- last_used_at, at most once a minute: a request is not a write.
UPDATE api_tokens SET last_used_at = now()
WHERE token_id = %(token_id)s
  AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute');

-- name: lock_visible_job --
SELECT $job_columns FROM jobs
WHERE job_id = %(job_id)s AND (%(owner)s::text IS NULL OR owner = %(owner)s::text)
FOR UPDATE;

-- name: try_lock_job_in_transaction --
-- The worker's lock (try_lock_job), held here until the transaction ends: a job a worker is
-- processing cannot be deleted under it, and no worker can start on it while it is deleted.
SELECT pg_try_advisory_xact_lock(hashtextextended(%(job_id)s::text, 0)) AS locked;

-- name: record_deletion --
INSERT INTO job_deletions (job_id, owner, file_name, deleted_by)
VALUES (%(job_id)s, %(owner)s, %(file_name)s, %(deleted_by)s);

-- name: delete_job --
-- The row first, then its log entries and line errors (delete_job_entries, …) in later
-- statements: a worker's batch holds the row until it commits (its checkpoint move), so what
-- it wrote is committed, and seen there, once the row is ours (lock_visible_job, or this
-- statement); a batch after finds no row to move and is rolled back (jobs.advance).
DELETE FROM jobs WHERE job_id = %(job_id)s;

-- name: delete_job_entries --
DELETE FROM log_entries WHERE job_id = %(job_id)s;

-- name: delete_job_line_errors --
DELETE FROM line_errors WHERE job_id = %(job_id)s;

-- name: delete_dead_events_of_job --
DELETE FROM outbox_dead WHERE event_context->>'job_id' = %(job_id)s::text;

-- name: delete_outbox_ranges_of_job --
-- The job's range rows no recorded batch holds (the caller holds lock_outbox_claims, so no
-- claim is taking them): their entries are gone with the job. A batch holding one sends what
-- it read and deletes it; take_pending_deletions waits for that.
DELETE FROM outbox o
WHERE o.job_id = %(job_id)s
  AND NOT EXISTS (SELECT 1 FROM outbox_batch b
                  WHERE o.id BETWEEN b.first_id AND b.last_id AND o.id = ANY(b.ids));

-- name: job_deleted --
SELECT deleted_at FROM job_deletions WHERE job_id = %(job_id)s;

-- name: take_pending_deletions --
-- Deleted jobs none of whose events is left in the outbox: every insert of their events has
-- been acknowledged and committed, so none can reach event_log after the delete. Up to
-- `limit`, oldest first, deleted from event_log by one mutation (a retention sweep deletes
-- many jobs at once). Only looked for by an idle relay, when the outbox is (nearly) empty and
-- this scan is cheap.
SELECT d.job_id FROM job_deletions d
WHERE d.clickhouse_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_context->>'job_id' = d.job_id::text)
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = d.job_id)
ORDER BY d.deleted_at
LIMIT %(limit)s
FOR UPDATE OF d SKIP LOCKED;

-- name: owners_of_jobs --
-- event_log.fill_missing_owners: the owners of the jobs of events event_log has without one.
SELECT owner, array_agg(job_id) AS job_ids FROM jobs
WHERE job_id = ANY(%(job_ids)s) AND owner IS NOT NULL
GROUP BY owner;

-- name: hidden_jobs_of_owner --
-- Owner-wide search (explore.search_scope): the owner's deleted jobs whose events ClickHouse
-- may still hold (the relay deletes them there, then sets clickhouse_at, in one transaction).
-- Only deletions in flight: a handful, however many jobs the owner has.
SELECT job_id FROM job_deletions WHERE owner = %(owner)s AND clickhouse_at IS NULL;

-- name: finish_deletions --
UPDATE job_deletions SET clickhouse_at = now() WHERE job_id = ANY(%(job_ids)s);

-- name: lock_owner_formats --
-- Held to the end of the transaction that registers a format, so that two registrations at
-- once cannot both find room under the owner's cap.
SELECT pg_advisory_xact_lock(hashtextextended('log_formats:' || %(owner)s, 0));

-- name: count_log_formats --
SELECT count(*) AS n FROM log_formats WHERE owner = %(owner)s;

-- name: insert_log_format --
-- No row: the owner has a format of this name already.
INSERT INTO log_formats (owner, name, definition)
VALUES (%(owner)s, %(name)s, %(definition)s)
ON CONFLICT (owner, name) DO NOTHING
RETURNING name, definition, created_at;

-- name: get_log_format --
SELECT name, definition, created_at FROM log_formats
WHERE owner = %(owner)s AND name = %(name)s;

-- name: list_log_formats --
SELECT name, definition, created_at FROM log_formats
WHERE owner = %(owner)s
ORDER BY name;

-- name: delete_log_format --
DELETE FROM log_formats WHERE owner = %(owner)s AND name = %(name)s RETURNING name;

-- name: job_delivery --
-- The job's line events still waiting in the outbox (its range rows' events, and per-line rows
-- written before ranges), and those ClickHouse refused (by the outbox_*job_id_idx indexes).
-- Line events have a line_no; lifecycle events do not.
SELECT
    (SELECT count(*) FROM outbox WHERE event_context ->> 'job_id' = %(job_id)s::text
       AND event_context ? 'line_no')
    + (SELECT coalesce(sum(events), 0) FROM outbox WHERE job_id = %(job_id)s::uuid) AS waiting,
    (SELECT count(*) FROM outbox_dead WHERE event_context ->> 'job_id' = %(job_id)s::text
       AND event_context ? 'line_no') AS dead;

-- retention ----------------------------------------------------------------------------------
-- retention.py: owners' retention and the sweep. default_days is EH_RETENTION_DAYS, or NULL
-- (kept for ever); make_interval(days => NULL) is NULL, and a comparison with it never true.

-- name: retention_interval --
-- How long the job in `jobs` (the row of the query this is part of) is kept: its owner's own
-- days when an admin set them (NULL there: for ever), else the default.
make_interval(days => (
    SELECT CASE WHEN r.owner IS NULL THEN %(default_days)s::int ELSE r.days END
    FROM (SELECT 1) AS one LEFT JOIN owner_retention r ON r.owner = jobs.owner))

-- name: try_lock_retention_sweep --
-- Session-level: one sweep at a time across every process; the others skip theirs. Released
-- when the sweeping connection closes, whatever way it ends.
SELECT pg_try_advisory_lock(hashtextextended('eventhorizon:retention_sweep', 0)) AS locked;

-- name: expired_jobs --
-- The next page (keyset, oldest first) of jobs older than their retention that no worker is
-- processing. Read without locks: each is locked and re-checked in a transaction of its own
-- (lock_expired_job).
SELECT job_id, created_at FROM jobs
WHERE status <> 'processing'
  AND (created_at, job_id) > (%(after_created_at)s, %(after_job_id)s)
  AND created_at < now() - $retention_interval
ORDER BY created_at, job_id
LIMIT %(limit)s;

-- name: lock_expired_job --
-- The job, locked until the transaction ends, if it is still past its retention and not being
-- processed; no row if another transaction holds it (a delete, another sweeper, a worker's
-- checkpoint): the next sweep takes it.
SELECT $job_columns FROM jobs
WHERE job_id = %(job_id)s AND status <> 'processing'
  AND created_at < now() - $retention_interval
FOR UPDATE SKIP LOCKED;

-- name: get_owner_retention --
SELECT owner, days, set_by, set_at FROM owner_retention WHERE owner = %(owner)s;

-- name: list_owner_retention --
SELECT owner, days, set_by, set_at FROM owner_retention ORDER BY owner;

-- name: set_owner_retention --
-- days NULL: the owner's jobs are kept for ever.
INSERT INTO owner_retention (owner, days, set_by)
VALUES (%(owner)s, %(days)s, %(set_by)s)
ON CONFLICT (owner) DO UPDATE SET days = excluded.days, set_by = excluded.set_by, set_at = now()
RETURNING owner, days, set_by, set_at;

-- name: clear_owner_retention --
DELETE FROM owner_retention WHERE owner = %(owner)s RETURNING owner;
