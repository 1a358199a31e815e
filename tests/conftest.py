"""Fixtures over the real services: Postgres, RabbitMQ, an S3 server (SeaweedFS) and a
ClickHouse server (scripts/clickhouse-server, one per test session, on a free port).

Every test gets its own database (cloned from a migrated template), its own RabbitMQ queue,
its own S3 bucket and its own ClickHouse database, so tests and runs never see each other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
import pika
import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
# The tests run on the development default credentials (production refuses them).
os.environ.setdefault("EH_ENVIRONMENT", "development")

import auth  # noqa: E402
import core  # noqa: E402
import stack  # noqa: E402  (scripts/stack.py: the weed launch scripts/dev uses too)

ADMIN_DSN = core.Settings.from_env().test_admin_dsn
ROOT = Path(__file__).resolve().parent.parent


# No test may hang the suite: each gets at most this long (pytest-timeout, by SIGALRM, so the
# test's own teardown still stops the processes it started), unless it says otherwise with
# @pytest.mark.timeout or the run does with --timeout.
TEST_TIMEOUT_S = 600


# The fixtures that reach a service; every fixture that needs one (db, settings, make_token,
# start_process, …) depends on one of these, so a test's closure of fixtures says it all.
SERVICE_FIXTURES = frozenset({"template_database", "amqp_queue", "s3_server", "clickhouse_server"})


def pytest_configure(config):
    config.addinivalue_line("markers", "services: needs Postgres, RabbitMQ, S3 or ClickHouse "
                            "(set from the fixtures a test uses)")
    config.addinivalue_line("markers", "hostile: attacks on a live API, judged by the CPU "
                            "time its event loop's callbacks take (tests/test_hostile.py)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)  # `-m "not services"`: the fast tier
    if config.getoption("timeout", None) is None and "PYTEST_TIMEOUT" not in os.environ:
        for item in items:
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S, method="signal"))


def _with_database(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def _base_settings() -> core.Settings:
    """What the environment says, with the local stack's defaults for the rest."""
    return dataclasses.replace(core.Settings.from_env(), log_format="console")


