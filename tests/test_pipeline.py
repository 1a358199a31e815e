"""The whole system: the sample file goes through the API, the worker and the relay, and its
valid lines arrive in ClickHouse once each, with their fields mapped."""

from __future__ import annotations

import io
import json
import signal
import uuid

import aiohttp

import core
import event_log
import outbox
from helpers import (
    ECS_LINE,
    PINO_LINE,
    SAMPLE,
    SAMPLE_INVALID,
    SAMPLE_VALID,
    VALID,
    ZAP_LINE,
    assert_stored_up_to_checkpoint,
    bearer,
    enqueue_job,
    job_row,
    jsonl,
    outbox_status,
    wait_for,
    wait_until,
)
from processes import logged_events


def stop_cleanly(*procs) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def line_events(ch, columns: str) -> list[tuple]:
    """The line events (not lifecycle or audit ones) in event_log, in line order."""
    return ch.query(
        f"SELECT {columns} FROM event_log WHERE event_type NOT LIKE 'job.%' "
        "AND event_type NOT LIKE 'audit.%' "
        "ORDER BY toUInt64(event_context.line_no)"
    ).result_rows


async def test_sample_upload_reaches_clickhouse_exactly_once(admin_client, settings, start_process):
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(SAMPLE.read_bytes()), filename="sample.jsonl")
    job = await (await admin_client.post("/api/v1/files/upload", data=form)).json()
    start_process("worker.py")
    start_process("relay.py", RELAY_BATCH_MAX_WAIT_S="0.2", RELAY_POLL_S="0.5")

    async def completed():
        state = await (await admin_client.get(f"/api/v1/jobs/{job['job_id']}")).json()
        return state if state["status"] == "completed" else None

    final = await wait_until(completed, 60, what="the job to complete")
    assert (final["lines_valid"], final["lines_invalid"]) == (SAMPLE_VALID, SAMPLE_INVALID)

    async def drained():
        stats = await (await admin_client.get("/api/v1/stats")).json()
        return stats if stats["outbox"]["backlog"] == 0 else None

    stats = await wait_until(drained, 60, what="the outbox to drain")
    assert stats["jobs"]["completed"] == 1 and stats["outbox"]["dead"] == 0

    with event_log.connect_clickhouse(settings.clickhouse_url) as ch:  # the relay still running
        lines = line_events(ch, "event_id, event_type, environment, event_context")
        lifecycle = ch.query(
            "SELECT event_type FROM event_log WHERE event_type LIKE 'job.%' "
            "ORDER BY event_date_time, event_type"
        ).result_rows

    assert len(lines) == SAMPLE_VALID
    assert len({r[0] for r in lines}) == SAMPLE_VALID
    assert sorted(t for (t,) in lifecycle) == ["job.completed", "job.queued", "job.started"]

    first_line = json.loads(SAMPLE.read_text().splitlines()[0])
    event_id, event_type, environment, context = lines[0]
    assert event_id == outbox.line_event_id(uuid.UUID(job["job_id"]), 1)
    assert event_type == first_line["event_type"]
    assert environment == first_line.get("environment", "production")
    assert context["level"] == first_line["level"].lower()
    assert context["service"] == first_line["service"]
    assert context["message"] == first_line["message"]
    assert context["job_id"] == job["job_id"] and int(context["line_no"]) == 1
    # The line's own context, and its unknown fields under context.extra, as JSON paths.
    http = first_line["context"]["http"]
    assert context["context"]["http"]["path"] == http["path"]
    assert int(context["context"]["http"]["status"]) == http["status"]
    assert float(context["context"]["http"]["duration_ms"]) == http["duration_ms"]
    assert context["context"]["extra"]["request_id"] == first_line["request_id"]


async def test_a_deleted_job_leaves_postgres_s3_and_clickhouse(
    admin_client, settings, start_process, db, make_token
):
    """DELETE takes the job's rows and file at once, and the relay its events from event_log,
    even though they were still on their way when the job was deleted; another owner's job
    stays whole, and the job.deleted event stays as the audit trail."""
    alice = bearer(make_token("alice"))
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(SAMPLE.read_bytes()), filename="sample.jsonl")
    doomed = await (
        await admin_client.post("/api/v1/files/upload", data=form, headers=alice)
    ).json()
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(SAMPLE.read_bytes()), filename="kept.jsonl")
    kept = await (await admin_client.post("/api/v1/files/upload", data=form)).json()
    worker = start_process("worker.py")

    async def both_completed():
        states = [
            await (await admin_client.get(f"/api/v1/jobs/{j['job_id']}")).json()
            for j in (doomed, kept)
        ]
        return all(s["status"] == "completed" for s in states)

    await wait_until(both_completed, 60, what="both jobs to complete")
    stop_cleanly(worker)
    # The relay has not run: every event of the job is still in the outbox.
    response = await admin_client.delete(f"/api/v1/jobs/{doomed['job_id']}", headers=alice)
    assert response.status == 204, await response.text()
    assert (await admin_client.get(f"/api/v1/jobs/{doomed['job_id']}")).status == 404
    for table in ("log_entries", "line_errors"):
        assert (
            db.execute(
                f"SELECT count(*) AS n FROM {table} WHERE job_id = %s", (doomed["job_id"],)
            ).fetchone()["n"]
            == 0
        )
    s3 = core.s3_client(settings)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=settings.s3_bucket).get("Contents", [])]
    assert keys == [f"uploads/{kept['job_id']}.jsonl"]

    relay_proc = start_process("relay.py", RELAY_BATCH_MAX_WAIT_S="0.2", RELAY_POLL_S="0.5")
    await wait_until(
        lambda: db.execute("SELECT clickhouse_at FROM job_deletions").fetchone()["clickhouse_at"],
        60,
        what="the deletion to reach ClickHouse",
    )

    with event_log.connect_clickhouse(settings.clickhouse_url) as ch:

        def events_of(job):
            return sorted(
                r[0]
                for r in ch.query(
                    "SELECT event_type FROM event_log "
                    "WHERE event_context.job_id::String = {j:String}",
                    parameters={"j": job["job_id"]},
                ).result_rows
            )

        assert events_of(doomed) == ["job.deleted"]
        deleted = ch.query(
            "SELECT event_context FROM event_log WHERE event_type = 'job.deleted'"
        ).result_rows[0][0]
        assert (deleted["deleted_by"], deleted["owner"]) == ("alice", "alice")
        assert len(events_of(kept)) == SAMPLE_VALID + 3
    stop_cleanly(relay_proc)


