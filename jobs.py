"""The job lifecycle: a job's row, the reads the API answers from, and every change of a job's
state (create, claim, advance, complete, fail, requeue, delete).

Each change is one function that writes the row change, its lifecycle event (`job.queued`,
`job.started`, `job.completed`, `job.failed`, `job.deleted`, through the outbox) and its
NOTIFY, all on the caller's connection and inside the caller's transaction: none of them
commits, so the three are committed together or not at all. The API, the worker and the relay
call these; nothing else writes `jobs`.

    queued ──claim──▶ processing ──complete──▶ completed
       ▲                 │  │ ╰──advance (a batch's checkpoint)
       ╰──take_lost      │  ╰──fail──▶ failed        (delete: any state but one a worker holds)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Mapping
from typing import Any

import structlog
from psycopg.rows import class_row, dict_row, tuple_row
from psycopg.types.json import Jsonb

import config
import core
import logs
import outbox

log = structlog.get_logger("jobs")

CHANNEL = "eh_job"  # NOTIFY: a job's new state (job_notification)
STATUSES = ("queued", "processing", "completed", "failed")
TERMINAL_STATUSES = frozenset({"completed", "failed"})


@dataclasses.dataclass(frozen=True)
class Job:
    """A row of `jobs` (sql/migrations/0001_jobs.sql), as the `$job_columns` of queries.sql
    lists it. `first_start` is only ever set by `claim`."""

    job_id: uuid.UUID
    file_name: str
    size_bytes: int
    bucket: str
    object_key: str
    status: str
    lines_total: int
    lines_processed: int
    bytes_processed: int
    lines_valid: int
    lines_invalid: int
    attempts: int
    error: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    updated_at: dt.datetime
    owner: str | None  # whose token uploaded it (sql/migrations/0004_access.sql)
    # The log format, `auto` or a name in formats.py, and the upload's defaults for what a
    # format lacks (sql/migrations/0005_formats.sql). Defaults as the table's, for jobs built
    # by hand (tests).
    format: str = "auto"
    default_service: str | None = None
    default_environment: str | None = None
    formats_seen: dict[str, int] = dataclasses.field(default_factory=dict)  # valid lines/format
    # The custom format `format` names, as registered when the job was uploaded
    # (sql/migrations/0006_custom_formats.sql); None for a built-in format.
    format_definition: dict[str, Any] | None = None
    # The W3C traceparent of the upload's span (sql/migrations/0008_traceparent.sql): the
    # job's message carries it, and a re-published message carries it again.
    traceparent: str | None = None
    # gzip, zstd or None (sql/migrations/0009_compression.sql): for a compressed file,
    # bytes_processed counts decoded bytes, and lines_total is known once it is completed.
    compression: str | None = None
    first_start: bool = False


JOB_ROW = class_row(Job)


class UnknownJob(Exception):
    """A job that does not exist and never did (not even deleted): a message naming it is
    poison."""


class JobFailed(Exception):
    """The job can never succeed (its file is missing, broken or not text; its format cannot
    be used): it ends `failed` with this message for the user."""


class CheckpointMoved(RuntimeError):
    """The job's checkpoint is not where this worker left it: another worker moved it."""


def query(conn, name: str, params: Mapping[str, Any]):
    """Run a named query returning job rows on a sync connection; its cursor yields Jobs."""
    return conn.cursor(row_factory=JOB_ROW).execute(core.QUERIES[name], params)


async def aquery(aconn, name: str, params: Mapping[str, Any]):
    """`query` for a psycopg AsyncConnection."""
    cur = aconn.cursor(row_factory=JOB_ROW)
    await cur.execute(core.QUERIES[name], params)
    return cur


# --------------------------------------------------------------------------- changes


async def create(
    aconn,
    settings: config.Settings,
    *,
    job_id: uuid.UUID,
    file_name: str,
    size_bytes: int,
    object_key: str,
    lines_total: int,
    owner: str,
    options: Mapping[str, Any],
    traceparent: str | None,
    compression: str | None = None,
) -> Job:
    """A new queued job and its job.queued event (the API, once the file is stored)."""
    cur = await aquery(
        aconn,
        "insert_job",
        {
            "job_id": job_id,
            "file_name": file_name,
            "size_bytes": size_bytes,
            "bucket": settings.s3_bucket,
            "object_key": object_key,
            "lines_total": lines_total,
            "owner": owner,
            **options,
            "traceparent": traceparent,
            "compression": compression,
        },
    )
    job = await cur.fetchone()
    await outbox.ainsert_event(
        aconn, job_event("job.queued", job, environment=settings.environment)
    )
    return job


