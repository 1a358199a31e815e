"""Live updates: a job's states over its WebSocket, from the worker's NOTIFY to the client,
against real Postgres."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import socket
import uuid

import aiohttp
import pytest

import api_state
import core
import eventhorizon
import jobs
import live
import worker
from helpers import (
    VALID,
    bearer,
    capture_access_log,
    job_row,
    jsonl,
    upload,
    wait_for,
    wait_until,
    watchers_dropped,
)
from live_states import (
    advance_checkpoint,
    batches,
    flood_until_dropped,
    job_in_memory,
    listener_listening,
    notify,
)
from network import (
    close_code_of,
    ranks,
    read_frame,
    read_until_the_connection_ends,
    received_until_closed,
    upgrade_with_a_tiny_buffer,
)
from processes import serve_api

# --------------------------------------------------------------------------- live updates


async def test_websocket_sends_every_committed_state_once_in_order(client, db):
    """All of a job's batches commit before the API handles the first notification: the
    watcher still gets each batch's state, in order, once, then the final one and 1000."""
    job = await (await upload(client, jsonl(*[VALID] * 100))).json()
    await listener_listening(db)
    ws = await client.ws_connect(f"/ws/jobs/{job['job_id']}")
    assert (await ws.receive_json(timeout=30))["status"] == "queued"

    queued = job_row(db, job["job_id"])
    committed = batches(queued, [0, *range(7, 100, 7), 100])
    final = db.execute(
        "UPDATE jobs SET status = 'completed', started_at = created_at, "
        "completed_at = now(), lines_processed = 100, lines_valid = 100 "
        "WHERE job_id = %s RETURNING *",
        (job["job_id"],),
    ).fetchone()  # what any re-read would find
    notify(db, [*committed, final])

    assert await received_until_closed(ws) == [
        jobs.job_json(jobs.Job(**s)) for s in [*committed, final]
    ]
    assert ws.close_code == 1000


async def test_a_state_repeated_or_older_than_one_sent_is_not_sent(client, db):
    job = await (await upload(client, jsonl(*[VALID] * 30))).json()
    await listener_listening(db)
    ws = await client.ws_connect(f"/ws/jobs/{job['job_id']}")
    assert (await ws.receive_json(timeout=30))["status"] == "queued"
    started, ten, twenty, thirty = batches(job_row(db, job["job_id"]), [0, 10, 20, 30])
    notify(
        db, [started, ten, started, twenty, ten, twenty, thirty, dict(thirty, status="completed")]
    )
    states = await received_until_closed(ws)
    assert ranks(states) == [(1, 0), (1, 10), (1, 20), (1, 30), (2, 30)]


def test_a_job_state_too_long_for_notify_goes_as_ids_only(db):
    row = dataclasses.replace(job_in_memory(), status="failed", error="no storage: " + "x" * 9000)
    payload = jobs.job_notification(row)
    assert json.loads(payload) == {
        "job_id": str(row.job_id),
        "status": "failed",
        "lines_processed": 0,
    }
    db.execute(
        core.QUERIES["notify"], {"channel": jobs.CHANNEL, "payload": payload}
    )  # Postgres takes it

    long_name = dataclasses.replace(
        row, error=None, file_name="📜" * 250 + ".jsonl"
    )  # 12 bytes a character
    assert json.loads(jobs.job_notification(long_name)) == jobs.job_json(long_name)
    for state in (row, long_name):
        assert len(jobs.job_notification(state).encode()) <= jobs.NOTIFY_PAYLOAD_MAX_BYTES


async def test_a_state_too_long_to_notify_is_read_from_the_database(client, db):
    job = await (await upload(client, jsonl(VALID))).json()
    await listener_listening(db)
    ws = await client.ws_connect(f"/ws/jobs/{job['job_id']}")
    assert (await ws.receive_json(timeout=30))["status"] == "queued"
    error = "the uploaded file is missing from storage: " + "x" * 9000
    failed = db.execute(
        "UPDATE jobs SET status = 'failed', completed_at = now(), error = %s "
        "WHERE job_id = %s RETURNING *",
        (error, job["job_id"]),
    ).fetchone()
    notify(db, [failed])  # ids only: the listener reads the row
    assert await received_until_closed(ws) == [jobs.job_json(jobs.Job(**failed))]
    assert ws.close_code == 1000


async def test_an_api_far_behind_its_worker_loses_no_committed_state(client, start_process, db):
    """A real worker commits every 40 lines and at each 10 %, while the API cannot keep up at
    all: this test holds the API's event loop (a blocking wait, on the loop) until the job has
    completed, as a machine too busy to run it would, so every notification is queued before
    the API handles the first. The watcher still gets each state once, in order, one at every
    10 % mark, then 1000. (No CPU burners: holding the loop is the worst a load can do, and
    it slows no other test.)"""
    lines = [dict(VALID, message=f"line {i}") for i in range(1, 204)]
    job = await (await upload(client, jsonl(*lines))).json()
    await listener_listening(db)
    ws = await client.ws_connect(f"/ws/jobs/{job['job_id']}")
    states = [await ws.receive_json(timeout=30)]
    start_process("worker.py", EH_BATCH_LINES="40")
    wait_for(
        lambda: job_row(db, job["job_id"])["status"] == "completed",
        timeout=120,
        what="the job completed, the API's loop held",
    )  # blocks the loop on purpose
    states += await received_until_closed(ws, timeout=120)

    assert ws.close_code == 1000
    assert states[-1]["status"] == "completed" and states[-1]["lines_processed"] == 203
    assert ranks(states) == sorted(set(ranks(states)))  # no state twice, none out of order
    lines_processed = [s["lines_processed"] for s in states]
    assert lines_processed == sorted(lines_processed)
    marks = worker.progress_marks(203, 0)
    assert len(marks) == 9 and set(marks) <= set(lines_processed), (marks, lines_processed)


