"""Fault injection: real worker and relay processes killed at random moments, their Postgres
connections cut mid-job, the ClickHouse server killed mid-stream; afterwards every line must
be stored, and every event delivered, exactly once."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
import threading
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

import event_log
import eventhorizon
import outbox
from helpers import (
    VALID,
    ClickHouseServer,
    assert_exactly_once,
    assert_problem,
    assert_stored_up_to_checkpoint,
    bearer,
    delete_queues,
    enqueue_job,
    job_count,
    job_message,
    job_row,
    jsonl,
    logged_events,
    outbox_backlog,
    outbox_line_events,
    publish_events,
    publish_line_range,
    publish_to_queue,
    queued_messages,
    read_event_log_ids,
    serve_api,
    stored_keys,
    upload,
    wait_for,
    wait_until,
)

LINES = 20_000


def twenty_thousand_lines() -> bytes:
    lines = [dict(VALID, message=f"m{i}") for i in range(LINES)]
    return jsonl(*lines[:7_000]) + b"not json\n" + jsonl(*lines[7_000:])


def test_worker_sigkilled_mid_batch_after_commits_and_before_its_ack_loses_and_doubles_nothing(
        settings, db, start_process, rng):
    """The worker SIGKILLs itself (EH_WORKER_CRASH_AT) with a batch written and not committed,
    at a random line in the first and in the last third of a 20,001-line file; just after a
    commit, in the middle third; after committing the last batch, the job not yet completed;
    and after completing the job, its message not yet acked. A new worker takes over each
    time. After each kill, what is stored is exactly the file up to the checkpoint (each line
    under its own number, with its own message) and the checkpoint has moved on; in the end
    every line is stored once, the job completed once and its message acked.

    Broken, this looks like: a batch's rows committed without its checkpoint (rows past the
    checkpoint, then lines doubled or a duplicate key), a checkpoint moved without its rows
    (lines missing), a resume from the wrong byte offset (lines under another line's number),
    no progress between kills (a resume from the start), a completion done twice (two
    job.completed events) or a redelivered message never acked."""
    content, total = twenty_thousand_lines(), LINES + 1
    job_id = enqueue_job(settings, db, content)
    env = {"EH_BATCH_LINES": "500", "EH_MAX_ATTEMPTS": "10"}
    kills = [("before_commit", rng.randint(1_000, 5_000)),
             ("after_commit", rng.randint(7_000, 12_000)),
             ("before_commit", rng.randint(14_000, 19_000)),
             ("after_commit", total)]
    checkpoints = [0]
    for point, line in kills:
        proc = start_process("worker.py", EH_WORKER_CRASH_AT=f"{point}:{line}", **env)
        assert proc.wait(timeout=60) == -signal.SIGKILL, proc.log_path.read_text()[-3000:]
        [crash] = logged_events(proc, "worker.crash_injected")
        job = assert_stored_up_to_checkpoint(db, job_id, content)
        done = job["lines_processed"]
        if point == "before_commit":  # the batch that reached `line` was written, then lost
            assert done < line <= crash["line_no"], (point, line, crash, done)
        else:  # the batch that reached `line` is committed, and nothing after it
            assert done == crash["line_no"] >= line, (point, line, crash, done)
        assert job["status"] == "processing"
        assert done > checkpoints[-1], f"no progress: {checkpoints}, then {done}"
        checkpoints.append(done)
    assert checkpoints[-1] == total

    acking = start_process("worker.py", EH_WORKER_CRASH_AT="before_ack", **env)
    assert acking.wait(timeout=60) == -signal.SIGKILL
    assert logged_events(acking, "worker.crash_injected")
    assert job_row(db, job_id)["status"] == "completed"  # committed, and its message not acked

    last = start_process("worker.py", **env)
    wait_for(lambda: logged_events(last, "job.skipped"), what="the redelivered message skipped")
    wait_for(lambda: queue_messages(settings.queue) == (0, 0), interval=1,
             what="the message acked")
    assert_exactly_once(db, job_id, valid=LINES, invalid=1, content=content)
    assert job_row(db, job_id)["attempts"] == len(kills) + 1  # a skipped job takes no attempt
    lifecycle = [r["event_type"] for r in db.execute(
        "SELECT event_type FROM outbox WHERE event_type LIKE 'job.%%' ORDER BY id")]
    assert lifecycle == ["job.started", "job.completed"]


def test_workers_sigkilled_mid_job_leave_every_valid_line_in_clickhouse_once(
        settings, db, start_process, rng):
    """A relay runs throughout while a worker is SIGKILLed from outside at a random line, twice,
    each time a new one taking the job over, and a third finishes it. Then, in ClickHouse's
    event_log: every valid line of the file exactly once (count and distinct ids agree), under
    its own line number, with its own line's message and its deterministic event id; no event
    for an invalid line; one job.completed. Broken, this looks like: the rows of a batch the
    kill rolled back delivered anyway (a line twice, or a line the checkpoint did not count),
    a resumed job re-publishing lines it had published (doubled), or lines never published."""
    total = 3_000
    invalid = set(range(250, total + 1, 500))  # line numbers of lines that are not JSON
    raw = [b"not json\n" if n in invalid else jsonl(dict(VALID, message=f"line {n}"))
           for n in range(1, total + 1)]
    job_id = enqueue_job(settings, db, b"".join(raw))
    start_process("relay.py", **RELAY_ENV)
    env = {"EH_BATCH_LINES": "100", "EH_LINE_DELAY_MAX_S": "0.0005", "EH_MAX_ATTEMPTS": "10"}
    for low, high in ((200, 1_200), (1_500, 2_700)):
        at = rng.randint(low, high)
        victim = start_process("worker.py", **env)
        wait_for(lambda at=at: job_row(db, job_id)["lines_processed"] >= at, timeout=120,
                 what=f"line {at} processed")
        victim.kill()
        assert victim.wait(timeout=10) == -signal.SIGKILL
        assert job_row(db, job_id)["status"] == "processing"
    start_process("worker.py", **env)
    wait_for(lambda: job_row(db, job_id)["status"] == "completed", timeout=120,
             what="the job completed")
    wait_for(lambda: outbox_backlog(db) == 0 and db.execute(
        "SELECT count(*) AS n FROM outbox_batch").fetchone()["n"] == 0, timeout=60,
        what="the outbox drained")

    with event_log.connect_clickhouse(settings.clickhouse_url) as ch:
        rows = ch.query(
            "SELECT line_no, toString(event_context.message), event_id FROM event_log "
            "WHERE job_id = {job:UUID} AND event_type NOT LIKE 'job.%'",
            parameters={"job": str(job_id)}).result_rows
        completed = ch.query(
            "SELECT count() FROM event_log WHERE job_id = {job:UUID} "
            "AND event_type = 'job.completed'", parameters={"job": str(job_id)}).result_rows
    valid = [n for n in range(1, total + 1) if n not in invalid]
    line_nos = sorted(row[0] for row in rows)
    assert len(line_nos) == len(set(line_nos)), "a line delivered twice"
    assert line_nos == valid, f"missing {sorted(set(valid) - set(line_nos))[:10]}"
    wrong = sorted(n for n, message, event_id in rows
                   if message != f"line {n}" or event_id != outbox.line_event_id(job_id, n))
    assert not wrong, f"lines with another line's message or event id: {wrong[:10]}"
    assert completed == [(1,)]


def test_a_job_that_crashes_its_worker_every_time_fails_after_max_attempts(
        settings, db, start_process):
    """A job whose every attempt kills the worker (EH_WORKER_CRASH_AT on its first batch, as a
    line that crashed the parser would) is attempted EH_MAX_ATTEMPTS times, each counted,
    then marked failed by the next worker, which acks its message and stays up. Broken, it
    looks like: a crash loop with no end (the job never fails), a crash not counted, or a job
    failed before its attempts are used up."""
    job_id = enqueue_job(settings, db, jsonl(*[VALID] * 20))
    poison = {"EH_WORKER_CRASH_AT": "before_commit:1", "EH_MAX_ATTEMPTS": "3"}
    for attempt in range(1, 4):
        crashing = start_process("worker.py", **poison)  # as a supervisor restarts it
        assert crashing.wait(timeout=60) == -signal.SIGKILL
        job = job_row(db, job_id)
        assert (job["status"], job["attempts"], job["lines_processed"]) == (
            "processing", attempt, 0)

    survivor = start_process("worker.py", **poison)
    wait_for(lambda: job_row(db, job_id)["status"] == "failed", what="the job failed")
    assert job_row(db, job_id)["error"].startswith("gave up after 3 attempts")
    assert db.execute("SELECT count(*) AS n FROM log_entries").fetchone()["n"] == 0
    wait_for(lambda: queue_messages(settings.queue) == (0, 0), interval=1,
             what="its message acked")
    assert survivor.poll() is None and not logged_events(survivor, "worker.crash_injected")


def queue_messages(queue: str) -> tuple[int, int] | None:
    """(ready, unacknowledged) messages in a queue, as the broker counts them."""
    listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "--no-table-headers", "name",
                             "messages_ready", "messages_unacknowledged"],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    for line in listed.splitlines():
        name, ready, unacked = line.split("\t")
        if name == queue:
            return int(ready), int(unacked)
    return None


def test_worker_survives_its_postgres_connections_being_terminated(settings, db, start_process):
    job_id = enqueue_job(settings, db, twenty_thousand_lines())
    proc = start_process("worker.py", EH_BATCH_LINES="500", EH_LINE_DELAY_MAX_S="0.0002")
    wait_for(lambda: job_row(db, job_id)["lines_processed"] >= 2_000, what="some progress")
    killed = db.execute("SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        ).fetchone()["n"]
    assert killed >= 1

    wait_for(lambda: job_row(db, job_id)["status"] == "completed", timeout=60, what="completed")
    assert proc.poll() is None  # the worker retried the job itself
    assert_exactly_once(db, job_id, valid=LINES, invalid=1)
    job = job_row(db, job_id)
    assert job["error"] is None and job["attempts"] == 1  # the outage's attempt was given back


def close_rabbitmq_connections(name: str) -> int:
    """Close, from the broker's side, every connection named `name` (exactly: "… pid 12" must
    not close a parallel test's "… pid 123")."""
    listed = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    named = f'{{"connection_name","{name}"}}'
    pids = [line.split("\t", 1)[0] for line in listed.splitlines() if named in line]
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "fault test"],
                       check=True, capture_output=True, timeout=60)
    return len(pids)


