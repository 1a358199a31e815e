"""Fault injection on the way to ClickHouse: workers SIGKILLed mid-job while a relay runs, relay
processes killed at random while sending a batch or cut off from Postgres, the ClickHouse
server killed mid-stream, down while files are uploaded and processed, or hung on an insert;
afterwards every event is in event_log exactly once."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import event_log
import eventhorizon
import outbox
from helpers import (
    VALID,
    assert_exactly_once,
    bearer,
    enqueue_job,
    job_row,
    jsonl,
    outbox_backlog,
    outbox_line_events,
    publish_events,
    publish_line_range,
    read_event_log_ids,
    upload,
    wait_for,
    wait_until,
)
from processes import ClickHouseServer, logged_events


def test_workers_sigkilled_mid_job_leave_every_valid_line_in_clickhouse_once(
    settings, db, start_process, rng
):
    """A relay runs throughout while a worker is SIGKILLed from outside at a random line, twice,
    each time a new one taking the job over, and a third finishes it. Then, in ClickHouse's
    event_log: every valid line of the file exactly once (count and distinct ids agree), under
    its own line number, with its own line's message and its deterministic event id; no event
    for an invalid line; one job.completed. Broken, this looks like: the rows of a batch the
    kill rolled back delivered anyway (a line twice, or a line the checkpoint did not count),
    a resumed job re-publishing lines it had published (doubled), or lines never published."""
    total = 3_000
    invalid = set(range(250, total + 1, 500))  # line numbers of lines that are not JSON
    raw = [
        b"not json\n" if n in invalid else jsonl(dict(VALID, message=f"line {n}"))
        for n in range(1, total + 1)
    ]
    job_id = enqueue_job(settings, db, b"".join(raw))
    start_process("relay.py", **RELAY_ENV)
    env = {"EH_BATCH_LINES": "100", "EH_LINE_DELAY_MAX_S": "0.0005", "EH_MAX_ATTEMPTS": "10"}
    for low, high in ((200, 1_200), (1_500, 2_700)):
        at = rng.randint(low, high)
        victim = start_process("worker.py", **env)
        wait_for(
            lambda at=at: job_row(db, job_id)["lines_processed"] >= at,
            timeout=120,
            what=f"line {at} processed",
        )
        victim.kill()
        assert victim.wait(timeout=10) == -signal.SIGKILL
        assert job_row(db, job_id)["status"] == "processing"
    start_process("worker.py", **env)
    wait_for(
        lambda: job_row(db, job_id)["status"] == "completed", timeout=120, what="the job completed"
    )
    wait_for(
        lambda: outbox_backlog(db) == 0
        and db.execute("SELECT count(*) AS n FROM outbox_batch").fetchone()["n"] == 0,
        timeout=60,
        what="the outbox drained",
    )

    with event_log.connect_clickhouse(settings.clickhouse_url) as ch:
        rows = ch.query(
            "SELECT line_no, toString(event_context.message), event_id FROM event_log "
            "WHERE job_id = {job:UUID} AND event_type NOT LIKE 'job.%'",
            parameters={"job": str(job_id)},
        ).result_rows
        completed = ch.query(
            "SELECT count() FROM event_log WHERE job_id = {job:UUID} "
            "AND event_type = 'job.completed'",
            parameters={"job": str(job_id)},
        ).result_rows
    valid = [n for n in range(1, total + 1) if n not in invalid]
    line_nos = sorted(row[0] for row in rows)
    assert len(line_nos) == len(set(line_nos)), "a line delivered twice"
    assert line_nos == valid, f"missing {sorted(set(valid) - set(line_nos))[:10]}"
    wrong = sorted(
        n
        for n, message, event_id in rows
        if message != f"line {n}" or event_id != outbox.line_event_id(job_id, n)
    )
    assert not wrong, f"lines with another line's message or event id: {wrong[:10]}"
    assert completed == [(1,)]


def test_relay_survives_its_postgres_connections_being_terminated(settings, db, start_process):
    published = []
    for _ in range(10):
        published += publish_events(settings.database_url, 500)
    proc = start_process(
        "relay.py", RELAY_BATCH_MAX_ROWS="100", RELAY_BATCH_MAX_WAIT_S="0", RELAY_POLL_S="0.5"
    )
    wait_for(lambda: outbox_backlog(db) <= 4_000, what="the relay under way")
    killed = db.execute(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchone()["n"]
    assert killed >= 1
    wait_for(lambda: outbox_backlog(db) == 0, timeout=60, what="the outbox drained")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0

    delivered = read_event_log_ids(settings)
    assert len(delivered) == len(published) == 5_000
    assert set(delivered) == set(published)


# --------------------------------------------------------------------------- relays and ClickHouse


class Producer:
    """Publishes events in small transactions on a thread, until stopped, by turns as
    per-event rows and as a line range of a job's entries (the worker's batches); `published`
    are their ids."""

    def __init__(self, database_url: str, batch: int = 40, pause_s: float = 0.02):
        self.database_url, self.batch, self.pause_s = database_url, batch, pause_s
        self.published: list = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join(30)
        assert not self.errors, self.errors

    def _run(self):
        try:
            while not self._stop.is_set():
                self.published += publish_events(self.database_url, self.batch)
                self.published += publish_line_range(self.database_url, self.batch)
                self._stop.wait(self.pause_s)
        except BaseException as exc:  # noqa: BLE001 - reported by __exit__
            self.errors.append(exc)


def assert_delivered_once(clickhouse_url: str, published: list) -> None:
    with event_log.connect_clickhouse(clickhouse_url) as ch:
        ids = [r[0] for r in ch.query("SELECT event_id FROM event_log").result_rows]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} events doubled"
    assert set(ids) == set(published), f"{len(set(published) - set(ids))} events missing"


def relay_lines(procs, event: str) -> list[dict]:
    return [line for proc in procs for line in logged_events(proc, event)]


RELAY_ENV = {"RELAY_BATCH_MAX_ROWS": "50", "RELAY_BATCH_MAX_WAIT_S": "0", "RELAY_POLL_S": "0.5"}


# A relay's statements inside the transaction that sends a recorded batch (relay.take_and_deliver):
# frozen after one of them, it holds a batch that a kill leaves unfinished, to be re-sent.
SENDING_A_BATCH = (
    "%SELECT batch_id, ids, token, attempts FROM outbox_batch%WHERE batch_id%",
    "%FROM outbox o%WHERE o.id = ANY%",
    "%DELETE FROM outbox WHERE id = ANY%",
    "%DELETE FROM outbox_batch WHERE batch_id%",
)


def kill_while_sending_a_batch(db, victim, rng, timeout: float = 60.0) -> None:
    """SIGKILL `victim` (a relay.py) at a moment it holds a recorded batch: it is frozen
    (SIGSTOP) at random moments until one of its connections is inside a batch's
    transaction (by its application_name), and killed there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        victim.send_signal(signal.SIGSTOP)
        sending = False
        try:
            sending = db.execute(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = %s AND state IN ('active', 'idle in transaction') "
                "AND query LIKE ANY(%s)",
                (f"eventhorizon-relay pid {victim.pid}", list(SENDING_A_BATCH)),
            ).fetchone()["n"]
        finally:
            victim.send_signal(signal.SIGKILL if sending else signal.SIGCONT)
        if sending:
            assert victim.wait(timeout=10) == -signal.SIGKILL
            return
        time.sleep(rng.uniform(0.0, 0.02))
    raise AssertionError(f"relay pid {victim.pid} was never caught sending a batch")


