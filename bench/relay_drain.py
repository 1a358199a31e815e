"""Relay benchmark: outbox drain rate, and delivery latency under a steady load.

Not a test: run it by hand. It needs Postgres only (ClickHouse is chDB, in a temporary directory),
or a ClickHouse server with --clickhouse-url, as in production (scripts/clickhouse-server serves
one).

    .venv/bin/python bench/relay_drain.py
    .venv/bin/python bench/relay_drain.py --events 1000000 --rate 5000 --seconds 60
    # a scratch server (its events are left in its event_log; delete the directory after):
    CLICKHOUSE_PASSWORD_BENCH=bench .venv/bin/python scripts/clickhouse-server \
        --dir /tmp/eh-bench-ch --port 18123 --database bench --user bench:writer &
    .venv/bin/python bench/relay_drain.py --limit-tool ../shared/tools/relay_limit.py \
        --clickhouse-url http://bench:bench@127.0.0.1:18123/bench
    LOG_LEVEL=INFO .venv/bin/python bench/relay_drain.py      # with the relay's per-batch log lines

What it does:
 1. creates a scratch database `eh_bench_relay` on the server of DATABASE_URL (default: the
    local one; the admin connection goes to its `postgres` database), migrates it with
    core.migrate, and drops it at the end;
 2. drain: starts the relay (relay.run_lanes, in a thread, with the default knobs unless
    RELAY_* say otherwise) and lets it connect, then commits --events events (default
    500,000) into the outbox in one transaction, by COPY, and times the relay from that commit
    until the outbox is empty; prints events/s and the number of ClickHouse inserts. With
    --limit-tool, first runs that reference loop (relay_limit.py: claim -> insert -> delete,
    no ledger) on as many events with the same batch size, and prints the drain rate as a
    share of it, both measured in the same window;
 3. steady load: a producer thread commits --rate events/s (default 2,000) for --seconds
    (default 20), in small transactions of 20 events each (COPY + NOTIFY, 100 per second at
    the default rate), while the relay loop runs; prints the delivery latency of every event,
    from its outbox created_at to ClickHouse's acknowledgement of its batch (p50, p99, max),
    and the ClickHouse inserts per second;
 4. prints the figures against the targets (>= 30,000 events/s drained, <= 2 inserts/s and
    p99 <= 2.5 s at steady load).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import config  # noqa: E402
import core  # noqa: E402
import logs  # noqa: E402
import outbox  # noqa: E402
import relay  # noqa: E402
import stopping  # noqa: E402

BENCH_DB = "eh_bench_relay"
EVENTS_PER_TX = 20
TARGET_DRAIN_EPS = 30_000
TARGET_INSERTS_PER_S = 2.0
TARGET_P99_S = 2.5
TARGET_LIMIT_SHARE = 0.9
LIMIT_FIGURE = re.compile(r"fast relay loop ([\d,]+) events/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("--events", type=int, default=500_000, help="events for the drain phase")
    parser.add_argument("--rate", type=int, default=2_000, help="events/s for the steady phase")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the steady phase")
    parser.add_argument(
        "--clickhouse-url",
        help="a ClickHouse server for the relay (http://...,"
        " a scratch database: the events stay in its event_log); default: chDB"
        " in a temporary directory",
    )
    parser.add_argument(
        "--limit-tool", type=Path, help="relay_limit.py, run first on as many events for the ratio"
    )
    args = parser.parse_args(argv)

    env = {"LOG_LEVEL": "WARNING", "LOG_FORMAT": "console", **os.environ}
    base = config.Settings.from_env(env)
    logs.configure_logging(base)
    admin_url = with_database(base.database_url, "postgres")
    bench_url = with_database(base.database_url, BENCH_DB)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(
            psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg.sql.Identifier(BENCH_DB)
            )
        )
        admin.execute(
            psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(BENCH_DB))
        )
    try:
        core.migrate(bench_url)
        with tempfile.TemporaryDirectory(prefix="eh-bench-relay-") as tmp:
            settings = dataclasses.replace(
                base,
                database_url=bench_url,
                clickhouse_url=(args.clickhouse_url or f"chdb://{tmp}/clickhouse"),
            )
            host = urlsplit(bench_url).hostname or "local socket"
            print(
                f"Postgres {host}/{BENCH_DB}, ClickHouse "
                f"{config.redact_url(settings.clickhouse_url)}, "
                f"{settings.relay_lanes} lane(s); relay_batch_max_rows="
                f"{settings.relay_batch_max_rows}, relay_batch_max_wait_s="
                f"{settings.relay_batch_max_wait_s}, relay_poll_s={settings.relay_poll_s}"
            )
            limit_eps = (
                relay_limit(args.limit_tool, bench_url, args.events, settings.relay_batch_max_rows)
                if args.limit_tool
                else None
            )
            drain = drain_phase(settings, args.events)
            steady = steady_phase(settings, args.rate, args.seconds)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(
                psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    psycopg.sql.Identifier(BENCH_DB)
                )
            )

    print()
    print("== results")
    checks = [
        (
            "drain rate",
            f"{drain['eps']:,.0f} events/s",
            drain["eps"] >= TARGET_DRAIN_EPS,
            f">= {TARGET_DRAIN_EPS:,}",
        ),
        (
            "steady inserts",
            f"{steady['inserts_per_s']:.2f} inserts/s",
            steady["inserts_per_s"] <= TARGET_INSERTS_PER_S,
            f"<= {TARGET_INSERTS_PER_S}",
        ),
        (
            "steady p99 latency",
            f"{steady['p99']:.3f} s",
            steady["p99"] <= TARGET_P99_S,
            f"<= {TARGET_P99_S} s",
        ),
    ]
    if limit_eps is not None:
        share = drain["eps"] / limit_eps
        checks.append(
            (
                "drain / relay limit",
                f"{share:.2f} x {limit_eps:,.0f}",
                share >= TARGET_LIMIT_SHARE,
                f">= {TARGET_LIMIT_SHARE}",
            )
        )
    for name, value, ok, target in checks:
        print(f"{name:20} {value:>22}   target {target:12} {'ok' if ok else 'MISSED'}")
    return 0 if all(ok for _, _, ok, _ in checks) else 1


class Relay:
    """relay.run in a thread, counting ClickHouse inserts and timing every event's delivery."""

    def __init__(self, settings: config.Settings, *, timed: bool = True):
        self.timed = timed
        self.stop = stopping.Stopper("relay", 8.0)
        self.lock = threading.Lock()
        self.inserts = 0
        self.rows = 0
        self.latencies: list[float] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(settings,), name="relay")

    def _run(self, settings):
        try:
            relay.run_lanes(settings, self.stop, after_insert=self._acknowledged)
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _acknowledged(self, rows) -> None:
        acked = time.time()
        with self.lock:
            self.inserts += 1
            self.rows += len(rows)
            if self.timed:
                self.latencies.extend(acked - r.created_at.timestamp() for r in rows)

    def snapshot(self) -> tuple[int, int, list[float]]:
        with self.lock:
            return self.inserts, self.rows, list(self.latencies)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.request("benchmark over")
        self.thread.join(30)
        self.stop.close()
        if self.error is not None:
            raise self.error


