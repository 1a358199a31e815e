"""Plain helpers the test modules share: waiting for an event, the test content, the API over
HTTP, and reading back what the services kept. Fixtures live in conftest.py, the processes a
test starts and their logs in processes.py, the pool of test databases in databases.py; a test
module imports helpers from here and never from another test module or from conftest
(tests/test_lint.py checks that)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import gzip
import inspect
import io
import json
import os
import threading
import time
import uuid
from pathlib import Path

import aiohttp
import pika
import psycopg
import structlog
import zstandard
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

import amqp
import config
import core
import event_log
import jobs
import lines
import outbox
import outbox_batches
import relay
import uploads
import worker

ROOT = Path(__file__).resolve().parent.parent


def in_ci() -> bool:
    """CI=true (as `.ci/run` sets): a test missing a system tool it needs fails, not skips."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


# --------------------------------------------------------------------------- waiting


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def wait_until(check, timeout: float = 30.0, what: str = "condition", interval: float = 0.1):
    """wait_for for a test on the event loop (a server on it keeps running): `check` is
    either a coroutine function, awaited, or a plain function, called in a thread (it may
    block, on a database say). Its first truthy value is returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if inspect.iscoroutinefunction(check):
            value = await check()
        else:
            value = await asyncio.to_thread(check)
            if inspect.isawaitable(value):  # a lambda around a coroutine function
                value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- content


VALIDATOR = lines.log_entry_validator()


VALID = {
    "timestamp": "2026-11-23T10:00:00Z",
    "level": "info",
    "service": "checkout",
    "event_type": "order.created",
    "message": "order created",
}


PINO_LINE = {
    "level": 40,
    "time": 1531171074631,
    "msg": "slow checkout",
    "pid": 657,
    "hostname": "web-1",
    "name": "checkout",
    "order_id": 42,
}


ZAP_LINE = {
    "level": "error",
    "ts": 1525303480.993161,
    "caller": "pay/main.go:22",
    "logger": "payments.charge",
    "msg": "charge declined",
    "attempt": 3,
}


ECS_LINE = {
    "@timestamp": "2020-03-20T18:11:37.895Z",
    "log.level": "info",
    "message": "user logged in",
    "ecs.version": "1.6.0",
    "service": {"name": "auth", "environment": "staging"},
    "event": {"action": "login"},
    "user": {"id": "u-7"},
}


MYAPP = {
    "name": "myapp",
    "description": "our gateway's logs",
    "fields": {
        "timestamp": ["epoch_ms"],
        "level": ["sev"],
        "message": ["text"],
        "service": ["app.name"],
        "event_type": ["kind"],
        "environment": ["app.env"],
    },
    "time_unit": "ms",
    "levels": {"W": "warning", "SEVERE": "critical", "5": "debug"},
}


MYAPP_LINE = {
    "epoch_ms": 1764496800000,
    "sev": "w",
    "text": "slow upstream",
    "kind": "proxy.slow",
    "app": {"name": "gateway", "env": "staging", "build": 41},
    "upstream": "db-1",
}


SAMPLE = ROOT / "examples" / "sample.jsonl"
SAMPLE_VALID, SAMPLE_INVALID = 280, 16  # its lines the worker stores, and refuses


def jsonl(*objs) -> bytes:
    """A file of JSON lines, one per object."""
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def file_lines(content: bytes) -> list[bytes]:
    """The file's physical lines, each with its newline (the last may have none)."""
    parts = content.split(b"\n")
    return [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def message_of(line: bytes) -> str | None:
    try:
        return json.loads(line).get("message")
    except ValueError:
        return None


# --------------------------------------------------------------------------- the API over HTTP


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def upload(
    client, content: bytes, name: str = "app.jsonl", content_type: str = "application/x-ndjson"
):
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(content), filename=name, content_type=content_type)
    return await client.post("/api/v1/files/upload", data=form)


def file_part(content: bytes, disposition: bytes = b'filename="app.jsonl"') -> bytes:
    return (
        b'--b\r\nContent-Disposition: form-data; name="file"; '
        + disposition
        + b"\r\nContent-Type: application/x-ndjson\r\n\r\n"
        + content
        + b"\r\n"
    )


def post_multipart(client, body: bytes):
    """POST a hand-made multipart body (boundary `b`) to the upload endpoint."""
    return client.post(
        "/api/v1/files/upload",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )


async def completed_job(client, job_id, timeout: float = 60.0) -> dict:
    """The job as GET /api/v1/jobs/{id} gives it, once it says `completed`."""

    async def completed():
        state = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
        return state if state["status"] == "completed" else None

    return await wait_until(completed, timeout, what=f"job {job_id} completed")


