"""Explore: a job's events and histogram read back from the ClickHouse server over HTTP, with
filters, pages, owners and ClickHouse's outages."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import uuid
from urllib.parse import parse_qsl, urlsplit

import clickhouse_connect
import pytest

import core
import event_log
import eventhorizon
import explore
import read_slots
from helpers import all_pages, assert_problem, bearer, gql, make_job, upload, wait_for

T0 = dt.datetime(2026, 11, 30, 10, 0, 0, tzinfo=dt.timezone.utc)
LEVELS = ["info", "info", "info", "warning", "error", "debug", "critical"]
SERVICES = ["checkout", "payments", "search"]
COLUMNS = [
    "event_id",
    "event_type",
    "event_date_time",
    "environment",
    "event_context",
    "metadata_version",
]


def line_events(job_id: uuid.UUID, count: int, *, step_s: int = 7) -> list[dict]:
    """A job's line events as the worker makes them (the context's shape), spread in time."""
    return [
        {
            "line_no": n,
            "event_type": "order.created" if n % 2 else "order.paid",
            "timestamp": T0 + dt.timedelta(seconds=n * step_s),
            "environment": "staging" if n % 10 == 0 else "production",
            "level": LEVELS[n % len(LEVELS)],
            "service": SERVICES[n % len(SERVICES)],
            "message": f"Order {n} {'FAILED' if n % 13 == 0 else 'done'}",
            "context": {"order": n, "big": 2**40, "tags": ["a", "b"]},
        }
        for n in range(1, count + 1)
    ]


def store(clickhouse_url: str, job_id: uuid.UUID, events: list[dict]) -> None:
    """The events in event_log, with a lifecycle event of the job beside them."""
    with clickhouse_connect.get_client(dsn=clickhouse_url) as ch:
        event_log.ensure_event_log(ch)
        rows = [
            [
                uuid.uuid4(),
                e["event_type"],
                e["timestamp"],
                e["environment"],
                {
                    "job_id": str(job_id),
                    "line_no": e["line_no"],
                    "level": e["level"],
                    "service": e["service"],
                    "message": e["message"],
                    "context": e["context"],
                },
                1,
            ]
            for e in events
        ]
        rows.append(
            [
                uuid.uuid4(),
                "job.completed",
                T0,
                "production",
                {"job_id": str(job_id), "status": "completed"},
                1,
            ]
        )
        ch.insert("event_log", rows, column_names=COLUMNS)


@pytest.fixture
async def alice(settings, aiohttp_client, make_token):
    return await aiohttp_client(
        eventhorizon.init_app(settings), headers=bearer(make_token("alice"))
    )


@pytest.fixture
def job(db, settings):
    """Alice's job with 500 events in ClickHouse (and another job's beside them)."""
    job_id = make_job(settings, db, b"", store=False, owner="alice")
    events = line_events(job_id, 500)
    store(settings.clickhouse_url, job_id, events)
    store(settings.clickhouse_url, uuid.uuid4(), line_events(uuid.uuid4(), 50))
    return job_id, events


async def test_pages_cover_every_event_once_in_line_order(alice, job):
    job_id, events = job
    got = await all_pages(alice, f"/api/v1/jobs/{job_id}/events?limit=37")
    assert [e["line_no"] for e in got] == [e["line_no"] for e in events]
    first, stored = got[0], events[0]
    assert first == {
        "event_id": first["event_id"],
        "event_type": stored["event_type"],
        "timestamp": "2026-11-30T10:00:07Z",
        "environment": stored["environment"],
        "level": stored["level"],
        "service": stored["service"],
        "message": stored["message"],
        "context": stored["context"],
        "line_no": 1,
    }


@pytest.mark.parametrize(
    ("query", "selects"),
    [
        ("level=error", lambda e: e["level"] == "error"),
        ("level=ERROR&level=critical", lambda e: e["level"] in ("error", "critical")),
        ("service=payments", lambda e: e["service"] == "payments"),
        (
            "event_type=order.paid&service=search",
            lambda e: e["event_type"] == "order.paid" and e["service"] == "search",
        ),
        ("environment=staging", lambda e: e["environment"] == "staging"),
        (
            "from=2026-11-30T10:10:00Z&to=2026-11-30T11:20:00%2B01:00",  # an offset: 10:20Z
            lambda e: T0 + dt.timedelta(minutes=10)
            <= e["timestamp"]
            < T0 + dt.timedelta(minutes=20),
        ),
        ("q=failed", lambda e: "FAILED" in e["message"]),
        ("q=order 12 ", lambda e: e["message"].startswith("Order 12 ")),
        ("q=nothing like it", lambda e: False),
        (
            "level=error&q=failed&service=checkout",
            lambda e: e["level"] == "error"
            and "FAILED" in e["message"]
            and e["service"] == "checkout",
        ),
    ],
)
async def test_each_filter_selects_what_it_says_and_the_histogram_counts_it(
    alice, job, query, selects
):
    """Pages (whose `next` keeps the filters) and the histogram's counts, against the events
    selected in Python from what was stored."""
    job_id, events = job
    expected = [e["line_no"] for e in events if selects(e)]
    got = await all_pages(alice, f"/api/v1/jobs/{job_id}/events?limit=20&{query}")
    assert [e["line_no"] for e in got] == expected
    histogram = await (await alice.get(f"/api/v1/jobs/{job_id}/histogram?{query}")).json()
    assert histogram["events"] == len(expected)
    assert sum(sum(b["counts"].values()) for b in histogram["buckets"]) == len(expected)


async def test_the_histogram_has_round_buckets_by_level_gaps_included(alice, job):
    job_id, events = job
    histogram = await (await alice.get(f"/api/v1/jobs/{job_id}/histogram")).json()
    # 500 events 7 s apart span 3,494 s: 30 s buckets (the shortest round interval giving
    # at most 120), from 10:00:00 to 10:58:00, each counted by level.
    assert (histogram["job_id"], histogram["interval_s"]) == (str(job_id), 30)
    buckets = histogram["buckets"]
    assert (buckets[0]["start"], buckets[-1]["start"], len(buckets)) == (
        "2026-11-30T10:00:00Z",
        "2026-11-30T10:58:00Z",
        117,
    )
    expected = {b["start"]: {} for b in buckets}
    for e in events:
        start = e["timestamp"].replace(second=e["timestamp"].second // 30 * 30)
        counts = expected[start.isoformat().replace("+00:00", "Z")]
        counts[e["level"]] = counts.get(e["level"], 0) + 1
    assert {b["start"]: b["counts"] for b in buckets} == expected

    narrow = await (
        await alice.get(
            f"/api/v1/jobs/{job_id}/histogram?interval=15&level=error"
            "&from=2026-11-30T10:00:00Z&to=2026-11-30T10:05:00Z"
        )
    ).json()
    assert narrow["interval_s"] == 15
    assert all(set(b["counts"]) <= {"error"} for b in narrow["buckets"])
    assert [b["start"][11:19] for b in narrow["buckets"][:3]] == [
        "10:00:00",
        "10:00:15",
        "10:00:30",
    ]


async def test_another_owners_job_is_a_404_here_too(job, settings, aiohttp_client, make_token):
    job_id, _ = job
    bob = await aiohttp_client(eventhorizon.init_app(settings), headers=bearer(make_token("bob")))
    for path in ("events", "histogram"):
        response = await bob.get(f"/api/v1/jobs/{job_id}/{path}")
        assert response.status == 404, await response.text()


@pytest.mark.parametrize(
    "query",
    [
        "level=loud",
        "limit=0",
        "limit=1001",
        "after_line=-1",
        "after_line=abc",
        "from=yesterday",
        "from=2026-11-30T10:00:00",
        "to=1969-12-31T23:59:59Z",
        "from=2026-11-30T11:00:00Z&to=2026-11-30T10:00:00Z",
        "q=" + "x" * 201,
        "q=a%00b",
        "service=",
        "service=" + "s" * 129,
        "&".join(["level=info"] * 21),
    ],
)
async def test_bad_filters_are_422(alice, job, query):
    job_id, _ = job
    response = await alice.get(f"/api/v1/jobs/{job_id}/events?{query}")
    assert response.status == 422, await response.text()
    assert response.content_type == "application/problem+json"


@pytest.mark.parametrize("query", ["interval=0", "interval=x", "interval=1"])
async def test_bad_intervals_are_422(alice, job, query):
    """interval=1 would cut these events' hour into 3,494 buckets, over the limit."""
    job_id, _ = job
    response = await alice.get(f"/api/v1/jobs/{job_id}/histogram?{query}")
    assert response.status == 422, await response.text()


