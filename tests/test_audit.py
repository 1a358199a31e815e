"""The audit trail (audit.py): every audited action leaves exactly one `audit.*` event in
ClickHouse, written in the action's transaction (an API SIGKILLed right after the commit
loses none), with its actor, token id, address, object and result; refusals leave one each up
to the per-client bound, then one summary, however large the flood; owners read the audit
events of their own actions through search, admins everyone's; a job's deletion leaves them
be; no event ever holds a token."""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import json

import aiohttp
import clickhouse_connect
import pytest

import audit
import config
import core
import event_log
import eventhorizon
import retention
from helpers import MYAPP, aged, all_pages, bearer, jsonl, make_job, relay_all, upload
from processes import serve_api, settings_env

FORMAT = {**MYAPP, "name": "shop"}


def audit_events(settings: config.Settings) -> list[dict]:
    """Every audit event event_log holds: its type, owner column and context (the actor's)."""
    with clickhouse_connect.get_client(dsn=settings.clickhouse_url) as ch:
        rows = ch.query(
            "SELECT event_type, owner, toJSONString(event_context), job_id, line_no "
            "FROM event_log WHERE startsWith(event_type, 'audit.') "
            "ORDER BY event_time"
        ).result_rows
    return [
        {"event_type": t, "owner": owner, **json.loads(c), "job_id": str(j), "line_no": n}
        for t, owner, c, j, n in rows
    ]


def every_event_text(settings: config.Settings) -> str:
    with clickhouse_connect.get_client(dsn=settings.clickhouse_url) as ch:
        return "\n".join(
            r[0] for r in ch.query("SELECT toJSONString(tuple(*)) FROM event_log").result_rows
        )


def secret_of(token: str) -> str:
    """The secret of `eh_<id>_<secret>`; the secret is URL-safe base64 and may hold "_" too."""
    return token.split("_", 2)[2]


def of_type(events: list[dict], event_type: str) -> list[dict]:
    return [e for e in events if e["event_type"] == event_type]


# --------------------------------------------------------------------------- the client address


TRUSTED = config.parse_networks("10.0.0.0/8, 127.0.0.1", "test")


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    [
        ("203.0.113.5", ["198.51.100.1"], TRUSTED, "203.0.113.5"),  # not a proxy: header ignored
        ("127.0.0.1", ["198.51.100.1"], (), "127.0.0.1"),  # no proxy trusted: header ignored
        ("127.0.0.1", ["198.51.100.1"], TRUSTED, "198.51.100.1"),
        (
            "127.0.0.1",
            ["6.6.6.6, 198.51.100.1, 10.1.2.3"],
            TRUSTED,
            "198.51.100.1",
        ),  # right-most untrusted
        ("127.0.0.1", ["6.6.6.6", "198.51.100.1,10.1.2.3"], TRUSTED, "198.51.100.1"),  # two headers
        ("127.0.0.1", ["10.9.9.9, 10.1.2.3"], TRUSTED, "10.9.9.9"),  # all proxies: the furthest
        ("127.0.0.1", ["198.51.100.1, junk"], TRUSTED, "127.0.0.1"),  # garbage stops the walk
        ("127.0.0.1", [], TRUSTED, "127.0.0.1"),
        ("::ffff:127.0.0.1", ["2001:db8::7"], TRUSTED, "2001:db8::7"),
    ],
)
def test_the_client_address_believes_x_forwarded_for_only_from_trusted_proxies(
    peer, forwarded, trusted, client
):
    assert audit.client_address(peer, forwarded, trusted) == client


