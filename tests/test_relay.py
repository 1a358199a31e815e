"""The relay moves every committed outbox event into ClickHouse's event_log exactly once.

Real Postgres (a fresh database per test) and a real ClickHouse server over HTTP (the
session's scripts/clickhouse-server, a database per test), read while relays run. A few tests
use the embedded engine (`chdb://`, a fresh directory per test), the one-process setup; chDB
lets one process at a time open a directory, so those read event_log once relay.py is gone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psycopg
import pytest
import structlog.testing

import config
import core
import event_log
import outbox
import outbox_batches
import relay
import stopping
from helpers import (
    ROOT,
    drain,
    event_log_ids,
    outbox_status,
    publish_events,
    publish_line_range,
    read_event_log_ids,
    wait_for,
)
from processes import log_lines, settings_env


@pytest.fixture
def chdb_settings(relay_settings, tmp_path) -> config.Settings:
    """The same, on the embedded engine: a ClickHouse directory of this test's own."""
    return dataclasses.replace(relay_settings, clickhouse_url=f"chdb://{tmp_path / 'clickhouse'}")


@pytest.fixture(params=["http", "chdb"])
def each_settings(request, relay_settings, chdb_settings) -> config.Settings:
    """The test runs against the server and against the embedded engine."""
    return relay_settings if request.param == "http" else chdb_settings


@pytest.fixture
def ch(relay_settings):
    client = event_log.connect_clickhouse(relay_settings.clickhouse_url)
    yield client
    client.close()


# --------------------------------------------------------------------------- in-process


def test_a_committed_event_is_delivered_and_a_rolled_back_one_is_not(db, each_settings):
    with event_log.connect_clickhouse(each_settings.clickhouse_url) as ch:
        deliver_one_committed_event(db, ch, each_settings)


def deliver_one_committed_event(db, ch, relay_settings):
    when = dt.datetime(2026, 3, 1, 12, 30, 45, tzinfo=dt.timezone.utc)
    context = {"job_id": str(uuid.uuid4()), "n": 3, "nested": {"ok": True, "tags": ["a", "b"]}}
    with psycopg.connect(relay_settings.database_url) as conn:
        with conn.transaction() as tx:
            gone = outbox.publish_event(conn, "test.rolled_back", {"n": 1}, environment="test")
            raise psycopg.Rollback(tx)
    with psycopg.connect(relay_settings.database_url) as conn:
        kept = outbox.publish_event(
            conn, "test.committed", context, environment="staging", event_date_time=when
        )
    assert outbox_status(db) == {"backlog": 1, "oldest_age_s": pytest.approx(0, abs=5), "dead": 0}

    assert drain(db, ch, relay_settings) == 1

    rows = ch.query(
        "SELECT event_id, event_type, toUnixTimestamp(event_date_time), environment,"
        " event_context, metadata_version FROM event_log"
    ).result_rows
    assert rows == [(kept, "test.committed", int(when.timestamp()), "staging", context, 1)]
    assert gone not in event_log_ids(ch)
    assert outbox_status(db) == {"backlog": 0, "oldest_age_s": 0, "dead": 0}
    assert db.execute("SELECT count(*) AS n FROM outbox_batch").fetchone()["n"] == 0


def test_n_events_arrive_exactly_once(db, ch, relay_settings):
    published = publish_events(relay_settings.database_url, 1000)
    with psycopg.connect(relay_settings.database_url) as conn:
        published += [
            outbox.publish_event(conn, "test.single", {"i": i}, environment="test")
            for i in range(50)
        ]

    assert drain(db, ch, relay_settings) == 1050

    ids = event_log_ids(ch)
    assert len(ids) == 1050 and set(ids) == set(published)
    assert outbox_status(db)["backlog"] == 0


