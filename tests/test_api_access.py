"""The API's guard over real HTTP: the access log, tokens and owners, hosts and origins."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import socket
import uuid

import aiohttp
import psycopg
import pytest

import auth
import config
import core
import eventhorizon
from helpers import (
    VALID,
    assert_problem,
    bearer,
    capture_access_log,
    job_count,
    jsonl,
    stored_keys,
    upload,
    wait_for,
    wait_until,
)
from live_states import (
    listener_listening,
)
from processes import logged_events, serve_api

# --------------------------------------------------------------------------- access log


def access_lines(logs) -> list[dict]:
    return [entry for entry in logs if entry["event"] == "http.request"]


async def test_every_request_has_one_access_log_line_with_its_status_and_ids(client):
    unknown = uuid.uuid4()
    with capture_access_log() as logs:
        await assert_problem(await client.get(f"/api/v1/jobs/{unknown}"), 404)
        await assert_problem(await upload(client, jsonl(VALID), "app.txt"), 415)
        await assert_problem(await upload(client, b"[1, 2]\n"), 422)
        accepted = await upload(client, jsonl(VALID))
        assert accepted.status == 202
        job_id = (await accepted.json())["job_id"]
        assert (await client.get("/healthz")).status == 200
    lines = access_lines(logs)
    assert [(e["method"], e["path"], e["status"]) for e in lines] == [
        ("GET", f"/api/v1/jobs/{unknown}", 404),
        ("POST", "/api/v1/files/upload", 415),
        ("POST", "/api/v1/files/upload", 422),
        ("POST", "/api/v1/files/upload", 202),
        ("GET", "/healthz", 200),
    ]
    assert lines[0]["job_id"] == str(unknown)
    assert "job_id" not in lines[1]  # refused before it was given an id
    assert uuid.UUID(lines[2]["job_id"])  # the id the refused upload was given
    assert lines[3]["job_id"] == job_id
    assert "job_id" not in lines[4]  # nothing left over from the requests before
    assert all(isinstance(e["ms"], float) and e["ms"] >= 0 for e in lines)
    assert len({e["request_id"] for e in lines}) == len(lines)
    queued = [e for e in logs if e["event"] == "job.queued"]
    assert queued[0]["request_id"] == lines[3]["request_id"]  # the request's other lines too


async def abandon_an_upload(host: str, port: int, token: str, started=None) -> None:
    """Send the start of an upload, then drop the connection: once `started()` is true, if
    given (the server is inside the upload), else after a moment."""
    boundary = "eh-test-boundary"
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        (
            f"POST /api/v1/files/upload HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {1024 * 1024}\r\n\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="a.jsonl"\r\n\r\n'
        ).encode()
        + jsonl(VALID) * 100
    )
    await writer.drain()
    if started is None:
        await asyncio.sleep(0.2)
    else:
        await wait_until(started, what="the server inside the upload")
    writer.transport.abort()


async def test_an_upload_the_client_abandons_is_logged_as_499(client, make_token):
    """In aiohttp's test server a client's going away cancels the handler."""
    with capture_access_log() as logs:
        await abandon_an_upload(
            client.host,
            client.port,
            make_token(),
            started=lambda: any(e["event"] == "upload.receiving" for e in logs),
        )
        for _ in range(100):
            if access_lines(logs):
                break
            await asyncio.sleep(0.05)
    [line] = access_lines(logs)
    assert (line["path"], line["status"]) == ("/api/v1/files/upload", 499)
    assert line["aborted"].startswith("cancelled")
    assert uuid.UUID(line["job_id"])


async def test_an_upload_the_client_abandons_is_logged_as_499_by_the_real_server(
    settings, start_process, make_token
):
    """`python eventhorizon.py` does not cancel handlers: the body's reads fail instead.
    That is no unhandled error, just a client gone."""
    _url, api = await asyncio.to_thread(serve_api, start_process)
    await abandon_an_upload("127.0.0.1", api.port, make_token())
    uploads_logged = await asyncio.to_thread(
        wait_for,
        lambda: [
            e for e in logged_events(api, "http.request") if e["path"] == "/api/v1/files/upload"
        ],
        what="the abandoned upload's access-log line",
    )
    assert [(e["status"], e["aborted"]) for e in uploads_logged] == [
        (499, "the client closed the connection")
    ]
    assert uuid.UUID(uploads_logged[0]["job_id"]) and uploads_logged[0]["request_id"]
    assert logged_events(api, "http.unhandled_error") == []


# --------------------------------------------------------------------------- access


SECRET_LINE = {
    **VALID,
    "level": "loud",
    "context": {"card": "4111111111111111", "password": "hunter2"},
}


async def test_another_owners_job_is_invisible(two_owners):
    """Alice's invalid line echoes its values in its reason: Bob must never see it."""
    alice, bob, root = two_owners
    job = await (await upload(alice, jsonl(SECRET_LINE))).json()
    job_id = job["job_id"]
    assert job["job_id"] in [
        j["job_id"] for j in (await (await alice.get("/api/v1/jobs")).json())["jobs"]
    ]

    for path in (f"/api/v1/jobs/{job_id}", f"/api/v1/jobs/{job_id}/errors"):
        async with bob.get(path) as response:
            body = await assert_problem(response, 404)
            assert body["detail"] == f"no job with id {job_id}"  # as for a job that never was
    async with bob.get("/api/v1/jobs") as response:
        assert (await response.json())["jobs"] == []
    async with bob.ws_connect(f"/ws/jobs/{job_id}") as ws:
        assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == eventhorizon.WS_NOT_FOUND
    async with bob.delete(f"/api/v1/jobs/{job_id}") as response:
        await assert_problem(response, 404)

    async with root.get(f"/api/v1/jobs/{job_id}") as response:  # an admin sees every job
        assert response.status == 200
    async with root.get("/api/v1/jobs") as response:
        assert [j["job_id"] for j in (await response.json())["jobs"]] == [job_id]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Basic YWxpY2U6aHVudGVyMg==",
        "Bearer eh_1_short",
        "Bearer not-a-token",
        "Bearer eh_999_" + "A" * 43,
    ],
)
async def test_requests_without_a_working_token_are_401(settings, aiohttp_client, authorization):
    client = await aiohttp_client(eventhorizon.init_app(settings))
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in [
        ("GET", "/api/v1/jobs"),
        ("GET", f"/api/v1/jobs/{uuid.uuid4()}"),
        ("GET", "/api/v1/stats"),
        ("POST", "/api/v1/files/upload"),
        ("DELETE", f"/api/v1/jobs/{uuid.uuid4()}"),
        ("GET", "/ws/jobs/x"),
    ]:
        async with client.request(method, path, headers=headers) as response:
            body = await assert_problem(response, 401)
            assert response.headers["WWW-Authenticate"].startswith('Bearer realm="eventhorizon"')
            assert "eh_" not in body["detail"] or "tokens create" in body["detail"]
    for path in ("/healthz", "/api/v1/openapi.json", "/", "/docs"):  # public
        assert (await client.get(path, headers=headers)).status == 200