# --------------------------------------------------------------------------- the refusals' bound


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_refusals_past_the_bound_are_counted_into_one_summary_per_client_minute():
    clock = Clock()
    settings = dataclasses.replace(config.Settings.from_env({}), audit_denied_per_minute=3)
    trail = audit.DeniedTrail(None, settings, clock=clock, clients=2, queue_size=50)
    alice_ip, other_ip = (
        audit.Actor("", client_ip="198.51.100.1"),
        audit.Actor("", client_ip="2001:db8::1"),
    )
    for n in range(10):
        trail.denied(alice_ip, 401 if n % 2 else 429, method="GET", path="/api/v1/jobs")
    trail.denied(audit.Actor("", client_ip="2001:db8::2"), 401, method="GET", path="/")  # same /64
    trail.denied(other_ip, 401, method="GET", path="/")
    written = trail.take(100)
    assert [e.event_type for e in written] == [audit.DENIED] * 5  # 3 + 2 of one /64
    clock.now += audit.WINDOW_S
    trail.close_expired()
    summaries = trail.take(100)
    assert [
        (e.event_type, e.context["context"]["client_ip"], e.context["context"]["suppressed"])
        for e in summaries
    ] == [(audit.DENIED_SUPPRESSED, "198.51.100.1", 7)]
    assert summaries[0].context["context"]["statuses"] == {"401": 4, "429": 3}
    assert not trail.windows  # both minutes ended, nothing kept

    for n in range(60):  # a full queue: counted as dropped, never waited for
        trail.denied(audit.Actor("", client_ip=f"192.0.2.{n}"), 401, method="GET", path="/")
    assert trail.queue.qsize() == 50 and trail.dropped == 10
    assert len(trail.windows) == 2  # at most `clients` minutes tracked


# --------------------------------------------------------------------------- audited actions


@pytest.fixture
def proxied(settings):
    """The test's settings with the test client's own address a trusted proxy."""
    return dataclasses.replace(settings, trusted_proxies="127.0.0.1/32")


async def test_each_action_leaves_one_audit_event_that_names_actor_address_object_and_result(
    proxied, aiohttp_client, make_token, db
):
    relay_all(db, proxied)  # event_log made, for the export
    alice_token, bob_token = make_token("alice"), make_token("bob")
    alice = await aiohttp_client(
        eventhorizon.init_app(proxied),
        headers={**bearer(alice_token), "X-Forwarded-For": "6.6.6.6, 198.51.100.7"},
    )
    bob = aiohttp.ClientSession(base_url=alice.server.make_url("/"), headers=bearer(bob_token))
    try:
        response = await upload(alice, jsonl({"message": "hello", "level": "info"}))
        assert response.status == 202
        job_id = (await response.json())["job_id"]
        assert (await alice.post("/api/v1/formats", json=FORMAT)).status == 201
        assert (await alice.delete("/api/v1/formats/shop")).status == 204
        assert (await alice.get("/api/v1/events/export?level=error")).status == 200
        assert (await alice.delete(f"/api/v1/jobs/{job_id}")).status == 204
        assert (await bob.get("/api/v1/stats")).status == 403  # a refusal with a valid token
        assert (
            await alice.get("/api/v1/jobs", headers={"Authorization": "Bearer eh_1_nope"})
        ).status == 401
        # Failed actions changed nothing, and are not audited as actions.
        assert (await alice.delete("/api/v1/formats/shop")).status == 404
    finally:
        await bob.close()
    alice_id, bob_id = (int(t.split("_")[1]) for t in (alice_token, bob_token))
    await wait_for_outbox_rows(db, 7)  # the refusals are written by the trail's writer task
    relay_all(db, proxied)
    event_log.delete_events_of_deleted_jobs(
        db, clickhouse_connect.get_client(dsn=proxied.clickhouse_url)
    )  # what the relay does once idle: the job's events go

    with clickhouse_connect.get_client(dsn=proxied.clickhouse_url) as ch:
        assert ch.command("SELECT count() FROM event_log WHERE event_type = 'job.queued'") == 0
    events = audit_events(proxied)
    expected = [
        ("audit.job.uploaded", job_id),
        ("audit.format.registered", "shop"),
        ("audit.format.deleted", "shop"),
        ("audit.events.exported", "/api/v1/events/export"),
        ("audit.job.deleted", job_id),
    ]
    for event_type, object_ in expected:
        [event] = of_type(events, event_type)
        assert event["context"] == {
            **event["context"],
            "actor": "alice",
            "token_id": alice_id,
            "client_ip": "198.51.100.7",
            "object": object_,
            "result": "ok",
        }
        assert len(event["context"]["request_id"]) == 12
        assert event["owner"] == "alice" and event["line_no"] == 0
        assert event["job_id"] == "00000000-0000-0000-0000-000000000000"  # tied to no job
    assert of_type(events, "audit.events.exported")[0]["context"]["filters"] == "level=error"
    refused = of_type(events, audit.DENIED)
    assert [
        (
            e["context"].get("actor"),
            e["context"].get("token_id"),
            e["context"]["result"],
            e["context"]["object"],
            e["owner"],
        )
        for e in refused
    ] == [("bob", bob_id, "403", "/api/v1/stats", "bob"), ("", None, "401", "/api/v1/jobs", "")]
    assert [e["context"]["client_ip"] for e in refused] == ["127.0.0.1", "198.51.100.7"]
    assert len(events) == 7
    text = every_event_text(proxied)
    assert secret_of(alice_token) not in text and secret_of(bob_token) not in text
    assert "eh_1_nope" not in text


