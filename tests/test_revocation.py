"""A revoked token ends what it holds: its open WebSockets (/ws/jobs and GraphQL) close with
4403 in every API process, and a GraphQL socket's operations are checked against the token as
they start. Unauthenticated GraphQL sockets: connection_init in time or closed, and counted."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import pytest

import api_state
import eventhorizon
import graphql_api
from helpers import VALID, bearer, jsonl, upload
from processes import serve_api, settings_env

PROTOCOL = graphql_api.PROTOCOL
JOBS_QUERY = "query { jobs(limit: 5) { id status } }"


def token_id(token: str) -> str:
    return token.split("_")[1]


def revoke_with_the_cli(run_script, settings, token: str) -> None:
    done = run_script(
        "eventhorizon.py", "tokens", "revoke", token_id(token), env=settings_env(settings)
    )
    assert done.returncode == 0, done.stderr


async def graphql_socket(session: aiohttp.ClientSession, url: str, token: str):
    """An initialised (acknowledged) graphql-transport-ws connection."""
    ws = await session.ws_connect(f"{url}/graphql", protocols=(PROTOCOL,))
    await ws.send_json({"type": "connection_init", "payload": {"token": token}})
    assert await ws.receive_json(timeout=30) == {"type": "connection_ack"}
    return ws


async def ask(ws, op_id: str) -> dict:
    """Run JOBS_QUERY on the socket: its `next` message (or the close, if it closes)."""
    await ws.send_json({"id": op_id, "type": "subscribe", "payload": {"query": JOBS_QUERY}})
    message = await ws.receive(timeout=30)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    return message.json()


async def close_code(ws, timeout: float = 30) -> int:
    """The code the server closes the socket with (states still queued are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive()
            if message.type == aiohttp.WSMsgType.CLOSE:  # the code the server sent
                return message.data
            assert message.type == aiohttp.WSMsgType.TEXT, message


async def test_revoking_a_token_closes_its_sockets_in_every_api_process(
    settings, start_process, make_token, run_script
):
    """Two API processes, each holding a /ws/jobs stream and a GraphQL socket of the token to
    revoke, and one of another token of the same owner. The backstop re-check is an hour
    away: only the revocation's notification can close them."""
    revoked, kept = make_token("alice"), make_token("alice")
    quiet = {"EH_TOKEN_RECHECK_S": "3600"}
    first_url, _ = await asyncio.to_thread(serve_api, start_process, **quiet)
    second_url, _ = await asyncio.to_thread(serve_api, start_process, **quiet)
    async with (
        aiohttp.ClientSession(headers=bearer(kept)) as keeper,
        aiohttp.ClientSession(headers=bearer(revoked)) as holder,
    ):
        job = await (await upload_to(keeper, first_url)).json()  # queued: no worker runs
        held, others = [], []
        for url in (first_url, second_url):
            stream = await holder.ws_connect(f"{url}/ws/jobs/{job['job_id']}")
            assert (await stream.receive_json(timeout=30))["status"] == "queued"
            held += [stream, await graphql_socket(holder, url, revoked)]
            others.append(await graphql_socket(keeper, url, kept))
        assert (await ask(held[1], "before"))["type"] == "next"

        await asyncio.to_thread(revoke_with_the_cli, run_script, settings, revoked)

        assert [await close_code(ws) for ws in held] == [4403] * 4
        for n, ws in enumerate(others):  # the owner's other token is untouched
            answer = await ask(ws, f"after-{n}")
            assert answer["type"] == "next" and answer["payload"]["data"]["jobs"]
        assert (await holder.get(f"{first_url}/api/v1/jobs")).status == 401


async def upload_to(session: aiohttp.ClientSession, url: str):
    form = aiohttp.FormData()
    form.add_field("file", jsonl(VALID), filename="app.jsonl", content_type="application/x-ndjson")
    response = await session.post(f"{url}/api/v1/files/upload", data=form)
    assert response.status == 202, await response.text()
    return response


async def test_a_revocation_whose_notification_was_missed_is_caught_by_the_recheck(
    settings, aiohttp_client, make_token, db
):
    """Revoked behind the listener's back (no NOTIFY): the periodic re-check closes them."""
    token = make_token("alice")
    app = eventhorizon.init_app(dataclasses.replace(settings, token_recheck_s=0.5))
    client = await aiohttp_client(app, headers=bearer(token))
    job = await (await upload(client, jsonl(VALID))).json()
    stream = await client.ws_connect(f"/ws/jobs/{job['job_id']}")
    assert (await stream.receive_json(timeout=30))["status"] == "queued"
    ws = await graphql_socket(client.session, str(client.make_url("")).rstrip("/"), token)
    db.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE token_id = %s", (int(token_id(token)),)
    )
    assert await close_code(stream) == 4403
    assert await close_code(ws) == 4403


async def test_each_operation_is_checked_against_the_token_as_it_starts(
    settings, aiohttp_client, make_token, db
):
    """No notification and no re-check in sight: the next operation itself finds the token
    revoked, and is refused by closing the socket (4403) rather than answered."""
    token = make_token("alice")
    app = eventhorizon.init_app(dataclasses.replace(settings, token_recheck_s=3600))
    client = await aiohttp_client(app, headers=bearer(token))
    ws = await graphql_socket(client.session, str(client.make_url("")).rstrip("/"), token)
    assert (await ask(ws, "1"))["type"] == "next"
    db.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE token_id = %s", (int(token_id(token)),)
    )
    await ws.send_json({"id": "2", "type": "subscribe", "payload": {"query": JOBS_QUERY}})
    assert await close_code(ws) == 4403


# --------------------------------------------------------------------------- before connection_init


async def test_pings_do_not_keep_an_unauthenticated_graphql_socket_open(settings, aiohttp_client):
    app = eventhorizon.init_app(dataclasses.replace(settings, graphql_init_timeout_s=1.0))
    client = await aiohttp_client(app)
    ws = await client.ws_connect("/graphql", protocols=(PROTOCOL,))

    async def keep_pinging():
        while True:
            await ws.send_json({"type": "ping"})
            await asyncio.sleep(0.1)

    pinging = asyncio.create_task(keep_pinging())
    try:
        assert await close_code(ws) == 4408
    finally:
        pinging.cancel()
        await asyncio.gather(pinging, return_exceptions=True)


async def test_unauthenticated_graphql_sockets_count_against_the_limits_and_the_gauge(
    settings, aiohttp_client, make_token
):
    capped = dataclasses.replace(settings, max_websockets=2, graphql_init_timeout_s=60)
    app = eventhorizon.init_app(capped)
    client = await aiohttp_client(app)
    anonymous = [await client.ws_connect("/graphql", protocols=(PROTOCOL,)) for _ in range(2)]
    metrics = await (await client.get("/metrics")).text()
    assert "eventhorizon_websockets 2.0" in metrics
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/graphql", protocols=(PROTOCOL,))
    assert refused.value.status == 503
    await anonymous[0].close()
    limits = app[api_state.WATCHERS].limits
    for _ in range(100):  # the server notices the close
        if limits.open < 2:
            break
        await asyncio.sleep(0.1)
    token = make_token("alice")
    ws = await graphql_socket(client.session, str(client.make_url("")).rstrip("/"), token)
    assert limits.open == 2 and limits.open_by_owner == {"alice": 1}
    await ws.close()
    await anonymous[1].close()
