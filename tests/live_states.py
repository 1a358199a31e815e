"""Job states as the worker commits and NOTIFYs them, for the live-update tests (WebSockets and
GraphQL subscriptions): the API's listener waited for, states notified, a job's batches, a
checkpoint moved, a job row made in memory, and a stalled watcher flooded until it is dropped."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import core
import jobs
from helpers import wait_for, watchers_dropped


async def listener_listening(db) -> None:
    """Wait until the API's listener has run LISTEN: notifications before that are lost."""

    def listening():
        return db.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE query = "
            "'LISTEN \"eh_job\"' AND state = 'idle' AND datname = current_database()"
        ).fetchone()["n"]

    await asyncio.to_thread(wait_for, listening, 60, what="the API's LISTEN connection")


def notify(db, states) -> None:
    """NOTIFY each job state as the worker would, all in one transaction: every one of them is
    committed before the API handles the first."""
    with db.transaction(), db.cursor() as cur:
        cur.executemany(
            core.QUERIES["notify"],
            [
                {"channel": jobs.CHANNEL, "payload": jobs.job_notification(jobs.Job(**s))}
                for s in states
            ],
        )


def batches(row: dict, lines: list[int]) -> list[dict]:
    """The job rows a worker would commit: processing, then one per batch ending at each of
    `lines`."""
    started = dict(row, status="processing", started_at=row["created_at"])
    return [dict(started, lines_processed=n, lines_valid=n, bytes_processed=n) for n in lines]


def advance_checkpoint(db, job_id: str, lines: int, status: str = "processing") -> dict:
    """Move a job's row as the worker's batch would (without its NOTIFY); the new row."""
    return db.execute(
        "UPDATE jobs SET status = %s, started_at = created_at, "
        "lines_processed = %s, lines_valid = %s WHERE job_id = %s RETURNING *",
        (status, lines, lines, job_id),
    ).fetchone()


def job_in_memory() -> jobs.Job:
    """A job row as the worker's RETURNING * gives it."""
    now = dt.datetime.now(dt.timezone.utc)
    return jobs.Job(
        job_id=uuid.uuid4(),
        file_name="app.jsonl",
        size_bytes=10,
        bucket="b",
        object_key="k",
        status="queued",
        lines_total=1,
        lines_processed=0,
        bytes_processed=0,
        lines_valid=0,
        lines_invalid=0,
        attempts=0,
        error=None,
        created_at=now,
        started_at=None,
        completed_at=None,
        updated_at=now,
        owner="tester",
    )


async def flood_until_dropped(db, logs, slow_row: dict, other_job_id: str, other_got) -> int:
    """Notify 500 states of the slow watcher's job a round, each with one more of the other
    job's in the same transaction, until the slow watcher is dropped (its access-log line in
    `logs`); `other_got(rounds, state)` checks, each round, that the other job's watcher got
    its state. Returns the rounds it took."""
    rounds = 0
    while not watchers_dropped(logs):  # each round ~1 MiB more for the slow client
        rounds += 1
        assert rounds <= 200, "the slow watcher was never dropped"
        with db.transaction():
            other_state = advance_checkpoint(db, other_job_id, rounds)
            notify(db, [*batches(slow_row, range(rounds * 500, rounds * 500 + 500)), other_state])
        await other_got(rounds, other_state)
    return rounds
