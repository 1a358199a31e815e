"""The worker: line reading and validation, whole jobs against real S3 and Postgres, and the
real worker process fed through RabbitMQ, stopped and killed in the middle of a file."""

from __future__ import annotations

import asyncio
import codecs
import dataclasses
import json
import signal
import threading
import uuid

import pika
import psycopg
import pytest

import amqp
import core
import jobs
import lines
import outbox
import worker
from helpers import (
    ECS_LINE,
    PINO_LINE,
    ZAP_LINE,
    StopAfter,
    assert_exactly_once,
    assert_stored_up_to_checkpoint,
    enqueue_job,
    job_message,
    job_row,
    jsonl,
    make_job,
    outbox_line_event,
    outbox_line_events,
    publish_to_queue,
    run_job,
    wait_for,
    wait_until,
)
from processes import logged_events

VALID = {
    "timestamp": "2026-11-23T10:00:00+01:00",
    "level": "info",
    "service": "checkout",
    "event_type": "order.created",
    "message": "order created",
}


# --------------------------------------------------------------------------- whole jobs


def test_job_writes_entries_errors_and_events(settings, db):
    entries = [dict(VALID, message=f"m{i}") for i in range(10)]
    content = (
        jsonl(*entries[:4])
        + b"\n   \n"
        + b"{bad json\n"
        + jsonl(*entries[4:])
        + b'{"a": "'
        + b"z" * (lines.MAX_LINE_BYTES + 5)
        + b'"}\n'
        + jsonl({**VALID, "level": "nope"})[:-1]
    )  # no final newline
    job_id = make_job(settings, db, content)

    assert run_job(settings, job_id) == "completed"

    job = job_row(db, job_id)
    assert job["status"] == "completed" and job["completed_at"] and job["error"] is None
    assert (job["lines_processed"], job["bytes_processed"]) == (job["lines_total"], len(content))
    assert_exactly_once(db, job_id, valid=10, invalid=3)
    errors = db.execute("SELECT line_no, reason FROM line_errors ORDER BY line_no").fetchall()
    assert [e["line_no"] for e in errors] == [7, 14, 15]
    assert "too long" in errors[1]["reason"] and "$.level" in errors[2]["reason"]
    assert [
        r["line_no"] for r in db.execute("SELECT line_no FROM log_entries ORDER BY line_no")
    ] == [1, 2, 3, 4, 8, 9, 10, 11, 12, 13]
    event = outbox_line_event(db, job_id, 8)
    assert event["event_id"] == str(outbox.line_event_id(job_id, 8))
    assert event["event_type"] == "order.created" and event["environment"] == "production"
    assert event["event_context"]["message"] == "m4"
    lifecycle = [
        r["event_type"]
        for r in db.execute(
            "SELECT event_type FROM outbox WHERE event_type LIKE 'job.%%' ORDER BY id"
        )
    ]
    assert lifecycle == ["job.started", "job.completed"]


def test_finished_job_is_not_processed_twice(settings, db):
    job_id = make_job(settings, db, jsonl(VALID, VALID))
    assert run_job(settings, job_id) == "completed"
    assert run_job(settings, job_id) == "skipped"
    assert_exactly_once(db, job_id, valid=2, invalid=0)


def test_a_job_locked_by_another_worker_is_left_to_it(settings, db):
    job_id = make_job(settings, db, jsonl(VALID))
    with psycopg.connect(settings.database_url, autocommit=True) as other:
        other.execute(core.QUERIES["try_lock_job"], {"job_id": job_id})
        assert run_job(settings, job_id) == "busy"
        body = job_message(db, job_id)
        never = threading.Event()
        outcome = worker.handle_message(body, settings, core.s3_client(settings), never)
        # Parked in the retry queue, not dropped: the other worker may die.
        assert outcome is worker.Outcome.RETRY_LATER
    assert job_row(db, job_id)["status"] == "queued"