async def test_a_revoked_token_stops_working_at_once(client, db):
    assert (await client.get("/api/v1/jobs")).status == 200
    db.execute("UPDATE api_tokens SET revoked_at = now()")
    async with client.get("/api/v1/jobs") as response:
        await assert_problem(response, 401)
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_a_browser_websocket_sends_its_token_as_a_subprotocol(
    settings, aiohttp_client, make_token
):
    """A browser cannot set headers on a WebSocket: the page offers the token as the second
    subprotocol, and the server picks the first. The token never goes in the URL."""
    plain = await aiohttp_client(eventhorizon.init_app(settings))
    token = make_token()
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(jsonl(VALID)), filename="a.jsonl")
    job = await (await plain.post("/api/v1/files/upload", data=form, headers=bearer(token))).json()
    async with plain.ws_connect(
        f"/ws/jobs/{job['job_id']}", protocols=("eventhorizon.bearer", token)
    ) as ws:
        assert ws.protocol == "eventhorizon.bearer"
        assert (await ws.receive_json(timeout=5))["job_id"] == job["job_id"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await plain.ws_connect(
            f"/ws/jobs/{job['job_id']}", protocols=("eventhorizon.bearer", token[:-1] + "x")
        )
    assert refused.value.status == 401


async def test_stats_are_for_admins(client, admin_client):
    async with client.get("/api/v1/stats") as response:
        await assert_problem(response, 403)
    assert (await admin_client.get("/api/v1/stats")).status == 200


async def test_deleting_a_job_removes_its_file_rows_and_errors(client, settings, db):
    job = await (await upload(client, jsonl(VALID, SECRET_LINE))).json()
    job_id = job["job_id"]
    other = (await (await upload(client, jsonl(VALID))).json())["job_id"]
    db.execute("INSERT INTO line_errors VALUES (%s, 2, 'echoing hunter2')", (job_id,))
    for owner_of, line_no in ((job_id, 1), (other, 1)):  # as the worker writes them
        db.execute(
            "INSERT INTO log_entries (job_id, line_no, timestamp, level, service, "
            "event_type, environment, message, context) VALUES "
            "(%s, %s, now(), 'info', 's', 't', 'e', 'm', '{}')",
            (owner_of, line_no),
        )
    async with client.delete(f"/api/v1/jobs/{job_id}") as response:
        assert response.status == 204
    assert stored_keys(settings) == [f"uploads/{other}.jsonl"]
    assert job_count(db) == 1
    assert db.execute("SELECT count(*) AS n FROM line_errors").fetchone()["n"] == 0
    entries = db.execute("SELECT job_id::text AS job_id FROM log_entries").fetchall()
    assert [e["job_id"] for e in entries] == [other]  # the job's own, and only them
    deletion = db.execute("SELECT * FROM job_deletions").fetchone()
    assert (str(deletion["job_id"]), deletion["deleted_by"]) == (job_id, "tester")
    audit = db.execute(
        "SELECT event_context FROM outbox WHERE event_type = 'job.deleted'"
    ).fetchone()["event_context"]
    assert (audit["job_id"], audit["deleted_by"]) == (job_id, "tester")
    async with client.delete(f"/api/v1/jobs/{job_id}") as response:  # once
        await assert_problem(response, 404)
    async with client.get(f"/api/v1/jobs/{job_id}") as response:
        await assert_problem(response, 404)


async def test_deleting_a_job_closes_its_websockets_4404(client, db):
    job_id = (await (await upload(client, jsonl(VALID))).json())["job_id"]
    await listener_listening(db)
    ws = await client.ws_connect(f"/ws/jobs/{job_id}")
    assert (await ws.receive_json(timeout=30))["status"] == "queued"
    assert (await client.delete(f"/api/v1/jobs/{job_id}")).status == 204
    message = await ws.receive(timeout=30)
    assert message.type == aiohttp.WSMsgType.CLOSE and ws.close_code == eventhorizon.WS_NOT_FOUND, (
        message,
        ws.close_code,
    )


async def test_a_job_a_worker_is_processing_cannot_be_deleted(client, settings, db):
    job_id = (await (await upload(client, jsonl(VALID))).json())["job_id"]
    with psycopg.connect(settings.database_url, autocommit=True) as worker_conn:
        worker_conn.execute(core.QUERIES["try_lock_job"], {"job_id": job_id})  # "a worker"
        async with client.delete(f"/api/v1/jobs/{job_id}") as response:
            body = await assert_problem(response, 409)
            assert "processing" in body["detail"]
        # Let go here: a closed connection's backend drops its locks only once it has exited.
        worker_conn.execute(core.QUERIES["unlock_job"], {"job_id": job_id})
    assert job_count(db) == 1 and stored_keys(settings) == [f"uploads/{job_id}.jsonl"]
    async with client.delete(f"/api/v1/jobs/{job_id}") as response:  # the worker let go
        assert response.status == 204


async def test_auth_none_is_single_user_and_loopback_only(settings, aiohttp_client, db):
    local = dataclasses.replace(settings, auth="none")
    client = await aiohttp_client(eventhorizon.init_app(local))
    job = await (await upload(client, jsonl(VALID))).json()
    assert (await client.get(f"/api/v1/jobs/{job['job_id']}")).status == 200
    assert (await client.get("/api/v1/stats")).status == 200
    assert db.execute("SELECT owner FROM jobs").fetchone()["owner"] == "local"
    for host in ("0.0.0.0", "192.168.1.5", "example.com", "::"):
        with pytest.raises(config.ConfigError, match="EH_AUTH=none is for a laptop"):
            eventhorizon.init_app(dataclasses.replace(local, http_host=host))
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        eventhorizon.init_app(dataclasses.replace(local, http_host=host))


def test_the_tokens_command_prints_a_token_once(settings, run_script):
    env = settings.to_env() | {"PATH": "/usr/bin:/bin", "LOG_FORMAT": "json"}

    def tokens(*args, stdin=None):
        return run_script("eventhorizon.py", "tokens", *args, env=env, input=stdin)

    created = tokens("create", "--owner", "ci-bot", "--admin")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert auth.TOKEN_PATTERN.fullmatch(token)
    assert token not in created.stderr and created.stdout.count(token) == 1
    assert tokens("verify", stdin=token).returncode == 0
    listed = tokens("list")
    assert "ci-bot" in listed.stdout and token.split("_", 2)[2] not in listed.stdout
    token_id = token.split("_")[1]
    assert tokens("revoke", token_id).returncode == 0
    assert tokens("verify", stdin=token).returncode == 1
    assert tokens("revoke", token_id).returncode == 1  # not twice
    bad = tokens("create", "--owner", "no spaces")
    assert bad.returncode == 1 and "owner must be" in bad.stderr


# --------------------------------------------------------------------------- hosts and origins


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:8080", "127.0.0.1.nip.io", "localhost.evil.example", "[::2]:80"],
)
async def test_a_host_the_api_does_not_answer_to_is_400(client, host):
    """A DNS-rebinding page reaches the API under its own host name."""
    for method, path in (("GET", "/healthz"), ("GET", "/api/v1/jobs"), ("GET", "/")):
        async with client.request(method, path, headers={"Host": host}) as response:
            body = await assert_problem(response, 400)
            assert "Host" in body["detail"]