def test_worker_reconnects_after_the_broker_drops_its_connection(settings, db, start_process):
    job_id = enqueue_job(settings, db, twenty_thousand_lines())
    proc = start_process("worker.py", EH_BATCH_LINES="500", EH_LINE_DELAY_MAX_S="0.0002")
    wait_for(lambda: job_row(db, job_id)["lines_processed"] >= 1_000, what="some progress")
    assert close_rabbitmq_connections(f"eventhorizon-worker pid {proc.pid}") == 1

    wait_for(lambda: job_row(db, job_id)["status"] == "completed", timeout=90, what="completed")
    second = enqueue_job(settings, db, jsonl(VALID))  # consumed on the new connection
    wait_for(lambda: job_row(db, second)["status"] == "completed", timeout=60,
             what="a job after the reconnect")
    assert proc.poll() is None
    assert_exactly_once(db, job_id, valid=LINES, invalid=1)


def test_relay_survives_its_postgres_connections_being_terminated(settings, db, start_process):

    published = []
    for _ in range(10):
        published += publish_events(settings.database_url, 500)
    proc = start_process("relay.py", RELAY_BATCH_MAX_ROWS="100", RELAY_BATCH_MAX_WAIT_S="0",
                         RELAY_POLL_S="0.5")
    wait_for(lambda: outbox_backlog(db) <= 4_000, what="the relay under way")
    killed = db.execute("SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        ).fetchone()["n"]
    assert killed >= 1
    wait_for(lambda: outbox_backlog(db) == 0, timeout=60, what="the outbox drained")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0

    delivered = read_event_log_ids(settings)
    assert len(delivered) == len(published) == 5_000
    assert set(delivered) == set(published)


async def test_api_publisher_reconnects_after_the_broker_drops_it(settings, aiohttp_client,
                                                                  make_token):
    import os

    client = await aiohttp_client(eventhorizon.init_app(settings), headers=bearer(make_token()))
    assert (await upload(client, jsonl(VALID))).status == 202
    closed = await asyncio.to_thread(close_rabbitmq_connections,
                                     f"eventhorizon-api pid {os.getpid()}")
    assert closed == 1
    response = await upload(client, jsonl(VALID))
    assert response.status == 202, await response.text()
    assert len(queued_messages(settings)) == 2


def test_the_same_worker_rides_out_a_storage_outage_and_then_completes_the_job(
        settings, db, start_process, tcp_proxy):
    """The worker reaches S3 through a proxy that resets every connection (storage down).
    An outage is not the job's fault: however long it lasts, the job is not given up (even
    with EH_MAX_ATTEMPTS=1) and the owner is told why in plain words; once storage is back,
    the same worker process completes the job, each line once. Broken, this looks like: the
    job failed after its one attempt, the worker exiting or stuck after the outage (only a new
    process would finish the job), or lines doubled by the retried attempts."""
    s3 = urlsplit(settings.s3_endpoint_url)
    proxy = tcp_proxy((s3.hostname, s3.port))
    proxy.down()
    job_id = enqueue_job(settings, db, jsonl(VALID, VALID))
    worker = start_process("worker.py", S3_ENDPOINT_URL=proxy.url, EH_MAX_ATTEMPTS="1")
    failed = wait_for(lambda: len(logged_events(worker, "job.attempt_failed")) >= 2 and
                      logged_events(worker, "job.attempt_failed"), what="two failed attempts")
    assert all(entry["counted"] is False for entry in failed)
    job = job_row(db, job_id)
    # In plain words: the endpoint and the exception text are in the worker's log only.
    assert job["status"] == "processing"
    assert job["error"] == "attempt failed, will retry: the file storage was unreachable"
    assert job["attempts"] == 0

    proxy.up()
    wait_for(lambda: job_row(db, job_id)["status"] == "completed", timeout=60, what="completed")
    assert worker.poll() is None  # the same process, still serving
    assert_exactly_once(db, job_id, valid=2, invalid=0)
    assert job_row(db, job_id)["error"] is None


@pytest.mark.parametrize(("grace", "signals", "reason"), [
    ("1", 1, "still working 1 s after SIGTERM"),
    ("8", 2, "second SIGTERM"),
], ids=["grace-over", "second-signal"])
def test_worker_exits_promptly_on_sigterm_while_storage_hangs(settings, db, start_process,
                                                             tcp_proxy, grace, signals, reason):
    """Storage takes the request and never answers (a proxy swallowing it): the job is stuck in
    a read that would take minutes to time out. SIGTERM, sent once the request is seen stuck,
    still stops the worker once its grace is up (1 s here: EH_STOP_GRACE_S), or at once on a
    second SIGTERM, and the job is finished later as if the worker had crashed. Broken, this
    looks like: a worker waiting on the read until the test gives up, or an exit other than 0."""
    job_id = enqueue_job(settings, db, jsonl(VALID, VALID))
    s3 = urlsplit(settings.s3_endpoint_url)
    hanging = tcp_proxy((s3.hostname, s3.port))
    hanging.hang()
    stuck = start_process("worker.py", S3_ENDPOINT_URL=hanging.url, EH_STOP_GRACE_S=grace)
    wait_for(lambda: job_row(db, job_id)["status"] == "processing" and hanging.swallowed.is_set(),
             what="the job's read from storage stuck")
    stuck.send_signal(signal.SIGTERM)
    if signals == 2:
        wait_for(lambda: logged_events(stuck, "worker.stopping"), what="the first SIGTERM seen")
        stuck.send_signal(signal.SIGTERM)
    assert stuck.wait(timeout=30) == 0  # a hang guard; the reason below says what ended it
    [abandoned] = logged_events(stuck, "worker.abandoned")
    assert abandoned["reason"] == reason

    start_process("worker.py")
    wait_for(lambda: job_row(db, job_id)["status"] == "completed", what="completed")
    assert_exactly_once(db, job_id, valid=2, invalid=0)


async def test_an_accepted_upload_whose_message_is_lost_is_still_processed(
        settings, db, aiohttp_client, make_token, start_process):
    """The API publishes into a queue no worker reads (as good as lost: the broker took it
    and the worker will never see it). The job was committed before the publish, so the
    worker's reconciler finds it queued and re-publishes it where the workers listen."""
    elsewhere = dataclasses.replace(settings, queue=f"{settings.queue}.elsewhere")
    try:
        client = await aiohttp_client(eventhorizon.init_app(elsewhere), headers=bearer(make_token()))
        response = await upload(client, jsonl(VALID, VALID, VALID))
        assert response.status == 202, await response.text()
        job_id = (await response.json())["job_id"]

        start_process("worker.py", EH_REQUEUE_AFTER_S="1")
        await asyncio.to_thread(wait_for, lambda: job_row(db, job_id)["status"] == "completed",
                                what="the lost job completed")
        assert_exactly_once(db, job_id, valid=3, invalid=0)
        assert [m["job_id"] for m in queued_messages(elsewhere)] == [job_id]  # never consumed
    finally:
        delete_queues(settings.amqp_url, elsewhere.queue)


def test_workers_side_by_side_killed_at_random_store_every_line_of_every_job_once(
        settings, db, start_process, rng):
    """Three workers share the queue; jobs are published twice over; four times, after a
    random number of lines more, a worker caught holding a job is SIGKILLed and a new one
    started. Every job still completes with each of its lines stored exactly once, and each
    job a killed worker held was taken up again. Broken, it looks like: a job left processing
    for good (a lost message), a line doubled or missing where two workers met on a job."""
    jobs, contents = [], {}
    for j in range(6):
        lines = [dict(VALID, message=f"job {j} line {i}") for i in range(3_000)]
        content = jsonl(*lines[:1_000]) + b"{broken\n" + jsonl(*lines[1_000:])
        jobs.append(enqueue_job(settings, db, content))
        contents[jobs[-1]] = content
    for job_id in jobs[:2]:  # duplicates, as a re-publish would make
        publish_to_queue(settings, job_message(db, job_id))

    def lines_done() -> int:
        return sum(job_row(db, job_id)["lines_processed"] for job_id in jobs)

    env = {"EH_BATCH_LINES": "200", "EH_LINE_DELAY_MAX_S": "0.0003"}
    workers = [start_process("worker.py", **env) for _ in range(3)]
    held = []
    for _ in range(4):
        target = lines_done() + rng.randint(300, 1_500)
        wait_for(lambda target=target: lines_done() >= target, what=f"{target} lines processed")
        victim, job_ids = wait_for(lambda: kill_one_holding_a_job(db, workers, rng),
                                   what="a worker holding a job")
        held += job_ids
        workers.remove(victim)
        workers.append(start_process("worker.py", **env))

    def all_completed():
        return all(job_row(db, job_id)["status"] == "completed" for job_id in jobs)

    try:
        wait_for(all_completed, timeout=90, what="every job completed")
    except AssertionError as exc:
        states = [{k: job_row(db, job_id)[k] for k in ("status", "attempts", "lines_processed",
                                                         "error")} for job_id in jobs]
        raise AssertionError(f"{exc}: {states}") from None
    for job_id in jobs:
        assert_exactly_once(db, job_id, valid=3_000, invalid=1, content=contents[job_id])
        assert job_row(db, job_id)["lines_processed"] == 3_001
    assert len(held) == 4 and set(held) <= set(jobs)
    assert all(job_row(db, job_id)["attempts"] >= 2 for job_id in held)  # the kill counted
    # The last one started may still be importing; let it come up before the SIGTERM.
    wait_for(lambda: all(logged_events(w, "worker.consuming") for w in workers),
             what="the workers up")


def kill_one_holding_a_job(db, workers, rng):
    """SIGKILL a worker that holds a job it is processing (its session's advisory lock, on a
    job in `processing`), and say which job; None if no worker does. Each candidate is frozen
    (SIGSTOP) while it is looked at, so the job it holds then is still its own when the kill
    lands. A lock on a job that is not processing is not counted: a worker that took the lock
    of a job already completed (a duplicate message), or not yet claimed, dies without an
    attempt of its own to count."""
    for victim in rng.sample(workers, len(workers)):
        victim.send_signal(signal.SIGSTOP)
        job_ids = []
        try:
            job_ids = [r["job_id"] for r in db.execute(
                "SELECT j.job_id FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "JOIN jobs j ON hashtextextended(j.job_id::text, 0) = "
                "  (l.classid::bigint << 32) | l.objid::bigint "
                "WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database() "
                "AND a.application_name = %s AND j.status = 'processing'",
                (f"eventhorizon-worker pid {victim.pid}",))]
        finally:
            victim.send_signal(signal.SIGKILL if job_ids else signal.SIGCONT)
        if job_ids:
            victim.wait(timeout=10)
            return victim, job_ids
    return None


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
SENDING_A_BATCH = ("%SELECT batch_id, ids, token, attempts FROM outbox_batch%WHERE batch_id%",
                   "%FROM outbox o%WHERE o.id = ANY%", "%DELETE FROM outbox WHERE id = ANY%",
                   "%DELETE FROM outbox_batch WHERE batch_id%")


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
                (f"eventhorizon-relay pid {victim.pid}", list(SENDING_A_BATCH))).fetchone()["n"]
        finally:
            victim.send_signal(signal.SIGKILL if sending else signal.SIGCONT)
        if sending:
            assert victim.wait(timeout=10) == -signal.SIGKILL
            return
        time.sleep(rng.uniform(0.0, 0.02))
    raise AssertionError(f"relay pid {victim.pid} was never caught sending a batch")


