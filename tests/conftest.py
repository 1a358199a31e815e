"""Fixtures over the real services: Postgres, RabbitMQ, an S3 server (SeaweedFS) and a
ClickHouse server (scripts/clickhouse-server, one per test session, on a free port).

Every test gets its own database (a migrated one, emptied between tests: tests/databases.py),
its own RabbitMQ queue, its own S3 bucket and its own ClickHouse database, so tests and runs
never see each other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import psycopg
import pytest
from playwright.sync_api import Page, expect, sync_playwright

# The modules come from the source tree: pyproject's `pythonpath` puts the repository and
# scripts/ (stack.py) first on sys.path; nothing of the project is installed.
# The tests run on the development default credentials (production refuses them).
os.environ.setdefault("EH_ENVIRONMENT", "development")

import auth  # noqa: E402
import config  # noqa: E402
import core  # noqa: E402
import eventhorizon  # noqa: E402
import stack  # noqa: E402  (scripts/stack.py: the weed launch scripts/dev uses too)
from databases import DatabasePool, with_database  # noqa: E402
from forkserver import ForkedProcess, ForkServer  # noqa: E402
from helpers import ROOT, bearer, delete_queues, in_ci, wait_for  # noqa: E402
from network import TcpProxy  # noqa: E402
from pages import CHROMIUM, CHROMIUM_ARGS, REPORT_CSP_VIOLATIONS  # noqa: E402
from processes import ClickHouseServer, free_port, serve_api, settings_env  # noqa: E402

ADMIN_DSN = config.Settings.from_env().test_admin_dsn


# No test may hang the suite: each gets at most this long (pytest-timeout, by SIGALRM, so the
# test's own teardown still stops the processes it started), unless it says otherwise with
# @pytest.mark.timeout or the run does with --timeout.
TEST_TIMEOUT_S = 600


# The fixtures that reach a service; every fixture that needs one (db, settings, make_token,
# start_process, …) depends on one of these, so a test's closure of fixtures says it all.
SERVICE_FIXTURES = frozenset({"template_database", "amqp_queue", "s3_server", "clickhouse_server"})


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "services: needs Postgres, RabbitMQ, S3 or ClickHouse (set from the fixtures a test uses)",
    )
    config.addinivalue_line(
        "markers",
        "hostile: attacks on a live API, judged by the CPU "
        "time its event loop's callbacks take (tests/test_hostile.py)",
    )


# The longest tests (each 15 s or more on this 2-core machine; see the `--durations` that
# every run prints), run first: in parallel (pytest-xdist hands the workers tests in this
# order) a long test started last would hold the whole run up on its own at the end.
LONGEST_FIRST = (
    "test_rows_too_wide_for_one_insert_are_split_and_never_block_the_others",
    "test_fuzz_every_operation",
    "test_fuzz_uploads_of_generated_contents",
    "test_salvage_gives_up_no_good_event_however_many_bad_ones",
    "test_a_flood_of_ten_thousand_refusals_leaves_a_bounded_trail",
    "test_audited_actions_are_kept_across_an_api_sigkill_right_after_each_commit",
    "test_search_across_two_uploads_filters_opens_rows_keeps_its_url_and_exports",
    "test_the_clickhouse_server_killed_mid_stream_loses_and_doubles_nothing",
    "test_three_relays_killed_at_random_deliver_every_event_once",
    "test_workers_sigkilled_mid_job_leave_every_valid_line_in_clickhouse_once",
    "test_worker_sigkilled_mid_batch_after_commits_and_before_its_ack_loses_and_doubles_nothing",
    "test_the_job_card_follows_the_job_across_an_api_restart",
    "test_a_deleted_job_leaves_postgres_s3_and_clickhouse",
    "test_two_relays_in_one_process_on_chdb_deliver_each_event_once",
    "test_worker_reconnects_after_the_broker_drops_its_connection",
    "test_uploads_and_jobs_go_on_while_clickhouse_is_down_and_reach_it_once_after",
    "test_workers_side_by_side_killed_at_random_store_every_line_of_every_job_once",
    "test_worker_survives_its_postgres_connections_being_terminated",
    "test_a_job_that_crashes_its_worker_every_time_fails_after_max_attempts",
    "test_the_tokens_command_prints_a_token_once",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.originalname, len(rank)))  # stable: else as found
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)  # `-m "not services"`: the fast tier
    if config.getoption("timeout", None) is None and "PYTEST_TIMEOUT" not in os.environ:
        for item in items:
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S, method="signal"))


@pytest.hookimpl(hookwrapper=True)
def pytest_timeout_set_timer(item, settings):
    """A test past its timeout has its asyncio tasks' stacks printed too, before pytest-timeout
    fails it (its own dump shows the threads, where a hung coroutine is only `select`)."""
    yield
    timeout_handler = signal.getsignal(signal.SIGALRM)
    if callable(timeout_handler):

        def handler(signum, frame):
            print_asyncio_tasks()
            timeout_handler(signum, frame)

        signal.signal(signal.SIGALRM, handler)


def print_asyncio_tasks() -> None:
    loop = asyncio._get_running_loop()  # the loop the test (or its fixture) is running, if any
    if loop is None:
        return
    for task in asyncio.all_tasks(loop):
        print(f"~~~ asyncio task {task.get_name()}: {task.get_coro()!r}", file=sys.stderr)
        task.print_stack(file=sys.stderr)


def _base_settings() -> config.Settings:
    """What the environment says, with the local stack's defaults for the rest."""
    return dataclasses.replace(config.Settings.from_env(), log_format="console")


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
    for attempt in range(1, WEED_STARTS + 1):
        data_dir = tmp_path_factory.mktemp("weed")
        proc, endpoint = _start_weed(settings, data_dir)
        if stack.wait_s3(
            dataclasses.replace(settings, s3_endpoint_url=endpoint), proc.pid, timeout=60
        ) == 0 and _weed_serves(proc, data_dir, endpoint):
            break
        _stop_weed(proc)
        log_tail = (data_dir / "weed.log").read_text(errors="replace")[-1000:]
        if attempt == WEED_STARTS:
            pytest.exit(f"weed mini did not start; see {data_dir / 'weed.log'}", returncode=3)
        print(
            f"weed mini did not start (attempt {attempt}), trying other ports: {log_tail}",
            file=sys.stderr,
        )
    try:
        yield endpoint
    finally:
        _stop_weed(proc)