def test_three_relays_killed_at_random_deliver_every_event_once(settings, db, start_process, rng):
    """Three relay.py processes drain an outbox a producer keeps filling, into the ClickHouse
    server; five times, a random one is SIGKILLed at a random moment while it is sending a
    batch, and a new one started. Each batch a kill left is re-sent (logged `resent`), and
    every event is in event_log exactly once. Broken, it looks like: an event missing or
    doubled, a batch left in outbox_batch, or a killed relay's rows claimed afresh instead of
    re-sent as the batch ClickHouse may already hold."""

    relays = [start_process("relay.py", **RELAY_ENV) for _ in range(3)]
    started = list(relays)
    with Producer(settings.database_url) as producer:
        for _ in range(5):
            victim = relays.pop(rng.randrange(len(relays)))
            wait_for(
                lambda victim=victim: logged_events(victim, "relay.batch_sent"),
                what="the victim busy",
            )
            time.sleep(rng.uniform(0.0, 0.5))
            kill_while_sending_a_batch(db, victim, rng)
            relays.append(start_process("relay.py", **RELAY_ENV))
            started.append(relays[-1])
    wait_for(lambda: outbox_backlog(db) == 0, timeout=60, what="the outbox drained")
    wait_for(
        lambda: db.execute("SELECT count(*) AS n FROM outbox_batch").fetchone()["n"] == 0,
        what="no batch left unfinished",
    )

    assert len(producer.published) > 1_000
    assert_delivered_once(settings.clickhouse_url, producer.published)
    resent = [line for line in relay_lines(started, "relay.batch_sent") if line["resent"]]
    assert len(resent) >= 5, f"5 batches left by the kills, {len(resent)} re-sent"
    # SIGTERM is handled from `relay.started` on; the last one started may still be importing.
    wait_for(lambda: all(logged_events(r, "relay.started") for r in relays), what="relays up")


