"""Owner-wide search (GET /api/v1/events and its histogram, facets and export) against the
ClickHouse server, every answer checked against what Postgres' log_entries hold for the same
owner: several jobs, two owners, an admin, a deleted job. The events reach event_log the real
way: outbox rows as the worker writes them (search_samples.store_job), moved by relay_once.
Which projection or index each read takes is tests/test_search_index.py's."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import uuid
from urllib.parse import urlencode

import clickhouse_connect
import pytest

import event_log
import eventhorizon
import explore
import read_slots
import search
from helpers import all_pages, bearer, relay_all, wait_for
from search_samples import store_job

JOBS = {"a1": ("alice", 120), "a2": ("alice", 80), "a3": ("alice", 40), "b1": ("bob", 60)}


@pytest.fixture
def jobs(db, settings) -> dict[str, uuid.UUID]:
    """Alice's three jobs and Bob's one, in Postgres and in event_log."""
    ids = {
        name: store_job(db, k, owner, lines, settings.s3_bucket)
        for k, (name, (owner, lines)) in enumerate(JOBS.items())
    }
    relay_all(db, settings)
    return ids


@pytest.fixture
async def client_of(settings, aiohttp_client, make_token):
    async def make(owner: str, *, admin: bool = False, app_settings=None):
        app = eventhorizon.init_app(app_settings or settings)
        return await aiohttp_client(app, headers=bearer(make_token(owner, admin=admin)))

    return make


def postgres_events(db, owner: str, where: str = "true", params: dict | None = None) -> list:
    """The owner's log entries the condition selects, newest first, as the API shows them."""
    rows = db.execute(
        "SELECT e.job_id::text AS job_id, e.line_no, "
        "to_char(e.timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') "
        "AS timestamp, "
        "e.level, e.service, e.event_type, e.environment, e.message, e.context "
        "FROM log_entries e JOIN jobs j USING (job_id) "
        f"WHERE j.owner = %(owner)s AND ({where}) "
        "ORDER BY date_trunc('milliseconds', e.timestamp) DESC",
        {"owner": owner, **(params or {})},
    ).fetchall()
    return [dict(r) for r in rows]


def keys(events) -> list[tuple[str, int]]:
    return [(e["job_id"], e["line_no"]) for e in events]


# Each filter as the API takes it and as a condition on Postgres' log_entries (e).
FILTERS = [
    ("", "true"),
    ("level=error", "e.level = 'error'"),
    ("level=ERROR&level=critical", "e.level IN ('error', 'critical')"),
    (
        "service=checkout&event_type=order.paid",
        "e.service = 'checkout' AND e.event_type = 'order.paid'",
    ),
    ("environment=staging", "e.environment = 'staging'"),
    ("job_id={a2}", "e.job_id = %(a2)s"),
    ("job_id={a1}&job_id={a2}&level=info", "e.job_id IN (%(a1)s, %(a2)s) AND e.level = 'info'"),
    ("job_id={b1}", "false"),  # Bob's job, asked for by Alice: nothing, not an error
    (
        "from=2026-11-30T10:00:17.010Z&to=2026-11-30T11:01:00.020%2B01:00",  # to: 10:01:00.020Z
        "e.timestamp >= '2026-11-30T10:00:17.010Z' AND e.timestamp < '2026-11-30T10:01:00.020Z'",
    ),
    (
        "from=2026-11-30T10:00:00Z&to=2026-11-30T11:00:00Z&level=info",  # on the hour: by_hour
        "e.timestamp >= '2026-11-30T10:00:00Z' AND e.timestamp < '2026-11-30T11:00:00Z' "
        "AND e.level = 'info'",
    ),
    ("to=2026-11-30T10:00:00Z", "false"),
    ("q=timeout", "strpos(lower(e.message), 'timeout') > 0"),
    (
        "q=OUT AFTER 5&level=error",
        "strpos(lower(e.message), 'out after 5') > 0 AND e.level = 'error'",
    ),
    ("context.request_id=r-3", "e.context #>> '{request_id}' = 'r-3'"),
    (
        "context.http.status=500&context.user.id=1",
        "e.context #>> '{http,status}' = '500' AND e.context #>> '{user,id}' = '1'",
    ),
    ("context.flag=true&q=order", "e.context #>> '{flag}' = 'true'"),
    ("context.request_id=r-3&context.request_id=r-4", "false"),
    ("context.nowhere=1", "false"),
    ("not.level=info&not.level=DEBUG", "e.level NOT IN ('info', 'debug')"),
    ("not.service=checkout&level=error", "e.service != 'checkout' AND e.level = 'error'"),
    (
        "not.job_id={a1}&not.environment=staging&not.event_type=pino.log",
        "e.job_id != %(a1)s AND e.environment != 'staging' AND e.event_type != 'pino.log'",
    ),
    ("level=error&not.level=error", "false"),
    ("not.job_id={b1}&context.request_id=r-3", "e.context #>> '{request_id}' = 'r-3'"),
]