async def assert_problem(response, status: int) -> dict:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body = await response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


async def gql(client, query: str, variables: dict | None = None, **extra) -> dict:
    response = await client.post("/graphql", json={"query": query, "variables": variables, **extra})
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


def capture_access_log():
    """structlog's capture_logs, with the bound contextvars (request_id, job_id) merged in."""
    return structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars])


def watchers_dropped(logs) -> list[dict]:
    return [entry for entry in logs if entry["event"] == "listener.watcher_dropped"]


# ----------------------------------------------------------- what was kept: rows, objects, messages


def aged(db, job_id, days: float) -> None:
    """The job as if uploaded `days` ago (no waiting: retention counts from created_at)."""
    db.execute(
        "UPDATE jobs SET created_at = now() - make_interval(secs => %s) WHERE job_id = %s",
        (days * 86400, job_id),
    )


def job_row(db, job_id) -> dict:
    return db.execute("SELECT * FROM jobs WHERE job_id = %s", (job_id,)).fetchone()


def job_count(db) -> int:
    return db.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"]


def stored_keys(settings) -> list[str]:
    s3 = core.s3_client(settings)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=settings.s3_bucket).get("Contents", [])]
    uploads = s3.list_multipart_uploads(Bucket=settings.s3_bucket).get("Uploads", [])
    return keys + [f"(multipart) {u['Key']}" for u in uploads]


def multipart_uploads(settings) -> list[dict]:
    """The S3 multipart uploads open in the test's bucket."""
    s3 = core.s3_client(settings)
    return s3.list_multipart_uploads(Bucket=settings.s3_bucket).get("Uploads", [])


def queued_messages(settings) -> list[dict]:
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = conn.channel()
        amqp.declare_queues(channel, settings.queue)
        messages = []
        while True:
            method, _props, body = channel.basic_get(settings.queue, auto_ack=True)
            if method is None:
                return messages
            messages.append(json.loads(body))
    finally:
        conn.close()