def take_lost(conn, *, after_s: float, queue_empty: bool) -> list[Job]:
    """Queued jobs whose message must have been lost (see take_lost_jobs), marked published
    now; the caller publishes each again in the same transaction."""
    return query(
        conn, "take_lost_jobs", {"after_s": after_s, "queue_empty": queue_empty}
    ).fetchall()


def try_lock(conn, job_id: uuid.UUID) -> bool:
    """The job's session lock (a worker's, for a whole run); False if another holds it."""
    row = (
        conn.cursor(row_factory=tuple_row)
        .execute(core.QUERIES["try_lock_job"], {"job_id": job_id})
        .fetchone()
    )
    return bool(row[0])


def unlock(conn, job_id: uuid.UUID) -> None:
    conn.execute(core.QUERIES["unlock_job"], {"job_id": job_id})


def claim(conn, settings: config.Settings, job_id: uuid.UUID) -> Job | None:
    """Mark the job processing (job.started, the first time); None if it is already finished
    or was deleted. UnknownJob if there is no such job and never was."""
    job = query(conn, "claim_job", {"job_id": job_id}).fetchone()
    if job is None:
        existing = query(conn, "get_job", {"job_id": job_id}).fetchone()
        if existing is not None:
            log.info("job.skipped", reason="already finished", status=existing.status)
        elif conn.execute(core.QUERIES["job_deleted"], {"job_id": job_id}).fetchone():
            log.info("job.skipped", reason="deleted")
        else:
            raise UnknownJob(str(job_id))
        return None
    if job.first_start:
        outbox.insert_event(conn, job_event("job.started", job, environment=settings.environment))
    notify(conn, job)
    return job


def advance(
    conn,
    job: Job,
    *,
    lines: int,
    bytes_: int,
    valid: int,
    invalid: int,
    formats_seen: Mapping[str, int],
) -> Job:
    """Move the checkpoint past a batch the caller wrote in this transaction."""
    updated = query(
        conn,
        "advance_checkpoint",
        {
            "job_id": job.job_id,
            "lines_processed": job.lines_processed + lines,
            "bytes_processed": job.bytes_processed + bytes_,
            "valid": valid,
            "invalid": invalid,
            "formats": Jsonb(formats_seen),
            "previous_lines": job.lines_processed,
        },
    ).fetchone()
    if updated is None:
        raise CheckpointMoved("the job's checkpoint moved under this worker; abandoning the batch")
    notify(conn, updated)
    return updated


def complete(conn, settings: config.Settings, job_id: uuid.UUID) -> Job:
    job = query(conn, "complete_job", {"job_id": job_id}).fetchone()
    outbox.insert_event(conn, job_event("job.completed", job, environment=settings.environment))
    notify(conn, job)
    return job


def fail(conn, settings: config.Settings, job_id: uuid.UUID, error: str) -> Job | None:
    """End the job `failed` with `error` for its owner; None if it had ended already."""
    job = query(conn, "fail_job", {"job_id": job_id, "error": error}).fetchone()
    if job is not None:
        outbox.insert_event(conn, job_event("job.failed", job, environment=settings.environment))
        notify(conn, job)
    return job


def record_attempt_error(conn, job_id: uuid.UUID, error: str) -> None:
    """Show why the last attempt failed while the job waits for a retry."""
    conn.execute(core.QUERIES["record_attempt_error"], {"job_id": job_id, "error": error})


def give_back_attempt(conn, job_id: uuid.UUID) -> None:
    """The attempt was not the job's fault (a clean stop, an outage): it does not count."""
    conn.execute(core.QUERIES["give_back_attempt"], {"job_id": job_id})


async def lock_for_deletion(aconn, job_id: uuid.UUID, *, owner: str | None) -> Job | None:
    """The job, locked until the transaction ends, if `owner` may see it (None: an admin)."""
    cur = await aquery(aconn, "lock_visible_job", {"job_id": job_id, "owner": owner})
    return await cur.fetchone()


async def try_lock_in_transaction(aconn, job_id: uuid.UUID) -> bool:
    """The worker's lock (try_lock), held until the transaction ends: False while a worker
    is processing the job."""
    cur = aconn.cursor(row_factory=tuple_row)
    await cur.execute(core.QUERIES["try_lock_job_in_transaction"], {"job_id": job_id})
    return bool((await cur.fetchone())[0])