def test_a_duplicate_of_a_running_job_waits_in_the_retry_queue_without_holding_a_worker(
    settings, db, start_process
):
    held = make_job(settings, db, jsonl(VALID))
    with psycopg.connect(settings.database_url, autocommit=True) as holder:
        holder.execute(core.QUERIES["try_lock_job"], {"job_id": held})  # "another worker"
        publish_to_queue(settings, job_message(db, held))  # first in the queue
        other = enqueue_job(settings, db, jsonl(VALID, VALID))
        start_process("worker.py", EH_RETRY_LATER_S="1")  # back after 1 s, not 10
        # The duplicate does not keep the worker from the next job...
        wait_for(lambda: job_row(db, other)["status"] == "completed", what="other job done")
        wait_for(
            lambda: queue_depth(settings, amqp.retry_queue(settings.queue)) == 1,
            what="the duplicate parked",
        )
        assert job_row(db, held)["status"] == "queued"
    # ... and once the holder is gone without finishing, the parked copy finishes the job.
    wait_for(lambda: job_row(db, held)["status"] == "completed", what="the parked copy processed")
    assert_exactly_once(db, held, valid=1, invalid=0)


def test_missing_object_fails_the_job_readably(settings, db):
    job_id = make_job(settings, db, jsonl(VALID), store=False)
    assert run_job(settings, job_id) == "failed"
    job = job_row(db, job_id)
    assert job["status"] == "failed" and "missing from storage" in job["error"]
    assert (
        db.execute("SELECT event_type FROM outbox ORDER BY id DESC").fetchone()["event_type"]
        == "job.failed"
    )


def test_a_file_that_is_not_utf8_at_all_fails(settings, db):
    job_id = make_job(settings, db, b"\xff\xfe\xfa\n\xc3\x28\n")
    assert run_job(settings, job_id) == "failed"
    assert job_row(db, job_id)["error"] == "the file is not UTF-8 text"


def test_unknown_job_is_reported(settings):
    with pytest.raises(jobs.UnknownJob):
        run_job(settings, uuid.uuid4())


def test_a_message_for_a_deleted_job_is_acked_not_dead_lettered(settings, db):
    """A job deleted while its message waited is no poison message: it is skipped."""
    job_id = make_job(settings, db, jsonl(VALID))
    body = job_message(db, job_id)
    db.execute("DELETE FROM jobs WHERE job_id = %s", (job_id,))
    db.execute(
        "INSERT INTO job_deletions (job_id, file_name, deleted_by) "
        "VALUES (%s, 't.jsonl', 'tester')",
        (job_id,),
    )
    assert run_job(settings, job_id) == "skipped"
    outcome = worker.handle_message(body, settings, core.s3_client(settings), threading.Event())
    assert outcome is worker.Outcome.ACK


def test_a_bom_before_a_blank_first_line_is_skipped_like_the_line(settings, db):
    job_id = make_job(settings, db, codecs.BOM_UTF8 + b"\n" + jsonl(VALID))
    assert run_job(settings, job_id) == "completed"
    assert_exactly_once(db, job_id, valid=1, invalid=0)


def test_values_the_database_cannot_store_are_line_errors_not_a_failed_job(settings, db):
    content = (
        codecs.BOM_UTF8
        + jsonl(VALID)
        + jsonl({**VALID, "message": "nul \x00"})
        + b'{"timestamp": "2026-11-23T10:00:00Z", "level": "info", "service": "s", '
        b'"event_type": "e", "message": "m", "context": {"x": -Infinity}}\n'
        + jsonl({**VALID, "context": {"s": "\ud800"}})
        + jsonl({**VALID, "context": {"deep": "HERE"}}).replace(
            b'"HERE"', b"[" * 100_000 + b"]" * 100_000
        )
        + jsonl({**VALID, "context": {"n": "HERE"}}).replace(b'"HERE"', b"9" * 5000)
        + jsonl(VALID)
    )
    job_id = make_job(settings, db, content)
    assert run_job(settings, job_id) == "completed"
    assert_exactly_once(db, job_id, valid=2, invalid=5)
    errors = db.execute(
        "SELECT line_no, reason FROM line_errors WHERE job_id = %s ORDER BY line_no", (job_id,)
    ).fetchall()
    assert [e["line_no"] for e in errors] == [2, 3, 4, 5, 6]  # line 1, after its BOM, is valid
    assert errors[3]["reason"] == lines.TOO_DEEP


