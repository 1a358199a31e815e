"""The GraphQL endpoint: the same jobs as REST, its limits, ownership, and subscriptions over
graphql-transport-ws riding on the API's LISTEN fan-out."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import uuid

import aiohttp
import pytest

import api_state
import eventhorizon
import graphql_api
import graphql_resolvers
import jobs
from helpers import (
    VALID,
    bearer,
    capture_access_log,
    completed_job,
    gql,
    job_row,
    jsonl,
    upload,
    wait_until,
    watchers_dropped,
)
from live_states import (
    batches,
    flood_until_dropped,
    listener_listening,
    notify,
)
from network import (
    close_code_of,
    read_frame,
    read_until_the_connection_ends,
    upgrade_with_a_tiny_buffer,
)
from processes import serve_api

JOB_FIELDS = """id fileName sizeBytes status linesTotal linesProcessed linesValid linesInvalid
  progress createdAt startedAt completedAt error format formats { name lines } compression
  delivery { delivered waiting dead }"""
JOB_QUERY = f"query Job($id: ID!) {{ job(id: $id) {{ {JOB_FIELDS} }} }}"
SUBSCRIBE_JOB = f"subscription Watch($id: ID!) {{ job(id: $id) {{ {JOB_FIELDS} }} }}"
PROTOCOL = graphql_api.PROTOCOL


def as_rest(job: dict) -> dict:
    """A GraphQL Job in the REST job's shape, to compare the two field by field."""
    return {
        "job_id": job["id"],
        "file_name": job["fileName"],
        "size_bytes": job["sizeBytes"],
        "status": job["status"].lower(),
        "lines_total": job["linesTotal"],
        "lines_processed": job["linesProcessed"],
        "lines_valid": job["linesValid"],
        "lines_invalid": job["linesInvalid"],
        "progress": job["progress"],
        "created_at": job["createdAt"],
        "started_at": job["startedAt"],
        "completed_at": job["completedAt"],
        "error": job["error"],
        "format": job["format"],
        "formats": {f["name"]: f["lines"] for f in job["formats"]},
        "compression": job["compression"],
        "delivery": job["delivery"],
    }


# --------------------------------------------------------------------------- queries


async def test_every_field_is_the_rest_answer(client, start_process):
    content = (
        jsonl(VALID, VALID) + b"{broken\n" + jsonl({**VALID, "level": "loud"}, VALID) + b"nope\n"
    )
    job = await (await upload(client, content)).json()
    start_process("worker.py")
    rest = await completed_job(client, job["job_id"])

    body = await gql(
        client,
        f"""query Job($id: ID!) {{
        job(id: $id) {{ {JOB_FIELDS}
          first: errors(first: 2) {{ items {{ lineNo reason }} nextAfterLine }}
          rest: errors(first: 2, afterLine: 4) {{ items {{ lineNo reason }} nextAfterLine }} }}
        jobs(limit: 5) {{ {JOB_FIELDS} }}
        completed: jobs(status: COMPLETED) {{ id }}
        queued: jobs(status: QUEUED) {{ id }} }}""",
        {"id": job["job_id"]},
    )
    assert "errors" not in body, body
    data = body["data"]
    assert as_rest(data["job"]) == rest
    listed = [as_rest(j) for j in data["jobs"]]
    assert all(j.pop("delivery") == rest["delivery"] for j in listed)  # GET job alone has it
    assert listed == (await (await client.get("/api/v1/jobs?limit=5")).json())["jobs"]
    assert data["completed"] == [{"id": job["job_id"]}] and data["queued"] == []

    page = await (await client.get(f"/api/v1/jobs/{job['job_id']}/errors?limit=2")).json()
    assert [
        {"line_no": e["lineNo"], "reason": e["reason"]} for e in data["job"]["first"]["items"]
    ] == page["errors"]
    assert page["next"].endswith(f"after_line={data['job']['first']['nextAfterLine']}")
    page2 = await (await client.get(page["next"])).json()
    assert (
        [e["lineNo"] for e in data["job"]["rest"]["items"]]
        == [e["line_no"] for e in page2["errors"]]
        == [6]
    )
    assert data["job"]["rest"]["nextAfterLine"] is None and page2["next"] is None


