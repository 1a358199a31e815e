"""Explore benchmark: a job's events page and histogram, read from a ClickHouse server holding
a job of 1,000,000 events (and as many of other jobs around it).

Not a test: run it by hand. It starts its own ClickHouse server (scripts/clickhouse-server, in a
temporary directory, on a free port) unless --clickhouse-url names one (http://…, a database
the bench may create event_log in and fill).

    .venv/bin/python bench/explore.py                   # 1,000,000 events, 50 requests each
    .venv/bin/python bench/explore.py --events 200000 --requests 20

What it does:
 1. creates event_log (event_log.ensure_event_log) and fills it on the server (INSERT … SELECT from
    numbers(): no Python in the way): the job's events, one a second, levels and services
    mixed, and --others events of other jobs interleaved in time;
 2. reads through explore.Explorer — the code the API's routes call, with the API's query
    limits — the first page of events (100), a page deep in the job, and the histogram, each
    with and without a filter, --requests times each, and prints p50 / p95 / max in ms;
 3. prints the rows ClickHouse read for each query (the response's X-ClickHouse-Summary) beside
    the table's size, to show that a job's reads are index lookups, not scans.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import clickhouse_connect  # noqa: E402

import event_log  # noqa: E402
import explore  # noqa: E402
import read_slots  # noqa: E402

FILL = """
INSERT INTO event_log (event_id, event_type, event_date_time, environment, event_context,
                       metadata_version)
SELECT generateUUIDv4(), if(number % 3 = 0, 'order.paid', 'order.created'),
       toDateTime('2026-11-30 00:00:00', 'UTC') + intDiv(number, {per_second:UInt32}),
       'production',
       concat('{"job_id": "', if(number % {stride:UInt64} = 0, {job:String},
                                  toString(generateUUIDv4(number))),
              '", "line_no": ', toString(intDiv(number, {stride:UInt64}) + 1),
              ', "level": "', ['info', 'info', 'info', 'warning', 'error', 'debug'][number % 6 + 1],
              '", "service": "', ['checkout', 'payments', 'search'][number % 3 + 1],
              '", "message": "order ', toString(number),
              if(number % 97 = 0, ' timeout', ' done'), '", "context": {"n": ', toString(number),
              '}}'),
       1
FROM numbers({total:UInt64})
"""
CASES = [
    ("events, first page", "events", {}, {}),
    (
        "events, first page, level=error&q=timeout",
        "events",
        {"levels": ["error"], "text": "timeout"},
        {},
    ),
    ("events, a page at line 900,000", "events", {}, {"after_line": 900_000}),
    ("histogram", "histogram", {}, {}),
    ("histogram, level=error", "histogram", {"levels": ["error"]}, {}),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="the job's events")
    parser.add_argument("--others", type=int, default=1_000_000, help="other jobs' events")
    parser.add_argument("--requests", type=int, default=50, help="reads per case")
    parser.add_argument("--clickhouse-url", help="http://user:password@host:port/database")
    args = parser.parse_args(argv)
    server = None
    try:
        url = args.clickhouse_url
        if not url:
            server, url = start_server()
        job = uuid.uuid4()
        fill(url, job, args.events, args.others)
        asyncio.run(measure(url, job, args.requests))
    finally:
        if server:
            server.terminate()
            server.wait(30)
    return 0


def start_server() -> tuple[subprocess.Popen, str]:
    directory = Path(tempfile.mkdtemp(prefix="eh-bench-explore-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    password = secrets.token_hex(8)
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "clickhouse-server"),
            "--dir",
            str(directory),
            "--port",
            str(port),
            "--database",
            "bench",
            "--user",
            "bench:writer",
        ],
        env={**os.environ, "CLICKHOUSE_PASSWORD_BENCH": password, "LOG_FORMAT": "json"},
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://bench:{password}@127.0.0.1:{port}/bench"
    logging.getLogger("clickhouse_connect").setLevel(logging.CRITICAL)  # a traceback per try
    for _ in range(600):
        try:
            clickhouse_connect.get_client(dsn=url).close()
            return server, url
        except Exception:  # still starting
            time.sleep(0.1)
    server.terminate()
    raise SystemExit("the ClickHouse server did not start")


def fill(url: str, job: uuid.UUID, events: int, others: int) -> None:
    """The job's events interleaved with the others' (every stride-th row is the job's)."""
    stride = max(1, round((events + others) / events))
    total = events * stride
    started = time.monotonic()
    with clickhouse_connect.get_client(dsn=url, send_receive_timeout=600) as ch:
        event_log.ensure_event_log(ch)
        ch.command(
            FILL,
            parameters={"job": str(job), "stride": stride, "total": total, "per_second": stride},
        )
        rows = ch.command("SELECT count() FROM event_log")
    print(
        f"filled     event_log: {rows:,} rows, {events:,} of them the job's "
        f"({time.monotonic() - started:.1f} s)"
    )


async def measure(url: str, job: uuid.UUID, requests: int) -> None:
    explorer = explore.Explorer(
        url, timeout_s=30, slots=read_slots.ReadSlots(1, 1, queue_per_owner=1, max_wait_s=60)
    )
    try:
        table_rows = explorer.client().command("SELECT count() FROM event_log")
        print(f"{'case':<45} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'rows read':>12}")
        for name, kind, query, paging in CASES:
            filters = explore.checked_filters(**query)
            times = []
            for _ in range(requests):
                started = time.perf_counter()
                if kind == "events":
                    await explorer.events("bench", job, filters, limit=101, **paging)
                else:
                    await explorer.histogram("bench", job, filters, None)
                times.append((time.perf_counter() - started) * 1000)
            read = rows_read(explorer, kind, job, filters, paging)
            print(
                f"{name:<45} {statistics.median(times):8.1f} "
                f"{statistics.quantiles(times, n=20, method='inclusive')[-1]:8.1f} "
                f"{max(times):8.1f} "
                f"{read:>12,}"
            )
        print(f"(event_log holds {table_rows:,} rows)")
    finally:
        explorer.close()


def rows_read(explorer: explore.Explorer, kind: str, job: uuid.UUID, filters, paging) -> int:
    """What ClickHouse read for the case's main query (its summary header)."""
    name = "job_events" if kind == "events" else "job_event_range"
    parameters = {
        "job_id": str(job),
        "after_line": paging.get("after_line", 0),
        "limit": 101,
        **filters.parameters(),
    }
    result = explorer.client().query(
        explore.QUERIES[name], parameters=parameters, settings=explorer.settings
    )
    return int(result.summary.get("read_rows", 0))


if __name__ == "__main__":
    sys.exit(main())
