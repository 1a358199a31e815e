"""Line events as ranges (migration 0010_outbox_ranges): a worker batch commits one outbox row
naming its job's line range, and the relay builds each line's event from its log entry.

The events are the ones per-line rows gave, byte for byte, in event_log too; a refused range is
salvaged down to its single bad lines; a job deleted before or while its ranges are relayed
leaves nothing behind; a database with per-line rows pending drains them across the upgrade.
Real Postgres, a real ClickHouse server, the worker's own code (helpers.run_job).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import uuid

import psycopg
import pytest
import yoyo
from psycopg.rows import dict_row

import core
import event_log
import jobs
import outbox
import outbox_batches
import relay
from helpers import (
    PINO_LINE,
    assert_exactly_once,
    copy_test_entries,
    drain,
    event_log_ids,
    jsonl,
    legacy_line_rows,
    make_job,
    outbox_line_events,
    outbox_status,
    run_job,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def ch(relay_settings):
    client = event_log.connect_clickhouse(relay_settings.clickhouse_url)
    yield client
    client.close()


def varied_lines(n: int) -> bytes:
    """Canonical lines with what a line's event carries in every shape: escapes, non-ASCII,
    nested and numeric context, an extra member, milliseconds and offsets, a bad line, a blank
    one; the bad and blank lines leave gaps in the ranges."""
    objs = []
    for i in range(n):
        objs.append(
            {
                "timestamp": f"2026-11-20T09:{i % 60:02d}:{i % 59:02d}.{i % 1000:03d}+0{i % 3}:00",
                "level": ["info", "ERROR", "debug"][i % 3],
                "service": f"svc-{i % 4}",
                "event_type": "order.placed",
                "message": f'line {i}: "quoted" \\ é ✓ \n',
                "environment": "staging" if i % 2 else "production",
                "context": {
                    "n": i,
                    "f": 1.50,
                    "big": 2**62,
                    "nested": {"list": [1, "a", None]},
                    "uni": "ü",
                },
                **({"request_id": f"r{i}"} if i % 5 == 0 else {}),
            }
        )
    content = jsonl(*objs)
    return content + b"not json\n\n" + jsonl(*objs[:3])


def event_log_rows(ch) -> list[str]:
    """event_log's line events, every column, as ClickHouse gives them back."""
    result = ch.raw_query(
        "SELECT * FROM event_log WHERE event_type NOT LIKE 'job.%' ORDER BY event_id "
        "FORMAT JSONEachRow"
    )
    return result.decode().splitlines()


def test_the_same_file_through_per_line_rows_and_through_ranges_gives_the_same_event_log(
    settings, relay_settings, db, ch
):
    content = varied_lines(60)
    job_id = make_job(dataclasses.replace(settings, batch_lines=7), db, content)
    assert run_job(dataclasses.replace(settings, batch_lines=7), job_id) == "completed"
    db.execute("UPDATE outbox SET trace_id = %s WHERE job_id = %s", (TRACE_ID, job_id))
    ranges = db.execute(
        "SELECT job_id, first_line, last_line, events, trace_id FROM outbox "
        "WHERE job_id IS NOT NULL ORDER BY id"
    ).fetchall()
    assert len(ranges) >= 9 and sum(r["events"] for r in ranges) == 63

    # The old path: the rows the worker wrote per line before ranges.
    db.execute("DELETE FROM outbox WHERE job_id IS NOT NULL")
    with db.cursor() as cur:
        outbox.copy_outbox_rows(cur, legacy_line_rows(job_id, content, TRACE_ID))
    per_line = {e["event_id"]: e for e in outbox_line_events(db, job_id)}
    lifecycle = lifecycle_rows(db)
    assert drain(db, ch, relay_settings) == 63 + lifecycle
    old = event_log_rows(ch)

    # The new path: the same entries, through their ranges.
    ch.command("TRUNCATE TABLE event_log")
    with db.cursor() as cur:
        for r in ranges:
            outbox.insert_line_range(
                cur, r["job_id"], r["first_line"], r["last_line"], r["events"], r["trace_id"]
            )
    from_ranges = {e["event_id"]: e for e in outbox_line_events(db, job_id)}
    assert from_ranges == per_line
    assert drain(db, ch, relay_settings) == 63
    new = event_log_rows(ch)
    assert len(new) == 63 and new == old
    assert [json.loads(r)["event_context"]["trace_id"] for r in new] == [TRACE_ID] * 63
    assert {json.loads(r)["event_id"] for r in new} == {
        str(outbox.line_event_id(job_id, n)) for n in (*range(1, 61), 63, 64, 65)
    }