def test_a_small_batch_waits_for_more_rows_up_to_max_wait(db, ch, relay_settings):
    """Rows are aged by moving their created_at back, not by sleeping: an hour's wait leaves
    no window a slow machine could miss."""
    settings = dataclasses.replace(
        relay_settings, relay_batch_max_rows=100, relay_batch_max_wait_s=3600
    )
    publish_events(settings.database_url, 10)
    assert relay.relay_once(db, ch, settings) == 0  # too young, too few: wait for company
    assert outbox_batches.outbox_pending(db, 100)[0] == 10
    publish_events(settings.database_url, 95)
    assert relay.relay_once(db, ch, settings) == 100  # a full batch goes at once
    assert relay.relay_once(db, ch, settings) == 0  # the 5 left are still young
    db.execute("UPDATE outbox SET created_at = created_at - interval '3601 seconds'")
    assert relay.relay_once(db, ch, settings) == 5  # its oldest row has waited long enough
    assert len(event_log_ids(ch)) == 105


def test_a_clickhouse_error_keeps_the_rows_and_never_dead_letters(db, ch, relay_settings):
    published = publish_events(relay_settings.database_url, 250)
    ch.command("DROP TABLE event_log")  # a server-side failure that is not about the data

    for _ in range(relay.DEAD_AFTER_ATTEMPTS + 2):
        with pytest.raises(event_log.ClickHouseUnavailable, match="event_log"):
            relay.relay_once(db, ch, relay_settings)

    assert outbox_status(db)["backlog"] == 250
    assert outbox_status(db)["dead"] == 0
    batches = db.execute("SELECT attempts FROM outbox_batch").fetchall()
    assert batches == [{"attempts": 0}]  # one batch, recorded once, resent each time

    event_log.ensure_event_log(ch)  # ClickHouse is back
    assert drain(db, ch, relay_settings) == 250
    ids = event_log_ids(ch)
    assert len(ids) == 250 and set(ids) == set(published)


def publish_poison(conn, kind: str) -> uuid.UUID:
    """An event Postgres takes and ClickHouse refuses, on the caller's transaction."""
    if kind == "dotted_key_clash":
        # Two different keys for Postgres; ClickHouse's JSON type refuses them, both being the
        # path a.b: INCORRECT_DATA, "Duplicate path found during parsing".
        return outbox.publish_event(
            conn, "test.poison", {"a.b": 1, "a": {"b": 2}}, environment="test"
        )
    # A timestamptz before 1970 that DateTime cannot hold: ClickHouse refuses it
    # (date_time_overflow_behavior='throw', event_log.INSERT_SETTINGS) rather than clamping it.
    return outbox.publish_event(
        conn,
        "test.poison",
        {},
        environment="test",
        event_date_time=dt.datetime(1960, 1, 1, tzinfo=dt.timezone.utc),
    )


POISON_ERRORS = {"dotted_key_clash": "INCORRECT_DATA", "date_out_of_range": "event_date_time"}


def refuse_until_the_last_attempt(db, ch, relay_settings, backlog: int) -> None:
    for attempt in range(1, relay.DEAD_AFTER_ATTEMPTS):
        with pytest.raises(relay.BatchRejected) as rejected:
            relay.relay_once(db, ch, relay_settings)
        assert rejected.value.attempts == attempt
        assert outbox_status(db)["backlog"] == backlog  # kept while attempts remain


@pytest.mark.parametrize("poison", ["dotted_key_clash", "date_out_of_range"])
def test_a_refused_batch_is_salvaged_and_only_the_bad_event_goes_to_outbox_dead(
    db, each_settings, poison
):
    relay_settings = each_settings
    with event_log.connect_clickhouse(relay_settings.clickhouse_url) as ch:
        salvage_one_bad_event(db, ch, relay_settings, poison)


def salvage_one_bad_event(db, ch, relay_settings, poison):
    with psycopg.connect(relay_settings.database_url) as conn:
        good = [
            outbox.publish_event(conn, "test.good", {"i": i}, environment="test") for i in range(3)
        ]
        bad = publish_poison(conn, poison)

    refuse_until_the_last_attempt(db, ch, relay_settings, backlog=4)
    assert relay.relay_once(db, ch, relay_settings) == 3  # the last attempt salvages the batch

    assert sorted(event_log_ids(ch)) == sorted(good)
    dead = db.execute("SELECT event_id, event_type, error FROM outbox_dead").fetchall()
    assert [(d["event_id"], d["event_type"]) for d in dead] == [(bad, "test.poison")]
    assert POISON_ERRORS[poison] in dead[0]["error"]
    assert outbox_status(db) == {"backlog": 0, "oldest_age_s": 0, "dead": 1}
    assert db.execute("SELECT count(*) AS n FROM outbox_batch").fetchone()["n"] == 0

    later = publish_events(relay_settings.database_url, 5)
    assert drain(db, ch, relay_settings) == 5
    assert sorted(event_log_ids(ch)) == sorted(good + later)