def test_three_relays_killed_at_random_deliver_every_event_once(settings, db, start_process,
                                                                 rng):
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
            wait_for(lambda victim=victim: logged_events(victim, "relay.batch_sent"),
                     what="the victim busy")
            time.sleep(rng.uniform(0.0, 0.5))
            kill_while_sending_a_batch(db, victim, rng)
            relays.append(start_process("relay.py", **RELAY_ENV))
            started.append(relays[-1])
    wait_for(lambda: outbox_backlog(db) == 0, timeout=60, what="the outbox drained")
    wait_for(lambda: db.execute("SELECT count(*) AS n FROM outbox_batch").fetchone()["n"] == 0,
             what="no batch left unfinished")

    assert len(producer.published) > 1_000
    assert_delivered_once(settings.clickhouse_url, producer.published)
    resent = [line for line in relay_lines(started, "relay.batch_sent") if line["resent"]]
    assert len(resent) >= 5, f"5 batches left by the kills, {len(resent)} re-sent"
    # SIGTERM is handled from `relay.started` on; the last one started may still be importing.
    wait_for(lambda: all(logged_events(r, "relay.started") for r in relays), what="relays up")


def test_the_clickhouse_server_killed_mid_stream_loses_and_doubles_nothing(
        settings, db, start_process, rng, tmp_path):
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
            wait_for(lambda: len(logged_events(proc, "relay.batch_sent")) >= 5,
                     what="the relay under way")
            time.sleep(rng.uniform(0.0, 0.5))
            server.stop(signal.SIGKILL)
            wait_for(lambda: len(logged_events(proc, "relay.clickhouse_unavailable")) >= 3,
                     what="the relay backing off")
            server.start()
            resent = lambda: [line for line in logged_events(proc, "relay.batch_sent")  # noqa: E731
                              if line["resent"]]
            wait_for(resent, timeout=60, what="the batch in flight re-sent")
        wait_for(lambda: outbox_backlog(db) == 0, timeout=60, what="the outbox drained")

        assert_delivered_once(url, producer.published)
        delays = [line["retry_in_s"] for line in logged_events(proc, "relay.clickhouse_unavailable")]
        assert delays[2] > delays[0]  # backing off
        assert proc.poll() is None  # the same relay throughout
    finally:
        if server.proc.poll() is None:
            assert server.stop() == 0, server.proc.log_path.read_text()[-3000:]


