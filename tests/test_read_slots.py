"""The API's ClickHouse read slots are shared per owner: one owner's flood of reads waits in
its own queue while another owner's reads are served, a GraphQL query reading many jobs is
answered a share at a time, and only an owner's genuine overload is refused."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import uuid

import clickhouse_connect
import pytest

import api_state
import event_log
import eventhorizon
import explore
import graphql_resolvers
import read_slots
from helpers import bearer, gql, make_job

# --------------------------------------------------------------------------- the slots alone


async def hold(slots: read_slots.ReadSlots, owner: str, release: asyncio.Event, log: list):
    async with slots.slot(owner):
        log.append(owner)
        await release.wait()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_owner_holds_at_most_its_share_and_owners_take_turns():
    slots = read_slots.ReadSlots(3, 2, queue_per_owner=10, max_wait_s=60)
    release, started = asyncio.Event(), []
    tasks = [asyncio.create_task(hold(slots, "alice", release, started)) for _ in range(5)]
    await settle()
    assert started == ["alice", "alice"] and slots.running == 2  # her share, one slot free
    bob = asyncio.create_task(hold(slots, "bob", release, started))
    await settle()
    assert started[-1] == "bob" and slots.running == 3
    release.set()
    await asyncio.gather(*tasks, bob)
    assert started.count("alice") == 5 and slots.running == 0 and not slots.waiting


async def test_past_its_queue_an_owner_is_refused_and_others_are_not():
    slots = read_slots.ReadSlots(2, 1, queue_per_owner=2, max_wait_s=60)
    release, started = asyncio.Event(), []
    tasks = [asyncio.create_task(hold(slots, "alice", release, started)) for _ in range(3)]
    await settle()
    with pytest.raises(read_slots.OwnerQueueFull, match="EH_EXPLORE_QUEUE_PER_OWNER"):
        await hold(slots, "alice", release, started)
    bob = asyncio.create_task(hold(slots, "bob", release, started))
    await settle()
    assert "bob" in started
    release.set()
    await asyncio.gather(*tasks, bob)


async def test_a_read_that_waits_too_long_is_refused_and_a_cancelled_one_gives_its_place_back():
    slots = read_slots.ReadSlots(1, 1, queue_per_owner=10, max_wait_s=0.2)
    release, started = asyncio.Event(), []
    first = asyncio.create_task(hold(slots, "alice", release, started))
    await settle()
    with pytest.raises(read_slots.WaitedTooLong) as waited:
        await hold(slots, "alice", release, started)
    assert waited.value.retry_after_s >= 1
    cancelled = asyncio.create_task(hold(slots, "alice", release, started))
    await settle()
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert not slots.waiting
    release.set()
    await first
    assert slots.running == 0 and not slots.running_by_owner


# --------------------------------------------------------------------------- through the API


@pytest.fixture
def held_reads(settings, monkeypatch):
    """ClickHouse reads of the jobs in `.jobs` wait (in their thread) until `.release` is set:
    a slow ClickHouse for those jobs only. event_log exists, for the others' real reads."""
    with clickhouse_connect.get_client(dsn=settings.clickhouse_url) as ch:
        event_log.ensure_event_log(ch)
    state = HeldReads()
    for name in ("job_histogram", "job_events"):
        real = getattr(explore, name)
        monkeypatch.setattr(explore, name, state.wrap(real))
    yield state
    state.release.set()


class HeldReads:
    def __init__(self):
        self.jobs: set[uuid.UUID] = set()
        self.release = threading.Event()

    def wrap(self, read):
        def held(ch, job_id, *args, **kwargs):
            if job_id in self.jobs:
                self.release.wait(120)
            return read(ch, job_id, *args, **kwargs)

        return held


async def api(settings, aiohttp_client, make_token, **limits):
    app = eventhorizon.init_app(dataclasses.replace(settings, **limits))
    alice = await aiohttp_client(app, headers=bearer(make_token("alice")))
    bob = {"headers": bearer(make_token("bob"))}
    return app, alice, bob


async def slots_reach(app, what, value) -> None:
    slots = app[api_state.EXPLORER].slots
    for _ in range(600):
        if what(slots) == value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the read slots never reached {value}: {what(slots)}")


async def test_one_owner_flooding_histograms_does_not_starve_another(
    settings, db, aiohttp_client, make_token, held_reads
):
    app, alice, bob = await api(
        settings, aiohttp_client, make_token, explore_queries=4, explore_queries_per_owner=2
    )
    alices, bobs = (
        make_job(settings, db, b"", store=False, owner="alice"),
        make_job(settings, db, b"", store=False, owner="bob"),
    )
    held_reads.jobs.add(alices)
    flood = [asyncio.create_task(alice.get(f"/api/v1/jobs/{alices}/histogram")) for _ in range(40)]
    await slots_reach(app, lambda s: (s.running, len(s.waiting.get("alice", ()))), (2, 38))
    for path in ("histogram", "events"):  # served while all of hers wait
        response = await alice.session.get(alice.make_url(f"/api/v1/jobs/{bobs}/{path}"), **bob)
        assert response.status == 200, await response.text()
    held_reads.release.set()
    statuses = [response.status for response in await asyncio.gather(*flood)]
    assert statuses == [200] * 40  # queued, not refused: none of it was overload