def test_salvage_finds_scattered_bad_events_in_a_few_inserts(db, ch, relay_settings):
    settings = dataclasses.replace(relay_settings, relay_batch_max_rows=1_000)
    good, bad = [], []
    with psycopg.connect(settings.database_url) as conn:
        for i in range(1_000):
            if i in (17, 500, 873):
                bad.append(publish_poison(conn, "dotted_key_clash"))
            else:
                good.append(outbox.publish_event(conn, "test.good", {"i": i}, environment="test"))

    refuse_until_the_last_attempt(db, ch, settings, backlog=1_000)
    inserts = []
    with structlog.testing.capture_logs() as logs:
        assert relay.relay_once(db, ch, settings, after_insert=inserts.append) == 997

    ids = event_log_ids(ch)
    assert len(ids) == 997 and set(ids) == set(good)
    dead = db.execute("SELECT event_id FROM outbox_dead ORDER BY id").fetchall()
    assert [d["event_id"] for d in dead] == bad
    assert len(inserts) <= 3 * 10  # about log2(1000) accepted parts per bad event, not 997
    dead_logged = [entry for entry in logs if entry["event"] == "relay.batch_dead"]
    assert len(dead_logged) == 1
    assert dead_logged[0]["rows_sent"] == 997 and dead_logged[0]["rows_dead"] == 3


def test_salvage_gives_up_no_good_event_however_many_bad_ones(db, ch, relay_settings):
    """One event in fifty is bad: more refusals than one salvage may spend. The parts still
    refused are recorded as batches of their own and salvaged in turn; in the end ClickHouse
    has every good event once and outbox_dead exactly the bad ones."""
    settings = dataclasses.replace(relay_settings, relay_batch_max_rows=2_000)
    good, bad = [], []
    with psycopg.connect(settings.database_url) as conn:
        for i in range(2_000):
            if i % 50 == 25:
                bad.append(publish_poison(conn, "dotted_key_clash"))
            else:
                good.append(outbox.publish_event(conn, "test.good", {"i": i}, environment="test"))

    refuse_until_the_last_attempt(db, ch, settings, backlog=2_000)
    with structlog.testing.capture_logs() as logs:
        for _ in range(50):
            relay.relay_once(db, ch, settings)
            if outbox_status(db)["backlog"] == 0:
                break
    assert any(entry.get("rows_left", 0) > 0 for entry in logs)  # the budget was spent

    ids = event_log_ids(ch)
    assert len(ids) == len(good) == 1_960 and set(ids) == set(good)
    dead = db.execute("SELECT event_id FROM outbox_dead ORDER BY id").fetchall()
    assert [d["event_id"] for d in dead] == bad
    assert db.execute("SELECT count(*) AS n FROM outbox_batch").fetchone()["n"] == 0


