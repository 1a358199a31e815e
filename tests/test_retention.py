"""Retention: a job older than its owner's retention is removed everywhere by the sweep
(Postgres, S3, then ClickHouse through the relay) and nothing else is; sweepers at once remove
each job once; the sweep never stops ingest; the admin route and the `retention` command."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import threading

import psycopg
import pytest
from botocore.exceptions import ClientError

import config
import core
import event_log
import eventhorizon
import observe
import retention
from helpers import (
    VALID,
    aged,
    assert_problem,
    bearer,
    completed_job,
    drain,
    jsonl,
    make_job,
    run_job,
    stored_keys,
    upload,
    wait_until,
)
from processes import settings_env

CONTENT = jsonl(VALID, {**VALID, "message": "second"}) + b"not json\n"  # 2 valid, 1 invalid


def own_retention(db, owner: str, days: int | None) -> None:
    db.execute(
        core.QUERIES["set_owner_retention"], {"owner": owner, "days": days, "set_by": "test"}
    )


def rows_of(db, table: str, job_id) -> int:
    return db.execute(f"SELECT count(*) AS n FROM {table} WHERE job_id = %s", (job_id,)).fetchone()[
        "n"
    ]


def outbox_rows_of(db, job_id) -> int:
    return db.execute(
        "SELECT count(*) AS n FROM outbox WHERE event_context->>'job_id' = %s", (str(job_id),)
    ).fetchone()["n"]


def deletion_events(db) -> dict[str, int]:
    """job.deleted events in the outbox, by job: one per removal."""
    return {
        r["job_id"]: r["n"]
        for r in db.execute(
            "SELECT event_context->>'job_id' AS job_id, count(*) AS n FROM outbox "
            "WHERE event_type = 'job.deleted' GROUP BY 1"
        )
    }


def event_types_in_clickhouse(ch, job_id) -> list[str]:
    return sorted(
        r[0]
        for r in ch.query(
            "SELECT event_type FROM event_log WHERE job_id = {j:UUID}",
            parameters={"j": str(job_id)},
        ).result_rows
    )


def relay_everything(db, ch, settings) -> None:
    """What an idle relay does: the outbox into event_log, then deleted jobs' events out."""
    drain(db, ch, settings)
    event_log.delete_events_of_deleted_jobs(db, ch)


@pytest.fixture
def keep(settings):
    """The test's settings with a default retention of 30 days, read 3 expired jobs at a time,
    relay batches going out at once, the API's own periodic sweep off."""
    return dataclasses.replace(
        settings,
        retention_days=30,
        retention_batch=3,
        retention_interval_s=0,
        relay_batch_max_wait_s=0.0,
    )


@pytest.fixture
def run_command(run_script, keep):
    """`python eventhorizon.py retention <args>` with the `keep` settings."""

    def run(*args: str) -> subprocess.CompletedProcess:
        return run_script(
            "eventhorizon.py", "retention", *args, env=settings_env(keep), timeout=120
        )

    return run


# --------------------------------------------------------------------------- what is removed