def test_a_line_with_more_context_paths_than_the_setting_never_reaches_the_outbox(settings, db):
    """EH_MAX_CONTEXT_PATHS: 31 lines of 20,000 context keys each once stalled ClickHouse
    delivery for every owner (issue 21); the worker refuses such a line, with its reason."""
    wide = {**VALID, "context": {f"k{i}": i for i in range(20_000)}}
    job_id = make_job(
        settings,
        db,
        jsonl(VALID, *[wide] * 31, {**VALID, "context": {f"k{i}": i for i in range(40)}}),
    )
    assert run_job(dataclasses.replace(settings, max_context_paths=40), job_id) == "completed"
    assert_exactly_once(db, job_id, valid=2, invalid=31)
    reasons = {
        e["reason"]
        for e in db.execute("SELECT reason FROM line_errors WHERE job_id = %s", (job_id,))
    }
    assert reasons == {
        "$.context: more than 40 paths (keys holding a value, nested keys "
        "counted); the event store takes at most that many per line "
        "(EH_MAX_CONTEXT_PATHS)"
    }
    assert [e["event_type"] for e in outbox_line_events(db, job_id)] == [VALID["event_type"]] * 2


def test_a_job_stopped_after_its_last_batch_and_before_completion_completes(settings, db):
    """The worker died between committing the last batch and marking the job completed: the
    checkpoint is at the end of the object, and a range read from there would be refused."""
    content = jsonl(VALID, VALID, VALID) + b"{bad\n"
    job_id = make_job(settings, db, content)
    assert run_job(settings, job_id) == "completed"
    db.execute(
        "UPDATE jobs SET status = 'processing', completed_at = NULL WHERE job_id = %s", (job_id,)
    )  # as it was between the two transactions
    job = job_row(db, job_id)
    assert (job["lines_processed"], job["bytes_processed"]) == (4, len(content))

    assert run_job(settings, job_id) == "completed"
    assert_exactly_once(db, job_id, valid=3, invalid=1)


def test_too_many_attempts_fail_the_job(settings, db):
    job_id = make_job(settings, db, jsonl(VALID))
    db.execute(
        "UPDATE jobs SET attempts = %s, error = 'S3 timed out' WHERE job_id = %s",
        (settings.max_attempts, job_id),
    )
    assert run_job(settings, job_id) == "failed"
    assert "gave up after 5 attempts: S3 timed out" in job_row(db, job_id)["error"]


def test_abandoned_job_resumes_from_its_checkpoint(settings, db):
    settings = dataclasses.replace(settings, batch_lines=7)
    content = jsonl(*[dict(VALID, message=f"m{i}") for i in range(100)])
    job_id = make_job(settings, db, content)

    assert run_job(settings, job_id, stop=StopAfter(30)) == "abandoned"
    job = job_row(db, job_id)
    assert job["status"] == "processing" and 0 < job["lines_processed"] < 30
    assert job["bytes_processed"] == len(
        b"".join(content.splitlines(True)[: job["lines_processed"]])
    )

    assert job["attempts"] == 0  # a clean stop gives its attempt back

    assert run_job(settings, job_id) == "completed"
    assert_exactly_once(db, job_id, valid=100, invalid=0, content=content)
    assert job_row(db, job_id)["attempts"] == 1


def claimed_batch(settings, db, lines_in_batch: int = 3) -> tuple[jobs.Job, lines.LineBatch]:
    """A job a worker has claimed, and its first batch, parsed but not written."""
    job_id = make_job(settings, db, jsonl(*[VALID] * lines_in_batch))
    with psycopg.connect(settings.database_url, row_factory=psycopg.rows.dict_row) as conn:
        job = jobs.claim(conn, settings, job_id)
    batch, validator = lines.LineBatch(), lines.log_entry_validator()
    for line_no in range(1, lines_in_batch + 1):
        lines.add_line(batch, job_id, line_no, json.dumps(VALID).encode(), validator)
    batch.lines = lines_in_batch
    return job, batch


def rows_of_job(db, job_id) -> dict[str, int]:
    return {
        table: db.execute(
            f"SELECT count(*) AS n FROM {table} WHERE job_id = %s", (job_id,)
        ).fetchone()["n"]
        for table in ("log_entries", "line_errors", "outbox")
    }