def test_the_clickhouse_server_killed_mid_stream_loses_and_doubles_nothing(
    settings, db, start_process, rng, tmp_path
):
    """A relay sends a producer's events to a ClickHouse server of the test's own, which is
    SIGKILLed at a random moment and restarted on its port and directory. The relay backs off
    while it is away, re-sends the batch it had in flight, and every event is in event_log
    exactly once."""

    server = ClickHouseServer(tmp_path / "clickhouse")
    server.start()
    try:
        with server.client() as admin:
            admin.command("CREATE DATABASE eh")
        url = server.url("eh")
        proc = start_process("relay.py", CLICKHOUSE_URL=url, **RELAY_ENV)
        with Producer(settings.database_url) as producer:
            wait_for(
                lambda: len(logged_events(proc, "relay.batch_sent")) >= 5,
                what="the relay under way",
            )
            time.sleep(rng.uniform(0.0, 0.5))
            server.stop(signal.SIGKILL)
            wait_for(
                lambda: len(logged_events(proc, "relay.clickhouse_unavailable")) >= 3,
                what="the relay backing off",
            )
            server.start()
            resent = lambda: [  # noqa: E731
                line for line in logged_events(proc, "relay.batch_sent") if line["resent"]
            ]
            wait_for(resent, timeout=60, what="the batch in flight re-sent")
        wait_for(lambda: outbox_backlog(db) == 0, timeout=60, what="the outbox drained")

        assert_delivered_once(url, producer.published)
        delays = [
            line["retry_in_s"] for line in logged_events(proc, "relay.clickhouse_unavailable")
        ]
        assert delays[2] > delays[0]  # backing off
        assert proc.poll() is None  # the same relay throughout
    finally:
        if server.proc.poll() is None:
            assert server.stop() == 0, server.proc.log_path.read_text()[-3000:]


# -------------------------------------------------------------------------- outages seen end to end


