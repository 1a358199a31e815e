"""Search benchmark: owner-wide reads (issue 23) on a ClickHouse server holding 10,000,000
events of 200 jobs of 4 owners.

Not a test: run it by hand. It starts its own ClickHouse server (scripts/clickhouse-server, in a
temporary directory, on a free port) unless --clickhouse-url names one (http://…, a database
the bench may create event_log in and fill).

    .venv/bin/python bench/search.py                      # 10,000,000 events, 50 reads each
    .venv/bin/python bench/search.py --events 1000000 --requests 20

What it does:
 1. creates event_log (event_log.ensure_event_log) and fills it on the server (INSERT … SELECT from
    numbers()): events 100 ms apart, job `number % 200`, owner `job % 4`, levels and services
    mixed, a message with "timeout" in one of 97, a context with a request id shared by 10;
 2. reads as one owner through explore.Explorer — the code the API's routes call, with the
    API's query limits — each case --requests times, and prints p50 / p95 / max in ms beside the
    rows ClickHouse read for it (the response's X-ClickHouse-Summary);
 3. exports the events of one owner's busiest day (NDJSON, through Explorer.export as the
    route streams it) and prints events/s and how much this process's peak RSS grew.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import clickhouse_connect  # noqa: E402

import event_log  # noqa: E402
import explore  # noqa: E402
import read_slots  # noqa: E402
import search as reads  # noqa: E402

# bench/explore.py's server launcher, loaded by path (its module name is the project's).
_spec = importlib.util.spec_from_file_location("bench_explore", ROOT / "bench" / "explore.py")
bench_explore = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_explore)
start_server = bench_explore.start_server
OWNERS = ["owner0", "owner1", "owner2", "owner3"]
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
FILL = """
INSERT INTO event_log (event_id, event_type, event_date_time, environment, event_context,
                       metadata_version, owner, event_time)
SELECT generateUUIDv4(), ['order.created', 'order.paid', 'http.request'][number % 3 + 1],
       toDateTime(intDiv(toUnixTimestamp64Milli(t), 1000), 'UTC'), 'production',
       concat('{"job_id": "', toString({jobs:Array(String)}[number % 200 + 1]),
              '", "line_no": ', toString(intDiv(number, 200) + 1),
              ', "level": "', ['info', 'info', 'info', 'warning', 'error', 'debug'][number % 6 + 1],
              '", "service": "', ['checkout', 'payments', 'search', 'auth', 'cart'][number % 5 + 1],
              '", "message": "order ', toString(number),
              if(number % 97 = 0, ' timeout', ' done'),
              '", "context": {"request_id": "r-', toString(intDiv(number, 10)),
              '", "http": {"status": ', if(number % 13 = 0, '500', '200'), '}}}'),
       1, {owners:Array(String)}[number % 200 % 4 + 1], t
FROM (SELECT number, toDateTime64({t0:String}, 3, 'UTC') + toIntervalMillisecond(number * 100) AS t
      FROM numbers({offset:UInt64}, {count:UInt64}))