def test_a_relay_that_dies_while_salvaging_doubles_nothing(db, ch, relay_settings):
    """The relay dies after ClickHouse took some of the parts, before Postgres committed; the
    next attempt halves the batch the same way, and ClickHouse drops the parts it has."""
    settings = dataclasses.replace(relay_settings, relay_batch_max_rows=200)
    with psycopg.connect(settings.database_url) as conn:
        good = [
            outbox.publish_event(conn, "test.good", {"i": i}, environment="test")
            for i in range(150)
        ]
        bad = publish_poison(conn, "date_out_of_range")
        good += [
            outbox.publish_event(conn, "test.good", {"i": i}, environment="test")
            for i in range(150, 199)
        ]

    parts = []

    def die_on_the_third_part(rows):
        parts.append(rows)
        if len(parts) == 3:
            raise ConnectionResetError("the relay died")

    refuse_until_the_last_attempt(db, ch, settings, backlog=200)
    with pytest.raises(ConnectionResetError):
        relay.relay_once(db, ch, settings, after_insert=die_on_the_third_part)
    assert outbox_status(db) == {
        "backlog": 200,
        "oldest_age_s": pytest.approx(0, abs=60),
        "dead": 0,
    }
    assert 0 < len(event_log_ids(ch)) < 199  # some parts are in ClickHouse already

    assert relay.relay_once(db, ch, settings) == 199
    ids = event_log_ids(ch)
    assert len(ids) == 199 and set(ids) == set(good)
    assert [d["event_id"] for d in db.execute("SELECT event_id FROM outbox_dead")] == [bad]


@pytest.mark.parametrize("rows", ["events", "line_ranges"])
def test_a_resent_batch_clickhouse_drops_as_a_duplicate_without_having_it_is_restored(
    db, each_settings, rows
):
    """ClickHouse writes an insert's dedup token before it commits the insert's part; a
    ClickHouse process that dies between the two leaves the token without the rows. Made here
    by hand: a batch is claimed and recorded, and its token used up by another insert whose
    row is then deleted. The re-send is dropped as a duplicate; the relay finds the batch's
    events missing and inserts them under a token of their own, once. Broken, this looks like:
    the batch deleted from the outbox and none of its events in event_log. The same with line
    events, as ranges of 20 lines."""
    settings = each_settings
    if rows == "events":
        published = publish_events(settings.database_url, 120)
    else:
        published = [i for _ in range(6) for i in publish_line_range(settings.database_url, 20)]
    batch, _rows = outbox_batches.claim_batch(db, 100, 0.0)
    with event_log.connect_clickhouse(settings.clickhouse_url) as ch:
        stranger = outbox.make_event("test.stranger", {}, environment="test")
        line = json.dumps(
            {
                "event_id": str(stranger.event_id),
                "event_type": "test.stranger",
                "event_date_time": 0,
                "environment": "test",
                "event_context": {},
                "metadata_version": 1,
            }
        ).encode()
        ch.raw_insert(
            "event_log",
            event_log.EVENT_LOG_COLUMNS,
            insert_block=line,
            fmt="JSONEachRow",
            settings={"insert_deduplication_token": batch.token},
        )
        ch.command(
            "DELETE FROM event_log WHERE event_id = {id:UUID}",
            parameters={"id": str(stranger.event_id)},
        )
        assert event_log_ids(ch) == []  # the token is used, the rows are not there

        with structlog.testing.capture_logs() as logs:
            assert relay.relay_once(db, ch, settings) == 100  # the recorded batch, re-sent
        assert drain(db, ch, settings) == 20
        ids = event_log_ids(ch)
        assert len(ids) == 120 and set(ids) == set(published)
        with structlog.testing.capture_logs() as again:
            relay.restore_missing(ch, _rows)  # all there now: nothing is sent twice
        assert len(event_log_ids(ch)) == 120
    assert [(e["rows"], e["of"]) for e in logs if e["event"] == "relay.batch_restored"] == [
        (100, 100)
    ]
    assert not [e for e in again if e["event"] == "relay.batch_restored"]


def test_a_lane_that_fails_stops_every_lane_and_loses_nothing(db, relay_settings):
    """An unexpected error in one lane (here right after an insert, before the commit) stops
    the other lanes and is raised by run_lanes; the batch it left is re-sent once after."""
    settings = dataclasses.replace(relay_settings, relay_batch_max_rows=50, relay_lanes=3)
    published = publish_events(settings.database_url, 400)

    inserts = []

    def fail_on_the_third_insert(rows):
        inserts.append(rows)
        if len(inserts) == 3:
            raise RuntimeError("a lane's bug")

    stop = stopping.Stopper("relay", settings.stop_grace_s)
    try:
        with pytest.raises(RuntimeError, match="a lane's bug"):
            relay.run_lanes(settings, stop, after_insert=fail_on_the_third_insert)
    finally:
        stop.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("relay-lane-")]
    assert stop.is_set()

    with event_log.connect_clickhouse(settings.clickhouse_url) as ch:
        drain(db, ch, settings)
        ids = event_log_ids(ch)
    assert len(ids) == 400 and set(ids) == set(published)