async def test_an_owners_overload_is_429_or_503_with_retry_after(
    settings, db, aiohttp_client, make_token, held_reads
):
    app, alice, bob = await api(
        settings,
        aiohttp_client,
        make_token,
        explore_queries=2,
        explore_queries_per_owner=1,
        explore_queue_per_owner=2,
        explore_wait_s=60,
    )
    alices, bobs = (
        make_job(settings, db, b"", store=False, owner="alice"),
        make_job(settings, db, b"", store=False, owner="bob"),
    )
    held_reads.jobs.add(alices)
    waiting = [asyncio.create_task(alice.get(f"/api/v1/jobs/{alices}/events")) for _ in range(3)]
    await slots_reach(app, lambda s: (s.running, len(s.waiting.get("alice", ()))), (1, 2))
    refused = await alice.get(f"/api/v1/jobs/{alices}/histogram")
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "EH_EXPLORE_QUEUE_PER_OWNER" in (await refused.json())["detail"]
    response = await alice.session.get(alice.make_url(f"/api/v1/jobs/{bobs}/events"), **bob)
    assert response.status == 200, await response.text()

    app[api_state.EXPLORER].slots.max_wait_s = 0.2  # EH_EXPLORE_WAIT_S
    held_reads.jobs.add(bobs)
    blocking = asyncio.create_task(
        alice.session.get(alice.make_url(f"/api/v1/jobs/{bobs}/events"), **bob)
    )
    await slots_reach(app, lambda s: s.running, 2)
    waited = await alice.session.get(alice.make_url(f"/api/v1/jobs/{bobs}/histogram"), **bob)
    assert waited.status == 503 and int(waited.headers["Retry-After"]) >= 1
    assert "waited" in (await waited.json())["detail"]
    held_reads.release.set()
    assert [r.status for r in await asyncio.gather(*waiting, blocking)] == [200] * 4


async def test_a_graphql_query_reading_many_jobs_is_answered_within_its_share(
    settings, db, aiohttp_client, make_token
):
    """40 ClickHouse reads in one query, 2 at a time: all answered, none UNAVAILABLE."""
    with clickhouse_connect.get_client(dsn=settings.clickhouse_url) as ch:
        event_log.ensure_event_log(ch)
    _app, alice, _bob = await api(
        settings, aiohttp_client, make_token, explore_queries=4, explore_queries_per_owner=2
    )
    for _ in range(20):
        make_job(settings, db, b"", store=False, owner="alice")
    body = await gql(
        alice, "{ jobs(limit: 20) { id events(first: 1) { items { id } } histogram { events } } }"
    )
    assert "errors" not in body, body["errors"][:2]
    assert len(body["data"]["jobs"]) == 20
    assert all(job["histogram"]["events"] == 0 for job in body["data"]["jobs"])


async def test_one_graphql_operation_reads_clickhouse_at_most_200_times(
    settings, db, aiohttp_client, make_token
):
    """The bound that keeps one operation within an owner's queue: the 201st events or
    histogram field of an operation is refused, QUERY_TOO_LARGE, saying so."""
    with clickhouse_connect.get_client(dsn=settings.clickhouse_url) as ch:
        event_log.ensure_event_log(ch)
    _app, alice, _bob = await api(settings, aiohttp_client, make_token)
    for _ in range(70):
        make_job(settings, db, b"", store=False, owner="alice")
    body = await gql(
        alice,
        "{ jobs(limit: 70) { a: histogram { events } "
        "b: histogram { events } c: histogram { events } } }",
    )
    errors = body["errors"]  # (a non-null field: the first error nulls the list)
    assert errors and {e["extensions"]["code"] for e in errors} == {"QUERY_TOO_LARGE"}
    assert graphql_resolvers.MAX_CLICKHOUSE_READS == 200
    assert "more than 200 events or histogram fields" in errors[0]["message"]


async def test_a_read_whose_request_went_away_keeps_its_slot_until_its_query_ends(settings):
    """Asking and hanging up again and again must not run more queries than the share."""
    slots = read_slots.ReadSlots(2, 1, queue_per_owner=10, max_wait_s=60)
    reader = explore.Explorer(settings.clickhouse_url, timeout_s=5, slots=slots)
    release = threading.Event()
    try:
        reader._client = object()  # no connection needed for this read
        asked = asyncio.create_task(reader.run("alice", lambda _ch, **_: release.wait(60)))
        await slots_reach_running(slots, 1)
        asked.cancel()  # the client hung up
        await asyncio.gather(asked, return_exceptions=True)
        assert slots.running_by_owner["alice"] == 1  # its query still runs
        again = asyncio.create_task(reader.run("alice", lambda _ch, **_: "done"))
        await settle()
        assert not again.done() and len(slots.waiting["alice"]) == 1
        release.set()
        assert await again == "done"
    finally:
        release.set()
        reader._client = None
        reader.close()


async def slots_reach_running(slots, running: int) -> None:
    for _ in range(600):
        if slots.running == running:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {running} running")