# --------------------------------------------------------------------------- S3


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """An S3 endpoint URL: S3_ENDPOINT_URL if the environment sets it (it must answer), else
    a `weed mini` of the session's own on free ports (scripts/stack.py's weed_command, as
    scripts/dev starts it), stopped at the end. Never whatever happens to answer on :8333:
    another checkout's weed there may go away mid-run."""
    settings = _base_settings()
    if "S3_ENDPOINT_URL" in os.environ:
        if stack.wait_s3(settings, None, timeout=20) != 0:
            pytest.exit(f"S3_ENDPOINT_URL={settings.s3_endpoint_url} does not answer", returncode=3)
        yield settings.s3_endpoint_url
        return
    data_dir = tmp_path_factory.mktemp("weed")
    [s3_port] = stack.free_port_pairs(1)
    endpoint = f"http://127.0.0.1:{s3_port}"
    try:
        command = stack.weed_command(data_dir, s3_port)
    except FileNotFoundError as exc:
        pytest.exit(str(exc), returncode=3)
    with (data_dir / "weed.log").open("wb") as log:
        proc = subprocess.Popen(command, env=stack.weed_env(settings), stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        ready = stack.wait_s3(dataclasses.replace(settings, s3_endpoint_url=endpoint),
                              proc.pid, timeout=60)
        if ready != 0:
            pytest.exit(f"weed mini did not start; see {data_dir / 'weed.log'}", returncode=3)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket, emptied and removed after the test."""
    client = core.s3_client(dataclasses.replace(_base_settings(), s3_endpoint_url=s3_server))
    name = f"eh-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    yield name
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    uploads = client.list_multipart_uploads(Bucket=name).get("Uploads", [])
    for up in uploads:
        client.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
    client.delete_bucket(Bucket=name)


# --------------------------------------------------------------------------- Postgres


@pytest.fixture(scope="session")
def template_database():
    """A database with every migration applied, cloned by each test."""
    name = f"eh_test_template_{os.getpid()}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(ADMIN_DSN, name)
    core.migrate(url)
    yield name
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(template_database):
    """A fresh, migrated database for one test, dropped afterwards."""
    name = f"eh_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield _with_database(ADMIN_DSN, name)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(database_url):
    """A plain autocommit connection to the test's database, rows as dicts."""
    with psycopg.connect(database_url, autocommit=True,
                         row_factory=psycopg.rows.dict_row) as conn:
        yield conn


# --------------------------------------------------------------------------- ClickHouse


class ClickHouseServer:
    """A scripts/clickhouse-server process on a free port, with one admin user, `eh_test`,
    who makes a database per test. start() and stop() may be called again: its data stays."""

    USER = "eh_test"

    def __init__(self, directory: Path):
        self.directory, self.port = directory, _free_port()
        self.password = secrets.token_hex(12)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        log_path = self.directory.with_name(f"{self.directory.name}-{self.starts}.log")
        with log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "scripts" / "clickhouse-server"),
                 "--dir", str(self.directory), "--port", str(self.port),
                 "--database", "eh_test", "--user", f"{self.USER}:admin"],
                env={**os.environ, "LOG_FORMAT": "json",
                     f"CLICKHOUSE_PASSWORD_{self.USER.upper()}": self.password},
                cwd=self.directory.parent, stdout=log_file, stderr=subprocess.STDOUT)
        self.proc.log_path = log_path
        wait_for(lambda: logged_events(self.proc, "clickhouse.listening") or self.proc.poll(),
                 timeout=timeout, what="the ClickHouse server to listen")
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


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory):
    server = ClickHouseServer(tmp_path_factory.mktemp("clickhouse") / "server")
    server.start()
    yield server
    assert server.stop() == 0, server.proc.log_path.read_text()[-3000:]


@pytest.fixture
def clickhouse_url(clickhouse_server):
    """A database of this test's own on the session's ClickHouse server, dropped afterwards."""
    name = f"eh_{uuid.uuid4().hex[:12]}"
    with clickhouse_server.client() as admin:
        admin.command("CREATE DATABASE {db:Identifier}", parameters={"db": name})
    yield clickhouse_server.url(name)
    with clickhouse_server.client() as admin:
        admin.command("DROP DATABASE IF EXISTS {db:Identifier} SYNC", parameters={"db": name})


# --------------------------------------------------------------------------- RabbitMQ


@pytest.fixture
def amqp_queue():
    """A unique queue name; the queue (and its dead-letter and retry queues) are deleted
    afterwards."""
    name = f"eh.test.{uuid.uuid4().hex[:12]}"
    yield name
    delete_queues(_base_settings().amqp_url, name)


def delete_queues(amqp_url: str, queue: str) -> None:
    """Delete a job queue and the dead-letter and retry queues declared with it."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        for name in (queue, core.dead_letter_queue(queue), core.retry_queue(queue)):
            channel.queue_delete(queue=name)
    finally:
        conn.close()


# --------------------------------------------------------------------------- all together


@pytest.fixture
def settings(database_url, amqp_queue, s3_server, s3_bucket, clickhouse_url) -> core.Settings:
    """Settings pointing at this test's own database, queue, bucket and ClickHouse database."""
    return dataclasses.replace(
        _base_settings(),
        database_url=database_url,
        queue=amqp_queue,
        s3_endpoint_url=s3_server,
        s3_bucket=s3_bucket,
        clickhouse_url=clickhouse_url,
        http_port=_free_port(),
        # Off unless a test asks for them (on free ports): the defaults would collide with a
        # running stack's, and with the other workers and relays a test starts.
        worker_metrics_port=0,
        relay_metrics_port=0,
    )


