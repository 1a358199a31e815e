"""The least work per line the design needs: the reference loop bench/ingest.py measures
beside the end-to-end rate, in the same window.

    .venv/bin/python bench/ingest_limit.py FILE.jsonl [--processes N] [--database-url URL]

Per line: parse with orjson, validate with jsonschema-rs (log_entry.schema.json), and one binary
`COPY` row per valid line (core.copy_entries, as the worker writes) into a scratch table shaped like
`log_entries` (its primary key too); one transaction per 5,000 lines. `--processes` (default: the
machine's cores) splits the file into that many byte ranges, each read by a process of its own; all
start together, and the rate is the valid lines over the time until the last one has committed.
Nothing the worker does beyond that (mapping, the checks past the schema, the checkpoint, the
outbox) is done: its rate is the ceiling the worker is measured against. The table is dropped at the
end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import sys
import time
import uuid
from pathlib import Path

import jsonschema_rs
import orjson
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import config  # noqa: E402
import core  # noqa: E402

BATCH_LINES = 5000
COLUMNS = (
    "job_id",
    "line_no",
    "timestamp",
    "level",
    "service",
    "event_type",
    "environment",
    "message",
    "context",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--database-url", default=None, help="default: DATABASE_URL")
    args = parser.parse_args(argv)
    url = args.database_url or config.load_settings(service=False).database_url
    result = measure(args.file, url, args.processes)
    print(
        f"limit ({args.processes} process{'es' if args.processes > 1 else ''}) "
        f"{result['valid']:,} valid lines in {result['seconds']:.2f} s -> "
        f"{result['rate']:,.0f} valid lines/s"
    )
    return 0


def measure(path: Path, database_url: str, processes: int) -> dict:
    """Run the loop over `path` in `processes` processes at once: {valid, seconds, rate}."""
    table = f"bench_limit_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (job_id uuid NOT NULL, line_no bigint NOT NULL, "
                "timestamp timestamptz NOT NULL, level text NOT NULL, service text NOT NULL, "
                "event_type text NOT NULL, environment text NOT NULL, message text NOT NULL, "
                "context jsonb NOT NULL DEFAULT '{{}}', PRIMARY KEY (job_id, line_no))"
            ).format(sql.Identifier(table))
        )
    try:
        ranges = byte_ranges(path, processes)
        ctx = multiprocessing.get_context("spawn")
        barrier, counts = ctx.Barrier(len(ranges) + 1), ctx.Queue()
        workers = [
            ctx.Process(
                target=load_range,
                args=(str(path), start, end, database_url, table, barrier, counts),
            )
            for start, end in ranges
        ]
        for worker in workers:
            worker.start()
        barrier.wait(timeout=120)
        started = time.perf_counter()
        shares = [counts.get(timeout=3600) for _ in workers]
        seconds = time.perf_counter() - started
        for worker in workers:
            worker.join()
        if min(shares) < 0:
            raise RuntimeError("a process of the reference loop failed (its error is above)")
        valid = sum(shares)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
    return {"valid": valid, "seconds": seconds, "rate": valid / seconds if seconds else 0.0}


def byte_ranges(path: Path, parts: int) -> list[tuple[int, int]]:
    """`parts` byte ranges of the file, each ending at a line's end."""
    size = path.stat().st_size
    bounds = [0]
    with path.open("rb") as f:
        for k in range(1, parts):
            f.seek(max(size * k // parts, bounds[-1]))
            f.readline()
            bounds.append(min(f.tell(), size))
    bounds.append(size)
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def load_range(
    path: str, start: int, end: int, database_url: str, table: str, barrier, counts
) -> None:
    """One process's share: its lines parsed, validated and copied; puts its valid lines
    on `counts` once the last transaction has committed."""
    validator = jsonschema_rs.validator_for(orjson.loads(core.LOG_ENTRY_SCHEMA_PATH.read_bytes()))
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    )
    with open(path, "rb") as f:
        f.seek(start)
        lines = f.read(end - start).splitlines()
    valid = -1  # the parent sees a failure rather than waiting for ever
    try:
        valid = copy_lines(lines, database_url, copy_sql, validator, barrier)
    finally:
        counts.put(valid)


def copy_lines(lines: list[bytes], database_url: str, copy_sql, validator, barrier) -> int:
    job_id, valid = uuid.uuid4(), [0]
    with psycopg.connect(database_url, autocommit=True) as conn:
        barrier.wait()
        for first in range(0, len(lines), BATCH_LINES):
            batch = enumerate(lines[first : first + BATCH_LINES], first + 1)
            with conn.transaction(), conn.cursor() as cur:
                core.copy_entries(cur, valid_rows(job_id, batch, validator, valid), copy_sql)
    return valid[0]


def valid_rows(job_id: uuid.UUID, numbered_lines, validator, valid: list[int]):
    """The COPY rows of the valid lines (the worker's binary COPY, core.copy_entries), counted
    in valid[0]."""
    for line_no, raw in numbered_lines:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not validator.is_valid(obj):
            continue
        try:  # the schema's date-time format is not checked by jsonschema-rs
            timestamp = dt.datetime.fromisoformat(obj["timestamp"])
        except ValueError:
            continue
        valid[0] += 1
        yield (
            job_id,
            line_no,
            timestamp,
            obj["level"].lower(),
            obj["service"],
            obj["event_type"],
            obj.get("environment", "production"),
            obj["message"],
            orjson.dumps(obj.get("context", {})).decode(),
        )


if __name__ == "__main__":
    raise SystemExit(main())
