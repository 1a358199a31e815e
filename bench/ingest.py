"""End-to-end ingest benchmark: upload a generated .jsonl file to a running API, time it to done.

Not a test: run it by hand against a running stack (EH_LINE_DELAY_MAX_S must be 0, the default).

    scripts/dev                                   # terminal 1: api + worker + relay
    .venv/bin/python bench/ingest.py              # terminal 2: 200,000 lines
    .venv/bin/python bench/ingest.py --lines 1000000
    .venv/bin/python bench/ingest.py --big-gib 1  # a ~1 GiB file, for the memory figures
    .venv/bin/python bench/ingest.py --format pino   # the same lines as pino writes them
    .venv/bin/python bench/ingest.py --format generic  # ... as winston would: read by names
    .venv/bin/python bench/ingest.py --compress gzip  # plain, then the same lines as .jsonl.gz

The cost of tracing: run it twice against scripts/dev, once as it is (tracing off: nothing
exported) and once with the stack exporting to the receiver this script runs:

    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 scripts/dev
    .venv/bin/python bench/ingest.py --otlp-receiver 4318   # tracing on: spans come here

What it does:
 1. writes N lines (default 200,000; about 1% invalid; bench/ingest_lines.py) to a .jsonl in
    a temporary directory, or, with --big-gib G, as many lines as fit in G GiB (the API's
    default limit is 1 GiB, EH_MAX_UPLOAD_BYTES); the directory is deleted at the end. --format
    pino writes the valid lines as pino does (numeric level, epoch-millisecond time, msg, name,
    hostname, pid), which the worker maps (the job's format is auto), to compare the figure
    with the canonical one;
    --compress gzip|zstd: after the plain run, the same file compressed (.jsonl.gz, .jsonl.zst)
    is uploaded too, and both end-to-end rates are printed side by side (the same window);
 2. uploads it as multipart/form-data (field `file`, streamed from disk) to
    POST {--url}/api/v1/files/upload and polls GET /api/v1/jobs/{id} until it is done;
 3. prints the upload time, and end-to-end valid lines/s: valid lines / (seconds from the
    start of the upload to the job's completed_at); then waits until the job's events are all
    in ClickHouse (GET /api/v1/jobs/{id}: `delivery`) and prints that figure too (upload start
    -> the last event in event_log), with its share of the Postgres-side rate;
 4. prints the worker's peak RSS (VmHWM of /proc/PID/status; the peak is reset through
    /proc/PID/clear_refs before the upload when permitted) and the API's VmRSS before and
    after the upload. PIDs come from --worker-pid / --api-pid, else from a scan of /proc for
    a command line running worker.py / eventhorizon.py (it must find exactly one);
 5. prints the Postgres bytes written per valid line: the WAL written from the upload's start
    to the job's completion (pg_current_wal_lsn, the whole server's: keep other work off it),
    and how much the tables a job grows (log_entries, line_errors, outbox, outbox_batch, with
    their indexes and TOAST) grew over the same span, in which the relay runs too;
    Then where the CPU went (bench/cpu_use.py): each part's CPU per valid line (API, worker,
    relay, Postgres by the client its backends serve, ClickHouse, RabbitMQ, S3, the bench)
    from the upload's start to the job's completion, to its last event in ClickHouse, and to
    the end of the merges ClickHouse did after (a steady load pays for those too), and the
    ceiling the second sets (all cores busy with that CPU per line). Each measured window
    starts once ClickHouse has finished the merges earlier inserts left it;
 6. runs the reference loop of bench/ingest_limit.py (the least work per line: orjson,
    jsonschema-rs, one COPY row per valid line, a transaction per 5,000 lines) on the same file
    in one process and in as many as there are cores, right after the job (the same window),
    and prints the end-to-end rate as a share of the second, the worker's of the first, and
    the loop's own CPU per line (--no-limit skips it);
 7. for comparison (canonical lines only), inserts a sample of the same lines (--pg-sample,
    default 5,000; 0 skips)
    into a scratch table in Postgres (--database-url, default DATABASE_URL / config.Settings)
    with a naive loop of one INSERT and one COMMIT per row, and prints that rate in rows/s.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gzip
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import config  # noqa: E402
import jobs  # noqa: E402
from bench import cpu_use, ingest_limit, ingest_lines  # noqa: E402

GIB = 1024**3
MIB = ingest_lines.MIB
REQUIRED = ("timestamp", "level", "service", "event_type", "message")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("--lines", type=int, default=200_000, help="lines to generate")
    parser.add_argument(
        "--big-gib",
        type=float,
        metavar="G",
        help="generate a file of about G GiB instead of --lines lines",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the API's base URL")
    parser.add_argument(
        "--token", default=None, help="API token (default: EH_TOKEN, else var/dev-token)"
    )
    parser.add_argument("--worker-pid", type=int, help="the worker process (default: found)")
    parser.add_argument("--api-pid", type=int, help="the API process (default: found)")
    parser.add_argument(
        "--database-url",
        default=None,
        help="Postgres for the naive baseline (default: DATABASE_URL)",
    )
    parser.add_argument(
        "--pg-sample",
        type=int,
        default=5000,
        help="rows for the naive INSERT+COMMIT baseline; 0 skips it",
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds to wait for the job to finish"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--format",
        choices=ingest_lines.LINE_FORMATS,
        default="eventhorizon",
        help="the format of the valid lines (default: eventhorizon, canonical)",
    )
    parser.add_argument(
        "--compress",
        choices=("gzip", "zstd"),
        help="after the plain run, upload the same lines compressed (.jsonl.gz "
        "or .jsonl.zst) and print both end-to-end rates",
    )
    parser.add_argument(
        "--no-limit",
        dest="limit",
        action="store_false",
        help="skip the reference loop (bench/ingest_limit.py) after the job",
    )
    parser.add_argument(
        "--otlp-receiver",
        type=int,
        metavar="PORT",
        help="receive the stack's spans over OTLP/HTTP on 127.0.0.1:PORT while "
        "the job runs, and label the figure 'tracing on' (start the stack "
        "with OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:PORT)",
    )
    args = parser.parse_args(argv)

    settings = config.load_settings(service=False)
    database_url = args.database_url or settings.database_url
    worker_pid = args.worker_pid or find_pid("worker.py")
    api_pid = args.api_pid or find_pid("eventhorizon.py")

    tmp = Path(tempfile.mkdtemp(prefix="eh-bench-"))
    try:
        if args.big_gib:
            path = tmp / f"bench-{args.big_gib:g}GiB.jsonl"
            max_bytes = int(args.big_gib * GIB)
            if max_bytes > settings.max_upload_bytes:
                print(
                    f"note: the file will be larger than this environment's "
                    f"EH_MAX_UPLOAD_BYTES ({settings.max_upload_bytes}); the API must allow it"
                )
            max_lines = None
        else:
            path = tmp / f"bench-{args.lines}.jsonl"
            max_bytes, max_lines = None, args.lines
        t = time.perf_counter()
        gen = ingest_lines.generate(
            path,
            random.Random(args.seed),
            max_lines=max_lines,
            max_bytes=max_bytes,
            line_format=args.format,
        )
        print(
            f"generated  {path.name} ({args.format}): {gen['size'] / MIB:,.1f} MiB, "
            f"{gen['lines']:,} lines, "
            f"{gen['valid']:,} valid, {gen['invalid']:,} invalid "
            f"({time.perf_counter() - t:.1f} s)"
        )

        token = args.token or os.environ.get("EH_TOKEN") or read_dev_token()
        quiet()
        result, rate = run_once(args, path, gen, token, worker_pid, api_pid, database_url)
        if args.limit and args.format == "eventhorizon" and rate:
            quiet()
            compare_with_limit(path, database_url, result)
        if args.compress:
            compressed = compress_file(path, args.compress)
            print(
                f"\ncompressed {compressed.name} ({args.compress}): "
                f"{compressed.stat().st_size / MIB:,.1f} MiB; the same lines again"
            )
            quiet()
            packed, packed_rate = run_once(
                args, compressed, gen, token, worker_pid, api_pid, database_url
            )
            if rate and packed_rate:
                print(
                    f"\nend to end      plain {rate:,.0f} valid lines/s, {args.compress} "
                    f"{packed_rate:,.0f} valid lines/s ({packed_rate / rate:.0%} of plain, "
                    "same window)"
                )
            result = result if packed["job"]["status"] != "completed" else packed
        if args.pg_sample > 0 and args.format != "eventhorizon":
            print("naive baseline skipped: it reads canonical lines only")
        elif args.pg_sample > 0:
            naive_postgres(path, database_url, args.pg_sample, gen["valid"])
        job = result["job"]
        return 0 if job["status"] == "completed" else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def quiet() -> None:
    """Before a measured window: ClickHouse done with the merges earlier inserts left it."""
    waited = cpu_use.wait_for_quiet_clickhouse()
    if waited >= 1:
        print(f"waited {waited:.0f} s for ClickHouse's merges to end before measuring")


def run_once(args, path: Path, gen: dict, token: str, worker_pid, api_pid, database_url: str):
    """Upload one file, wait for its job, print the report; (result, valid lines/s end to
    end, or None if the job did not complete)."""
    hwm_reset = {pid: reset_peak_rss(pid) for pid in (worker_pid, api_pid) if pid}
    api_rss_before = proc_status_kib(api_pid, "VmRSS") if api_pid else None
    written = PostgresWrites(database_url)
    result = asyncio.run(
        with_otlp_receiver(
            args.otlp_receiver,
            upload_and_wait(args.url.rstrip("/"), path, args.timeout, token, written),
        )
    )
    worker_peak = proc_status_kib(worker_pid, "VmHWM") if worker_pid else None
    api_rss_after = proc_status_kib(api_pid, "VmRSS") if api_pid else None
    api_peak = proc_status_kib(api_pid, "VmHWM") if api_pid else None
    rate = report(
        gen,
        result,
        worker_pid,
        worker_peak,
        api_pid,
        api_rss_before,
        api_rss_after,
        api_peak,
        hwm_reset,
    )
    if rate:
        written.report(result["job"]["lines_valid"])
        report_cpu(result, database_url)
    return result, rate


def report_cpu(result: dict, database_url: str) -> None:
    """CPU per valid line by part, to Postgres (upload start -> the job seen completed) and
    to ClickHouse (-> its events seen delivered), and the ceiling the latter sets on this
    machine's cores (bench/cpu_use.py); kept in `result` for compare_with_limit."""
    before, completed, delivered = result["cpu"]
    valid, cores = result["job"]["lines_valid"], os.cpu_count() or 1
    cpu_use.report("to Postgres", cpu_use.spent_between(before, completed), valid, cores)
    result["ceiling"] = cpu_use.report(
        "to ClickHouse", cpu_use.spent_between(before, delivered), valid, cores
    )
    cpu_use.wait_for_quiet_clickhouse()  # the merges its inserts left, which a steady load pays
    cpu_use.report(
        "and merged", cpu_use.spent_between(before, cpu_use.mark(database_url)), valid, cores
    )