def test_a_batch_for_a_job_deleted_under_the_worker_writes_nothing(settings, db):
    """With no foreign key from the entries to their job (migration 0012), what keeps a
    deleted job's rows from being written is the batch's own checkpoint move: it finds no
    row and the batch rolls back, its entries with it."""
    job, batch = claimed_batch(settings, db)
    db.execute("DELETE FROM jobs WHERE job_id = %s", (job.job_id,))
    with psycopg.connect(settings.database_url, row_factory=psycopg.rows.dict_row) as conn:
        with pytest.raises(jobs.CheckpointMoved):
            worker.write_batch(conn, job, batch, settings)
    assert rows_of_job(db, job.job_id) == {"log_entries": 0, "line_errors": 0, "outbox": 0}


async def test_a_deletion_waiting_on_a_batch_deletes_what_the_batch_committed(settings, db):
    """A batch holds the job's row (its checkpoint move) until it commits; a deletion that
    asked for the row meanwhile (lock_for_deletion) waits, then deletes the entries in later
    statements, which see the batch's rows: no entry outlives its job. (Deleted before the
    row was theirs, they would be read as of before the batch committed, and stay.)"""
    job, batch = claimed_batch(settings, db)
    with psycopg.connect(settings.database_url, row_factory=psycopg.rows.dict_row) as batch_conn:
        batch_conn.execute("SELECT 1")  # a transaction the batch's own becomes a savepoint of
        worker.write_batch(batch_conn, job, batch, settings)

        async def delete() -> None:
            async with await psycopg.AsyncConnection.connect(
                settings.database_url, row_factory=psycopg.rows.dict_row
            ) as aconn:
                async with aconn.transaction():
                    locked = await jobs.lock_for_deletion(aconn, job.job_id, owner=None)
                    await jobs.delete(aconn, settings, locked, deleted_by="tester")

        deletion = asyncio.create_task(delete())
        await wait_until(
            lambda: db.execute(
                "SELECT count(*) AS n FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()["n"]
            == 1,
            what="the deletion waiting for the job's row",
        )
        batch_conn.commit()
        await deletion
    assert rows_of_job(db, job.job_id)["log_entries"] == 0
    assert job_row(db, job.job_id) is None


# --------------------------------------------------------------------------- log formats


# A file mixing three formats, as pino, zap's production logger and ecs-logging write them.
def test_a_file_mixing_formats_is_mapped_end_to_end(settings, db):
    settings = dataclasses.replace(settings, batch_lines=4)
    content = jsonl(*[PINO_LINE, ZAP_LINE, ECS_LINE] * 3, PINO_LINE)
    job_id = make_job(settings, db, content, default_environment="eu-prod")

    assert run_job(settings, job_id) == "completed"

    assert_exactly_once(db, job_id, valid=10, invalid=0)
    job = jobs.query(db, "get_job", {"job_id": job_id}).fetchone()
    assert job.formats_seen == {"pino": 4, "zap": 3, "ecs": 3}
    assert jobs.job_json(job)["formats"] == {"pino": 4, "zap": 3, "ecs": 3}
    rows = db.execute("SELECT * FROM log_entries WHERE line_no <= 3 ORDER BY line_no").fetchall()
    assert [
        (r["level"], r["service"], r["event_type"], r["environment"], r["message"]) for r in rows
    ] == [
        ("warning", "checkout", "pino.log", "eu-prod", "slow checkout"),
        ("error", "payments.charge", "zap.log", "eu-prod", "charge declined"),
        ("info", "auth", "login", "staging", "user logged in"),
    ]
    assert [r["timestamp"].isoformat() for r in rows] == [
        "2018-07-09T21:17:54.631000+00:00",
        "2018-05-02T23:24:40.993161+00:00",
        "2020-03-20T18:11:37.895000+00:00",
    ]
    assert [r["context"] for r in rows] == [
        {"pid": 657, "hostname": "web-1", "order_id": 42},
        {"caller": "pay/main.go:22", "attempt": 3},
        {"ecs.version": "1.6.0", "user": {"id": "u-7"}},
    ]
    event = outbox_line_event(db, job_id, 2)
    assert (event["event_type"], event["environment"]) == ("zap.log", "eu-prod")
    assert {k: event["event_context"][k] for k in ("level", "service", "message", "context")} == {
        "level": "error",
        "service": "payments.charge",
        "message": "charge declined",
        "context": {"caller": "pay/main.go:22", "attempt": 3},
    }


def test_a_job_in_one_format_refuses_lines_of_another_naming_the_field(settings, db):
    job_id = make_job(settings, db, jsonl(PINO_LINE, ZAP_LINE), format="pino")
    assert run_job(settings, job_id) == "completed"
    assert_exactly_once(db, job_id, valid=1, invalid=1)
    reason = db.execute("SELECT reason FROM line_errors WHERE job_id = %s", (job_id,)).fetchone()[
        "reason"
    ]
    assert reason == "pino: no time (the timestamp)"
    assert job_row(db, job_id)["formats_seen"] == {"pino": 1}


def test_a_job_with_an_unknown_format_fails(settings, db):
    job_id = make_job(settings, db, jsonl(VALID), format="log4j")
    assert run_job(settings, job_id) == "failed"
    assert job_row(db, job_id)["error"].startswith("unknown log format 'log4j'")


def test_a_job_whose_custom_format_cannot_be_used_fails_saying_why(settings, db):
    """A copy that no longer passes the definition schema (registered under an older one)
    fails its job at once, naming the problem, instead of refusing every line."""
    definition = {
        "name": "old",
        "fields": {"timestamp": ["t"], "level": ["l"]},
        "time_unit": "fortnights",
    }
    job_id = make_job(settings, db, jsonl(VALID), format="old", format_definition=definition)
    assert run_job(settings, job_id) == "failed"
    assert job_row(db, job_id)["error"].startswith(
        "log format 'old' cannot be used: $.time_unit: 'fortnights' is not one of"
    )


# --------------------------------------------------------------------------- the process


def queue_depth(settings, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def assert_every_message_settled(settings, worker_process) -> None:
    """The worker is stopped (SIGTERM, exit 0) and the queue is then empty: a message it held
    unacknowledged would have gone back to the queue when its channel closed. (A passive
    declare counts only ready messages, so while the worker runs an unacked one looks gone.)"""
    worker_process.terminate()
    assert worker_process.wait(timeout=30) == 0, worker_process.log_path.read_text()[-3000:]
    assert queue_depth(settings, settings.queue) == 0, "a message was left unacknowledged"


def test_worker_processes_jobs_and_dead_letters_poison(settings, db, start_process):
    publish_to_queue(settings, b"this is not json")
    publish_to_queue(settings, json.dumps({"job_id": str(uuid.uuid4())}).encode())
    job_id = enqueue_job(settings, db, jsonl(VALID, VALID, VALID))
    consumer = start_process("worker.py")

    wait_for(lambda: job_row(db, job_id)["status"] == "completed", what="job completed")
    dead = amqp.dead_letter_queue(settings.queue)
    wait_for(lambda: queue_depth(settings, dead) == 2, what="two dead-lettered messages")
    wait_for(lambda: queue_depth(settings, settings.queue) == 0, what="the queue empty")
    assert_every_message_settled(settings, consumer)
    assert queue_depth(settings, dead) == 2
    assert_exactly_once(db, job_id, valid=3, invalid=0)


def test_duplicate_message_processes_the_job_once(settings, db, start_process):
    """Both messages for the job are acked (not just taken: see assert_every_message_settled)
    and the job is processed once."""
    job_id = enqueue_job(settings, db, jsonl(*[VALID] * 50))
    publish_to_queue(settings, job_message(db, job_id))
    consumer = start_process("worker.py")
    wait_for(lambda: job_row(db, job_id)["status"] == "completed", what="job completed")
    wait_for(
        lambda: len(logged_events(consumer, "job.skipped")) == 1,
        what="the duplicate message handled",
    )
    assert_every_message_settled(settings, consumer)
    assert_exactly_once(db, job_id, valid=50, invalid=0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_worker_stopped_mid_file_resumes_without_loss_or_duplicates(
    settings, db, start_process, sig
):
    lines = [dict(VALID, message=f"m{i}") for i in range(300)]
    content = jsonl(*lines[:150]) + b"{bad\n" + jsonl(*lines[150:])
    job_id = enqueue_job(settings, db, content)
    slow = start_process("worker.py", EH_LINE_DELAY_MAX_S="0.02", EH_BATCH_LINES="10")
    wait_for(lambda: job_row(db, job_id)["lines_processed"] >= 30, what="some progress")

    slow.send_signal(sig)
    assert slow.wait(timeout=10) == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    job = assert_stored_up_to_checkpoint(db, job_id, content)
    assert job["status"] == "processing" and job["lines_processed"] < 301
    if sig == signal.SIGTERM:  # a clean stop: the job abandoned, its attempt given back
        log = slow.log_path.read_text()
        assert '"job.abandoned"' in log and '"job.attempt_failed"' not in log, log[-3000:]
        assert job["attempts"] == 0, log[-3000:]

    start_process("worker.py")
    wait_for(lambda: job_row(db, job_id)["status"] == "completed", what="job completed")
    assert_exactly_once(db, job_id, valid=300, invalid=1, content=content)
    assert job_row(db, job_id)["lines_processed"] == 301
    # A SIGTERM is a clean stop, not a failed attempt; a SIGKILL may be a crash the job causes.
    assert job_row(db, job_id)["attempts"] == (1 if sig == signal.SIGTERM else 2)


def test_a_job_whose_message_was_lost_is_republished(settings, db, start_process):
    # As if the API committed the job and crashed before publishing: no message at all.
    # Ages are moved in the database, far from the threshold either way: a slow machine
    # cannot make the fresh job old enough to count as lost (it once did, at 5 s).
    job_id = make_job(settings, db, jsonl(VALID, VALID))
    db.execute(
        "UPDATE jobs SET updated_at = now() - interval '1 hour' WHERE job_id = %s", (job_id,)
    )
    fresh_id = make_job(settings, db, jsonl(VALID))  # queued just now: not yet "lost"
    start_process("worker.py", EH_REQUEUE_AFTER_S="600")  # looks at start, then every 300 s
    wait_for(lambda: job_row(db, job_id)["status"] == "completed", what="lost job completed")
    assert job_row(db, fresh_id)["status"] == "queued"
    assert_exactly_once(db, job_id, valid=2, invalid=0)


def test_a_busy_queue_does_not_hide_a_lost_job(settings, db):
    """The queue is never empty under steady load; a lost job is still found once a job
    uploaded more than EH_REQUEUE_AFTER_S after it has started."""
    settings = dataclasses.replace(settings, requeue_after_s=5)
    lost_id = make_job(settings, db, jsonl(VALID), store=False)
    db.execute(
        "UPDATE jobs SET created_at = now() - interval '30 seconds', "
        "updated_at = now() - interval '30 seconds' WHERE job_id = %s",
        (lost_id,),
    )
    soon_after_id = make_job(settings, db, jsonl(VALID), store=False)
    db.execute(
        "UPDATE jobs SET created_at = now() - interval '28 seconds', started_at = now(), "
        "status = 'processing' WHERE job_id = %s",
        (soon_after_id,),
    )
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = conn.channel()
        amqp.declare_queues(channel, settings.queue)
        # Only a job uploaded 2 s later has started: the lost job's message may still be queued.
        assert worker.requeue_lost_jobs(db, channel, settings, queue_empty=False) == 0
        later_id = make_job(settings, db, jsonl(VALID), store=False)
        db.execute(
            "UPDATE jobs SET started_at = now(), status = 'processing' WHERE job_id = %s",
            (later_id,),
        )
        assert worker.requeue_lost_jobs(db, channel, settings, queue_empty=False) == 1
        assert worker.requeue_lost_jobs(db, channel, settings, queue_empty=False) == 0  # once
        # Ten seconds on, past the grace period: the new message is queued behind the later
        # job's, whose start says nothing about it. Not lost (again) yet.
        db.execute(
            "UPDATE jobs SET updated_at = updated_at - interval '10 seconds', "
            "created_at = created_at - interval '10 seconds' WHERE job_id IN (%s, %s)",
            (lost_id, later_id),
        )
        assert worker.requeue_lost_jobs(db, channel, settings, queue_empty=False) == 0
    finally:
        conn.close()
    assert queue_depth(settings, settings.queue) == 1
    assert jobs.parse_message(get_one_message(settings)) == lost_id


def get_one_message(settings) -> bytes:
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        _method, _props, body = conn.channel().basic_get(settings.queue, auto_ack=True)
        return body
    finally:
        conn.close()
