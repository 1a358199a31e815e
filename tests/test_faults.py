"""Fault injection on the worker and the API: real worker processes killed at random moments or
crashing on every attempt, their Postgres, RabbitMQ and S3 connections cut or hung, the API's
broker connection dropped and its storage dying mid-upload; afterwards every line must be
stored exactly once, and a refused upload leave nothing. The faults on the way to ClickHouse
(relays, the ClickHouse server) are tests/test_faults_delivery.py's."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
from urllib.parse import urlsplit, urlunsplit

import pytest

import eventhorizon
from helpers import (
    VALID,
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
    publish_to_queue,
    queued_messages,
    stored_keys,
    upload,
    wait_for,
)
from processes import logged_events, serve_api

LINES = 20_000


def twenty_thousand_lines() -> bytes:
    lines = [dict(VALID, message=f"m{i}") for i in range(LINES)]
    return jsonl(*lines[:7_000]) + b"not json\n" + jsonl(*lines[7_000:])


def test_worker_sigkilled_mid_batch_after_commits_and_before_its_ack_loses_and_doubles_nothing(
    settings, db, start_process, rng
):
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
    kills = [
        ("before_commit", rng.randint(1_000, 5_000)),
        ("after_commit", rng.randint(7_000, 12_000)),
        ("before_commit", rng.randint(14_000, 19_000)),
        ("after_commit", total),
    ]
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
    wait_for(lambda: queue_messages(settings.queue) == (0, 0), interval=1, what="the message acked")
    assert_exactly_once(db, job_id, valid=LINES, invalid=1, content=content)
    assert job_row(db, job_id)["attempts"] == len(kills) + 1  # a skipped job takes no attempt
    lifecycle = [
        r["event_type"]
        for r in db.execute(
            "SELECT event_type FROM outbox WHERE event_type LIKE 'job.%%' ORDER BY id"
        )
    ]
    assert lifecycle == ["job.started", "job.completed"]


def test_a_job_that_crashes_its_worker_every_time_fails_after_max_attempts(
    settings, db, start_process
):
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
            "processing",
            attempt,
            0,
        )

    survivor = start_process("worker.py", **poison)
    wait_for(lambda: job_row(db, job_id)["status"] == "failed", what="the job failed")
    assert job_row(db, job_id)["error"].startswith("gave up after 3 attempts")
    assert db.execute("SELECT count(*) AS n FROM log_entries").fetchone()["n"] == 0
    wait_for(lambda: queue_messages(settings.queue) == (0, 0), interval=1, what="its message acked")
    assert survivor.poll() is None and not logged_events(survivor, "worker.crash_injected")


def queue_messages(queue: str) -> tuple[int, int] | None:
    """(ready, unacknowledged) messages in a queue, as the broker counts them."""
    listed = subprocess.run(
        [
            "rabbitmqctl",
            "-q",
            "list_queues",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for line in listed.splitlines():
        name, ready, unacked = line.split("\t")
        if name == queue:
            return int(ready), int(unacked)
    return None


def test_worker_survives_its_postgres_connections_being_terminated(settings, db, start_process):
    job_id = enqueue_job(settings, db, twenty_thousand_lines())
    proc = start_process("worker.py", EH_BATCH_LINES="500", EH_LINE_DELAY_MAX_S="0.0002")
    wait_for(lambda: job_row(db, job_id)["lines_processed"] >= 2_000, what="some progress")
    killed = db.execute(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
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
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    named = f'{{"connection_name","{name}"}}'
    pids = [line.split("\t", 1)[0] for line in listed.splitlines() if named in line]
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "fault test"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    return len(pids)


def test_worker_reconnects_after_the_broker_drops_its_connection(settings, db, start_process):
    job_id = enqueue_job(settings, db, twenty_thousand_lines())
    proc = start_process("worker.py", EH_BATCH_LINES="500", EH_LINE_DELAY_MAX_S="0.0002")
    wait_for(lambda: job_row(db, job_id)["lines_processed"] >= 1_000, what="some progress")
    assert close_rabbitmq_connections(f"eventhorizon-worker pid {proc.pid}") == 1

    wait_for(lambda: job_row(db, job_id)["status"] == "completed", timeout=90, what="completed")
    second = enqueue_job(settings, db, jsonl(VALID))  # consumed on the new connection
    wait_for(
        lambda: job_row(db, second)["status"] == "completed",
        timeout=60,
        what="a job after the reconnect",
    )
    assert proc.poll() is None
    assert_exactly_once(db, job_id, valid=LINES, invalid=1)


async def test_api_publisher_reconnects_after_the_broker_drops_it(
    settings, aiohttp_client, make_token
):
    import os

    client = await aiohttp_client(eventhorizon.init_app(settings), headers=bearer(make_token()))
    assert (await upload(client, jsonl(VALID))).status == 202
    closed = await asyncio.to_thread(
        close_rabbitmq_connections, f"eventhorizon-api pid {os.getpid()}"
    )
    assert closed == 1
    response = await upload(client, jsonl(VALID))
    assert response.status == 202, await response.text()
    assert len(queued_messages(settings)) == 2


def test_the_same_worker_rides_out_a_storage_outage_and_then_completes_the_job(
    settings, db, start_process, tcp_proxy
):
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
    failed = wait_for(
        lambda: len(logged_events(worker, "job.attempt_failed")) >= 2
        and logged_events(worker, "job.attempt_failed"),
        what="two failed attempts",
    )
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


@pytest.mark.parametrize(
    ("grace", "signals", "reason"),
    [
        ("1", 1, "still working 1 s after SIGTERM"),
        ("8", 2, "second SIGTERM"),
    ],
    ids=["grace-over", "second-signal"],
)
def test_worker_exits_promptly_on_sigterm_while_storage_hangs(
    settings, db, start_process, tcp_proxy, grace, signals, reason
):
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
    wait_for(
        lambda: job_row(db, job_id)["status"] == "processing" and hanging.swallowed.is_set(),
        what="the job's read from storage stuck",
    )
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
    settings, db, aiohttp_client, make_token, start_process
):
    """The API publishes into a queue no worker reads (as good as lost: the broker took it
    and the worker will never see it). The job was committed before the publish, so the
    worker's reconciler finds it queued and re-publishes it where the workers listen."""
    elsewhere = dataclasses.replace(settings, queue=f"{settings.queue}.elsewhere")
    try:
        client = await aiohttp_client(
            eventhorizon.init_app(elsewhere), headers=bearer(make_token())
        )
        response = await upload(client, jsonl(VALID, VALID, VALID))
        assert response.status == 202, await response.text()
        job_id = (await response.json())["job_id"]

        start_process("worker.py", EH_REQUEUE_AFTER_S="1")
        await asyncio.to_thread(
            wait_for,
            lambda: job_row(db, job_id)["status"] == "completed",
            what="the lost job completed",
        )
        assert_exactly_once(db, job_id, valid=3, invalid=0)
        assert [m["job_id"] for m in queued_messages(elsewhere)] == [job_id]  # never consumed
    finally:
        delete_queues(settings.amqp_url, elsewhere.queue)