# --------------------------------------------------------------------------- outages seen end to end


async def test_uploads_and_jobs_go_on_while_clickhouse_is_down_and_reach_it_once_after(
        settings, db, aiohttp_client, make_token, start_process, tmp_path):
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
        await wait_until(lambda: job_row(db, job_id)["status"] == "completed", timeout=60,
                         what="the job completed while ClickHouse is down")
        assert_exactly_once(db, job_id, valid=300, invalid=1, content=content)
        await wait_until(lambda: len(logged_events(relay_proc, "relay.clickhouse_unavailable"))
                         >= 2, what="the relay backing off")
        line_events = outbox_line_events(db, job_id)  # held as the job's ranges
        held = [r["event_id"] for r in db.execute(
            "SELECT event_id FROM outbox WHERE event_id IS NOT NULL")]
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
        settings, db, start_process, tcp_proxy):
    """The relay reaches ClickHouse through a proxy that, once the relay is delivering, swallows
    every request and never answers (a server hung mid-insert; clickhouse-connect would wait
    minutes). SIGTERM while a batch is stuck so: the relay abandons it when its grace is
    up (3 s here: EH_STOP_GRACE_S) and exits 0; a later relay re-sends the recorded batch and every event is in event_log
    once. Broken, this looks like: a relay still waiting on the insert when the test gives up,
    an exit other than 0, or the abandoned batch lost or doubled."""

    ch = urlsplit(settings.clickhouse_url)
    proxy = tcp_proxy((ch.hostname, ch.port))
    via_proxy = urlunsplit(ch._replace(netloc=ch.netloc.replace(f":{ch.port}", f":{proxy.port}")))
    stuck = start_process("relay.py", CLICKHOUSE_URL=via_proxy, EH_STOP_GRACE_S="3",
                          **RELAY_ENV)
    published = publish_events(settings.database_url, 50)
    wait_for(lambda: logged_events(stuck, "relay.batch_sent"), what="the relay delivering")
    proxy.hang()
    published += publish_events(settings.database_url, 50)
    wait_for(lambda: proxy.swallowed.is_set() and db.execute(
        "SELECT count(*) AS n FROM outbox_batch").fetchone()["n"] == 1,
        what="a batch recorded and its insert stuck")

    stuck.send_signal(signal.SIGTERM)
    assert stuck.wait(timeout=60) == 0  # a hang guard: the insert would wait minutes
    # The grace timer ended it (the reason says so), not the insert's own timeout.
    [abandoned] = logged_events(stuck, "relay.abandoned")
    assert abandoned["reason"] == "still working 3 s after SIGTERM"

    start_process("relay.py", **RELAY_ENV)  # straight to the server
    wait_for(lambda: outbox_backlog(db) == 0, timeout=60, what="the outbox drained")
    wait_for(lambda: db.execute("SELECT count(*) AS n FROM outbox_batch").fetchone()["n"] == 0,
             what="the abandoned batch finished")
    assert_delivered_once(settings.clickhouse_url, published)