async def wait_for_outbox_rows(db, n: int) -> None:
    async def written():
        count = db.execute(
            "SELECT count(*) AS n FROM outbox WHERE event_type LIKE 'audit.%%'"
        ).fetchone()["n"]
        return count >= n or None

    for _ in range(200):
        if await written():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {n} audit events in the outbox")


async def test_x_forwarded_for_is_ignored_from_a_peer_that_is_no_trusted_proxy(
    settings, aiohttp_client, make_token, db
):
    client = await aiohttp_client(
        eventhorizon.init_app(settings),
        headers={**bearer(make_token("alice")), "X-Forwarded-For": "198.51.100.7"},
    )
    assert (await client.post("/api/v1/formats", json=FORMAT)).status == 201
    relay_all(db, settings)
    [event] = audit_events(settings)
    assert event["context"]["client_ip"] == "127.0.0.1"


async def test_a_graphql_socket_refused_at_connection_init_leaves_one_audit_event(
    settings, aiohttp_client, db
):
    client = await aiohttp_client(eventhorizon.init_app(settings))
    ws = await client.session.ws_connect(
        client.make_url("/graphql"), protocols=("graphql-transport-ws",)
    )
    await ws.send_json({"type": "connection_init", "payload": {"token": f"eh_5_{'x' * 43}"}})
    await ws.receive(timeout=10)  # closed: no working token
    await wait_for_outbox_rows(db, 1)
    relay_all(db, settings)
    [event] = audit_events(settings)
    assert (
        event["event_type"],
        event["context"]["object"],
        event["context"]["result"],
        event["context"]["client_ip"],
    ) == (audit.DENIED, "/graphql", "401", "127.0.0.1")
    assert "xxxxxxxx" not in every_event_text(settings)


