"""Fault injection: real worker processes killed at random moments, and their Postgres
connections cut mid-job; afterwards every line must be stored exactly once."""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess
import time

from conftest import bearer, delete_queues, logged_events, wait_for
from test_worker import (VALID, assert_exactly_once, enqueue_job, job_message, job_row, jsonl,
                         publish)

LINES = 20_000


def twenty_thousand_lines() -> bytes:
    lines = [dict(VALID, message=f"m{i}") for i in range(LINES)]
    return jsonl(*lines[:7_000]) + b"not json\n" + jsonl(*lines[7_000:])


def test_worker_sigkilled_at_random_points_loses_and_doubles_nothing(settings, db,
                                                                     start_process):
    job_id = enqueue_job(settings, db, twenty_thousand_lines())
    rng = random.Random()
    seen = []
    for attempt in range(1, 4):
        proc = start_process("worker.py", EH_BATCH_LINES="500", EH_LINE_DELAY_MAX_S="0.0004")
        # Wait for this worker's own claim, so each kill lands while it is processing.
        wait_for(lambda: job_row(db, job_id)["attempts"] == attempt, what="job claimed")
        time.sleep(rng.uniform(0.2, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        seen.append(job_row(db, job_id)["lines_processed"])
    assert job_row(db, job_id)["status"] != "completed", f"finished before the kills: {seen}"

    start_process("worker.py")
    wait_for(lambda: job_row(db, job_id)["status"] == "completed", timeout=60, what="completed")
    assert_exactly_once(db, job_id, valid=LINES, invalid=1)
    job = job_row(db, job_id)
    assert job["lines_processed"] == LINES + 1 and job["attempts"] == 4
    assert seen == sorted(seen)  # progress only ever moved forward


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


def close_rabbitmq_connections(name_part: str) -> int:
    """Close, from the broker's side, every connection whose name contains `name_part`."""
    listed = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    pids = [line.split("\t", 1)[0] for line in listed.splitlines() if name_part in line]
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
    from test_relay import outbox_backlog, publish, read_event_log_ids

    published = []
    for _ in range(10):
        published += publish(settings.database_url, 500)
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

    import eventhorizon
    from test_api import VALID as API_VALID, jsonl as api_jsonl, queued_messages, upload

    client = await aiohttp_client(eventhorizon.init_app(settings), headers=bearer(make_token()))
    assert (await upload(client, api_jsonl(API_VALID))).status == 202
    closed = await asyncio.to_thread(close_rabbitmq_connections,
                                     f"eventhorizon-api pid {os.getpid()}")
    assert closed == 1
    response = await upload(client, api_jsonl(API_VALID))
    assert response.status == 202, await response.text()
    assert len(queued_messages(settings)) == 2


def test_worker_retries_a_job_while_storage_is_unreachable(settings, db, start_process):
    """An outage is not the job's fault: however long it lasts, the job is not given up."""
    job_id = enqueue_job(settings, db, jsonl(VALID, VALID))
    blind = start_process("worker.py", S3_ENDPOINT_URL="http://127.0.0.1:1", EH_MAX_ATTEMPTS="1")
    failed = wait_for(lambda: len(logged_events(blind, "job.attempt_failed")) >= 2 and
                      logged_events(blind, "job.attempt_failed"), what="two failed attempts")
    assert all(entry["counted"] is False for entry in failed)
    job = job_row(db, job_id)
    assert job["status"] == "processing" and job["error"].startswith("attempt failed")
    # In plain words: the endpoint and the exception text are in the worker's log only.
    assert job["error"] == "attempt failed, will retry: the file storage was unreachable"
    assert job["attempts"] == 0
    blind.send_signal(signal.SIGTERM)
    assert blind.wait(timeout=10) == 0

    start_process("worker.py")
    wait_for(lambda: job_row(db, job_id)["status"] == "completed", what="completed")
    assert_exactly_once(db, job_id, valid=2, invalid=0)
    assert job_row(db, job_id)["error"] is None


def test_worker_exits_promptly_on_sigterm_while_storage_hangs(settings, db, start_process):
    """Storage accepts the connection and never answers: the job is stuck in a read that
    would take minutes to time out. SIGTERM still stops the worker within 10 s, and the job
    is finished later as if the worker had crashed."""
    job_id = enqueue_job(settings, db, jsonl(VALID, VALID))
    with socket.socket() as hanging:
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(16)  # the kernel completes connections; nobody ever reads or answers
        stuck = start_process("worker.py",
                              S3_ENDPOINT_URL=f"http://127.0.0.1:{hanging.getsockname()[1]}")
        wait_for(lambda: job_row(db, job_id)["status"] == "processing", what="job claimed")
        time.sleep(0.5)
        stuck.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert stuck.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
    assert logged_events(stuck, "worker.job_still_running_at_exit")

    start_process("worker.py")
    wait_for(lambda: job_row(db, job_id)["status"] == "completed", what="completed")
    assert_exactly_once(db, job_id, valid=2, invalid=0)


async def test_an_accepted_upload_whose_message_is_lost_is_still_processed(
        settings, db, aiohttp_client, make_token, start_process):
    """The API publishes into a queue no worker reads (as good as lost: the broker took it
    and the worker will never see it). The job was committed before the publish, so the
    worker's reconciler finds it queued and re-publishes it where the workers listen."""
    import dataclasses

    import eventhorizon
    from test_api import queued_messages, upload

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
        settings, db, start_process):
    """Three workers share the queue; jobs are published twice over; every second or so one
    worker is SIGKILLed and a new one started. Every job still completes with each of its
    lines stored exactly once."""
    rng = random.Random()
    jobs = []
    for j in range(6):
        lines = [dict(VALID, message=f"job {j} line {i}") for i in range(3_000)]
        jobs.append(enqueue_job(settings, db, jsonl(*lines[:1_000]) + b"{broken\n"
                                + jsonl(*lines[1_000:])))
    for job_id in jobs[:2]:  # duplicates, as a re-publish would make
        publish(settings, job_message(db, job_id))

    env = {"EH_BATCH_LINES": "200", "EH_LINE_DELAY_MAX_S": "0.0003"}
    workers = [start_process("worker.py", **env) for _ in range(3)]
    for _ in range(4):
        time.sleep(rng.uniform(0.7, 1.5))
        victim = workers.pop(rng.randrange(len(workers)))
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
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
        assert_exactly_once(db, job_id, valid=3_000, invalid=1)
        assert job_row(db, job_id)["lines_processed"] == 3_001
    # The last one started may still be importing; let it come up before the SIGTERM.
    wait_for(lambda: all(logged_events(w, "worker.consuming") for w in workers),
             what="the workers up")