class PostgresWrites:
    """What Postgres wrote over a job: WAL bytes (pg_current_wal_lsn, server-wide) and the
    growth of the tables a job grows, from `start` (before the upload) to `stop` (the poller
    saw the job finished)."""

    TABLES = ("log_entries", "line_errors", "outbox", "outbox_batch")
    QUERY = "SELECT pg_current_wal_lsn()::text AS lsn, " + ", ".join(
        f"pg_total_relation_size('{t}') AS {t}" for t in TABLES
    )

    def __init__(self, database_url: str):
        self.database_url = database_url
        self.marks: list[dict] = []

    def mark(self) -> None:
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:
            self.marks.append(conn.execute(self.QUERY).fetchone())

    def report(self, valid: int) -> None:
        import psycopg

        if len(self.marks) != 2 or not valid:
            return
        before, after = self.marks
        with psycopg.connect(self.database_url) as conn:
            (wal,) = conn.execute(
                "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)::bigint",
                (after["lsn"], before["lsn"]),
            ).fetchone()
        grown = {t: after[t] - before[t] for t in self.TABLES}
        print(
            f"Postgres WAL    {wal / MIB:8.1f} MiB -> {wal / valid:,.0f} bytes per valid line "
            "(upload start -> completed; the whole server's)"
        )
        print(
            f"tables grew     {sum(grown.values()) / MIB:8.1f} MiB -> "
            f"{sum(grown.values()) / valid:,.0f} bytes per valid line ("
            + ", ".join(f"{t} {n / valid:,.0f}" for t, n in grown.items())
            + ")"
        )