async def test_variables_operation_name_and_introspection(client):
    job = await (await upload(client, jsonl(VALID))).json()
    document = JOB_QUERY + " query Mine { jobs { id status } }"
    mine = await gql(client, document, operationName="Mine")
    assert mine == {"data": {"jobs": [{"id": job["job_id"], "status": "QUEUED"}]}}
    one = await gql(client, document, {"id": job["job_id"]}, operationName="Job")
    assert one["data"]["job"]["id"] == job["job_id"]

    missing = await gql(client, JOB_QUERY, {})
    assert "data" not in missing and "$id" in missing["errors"][0]["message"]
    wrong = await gql(client, JOB_QUERY, {"id": ["not", "an", "id"]})
    assert "data" not in wrong and wrong["errors"]

    types = await gql(
        client,
        "{ __schema { queryType { name } subscriptionType { name } } "
        '__type(name: "JobStatus") { enumValues { name } } }',
    )
    assert types["data"]["__schema"] == {
        "queryType": {"name": "Query"},
        "subscriptionType": {"name": "Subscription"},
    }
    assert [v["name"] for v in types["data"]["__type"]["enumValues"]] == [
        "QUEUED",
        "PROCESSING",
        "COMPLETED",
        "FAILED",
    ]
    from graphql import get_introspection_query

    full = await gql(client, get_introspection_query())
    assert "errors" not in full and full["data"]["__schema"]["types"]

    schema = await client.get("/graphql/schema.graphql")
    assert schema.status == 200 and schema.content_type == "text/plain"
    assert await schema.text() == graphql_resolvers.SCHEMA_PATH.read_text()