async def test_a_job_past_its_retention_leaves_postgres_s3_and_clickhouse_and_nothing_else(
    keep, db
):
    """Alice keeps 1 day, Bob 90 days, Dave for ever, Carol the default 30. A sweep removes
    Alice's 2-day-old job and Carol's 40-day-old one everywhere; Alice's new job, Bob's and
    Dave's old ones, Alice's old job a worker is processing and her old queued job a worker has
    just locked stay whole. The relay then deletes the removed jobs' events from ClickHouse,
    a job.deleted event staying for each."""
    own_retention(db, "alice", 1)
    own_retention(db, "bob", 90)
    own_retention(db, "dave", None)
    jobs_of = {}
    for name, owner, days in [
        ("alice_old", "alice", 2),
        ("alice_new", "alice", 0),
        ("bob_old", "bob", 40),
        ("carol_old", "carol", 40),
        ("dave_ancient", "dave", 4000),
    ]:
        job_id = make_job(keep, db, CONTENT, owner=owner)
        assert run_job(keep, job_id) == "completed"
        aged(db, job_id, days)
        jobs_of[name] = job_id
    processing = make_job(keep, db, CONTENT, owner="alice")
    db.execute(
        "UPDATE jobs SET status = 'processing', started_at = now() WHERE job_id = %s", (processing,)
    )
    aged(db, processing, 5)
    claimed = make_job(keep, db, CONTENT, owner="alice")
    aged(db, claimed, 5)
    gone = {jobs_of["alice_old"], jobs_of["carol_old"]}
    kept = set(jobs_of.values()) - gone | {processing, claimed}

    ch = event_log.connect_clickhouse(keep.clickhouse_url)
    try:
        relay_everything(db, ch, keep)  # every event in ClickHouse before the sweep
        before = {job_id: event_types_in_clickhouse(ch, job_id) for job_id in jobs_of.values()}
        assert all(
            types == ["job.completed", "job.started", "order.created", "order.created"]
            for types in before.values()
        )
        with psycopg.connect(keep.database_url, autocommit=True) as a_worker:
            a_worker.execute(core.QUERIES["try_lock_job"], {"job_id": claimed})
            swept = await retention.sweep(keep, core.s3_client(keep))
        assert swept.ran and {j.job_id for j in swept.removed} == gone
        assert swept.skipped == 1  # the claimed one; the processing one is not even read

        for job_id in gone:
            assert db.execute("SELECT 1 FROM jobs WHERE job_id = %s", (job_id,)).fetchone() is None
            assert rows_of(db, "log_entries", job_id) == rows_of(db, "line_errors", job_id) == 0
            deletion = db.execute(
                "SELECT * FROM job_deletions WHERE job_id = %s", (job_id,)
            ).fetchone()
            assert deletion["deleted_by"] == retention.SWEEPER
        assert sorted(stored_keys(keep)) == sorted(f"uploads/{j}.jsonl" for j in kept)
        for job_id in kept - {processing, claimed}:
            assert (rows_of(db, "log_entries", job_id), rows_of(db, "line_errors", job_id)) == (
                2,
                1,
            )

        relay_everything(db, ch, keep)
        assert ch.query(
            "SELECT count() FROM system.mutations WHERE database = currentDatabase() "
            "AND table = 'event_log'"
        ).result_rows == [(1,)]  # both jobs at once
        for job_id in gone:
            assert event_types_in_clickhouse(ch, job_id) == ["job.deleted"]
            assert outbox_rows_of(db, job_id) == 0
        for job_id in set(jobs_of.values()) - gone:
            assert event_types_in_clickhouse(ch, job_id) == before[job_id]
        assert (
            db.execute(
                "SELECT count(*) AS n FROM job_deletions WHERE clickhouse_at IS NULL"
            ).fetchone()["n"]
            == 0
        )
    finally:
        ch.close()
    # The two left for later go once they are free and finished.
    db.execute("UPDATE jobs SET status = 'completed' WHERE job_id = %s", (processing,))
    again = await retention.sweep(keep, core.s3_client(keep))
    assert {j.job_id for j in again.removed} == {processing, claimed}


async def test_nothing_is_removed_with_the_default_of_for_ever(settings, db):
    job_id = make_job(settings, db, CONTENT, owner="alice")
    aged(db, job_id, 36_000)
    swept = await retention.sweep(settings, core.s3_client(settings))
    assert swept.ran and swept.removed == [] and swept.skipped == 0
    own_retention(db, "alice", 36_500)
    assert (await retention.sweep(settings, core.s3_client(settings))).removed == []
    own_retention(db, "alice", 1)
    assert [
        j.job_id for j in (await retention.sweep(settings, core.s3_client(settings))).removed
    ] == [job_id]


# --------------------------------------------------------------------------- sweepers at once