def compare_with_limit(path: Path, database_url: str, result: dict) -> None:
    """The reference loop (bench/ingest_limit.py) on the same file, right after the job, in
    one process and in as many as there are cores; the job's rates as shares of them."""
    job = result["job"]
    completed = dt.datetime.fromisoformat(job["completed_at"]).timestamp()
    e2e = job["lines_valid"] / (completed - result["started_wall"])
    worker = job["lines_valid"] / (
        completed - dt.datetime.fromisoformat(job["started_at"]).timestamp()
    )
    cores = os.cpu_count() or 1
    before = cpu_use.mark(database_url)
    measured = ingest_limit.measure(path, database_url, 1)
    cpu_use.report(
        "of the loop",
        cpu_use.spent_between(before, cpu_use.mark(database_url)),
        measured["valid"],
        cores,
    )
    one = measured["rate"]
    many = ingest_limit.measure(path, database_url, cores)["rate"] if cores > 1 else one
    print(
        f"limit           {one:,.0f} valid lines/s in one process, {many:,.0f} in {cores} "
        "(bench/ingest_limit.py, the same file, just after)"
    )
    print(
        f"against limit   end to end {e2e / many:.2f}x the {cores}-process loop; worker "
        f"{worker:,.0f} valid lines/s, {worker / one:.2f}x the one-process loop"
    )
    if result.get("ceiling"):
        print(
            f"CPU ceiling     {result['ceiling']:,.0f} valid lines/s: "
            f"{result['ceiling'] / many:.2f}x the {cores}-process loop (all {cores} cores busy "
            "with this job's CPU per line, to ClickHouse)"
        )