def test_the_tokens_command_records_the_operating_system_user(settings, db, run_script):
    env = settings_env(settings)

    def tokens(*args: str) -> str:
        done = run_script("eventhorizon.py", "tokens", *args, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    token = tokens("create", "--owner", "carol").splitlines()[-1]
    token_id = int(token.split("_")[1])
    tokens("revoke", str(token_id))
    relay_all(db, settings)
    events = audit_events(settings)
    assert [
        (e["event_type"], e["context"]["actor"], e["context"]["object"], e["owner"]) for e in events
    ] == [
        (
            "audit.token.created",
            f"os:{getpass.getuser()}",
            str(token_id),
            f"os:{getpass.getuser()}",
        ),
        (
            "audit.token.revoked",
            f"os:{getpass.getuser()}",
            str(token_id),
            f"os:{getpass.getuser()}",
        ),
    ]
    assert events[0]["context"]["owner"] == "carol"
    assert "token_id" not in events[0]["context"]  # null: ClickHouse's JSON keeps no nulls
    assert secret_of(token) not in every_event_text(settings)


async def test_retention_settings_and_each_swept_job_leave_one_audit_event(
    two_owners, settings, db
):
    alice, bob, root = two_owners
    assert (await root.put("/api/v1/admin/owners/alice/retention", json={"days": 1})).status == 200
    assert (await root.delete("/api/v1/admin/owners/bob/retention")).status == 204  # had none
    job_id = make_job(settings, db, jsonl({"message": "old"}), owner="alice")
    aged(db, job_id, 2)
    swept = await retention.sweep(settings, core.s3_client(settings))
    assert [j.job_id for j in swept.removed] == [job_id]
    assert (await root.delete("/api/v1/admin/owners/alice/retention")).status == 204
    relay_all(db, settings)
    assert [
        (e["event_type"], e["context"]["actor"], e["context"]["object"], e["owner"])
        for e in audit_events(settings)
    ] == [
        ("audit.retention.set", "root", "alice", "root"),
        ("audit.retention.swept", retention.SWEEPER, str(job_id), retention.SWEEPER),
        ("audit.retention.cleared", "root", "alice", "root"),
    ]


# --------------------------------------------------------------------------- reading the trail


async def test_owners_search_their_own_audit_events_and_admins_everyones(two_owners, db, settings):
    alice, bob, root = two_owners
    for name in ("a1", "a2", "a3"):
        assert (await alice.post("/api/v1/formats", json={**FORMAT, "name": name})).status == 201
    assert (await bob.post("/api/v1/formats", json=FORMAT)).status == 201
    relay_all(db, settings)

    async def objects(client, query: str = "event_type=audit.*") -> list[str]:
        events = await all_pages(client, f"/api/v1/events?{query}&limit=1&order=asc")
        assert all(e["line_no"] == 0 and e["event_type"].startswith("audit.") for e in events)
        return [e["context"]["object"] for e in events]

    assert await objects(alice) == ["a1", "a2", "a3"]
    assert await objects(bob) == ["shop"]
    assert sorted(await objects(root)) == ["a1", "a2", "a3", "shop"]
    assert await objects(root, "event_type=audit.format.registered&context.actor=bob") == ["shop"]
    assert await objects(alice, "event_type=audit.job.uploaded") == []
    # The ordinary search shows no audit event, and the two are not mixed in one read.
    assert (await (await alice.get("/api/v1/events")).json())["events"] == []
    mixed = await alice.get("/api/v1/events?event_type=audit.*&event_type=order.created")
    assert mixed.status == 422
    facets = await (
        await root.get("/api/v1/events/facets?event_type=audit.*&field=context.actor")
    ).json()
    assert facets["values"] == [{"value": "alice", "count": 3}, {"value": "bob", "count": 1}]
    export = await root.get("/api/v1/events/export?event_type=audit.*")
    assert len((await export.text()).splitlines()) == 4
    graph = await (await root.post("/graphql", json={"query": GRAPHQL_AUDIT})).json()
    assert [json.loads(item["context"])["object"] for item in graph["data"]["events"]["items"]] == [
        "shop",
        "a3",
        "a2",
        "a1",
    ]  # newest first, every owner's for an admin
    assert graph["data"]["events"]["nextAfter"] is None


GRAPHQL_AUDIT = """{ events(filter: {eventTypes: ["audit.format.registered"]}, first: 4) {
  items { context } nextAfter } }"""


# --------------------------------------------------------------------------- a real process


async def act(url: str, token: str, action: str) -> str:
    """One audited action against a real API; its object (the job's id, the format's name)."""
    async with aiohttp.ClientSession(base_url=url, headers=bearer(token)) as http:
        if action == "upload":
            form = aiohttp.FormData()
            form.add_field("file", jsonl({"message": "hello"}), filename="app.jsonl")
            async with http.post("/api/v1/files/upload", data=form) as response:
                assert response.status == 202, await response.text()
                return (await response.json())["job_id"]
        if action == "format":
            async with http.post("/api/v1/formats", json=FORMAT) as response:
                assert response.status == 201, await response.text()
                return FORMAT["name"]
        async with http.delete(f"/api/v1/jobs/{action}") as response:
            assert response.status == 204, await response.text()
            return action


def test_audited_actions_are_kept_across_an_api_sigkill_right_after_each_commit(
    settings, start_process, make_token, db
):
    token, objects = make_token("alice"), {}
    for event_type, action in (
        ("audit.job.uploaded", "upload"),
        ("audit.format.registered", "format"),
        ("audit.job.deleted", None),
    ):
        url, proc = serve_api(start_process)
        objects[event_type] = asyncio.run(act(url, token, action or objects["audit.job.uploaded"]))
        proc.kill()  # the answer came after the commit: nothing of the action is left in memory
        proc.wait()
    relay_all(db, settings)
    events = audit_events(settings)
    assert sorted(
        (e["event_type"], e["context"]["object"], e["context"]["actor"]) for e in events
    ) == sorted((t, o, "alice") for t, o in objects.items())


def test_a_flood_of_ten_thousand_refusals_leaves_a_bounded_trail(
    settings, start_process, db, make_token
):
    """The flood is bounded in the trail, and an owner with a working token, at another
    address, is served throughout (every request 200 while the refusals are written)."""
    url, proc = serve_api(start_process, EH_AUDIT_DENIED_PER_MINUTE="5")
    statuses, served = asyncio.run(flood_beside_an_owner(url, 10_000, make_token("alice")))
    assert set(statuses) <= {401, 429} and len(statuses) == 10_000
    assert served and set(served) == {200}, served
    proc.terminate()  # a clean stop writes the summary of the minute under way
    assert proc.wait(timeout=20) == 0
    relay_all(db, settings)
    events = audit_events(settings)
    denied, summaries = of_type(events, audit.DENIED), of_type(events, audit.DENIED_SUPPRESSED)
    minutes = len(summaries)
    assert 1 <= minutes <= 3 and len(denied) <= 5 * minutes, (len(denied), minutes)
    assert len(denied) + sum(s["context"]["suppressed"] for s in summaries) == 10_000
    assert all(s["context"]["client_ip"] == "127.0.0.1" for s in summaries)


async def flood_beside_an_owner(url: str, n: int, token: str) -> tuple[list[int], list[int]]:
    """The flood, and meanwhile an owner's requests one after another until it ends, from
    another address (127.0.0.2: the failed-token limit is per address, and would refuse
    anyone at the flood's)."""
    flooding = asyncio.ensure_future(flood(url, n))
    served: list[int] = []
    owner = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(headers=bearer(token), connector=owner) as session:
        while not flooding.done():
            async with session.get(f"{url}/api/v1/jobs") as response:
                await response.read()
                served.append(response.status)
    return await flooding, served


async def flood(url: str, n: int) -> list[int]:
    statuses: list[int] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:

        async def one(k: int) -> None:
            headers = bearer(f"eh_{k + 1}_{'x' * 43}") if k % 2 else {}
            async with session.get(f"{url}/api/v1/jobs", headers=headers) as response:
                await response.read()
                statuses.append(response.status)

        for start in range(0, n, 500):
            await asyncio.gather(*(one(k) for k in range(start, min(start + 500, n))))
    return statuses


def test_expired_audit_events_are_deleted_by_their_own_retention_only(settings, db):
    """EH_AUDIT_RETENTION_DAYS: what delete_old_audit_events removes; job deletion never."""
    old = audit.event(
        "audit.format.registered", audit.Actor("alice"), environment="test", object_="old"
    )
    new = audit.event(
        "audit.format.registered", audit.Actor("alice"), environment="test", object_="new"
    )
    old = dataclasses.replace(old, event_date_time=old.event_date_time.replace(year=2024))
    with db.transaction():
        for e in (old, new):
            db.execute(core.QUERIES["insert_outbox_event"], e.as_params())
    relay_all(db, settings)
    with event_log.connect_clickhouse(settings.clickhouse_url) as ch:
        assert event_log.delete_old_audit_events(ch, 400) == 1
        assert event_log.delete_old_audit_events(ch, 400) == 0
    assert [e["context"]["object"] for e in audit_events(settings)] == ["new"]