def relay_limit(tool: Path, database_url: str, n: int, batch: int) -> float:
    """Run relay_limit.py on n events in batches of `batch`; its events/s."""
    print()
    print(f"== the relay limit: {tool} {n:,} {batch:,}")
    out = subprocess.run(
        [sys.executable, str(tool), database_url, str(n), str(batch)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    print(out.strip())
    return float(LIMIT_FIGURE.search(out).group(1).replace(",", ""))


def drain_phase(settings: config.Settings, n: int) -> dict:
    print()
    print(f"== drain: {n:,} events committed at once into the outbox")
    with (
        psycopg.connect(settings.database_url, autocommit=True) as conn,
        Relay(settings, timed=False) as r,
    ):
        time.sleep(1.0)  # the relay is connected and idle
        filling = time.monotonic()
        with conn.transaction(), conn.cursor() as cur:
            outbox.copy_events(cur, (sample_event(i) for i in range(n)))
        started = time.monotonic()
        print(f"filled the outbox in {started - filling:.1f} s")
        # Count acknowledged rows rather than poll the outbox: a query over a table full of
        # freshly deleted rows costs Postgres real work, taken from the relay on 2 cores.
        while r.snapshot()[1] < n and r.error is None and time.monotonic() - started < 600:
            time.sleep(0.05)
        wait_for_empty_outbox(conn, r, timeout=60)
        seconds = time.monotonic() - started
        inserts, rows, _ = r.snapshot()
    eps = rows / seconds
    print(
        f"drained {rows:,} events in {seconds:.2f} s: {eps:,.0f} events/s, "
        f"{inserts} ClickHouse inserts ({rows / max(inserts, 1):,.0f} events each)"
    )
    return {"eps": eps, "inserts": inserts, "seconds": seconds}


def steady_phase(settings: config.Settings, rate: int, seconds: float) -> dict:
    print()
    print(
        f"== steady load: {rate:,} events/s for {seconds:.0f} s, "
        f"{EVENTS_PER_TX} events a transaction"
    )
    with psycopg.connect(settings.database_url, autocommit=True) as conn, Relay(settings) as r:
        time.sleep(1.0)  # the relay is connected and idle
        base_inserts, _, _ = r.snapshot()
        producer = Producer(settings.database_url, rate, seconds)
        producer.start()
        producer.join()
        window_inserts = r.snapshot()[0] - base_inserts
        wait_for_empty_outbox(conn, r, timeout=60)
        inserts, rows, latencies = r.snapshot()
    if producer.error is not None:
        raise producer.error
    latencies.sort()
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    inserts_per_s = window_inserts / producer.seconds
    print(
        f"produced {producer.events:,} events in {producer.seconds:.1f} s "
        f"({producer.events / producer.seconds:,.0f}/s); delivered {rows:,}"
    )
    print(
        f"latency created_at -> ClickHouse ack: p50 {p50:.3f} s, p99 {p99:.3f} s, "
        f"max {latencies[-1]:.3f} s, mean {statistics.fmean(latencies):.3f} s"
    )
    print(
        f"ClickHouse inserts: {inserts - base_inserts} in all, {inserts_per_s:.2f}/s while "
        f"producing ({rows / max(inserts - base_inserts, 1):,.0f} events each)"
    )
    return {"p50": p50, "p99": p99, "inserts_per_s": inserts_per_s}


class Producer(threading.Thread):
    """Commits `rate` events/s for `seconds` s in transactions of EVENTS_PER_TX (COPY + NOTIFY)."""

    def __init__(self, database_url: str, rate: int, seconds: float):
        super().__init__(name="producer")
        self.database_url, self.rate, self.duration = database_url, rate, seconds
        self.events = 0
        self.seconds = 0.0
        self.error: BaseException | None = None

    def run(self):
        try:
            interval = EVENTS_PER_TX / self.rate
            with psycopg.connect(self.database_url) as conn:
                started = next_at = time.monotonic()
                while next_at - started < self.duration:
                    time.sleep(max(0.0, next_at - time.monotonic()))
                    with conn.transaction(), conn.cursor() as cur:
                        outbox.copy_events(
                            cur, (sample_event(self.events + i) for i in range(EVENTS_PER_TX))
                        )
                    self.events += EVENTS_PER_TX
                    next_at += interval
                self.seconds = time.monotonic() - started
        except BaseException as exc:
            self.error = exc


def sample_event(i: int) -> outbox.Event:
    """A log-line event of a typical size (about 200 bytes of context)."""
    return outbox.make_event(
        "log.line",
        {
            "job_id": "6f1c4c43-35a5-4a7e-9d8e-0d5b7b1f6a10",
            "line_no": i,
            "level": "info",
            "service": "checkout",
            "message": f"order {i} paid",
            "request_id": str(uuid.uuid4()),
            "context": {"user_id": i % 1000, "amount_cents": i % 9973},
        },
        environment="bench",
    )


def wait_for_empty_outbox(conn, r: Relay, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while conn.execute("SELECT EXISTS (SELECT 1 FROM outbox)").fetchone()[0]:
        if r.error is not None:
            raise r.error
        if time.monotonic() > deadline:
            raise SystemExit(f"the outbox did not drain within {timeout} s")
        time.sleep(0.2)


def with_database(database_url: str, dbname: str) -> str:
    return urlunsplit(urlsplit(database_url)._replace(path=f"/{dbname}"))


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


if __name__ == "__main__":
    sys.exit(main())