async def test_two_sweepers_at_once_remove_each_job_once(keep, db):
    """Three sweeps' work run side by side without the sweep's lock (what it would be without
    it: each job's removal locks its row and re-checks it), then two `retention sweep`
    commands at once (with it): every job removed once, one job.deleted event each."""
    s3 = core.s3_client(keep)
    first = [make_job(keep, db, CONTENT, owner=f"o{i % 4}") for i in range(24)]
    for job_id in first:
        aged(db, job_id, 31)

    async def unlocked_sweep() -> retention.Swept:
        async with await psycopg.AsyncConnection.connect(
            keep.database_url, autocommit=True
        ) as aconn:
            return await retention.sweep_locked(aconn, keep, s3)

    sweeps = await asyncio.gather(*(unlocked_sweep() for _ in range(3)))
    removed = [j.job_id for s in sweeps for j in s.removed]
    assert sorted(removed) == sorted(first)  # each once, between them
    assert deletion_events(db) == {str(j): 1 for j in first}

    second = [make_job(keep, db, CONTENT, owner="o9") for _ in range(30)]
    for job_id in second:
        aged(db, job_id, 31)
    commands = [
        subprocess.Popen(
            [sys.executable, str(core.ROOT / "eventhorizon.py"), "retention", "sweep"],
            env=settings_env(keep),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [json.loads(p.communicate(timeout=120)[0].splitlines()[-1]) for p in commands]
    assert [p.returncode for p in commands] == [0, 0]
    removed = [j["job_id"] for out in outputs for j in out["removed"]]
    assert sorted(removed) == sorted(map(str, second))
    assert deletion_events(db) == {str(j): 1 for j in first + second}
    assert db.execute("SELECT count(*) AS n FROM job_deletions").fetchone()["n"] == 54
    assert stored_keys(keep) == []


async def test_a_sweep_skips_while_another_holds_the_lock(keep, db):
    job_id = make_job(keep, db, CONTENT)
    aged(db, job_id, 31)
    with psycopg.connect(keep.database_url, autocommit=True) as other:
        other.execute(core.QUERIES["try_lock_retention_sweep"])  # "another process sweeping"
        swept = await retention.sweep(keep, core.s3_client(keep))
        assert not swept.ran and swept.removed == []
        assert db.execute("SELECT 1 FROM jobs WHERE job_id = %s", (job_id,)).fetchone()
    # Its connection closed, the lock is free again.
    assert [j.job_id for j in (await retention.sweep(keep, core.s3_client(keep))).removed] == [
        job_id
    ]


# --------------------------------------------------------------------------- ingest goes on


class PausingS3:
    """The real S3 client, but the sweep's first object delete waits until the test lets it
    go: the sweep then holds a job's removal open (its transaction, row and worker lock)."""

    def __init__(self, s3):
        self.s3, self.paused, self.go = s3, threading.Event(), threading.Event()

    def delete_object(self, **kwargs):
        if not self.paused.is_set():
            self.paused.set()
            assert self.go.wait(timeout=120), "the test never let the sweep go on"
        return self.s3.delete_object(**kwargs)


async def test_uploads_are_accepted_and_completed_while_a_sweep_runs(
    keep, client, db, start_process
):
    """A sweep stopped in the middle of a removal, its transaction open: uploads meanwhile are
    accepted, processed by a worker and completed; then the sweep finishes, removing every
    expired job and none of the new ones."""
    expired = [make_job(keep, db, CONTENT, owner="tester") for _ in range(10)]
    for job_id in expired:
        aged(db, job_id, 31)
    start_process("worker.py")
    s3 = PausingS3(core.s3_client(keep))
    sweeping = asyncio.create_task(retention.sweep(keep, s3))
    try:
        await wait_until(lambda: s3.paused.is_set(), 30, what="the sweep to begin a removal")
        uploaded = []
        for i in range(3):
            response = await upload(client, CONTENT, name=f"during-{i}.jsonl")
            assert response.status == 202, await response.text()
            uploaded.append((await response.json())["job_id"])
        for job_id in uploaded:
            assert (await completed_job(client, job_id))["lines_valid"] == 2
        assert not sweeping.done()
    finally:
        s3.go.set()
    swept = await sweeping
    assert sorted(j.job_id for j in swept.removed) == sorted(expired)
    left = {str(r["job_id"]) for r in db.execute("SELECT job_id FROM jobs")}
    assert left == set(uploaded)


async def test_an_interrupted_removal_is_finished_by_the_next_sweep(keep, db):
    """A sweep cancelled after the job's object was deleted and before its transaction
    committed (a process stopped mid-removal): the job is still whole in Postgres, and the
    next sweep removes it (a missing object's delete succeeds)."""
    job_id = make_job(keep, db, CONTENT)
    assert run_job(keep, job_id) == "completed"
    aged(db, job_id, 31)
    s3 = PausingS3(core.s3_client(keep))
    sweeping = asyncio.create_task(retention.sweep(keep, s3))
    await wait_until(lambda: s3.paused.is_set(), 30, what="the sweep to begin the removal")
    s3.s3.delete_object(Bucket=keep.s3_bucket, Key=f"uploads/{job_id}.jsonl")  # "it was done"
    sweeping.cancel()
    s3.go.set()
    with pytest.raises(asyncio.CancelledError):
        await sweeping
    assert rows_of(db, "log_entries", job_id) == 2 and stored_keys(keep) == []
    swept = await retention.sweep(keep, core.s3_client(keep))
    assert [j.job_id for j in swept.removed] == [job_id]
    assert rows_of(db, "log_entries", job_id) == 0


class RefusingS3:
    """The real S3 client, but the object of one job is refused (`status`: 403, a reason of
    the object's own; 503, S3 being away)."""

    def __init__(self, s3, refused_key: str, status: int):
        self.s3, self.refused_key, self.status = s3, refused_key, status

    def delete_object(self, **kwargs):
        if kwargs["Key"] == self.refused_key:
            raise ClientError(
                {
                    "Error": {"Code": "Refused", "Message": "no"},
                    "ResponseMetadata": {"HTTPStatusCode": self.status},
                },
                "DeleteObject",
            )
        return self.s3.delete_object(**kwargs)


async def test_a_job_whose_removal_fails_holds_back_no_other_and_an_outage_stops_the_sweep(
    keep, db
):
    """The oldest job's object is refused (403): the sweep logs it, counts it failed and goes
    on with the others; the job stays whole, for the next sweep. S3 away (503) stops the sweep
    where it is, everything not yet removed left for the next one."""
    oldest, *others = [make_job(keep, db, CONTENT) for _ in range(5)]
    aged(db, oldest, 40)
    for job_id in others:
        aged(db, job_id, 31)
    failed_before = observe.RETENTION_REMOVED.labels("failed")._value.get()
    s3 = core.s3_client(keep)
    swept = await retention.sweep(keep, RefusingS3(s3, f"uploads/{oldest}.jsonl", 403))
    assert sorted(j.job_id for j in swept.removed) == sorted(others) and swept.failed == 1
    assert observe.RETENTION_REMOVED.labels("failed")._value.get() == failed_before + 1
    assert stored_keys(keep) == [f"uploads/{oldest}.jsonl"]
    assert db.execute("SELECT job_id FROM jobs").fetchall() == [{"job_id": oldest}]

    late = make_job(keep, db, CONTENT)
    aged(db, late, 31)
    with pytest.raises(ClientError):
        await retention.sweep(keep, RefusingS3(s3, f"uploads/{oldest}.jsonl", 503))
    assert {r["job_id"] for r in db.execute("SELECT job_id FROM jobs")} == {oldest, late}
    swept = await retention.sweep(keep, s3)
    assert {j.job_id for j in swept.removed} == {oldest, late} and swept.failed == 0


async def test_each_api_process_sweeps_by_itself(settings, aiohttp_client, make_token, db):
    often = dataclasses.replace(settings, retention_days=1, retention_interval_s=0.2)
    job_id = make_job(often, db, CONTENT)
    aged(db, job_id, 2)
    await aiohttp_client(eventhorizon.init_app(often), headers=bearer(make_token()))
    await wait_until(
        lambda: db.execute("SELECT 1 FROM job_deletions WHERE job_id = %s", (job_id,)).fetchone(),
        30,
        what="the API to sweep",
    )
    assert db.execute("SELECT 1 FROM jobs").fetchone() is None


async def test_the_periodic_sweep_outlives_a_failed_sweep(keep, db, monkeypatch):
    """A sweep that fails (Postgres away, say) is logged and the next one runs: the task
    never ends by itself."""
    job_id = make_job(keep, db, CONTENT)
    aged(db, job_id, 31)
    real_sweep, calls = retention.sweep, []

    async def failing_once(settings, s3):
        calls.append(1)
        if len(calls) == 1:
            raise psycopg.OperationalError("connection refused")
        return await real_sweep(settings, s3)

    monkeypatch.setattr(retention, "sweep", failing_once)
    task = asyncio.create_task(
        retention.sweep_periodically(
            dataclasses.replace(keep, retention_interval_s=0.05), core.s3_client(keep)
        )
    )
    try:
        await wait_until(
            lambda: db.execute(
                "SELECT 1 FROM job_deletions WHERE job_id = %s", (job_id,)
            ).fetchone(),
            30,
            what="a second sweep",
        )
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --------------------------------------------------------------------------- the admin route


async def test_an_admin_sets_reads_and_clears_an_owners_retention(two_owners, db):
    alice, bob, root = two_owners
    path = "/api/v1/admin/owners/alice/retention"
    answer = await (await root.get(path)).json()
    assert answer == {
        "owner": "alice",
        "days": None,
        "source": "default",
        "default_days": None,
        "set_by": None,
        "set_at": None,
    }
    response = await root.put(path, json={"days": 7})
    assert response.status == 200, await response.text()
    assert (await response.json())["days"] == 7
    answer = await (await root.get(path)).json()
    assert (answer["days"], answer["source"], answer["set_by"]) == (7, "owner", "root")
    assert (
        db.execute("SELECT days FROM owner_retention WHERE owner = 'alice'").fetchone()["days"] == 7
    )
    answer = await (await root.put(path, json={"days": None})).json()
    assert (answer["days"], answer["source"]) == (None, "owner")  # for ever, by her own
    assert (await root.delete(path)).status == 204
    assert (await (await root.get(path)).json())["source"] == "default"
    assert (await root.delete(path)).status == 204  # again: nothing to clear, still 204


async def test_the_retention_route_refuses_non_admins_and_bad_input(two_owners, db):
    alice, bob, root = two_owners
    path = "/api/v1/admin/owners/alice/retention"
    for client in (alice, bob):
        for method, kwargs in (("GET", {}), ("PUT", {"json": {"days": 1}}), ("DELETE", {})):
            async with client.request(method, path, **kwargs) as response:
                body = await assert_problem(response, 403)
                assert "admin" in body["detail"]
    for days in (0, -1, 36_501, 10**30, "7", True, 1.5, [7], {"n": 7}):
        async with root.put(path, json={"days": days}) as response:
            body = await assert_problem(response, 422)
            assert "days must be a whole number from 1 to 36500" in body["detail"]
    for body in (b"{}", b'{"days": 7, "owner": "bob"}', b"[7]", b"7", b"null"):
        async with root.put(
            path, data=body, headers={"Content-Type": "application/json"}
        ) as response:
            body = await assert_problem(response, 422)
            assert body["detail"].startswith('the body must be {"days": N}')
    async with root.put(
        path, data=b"{days: 7}", headers={"Content-Type": "application/json"}
    ) as response:
        await assert_problem(response, 400)
    async with root.put(path, data=b'{"days": 7}') as response:
        await assert_problem(response, 415)
    async with root.put(path, json={"days": 7, "pad": "x" * 2000}) as response:
        await assert_problem(response, 413)
    for owner in ("no%20spaces", "-dash-first", "x" * 65):
        async with root.get(f"/api/v1/admin/owners/{owner}/retention") as response:
            body = await assert_problem(response, 422)
            assert "owner must be" in body["detail"]
    assert db.execute("SELECT count(*) AS n FROM owner_retention").fetchone()["n"] == 0


# --------------------------------------------------------------------------- the command


def test_the_retention_command_sets_shows_clears_and_sweeps(keep, db, run_command):
    def ok(*args: str) -> dict:
        done = run_command(*args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])  # after the log lines

    answer = ok("set", "--owner", "alice", "--days", "7")
    assert (answer["days"], answer["source"], answer["default_days"]) == (7, "owner", 30)
    assert answer["set_by"].startswith("os:")
    assert ok("set", "--owner", "bob", "--forever")["days"] is None
    shown = ok("show")
    assert shown["default_days"] == 30
    assert [(o["owner"], o["days"]) for o in shown["owners"]] == [("alice", 7), ("bob", None)]
    assert ok("clear", "--owner", "bob")["source"] == "default"
    assert [o["owner"] for o in ok("show")["owners"]] == ["alice"]

    for args, message in (
        (["--days", "0"], "days must be"),
        (["--days", "36501"], "days must be"),
        (["--days", "1", "--forever"], "not allowed with"),
    ):
        done = run_command("set", "--owner", "alice", *args)
        assert done.returncode != 0 and message in done.stderr, done.stderr
    done = run_command("set", "--owner", "no spaces", "--days", "1")
    assert done.returncode == 1 and "owner must be" in done.stderr
    assert ok("show")["owners"][0]["days"] == 7  # the refusals changed nothing

    old, new = (
        make_job(keep, db, CONTENT, owner="alice"),
        make_job(keep, db, CONTENT, owner="alice"),
    )
    aged(db, old, 8)
    aged(db, new, 6)
    swept = ok("sweep")
    assert swept["ran"] and [j["job_id"] for j in swept["removed"]] == [str(old)]
    assert swept["removed"][0]["owner"] == "alice"
    assert stored_keys(keep) == [f"uploads/{new}.jsonl"]
    assert ok("sweep")["removed"] == []


def test_days_are_checked_alike_everywhere():
    assert retention.check_days(None) is None
    assert retention.check_days(1) == 1 and retention.check_days(36_500) == 36_500
    for bad in (0, 36_501, True, 2.0, "3"):
        with pytest.raises(retention.InvalidRetention):
            retention.check_days(bad)
    with pytest.raises(config.ConfigError, match="EH_RETENTION_DAYS must be <= 36500"):
        config.Settings.from_env({"EH_RETENTION_DAYS": "36501"})
    assert config.Settings.from_env({"EH_RETENTION_DAYS": "30"}).retention_days == 30