async def test_uploads_and_jobs_go_on_while_clickhouse_is_down_and_reach_it_once_after(
    settings, db, aiohttp_client, make_token, start_process, tmp_path
):
    """ClickHouse (a server of the test's own) is down before anything starts. A file is
    uploaded (202) and processed to the end meanwhile, every line stored, the events held in
    the outbox while the relay backs off; then the server comes back and every held event is in
    event_log exactly once. Broken, this looks like: an upload refused or held up by ClickHouse
    (a 503 or a timeout), a job that does not complete, events lost from the outbox while they
    could not be delivered, or doubled when the relay caught up."""

    server = ClickHouseServer(tmp_path / "clickhouse")
    server.start()
    with server.client() as admin:
        admin.command("CREATE DATABASE eh")
    url = server.url("eh")
    assert server.stop() == 0
    away = dataclasses.replace(settings, clickhouse_url=url)
    try:
        client = await aiohttp_client(eventhorizon.init_app(away), headers=bearer(make_token()))
        start_process("worker.py", CLICKHOUSE_URL=url)
        relay_proc = start_process("relay.py", CLICKHOUSE_URL=url, **RELAY_ENV)
        content = jsonl(*[dict(VALID, message=f"m{i}") for i in range(300)]) + b"not json\n"
        response = await upload(client, content)
        assert response.status == 202, await response.text()
        job_id = (await response.json())["job_id"]
        await wait_until(
            lambda: job_row(db, job_id)["status"] == "completed",
            timeout=60,
            what="the job completed while ClickHouse is down",
        )
        assert_exactly_once(db, job_id, valid=300, invalid=1, content=content)
        await wait_until(
            lambda: len(logged_events(relay_proc, "relay.clickhouse_unavailable")) >= 2,
            what="the relay backing off",
        )
        line_events = outbox_line_events(db, job_id)  # held as the job's ranges
        held = [
            r["event_id"]
            for r in db.execute("SELECT event_id FROM outbox WHERE event_id IS NOT NULL")
        ]
        held += [uuid.UUID(e["event_id"]) for e in line_events]
        lines_held = len(line_events)
        assert lines_held == 300 and not logged_events(relay_proc, "relay.batch_sent")

        server.start()
        await wait_until(lambda: outbox_backlog(db) == 0, timeout=60, what="the outbox drained")
        assert_delivered_once(url, held)
        assert relay_proc.poll() is None  # the same relay throughout
    finally:
        if server.proc.poll() is None:
            assert server.stop() == 0, server.proc.log_path.read_text()[-3000:]


def test_a_relay_stuck_on_an_insert_clickhouse_never_answers_stops_within_3_s_of_sigterm(
    settings, db, start_process, tcp_proxy
):
    """The relay reaches ClickHouse through a proxy that, once the relay is delivering, swallows
    every request and never answers (a server hung mid-insert; clickhouse-connect would wait
    minutes). SIGTERM while a batch is stuck so: the relay abandons it when its grace is up (3 s
    here: EH_STOP_GRACE_S) and exits 0; a later relay re-sends the recorded batch and every event is
    in event_log once. Broken, this looks like: a relay still waiting on the insert when the test
    gives up, an exit other than 0, or the abandoned batch lost or doubled."""

    ch = urlsplit(settings.clickhouse_url)
    proxy = tcp_proxy((ch.hostname, ch.port))
    via_proxy = urlunsplit(ch._replace(netloc=ch.netloc.replace(f":{ch.port}", f":{proxy.port}")))
    stuck = start_process("relay.py", CLICKHOUSE_URL=via_proxy, EH_STOP_GRACE_S="3", **RELAY_ENV)
    published = publish_events(settings.database_url, 50)
    wait_for(lambda: logged_events(stuck, "relay.batch_sent"), what="the relay delivering")
    proxy.hang()
    published += publish_events(settings.database_url, 50)
    wait_for(
        lambda: proxy.swallowed.is_set()
        and db.execute("SELECT count(*) AS n FROM outbox_batch").fetchone()["n"] == 1,
        what="a batch recorded and its insert stuck",
    )

    stuck.send_signal(signal.SIGTERM)
    assert stuck.wait(timeout=60) == 0  # a hang guard: the insert would wait minutes
    # The grace timer ended it (the reason says so), not the insert's own timeout.
    [abandoned] = logged_events(stuck, "relay.abandoned")
    assert abandoned["reason"] == "still working 3 s after SIGTERM"

    start_process("relay.py", **RELAY_ENV)  # straight to the server
    wait_for(lambda: outbox_backlog(db) == 0, timeout=60, what="the outbox drained")
    wait_for(
        lambda: db.execute("SELECT count(*) AS n FROM outbox_batch").fetchone()["n"] == 0,
        what="the abandoned batch finished",
    )
    assert_delivered_once(settings.clickhouse_url, published)