async def test_a_forged_next_link_reads_no_other_job(alice, job, db, settings):
    """The cursor is a line number within the job the path names: changing it pages that job
    from elsewhere, never into another's events."""
    job_id, events = job
    page = await (await alice.get(f"/api/v1/jobs/{job_id}/events?limit=10")).json()
    query = dict(parse_qsl(urlsplit(page["next"]).query))
    assert query == {"limit": "10", "after_line": "10"}
    tail = await all_pages(alice, f"/api/v1/jobs/{job_id}/events?limit=100&after_line=495")
    assert [e["line_no"] for e in tail] == [496, 497, 498, 499, 500]


async def test_clickhouse_down_is_503_on_these_routes_only(
    job, settings, aiohttp_client, make_token, start_process
):
    """With ClickHouse unreachable the two routes answer 503 problem+json at once, while the
    job, an upload and /readyz are untouched."""
    job_id, _ = job
    broken = dataclasses.replace(settings, clickhouse_read_url="http://u:p@127.0.0.1:1/db")
    client = await aiohttp_client(
        eventhorizon.init_app(broken), headers=bearer(make_token("alice"))
    )
    for path in ("events", "histogram"):
        response = await client.get(f"/api/v1/jobs/{job_id}/{path}")
        assert response.status == 503, await response.text()
        assert "ClickHouse" in (await response.json())["detail"]
    assert (await client.get(f"/api/v1/jobs/{job_id}")).status == 200
    response = await upload(
        client,
        b'{"timestamp": "2026-11-30T10:00:00Z", "level": "info", '
        b'"service": "s", "event_type": "e", "message": "m"}\n',
    )
    assert response.status == 202, await response.text()
    assert (await client.get("/readyz")).status == 200