def test_two_relays_in_one_process_on_chdb_deliver_each_event_once(chdb_settings):
    """Two relays (threads, each with its own Postgres connection and ClickHouse client on
    the one chDB directory, which they share) drain an outbox a producer keeps filling, in
    small batches."""
    settings = dataclasses.replace(chdb_settings, relay_batch_max_rows=37)
    published: list[uuid.UUID] = []
    producing = threading.Event()
    producing.set()
    errors: list[BaseException] = []
    sent_by: dict[str, int] = {}

    def producer():
        try:
            for _ in range(60):
                published.extend(publish_events(settings.database_url, 50))
        except BaseException as exc:
            errors.append(exc)
        finally:
            producing.clear()

    def relay_thread(name):
        sent_by[name] = 0
        try:
            client = event_log.connect_clickhouse(settings.clickhouse_url)
            try:
                with psycopg.connect(settings.database_url, autocommit=True) as conn:
                    while True:
                        busy = producing.is_set()
                        sent = relay.relay_once(conn, client, settings)
                        sent_by[name] += sent
                        if sent == 0 and not busy:
                            return
            finally:
                client.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=producer, daemon=True)] + [
        threading.Thread(target=relay_thread, args=(f"relay-{i}",), daemon=True) for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not [t.name for t in threads if t.is_alive()], "threads still running after 60 s"
    assert not errors, errors

    ids = read_event_log_ids(settings)
    assert len(published) == 3000
    assert len(ids) == 3000 and set(ids) == set(published)
    assert sum(sent_by.values()) == 3000


# --------------------------------------------------------------------------- deleted jobs


def record_deletion(db, job_id: uuid.UUID) -> None:
    """What DELETE /api/v1/jobs/{id} leaves for the relay (its job.deleted event included)."""
    db.execute(
        "INSERT INTO job_deletions (job_id, owner, file_name, deleted_by) "
        "VALUES (%s, 'alice', 'a.jsonl', 'alice')",
        (job_id,),
    )
    outbox.publish_event(db, "job.deleted", {"job_id": str(job_id)}, environment="test")


def job_event_types(ch, job_id: uuid.UUID) -> list[str]:
    return sorted(
        r[0]
        for r in ch.query(
            "SELECT event_type FROM event_log WHERE event_context.job_id::String = {j:String}",
            parameters={"j": str(job_id)},
        ).result_rows
    )


def test_a_deleted_jobs_events_leave_clickhouse_after_its_last_insert(db, ch, relay_settings):
    """The delete waits for every event of the job still in the outbox: a delete run before
    an insert of the job's events would leave those events in event_log for ever."""
    deleted, kept = uuid.uuid4(), uuid.uuid4()
    publish_events(relay_settings.database_url, 150, job_id=str(deleted))
    publish_events(relay_settings.database_url, 20, job_id=str(kept))
    assert relay.relay_once(db, ch, relay_settings) == 100  # 50 of the job still in the outbox
    record_deletion(db, deleted)

    assert event_log.delete_events_of_deleted_jobs(db, ch) == 0  # not yet: its events are queued
    drain(db, ch, relay_settings)
    assert job_event_types(ch, deleted) == ["job.deleted"] + ["test.event"] * 150
    assert event_log.delete_events_of_deleted_jobs(db, ch) == 1

    assert job_event_types(ch, deleted) == ["job.deleted"]  # the audit trail stays
    assert job_event_types(ch, kept) == ["test.event"] * 20
    assert db.execute("SELECT clickhouse_at FROM job_deletions").fetchone()["clickhouse_at"]
    assert event_log.delete_events_of_deleted_jobs(db, ch) == 0  # done once


def test_a_deletion_waits_out_clickhouse(db, ch, relay_settings):
    job_id = uuid.uuid4()
    publish_events(relay_settings.database_url, 10, job_id=str(job_id))
    drain(db, ch, relay_settings)
    record_deletion(db, job_id)
    drain(db, ch, relay_settings)
    ch.command("RENAME TABLE event_log TO event_log_away")  # ClickHouse cannot delete now
    try:
        with pytest.raises(event_log.ClickHouseUnavailable):
            event_log.delete_events_of_deleted_jobs(db, ch)
        assert (
            db.execute("SELECT clickhouse_at FROM job_deletions").fetchone()["clickhouse_at"]
            is None
        )
    finally:
        ch.command("RENAME TABLE event_log_away TO event_log")
    assert event_log.delete_events_of_deleted_jobs(db, ch) == 1
    assert job_event_types(ch, job_id) == ["job.deleted"]


# --------------------------------------------------------------------------- relay.py processes


def start_relay(settings, log_path: Path, **env) -> subprocess.Popen:
    with log_path.open("wb") as log_file:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, str(ROOT / "relay.py")],
            env={**settings_env(settings), **env},
            cwd=log_path.parent,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def stop_relay(proc: subprocess.Popen, sig: signal.Signals = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"relay.py did not stop within 10 s of {sig.name}") from None