async def read_expired(
    aconn, *, default_days: int | None, after: tuple[dt.datetime, uuid.UUID], limit: int
) -> list[tuple[dt.datetime, uuid.UUID]]:
    """Up to `limit` (created_at, job_id) of jobs past their retention that no worker is
    processing, oldest first, after `after` (a keyset page). Not locked: see lock_expired."""
    cur = aconn.cursor(row_factory=tuple_row)
    await cur.execute(
        core.QUERIES["expired_jobs"],
        {
            "default_days": default_days,
            "after_created_at": after[0],
            "after_job_id": after[1],
            "limit": limit,
        },
    )
    return [(created_at, job_id) for job_id, created_at in await cur.fetchall()]


async def lock_expired(aconn, job_id: uuid.UUID, *, default_days: int | None) -> Job | None:
    """The job, locked until the transaction ends, if it is still past its retention and not
    being processed; None if it is not, or another transaction holds its row (skipped, not
    waited for)."""
    cur = await aquery(aconn, "lock_expired_job", {"job_id": job_id, "default_days": default_days})
    return await cur.fetchone()


async def delete(aconn, settings: config.Settings, job: Job, *, deleted_by: str) -> None:
    """Delete a job locked by `lock_for_deletion` (its stored file is the caller's): the row, its
    entries and line errors (after the row: sql/queries.sql delete_job), its dead-lettered events
    and the outbox rows of its line events no relay holds; recorded in job_deletions (the relay
    deletes its events from ClickHouse: `take_pending_deletions`), with a job.deleted event that
    stays as the audit trail. Ids only in the NOTIFY: the listeners find the row gone and close the
    job's WebSockets (4404)."""
    await aconn.execute(
        core.QUERIES["record_deletion"],
        {
            "job_id": job.job_id,
            "owner": job.owner,
            "file_name": job.file_name,
            "deleted_by": deleted_by,
        },
    )
    await outbox.ainsert_event(
        aconn,
        job_event("job.deleted", job, environment=settings.environment, deleted_by=deleted_by),
    )
    await aconn.execute(core.QUERIES["delete_dead_events_of_job"], {"job_id": job.job_id})
    for name in ("delete_job", "delete_job_entries", "delete_job_line_errors"):
        await aconn.execute(core.QUERIES[name], {"job_id": job.job_id})
    # Last, so relays' claims wait on it only for the moment before the commit: its range rows
    # that no batch holds go (their entries went above); a batch's own goes with the batch.
    await aconn.execute(core.QUERIES["lock_outbox_claims"])
    await aconn.execute(core.QUERIES["delete_outbox_ranges_of_job"], {"job_id": job.job_id})
    await aconn.execute(
        core.QUERIES["notify"], {"channel": CHANNEL, "payload": job_ids_notification(job)}
    )


def take_pending_deletions(conn, limit: int) -> list[uuid.UUID]:
    """Up to `limit` deleted jobs whose events may now be deleted from ClickHouse (none is
    left in the outbox), locked until the transaction ends; none when there is none."""
    return [
        row[0]
        for row in conn.cursor(row_factory=tuple_row).execute(
            core.QUERIES["take_pending_deletions"], {"limit": limit}
        )
    ]


def finish_deletions(conn, job_ids: list[uuid.UUID]) -> None:
    """The jobs' events are deleted from ClickHouse too."""
    conn.execute(core.QUERIES["finish_deletions"], {"job_ids": job_ids})


def notify(conn, job: Job) -> None:
    """Tell the API's listeners the job's new state (sent when the transaction commits)."""
    conn.execute(core.QUERIES["notify"], {"channel": CHANNEL, "payload": job_notification(job)})


def job_event(event_type: str, job: Job, *, environment: str, **extra: Any) -> outbox.Event:
    """A lifecycle event for a job row, with `extra` context (job.deleted: deleted_by).

    Its id is derived from the job and the event type, so a retried step yields the same id.
    Written inside a span, it names the span's trace (`trace_id`).
    """
    context = {
        "job_id": str(job.job_id),
        "file_name": job.file_name,
        "status": job.status,
        "lines_total": job.lines_total,
        "lines_valid": job.lines_valid,
        "lines_invalid": job.lines_invalid,
        "error": job.error,
        "owner": job.owner,
        **extra,
    }
    if trace_id := logs.current_trace_id():
        context["trace_id"] = trace_id
    return outbox.make_event(
        event_type, context, environment=environment, event_id=uuid.uuid5(job.job_id, event_type)
    )


# --------------------------------------------------------------------------- reads
# The reads behind the API's answers, REST and GraphQL alike: one path to the database.
# `pool` is a psycopg AsyncConnectionPool; `owner` is the requesting owner's name, or None for
# an admin (every job). Another owner's job is as unknown as one that never was.


