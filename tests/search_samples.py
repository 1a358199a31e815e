"""An owner's jobs as the search tests store them (tests/test_search*.py): log entries in
Postgres and their line events in the outbox, written as the worker writes them, each line's
time, level, service, type, message and context following from its job's number and its own."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import core
import outbox

T0 = dt.datetime(2026, 11, 30, 10, 0, 0, 456, tzinfo=dt.timezone.utc)  # µs: truncated to ms
LEVELS = ["info", "info", "warning", "error", "debug", "critical", "info"]
SERVICES = ["checkout", "payments", "search"]
TYPES = ["order.created", "order.paid", "pino.log"]


def entry(k: int, n: int) -> dict:
    """Line n of the k-th job: times 1.7 s apart, jobs 10 ms apart (no two alike)."""
    return {
        "line_no": n,
        "timestamp": T0 + dt.timedelta(milliseconds=1700 * n + 10 * k),
        "level": LEVELS[n % len(LEVELS)],
        "service": SERVICES[(n + k) % len(SERVICES)],
        "event_type": TYPES[n % len(TYPES)],
        "environment": "staging" if n % 10 == 0 else "production",
        "message": f"Order {n} {'TimeOut after 5 s' if n % 5 == 0 else 'done'}",
        "context": {
            "request_id": f"r-{n % 9}",
            "http": {"status": 500 if n % 4 == 0 else 200},
            "user": {"id": n % 3},
            "flag": n % 2 == 0,
        },
    }


def insert_job_row(db, owner: str, lines: int, bucket: str) -> uuid.UUID:
    """A job row only (its entries are store_job's)."""
    job_id = uuid.uuid4()
    db.execute(
        core.QUERIES["insert_job"],
        {
            "job_id": job_id,
            "file_name": "app.jsonl",
            "size_bytes": 1,
            "bucket": bucket,
            "object_key": "k",
            "lines_total": lines,
            "owner": owner,
            "format": "auto",
            "format_definition": None,
            "default_service": None,
            "default_environment": None,
            "traceparent": None,
            "compression": None,
        },
    )
    return job_id


def store_job(
    db, k: int, owner: str, lines: int, bucket: str = "b", contexts: list[dict] | None = None
) -> uuid.UUID:
    """A job's log entries in Postgres and its line events in the outbox, as the worker
    writes them (lines.add_line's context); `contexts`, the lines' own, if given."""
    job_id = insert_job_row(db, owner, lines, bucket)
    entries = [entry(k, n) for n in range(1, lines + 1)]
    for e, context in zip(entries, contexts or [], strict=False):
        e["context"] = context
    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO log_entries (job_id, line_no, timestamp, level, service, event_type, "
            "environment, message, context) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    job_id,
                    e["line_no"],
                    e["timestamp"],
                    e["level"],
                    e["service"],
                    e["event_type"],
                    e["environment"],
                    e["message"],
                    json.dumps(e["context"]),
                )
                for e in entries
            ],
        )
        outbox.copy_outbox_rows(
            cur,
            [
                (
                    outbox.line_event_id(job_id, e["line_no"]),
                    e["event_type"],
                    e["timestamp"],
                    e["environment"],
                    json.dumps(
                        {
                            "job_id": str(job_id),
                            "line_no": e["line_no"],
                            "level": e["level"],
                            "service": e["service"],
                            "message": e["message"],
                            "context": e["context"],
                        }
                    ),
                    outbox.METADATA_VERSION,
                )
                for e in entries
            ],
        )
    return job_id