async def test_the_allowed_hosts_are_answered(settings, aiohttp_client, make_token):
    client = await aiohttp_client(eventhorizon.init_app(settings))
    for host in (f"localhost:{client.port}", "127.0.0.1", "LOCALHOST", f"[::1]:{client.port}"):
        assert (await client.get("/healthz", headers={"Host": host})).status == 200, host
    anywhere = dataclasses.replace(settings, allowed_hosts="*")
    client = await aiohttp_client(eventhorizon.init_app(anywhere))
    assert (await client.get("/healthz", headers={"Host": "evil.example"})).status == 200


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "null",
        "file://",
        "127.0.0.1:{port}",
        "ftp://127.0.0.1:{port}",
        "http://127.0.0.1:{other}",
        "http://127.0.0.1:{port}.evil.example",
        "chrome-extension://127.0.0.1:{port}",
    ],
)
async def test_another_sites_page_cannot_upload_delete_or_watch(client, origin):
    origin = origin.format(port=client.port, other=client.port + 1)
    headers = {"Origin": origin}
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(jsonl(VALID)), filename="a.jsonl")
    async with client.post("/api/v1/files/upload", data=form, headers=headers) as response:
        await assert_problem(response, 403)
    async with client.delete(f"/api/v1/jobs/{uuid.uuid4()}", headers=headers) as response:
        await assert_problem(response, 403)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(f"/ws/jobs/{uuid.uuid4()}", headers=headers)
    assert refused.value.status == 403


