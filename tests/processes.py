"""The service's processes and servers as a test starts them, and their logs: the environment
that gives a process its settings, a free port, a process's JSON log lines, `python
eventhorizon.py` listening and answering, a relay connected to ClickHouse, a ClickHouse server
of the test's own. The start_process fixture (conftest.py) starts the processes; other plain
helpers are in helpers.py."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import clickhouse_connect

import config
from helpers import ROOT, wait_for


def settings_env(settings: config.Settings) -> dict[str, str]:
    """The environment that gives a subprocess (worker.py, relay.py, …) these settings, its
    logs as JSON lines (see logged_events)."""
    return {**os.environ, **settings.to_env(), "LOG_FORMAT": "json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logged_events(proc, event: str) -> list[dict]:
    """The JSON log lines a process started by start_process wrote with this event name."""
    return [entry for entry in log_lines(proc.log_path) if entry.get("event") == event]


def log_lines(path: Path) -> list[dict]:
    """The JSON lines of a log file (anything else in it skipped)."""
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return lines


def serve_api(start_process, *, port: int = 0, **env: str):
    """Start `python eventhorizon.py` (the real server, its own event loop) on `port` (0: one
    the system chooses, so no other test's server can be on it); (its URL, its process) once
    it listens and answers /healthz (the process's `port` is the one it bound). An API that
    exits fails the test."""
    proc = start_process("eventhorizon.py", EH_HTTP_PORT=str(port), **env)

    def listening() -> list[dict]:
        assert proc.poll() is None, proc.log_path.read_text(errors="replace")[-3000:]
        return logged_events(proc, "api.listening")

    proc.port = wait_for(listening, timeout=30, what="the API listening")[0]["port"]
    url = f"http://127.0.0.1:{proc.port}"

    def answers() -> bool:
        assert proc.poll() is None, proc.log_path.read_text(errors="replace")[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    wait_for(answers, timeout=30, what="eventhorizon.py to answer /healthz")
    return url, proc


def start_ready_relay(start_process, **env: str):
    """The relay, once it has made event_log: a page that reads events before then is answered
    503 (no event has reached ClickHouse yet) and its browser logs that as an error."""
    proc = start_process("relay.py", **env)
    wait_for(
        lambda: logged_events(proc, "relay.clickhouse_connected"),
        60,
        what="the relay connected to ClickHouse",
    )
    return proc


class ClickHouseServer:
    """A scripts/clickhouse-server process on a free port, with one admin user, `eh_test`,
    who makes a database per test. start() and stop() may be called again: its data stays."""

    USER = "eh_test"

    def __init__(self, directory: Path):
        self.directory, self.port = directory, free_port()
        self.password = secrets.token_hex(12)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        log_path = self.directory.with_name(f"{self.directory.name}-{self.starts}.log")
        with log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "scripts" / "clickhouse-server"),
                    "--dir",
                    str(self.directory),
                    "--port",
                    str(self.port),
                    "--database",
                    "eh_test",
                    "--user",
                    f"{self.USER}:admin",
                ],
                env={
                    **os.environ,
                    "LOG_FORMAT": "json",
                    f"CLICKHOUSE_PASSWORD_{self.USER.upper()}": self.password,
                },
                cwd=self.directory.parent,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self.proc.log_path = log_path
        wait_for(
            lambda: logged_events(self.proc, "clickhouse.listening") or self.proc.poll(),
            timeout=timeout,
            what="the ClickHouse server to listen",
        )
        assert self.proc.poll() is None, log_path.read_text()[-3000:]

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the ClickHouse server did not stop within 30 s") from None

    def url(self, database: str) -> str:
        return f"http://{self.USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def client(self, database: str = "default"):
        return clickhouse_connect.get_client(dsn=self.url(database))

    def command(self, sql: str, **params: str) -> None:
        """One statement as the admin, its `{name:Type}` parameters bound, over plain HTTP: a
        clickhouse-connect client first reads the server's ~1,000 settings (about 10 ms of CPU
        here and 10 in the server), twice a test for nothing else."""
        query = urlencode({"query": sql, **{f"param_{k}": v for k, v in params.items()}})
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/?{query}",
            data=b"",
            headers={"X-ClickHouse-User": self.USER, "X-ClickHouse-Key": self.password},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