async def test_an_upload_whose_storage_dies_mid_body_is_503_and_leaves_nothing(
        settings, db, aiohttp_client, make_token, tcp_proxy):
    """A 21 MB upload goes to S3 in 8 MiB parts through a proxy that resets any connection
    once it has carried 1 MiB: the multipart upload starts, and every try of its first part
    dies mid-body while the client is still sending. The API answers 503 and aborts the
    multipart upload (a small request, which gets through): no job, no object, no part, no
    message. Broken, this looks like: a 500 or a hang, a job row for a file S3 does not have,
    or a multipart upload left behind."""
    s3 = urlsplit(settings.s3_endpoint_url)
    proxy = tcp_proxy((s3.hostname, s3.port))
    proxy.cut_requests_over(1024 * 1024)
    via_proxy = dataclasses.replace(settings, s3_endpoint_url=proxy.url)
    client = await aiohttp_client(eventhorizon.init_app(via_proxy), headers=bearer(make_token()))
    content = jsonl(*[dict(VALID, message="x" * 1_000)] * 20_000)
    assert len(content) > 2 * 8 * 1024 * 1024

    body = await assert_problem(await upload(client, content), 503)
    assert "storage" in body["detail"]
    assert proxy.cuts >= 1
    assert job_count(db) == 0
    assert stored_keys(settings) == []
    assert queued_messages(settings) == []