# A port the check found free may be taken by another worker's weed before ours binds it
# (they start at the same moment): weed then exits, and a start on other ports succeeds.
WEED_STARTS = 3


def _start_weed(settings: config.Settings, data_dir: Path) -> tuple[subprocess.Popen, str]:
    [s3_port] = stack.free_port_pairs(1)
    try:
        command = stack.weed_command(data_dir, s3_port)
    except FileNotFoundError as exc:
        pytest.exit(str(exc), returncode=3)
    with (data_dir / "weed.log").open("wb") as log:
        proc = subprocess.Popen(
            command, env=stack.weed_env(settings), stdout=log, stderr=subprocess.STDOUT
        )
    return proc, f"http://127.0.0.1:{s3_port}"


def _weed_serves(proc: subprocess.Popen, data_dir: Path, endpoint: str) -> bool:
    """Our weed says it serves S3 on `endpoint`: the answer wait_s3 had may have come from
    another worker's weed on a port ours then failed to take (same credentials)."""

    def said_or_exited() -> bool:
        log = (data_dir / "weed.log").read_text(errors="replace")
        return (
            proc.poll() is not None
            or re.search(rf"S3 Endpoint:\s+{re.escape(endpoint)}\s", log) is not None
        )

    wait_for(said_or_exited, timeout=60, what="weed mini to say it serves S3")
    return proc.poll() is None