@pytest.mark.parametrize("rows", ["events", "line_ranges"])
def test_killed_between_insert_and_commit_no_event_is_doubled(db, each_settings, tmp_path, rows):
    """SIGKILL after ClickHouse took a batch and before Postgres committed; then more events
    arrive, and a relay with a larger batch size takes over. The recorded batch is re-sent with
    the same rows and token (ClickHouse drops it); only the rest is new. The crashing relay
    runs two lanes: the other lane may have recorded, or sent, a batch of its own, which is
    re-sent the same way. On chDB, ClickHouse runs inside the relay and dies with it: the other
    lane's insert may be killed after ClickHouse logged its dedup token and before it committed
    its rows, and only relay.restore_missing gets them in (this test, on a busy machine, lost
    100 of 360 events before it). (The three-relay test in test_faults_delivery.py kills relays at
    random moments on the server.) The same with line events, as ranges of 25 lines."""
    relay_settings = each_settings
    if rows == "events":
        published = publish_events(relay_settings.database_url, 300)
    else:
        published = [
            i for _ in range(12) for i in publish_line_range(relay_settings.database_url, 25)
        ]
    crashing = start_relay(
        relay_settings,
        tmp_path / "crash.log",
        RELAY_BATCH_MAX_ROWS="100",
        RELAY_LANES="2",
        EH_RELAY_CRASH_AFTER_INSERT="1",
    )
    assert crashing.wait(30) == -signal.SIGKILL
    assert outbox_status(db)["backlog"] == 300  # ClickHouse has 100 or 200 of them; Postgres
    recorded = db.execute("SELECT count(*) AS n FROM outbox_batch").fetchone()["n"]  # knows
    assert recorded in (1, 2)  # a batch per lane at most

    published += publish_events(relay_settings.database_url, 50)
    proc = start_relay(
        relay_settings, tmp_path / "relay.log", RELAY_BATCH_MAX_ROWS="1000", RELAY_POLL_S="3600"
    )
    try:
        wait_for(lambda: outbox_status(db)["backlog"] == 0, 60, what="the outbox to drain")
        # Idle now, and the fallback poll is an hour away: only the NOTIFY can wake it.
        published += publish_events(relay_settings.database_url, 10)
        wait_for(lambda: outbox_status(db)["backlog"] == 0, 60, what="a NOTIFY wake-up")
    finally:
        assert stop_relay(proc) == 0

    ids = read_event_log_ids(relay_settings)
    assert len(ids) == 360 and set(ids) == set(published)
    lines = log_lines(tmp_path / "relay.log")
    sent = [line for line in lines if line["event"] == "relay.batch_sent"]
    # Each batch the crash left is re-sent once. (A lane may also send a batch another lane
    # has just claimed, in the moment between its claim and its lock: that one is logged as
    # re-sent too, with the size of the rows claimed after the crash.)
    resent = [line["rows"] for line in sent if line["resent"]]
    assert resent.count(100) == recorded
    assert {"rows", "bytes", "seconds", "lag_s"} <= set(sent[0])
    assert sum(line["rows"] for line in sent) == 360
    assert lines[-1]["event"] == "relay.stopped"