def settings_env(settings: core.Settings) -> dict[str, str]:
    """The environment that gives a subprocess (worker.py, relay.py, …) these settings, its
    logs as JSON lines (see logged_events)."""
    return {**os.environ, **settings.to_env(), "LOG_FORMAT": "json"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- access


@pytest.fixture
def make_token(database_url):
    """Create an API token in this test's database: make_token("alice"), or an admin's."""

    def make(owner: str = "tester", *, admin: bool = False) -> str:
        with psycopg.connect(database_url, autocommit=True) as conn:
            return auth.create_token(conn, owner, admin=admin)

    return make


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def in_ci() -> bool:
    """CI=true (as `.ci/run` sets): a test missing a system tool it needs fails, not skips."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


# --------------------------------------------------------------------------- processes


CRASH_HOOKS = ("EH_WORKER_CRASH_AT", "EH_RELAY_CRASH_AFTER_INSERT")


class ChildProcess(subprocess.Popen):
    """A process started by start_process, which remembers the signals the test sent it, so
    that teardown can tell a kill the test meant from a crash."""

    def __init__(self, *args, crash_hook: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.crash_hook = crash_hook  # started to SIGKILL itself (EH_*_CRASH_*)
        self.signals_sent: list[int] = []

    def send_signal(self, sig: int) -> None:  # kill() and terminate() come through here
        self.signals_sent.append(sig)
        super().send_signal(sig)

    @property
    def killed_on_purpose(self) -> bool:
        return self.crash_hook or signal.SIGKILL in self.signals_sent


@pytest.fixture
def start_process(settings, tmp_path):
    """Start `python <script>` with this test's settings, its output (JSON log lines) going to
    a file whose path is the process's `log_path`. At the end of the test, everything still
    running is stopped with SIGTERM and must exit 0 within 10 s; and every process must have
    exited 0, but those the test SIGKILLed or started with a crash hook: a worker or relay that
    died by itself mid-test fails the test even though another took over its work. A file, not
    a pipe: a pipe nobody reads fills up and blocks the process."""
    procs = []

    def start(script: str, **env_overrides: str) -> ChildProcess:
        env = {**settings_env(settings), **env_overrides}
        log_path = tmp_path / f"{Path(script).stem}-{len(procs) + 1}.log"
        crash_hook = any(env_overrides.get(name, "") not in ("", "0") for name in CRASH_HOOKS)
        with log_path.open("wb") as log_file:
            proc = ChildProcess([sys.executable, str(ROOT / script)], env=env, cwd=ROOT,
                               stdout=log_file, stderr=subprocess.STDOUT, crash_hook=crash_hook)
        proc.log_path = log_path
        procs.append(proc)
        return proc

    yield start
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        proc.terminate()
    unclean = []
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        expected = (0, -signal.SIGKILL) if proc.killed_on_purpose and proc not in running else (0,)
        if proc.returncode not in expected:
            how = "on SIGTERM at teardown" if proc in running else "by itself during the test"
            unclean.append((proc.log_path.name, proc.returncode, how,
                            proc.log_path.read_text()[-3000:]))
    assert not unclean, f"processes did not exit cleanly: {unclean}"


FIXED_SEED_IN_CI = 20261130


def _seed(*, fixed_in_ci: bool) -> int:
    chosen = _base_settings().test_seed or (
        FIXED_SEED_IN_CI if fixed_in_ci and in_ci() else random.SystemRandom().randrange(1, 2**32))
    print(f"random choices seeded: EH_TEST_SEED={chosen}")
    return chosen


@pytest.fixture
def seed() -> int:
    """A seed for the test's random choices: EH_TEST_SEED, else a new one each run. It is
    printed, so a failing test's captured output says how to make the same choices again."""
    return _seed(fixed_in_ci=False)


@pytest.fixture
def fuzz_seed() -> int:
    """As `seed`, but the same every run in CI (a fuzz test's failure there is then the
    change's, not a new case's); local runs explore new cases."""
    return _seed(fixed_in_ci=True)


@pytest.fixture
def rng(seed) -> random.Random:
    """The test's random choices (which worker to kill, at what line), replayable (`seed`)."""
    return random.Random(seed)


def logged_events(proc, event: str) -> list[dict]:
    """The JSON log lines a process started by start_process wrote with this event name."""
    found = []
    for line in proc.log_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("event") == event:
            found.append(entry)
    return found


def outbox_status(db) -> dict:
    """What GET /api/v1/stats says of the outbox: {backlog, oldest_age_s, dead}."""
    return core.outbox_status_json(db.execute(core.QUERIES["outbox_status"]).fetchone())


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def wait_until(predicate, timeout: float = 30.0, what: str = "condition"):
    """wait_for in a thread, so the event loop (and a server on it) keeps running."""
    return await asyncio.to_thread(wait_for, predicate, timeout=timeout, what=what)


# --------------------------------------------------------------------------- content and rows


def jsonl(*objs) -> bytes:
    """A file of JSON lines, one per object."""
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def job_row(db, job_id) -> dict:
    return db.execute("SELECT * FROM jobs WHERE job_id = %s", (job_id,)).fetchone()


# --------------------------------------------------------------------------- the API as a process


def serve_api(settings: core.Settings, start_process, **env: str):
    """Start `python eventhorizon.py` (the real server, its own event loop) on the test's
    port; (its URL, its process) once it answers /healthz. An API that exits fails the test."""
    proc = start_process("eventhorizon.py", **env)
    url = f"http://127.0.0.1:{settings.http_port}"

    def answers() -> bool:
        assert proc.poll() is None, proc.log_path.read_text(errors="replace")[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    wait_for(answers, timeout=30, what="eventhorizon.py to answer /healthz")
    return url, proc


@pytest.fixture
def api_url(settings, start_process) -> str:
    """The API served by `python eventhorizon.py` on the test's port, once it answers."""
    url, _proc = serve_api(settings, start_process)
    return url


# --------------------------------------------------------------------------- a faulty network


class TcpProxy:
    """127.0.0.1:`port` forwarding to `target` (host, port), with the faults a test switches
    on while it runs: `hang()`: what clients send from then on is swallowed and never answered,
    the connections left open (a server stuck mid-request); `cut_requests_over(n)`: a
    connection that has carried more than n bytes upstream is reset (a server dying mid-body;
    small requests still pass); `down()` / `up()`: every connection reset, new ones too."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.hanging = threading.Event()
        self.swallowed = threading.Event()  # something sent while hanging: a request is stuck
        self.is_down = False
        self.cut_over: int | None = None
        self.cuts = 0
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def hang(self) -> None:
        self.hanging.set()

    def cut_requests_over(self, n: int) -> None:
        self.cut_over = n

    def down(self) -> None:
        self.is_down = True
        with self._lock:
            for sock in list(self._sockets):
                _reset(sock)

    def up(self) -> None:
        self.is_down = False

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            for sock in list(self._sockets):
                _reset(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if self.is_down:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            sent = [0]  # bytes this connection carried upstream
            threading.Thread(target=self._pump, args=(client, upstream, sent), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, sent: list[int] | None) -> None:
        try:
            while data := source.recv(65536):
                if sent is not None and self.hanging.is_set():
                    self.swallowed.set()
                    continue
                if sent is not None:
                    sent[0] += len(data)
                    if self.cut_over is not None and sent[0] > self.cut_over:
                        self.cuts += 1
                        break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            _reset(sock)
        with self._lock:
            self._sockets -= {source, sink}


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a server that died would look; the shutdown
    wakes a thread blocked reading it (a close alone would not)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture
def tcp_proxy():
    """make(target) -> a TcpProxy to `target` (host, port); all closed after the test."""
    proxies = []

    def make(target: tuple[str, int]) -> TcpProxy:
        proxies.append(TcpProxy(target))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()