async def open_a_websocket_that_never_reads(
    host: str, port: int, path: str, token: str
) -> socket.socket:
    """A WebSocket client with a tiny receive buffer that reads the handshake's answer and the
    first message (so it is subscribed) and nothing more: what the server sends it from then
    on backs up into the server."""
    sock = await upgrade_with_a_tiny_buffer(host, port, path, f"Authorization: Bearer {token}")
    first = json.loads(await read_frame(sock))
    assert first["status"] == "queued"
    return sock


async def test_websockets_are_closed_1001_when_the_server_stops(
    settings, start_process, make_token
):
    base, api = await asyncio.to_thread(serve_api, start_process)
    async with aiohttp.ClientSession(headers=bearer(make_token())) as session:
        form = aiohttp.FormData()
        form.add_field("file", io.BytesIO(jsonl(VALID)), filename="app.jsonl")
        async with session.post(f"{base}/api/v1/files/upload", data=form) as response:
            job = await response.json()
        async with session.ws_connect(f"{base}/ws/jobs/{job['job_id']}") as ws:
            assert (await ws.receive_json(timeout=30))["status"] == "queued"
            api.terminate()
            message = await ws.receive(timeout=30)
            assert message.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1001
    assert await asyncio.to_thread(api.wait, 30) == 0


async def test_a_client_that_stops_reading_holds_back_no_one(client, db):
    """One watcher never reads; another job's watcher gets every state while the first one's
    backlog grows, the first is closed (1013) and dropped, and the API keeps answering."""
    slow_job = await (await upload(client, jsonl(VALID), "長" * 240 + ".jsonl")).json()
    other_job = await (await upload(client, jsonl(VALID))).json()
    slow_id = uuid.UUID(slow_job["job_id"])
    await listener_listening(db)
    slow = await open_a_websocket_that_never_reads(
        client.host, client.port, f"/ws/jobs/{slow_id}", client.session.headers["Authorization"][7:]
    )
    try:
        other = await client.ws_connect(f"/ws/jobs/{other_job['job_id']}")
        assert (await other.receive_json(timeout=30))["status"] == "queued"

        slow_row = job_row(db, slow_job["job_id"])

        async def other_got(rounds: int, other_state: dict) -> None:
            # handled after the slow job's 500 of this transaction, without waiting on them
            assert await other.receive_json(timeout=30) == jobs.job_json(jobs.Job(**other_state))

        with capture_access_log() as logs:
            rounds = await flood_until_dropped(db, logs, slow_row, other_job["job_id"], other_got)
            health = await asyncio.wait_for(client.get("/healthz"), 10)
            assert health.status == 200
        assert [(e["job_id"], e["close_code"]) for e in watchers_dropped(logs)] == [
            (str(slow_id), 1013)
        ]
        assert not client.server.app[api_state.WATCHERS].watching.get(slow_id)

        frames = await read_until_the_connection_ends(slow, timeout=120)
        # A client that reads now gets what was sent and the close frame; one that still
        # reads nothing after WS_CLOSE_TIMEOUT_S is reset, close frame unread.
        assert close_code_of(frames) in (1013, None)
    finally:
        slow.close()

    with db.transaction():
        notify(db, [advance_checkpoint(db, other_job["job_id"], rounds, "completed")])
    assert (await other.receive_json(timeout=30))["status"] == "completed"
    assert (await other.receive(timeout=30)).type == aiohttp.WSMsgType.CLOSE
    assert other.close_code == 1000


async def test_websockets_are_capped_per_owner_and_per_process(
    settings, aiohttp_client, make_token
):
    capped = dataclasses.replace(settings, max_websockets=3, max_websockets_per_owner=2)
    alice = await aiohttp_client(eventhorizon.init_app(capped), headers=bearer(make_token("alice")))
    bob = aiohttp.ClientSession(
        base_url=alice.server.make_url("/"), headers=bearer(make_token("bob"))
    )
    try:
        job_id = (await (await upload(alice, jsonl(VALID))).json())["job_id"]
        bob_job = (await (await upload(bob, jsonl(VALID))).json())["job_id"]
        held = [await alice.ws_connect(f"/ws/jobs/{job_id}") for _ in range(2)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await alice.ws_connect(f"/ws/jobs/{job_id}")
        assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "10"
        held.append(await bob.ws_connect(f"/ws/jobs/{bob_job}"))  # another owner: a place
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await bob.ws_connect(f"/ws/jobs/{bob_job}")
        assert refused.value.status == 503  # the process is full
        await held.pop(0).close()

        async def a_place_again():  # once the server has noticed the close
            try:
                return await alice.ws_connect(f"/ws/jobs/{job_id}")
            except aiohttp.WSServerHandshakeError:
                return None

        held.append(await wait_until(a_place_again, what="a closed WebSocket's place back"))
        assert (await alice.get("/healthz")).status == 200
        for ws in held:
            await ws.close()
    finally:
        await bob.close()


async def test_the_api_stops_while_its_listener_handles_a_notification(client, db, monkeypatch):
    """Shutdown cancels the listener wherever it is, mid-notification too (while psycopg's
    notifications generator holds the connection's lock), and the API's cleanup still ends."""
    handling = asyncio.Event()

    async def slow_on_notify(self, payload):
        handling.set()
        await asyncio.sleep(3600)

    monkeypatch.setattr(live.JobWatchers, "on_notify", slow_on_notify)
    await listener_listening(db)
    db.execute(core.QUERIES["notify"], {"channel": jobs.CHANNEL, "payload": "{}"})
    await asyncio.wait_for(handling.wait(), timeout=30)
    await asyncio.wait_for(client.close(), timeout=30)