async def test_an_amqp_connection_reset_is_one_warning_line_and_uploads_go_on(
        settings, start_process, tcp_proxy, make_token):
    """RabbitMQ's connection to the API reset (an idle connection dropped by the network or a
    load balancer): the API's log gets one warning line naming the cause, not pika's tracebacks
    at error level, and the next upload is published on a new connection."""
    import aiohttp

    amqp = urlsplit(settings.amqp_url)
    proxy = tcp_proxy((amqp.hostname, amqp.port or 5672))
    through_proxy = amqp._replace(netloc=f"{amqp.username}:{amqp.password}@127.0.0.1:{proxy.port}")
    url, api = await asyncio.to_thread(serve_api, start_process,
                                       AMQP_URL=urlunsplit(through_proxy))
    async with aiohttp.ClientSession(url, headers=bearer(make_token())) as client:
        assert (await upload(client, jsonl(VALID))).status == 202
        proxy.down()
        proxy.up()
        response = await upload(client, jsonl(VALID))
        assert response.status == 202, await response.text()
    assert len(queued_messages(settings)) == 2

    log = api.log_path.read_text()
    assert "Traceback" not in log
    pika_lines = [entry for line in log.splitlines() if '"pika' in line
                  for entry in [json.loads(line)]]
    assert [(e["level"], e["logger"]) for e in pika_lines] == [
        ("warning", "pika.adapters.blocking_connection")], pika_lines
    assert "StreamLostError" in pika_lines[0]["event"]  # the cause, in one line