def lifecycle_rows(db) -> int:
    return db.execute("SELECT count(*) AS n FROM outbox WHERE event_type LIKE 'job.%%'").fetchone()[
        "n"
    ]


@pytest.mark.parametrize("trace_id", [None, "4bf92f3577b34da6a3ce929d0e0e4736"])
def test_range_lines_are_byte_for_byte_the_per_line_rows_lines(settings, db, trace_id):
    """The JSONEachRow lines themselves, as the relay sends them (pino lines, mapped), with
    and without the trace the events name (range_event_log_line writes the text out)."""
    content = jsonl(*[PINO_LINE] * 5) + varied_lines(5)
    job_id = make_job(settings, db, content)
    assert run_job(settings, job_id) == "completed"
    db.execute("UPDATE outbox SET trace_id = %s WHERE job_id = %s", (trace_id, job_id))
    ids = [r["id"] for r in db.execute("SELECT id FROM outbox WHERE job_id = %s", (job_id,))]
    ranged = {r.event_id: r.line for r in outbox_batches.batch_rows(db, ids)}
    # canonical lines only: pino's are not among them
    rows = legacy_line_rows(job_id, content, trace_id)
    with db.cursor() as cur:
        outbox.copy_outbox_rows(cur, rows)
    legacy_ids = [
        r["id"]
        for r in db.execute("SELECT id FROM outbox WHERE event_context ? 'line_no' ORDER BY id")
    ]
    legacy = {r.event_id: r.line for r in outbox_batches.batch_rows(db, legacy_ids)}
    assert len(legacy) == 8 and legacy == {k: ranged[k] for k in legacy}


def line_job(db, n: int, bad: set[int]) -> uuid.UUID:
    """A job with n entries (lines 1..n) in ranges of 10, as the worker writes them, but for
    the `bad` lines, whose time ClickHouse's DateTime cannot hold (the worker refuses such a
    line; the relay must still cope with a refused one)."""
    job_id = uuid.uuid4()
    db.execute(
        "INSERT INTO jobs (job_id, file_name, size_bytes, bucket, object_key, "
        "lines_total, owner) VALUES (%s, 'r.jsonl', 1, 'b', 'k', %s, 'alice')",
        (job_id, n),
    )
    base = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
    with db.cursor() as cur:
        copy_test_entries(
            cur,
            job_id,
            n,
            when=lambda line_no: (
                dt.datetime(1960, 1, 1, tzinfo=dt.timezone.utc)
                if line_no in bad
                else base + dt.timedelta(seconds=line_no)
            ),
        )
        for first in range(1, n + 1, 10):
            last = min(first + 9, n)
            outbox.insert_line_range(cur, job_id, first, last, last - first + 1, None)
    return job_id


def delivery(db, job_id) -> tuple[int, int]:
    row = db.execute(core.QUERIES["job_delivery"], {"job_id": str(job_id)}).fetchone()
    return row["waiting"], row["dead"]