async def read_job(pool, job_id: uuid.UUID, *, owner: str | None) -> Job | None:
    async with pool.connection() as conn:
        cur = await aquery(conn, "get_visible_job", {"job_id": job_id, "owner": owner})
        return await cur.fetchone()


async def read_delivery(pool, job_id: uuid.UUID, lines_valid: int) -> dict[str, int]:
    """Where the job's line events stand: in ClickHouse, waiting in the outbox, or refused
    (outbox_dead). Each valid line has one event, written with it."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(core.QUERIES["job_delivery"], {"job_id": str(job_id)})
        waiting, dead = await cur.fetchone()
    delivered = max(lines_valid - waiting - dead, 0)
    return {"delivered": delivered, "waiting": waiting, "dead": dead}


async def read_jobs(pool, *, owner: str | None, limit: int, status: str | None = None) -> list[Job]:
    """The newest jobs first, optionally of one status."""
    async with pool.connection() as conn:
        cur = await aquery(conn, "list_jobs", {"owner": owner, "limit": limit, "status": status})
        return await cur.fetchall()


async def read_line_errors(
    pool, job_ids: list[uuid.UUID], *, after_line: int, limit: int
) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """Up to `limit` invalid lines after `after_line` of each job, in line order, in one
    query. The caller has checked that the jobs are visible to whoever asks."""
    pages: dict[uuid.UUID, list[dict[str, Any]]] = {job_id: [] for job_id in job_ids}
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(
            core.QUERIES["list_line_errors"],
            {"job_ids": list(job_ids), "after_line": after_line, "limit": limit},
        )
        for job_id, line_no, reason in await cur.fetchall():
            pages[job_id].append({"line_no": line_no, "reason": reason})
    return pages


async def read_stats(pool) -> dict[str, Any]:
    """GET /api/v1/stats's answer: jobs by status (every status, 0 when none) and the outbox."""
    async with pool.connection() as conn:
        counts = await (
            await conn.cursor(row_factory=tuple_row).execute(core.QUERIES["job_counts"])
        ).fetchall()
        backlog = await (
            await conn.cursor(row_factory=dict_row).execute(core.QUERIES["outbox_status"])
        ).fetchone()
    return {
        "jobs": dict.fromkeys(STATUSES, 0) | dict(counts),
        "outbox": outbox.outbox_status_json(backlog),
    }


# --------------------------------------------------------------------------- messages and JSON


def message(job: Job) -> bytes:
    """The RabbitMQ message for a job: ids only; the worker reads the rest from Postgres."""
    return json.dumps(
        {"job_id": str(job.job_id), "bucket": job.bucket, "key": job.object_key}
    ).encode()


def parse_message(body: bytes) -> uuid.UUID:
    """The job id of a message; ValueError for a malformed one."""
    try:
        return uuid.UUID(json.loads(body)["job_id"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed job message: {exc}") from None


def job_json(job: Job) -> dict[str, Any]:
    """The public JSON shape of a job (GET /api/v1/jobs/{id}, WebSocket messages)."""
    total = job.lines_total
    if job.status == "completed":
        progress = 1.0
    else:
        progress = round(job.lines_processed / total, 4) if total else 0.0
    return {
        "job_id": str(job.job_id),
        "file_name": job.file_name,
        "size_bytes": job.size_bytes,
        "status": job.status,
        "lines_total": total,
        "lines_processed": job.lines_processed,
        "lines_valid": job.lines_valid,
        "lines_invalid": job.lines_invalid,
        "progress": progress,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "completed_at": _iso(job.completed_at),
        "error": job.error,
        "format": job.format,
        "formats": job.formats_seen,
        "compression": job.compression,
    }


# Postgres refuses a NOTIFY payload of 8000 bytes or more; this leaves a safe margin.
NOTIFY_PAYLOAD_MAX_BYTES = 7000


def job_notification(job: Job) -> str:
    """NOTIFY payload for a job change: the job's public JSON as this transaction left it.

    The API sends watchers exactly that state, so each committed batch reaches them even when
    the next one commits before the notification is handled (a re-read would see the later
    one twice and this one never). A state too long for a payload (a long file name or error)
    goes as ids and counts only; the API re-reads the row for it.
    """
    state = json.dumps(job_json(job))
    if len(state.encode("utf-8")) <= NOTIFY_PAYLOAD_MAX_BYTES:
        return state
    return job_ids_notification(job)


def job_ids_notification(job: Job) -> str:
    """A NOTIFY payload of ids and counts only: listeners re-read the row (and find it gone,
    for a deleted job)."""
    return json.dumps(
        {"job_id": str(job.job_id), "status": job.status, "lines_processed": job.lines_processed}
    )


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
