"""Load benchmark: many WebSocket watchers and concurrent uploads against one API process,
with the API's responsiveness (/healthz latency) and memory measured meanwhile.

Not a test: run it by hand against a running stack.

    scripts/dev                                         # terminal 1: api + worker + relay
    .venv/bin/python bench/load.py                      # terminal 2: 1,000 watchers, 50 uploads
    EH_MAX_UPLOADS=64 EH_MAX_UPLOADS_PER_OWNER=64 scripts/dev   # to take all 50 at once

What it does:
 1. generates --uploads files (default 50) of --lines lines each (default 2,000) in memory;
 2. probes GET /healthz every 20 ms from start to end, on a connection of its own;
 3. uploads all files at once (one connection each); an upload refused with 429 or 503 and
    `Retry-After` (the API's upload caps, EH_MAX_UPLOADS and EH_MAX_UPLOADS_PER_OWNER) is
    retried after that many seconds, and counted;
 4. as each job is accepted, opens --watchers / --uploads WebSockets on it (default 1,000 in
    all, one connection each) that read every state until the job's final one;
 5. prints /healthz latency (p50, p99, max), the API's RSS before, at its peak (VmHWM, reset
    first when permitted) and after, how many states the watchers received, and how many
    uploads the caps sent back.

The token comes from --token, else EH_TOKEN, else var/dev-token (scripts/dev writes it); the
API process from --api-pid, else a scan of /proc for eventhorizon.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

import aiohttp
from ingest import find_pid, proc_status_kib, read_dev_token, reset_peak_rss

LINE = {
    "timestamp": "2026-11-23T10:00:00Z",
    "level": "info",
    "service": "load",
    "event_type": "load.line",
    "message": "a line of the load benchmark",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the API's base URL")
    parser.add_argument("--uploads", type=int, default=50, help="concurrent uploads")
    parser.add_argument("--lines", type=int, default=2_000, help="lines per uploaded file")
    parser.add_argument("--watchers", type=int, default=1_000, help="WebSockets in all")
    parser.add_argument(
        "--token", default=None, help="API token (default: EH_TOKEN, var/dev-token)"
    )
    parser.add_argument("--api-pid", type=int, help="the API process (default: found)")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    token = args.token or os.environ.get("EH_TOKEN") or read_dev_token()
    api_pid = args.api_pid or find_pid("eventhorizon.py")
    reset = reset_peak_rss(api_pid) if api_pid else False
    rss_before = proc_status_kib(api_pid, "VmRSS") if api_pid else None
    result = asyncio.run(run(args, token))
    rss_peak = proc_status_kib(api_pid, "VmHWM") if api_pid else None
    rss_after = proc_status_kib(api_pid, "VmRSS") if api_pid else None
    report(args, result, rss_before, rss_peak if reset else None, rss_after)
    return 0 if result["completed"] == args.uploads else 1


async def run(args, token: str) -> dict:
    url = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"}
    content = b"".join(
        json.dumps({**LINE, "context": {"i": i}}).encode() + b"\n" for i in range(args.lines)
    )
    stop = asyncio.Event()
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)  # a connection per upload and per watcher
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(
        url, headers=headers, connector=connector, timeout=timeout
    ) as session:
        probe = asyncio.create_task(probe_health(url, latencies, stop))
        started = time.perf_counter()
        per_job = max(1, args.watchers // args.uploads)
        outcomes = await asyncio.gather(
            *(upload_and_watch(session, content, n, per_job) for n in range(args.uploads))
        )
        seconds = time.perf_counter() - started
        stop.set()
        await probe
    return {
        "seconds": seconds,
        "latencies": latencies,
        "completed": sum(o["final"] == "completed" for o in outcomes),
        "states": sum(o["states"] for o in outcomes),
        "watchers": sum(o["watchers"] for o in outcomes),
        "sent_back": sum(o["sent_back"] for o in outcomes),
    }


async def probe_health(url: str, latencies: list[float], stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            started = time.perf_counter()
            async with session.get(f"{url}/healthz") as response:
                await response.read()
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)


async def upload_and_watch(session, content: bytes, n: int, watchers: int) -> dict:
    """Upload one file (retrying after the caps' Retry-After), then watch its job with
    `watchers` WebSockets until its final state."""
    sent_back = 0
    while True:
        form = aiohttp.FormData()
        form.add_field(
            "file", content, filename=f"load-{n}.jsonl", content_type="application/x-ndjson"
        )
        async with session.post("/api/v1/files/upload", data=form) as response:
            if response.status == 202:
                job = await response.json()
                break
            if response.status not in (429, 503) or "Retry-After" not in response.headers:
                raise SystemExit(f"upload {n}: HTTP {response.status}: {await response.text()}")
            sent_back += 1
            await asyncio.sleep(float(response.headers["Retry-After"]))
    results = await asyncio.gather(*(watch(session, job["job_id"]) for _ in range(watchers)))
    return {
        "final": results[0][1],
        "states": sum(r[0] for r in results),
        "watchers": watchers,
        "sent_back": sent_back,
    }


async def watch(session, job_id: str) -> tuple[int, str]:
    states, last = 0, "?"
    async with session.ws_connect(f"/ws/jobs/{job_id}") as ws:
        async for message in ws:
            states += 1
            last = json.loads(message.data)["status"]
    return states, last


def report(args, result: dict, rss_before, rss_peak, rss_after) -> None:
    lat = sorted(result["latencies"])
    p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: 0)
    print(
        f"uploads    {args.uploads} x {args.lines:,} lines, {result['completed']} completed "
        f"in {result['seconds']:.1f} s; {result['sent_back']} sent back by the upload caps"
    )
    print(f"watchers   {result['watchers']:,} WebSockets, {result['states']:,} states received")
    print(
        f"/healthz   {len(lat):,} probes: p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, "
        f"max {lat[-1] * 1000 if lat else 0:.1f} ms"
        + (f", mean {statistics.mean(lat) * 1000:.1f} ms" if lat else "")
    )

    def mib(kib):
        return "?" if kib is None else f"{kib / 1024:.0f} MiB"

    print(f"API RSS    before {mib(rss_before)}, peak {mib(rss_peak)}, after {mib(rss_after)}")


if __name__ == "__main__":
    raise SystemExit(main())