def test_workers_side_by_side_killed_at_random_store_every_line_of_every_job_once(
    settings, db, start_process, rng
):
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
        victim, job_ids = wait_for(
            lambda: kill_one_holding_a_job(db, workers, rng), what="a worker holding a job"
        )
        held += job_ids
        workers.remove(victim)
        workers.append(start_process("worker.py", **env))

    def all_completed():
        return all(job_row(db, job_id)["status"] == "completed" for job_id in jobs)

    try:
        wait_for(all_completed, timeout=90, what="every job completed")
    except AssertionError as exc:
        states = [
            {k: job_row(db, job_id)[k] for k in ("status", "attempts", "lines_processed", "error")}
            for job_id in jobs
        ]
        raise AssertionError(f"{exc}: {states}") from None
    for job_id in jobs:
        assert_exactly_once(db, job_id, valid=3_000, invalid=1, content=contents[job_id])
        assert job_row(db, job_id)["lines_processed"] == 3_001
    assert len(held) == 4 and set(held) <= set(jobs)
    assert all(job_row(db, job_id)["attempts"] >= 2 for job_id in held)  # the kill counted
    # The last one started may still be importing; let it come up before the SIGTERM.
    wait_for(
        lambda: all(logged_events(w, "worker.consuming") for w in workers), what="the workers up"
    )


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
            job_ids = [
                r["job_id"]
                for r in db.execute(
                    "SELECT j.job_id FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "JOIN jobs j ON hashtextextended(j.job_id::text, 0) = "
                    "  (l.classid::bigint << 32) | l.objid::bigint "
                    "WHERE l.locktype = 'advisory' AND l.granted "
                    "AND a.datname = current_database() "
                    "AND a.application_name = %s AND j.status = 'processing'",
                    (f"eventhorizon-worker pid {victim.pid}",),
                )
            ]
        finally:
            victim.send_signal(signal.SIGKILL if job_ids else signal.SIGCONT)
        if job_ids:
            victim.wait(timeout=10)
            return victim, job_ids
    return None


# -------------------------------------------------------------------------- outages seen end to end


async def test_an_upload_whose_storage_dies_mid_body_is_503_and_leaves_nothing(
    settings, db, aiohttp_client, make_token, tcp_proxy
):
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
    settings, start_process, tcp_proxy, make_token
):
    """RabbitMQ's connection to the API reset (an idle connection dropped by the network or a
    load balancer): the API's log gets one warning line naming the cause, not pika's tracebacks
    at error level, and the next upload is published on a new connection."""
    import aiohttp

    amqp = urlsplit(settings.amqp_url)
    proxy = tcp_proxy((amqp.hostname, amqp.port or 5672))
    through_proxy = amqp._replace(netloc=f"{amqp.username}:{amqp.password}@127.0.0.1:{proxy.port}")
    url, api = await asyncio.to_thread(serve_api, start_process, AMQP_URL=urlunsplit(through_proxy))
    async with aiohttp.ClientSession(url, headers=bearer(make_token())) as client:
        assert (await upload(client, jsonl(VALID))).status == 202
        proxy.down()
        proxy.up()
        response = await upload(client, jsonl(VALID))
        assert response.status == 202, await response.text()
    assert len(queued_messages(settings)) == 2

    log = api.log_path.read_text()
    assert "Traceback" not in log
    pika_lines = [
        entry for line in log.splitlines() if '"pika' in line for entry in [json.loads(line)]
    ]
    assert [(e["level"], e["logger"]) for e in pika_lines] == [
        ("warning", "pika.adapters.blocking_connection")
    ], pika_lines
    assert "StreamLostError" in pika_lines[0]["event"]  # the cause, in one line