@pytest.mark.parametrize(("query", "where"), FILTERS)
async def test_every_filter_agrees_with_postgres_on_pages_histogram_facets_and_export(
    db, jobs, client_of, query, where
):
    """Pages (following `next`), the histogram, the service facet and the export each select
    exactly Alice's log entries the same condition selects in Postgres, newest first, with
    millisecond times; Bob's events never appear."""
    alice = await client_of("alice")
    query = query.format(**{k: v for k, v in jobs.items()})
    expected = postgres_events(db, "alice", where, {k: str(v) for k, v in jobs.items()})

    got = await all_pages(alice, f"/api/v1/events?limit=37&{query}")
    assert keys(got) == keys(expected)
    fields = ("timestamp", "level", "service", "event_type", "environment", "message", "context")
    assert [{k: e[k] for k in fields} for e in got] == [{k: e[k] for k in fields} for e in expected]
    oldest_first = await all_pages(alice, f"/api/v1/events?limit=50&order=asc&{query}")
    assert keys(oldest_first) == keys(expected)[::-1]

    histogram = await (await alice.get(f"/api/v1/events/histogram?{query}")).json()
    assert histogram["events"] == len(expected)
    by_level: dict[str, int] = {}
    for bucket in histogram["buckets"]:
        for level, count in bucket["counts"].items():
            by_level[level] = by_level.get(level, 0) + count
    assert by_level == count_by(expected, "level")
    assert len(histogram["buckets"]) <= explore.AUTO_BUCKETS
    hourly = await (await alice.get(f"/api/v1/events/histogram?interval_s=3600&{query}")).json()
    assert hourly["events"] == len(expected)
    assert [b["counts"] for b in hourly["buckets"]] == (
        [count_by(expected, "level")] if expected else []
    )

    facets = await (
        await alice.get(f"/api/v1/events/facets?field=service&limit=100&{query}")
    ).json()
    assert {v["value"]: v["count"] for v in facets["values"]} == count_by(expected, "service")
    assert facets["other"] == 0

    response = await alice.get(f"/api/v1/events/export?{query}")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    assert response.headers["Content-Disposition"] == 'attachment; filename="events.ndjson"'
    exported = [json.loads(line) for line in (await response.read()).splitlines()]
    assert exported == got