def delete_queues(amqp_url: str, queue: str) -> None:
    """Delete a job queue and the dead-letter and retry queues declared with it."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        for name in (queue, amqp.dead_letter_queue(queue), amqp.retry_queue(queue)):
            channel.queue_delete(queue=name)
    finally:
        conn.close()


def outbox_status(db) -> dict:
    """What GET /api/v1/stats says of the outbox: {backlog, oldest_age_s, dead}."""
    return outbox.outbox_status_json(db.execute(core.QUERIES["outbox_status"]).fetchone())


def outbox_backlog(db) -> int:
    return outbox_status(db)["backlog"]


# ------------------------------------------------------ jobs as the API leaves them, for the worker


def make_job(
    settings,
    db,
    content: bytes,
    *,
    store: bool = True,
    owner: str = "tester",
    format: str = "auto",
    default_service: str | None = None,
    default_environment: str | None = None,
    format_definition: dict | None = None,
    compression: str | None = None,
) -> uuid.UUID:
    """A queued job for `content` (stored as given: compressed already, for `compression`),
    as the API leaves it."""
    job_id = uuid.uuid4()
    key = uploads.object_key(job_id, compression)
    if store:
        core.s3_client(settings).put_object(Bucket=settings.s3_bucket, Key=key, Body=content)
    db.execute(
        core.QUERIES["insert_job"],
        {
            "job_id": job_id,
            "file_name": "t.jsonl",
            "size_bytes": max(len(content), 1),
            "bucket": settings.s3_bucket,
            "object_key": key,
            "lines_total": 0
            if compression
            else (content.count(b"\n") + (0 if content.endswith(b"\n") else 1)),
            "owner": owner,
            "format": format,
            "default_service": default_service,
            "default_environment": default_environment,
            "format_definition": Jsonb(format_definition) if format_definition else None,
            "traceparent": None,
            "compression": compression,
        },
    )
    return job_id


def job_message(db, job_id) -> bytes:
    """The message the API publishes for a job."""
    return jobs.message(jobs.query(db, "get_job", {"job_id": job_id}).fetchone())


def publish_to_queue(settings, body: bytes) -> None:
    """Publish `body` to the test's job queue, as the API publishes a job's message."""
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = conn.channel()
        amqp.declare_queues(channel, settings.queue)
        channel.basic_publish("", settings.queue, body)
    finally:
        conn.close()


def enqueue_job(settings, db, content: bytes) -> uuid.UUID:
    job_id = make_job(settings, db, content)
    publish_to_queue(settings, job_message(db, job_id))
    return job_id


def assert_exactly_once(db, job_id, valid: int, invalid: int, content: bytes | None = None) -> None:
    """Every line's result is stored once, and under its own number: each line is an entry or an
    error (never both), each entry has one event waiting in the outbox (as the relay reads it), with
    the entry's event id and line, and the job's counts agree. Given the file (canonical lines),
    each entry's message is the one its line has in the file, and nothing is stored past the
    checkpoint: a resume from the wrong byte offset keeps every count right and shifts the lines,
    which only the content shows."""
    job_id = uuid.UUID(str(job_id))
    entries = {
        r["line_no"]: r["message"]
        for r in db.execute("SELECT line_no, message FROM log_entries WHERE job_id = %s", (job_id,))
    }
    errors = {
        r["line_no"]
        for r in db.execute("SELECT line_no FROM line_errors WHERE job_id = %s", (job_id,))
    }
    events = outbox_line_events(db, job_id)
    assert (len(entries), len(errors)) == (valid, invalid)
    assert not entries.keys() & errors, "lines stored both as entries and as errors"
    assert len(events) == valid, "outbox events are not one per entry"
    by_line = {e["event_context"]["line_no"]: e for e in events}
    assert by_line.keys() == entries.keys()
    assert all(
        e["event_id"] == str(outbox.line_event_id(job_id, n))
        and e["event_context"]["message"] == entries[n]
        for n, e in by_line.items()
    )
    job = job_row(db, job_id)
    assert (job["lines_valid"], job["lines_invalid"]) == (valid, invalid)
    if content is not None:
        assert_stored_up_to_checkpoint(db, job_id, content)


def outbox_line_events(db, job_id) -> list[dict]:
    """The job's line events waiting in the outbox, in order, each as the relay reads it (its
    JSONEachRow line, decoded): from the job's range rows, and from per-line rows (written
    before ranges, or by a test)."""
    ids = [
        r["id"]
        for r in db.execute(
            "SELECT id FROM outbox WHERE job_id = %s OR (event_context->>'job_id' = %s "
            "AND event_context ? 'line_no') ORDER BY id",
            (job_id, str(job_id)),
        )
    ]
    return [json.loads(r.line) for r in outbox_batches.batch_rows(db, ids)] if ids else []


def legacy_line_rows(job_id, content: bytes, trace_id: str | None = None) -> list[tuple]:
    """The per-line outbox rows the worker wrote before ranges (migration 0010) for the valid
    canonical lines of `content`, built as it built them (the old lines.add_line): for the
    tests of the upgrade and of the two paths giving the same event_log."""
    job_id = uuid.UUID(str(job_id))
    rows, trace = [], f', "trace_id": "{trace_id}"' if trace_id else ""
    for line_no, raw in enumerate(file_lines(content), 1):
        try:
            entry = lines.parse_line(raw.rstrip(b"\n"), VALIDATOR)
        except lines.InvalidLine:
            continue
        context = (
            f'{{"job_id": "{job_id}", "line_no": {line_no}, '
            f'"level": {json.dumps(entry["level"])}, '
            f'"service": {json.dumps(entry["service"])}, '
            f'"message": {json.dumps(entry["message"])}, '
            f'"context": {entry["context_json"]}{trace}}}'
        )
        rows.append(
            (
                outbox.line_event_id(job_id, line_no),
                entry["event_type"],
                entry["timestamp"],
                entry["environment"],
                context,
                outbox.METADATA_VERSION,
            )
        )
    return rows


def outbox_line_event(db, job_id, line_no: int) -> dict:
    """One line's event, as outbox_line_events gives it."""
    (event,) = [
        e for e in outbox_line_events(db, job_id) if e["event_context"]["line_no"] == line_no
    ]
    return event


def assert_stored_up_to_checkpoint(db, job_id, content: bytes) -> dict:
    """What is stored is exactly the file up to the job's checkpoint (and the job row):
    every non-blank line 1..lines_processed an entry or an error, none after it, each entry's
    message its own line's, and bytes_processed the end of line lines_processed. For files of
    canonical lines (a `message` field each)."""
    job = job_row(db, job_id)
    done, raw = job["lines_processed"], file_lines(content)
    assert job["bytes_processed"] == sum(map(len, raw[:done])), "bytes and lines disagree"
    stored = {
        r["line_no"]: r["message"]
        for r in db.execute(
            "SELECT line_no, message FROM log_entries WHERE job_id = %s UNION ALL "
            "SELECT line_no, NULL FROM line_errors WHERE job_id = %s",
            (job_id, job_id),
        )
    }
    expected = {n for n, line in enumerate(raw[:done], 1) if line.strip()}
    assert stored.keys() == expected, (
        f"checkpoint {done}: missing {sorted(expected - stored.keys())[:10]}, "
        f"past it or blank {sorted(stored.keys() - expected)[:10]}"
    )
    wrong = [
        n
        for n, message in stored.items()
        if message is not None and message_of(raw[n - 1]) != message
    ]
    assert not wrong, f"entries whose message is another line's: {wrong[:10]}"
    return job


