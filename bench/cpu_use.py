"""Where the CPU went over a job, for bench/ingest.py: the CPU seconds of each part of the
stack (read from /proc) and of the whole machine (/proc/stat) between marks, per valid line.

On two cores that share everything, a rate is bounded by the CPU a line costs all the parts
together: the machine's CPU per line sets a ceiling (cores / CPU per line) that no
scheduling beats, and CPU per line holds far steadier than a rate on a busy machine.

A part is known by its processes: the API, the worker and the relay by the script their Python runs;
Postgres (the server's processes, with what its exited backends spent, counted in the postmaster's
children's time), RabbitMQ (`beam.smp`), ClickHouse (`scripts/clickhouse-server`), the S3 server
(`weed`) and this benchmark itself (the upload, the polling, and the reference loop's processes).
`other` is the machine's busy time that none of them spent.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psycopg

TICKS = os.sysconf("SC_CLK_TCK")
SCRIPTS = {
    "eventhorizon.py": "api",
    "worker.py": "worker",
    "relay.py": "relay",
    "clickhouse-server": "clickhouse",
}
COMMANDS = {"postgres": "postgres", "beam.smp": "rabbitmq", "weed": "s3"}
PARTS = ("api", "worker", "relay", "postgres", "clickhouse", "rabbitmq", "s3", "bench", "other")
# Postgres's share, by whose connection a backend serves (its application_name,
# core.process_name). Not the worker's: its connection lasts one job and is gone by the next
# mark (its CPU is then the postmaster's children's), so it is in the rest.
CLIENTS = ("relay", "api")
BACKENDS = (
    "SELECT pid, substring(application_name FROM '^eventhorizon-(\\w+) pid') AS client "
    "FROM pg_stat_activity WHERE application_name LIKE 'eventhorizon-%'"
)


def mark(database_url: str | None = None) -> dict[str, float]:
    """CPU seconds spent so far by each part, and by the machine (`machine`); with a
    database, Postgres's also by the client its backends serve (`postgres for worker`, …)."""
    clients = postgres_clients(database_url) if database_url else {}
    spent = dict.fromkeys([*PARTS, *(f"postgres for {c}" for c in CLIENTS)], 0.0)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            part, seconds = process_cpu(pid)
            if part is not None:
                spent[part] += seconds
            if part == "postgres" and clients.get(pid) in CLIENTS:
                spent[f"postgres for {clients[pid]}"] += seconds
    spent["machine"] = machine_busy_seconds()
    return spent


def wait_for_quiet_clickhouse(timeout_s: float = 300) -> float:
    """Wait until the ClickHouse server is idle (under 4 % of a core for a second: done with
    the merges earlier inserts left it), so that a window's CPU is its own; returns the seconds
    waited."""
    started, quiet_since = time.monotonic(), None
    before = clickhouse_cpu()
    while time.monotonic() - started < timeout_s:
        time.sleep(0.5)
        now = clickhouse_cpu()
        if now - before < 0.02:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= 1:
                break
        else:
            quiet_since = None
        before = now
    return time.monotonic() - started


def clickhouse_cpu() -> float:
    pids = (int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit())
    return sum(s for part, s in map(process_cpu, pids) if part == "clickhouse")


def postgres_clients(database_url: str) -> dict[int, str]:
    """Backend pid -> the process of ours it serves (relay, api, worker)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        return dict(conn.execute(BACKENDS).fetchall())


def process_cpu(pid: int) -> tuple[str | None, float]:
    """(the part a process belongs to, its CPU seconds), or (None, 0) for none of ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # gone meanwhile
        return None, 0.0
    command = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    part = part_of(pid, int(fields[1]), command, args)
    if part is None:
        return None, 0.0
    seconds = utime + stime
    if pid == os.getpid():  # with the reference loop's processes, once they have exited
        seconds += cutime + cstime
    if part == "postgres" and parent_command(int(fields[1])) != "postgres":  # the postmaster:
        seconds += cutime + cstime  # with what its backends that exited spent
    return part, seconds / TICKS


def parent_command(ppid: int) -> str:
    try:
        return Path(f"/proc/{ppid}/comm").read_text().strip()
    except OSError:
        return ""


def part_of(pid: int, ppid: int, command: str, args: list[bytes]) -> str | None:
    if os.getpid() in (pid, ppid):  # the bench, and the reference loop's processes
        return "bench"
    if command in COMMANDS:
        return COMMANDS[command]
    names = [os.path.basename(a.decode(errors="replace")) for a in args[1:3] if a]
    return next((SCRIPTS[n] for n in names if n in SCRIPTS), None)


def machine_busy_seconds() -> float:
    """All CPUs' time not idle or waiting for I/O since boot (/proc/stat's first line)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = values[3], values[4]
    return (sum(values[:8]) - idle - iowait) / TICKS


def spent_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each part spent between two marks; `other`: the machine's rest."""
    spent = {part: after[part] - before[part] for part in PARTS if part != "other"}
    spent["other"] = max(0.0, after["machine"] - before["machine"] - sum(spent.values()))
    spent["machine"] = after["machine"] - before["machine"]
    for client in CLIENTS:
        key = f"postgres for {client}"
        spent[key] = after[key] - before[key]
    return spent


def report(label: str, spent: dict[str, float], valid: int, cores: int) -> float:
    """Print CPU µs per valid line by part over a window; returns the ceiling in valid
    lines/s that the machine's CPU per line sets on `cores` cores."""
    per_line = {part: seconds / valid * 1e6 for part, seconds in spent.items()}
    rest = per_line["postgres"] - sum(per_line[f"postgres for {c}"] for c in CLIENTS)
    clients = ", ".join(f"for the {c} {per_line[f'postgres for {c}']:.1f}" for c in CLIENTS)
    clients += f", the worker's and the server's {rest:.1f}"
    parts = ", ".join(
        f"{p} {per_line[p]:.1f}" + (f" ({clients})" if p == "postgres" else "")
        for p in PARTS
        if per_line[p] >= 0.05
    )
    ceiling = cores * 1e6 / per_line["machine"] if per_line["machine"] else 0.0
    print(f"CPU {label:<11} {per_line['machine']:6.1f} µs per valid line ({parts})")
    return ceiling