def test_a_refused_range_is_salvaged_down_to_its_single_bad_lines(
    db, ch, relay_settings, monkeypatch
):
    """Ranges split like rows: every good line reaches ClickHouse once, each bad one alone goes
    to outbox_dead (whole, under its range's id and its line). A salvage allowed few refusals
    leaves parts for later, as ranges of their own."""
    monkeypatch.setattr(relay, "SALVAGE_MAX_REFUSALS", 3)
    settings = dataclasses.replace(relay_settings, relay_batch_max_rows=100)
    bad = {7, 33, 34, 71, 100}
    job_id = line_job(db, 100, bad)
    assert delivery(db, job_id) == (100, 0)
    for _ in range(1, relay.DEAD_AFTER_ATTEMPTS):
        with pytest.raises(relay.BatchRejected):
            relay.relay_once(db, ch, settings)
        assert outbox_status(db)["backlog"] == 100
    for _ in range(50):
        relay.relay_once(db, ch, settings)
        if outbox_status(db)["backlog"] == 0:
            break

    good = {outbox.line_event_id(job_id, n) for n in range(1, 101) if n not in bad}
    ids = event_log_ids(ch)
    assert len(ids) == len(good) == 95 and set(ids) == good
    dead = db.execute(
        "SELECT line_no, event_id, event_context, error FROM outbox_dead ORDER BY line_no"
    ).fetchall()
    assert [d["line_no"] for d in dead] == sorted(bad)
    assert [d["event_id"] for d in dead] == [outbox.line_event_id(job_id, n) for n in sorted(bad)]
    assert dead[0]["event_context"]["message"] == "m7" and "event_date_time" in dead[0]["error"]
    assert outbox_status(db) == {"backlog": 0, "oldest_age_s": 0, "dead": 5}
    assert db.execute("SELECT count(*) AS n FROM outbox_batch").fetchone()["n"] == 0
    assert delivery(db, job_id) == (0, 5)


async def delete_job(settings, job_id) -> None:
    """jobs.delete as the API runs it (the job locked in the transaction)."""
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, row_factory=dict_row
    ) as aconn:
        async with aconn.transaction():
            job = await jobs.lock_for_deletion(aconn, job_id, owner=None)
            await jobs.delete(aconn, settings, job, deleted_by="tester")


def test_a_deleted_jobs_unrelayed_ranges_go_with_it(settings, relay_settings, db, ch):
    job_id = make_job(dataclasses.replace(settings, batch_lines=4), db, varied_lines(20))
    assert run_job(dataclasses.replace(settings, batch_lines=4), job_id) == "completed"
    assert (
        db.execute("SELECT count(*) AS n FROM outbox WHERE job_id = %s", (job_id,)).fetchone()["n"]
        >= 5
    )
    asyncio.run(delete_job(relay_settings, job_id))
    assert (
        db.execute("SELECT count(*) AS n FROM outbox WHERE job_id IS NOT NULL").fetchone()["n"] == 0
    )
    drain(db, ch, relay_settings)  # the lifecycle events, job.deleted among them
    assert event_log.delete_events_of_deleted_jobs(db, ch) == 1
    assert [r[0] for r in ch.query("SELECT event_type FROM event_log").result_rows] == [
        "job.deleted"
    ]


def test_a_range_whose_job_is_deleted_between_claim_and_insert(relay_settings, db, ch):
    """The batch holding the range was read before the delete: its events reach ClickHouse,
    the range stays until the batch is done, and only then are the job's events deleted there.
    A batch recorded but not read (its relay died) finds the entries gone and sends nothing."""
    job_id = line_job(db, 30, set())
    settings = dataclasses.replace(relay_settings, relay_batch_max_rows=10)
    batch, rows = outbox_batches.claim_batch(db, 10, 0.0)  # lines 1-10, read
    dying, _ = outbox_batches.claim_batch(db, 10, 0.0)  # lines 11-20: its relay dies
    asyncio.run(delete_job(relay_settings, job_id))
    assert (
        db.execute("SELECT count(*) AS n FROM outbox WHERE job_id IS NOT NULL").fetchone()["n"] == 2
    )  # held by the two batches; lines 21-30 went
    assert event_log.delete_events_of_deleted_jobs(db, ch) == 0  # waits for them

    with db.transaction():
        assert outbox_batches.lock_batch(db, batch.batch_id) is not None
        relay.deliver_batch(db, ch, batch, rows)
    assert len(event_log_ids(ch)) == 10
    assert relay.relay_once(db, ch, settings) == 0  # the dying batch: nothing left to send
    assert drain(db, ch, settings) == 1  # job.deleted
    assert outbox_status(db)["backlog"] == 0
    assert db.execute("SELECT count(*) AS n FROM outbox_batch").fetchone()["n"] == 0
    assert event_log.delete_events_of_deleted_jobs(db, ch) == 1
    assert [r[0] for r in ch.query("SELECT event_type FROM event_log").result_rows] == [
        "job.deleted"
    ]