def test_unreachable_clickhouse_backs_off_keeps_everything_then_catches_up(
    db, relay_settings, tmp_path
):
    published = publish_events(relay_settings.database_url, 200)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = dataclasses.replace(
        relay_settings, clickhouse_url=f"http://eh:s3cret-pw@127.0.0.1:{port}/default"
    )
    proc = start_relay(down, tmp_path / "down.log")
    try:
        wait_for(
            lambda: sum(
                line.get("event") == "relay.clickhouse_unavailable"
                for line in log_lines(tmp_path / "down.log")
            )
            >= 4,
            30,
            what="four failed attempts",
        )
    finally:
        assert stop_relay(proc, signal.SIGINT) == 0
    assert outbox_status(db) == {
        "backlog": 200,
        "oldest_age_s": pytest.approx(5, abs=20),
        "dead": 0,
    }

    lines = log_lines(tmp_path / "down.log")
    unavailable = [line for line in lines if line["event"] == "relay.clickhouse_unavailable"]
    # SIGINT came during a back-off (the fourth, at least 3.2 s, unless the test was slow to
    # send it): the relay stopped before that back-off was over, by its own clock, rather
    # than sleeping it out.
    last_retry = log_time(unavailable[-1]) + dt.timedelta(seconds=unavailable[-1]["retry_in_s"])
    assert log_time(lines[-1]) < last_retry
    assert lines[-1]["event"] == "relay.stopped"

    text = (tmp_path / "down.log").read_text()
    assert "s3cret-pw" not in text
    assert lines[0]["event"] == "relay.started" and "***" in lines[0]["clickhouse"]
    delays = [
        line["retry_in_s"] for line in lines if line["event"] == "relay.clickhouse_unavailable"
    ]
    assert delays[0] <= core.Backoff().first and delays[2] > delays[0]  # exponential
    assert outbox_status(db)["backlog"] == 200

    with event_log.connect_clickhouse(relay_settings.clickhouse_url) as client:  # back up
        assert drain(db, client, relay_settings) == 200
        ids = event_log_ids(client)
    assert len(ids) == 200 and set(ids) == set(published)


def log_time(line: dict) -> dt.datetime:
    return dt.datetime.fromisoformat(line["timestamp"])


def test_a_running_relay_waits_out_chdb_and_then_catches_up(db, chdb_settings, tmp_path):
    """The same relay process, no restart: the chDB directory cannot be opened (another
    process holds it), then can. The outbox keeps every event meanwhile, and the relay delivers
    each once as soon as it gets through. (The server killed mid-stream:
    test_faults_delivery.py.)"""
    relay_settings = chdb_settings
    published = publish_events(relay_settings.database_url, 200)
    holder = event_log.connect_clickhouse(relay_settings.clickhouse_url)
    proc = start_relay(relay_settings, tmp_path / "relay.log", RELAY_POLL_S="30")
    try:
        wait_for(
            lambda: sum(
                line.get("event") == "relay.clickhouse_unavailable"
                for line in log_lines(tmp_path / "relay.log")
            )
            >= 2,
            20,
            what="two failed attempts",
        )
        assert outbox_status(db)["backlog"] == 200
        holder.close()  # ClickHouse is back
        published += publish_events(relay_settings.database_url, 50)
        wait_for(lambda: outbox_status(db)["backlog"] == 0, 60, what="the outbox to drain")
    finally:
        assert stop_relay(proc) == 0

    ids = read_event_log_ids(relay_settings)
    assert len(ids) == 250 and set(ids) == set(published)
    sent = [
        line for line in log_lines(tmp_path / "relay.log") if line["event"] == "relay.batch_sent"
    ]
    assert sum(line["rows"] for line in sent) == 250