async def test_before_the_relay_made_event_log_the_reads_say_so(
    settings, db, aiohttp_client, make_token
):
    """A fresh install whose relay has not started: no event_log yet. The reads answer 503 and
    say why (REST and GraphQL alike), instead of blaming ClickHouse."""
    client = await aiohttp_client(
        eventhorizon.init_app(settings), headers=bearer(make_token("alice"))
    )
    job_id = make_job(settings, db, b"", store=False, owner="alice")
    for path in (
        f"jobs/{job_id}/events",
        f"jobs/{job_id}/histogram",
        "events?from=2026-01-01T00:00:00Z",
    ):
        problem = await assert_problem(await client.get(f"/api/v1/{path}"), 503)
        assert problem["detail"].startswith(explore.NO_EVENT_LOG_YET), problem
    answer = await gql(
        client, "query($id: ID!) { job(id: $id) { events { nextAfterLine } } }", {"id": str(job_id)}
    )
    assert answer["errors"][0]["message"] == explore.NO_EVENT_LOG_YET, answer


async def test_reads_are_read_only_and_bounded(settings):
    """The API's queries run with readonly, a time limit and a row limit: a write through the
    same client and settings is refused by ClickHouse."""
    reader = explore.Explorer(
        settings.clickhouse_url,
        timeout_s=2,
        slots=read_slots.ReadSlots(1, 1, queue_per_owner=1, max_wait_s=60),
    )
    try:
        assert reader.settings["readonly"] == 2 and reader.settings["max_execution_time"] == 2
        ch = reader.client()
        event_log.ensure_event_log(clickhouse_connect.get_client(dsn=settings.clickhouse_url))
        with pytest.raises(Exception, match="readonly"):
            ch.command(
                "INSERT INTO event_log (event_id) VALUES (generateUUIDv4())",
                settings=reader.settings,
            )
    finally:
        reader.close()