def _stop_weed(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def s3_admin(s3_server):
    """The session's S3 client for making and removing buckets (a boto3 client costs some
    20 ms of CPU to make)."""
    return core.s3_client(dataclasses.replace(_base_settings(), s3_endpoint_url=s3_server))


@pytest.fixture
def s3_bucket(s3_admin):
    """A fresh bucket, emptied and removed after the test."""
    client = s3_admin
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
    url = with_database(ADMIN_DSN, name)
    core.migrate(url)
    yield name
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_pool(template_database):
    pool = DatabasePool(ADMIN_DSN, template_database)
    yield pool
    pool.close()


@pytest.fixture
def database_url(database_pool):
    """A migrated database of this test's own, as the template is (tests/databases.py)."""
    name = database_pool.take()
    yield with_database(ADMIN_DSN, name)
    database_pool.give_back(name)


@pytest.fixture
def db(database_url):
    """A plain autocommit connection to the test's database, rows as dicts."""
    with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        yield conn


# --------------------------------------------------------------------------- ClickHouse


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
    clickhouse_server.command("CREATE DATABASE {db:Identifier}", db=name)
    yield clickhouse_server.url(name)
    clickhouse_server.command("DROP DATABASE IF EXISTS {db:Identifier} SYNC", db=name)


# --------------------------------------------------------------------------- RabbitMQ


@pytest.fixture
def amqp_queue():
    """A unique queue name; the queue (and its dead-letter and retry queues) are deleted
    afterwards."""
    name = f"eh.test.{uuid.uuid4().hex[:12]}"
    yield name
    delete_queues(_base_settings().amqp_url, name)


@pytest.fixture
def relay_settings(database_url, clickhouse_url) -> config.Settings:
    """Settings for this test's database and ClickHouse database; batches go out at once."""
    return dataclasses.replace(
        config.Settings.from_env({"EH_ENVIRONMENT": "development"}),
        database_url=database_url,
        clickhouse_url=clickhouse_url,
        relay_batch_max_rows=100,
        relay_batch_max_wait_s=0.0,
        relay_poll_s=0.5,
        log_format="json",
        relay_metrics_port=0,  # the default port would collide with any other relay's
    )


# --------------------------------------------------------------------------- all together


@pytest.fixture
def settings(database_url, amqp_queue, s3_server, s3_bucket, clickhouse_url) -> config.Settings:
    """Settings pointing at this test's own database, queue, bucket and ClickHouse database."""
    return dataclasses.replace(
        _base_settings(),
        database_url=database_url,
        queue=amqp_queue,
        s3_endpoint_url=s3_server,
        s3_bucket=s3_bucket,
        clickhouse_url=clickhouse_url,
        http_port=free_port(),
        # Off unless a test asks for them (on free ports): the defaults would collide with a
        # running stack's, and with the other workers and relays a test starts.
        worker_metrics_port=0,
        relay_metrics_port=0,
    )


# --------------------------------------------------------------------------- access


@pytest.fixture
def make_token(database_url):
    """Create an API token in this test's database: make_token("alice"), or an admin's."""

    def make(owner: str = "tester", *, admin: bool = False) -> str:
        with psycopg.connect(database_url, autocommit=True) as conn:
            return auth.create_token(conn, owner, admin=admin)

    return make


# -------------------------------------------------------------------- the API in the test's process


@pytest.fixture
async def client(settings, aiohttp_client, make_token):
    """The API, as owner "tester" (whose token every request carries)."""
    # `settings` comes first so the app is torn down before its database is dropped.
    return await aiohttp_client(eventhorizon.init_app(settings), headers=bearer(make_token()))


@pytest.fixture
async def admin_client(settings, aiohttp_client, make_token):
    return await aiohttp_client(
        eventhorizon.init_app(settings), headers=bearer(make_token("root", admin=True))
    )


@pytest.fixture
async def two_owners(settings, aiohttp_client, make_token):
    """Alice's and Bob's clients, and an admin's, on one API."""
    app = eventhorizon.init_app(settings)
    alice = await aiohttp_client(app, headers=bearer(make_token("alice")))
    server = alice.server
    bob = aiohttp.ClientSession(base_url=server.make_url("/"), headers=bearer(make_token("bob")))
    root = aiohttp.ClientSession(
        base_url=server.make_url("/"), headers=bearer(make_token("root", admin=True))
    )
    yield alice, bob, root
    await bob.close()
    await root.close()


# --------------------------------------------------------------------------- processes


CRASH_HOOKS = ("EH_WORKER_CRASH_AT", "EH_RELAY_CRASH_AFTER_INSERT")


class ChildProcess(ForkedProcess):
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


@pytest.fixture(scope="session")
def fork_server(tmp_path_factory):
    """Forks the service processes of the session's tests (tests/forkserver.py)."""
    server = ForkServer(tmp_path_factory.mktemp("forkserver"))
    server.start({**os.environ, "LOG_FORMAT": "json"})
    yield server
    server.stop()


@pytest.fixture
def run_script(fork_server, tmp_path):
    """run_script("eventhorizon.py", "tokens", "list", env=…, input=None, timeout=60): as
    subprocess.run of `python <script> args` with the output captured as text, forked by
    the session's fork server."""

    def run(
        script: str, *args: str, env: dict[str, str], input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        return fork_server.run(
            [str(ROOT / script), *args], env, tmp_path, input=input, timeout=timeout
        )

    return run


@pytest.fixture
def start_process(settings, tmp_path, fork_server):
    """Start `python <script>` with this test's settings (forked by the session's fork server,
    which has the services' modules imported already), its output (JSON log lines) going to
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
        proc = ChildProcess(
            fork_server.path, [str(ROOT / script)], env, ROOT, log_path, crash_hook=crash_hook
        )
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
            unclean.append(
                (proc.log_path.name, proc.returncode, how, proc.log_path.read_text()[-3000:])
            )
    assert not unclean, f"processes did not exit cleanly: {unclean}"


FIXED_SEED_IN_CI = 20261130


def _seed(*, fixed_in_ci: bool) -> int:
    chosen = _base_settings().test_seed or (
        FIXED_SEED_IN_CI if fixed_in_ci and in_ci() else random.SystemRandom().randrange(1, 2**32)
    )
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


# --------------------------------------------------------------------------- content and rows


# --------------------------------------------------------------------------- the API as a process


@pytest.fixture
def api_url(settings, start_process) -> str:
    """The API served by `python eventhorizon.py` on the test's port, once it answers. The
    pages it serves fail their test on any console error, a 503 included: its ClickHouse
    reads may take 30 s (EH_EXPLORE_TIMEOUT_S, 5 s by default), so a machine busy with the
    rest of the suite does not turn a slow histogram into a failed test."""
    url, _proc = serve_api(start_process, EH_EXPLORE_TIMEOUT_S="30")
    return url


# --------------------------------------------------------------------------- a faulty network


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


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found: apt-get install chromium (Debian's package)"
        if in_ci():
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def console_errors() -> list[str]:
    """The page's uncaught exceptions and console errors; a test removes those it expects."""
    return []


# What a page's expectations wait for, as its actions do (Playwright's own is 5 s): on a busy
# machine a view read from ClickHouse may take longer to draw. A wait, not a bound on time.
expect.set_options(timeout=15_000)


@pytest.fixture
def open_page(browser, console_errors, start_process):
    """Opens fresh pages, each in its own context (its own sessionStorage: another user); the
    test fails if any of them logs an error it did not expect. Set up after start_process, so
    the pages close before the API they talk to stops (else they log its going away)."""
    contexts = []

    def open_() -> Page:
        # Reduced motion: the page then draws progress bars without a transition, so a
        # screenshot shows the final width.
        context = browser.new_context(
            viewport={"width": 900, "height": 900}, reduced_motion="reduce"
        )
        context.add_init_script(REPORT_CSP_VIOLATIONS)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("pageerror", lambda exc: console_errors.append(f"uncaught: {exc}"))
        page.on(
            "console",
            lambda msg: console_errors.append(f"{msg.text} ({msg.location.get('url')})")
            if msg.type == "error"
            else None,
        )
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not console_errors, console_errors


@pytest.fixture
def page(open_page) -> Page:
    return open_page()