def compress_file(path: Path, compression: str) -> Path:
    """The file compressed as gzip (level 6, as `gzip` does) or zstd (level 3, as `zstd`
    does), streamed, next to it."""
    if compression == "gzip":
        target = path.with_name(path.name + ".gz")
        with path.open("rb") as src, gzip.open(target, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
    else:
        target = path.with_name(path.name + ".zst")
        with path.open("rb") as src, target.open("wb") as dst:
            zstandard.ZstdCompressor(level=3).copy_stream(src, dst)
    return target


# --------------------------------------------------------------------------- upload


def read_dev_token() -> str:
    """The token scripts/dev keeps for development."""
    path = Path(__file__).resolve().parent.parent / "var" / "dev-token"
    if not path.exists():
        raise SystemExit("no token: pass --token, set EH_TOKEN, or run scripts/dev first")
    return path.read_text().strip()


async def upload_and_wait(
    url: str, path: Path, timeout: float, token: str, written: PostgresWrites
) -> dict:
    """Upload the file (streamed), then poll its job until completed or failed; `written`
    is marked before the upload and once the job is seen finished."""
    session_timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
    headers = {"Authorization": f"Bearer {token}"}
    cpu = [cpu_use.mark(written.database_url)]
    async with aiohttp.ClientSession(timeout=session_timeout, headers=headers) as session:
        written.mark()
        started_wall = time.time()
        started = time.perf_counter()
        with path.open("rb") as f:
            form = aiohttp.FormData()
            form.add_field("file", f, filename=path.name, content_type="application/x-ndjson")
            async with session.post(f"{url}/api/v1/files/upload", data=form) as resp:
                text = await resp.text()
                if resp.status != 202:
                    raise SystemExit(f"upload failed: HTTP {resp.status}: {text[:500]}")
        upload_s = time.perf_counter() - started
        job = json.loads(text)
        job_id = job["job_id"]
        print(f"uploaded   job {job_id} in {upload_s:.2f} s; waiting for it to finish")

        deadline = time.perf_counter() + timeout
        last_print = 0.0
        while job["status"] not in jobs.TERMINAL_STATUSES:
            if time.perf_counter() > deadline:
                raise SystemExit(f"job {job_id} not finished after {timeout:.0f} s: {job}")
            await asyncio.sleep(0.2)
            async with session.get(f"{url}/api/v1/jobs/{job_id}") as resp:
                if resp.status != 200:
                    raise SystemExit(f"GET job failed: HTTP {resp.status}: {await resp.text()}")
                job = await resp.json()
            if time.perf_counter() - last_print > 5:
                last_print = time.perf_counter()
                print(f"  {job['status']}: {job['lines_processed']:,}/{job['lines_total']:,} lines")
        observed_s = time.perf_counter() - started
        written.mark()
        cpu.append(cpu_use.mark(written.database_url))
        delivered_s = await wait_delivered(
            session, f"{url}/api/v1/jobs/{job_id}", job, started, deadline
        )
        cpu.append(cpu_use.mark(written.database_url))
    return {
        "cpu": cpu,
        "job": job,
        "upload_s": upload_s,
        "observed_s": observed_s,
        "started_wall": started_wall,
        "delivered_s": delivered_s,
    }


async def wait_delivered(
    session, job_url: str, job: dict, started: float, deadline: float
) -> float | None:
    """Seconds from the upload's start until the job's last line event is in ClickHouse (the
    job's `delivery`, polled every 0.2 s), or None for a job that did not complete."""
    if job["status"] != "completed":
        return None
    while True:
        async with session.get(job_url) as resp:
            delivery = (await resp.json())["delivery"]
        if delivery["delivered"] + delivery["dead"] >= job["lines_valid"]:
            return time.perf_counter() - started
        if time.perf_counter() > deadline:
            raise SystemExit(f"events not delivered in time: {delivery}")
        await asyncio.sleep(0.2)


async def with_otlp_receiver(port: int | None, work) -> dict:
    """Run `work` while an OTLP/HTTP receiver on 127.0.0.1:port counts the spans it gets
    (decoded as an exporter sends them, as a backend would); the count goes in the result."""
    if port is None:
        return {**await work, "spans": None}
    from aiohttp import web
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    spans = 0

    async def receive(request: web.Request) -> web.Response:
        nonlocal spans
        export = ExportTraceServiceRequest.FromString(await request.read())
        spans += sum(len(s.spans) for r in export.resource_spans for s in r.scope_spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app = web.Application(client_max_size=64 * MIB)
    app.router.add_post("/v1/traces", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        result = await work
        await asyncio.sleep(6)  # the batch processors' last export (every 5 s by default)
        return {**result, "spans": spans}
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------- report


def report(
    gen, result, worker_pid, worker_peak, api_pid, api_before, api_after, api_peak, hwm_reset
) -> float | None:
    job = result["job"]
    upload_s = result["upload_s"]
    print()
    print(
        f"upload          {upload_s:8.2f} s   ({gen['size'] / MIB / upload_s:,.1f} MiB/s, "
        f"{gen['lines'] / upload_s:,.0f} lines/s)"
    )
    print(
        f"job             {job['status']}: {job['lines_valid']:,} valid, "
        f"{job['lines_invalid']:,} invalid of {job['lines_total']:,} lines"
        + (
            ""
            if (job["lines_valid"], job["lines_invalid"]) == (gen["valid"], gen["invalid"])
            else f"  (MISMATCH: generated {gen['valid']:,} valid, {gen['invalid']:,} invalid)"
        )
    )
    if job["status"] != "completed":
        print(f"error           {job['error']}")
        return None
    completed = dt.datetime.fromisoformat(job["completed_at"]).timestamp()
    e2e_s = completed - result["started_wall"]
    if e2e_s <= 0:  # a clock oddity: fall back to what the poller saw
        e2e_s = result["observed_s"]
    print(
        f"end to end      {e2e_s:8.2f} s   -> {job['lines_valid'] / e2e_s:,.0f} valid lines/s "
        f"(upload start -> completed_at)"
    )
    if result["delivered_s"]:
        ch_s = result["delivered_s"]
        print(
            f"to ClickHouse   {ch_s:8.2f} s   -> {job['lines_valid'] / ch_s:,.0f} valid lines/s "
            f"(upload start -> the last event in event_log; {e2e_s / ch_s:.0%} of the "
            "Postgres-side rate)"
        )
    tracing = (
        "off (no --otlp-receiver)"
        if result["spans"] is None
        else f"on: {result['spans']:,} spans received"
        + ("" if result["spans"] else " (none: is OTEL_EXPORTER_OTLP_ENDPOINT set?)")
    )
    print(f"tracing         {tracing}")
    if job["started_at"]:
        work_s = completed - dt.datetime.fromisoformat(job["started_at"]).timestamp()
        if work_s > 0:
            print(
                f"worker          {work_s:8.2f} s   -> {job['lines_total'] / work_s:,.0f} "
                f"lines/s (started_at -> completed_at)"
            )
    if worker_pid and worker_peak is not None:
        since = "during this run" if hwm_reset.get(worker_pid) else "since the process started"
        print(f"worker peak RSS {worker_peak / 1024:8.1f} MiB (VmHWM {since}, pid {worker_pid})")
    else:
        print("worker peak RSS n/a (no worker pid: pass --worker-pid)")
    if api_pid and api_before is not None and api_after is not None:
        peak = ""
        if api_peak is not None:
            since = "during this run" if hwm_reset.get(api_pid) else "since start"
            peak = f", peak {api_peak / 1024:.1f} MiB {since}"
        print(
            f"api RSS         {api_before / 1024:8.1f} MiB before, {api_after / 1024:.1f} MiB "
            f"after{peak} (pid {api_pid})"
        )
    else:
        print("api RSS         n/a (no API pid: pass --api-pid)")
    return job["lines_valid"] / e2e_s


# --------------------------------------------------------------------------- processes


def find_pid(script: str) -> int | None:
    """The one process whose command line runs `script` (e.g. `python worker.py`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        names = [os.path.basename(a.decode(errors="replace")) for a in args if a]
        if script in names[1:] and "migrate" not in names:
            found.append(int(entry.name))
    if len(found) == 1:
        return found[0]
    if found:
        print(
            f"note: several processes run {script} ({', '.join(map(str, sorted(found)))}); "
            f"pass the pid to measure one"
        )
    else:
        print(f"note: no process runs {script}; its memory is not measured")
    return None


def proc_status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])  # "VmHWM:   123456 kB"
    except OSError:
        return None
    return None


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, needs permission to ptrace the process)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- naive baseline


def naive_postgres(path: Path, database_url: str, sample: int, total_valid: int) -> None:
    """One INSERT and one COMMIT per row into a scratch table: the rate to beat."""
    import psycopg
    from psycopg import sql
    from psycopg.types.json import Jsonb

    rows = []
    with path.open("rb") as f:
        for raw in f:
            entry = parse_valid(raw)
            if entry is not None:
                rows.append(entry)
                if len(rows) >= sample:
                    break
    table = sql.Identifier(f"bench_naive_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(database_url) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (line_no bigint PRIMARY KEY, timestamp timestamptz NOT NULL, "
                "level text NOT NULL, service text NOT NULL, event_type text NOT NULL, "
                "environment text NOT NULL, message text NOT NULL, context jsonb NOT NULL)"
            ).format(table)
        )
        conn.commit()
        insert = sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s, %s, %s)").format(table)
        try:
            started = time.perf_counter()
            for i, e in enumerate(rows):
                conn.execute(
                    insert,
                    (
                        i,
                        e["timestamp"],
                        e["level"].lower(),
                        e["service"],
                        e["event_type"],
                        e.get("environment", "production"),
                        e["message"],
                        Jsonb(e.get("context", {})),
                    ),
                )
                conn.commit()
            elapsed = time.perf_counter() - started
        finally:
            conn.rollback()
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
            conn.commit()
    rate = len(rows) / elapsed
    print(
        f"naive Postgres  {len(rows):,} rows in {elapsed:.2f} s -> {rate:,.0f} rows/s "
        f"(one INSERT + COMMIT per row); all {total_valid:,} valid lines would take "
        f"{total_valid / rate:,.0f} s"
    )


def parse_valid(raw: bytes) -> dict | None:
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not all(
        isinstance(entry.get(k), str) and entry[k] for k in REQUIRED if k != "message"
    ):
        return None
    try:
        entry["timestamp"] = dt.datetime.fromisoformat(entry["timestamp"])
    except ValueError:
        return None
    if (
        entry["timestamp"].tzinfo is None
        or "message" not in entry
        or entry["level"].lower() not in ("debug", "info", "warning", "error", "critical")
    ):
        return None
    return entry


if __name__ == "__main__":
    raise SystemExit(main())