def count_by(events, field: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in events:
        counts[e[field]] = counts.get(e[field], 0) + 1
    return counts


@pytest.mark.parametrize(
    ("field", "value_of"),
    [
        ("level", lambda e: e["level"]),
        ("event_type", lambda e: e["event_type"]),
        ("environment", lambda e: e["environment"]),
        ("job_id", lambda e: e["job_id"]),
        ("context.request_id", lambda e: e["context"]["request_id"]),
        ("context.http.status", lambda e: str(e["context"]["http"]["status"])),
    ],
)
async def test_facets_count_what_postgres_counts_and_the_rest_as_other(
    db, jobs, client_of, field, value_of
):
    alice = await client_of("alice")
    expected: dict[str, int] = {}
    for e in postgres_events(db, "alice"):
        expected[value_of(e)] = expected.get(value_of(e), 0) + 1
    full = await (await alice.get(f"/api/v1/events/facets?field={field}&limit=100")).json()
    assert full["field"] == field
    assert {v["value"]: v["count"] for v in full["values"]} == expected
    assert [v["count"] for v in full["values"]] == sorted(expected.values(), reverse=True)
    top = await (await alice.get(f"/api/v1/events/facets?field={field}&limit=2")).json()
    assert [v["count"] for v in top["values"]] == sorted(expected.values(), reverse=True)[:2]
    assert top["other"] == sum(expected.values()) - sum(v["count"] for v in top["values"])


async def test_a_deleted_job_vanishes_from_every_search_at_once_and_owners_see_only_theirs(
    db, jobs, client_of, settings
):
    """Deleting Alice's job a3 hides its events from every read at once, while ClickHouse
    still holds them (the relay has not deleted them yet), and after. Bob sees only his job;
    an admin sees no one else's events. Broken, a3's events (or Alice's in Bob's search)
    would show up in a page, a count, a facet or the export."""
    alice, bob, ops = (
        await client_of("alice"),
        await client_of("bob"),
        await client_of("ops", admin=True),
    )
    assert (await alice.delete(f"/api/v1/jobs/{jobs['a3']}")).status == 204
    with clickhouse_connect.get_client(dsn=settings.clickhouse_url) as ch:
        still_there = ch.query(
            "SELECT count() FROM event_log WHERE job_id = {j:UUID} AND line_no > 0",
            parameters={"j": str(jobs["a3"])},
        )
        assert still_there.result_rows[0][0] == 40  # only Postgres knows it is deleted

    async def check() -> None:
        for who, owner in ((alice, "alice"), (bob, "bob"), (ops, "ops")):
            expected = postgres_events(db, owner)
            assert keys(await all_pages(who, "/api/v1/events?limit=1000")) == keys(expected)
            histogram = await (await who.get("/api/v1/events/histogram")).json()
            assert histogram["events"] == len(expected)
            facets = await (await who.get("/api/v1/events/facets?field=job_id")).json()
            assert {v["value"] for v in facets["values"]} == {e["job_id"] for e in expected}
            export = await (await who.get("/api/v1/events/export?format=csv")).text()
            assert len(list(csv.reader(io.StringIO(export)))) == len(expected) + 1
        asked = await all_pages(alice, f"/api/v1/events?job_id={jobs['a3']}")
        assert asked == []

    assert len(postgres_events(db, "alice")) == 200 and postgres_events(db, "ops") == []
    await check()
    relay_all(db, settings)  # the job.deleted event first: the deletion waits for it
    with event_log.connect_clickhouse(settings.clickhouse_url) as ch:
        assert event_log.delete_events_of_deleted_jobs(db, ch) == 1
        assert (
            ch.command(
                "SELECT count() FROM event_log WHERE job_id = {j:UUID} AND line_no > 0",
                parameters={"j": str(jobs["a3"])},
            )
            == 0
        )
    await check()


async def test_export_streams_csv_and_ends_with_a_clear_line_past_its_limit(
    db, jobs, client_of, settings
):
    alice = await client_of("alice")
    expected = postgres_events(db, "alice")
    response = await alice.get("/api/v1/events/export?format=csv&order=asc&level=info")
    assert response.headers["Content-Type"].startswith("text/csv")
    assert response.headers["Content-Disposition"] == 'attachment; filename="events.csv"'
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    infos = [e for e in expected if e["level"] == "info"][::-1]
    assert [(r["job_id"], int(r["line_no"])) for r in rows] == keys(infos)
    assert [json.loads(r["context"]) for r in rows] == [e["context"] for e in infos]

    capped = await client_of(
        "alice", app_settings=dataclasses.replace(settings, export_max_rows=50)
    )
    lines = (await (await capped.get("/api/v1/events/export")).read()).splitlines()
    assert keys(json.loads(line) for line in lines[:50]) == keys(expected[:50])
    assert len(lines) == 51 and json.loads(lines[50])["truncated"] is True
    exact = await client_of(
        "alice", app_settings=dataclasses.replace(settings, export_max_rows=240)
    )
    lines = (await (await exact.get("/api/v1/events/export")).read()).splitlines()
    assert (
        len(expected) == len(lines) == 240
    )  # exactly the limit: nothing was left out, so no last line


@pytest.mark.parametrize(
    "after",
    [
        "x",
        "e30",
        "W10",
        "WyJkZXNjIiwgMSwgMiwgM10",  # ["desc", 1, 2, 3]
        "WyJkZXNjIiwgLTEsICIwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDAiLCAxXQ",  # ms < 0
        "WyJzaWRlIiwgMSwgIjAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMCIsIDFd",  # "side"
        "%00%ff",
        "a" * 201,
        "WyJkZXNjIiwgMS41LCAiMDAwMDAwMDAtMDAwMC0wMDAwLTAwMDAtMDAwMDAwMDAwMDAwIiwgMV0",
    ],
)
async def test_a_forged_cursor_is_a_422_naming_it(jobs, client_of, after):
    alice = await client_of("alice")
    response = await alice.get(f"/api/v1/events?after={after}")
    assert response.status == 422, await response.text()
    assert response.content_type == "application/problem+json"
    assert "after" in (await response.json())["detail"]


async def test_a_cursor_of_the_other_order_is_a_422_and_a_real_one_pages_on(jobs, client_of):
    alice = await client_of("alice")
    page = await (await alice.get("/api/v1/events?limit=5")).json()
    after = dict(pair.split("=", 1) for pair in page["next"].split("?", 1)[1].split("&"))["after"]
    response = await alice.get(f"/api/v1/events?order=asc&after={after}")
    assert response.status == 422 and "order=desc" in (await response.json())["detail"]
    bob = await client_of("bob")  # a cursor is a position, not a key: Bob's own events only
    bobs = await (await bob.get(f"/api/v1/events?after={after}")).json()
    assert {e["job_id"] for e in bobs["events"]} <= {str(jobs["b1"])}


@pytest.mark.parametrize(
    ("path", "names"),
    [
        ("/api/v1/events?level=verbose", "level"),
        ("/api/v1/events?from=yesterday", "from"),
        ("/api/v1/events?from=2026-11-30T10:00:00Z&to=2026-11-30T09:00:00Z", "from"),
        ("/api/v1/events?job_id=nope", "job_id"),
        ("/api/v1/events?" + "&".join(f"job_id={uuid.uuid4()}" for _ in range(101)), "job_id"),
        ("/api/v1/events?context.a..b=1", "context.a..b"),
        ("/api/v1/events?context.a%20b=1", "context.a b"),
        ("/api/v1/events?" + "&".join(f"context.k{n}=v" for n in range(9)), "context"),
        ("/api/v1/events?context.k=" + "v" * 257, "context.k"),
        ("/api/v1/events?q=" + "x" * 201, "q"),
        ("/api/v1/events?levels=error", "levels"),
        ("/api/v1/events?not.level=verbose", "not.level"),
        ("/api/v1/events?not.job_id=nope", "not.job_id"),
        ("/api/v1/events?not.q=x", "not.q"),
        ("/api/v1/events/facets?field=level&" + "&".join(["not.service=s"] * 21), "not.service"),
        ("/api/v1/events?limit=1001", "limit"),
        ("/api/v1/events?order=up", "order"),
        ("/api/v1/events/histogram?interval_s=1&from=2026-01-01T00:00:00Z", "interval_s"),
        ("/api/v1/events/histogram?interval_s=0", "interval_s"),
        ("/api/v1/events/facets", "field"),
        ("/api/v1/events/facets?field=message", "field"),
        ("/api/v1/events/facets?field=context.", "context."),
        ("/api/v1/events/facets?field=level&limit=101", "limit"),
        ("/api/v1/events/export?format=xml", "format"),
    ],
)
async def test_bad_filters_are_a_422_naming_the_parameter(jobs, client_of, path, names):
    alice = await client_of("alice")
    response = await alice.get(path)
    assert response.status == 422, await response.text()
    assert response.content_type == "application/problem+json"
    assert names in (await response.json())["detail"]


async def test_clickhouse_away_is_503_on_the_search_routes(settings, client_of, db):
    broken = dataclasses.replace(settings, clickhouse_read_url="http://u:p@127.0.0.1:1/db")
    alice = await client_of("alice", app_settings=broken)
    for path in ("", "/histogram", "/facets?field=level", "/export", "/export?format=csv"):
        response = await alice.get(f"/api/v1/events{path}")
        assert response.status == 503, (path, await response.text())
        assert "ClickHouse" in (await response.json())["detail"]


# The DDL of event_log before owner-wide search (job_id and the by_job projection, no owner).
EVENT_LOG_BEFORE_SEARCH = """
CREATE TABLE event_log (
    event_id UUID, event_type String, event_date_time DateTime('UTC'), environment String,
    event_context JSON, metadata_version UInt64,
    job_id UUID MATERIALIZED toUUIDOrZero(toString(event_context.job_id)),
    line_no UInt64 MATERIALIZED toUInt64OrZero(toString(event_context.line_no)),
    level LowCardinality(String) MATERIALIZED toString(event_context.level),
    service LowCardinality(String) MATERIALIZED toString(event_context.service),
    PROJECTION by_job (SELECT event_id, event_type, event_date_time, environment, event_context,
                              metadata_version, job_id, line_no, level, service
                       ORDER BY job_id, line_no))
ENGINE = MergeTree ORDER BY (event_type, event_date_time)
SETTINGS non_replicated_deduplication_window = 1000,
         lightweight_mutation_projection_mode = 'rebuild'
"""


async def test_an_event_log_from_before_search_is_upgraded_with_its_events_kept(
    db, settings, client_of
):
    """A table of the previous DDL holding Alice's and Bob's events (delivered by the old
    relay: no owner, whole seconds) is upgraded by the relay: each event kept once, given its
    job's owner from Postgres, found by search with its time in whole seconds, and still read
    by the job routes; new events arrive with milliseconds. Broken, the old events would be
    missing from search (no owner), doubled, or lost."""
    a1, b1 = store_job(db, 0, "alice", 30), store_job(db, 1, "bob", 20)
    old_columns = event_log.EVENT_LOG_COLUMNS[:6]
    with clickhouse_connect.get_client(dsn=settings.clickhouse_url) as ch:
        ch.command(EVENT_LOG_BEFORE_SEARCH)
        lines = [
            r["line"]
            for r in db.execute(
                "SELECT convert_to(json_build_object('event_id', o.event_id, 'event_type', "
                "o.event_type, 'event_date_time', "
                "floor(extract(epoch FROM o.event_date_time))::bigint,"
                " 'environment', o.environment, 'event_context', o.event_context, "
                "'metadata_version', o.metadata_version)::text, 'UTF8') AS line FROM outbox o"
            )
        ]
        ch.raw_insert("event_log", old_columns, insert_block=b"\n".join(lines), fmt="JSONEachRow")
        db.execute("DELETE FROM outbox")

        event_log.ensure_event_log(ch)
        create = ch.command("SHOW CREATE TABLE event_log")
        assert "PROJECTION by_owner" in create and "PROJECTION by_hour" in create
        assert (
            "INDEX context_tokens" in create
            and ch.command(
                "SELECT type FROM system.columns WHERE database = currentDatabase() "
                "AND table = 'event_log' AND name = 'event_time'"
            )
            == "DateTime64(3, \\'UTC\\')"
        )
        assert event_log.fill_missing_owners(db, ch) == 2
        wait_for(
            lambda: ch.command(
                "SELECT count() FROM system.mutations WHERE "
                "database = currentDatabase() AND NOT is_done"
            )
            == 0,
            60,
            what="the upgrade's mutations",
        )
        assert event_log.fill_missing_owners(db, ch) == 0  # done: a second start finds nothing
        event_log.ensure_event_log(ch)
        assert ch.command("SELECT count() FROM event_log") == 50
        assert ch.command("SELECT uniqExact(event_id) FROM event_log") == 50

    a2 = store_job(db, 2, "alice", 10)
    relay_all(db, settings)
    alice = await client_of("alice")
    expected = postgres_events(db, "alice")
    got = await all_pages(alice, "/api/v1/events?limit=1000")
    assert keys(got) == keys(expected)
    whole = {e["job_id"] for e in got if e["timestamp"].endswith(".000Z")}
    assert str(a1) in whole and all(
        e["timestamp"] == f"{expected_e['timestamp'][:19]}.000Z"
        for e, expected_e in zip(got, expected, strict=True)
        if e["job_id"] == str(a1)
    )
    assert [e["timestamp"] for e in got if e["job_id"] == str(a2)] == [
        e["timestamp"] for e in expected if e["job_id"] == str(a2)
    ]
    bob = await client_of("bob")
    assert {e["job_id"] for e in await all_pages(bob, "/api/v1/events")} == {str(b1)}
    job_events = await (await alice.get(f"/api/v1/jobs/{a1}/events?limit=100")).json()
    assert [e["line_no"] for e in job_events["events"]] == list(range(1, 31))
    facets = await (await alice.get("/api/v1/events/facets?field=level&limit=100")).json()
    assert {v["value"]: v["count"] for v in facets["values"]} == count_by(expected, "level")
    found = await all_pages(alice, "/api/v1/events?context.request_id=r-3")
    assert keys(found) == keys([e for e in expected if e["context"]["request_id"] == "r-3"])


def test_next_links_keep_every_filter():
    filters = search.checked_search_filters(
        levels=["error"],
        services=["a b"],
        job_ids=[str(uuid.UUID(int=1))],
        since="2026-11-30T10:00:00.123Z",
        until="2026-11-30T11:00:00Z",
        text="x y",
        context=[("http.status", "500")],
    )
    again = search.search_filters_from_query(_multidict(filters.query_items()))
    assert again == filters and urlencode(filters.query_items())


def _multidict(items):
    from multidict import MultiDict

    return MultiDict(items)


SEARCH_QUERY = """
query Search($filter: EventFilter, $after: String, $order: Order) {
  events(filter: $filter, first: 40, after: $after, order: $order) {
    items { id jobId lineNo timestamp level service eventType environment message context }
    nextAfter
  }
  eventHistogram(filter: $filter) { intervalS events buckets { start counts { level events } } }
  eventFacets(field: "context.request_id", filter: $filter, first: 3) {
    field values { value count } other
  }
}"""


async def graphql(client, query: str, variables: dict) -> dict:
    response = await client.post("/graphql", json={"query": query, "variables": variables})
    assert response.status == 200
    return await response.json()


@pytest.mark.parametrize("order", ["DESC", "ASC"])
async def test_graphql_search_reads_what_the_rest_routes_read(db, jobs, client_of, order):
    """Query.events (followed along nextAfter), eventHistogram and eventFacets answer as
    GET /api/v1/events, …/histogram and …/facets with the same filter."""
    alice = await client_of("alice")
    graph_filter = {
        "levels": ["ERROR", "INFO"],
        "jobIds": [str(jobs["a1"]), str(jobs["a2"])],
        "context": [{"path": "http.status", "value": "200"}],
        "exclude": {"services": ["search"], "eventTypes": ["order.paid"]},
    }
    rest = (
        f"level=error&level=info&job_id={jobs['a1']}&job_id={jobs['a2']}"
        "&context.http.status=200&not.service=search&not.event_type=order.paid"
    )
    events, after = [], None
    while True:
        answer = await graphql(
            alice, SEARCH_QUERY, {"filter": graph_filter, "after": after, "order": order}
        )
        assert "errors" not in answer, answer
        page = answer["data"]["events"]
        events += page["items"]
        if not (after := page["nextAfter"]):
            break
    expected = await all_pages(alice, f"/api/v1/events?limit=1000&order={order.lower()}&{rest}")
    assert len(expected) > 20
    assert [
        (e["jobId"], e["lineNo"], e["timestamp"], e["level"].lower(), json.loads(e["context"]))
        for e in events
    ] == [(e["job_id"], e["line_no"], e["timestamp"], e["level"], e["context"]) for e in expected]
    histogram = await (await alice.get(f"/api/v1/events/histogram?{rest}")).json()
    assert answer["data"]["eventHistogram"]["events"] == histogram["events"] == len(expected)
    facets = await (
        await alice.get(f"/api/v1/events/facets?field=context.request_id&limit=3&{rest}")
    ).json()
    assert answer["data"]["eventFacets"] == facets


async def test_graphql_search_refuses_bad_input(jobs, client_of):
    alice = await client_of("alice")
    for query, variables in [
        ("query($a: String) { events(after: $a) { nextAfter } }", {"a": "forged"}),
        ("{ events(first: 1001) { nextAfter } }", {}),
        ('{ eventFacets(field: "message") { other } }', {}),
        ('{ events(filter: {context: [{path: "a..b", value: "1"}]}) { nextAfter } }', {}),
        (
            "query($id: ID!) "
            "{ job(id: $id) { events(filter: {jobIds: [$id]}) { nextAfterLine } } }",
            {"id": str(jobs["a1"])},
        ),
    ]:
        answer = await graphql(alice, query, variables)
        assert answer["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", answer


async def test_an_export_whose_client_goes_away_gives_its_read_back(jobs, settings, monkeypatch):
    """An export reads ClickHouse on one of the Explorer's threads while its client reads the
    stream; a client that stops after one chunk ends that read (its slot free again) instead
    of holding it for the rest of the export. Broken, `pending` would stay 1."""
    monkeypatch.setattr(search, "EXPORT_CHUNK_BYTES", 512)  # many chunks: the queue fills
    slots = read_slots.ReadSlots(1, 1, queue_per_owner=4, max_wait_s=30)
    explorer = explore.Explorer(settings.clickhouse_url, timeout_s=10, slots=slots)
    scope = search.SearchScope("alice")
    try:
        chunks = explorer.stream(
            "alice",
            search.export_chunks,
            scope,
            search.SearchFilters(),
            fmt="ndjson",
            order="desc",
            max_rows=1000,
        )
        first = await anext(chunks)
        assert first.endswith(b"\n") and slots.running == 1
        await chunks.aclose()
        await asyncio.to_thread(
            wait_for, lambda: slots.running == 0, 10, what="the export's read to end"
        )
        page = await explorer.run(
            "alice", search.search_events, scope, search.SearchFilters(), limit=5
        )
        assert len(page) == 5  # the one thread serves the next read
    finally:
        explorer.close()