# ---------------------------------------------------------------- events, the outbox and ClickHouse


def publish_events(
    database_url: str, n: int, *, event_type: str = "test.event", **context
) -> list[uuid.UUID]:
    """n events in one transaction, written with COPY as the worker does."""
    events = [
        outbox.make_event(event_type, {"i": i, **context}, environment="test") for i in range(n)
    ]
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        outbox.copy_events(cur, events)
    return [e.event_id for e in events]


def publish_line_range(database_url: str, n: int) -> list[uuid.UUID]:
    """n log entries of a new job and the outbox row naming their line range, in one
    transaction, as the worker commits a batch; their event ids."""
    job_id = uuid.uuid4()
    when = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO jobs (job_id, file_name, size_bytes, bucket, object_key, "
            "lines_total, owner) VALUES (%s, 'p.jsonl', 1, 'b', 'k', %s, 'tester')",
            (job_id, n),
        )
        copy_test_entries(cur, job_id, n, when=lambda line_no: when)
        outbox.insert_line_range(cur, job_id, 1, n, n, None)
    return [outbox.line_event_id(job_id, line_no) for line_no in range(1, n + 1)]


def copy_test_entries(cur, job_id, n: int, *, when) -> None:
    """Log entries of lines 1..n of a job, copied as the worker copies them; `when(line_no)`
    is a line's time."""
    core.copy_entries(
        cur,
        (
            (
                job_id,
                n_,
                when(n_),
                "info",
                "svc",
                "test.line",
                "test",
                f"m{n_}",
                json.dumps({"i": n_}),
            )
            for n_ in range(1, n + 1)
        ),
    )


def event_log_ids(ch) -> list[uuid.UUID]:
    return [r[0] for r in ch.query("SELECT event_id FROM event_log").result_rows]


def read_event_log_ids(settings) -> list[uuid.UUID]:
    client = event_log.connect_clickhouse(settings.clickhouse_url)
    try:
        return event_log_ids(client)
    finally:
        client.close()


def relay_all(db, settings: config.Settings) -> None:
    """Move every outbox row into ClickHouse's event_log now (relay_once, batches at once)."""
    fast = dataclasses.replace(settings, relay_batch_max_wait_s=0.0)
    with event_log.connect_clickhouse(settings.clickhouse_url) as ch:
        while relay.relay_once(db, ch, fast):
            pass


def drain(conn, ch, settings) -> int:
    """relay_once until nothing is due; the rows it moved."""
    total = 0
    for _ in range(10_000):
        sent = relay.relay_once(conn, ch, settings)
        if sent == 0:
            return total
        total += sent
    raise AssertionError("the outbox never ran dry")


def run_job(settings, job_id, stop=None) -> str:
    """worker.process_job on a connection of its own; the JobRun's value."""
    with psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row) as conn:
        return worker.process_job(conn, core.s3_client(settings), settings, job_id, stop)


class StopAfter(threading.Event):
    """A stop signal that turns on by itself after `checks` looks at it."""

    def __init__(self, checks: int):
        super().__init__()
        self.left = checks

    def is_set(self) -> bool:
        self.left -= 1
        if self.left <= 0:
            self.set()
        return super().is_set()


def gz(data: bytes) -> bytes:
    # mtime 0: the same bytes in every xdist worker, whose test ids must agree
    return gzip.compress(data, compresslevel=6, mtime=0)


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


COMPRESS = {"gzip": gz, "zstd": zst}


def compressed_bomb(
    compression: str, byte: bytes = b"\n", size: int = 1024**3, member: int = 64 * 1024**2
) -> bytes:
    """`size` bytes of `byte`, compressed as concatenated gzip members or zstd frames of
    `member` bytes each: one valid file that decodes to the whole, made in a fraction of the
    time compressing the whole at once takes (and never holding it)."""
    return COMPRESS[compression](byte * member) * (size // member)


async def all_pages(client, url: str) -> list[dict]:
    events = []
    while url:
        response = await client.get(url)
        assert response.status == 200, await response.text()
        page = await response.json()
        events += page["events"]
        url = page["next"]
    return events