async def test_errors_follow_the_graphql_spec(client):
    syntax = await gql(client, "{ jobs { id ")
    assert list(syntax) == ["errors"] and "Syntax Error" in syntax["errors"][0]["message"]
    assert syntax["errors"][0]["locations"]
    invalid = await gql(client, "{ jobs { id nope } }")
    assert list(invalid) == ["errors"] and "'nope'" in invalid["errors"][0]["message"]
    over_post = await gql(client, 'subscription { job(id: "x") { id } }')
    assert "WebSocket" in over_post["errors"][0]["message"]

    for body, status in [
        (b"not json", 400),
        (b'{"query": 7}', 400),
        (b"[]", 400),
        (b'{"query": "{ jobs { id } }", "variables": [1]}', 400),
        (json.dumps({"query": "x" * 70_000}).encode(), 413),
    ]:
        response = await client.post(
            "/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        assert response.status == status, await response.text()
        assert response.content_type == "application/problem+json"
    response = await client.post(
        "/graphql", data=b"{ jobs { id } }", headers={"Content-Type": "application/graphql"}
    )
    assert response.status == 415
    plain = await client.get("/graphql")
    assert plain.status == 400 and plain.content_type == "application/problem+json"


async def test_without_a_working_token_graphql_is_401(settings, aiohttp_client):
    client = await aiohttp_client(eventhorizon.init_app(settings))
    for headers in ({}, bearer("eh_1_" + "A" * 43)):
        response = await client.post("/graphql", json={"query": "{ jobs { id } }"}, headers=headers)
        assert response.status == 401 and "Bearer" in response.headers["WWW-Authenticate"]
    assert (await client.get("/graphql/schema.graphql")).status == 200  # the contract is public


@pytest.mark.parametrize(
    ("query", "words"),
    [
        (
            "{ jobs { "
            + "errors { items { lineNo } } " * 1
            + "id } "
            + " ".join(f"a{i}: jobs {{ id }}" for i in range(31))
            + " }",
            "31 aliases, more than 30",
        ),
        (
            "{ " + " ".join(f"jobs {{ {' '.join(['id'] * 10)} }}" for _ in range(40)) + " }",
            "more than 300 fields",
        ),
        (
            "{ __schema { types { " + "fields { type { " * 7 + "name" + " } }" * 7 + " } } }",
            "17 deep, more than 15",
        ),
        (
            "fragment A on Job { id ...B ...B ...B } fragment B on Job { id ...C ...C ...C } "
            "fragment C on Job { id ...D ...D ...D } fragment D on Job { id ...E ...E ...E } "
            "fragment E on Job { id fileName status } { jobs { ...A } }",
            "more than 300 fields",
        ),
        ("{ jobs { id } }" + " " * 20_000, "longer than 16384 characters"),
        ("{ jobs { " + "id " * 2100 + "} }", "more than 2000 tokens"),
    ],
)
async def test_a_hostile_query_is_refused_cheaply(client, query, words):
    body = await gql(client, query)
    assert "data" not in body, body
    assert any(words in e["message"] for e in body["errors"]), body["errors"]


async def test_argument_bounds_and_the_invalid_line_budget(client):
    job = await (await upload(client, jsonl(VALID))).json()
    for query, words in [
        ("{ jobs(limit: 0) { id } }", "limit must be an integer from 1 to 100"),
        ("{ jobs(limit: 101) { id } }", "from 1 to 100"),
        (
            f'{{ job(id: "{job["job_id"]}") {{ errors(first: 1001) {{ nextAfterLine }} }} }}',
            "first must be an integer from 1 to 1000",
        ),
        (
            f'{{ job(id: "{job["job_id"]}") {{ errors(afterLine: -1) {{ nextAfterLine }} }} }}',
            "afterLine must be",
        ),
    ]:
        body = await gql(client, query)
        assert words in body["errors"][0]["message"], body
        assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT"}
    aliases = " ".join(
        f"e{i}: errors(first: 1000, afterLine: {i}) {{ nextAfterLine }}" for i in range(11)
    )
    body = await gql(client, f'{{ job(id: "{job["job_id"]}") {{ {aliases} }} }}')
    assert "more than 10000 invalid lines" in body["errors"][0]["message"]


async def test_jobs_errors_is_one_query_for_all_jobs(client, monkeypatch):
    for i in range(3):
        await upload(client, jsonl(VALID), f"app{i}.jsonl")
    calls = []
    read = jobs.read_line_errors

    async def counted(pool, job_ids, **kwargs):
        calls.append(len(job_ids))
        return await read(pool, job_ids, **kwargs)

    monkeypatch.setattr(jobs, "read_line_errors", counted)
    body = await gql(client, "{ jobs { id errors(first: 5) { items { lineNo } } } }")
    assert len(body["data"]["jobs"]) == 3 and calls == [3]


async def test_another_owners_job_is_null_and_stats_are_for_admins(two_owners):
    alice, bob, root = two_owners
    job = await (await upload(alice, jsonl(VALID))).json()
    query = f'{{ job(id: "{job["job_id"]}") {{ id }} jobs {{ id }} }}'
    assert await gql(bob, query) == {"data": {"job": None, "jobs": []}}
    assert await gql(bob, '{ job(id: "not-a-uuid") { id } }') == {"data": {"job": None}}
    assert (await gql(alice, query))["data"]["job"] == {"id": job["job_id"]}
    assert (await gql(root, query))["data"]["jobs"] == [{"id": job["job_id"]}]

    forbidden = await gql(bob, "{ stats { jobs { queued } } }")
    assert forbidden["data"] == {"stats": None}
    assert forbidden["errors"][0]["extensions"] == {"code": "FORBIDDEN"}
    assert forbidden["errors"][0]["path"] == ["stats"]
    stats = await gql(
        root,
        "{ stats { jobs { queued processing completed failed } "
        "outbox { backlog oldestAgeS dead } } }",
    )
    rest = await (await root.get("/api/v1/stats")).json()
    assert stats["data"]["stats"]["jobs"] == rest["jobs"]
    assert stats["data"]["stats"]["outbox"]["backlog"] == rest["outbox"]["backlog"]


async def test_a_database_error_is_not_shown(client, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("secret internals at 10.1.2.3")

    monkeypatch.setattr(jobs, "read_jobs", broken)
    body = await gql(client, "{ jobs { id } }")
    assert body["errors"][0]["message"] == "an unexpected error occurred"
    assert "10.1.2.3" not in json.dumps(body)


# --------------------------------------------------------------------------- subscriptions


async def connect(client, payload: dict | None = None, **kwargs):
    """A graphql-transport-ws connection, initialised with the client's token."""
    session = getattr(client, "session", client)  # a TestClient, or a plain ClientSession
    token = session.headers.get("Authorization", "")
    ws = await client.ws_connect("/graphql", protocols=(PROTOCOL,), **kwargs)
    await ws.send_json(
        {
            "type": "connection_init",
            "payload": payload if payload is not None else {"Authorization": token},
        }
    )
    return ws


async def subscribe(ws, job_id: str, op_id: str = "1", query: str = SUBSCRIBE_JOB) -> None:
    await ws.send_json(
        {"id": op_id, "type": "subscribe", "payload": {"query": query, "variables": {"id": job_id}}}
    )


async def messages_until_complete(ws, op_id: str = "1", timeout: float = 60) -> list[dict]:
    received = []
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive_json()
            if message.get("id") == op_id:
                received.append(message)
                if message["type"] in ("complete", "error"):
                    return received


async def test_a_subscription_follows_a_job_to_completed_with_a_real_worker(
    client, start_process, db
):
    lines = [dict(VALID, message=f"line {i}") for i in range(1, 201)]
    job = await (
        await upload(client, jsonl(*lines[:50]) + b"{broken\n" + jsonl(*lines[50:]))
    ).json()
    ws = await connect(client)
    assert await ws.receive_json(timeout=10) == {"type": "connection_ack"}
    await subscribe(ws, job["job_id"])
    first = await ws.receive_json(timeout=10)
    assert first["type"] == "next" and first["payload"]["data"]["job"]["status"] == "QUEUED"

    start_process("worker.py", EH_BATCH_LINES="40")
    received = [first, *await messages_until_complete(ws)]
    assert [m["type"] for m in received] == ["next"] * (len(received) - 1) + ["complete"]
    states = [as_rest(m["payload"]["data"]["job"]) for m in received[:-1]]
    assert states[-1] == await (await client.get(f"/api/v1/jobs/{job['job_id']}")).json()
    assert states[-1]["status"] == "completed" and states[-1]["lines_invalid"] == 1
    assert len({s["lines_processed"] for s in states}) >= 10  # at least every 10 %
    assert [s["lines_processed"] for s in states] == sorted(s["lines_processed"] for s in states)

    await ws.send_json({"type": "ping"})  # the connection is still open, for more
    assert await ws.receive_json(timeout=10) == {"type": "pong"}
    await ws.send_json(
        {"id": "q", "type": "subscribe", "payload": {"query": "{ jobs { id status } }"}}
    )
    assert await messages_until_complete(ws, "q") == [
        {
            "id": "q",
            "type": "next",
            "payload": {"data": {"jobs": [{"id": job["job_id"], "status": "COMPLETED"}]}},
        },
        {"id": "q", "type": "complete"},
    ]
    assert not client.server.app[api_state.WATCHERS].watching
    await ws.close()


async def test_a_subscription_gets_every_committed_state_from_the_fan_out(client, db):
    job = await (await upload(client, jsonl(*[VALID] * 30))).json()
    await listener_listening(db)
    ws = await connect(client)
    await ws.receive_json(timeout=10)
    await subscribe(ws, job["job_id"])
    assert (await ws.receive_json(timeout=10))["payload"]["data"]["job"]["status"] == "QUEUED"
    started, ten, twenty, thirty = batches(job_row(db, job["job_id"]), [0, 10, 20, 30])
    notify(db, [started, ten, started, twenty, ten, thirty, dict(thirty, status="completed")])
    received = await messages_until_complete(ws)
    assert [
        (m["payload"]["data"]["job"]["status"], m["payload"]["data"]["job"]["linesProcessed"])
        for m in received[:-1]
    ] == [
        ("PROCESSING", 0),
        ("PROCESSING", 10),
        ("PROCESSING", 20),
        ("PROCESSING", 30),
        ("COMPLETED", 30),
    ]


async def test_a_subscription_to_another_owners_or_a_deleted_job_is_null(two_owners, db):
    alice, bob, _root = two_owners
    job = await (await upload(alice, jsonl(VALID))).json()
    ws = await connect(bob)
    assert await ws.receive_json(timeout=10) == {"type": "connection_ack"}
    await subscribe(ws, job["job_id"])
    assert await messages_until_complete(ws) == [
        {"id": "1", "type": "next", "payload": {"data": {"job": None}}},
        {"id": "1", "type": "complete"},
    ]

    await listener_listening(db)
    mine = await connect(alice)
    await mine.receive_json(timeout=10)
    await subscribe(mine, job["job_id"])
    assert (await mine.receive_json(timeout=10))["type"] == "next"
    assert (await alice.delete(f"/api/v1/jobs/{job['job_id']}")).status == 204
    assert await messages_until_complete(mine) == [
        {"id": "1", "type": "next", "payload": {"data": {"job": None}}},
        {"id": "1", "type": "complete"},
    ]
    await ws.close()
    await mine.close()


async def close_code(ws) -> int:
    message = await ws.receive(timeout=15)
    assert message.type == aiohttp.WSMsgType.CLOSE, message
    return ws.close_code


async def test_the_protocol_refuses_what_it_should(client, monkeypatch):
    job = await (await upload(client, jsonl(VALID))).json()
    assert await close_code(await connect(client, {"token": "eh_1_" + "A" * 43})) == 4403
    assert await close_code(await connect(client, {}, headers={"Authorization": ""})) == 4403
    upgrade_header = await connect(client, {})  # no token in the payload: the upgrade's counts
    assert await upgrade_header.receive_json(timeout=10) == {"type": "connection_ack"}
    await upgrade_header.close()

    ws = await client.session.ws_connect(
        client.make_url("/graphql"), protocols=(PROTOCOL,), headers={"Authorization": ""}
    )
    await subscribe(ws, job["job_id"])
    assert await close_code(ws) == 4401  # subscribe before connection_ack

    ws = await client.session.ws_connect(client.make_url("/graphql"), protocols=("other",))
    assert await close_code(ws) == 4406

    ws = await connect(client, {"token": client.session.headers["Authorization"][7:]})
    assert await ws.receive_json(timeout=10) == {"type": "connection_ack"}
    await subscribe(ws, job["job_id"], query="{ jobs { id nope } }")
    error = await ws.receive_json(timeout=10)
    assert error["type"] == "error" and "'nope'" in error["payload"][0]["message"]
    await subscribe(ws, job["job_id"], op_id="a")
    await ws.receive_json(timeout=10)
    await subscribe(ws, job["job_id"], op_id="a")
    assert await close_code(ws) == 4409

    ws = await connect(client)
    await ws.receive_json(timeout=10)
    await ws.send_json({"type": "connection_init"})
    assert await close_code(ws) == 4429

    ws = await connect(client)
    await ws.receive_json(timeout=10)
    await ws.send_str("not json")
    assert await close_code(ws) == 4400

    client.server.app[api_state.GRAPHQL].init_timeout_s = 0.2  # EH_GRAPHQL_INIT_TIMEOUT_S
    ws = await client.session.ws_connect(client.make_url("/graphql"), protocols=(PROTOCOL,))
    assert await close_code(ws) == 4408

    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.session.ws_connect(
            client.make_url("/graphql"),
            protocols=(PROTOCOL,),
            headers={"Origin": "https://evil.example"},
        )
    assert refused.value.status == 403


async def test_a_graphql_socket_over_the_limits_is_refused(settings, aiohttp_client, make_token):
    """GraphQL sockets count with /ws/jobs's: per owner (known at connection_init: closed
    1013) and per process (refused before the upgrade: 503)."""
    capped = dataclasses.replace(settings, max_websockets=2, max_websockets_per_owner=1)
    alice = await aiohttp_client(eventhorizon.init_app(capped), headers=bearer(make_token("alice")))
    limits = alice.server.app[api_state.WATCHERS].limits
    job_id = (await (await upload(alice, jsonl(VALID))).json())["job_id"]
    held = await alice.ws_connect(f"/ws/jobs/{job_id}")  # the owner's one WebSocket
    ws = await connect(alice)
    assert await close_code(ws) == 1013
    await held.close()
    await wait_until(lambda: not limits.open, what="the server to notice the close")
    ws = await connect(alice)
    assert await ws.receive_json(timeout=10) == {"type": "connection_ack"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await alice.ws_connect(f"/ws/jobs/{job_id}")  # now the GraphQL socket holds it
    assert refused.value.status == 429

    async with aiohttp.ClientSession(
        base_url=alice.server.make_url("/"), headers=bearer(make_token("bob"))
    ) as bob:
        bobs = await connect(bob)
        assert await bobs.receive_json(timeout=10) == {"type": "connection_ack"}
        assert limits.open == 2
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await bob.ws_connect("/graphql", protocols=(PROTOCOL,))
        assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "10"
        await bobs.close()
    await ws.close()


def masked_frame(text: str) -> bytes:
    """A client's text frame (clients must mask theirs)."""
    payload, mask = text.encode(), os.urandom(4)
    head = (
        bytes([0x81, 0x80 | len(payload)])
        if len(payload) < 126
        else bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big")
    )
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def subscribe_and_stop_reading(host: str, port: int, token: str, job_id) -> socket.socket:
    """A graphql-transport-ws client with a tiny receive buffer that reads the ack and the
    first `next`, and nothing more."""
    loop = asyncio.get_running_loop()
    sock = await upgrade_with_a_tiny_buffer(
        host, port, "/graphql", f"Sec-WebSocket-Protocol: {PROTOCOL}"
    )
    await loop.sock_sendall(
        sock, masked_frame(json.dumps({"type": "connection_init", "payload": {"token": token}}))
    )
    assert json.loads(await read_frame(sock)) == {"type": "connection_ack"}
    await loop.sock_sendall(
        sock,
        masked_frame(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": SUBSCRIBE_JOB, "variables": {"id": str(job_id)}},
                }
            )
        ),
    )
    first = json.loads(await read_frame(sock))
    assert first["payload"]["data"]["job"]["status"] == "QUEUED"
    return sock


async def test_a_subscriber_that_stops_reading_is_dropped_and_holds_back_no_one(client, db):
    """As on /ws/jobs: the fan-out drops the stalled subscription (the socket closes 1013),
    while another job's subscriber gets every state and the API keeps answering."""
    slow_job = await (await upload(client, jsonl(VALID), "長" * 240 + ".jsonl")).json()
    other_job = await (await upload(client, jsonl(VALID))).json()
    slow_id = uuid.UUID(slow_job["job_id"])
    await listener_listening(db)
    slow = await subscribe_and_stop_reading(
        client.host, client.port, client.session.headers["Authorization"][7:], slow_id
    )
    try:
        other = await connect(client)
        await other.receive_json(timeout=10)
        await subscribe(other, other_job["job_id"])
        assert (await other.receive_json(timeout=30))["type"] == "next"

        slow_row = job_row(db, slow_job["job_id"])

        async def other_got(rounds: int, other_state: dict) -> None:
            message = await other.receive_json(timeout=30)
            assert message["payload"]["data"]["job"]["linesProcessed"] == rounds

        with capture_access_log() as logs:
            await flood_until_dropped(db, logs, slow_row, other_job["job_id"], other_got)
            assert (await asyncio.wait_for(client.get("/healthz"), 10)).status == 200
        assert [(e["job_id"], e["close_code"]) for e in watchers_dropped(logs)] == [
            (str(slow_id), 1013)
        ]
        assert not client.server.app[api_state.WATCHERS].watching.get(slow_id)
        frames = await read_until_the_connection_ends(slow, timeout=120)
        assert close_code_of(frames) in (1013, None)  # None: reset, close frame unread
    finally:
        slow.close()
    assert client.server.app[api_state.WATCHERS].limits.open == 1  # the slot given back
    await other.close()


async def test_graphql_sockets_are_closed_1001_when_the_server_stops(
    settings, start_process, make_token
):
    base, api = await asyncio.to_thread(serve_api, start_process)
    async with aiohttp.ClientSession(base_url=base, headers=bearer(make_token())) as session:
        job = await (await upload(session, jsonl(VALID))).json()
        idle, watching = await connect(session), await connect(session)
        for ws in (idle, watching):
            assert await ws.receive_json(timeout=10) == {"type": "connection_ack"}
        await subscribe(watching, job["job_id"])
        assert (await watching.receive_json(timeout=30))["type"] == "next"
        api.terminate()
        # Both read at once: each close is answered as it comes, as a client would (read one
        # after the other, the second's answer could miss the server's close timeout).
        assert await asyncio.gather(close_code(idle), close_code(watching)) == [1001, 1001]
    assert await asyncio.to_thread(api.wait, 30) == 0