def test_per_line_rows_pending_across_the_upgrade_drain_then_ranges_follow(
    settings, relay_settings, database_url, ch
):
    """A database at 0009 with per-line rows pending, some in a recorded batch whose relay
    died: upgraded, the relay drains them as they were, then the worker's ranges follow, and
    every line of the job is in event_log once."""
    backend = yoyo.get_backend(core.yoyo_url(database_url))
    migrations = yoyo.read_migrations(str(core.MIGRATIONS_DIR))
    with backend.lock():
        backend.rollback_migrations(
            backend.to_rollback(migrations.filter(lambda m: m.id == "0010_outbox_ranges"))
        )
    backend.connection.close()
    content = varied_lines(40)
    settings = dataclasses.replace(settings, batch_lines=10)
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as db:
        job_id = make_job(settings, db, content)
        # The first 20 lines were processed before the upgrade: entries, per-line rows.
        old_rows = [
            r for r in legacy_line_rows(job_id, content) if json.loads(r[4])["line_no"] <= 20
        ]
        db.execute(
            "UPDATE jobs SET status = 'processing', attempts = 1, lines_processed = 20, "
            "bytes_processed = %s, lines_valid = 20 WHERE job_id = %s",
            (sum(len(x) + 1 for x in content.split(b"\n")[:20]), job_id),
        )
        with db.cursor() as cur:
            contexts = [json.loads(r[4]) for r in old_rows]
            core.copy_entries(
                cur,
                (
                    (
                        job_id,
                        c["line_no"],
                        r[2],
                        c["level"],
                        c["service"],
                        r[1],
                        r[3],
                        c["message"],
                        json.dumps(c["context"]),
                    )
                    for r, c in zip(old_rows, contexts, strict=True)
                ),
            )
            outbox.copy_outbox_rows(cur, old_rows)
        # A relay of before ranges recorded lines 1-8 as a batch, and died.
        ids = [r["id"] for r in db.execute("SELECT id FROM outbox ORDER BY id LIMIT 8")]
        db.execute(
            "INSERT INTO outbox_batch (first_id, last_id, ids, token) "
            "VALUES (%s, %s, %s, 'eh-outbox-8-before-the-upgrade')",
            (ids[0], ids[-1], ids),
        )

    assert core.migrate(database_url) == 1
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as db:
        assert delivery(db, job_id) == (20, 0)
        assert run_job(settings, job_id) == "completed"  # lines 21-45, as ranges
        assert (
            db.execute("SELECT count(*) AS n FROM outbox WHERE job_id = %s", (job_id,)).fetchone()[
                "n"
            ]
            >= 2
        )
        assert_exactly_once(db, job_id, valid=43, invalid=1)
        assert delivery(db, job_id) == (43, 0)
        lifecycle = lifecycle_rows(db)
        assert drain(db, ch, relay_settings) == 43 + lifecycle
        assert outbox_status(db) == {"backlog": 0, "oldest_age_s": 0, "dead": 0}
        assert delivery(db, job_id) == (0, 0)
    ids = event_log_ids(ch)
    line_ids = {outbox.line_event_id(job_id, n) for n in (*range(1, 41), 43, 44, 45)}
    assert len([i for i in ids if i in line_ids]) == 43 and line_ids <= set(ids)