async def test_lines_in_other_formats_reach_clickhouse_mapped(
    admin_client, settings, start_process
):
    """pino, zap and ECS lines in one file, uploaded as they come off the disk: in event_log
    each is an event of the canonical shape, its own unmapped fields under context."""
    content = b"".join(
        json.dumps(line).encode() + b"\n" for line in (PINO_LINE, ZAP_LINE, ECS_LINE)
    )
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(content), filename="mixed.jsonl")
    response = await admin_client.post("/api/v1/files/upload?environment=eu-prod", data=form)
    job = await response.json()
    start_process("worker.py")
    start_process("relay.py", RELAY_BATCH_MAX_WAIT_S="0.2", RELAY_POLL_S="0.5")

    async def drained():
        state = await (await admin_client.get(f"/api/v1/jobs/{job['job_id']}")).json()
        stats = await (await admin_client.get("/api/v1/stats")).json()
        return state["status"] == "completed" and stats["outbox"]["backlog"] == 0 and state

    final = await wait_until(drained, 60, what="the outbox to drain")
    assert final["formats"] == {"pino": 1, "zap": 1, "ecs": 1} and final["lines_valid"] == 3

    with event_log.connect_clickhouse(settings.clickhouse_url) as ch:
        rows = line_events(ch, "event_type, environment, event_context")
    assert [(t, e) for t, e, _ in rows] == [
        ("pino.log", "eu-prod"),
        ("zap.log", "eu-prod"),
        ("login", "staging"),
    ]
    pino, zap, ecs = (context for _, _, context in rows)
    assert (pino["level"], pino["service"], pino["message"]) == (
        "warning",
        "checkout",
        "slow checkout",
    )
    assert int(pino["context"]["order_id"]) == 42 and pino["context"]["hostname"] == "web-1"
    assert (zap["level"], zap["service"]) == ("error", "payments.charge")
    assert zap["context"]["caller"] == "pay/main.go:22" and int(zap["context"]["attempt"]) == 3
    assert (ecs["level"], ecs["service"], ecs["message"]) == ("info", "auth", "user logged in")
    assert ecs["context"]["user"]["id"] == "u-7"


def test_two_workers_sharing_a_queue_store_each_line_once(settings, db, start_process):
    """Two worker.py processes take six jobs from one queue while a relay runs: each line of
    each job is stored once in Postgres and reaches event_log once."""
    env = {"EH_BATCH_LINES": "250", "EH_LINE_DELAY_MAX_S": "0.0002"}
    workers = [start_process("worker.py", **env) for _ in range(2)]
    start_process("relay.py", RELAY_BATCH_MAX_WAIT_S="0.2", RELAY_POLL_S="0.5")
    wait_for(
        lambda: all(logged_events(w, "worker.consuming") for w in workers),
        what="both workers consuming",
    )
    contents = [
        jsonl(*[dict(VALID, message=f"job {j} line {i}") for i in range(2_000)]) for j in range(6)
    ]
    jobs = [enqueue_job(settings, db, content) for content in contents]

    wait_for(
        lambda: all(job_row(db, j)["status"] == "completed" for j in jobs),
        timeout=90,
        what="every job completed",
    )
    wait_for(lambda: outbox_status(db)["backlog"] == 0, timeout=60, what="the outbox drained")
    assert all(logged_events(w, "job.completed") for w in workers)  # the queue was shared
    for job_id, content in zip(jobs, contents, strict=True):
        # Each line an entry under its own number, with its own line's message (the primary
        # key alone would make a count of rows say nothing); the outbox is the relay's now.
        job = assert_stored_up_to_checkpoint(db, job_id, content)
        assert (job["lines_processed"], job["lines_valid"], job["lines_invalid"]) == (
            2_000,
            2_000,
            0,
        )
    with event_log.connect_clickhouse(settings.clickhouse_url) as ch:
        events = ch.query(
            "SELECT event_context.job_id::String AS job, count(), uniqExact(event_id), "
            "uniqExact(toUInt64(event_context.line_no)) FROM event_log "
            "WHERE event_type = {t:String} GROUP BY job",
            parameters={"t": VALID["event_type"]},
        ).result_rows
    assert sorted(events) == sorted((str(j), 2_000, 2_000, 2_000) for j in jobs)