"""
CHUNK = 1_000_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=50, help="reads per case")
    parser.add_argument(
        "--clickhouse-url",
        help="http://user:password@host:port/database "
        "(filled unless it holds --events rows already: a rerun reuses them)",
    )
    args = parser.parse_args(argv)
    server = None
    try:
        url = args.clickhouse_url
        if not url:
            server, url = start_server()
        fill(url, args.events)
        asyncio.run(measure(url, args.events, args.requests))
    finally:
        if server:
            server.terminate()
            server.wait(30)
    return 0


def fill(url: str, events: int) -> None:
    started = time.monotonic()
    jobs = [str(uuid.uuid4()) for _ in range(200)]
    with clickhouse_connect.get_client(dsn=url, send_receive_timeout=1800) as ch:
        event_log.ensure_event_log(ch)
        if (held := ch.command("SELECT count() FROM event_log")) >= events:
            print(
                f"reusing    event_log: {held:,} rows "
                "(a server given by --clickhouse-url, filled before)"
            )
            return
        for offset in range(0, events, CHUNK):
            ch.command(
                FILL,
                parameters={
                    "jobs": jobs,
                    "owners": OWNERS,
                    "t0": "2026-11-01 00:00:00",
                    "offset": offset,
                    "count": min(CHUNK, events - offset),
                },
            )
        rows = ch.command("SELECT count() FROM event_log")
    print(
        f"filled     event_log: {rows:,} rows of 200 jobs, 4 owners "
        f"({time.monotonic() - started:.1f} s)"
    )


def cases(events: int) -> list[tuple[str, str, dict, dict]]:
    middle = T0 + dt.timedelta(milliseconds=100 * events // 2)
    hour = {"since": middle.isoformat(), "until": (middle + dt.timedelta(hours=1)).isoformat()}
    request = f"r-{events // 20}"  # one request id: 10 events, of owner0's jobs and others'
    return [
        ("first page, a 1-hour window", "events", hour, {}),
        (
            "first page, 1 h, level=error&q=timeout",
            "events",
            {**hour, "levels": ["error"], "text": "timeout"},
            {},
        ),
        ("context.request_id=…, all time", "events", {"context": [("request_id", request)]}, {}),
        ("histogram, all time", "histogram", {}, {}),
        ("facets on service, all time", "facets", {}, {}),
    ]


async def measure(url: str, events: int, requests: int) -> None:
    explorer = explore.Explorer(
        url, timeout_s=30, slots=read_slots.ReadSlots(1, 1, queue_per_owner=8, max_wait_s=600)
    )
    scope = reads.SearchScope("owner0")
    try:
        table_rows = explorer.client().command("SELECT count() FROM event_log")
        print(f"{'case':<42} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'rows read':>12}")
        for name, kind, query, _ in cases(events):
            filters = reads.checked_search_filters(**query)
            times = []
            for _ in range(requests):
                started = time.perf_counter()
                if kind == "events":
                    await explorer.run(scope.owner, reads.search_events, scope, filters, limit=101)
                elif kind == "histogram":
                    await explorer.run(
                        scope.owner, reads.search_histogram, scope, filters, interval_s=None
                    )
                else:
                    await explorer.run(
                        scope.owner, reads.search_facets, scope, filters, "service", limit=10
                    )
                times.append((time.perf_counter() - started) * 1000)
            print(
                f"{name:<42} {statistics.median(times):8.1f} "
                f"{statistics.quantiles(times, n=20, method='inclusive')[-1]:8.1f} "
                f"{max(times):8.1f} {rows_read(explorer, kind, scope, filters):>12,}"
            )
        print(f"(event_log holds {table_rows:,} rows; owner0 {table_rows // 4:,})")
        await export(explorer, scope, events)
    finally:
        explorer.close()


async def export(explorer, scope, events: int) -> None:
    until = T0 + dt.timedelta(milliseconds=100 * events)
    since = max(T0, until - dt.timedelta(days=1))
    filters = reads.checked_search_filters(since=since.isoformat(), until=until.isoformat())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started, lines, size = time.perf_counter(), 0, 0
    async for chunk in explorer.stream(
        scope.owner,
        reads.export_chunks,
        scope,
        filters,
        fmt="ndjson",
        order="desc",
        max_rows=10_000_000,
    ):
        lines += chunk.count(b"\n")
        size += len(chunk)
    seconds = time.perf_counter() - started
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    print(
        f"export, one owner's last day: {lines:,} events, {size / 2**20:.0f} MiB in "
        f"{seconds:.1f} s = {lines / seconds:,.0f} events/s; peak RSS grew {grew:.1f} MiB"
    )


def rows_read(explorer, kind: str, scope, filters) -> int:
    """What ClickHouse read for the case's main query (its summary header)."""
    interval_s = 10800  # the histogram's over all of 10,000,000 events 100 ms apart
    query = {
        "events": reads.events_query("desc"),
        "histogram": reads.histogram_query(filters, interval_s),
        "facets": reads.facet_query("service", filters),
    }[kind]
    parameters = {
        **scope.parameters(),
        **filters.parameters(),
        "after_time": reads.LAST_MS,
        "after_job": reads.MAX_UUID,
        "after_line": 2**64 - 1,
        "limit": 101,
        "facet_path": "",
        "interval_s": interval_s,
    }
    result = explorer.client().query(
        query, parameters=parameters, settings=reads.read_settings(explorer.settings)
    )
    return int(result.summary.get("read_rows", 0))


if __name__ == "__main__":
    sys.exit(main())