async def test_reads_past_an_owners_queue_are_refused_at_once(settings):
    """One query at a time, one more of the owner's waiting: a third is refused at once."""
    reader = explore.Explorer(
        settings.clickhouse_url,
        timeout_s=5,
        slots=read_slots.ReadSlots(1, 1, queue_per_owner=1, max_wait_s=60),
    )
    release = asyncio.Event()
    try:

        def slow(_ch, **_kwargs):
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result()

        loop = asyncio.get_running_loop()
        reader._client = object()  # no connection needed for this read
        running = [asyncio.create_task(reader.run("alice", slow)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(read_slots.OwnerQueueFull):
            await reader.run("alice", slow)
        release.set()
        await asyncio.gather(*running)
    finally:
        reader._client = None
        reader.close()


def test_an_event_log_from_before_job_id_is_upgraded_in_place(settings):
    """A table made by the earlier DDL, with events in it, gets job_id, line_no and the
    by_job projection from the relay; its old events are then found by job."""
    job_id = uuid.uuid4()
    with clickhouse_connect.get_client(dsn=settings.clickhouse_url) as ch:
        ch.command(
            "CREATE TABLE event_log (event_id UUID, event_type String, "
            "event_date_time DateTime('UTC'), environment String, event_context JSON, "
            "metadata_version UInt64) ENGINE = MergeTree "
            "ORDER BY (event_type, event_date_time) "
            "SETTINGS non_replicated_deduplication_window = 1000"
        )
        ch.insert(
            "event_log",
            [
                [
                    uuid.uuid4(),
                    "e",
                    T0,
                    "production",
                    {
                        "job_id": str(job_id),
                        "line_no": n,
                        "level": "info",
                        "service": "s",
                        "message": f"m{n}",
                        "context": {},
                    },
                    1,
                ]
                for n in range(1, 11)
            ],
            column_names=COLUMNS,
        )
        event_log.ensure_event_log(ch)
        create = ch.command("SHOW CREATE TABLE event_log")
        assert "PROJECTION by_job" in create and "`job_id` UUID MATERIALIZED" in create
        events = explore.job_events(ch, job_id, explore.EventFilters(), limit=100)
        assert [e["line_no"] for e in events] == list(range(1, 11))
        event_log.ensure_event_log(ch)  # a second start changes nothing


async def test_a_real_upload_reads_back_as_its_lines(
    settings, db, aiohttp_client, make_token, start_process
):
    """The sample file through the worker and then the relay: the job says where its events
    stand (all waiting, then all delivered), and they read back as its valid lines, as
    Postgres holds them."""

    client = await aiohttp_client(eventhorizon.init_app(settings), headers=bearer(make_token()))
    job = await (
        await upload(client, (core.ROOT / "examples" / "sample.jsonl").read_bytes(), "sample.jsonl")
    ).json()
    job_url = f"/api/v1/jobs/{job['job_id']}"
    start_process("worker.py")
    await asyncio.to_thread(
        wait_for,
        lambda: db.execute("SELECT status FROM jobs").fetchone()["status"] == "completed",
        60,
        what="the job",
    )
    waiting = await (await client.get(job_url)).json()
    assert waiting["delivery"] == {"delivered": 0, "waiting": 280, "dead": 0}

    start_process("relay.py")
    await asyncio.to_thread(
        wait_for,
        lambda: db.execute("SELECT count(*) AS n FROM outbox").fetchone()["n"] == 0,
        60,
        what="the events delivered",
    )
    delivered = await (await client.get(job_url)).json()
    assert delivered["delivery"] == {"delivered": 280, "waiting": 0, "dead": 0}
    events = await all_pages(client, f"{job_url}/events?limit=1000")
    entries = db.execute(
        "SELECT line_no, level, service, message FROM log_entries ORDER BY line_no"
    ).fetchall()
    assert [(e["line_no"], e["level"], e["service"], e["message"]) for e in events] == [
        (e["line_no"], e["level"], e["service"], e["message"]) for e in entries
    ]
    histogram = await (await client.get(f"{job_url}/histogram")).json()
    assert histogram["events"] == len(entries) == 280


async def test_graphql_reads_the_same_events_and_histogram(alice, job):
    """Job.events and Job.histogram are the REST answers, through the same reads."""

    job_id, _ = job
    body = await gql(
        alice,
        """query Explore($id: ID!) {
        job(id: $id) {
          events(first: 3, afterLine: 10, filter: {levels: [ERROR, CRITICAL], text: "order"}) {
            items { id eventType timestamp environment level service message context lineNo }
            nextAfterLine }
          histogram(filter: {levels: [ERROR]}, intervalS: 600) {
            intervalS events buckets { start counts { level events } } } } }""",
        {"id": str(job_id)},
    )
    assert "errors" not in body, body
    data = body["data"]["job"]
    rest = await (
        await alice.get(
            f"/api/v1/jobs/{job_id}/events?limit=3&after_line=10&level=error&level=critical&q=order"
        )
    ).json()
    assert [
        {
            "event_id": e["id"],
            "event_type": e["eventType"],
            "timestamp": e["timestamp"],
            "environment": e["environment"],
            "level": e["level"].lower(),
            "service": e["service"],
            "message": e["message"],
            "context": json.loads(e["context"]),
            "line_no": e["lineNo"],
        }
        for e in data["events"]["items"]
    ] == rest["events"]
    assert data["events"]["nextAfterLine"] == rest["events"][-1]["line_no"]
    histogram = await (
        await alice.get(f"/api/v1/jobs/{job_id}/histogram?level=error&interval=600")
    ).json()
    assert data["histogram"] == {
        "intervalS": 600,
        "events": histogram["events"],
        "buckets": [
            {
                "start": b["start"],
                "counts": [
                    {"level": level.upper(), "events": n} for level, n in b["counts"].items()
                ],
            }
            for b in histogram["buckets"]
        ],
    }
    bad = await gql(
        alice,
        'query($id: ID!) { job(id: $id) { events(filter: {from: "soon"}) { nextAfterLine } } }',
        {"id": str(job_id)},
    )
    assert bad["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_a_request_line_past_the_limit_is_refused_and_the_api_goes_on(alice, job):
    """Filters can make long request lines (up to eventhorizon.MAX_REQUEST_LINE_BYTES are
    read); a longer one is refused by the HTTP server (400) and nobody else notices."""
    job_id, _ = job
    long_query = "q=" + "x" * (eventhorizon.MAX_REQUEST_LINE_BYTES + 1024)
    response = await alice.get(f"/api/v1/jobs/{job_id}/events?{long_query}")
    assert response.status == 400
    assert (await alice.get("/healthz")).status == 200
    near = "&".join(["service=" + "s" * 128] * 20 + ["event_type=" + "e" * 128] * 20)
    assert (await alice.get(f"/api/v1/jobs/{job_id}/events?{near}")).status == 200