async def test_the_pages_own_origin_is_welcome(client):
    headers = {"Origin": f"http://127.0.0.1:{client.port}"}
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(jsonl(VALID)), filename="a.jsonl")
    async with client.post("/api/v1/files/upload", data=form, headers=headers) as response:
        assert response.status == 202
        job_id = (await response.json())["job_id"]
    async with client.ws_connect(f"/ws/jobs/{job_id}", headers=headers) as ws:
        assert (await ws.receive_json(timeout=5))["job_id"] == job_id


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE-hunter2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad hunter2\x00: x\r\n\r\n",
        b"GET /hunter2" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
    ],
)
def test_a_malformed_request_is_one_short_log_line(settings, start_process, request_bytes):
    """Not a traceback quoting the request: anyone can send these, as often as they like."""
    api = start_process("eventhorizon.py")
    wait_for(lambda: logged_events(api, "listener.connected"), what="the API to start")
    with socket.create_connection(("127.0.0.1", settings.http_port), timeout=5) as sock:
        sock.sendall(request_bytes)
        assert sock.recv(100).startswith(b"HTTP/1.0 400 ")
    [line] = wait_for(
        lambda: logged_events(api, "http.malformed_request"),
        what="the malformed request's log line",
    )
    assert line["level"] == "warning" and line["error"]
    text = api.log_path.read_text()
    assert "hunter2" not in text and "Traceback" not in text
