"""The HTTP API over real HTTP, against real Postgres, RabbitMQ and S3."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import json
import socket
import uuid
from urllib.parse import urlsplit

import aiohttp
import psycopg
import pytest
import structlog

import api_state
import auth
import core
import eventhorizon
import jobs
import live
import worker
from helpers import (
    VALID,
    advance_checkpoint,
    assert_problem,
    batches,
    bearer,
    capture_access_log,
    close_code_of,
    completed_job,
    file_part,
    job_count,
    job_row,
    jsonl,
    listener_listening,
    logged_events,
    multipart_uploads,
    notify,
    post_multipart,
    queued_messages,
    read_frame,
    read_until_the_connection_ends,
    serve_api,
    stored_keys,
    upgrade_with_a_tiny_buffer,
    upload,
    wait_for,
    wait_until,
    watchers_dropped,
)

# --------------------------------------------------------------------------- accepted uploads


async def test_upload_is_stored_recorded_and_published(client, settings, db):
    content = jsonl(VALID, VALID) + b"\n" + b"not json\n" + json.dumps(VALID).encode()
    response = await upload(client, content)

    assert response.status == 202, await response.text()
    job = await response.json()
    assert response.headers["Location"] == f"/api/v1/jobs/{job['job_id']}"
    assert job["status"] == "queued"
    assert job["size_bytes"] == len(content)
    assert job["lines_total"] == 5  # the last line has no newline and still counts
    assert job["file_name"] == "app.jsonl"

    row = db.execute("SELECT * FROM jobs").fetchone()
    assert str(row["job_id"]) == job["job_id"]
    obj = core.s3_client(settings).get_object(Bucket=settings.s3_bucket, Key=row["object_key"])
    assert obj["Body"].read() == content
    assert queued_messages(settings) == [
        {"job_id": job["job_id"], "bucket": settings.s3_bucket, "key": row["object_key"]}]
    events = db.execute("SELECT event_type, event_context FROM outbox ORDER BY id").fetchall()
    assert [(e["event_type"], e["event_context"].get("job_id")) for e in events] == [
        ("job.queued", job["job_id"]), ("audit.job.uploaded", None)]  # the audit's is `object`


async def test_large_upload_goes_up_in_parts(client, settings):
    line = json.dumps({**VALID, "message": "x" * 900}).encode() + b"\n"
    content = line * (20 * 1024 * 1024 // len(line))  # ~20 MiB: three parts of 8 MiB
    response = await upload(client, content)
    assert response.status == 202, await response.text()
    job = await response.json()
    assert job["lines_total"] == content.count(b"\n")
    s3 = core.s3_client(settings)
    head = s3.head_object(Bucket=settings.s3_bucket, Key=f"uploads/{job['job_id']}.jsonl")
    assert head["ContentLength"] == len(content)


async def test_first_line_may_follow_blank_lines_and_a_bom(client):
    response = await upload(client, b"\xef\xbb\xbf\n\n" + jsonl(VALID))
    assert response.status == 202, await response.text()


# --------------------------------------------------------------------------- refused uploads


@pytest.mark.parametrize(
    ("name", "content", "status", "detail"),
    [
        ("app.txt", jsonl(VALID), 415, ".jsonl"),
        ("app.jsonl", b"", 422, "empty"),
        ("app.jsonl", b"\n \n\r\n", 422, "empty"),
        ("app.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 422, "binary"),
        ("app.jsonl", b"\xff\xfe{\x00}\n", 422, "binary"),
        ("app.jsonl", b"\xc3\x28 not utf8\n", 422, "UTF-8"),
        ("app.jsonl", jsonl(VALID) + b"\x00\x01\x02", 422, "NUL"),
        ("app.jsonl", b"[1, 2, 3]\n" + jsonl(VALID), 422, "not a JSON object"),
        ("app.jsonl", b"hello world\n", 422, "not JSON"),
        ("app.jsonl", jsonl(VALID) + b"caf\xe9\n", 422, "UTF-8"),
    ],
)
async def test_bad_uploads_are_refused_and_leave_nothing(client, settings, db, name, content,
                                                        status, detail):
    body = await assert_problem(await upload(client, content, name), status)
    assert detail in body["detail"]
    assert job_count(db) == 0
    assert stored_keys(settings) == []
    assert queued_messages(settings) == []


def upload_raw(client, disposition: bytes, content: bytes):
    """A multipart upload with the file part's Content-Disposition parameters as given (the
    way browsers and curl send a name: raw UTF-8 bytes, or RFC 5987's filename*)."""
    return post_multipart(client, file_part(content, disposition) + b"--b--\r\n")


NESTED_PART = (b'--b\r\nContent-Disposition: form-data; name="files"\r\n'
               b"Content-Type: multipart/mixed; boundary=inner\r\n\r\n"
               b'--inner\r\nContent-Disposition: attachment; filename="x.jsonl"\r\n\r\n{}\r\n'
               b"--inner--\r\n\r\n")


@pytest.mark.parametrize(("body", "status"), [
    (file_part(jsonl(VALID)) + b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\n'
     b"hello\r\n--b--\r\n", 202),  # fields after the file are fine
    (NESTED_PART + file_part(jsonl(VALID)) + b"--b--\r\n", 202),  # a nested part is skipped
    (NESTED_PART + b"--b--\r\n", 422),  # ... and is no file
    (file_part(jsonl(VALID)) + NESTED_PART + b"--b--\r\n", 400),
    (file_part(jsonl(VALID))[:-2], 400),  # cut short: no closing boundary
    (file_part(jsonl(VALID)), 400),  # cut short just before the closing boundary
    (b'--b\r\nContent-Disposition: form-data; name="_charset_"\r\n\r\n' + b"x" * 40
     + b"\r\n" + file_part(jsonl(VALID)) + b"--b--\r\n", 400),
    (file_part(jsonl(VALID)) + b'--b\r\nContent-Disposition: form-data; name="pad"\r\n\r\n'
     + b"x" * (70 * 1024) + b"\r\n--b--\r\n", 400),  # too much after the file
])
async def test_multipart_shapes(client, db, settings, body, status):
    response = await post_multipart(client, body)
    if status == 202:
        assert response.status == 202, await response.text()
        job = await response.json()
        assert job["lines_total"] == 1 and job["size_bytes"] == len(jsonl(VALID))
        return
    await assert_problem(response, status)
    assert job_count(db) == 0 and stored_keys(settings) == []


@pytest.mark.parametrize("disposition", [
    b'filename="caf\xe9.jsonl"',  # Latin-1, not UTF-8
    b"filename*=UTF-8''a%00b.jsonl",  # a NUL
    b'filename="tab\there.jsonl"',
])
async def test_a_file_name_that_is_not_plain_text_is_422(client, db, settings, disposition):
    response = await upload_raw(client, disposition, jsonl(VALID))
    assert "file name" in (await assert_problem(response, 422))["detail"]
    assert job_count(db) == 0 and stored_keys(settings) == []


@pytest.mark.parametrize("disposition", [
    'filename="журнал 日志 ログ.jsonl"'.encode(),
    b"filename*=UTF-8''%D0%B6%D1%83%D1%80%D0%BD%D0%B0%D0%BB%20%E6%97%A5%E5%BF%97%20"
    b"%E3%83%AD%E3%82%B0.jsonl",
])
async def test_a_file_name_in_any_script_is_kept(client, disposition):
    response = await upload_raw(client, disposition, jsonl(VALID))
    assert response.status == 202, await response.text()
    assert (await response.json())["file_name"] == "журнал 日志 ログ.jsonl"


async def test_uploads_work_right_after_postgres_dropped_the_pools_connections(client, db):
    assert (await upload(client, jsonl(VALID))).status == 202  # the pool has connections now
    db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    for _ in range(3):
        response = await upload(client, jsonl(VALID))
        assert response.status == 202, await response.text()


async def test_oversize_upload_is_refused_with_413(settings, db, aiohttp_client, make_token):
    small = dataclasses.replace(settings, max_upload_bytes=10 * 1024 * 1024)
    client = await aiohttp_client(eventhorizon.init_app(small), headers=bearer(make_token()))
    content = jsonl(VALID) * (12 * 1024 * 1024 // len(jsonl(VALID)))
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(content), filename="big.jsonl")
    # No Content-Length up front (chunked), so the limit is enforced while streaming.
    response = await client.post("/api/v1/files/upload", data=form, chunked=True)
    body = await assert_problem(response, 413)
    assert str(small.max_upload_bytes) in body["detail"]
    assert job_count(db) == 0
    assert stored_keys(settings) == []  # the multipart upload was aborted


async def test_oversize_is_refused_from_content_length_before_reading(settings, aiohttp_client, make_token):
    small = dataclasses.replace(settings, max_upload_bytes=100)
    client = await aiohttp_client(eventhorizon.init_app(small), headers=bearer(make_token()))
    await assert_problem(await upload(client, jsonl(VALID) * 10), 413)


async def test_missing_file_field_and_non_multipart(client, db):
    form = aiohttp.FormData()
    form.add_field("other", b"x", filename="app.jsonl")
    await assert_problem(await client.post("/api/v1/files/upload", data=form), 422)
    response = await client.post("/api/v1/files/upload", data=jsonl(VALID),
                                 headers={"Content-Type": "application/x-ndjson"})
    await assert_problem(response, 415)
    assert job_count(db) == 0


@pytest.mark.parametrize(("setting", "closed_port_url", "detail"), [
    ("amqp_url", "amqp://guest:guest@127.0.0.1:1/%2F", "broker"),
    ("s3_endpoint_url", "http://127.0.0.1:1", "storage"),
])
async def test_upload_while_broker_or_storage_is_down_is_503_and_leaves_nothing(
        settings, db, aiohttp_client, make_token, setting, closed_port_url, detail):
    broken = dataclasses.replace(settings, **{setting: closed_port_url})
    client = await aiohttp_client(eventhorizon.init_app(broken), headers=bearer(make_token()))
    body = await assert_problem(await upload(client, jsonl(VALID)), 503)
    assert detail in body["detail"]
    assert job_count(db) == 0
    assert stored_keys(settings) == []


# --------------------------------------------------------------------------- reading jobs


async def test_unknown_and_malformed_job_ids_are_404(client):
    for path in (f"/api/v1/jobs/{uuid.uuid4()}", "/api/v1/jobs/not-a-uuid",
                 f"/api/v1/jobs/{uuid.uuid4()}/errors", "/api/v1/jobs/123/errors"):
        await assert_problem(await client.get(path), 404)


async def test_unknown_route_is_problem_json(client):
    await assert_problem(await client.get("/api/v1/nope"), 404)


async def test_bad_pagination_is_422(client):
    job = await (await upload(client, jsonl(VALID))).json()
    await assert_problem(await client.get(f"/api/v1/jobs/{job['job_id']}/errors?limit=0"), 422)
    await assert_problem(await client.get(f"/api/v1/jobs/{job['job_id']}/errors?limit=x"), 422)


async def test_list_jobs_newest_first(client):
    first = await (await upload(client, jsonl(VALID), "a.jsonl")).json()
    second = await (await upload(client, jsonl(VALID), "b.jsonl")).json()
    listed = await (await client.get("/api/v1/jobs?limit=10")).json()
    assert [j["job_id"] for j in listed["jobs"]] == [second["job_id"], first["job_id"]]


async def test_websocket_for_unknown_or_malformed_job_closes_4404(client):
    for job_id in (uuid.uuid4(), "nope"):
        ws = await client.ws_connect(f"/ws/jobs/{job_id}")
        message = await ws.receive(timeout=5)
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4404


async def test_websocket_refuses_other_origins(client):
    job = await (await upload(client, jsonl(VALID))).json()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(f"/ws/jobs/{job['job_id']}",
                                headers={"Origin": "http://evil.example"})
    assert info.value.status == 403


async def test_health_and_readiness(settings, client, aiohttp_client, make_token):
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200, await ready.text()
    assert (await ready.json())["checks"] == {"postgres": "ok", "rabbitmq": "ok", "s3": "ok",
                                                  "listener": "ok"}

    broken = dataclasses.replace(settings, amqp_url="amqp://guest:guest@127.0.0.1:1/%2F",
                                 s3_bucket="no-such-bucket-here")
    broken_client = await aiohttp_client(eventhorizon.init_app(broken), headers=bearer(make_token()))
    response = await broken_client.get("/readyz")
    assert response.status == 503
    checks = (await response.json())["checks"]
    assert checks["postgres"] == "ok"
    assert checks["rabbitmq"].startswith("unavailable") and checks["s3"].startswith("unavailable")
    text = await response.text()  # anyone may read /readyz: no endpoints, no exception text
    assert "127.0.0.1" not in text and "no-such-bucket" not in text and "Error" not in text



async def test_a_dependency_that_never_answers_is_unavailable_after_the_ready_timeout(
        settings, aiohttp_client, make_token, tcp_proxy):
    """An S3 server stuck mid-request (a proxy that swallows everything): /readyz says so once
    EH_READY_TIMEOUT_S has passed, instead of hanging with it."""
    s3 = urlsplit(settings.s3_endpoint_url)
    proxy = tcp_proxy((s3.hostname, s3.port))
    stuck = dataclasses.replace(settings, s3_endpoint_url=proxy.url, ready_timeout_s=0.5)
    client = await aiohttp_client(eventhorizon.init_app(stuck), headers=bearer(make_token()))
    proxy.hang()
    response = await asyncio.wait_for(client.get("/readyz"), timeout=30)
    assert response.status == 503
    checks = (await response.json())["checks"]
    assert checks == {"postgres": "ok", "rabbitmq": "ok",
                      "s3": "unavailable: no answer within 0.5 s", "listener": "ok"}
    proxy.close()  # the stuck request fails now, not at boto3's 60 s read timeout (teardown)


# --------------------------------------------------------------------------- end to end


async def test_upload_to_completed_watched_over_websocket(client, start_process, db):
    lines = [dict(VALID, message=f"line {i}") for i in range(1, 201)]
    content = jsonl(*lines[:50]) + b"{broken\n" + jsonl(*lines[50:120]) + b"\n" \
        + jsonl({**VALID, "level": "loud"}) + jsonl(*lines[120:])
    job = await (await upload(client, content)).json()
    ws = await client.ws_connect(f"/ws/jobs/{job['job_id']}")
    first = await ws.receive_json(timeout=5)
    assert first["job_id"] == job["job_id"] and first["status"] == "queued"

    start_process("worker.py", EH_BATCH_LINES="40")
    states = [first, *await received_until_closed(ws)]
    assert ws.close_code == 1000

    final = states[-1]
    assert final["status"] == "completed"
    assert (final["lines_total"], final["lines_processed"]) == (203, 203)
    assert (final["lines_valid"], final["lines_invalid"]) == (200, 2)
    assert final["progress"] == 1.0 and final["completed_at"]
    progress = [s["progress"] for s in states]
    assert progress == sorted(progress)
    assert len({s["lines_processed"] for s in states}) >= 10  # at least every 10%

    fetched = await (await client.get(f"/api/v1/jobs/{job['job_id']}")).json()
    # The job's read says where its line events stand; a WebSocket state does not (no relay
    # runs here, so all 200 wait in the outbox).
    assert fetched.pop("delivery") == {"delivered": 0, "waiting": 200, "dead": 0}
    assert fetched == final
    page = await (await client.get(f"/api/v1/jobs/{job['job_id']}/errors?limit=1")).json()
    assert page["errors"] == [{"line_no": 51, "reason": page["errors"][0]["reason"]}]
    assert "invalid JSON" in page["errors"][0]["reason"]
    page2 = await (await client.get(page["next"])).json()
    assert page2["errors"][0]["line_no"] == 123 and "$.level" in page2["errors"][0]["reason"]
    assert (await (await client.get(page2["next"])).json()) == {
        "job_id": job["job_id"], "errors": [], "next": None}

    assert db.execute("SELECT count(*) AS n FROM log_entries").fetchone()["n"] == 200


async def test_late_websocket_gets_final_state_and_closes(client, start_process):
    job = await (await upload(client, jsonl(VALID))).json()
    start_process("worker.py")
    await completed_job(client, job["job_id"])
    ws = await client.ws_connect(f"/ws/jobs/{job['job_id']}")
    assert (await ws.receive_json(timeout=5))["status"] == "completed"
    assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE


async def test_the_page_and_its_assets_are_served(client):
    page = await client.get("/")
    assert page.status == 200 and "text/html" in page.content_type
    html = await page.text()
    assert 'id="upload"' in html
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in html
        assert (await client.get(asset)).status == 200
    for missing in ("/static/nope.js", "/static/", "/static/..%2Fcore.py", "/static/a/b.js"):
        await assert_problem(await client.get(missing), 404)


async def test_upload_aborted_mid_body_leaves_no_job_and_no_object(client, settings, db,
                                                                   make_token):
    """A client that disconnects after 12 MiB of a 40 MiB upload, once its multipart upload
    is open in S3 with a part in it. Broken, it looks like: the multipart upload still open
    afterwards (its parts kept, and billed, until a sweep), an object or a job for a file that
    never arrived."""
    boundary = "eh-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.jsonl\"\r\nContent-Type: application/x-ndjson\r\n\r\n").encode()
    line = jsonl(VALID)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write((f"POST /api/v1/files/upload HTTP/1.1\r\nHost: {client.host}\r\n"
                  f"Authorization: Bearer {make_token()}\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                  f"Content-Length: {40 * 1024 * 1024}\r\n\r\n").encode() + head)
    sent = 0
    while sent < 12 * 1024 * 1024:
        writer.write(line * 1000)
        sent += len(line) * 1000
        await writer.drain()

    def a_part_sent():
        s3 = core.s3_client(settings)
        return [u for u in multipart_uploads(settings) if s3.list_parts(
            Bucket=settings.s3_bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")]

    [started] = await asyncio.to_thread(wait_for, a_part_sent, timeout=30,
                                        what="a multipart upload with a part")
    assert started["Key"].startswith("uploads/")
    writer.transport.abort()

    await asyncio.to_thread(wait_for, lambda: not multipart_uploads(settings), timeout=30,
                            what="the multipart upload aborted")
    assert stored_keys(settings) == []
    assert job_count(db) == 0


async def test_websocket_updates_survive_a_lost_listen_connection(client, db, start_process):
    """The API's LISTEN backend is terminated while a worker is mid-job, and the API (in this
    test's event loop) is held from noticing until the job has completed: every notification
    after the kill, the final one included, is lost. When the listener reconnects it re-sends
    the job's state, so the WebSocket still ends with the final state, every state it got in
    order and none twice. Broken (no re-send after a reconnect), this looks like: a socket
    stuck at its last batch until the test times out."""
    job = await (await upload(client, jsonl(*[VALID] * 2_000))).json()
    ws = await client.ws_connect(f"/ws/jobs/{job['job_id']}")
    states = [await ws.receive_json(timeout=5)]
    assert states[0]["status"] == "queued"
    start_process("worker.py", EH_LINE_DELAY_MAX_S="0.005", EH_BATCH_LINES="100")
    while states[-1]["status"] == "queued":
        states.append(await ws.receive_json(timeout=30))
    # From here on the event loop does not run until the job is done (no await).
    killed = db.execute("SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
                        "WHERE query = 'LISTEN \"eh_job\"' AND datname = current_database()"
                        ).fetchone()["n"]
    assert killed == 1
    assert job_row(db, job["job_id"])["status"] == "processing"  # the kill landed mid-job
    wait_for(lambda: job_row(db, job["job_id"])["status"] == "completed", timeout=60,
             what="the job completed while the API could not listen")

    states += await received_until_closed(ws)
    assert states[-1]["status"] == "completed" and states[-1]["lines_valid"] == 2_000
    assert ranks(states) == sorted(set(ranks(states)))  # in order, none twice


async def test_the_listener_restarts_after_an_unexpected_error_and_is_unready_meanwhile(
        client, db, monkeypatch):
    """A bug in handling a notification (here: one raising RuntimeError) used to end live
    updates for the process's life, silently. The listener is supervised: it logs the error,
    /readyz says `listener` is unavailable while it reconnects (held here until the test lets
    it), and afterwards the job's watchers get its states again."""
    job = await (await upload(client, jsonl(VALID))).json()
    ws = await client.ws_connect(f"/ws/jobs/{job['job_id']}")
    assert (await ws.receive_json(timeout=5))["status"] == "queued"
    assert (await client.get("/readyz")).status == 200

    async def broken_on_notify(self, payload):
        raise RuntimeError("a bug in the fan-out")

    reconnecting, let_it_reconnect = asyncio.Event(), asyncio.Event()
    listen = core.listen

    async def held_listen(conn, channel):
        reconnecting.set()
        await let_it_reconnect.wait()
        return await listen(conn, channel)

    monkeypatch.setattr(live.JobWatchers, "on_notify", broken_on_notify)
    monkeypatch.setattr(core, "listen", held_listen)
    with structlog.testing.capture_logs() as logs:
        db.execute("UPDATE jobs SET status = 'processing', started_at = now() WHERE job_id = %s",
                   (job["job_id"],))
        db.execute(core.QUERIES["notify"], {"channel": jobs.CHANNEL, "payload": jobs.job_notification(
            jobs.query(db, "get_job", {"job_id": job["job_id"]}).fetchone())})
        await asyncio.wait_for(reconnecting.wait(), timeout=30)
    assert [e["log_level"] for e in logs if e["event"] == "listener.failed"] == ["error"]

    response = await client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["checks"]["listener"].startswith("unavailable")

    monkeypatch.undo()
    let_it_reconnect.set()
    assert (await client.get("/readyz")).status == 200
    # Back: the re-send after a reconnect brings the state the broken handler never sent.
    assert (await ws.receive_json(timeout=10))["status"] == "processing"


async def test_stats_count_jobs_and_the_outbox_backlog(admin_client):
    client = admin_client
    empty = await (await client.get("/api/v1/stats")).json()
    assert empty == {"jobs": {"queued": 0, "processing": 0, "completed": 0, "failed": 0},
                     "outbox": {"backlog": 0, "oldest_age_s": 0, "dead": 0}}
    await upload(client, jsonl(VALID))
    stats = await (await client.get("/api/v1/stats")).json()
    assert stats["jobs"]["queued"] == 1
    assert stats["outbox"]["backlog"] == 2  # job.queued and audit.job.uploaded, until the relay


async def test_upload_while_database_is_down_is_503_and_leaves_nothing(settings, aiohttp_client,
                                                                       make_token):
    broken = dataclasses.replace(settings, database_url="postgresql://postgres@127.0.0.1:1/x",
                                 db_wait_s=0.5, ready_timeout_s=0.5)
    client = await aiohttp_client(eventhorizon.init_app(broken), headers=bearer(make_token()))
    body = await assert_problem(await upload(client, jsonl(VALID)), 503)
    assert "database" in body["detail"]
    assert stored_keys(settings) == []  # the stored object was removed again
    assert (await client.get("/readyz")).status == 503



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
    writer.write((f"POST /api/v1/files/upload HTTP/1.1\r\nHost: {host}\r\n"
                  f"Authorization: Bearer {token}\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                  f"Content-Length: {1024 * 1024}\r\n\r\n"
                  f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                  f"filename=\"a.jsonl\"\r\n\r\n").encode() + jsonl(VALID) * 100)
    await writer.drain()
    if started is None:
        await asyncio.sleep(0.2)
    else:
        await wait_until(started, what="the server inside the upload")
    writer.transport.abort()


async def test_an_upload_the_client_abandons_is_logged_as_499(client, make_token):
    """In aiohttp's test server a client's going away cancels the handler."""
    with capture_access_log() as logs:
        await abandon_an_upload(client.host, client.port, make_token(), started=lambda: any(
            e["event"] == "upload.receiving" for e in logs))
        for _ in range(100):
            if access_lines(logs):
                break
            await asyncio.sleep(0.05)
    [line] = access_lines(logs)
    assert (line["path"], line["status"]) == ("/api/v1/files/upload", 499)
    assert line["aborted"].startswith("cancelled")
    assert uuid.UUID(line["job_id"])


async def test_an_upload_the_client_abandons_is_logged_as_499_by_the_real_server(
        settings, start_process, make_token):
    """`python eventhorizon.py` does not cancel handlers: the body's reads fail instead.
    That is no unhandled error, just a client gone."""
    _url, api = await asyncio.to_thread(serve_api, start_process)
    await abandon_an_upload("127.0.0.1", api.port, make_token())
    uploads_logged = await asyncio.to_thread(wait_for, lambda: [
        e for e in logged_events(api, "http.request") if e["path"] == "/api/v1/files/upload"],
        what="the abandoned upload's access-log line")
    assert [(e["status"], e["aborted"]) for e in uploads_logged] == [
        (499, "the client closed the connection")]
    assert uuid.UUID(uploads_logged[0]["job_id"]) and uploads_logged[0]["request_id"]
    assert logged_events(api, "http.unhandled_error") == []


# --------------------------------------------------------------------------- access


SECRET_LINE = {**VALID, "level": "loud", "context": {"card": "4111111111111111",
                                                     "password": "hunter2"}}


async def test_another_owners_job_is_invisible(two_owners):
    """Alice's invalid line echoes its values in its reason: Bob must never see it."""
    alice, bob, root = two_owners
    job = await (await upload(alice, jsonl(SECRET_LINE))).json()
    job_id = job["job_id"]
    assert job["job_id"] in [j["job_id"] for j in (await (await alice.get("/api/v1/jobs")).json())["jobs"]]

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


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Basic YWxpY2U6aHVudGVyMg==", "Bearer eh_1_short", "Bearer not-a-token",
    "Bearer eh_999_" + "A" * 43,
])
async def test_requests_without_a_working_token_are_401(settings, aiohttp_client, authorization):
    client = await aiohttp_client(eventhorizon.init_app(settings))
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in [("GET", "/api/v1/jobs"), ("GET", f"/api/v1/jobs/{uuid.uuid4()}"),
                         ("GET", "/api/v1/stats"), ("POST", "/api/v1/files/upload"),
                         ("DELETE", f"/api/v1/jobs/{uuid.uuid4()}"), ("GET", "/ws/jobs/x")]:
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


async def test_a_browser_websocket_sends_its_token_as_a_subprotocol(settings, aiohttp_client,
                                                                    make_token):
    """A browser cannot set headers on a WebSocket: the page offers the token as the second
    subprotocol, and the server picks the first. The token never goes in the URL."""
    plain = await aiohttp_client(eventhorizon.init_app(settings))
    token = make_token()
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(jsonl(VALID)), filename="a.jsonl")
    job = await (await plain.post("/api/v1/files/upload", data=form,
                                  headers=bearer(token))).json()
    async with plain.ws_connect(f"/ws/jobs/{job['job_id']}",
                                protocols=("eventhorizon.bearer", token)) as ws:
        assert ws.protocol == "eventhorizon.bearer"
        assert (await ws.receive_json(timeout=5))["job_id"] == job["job_id"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await plain.ws_connect(f"/ws/jobs/{job['job_id']}",
                               protocols=("eventhorizon.bearer", token[:-1] + "x"))
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
        db.execute("INSERT INTO log_entries (job_id, line_no, timestamp, level, service, "
                   "event_type, environment, message, context) VALUES "
                   "(%s, %s, now(), 'info', 's', 't', 'e', 'm', '{}')", (owner_of, line_no))
    async with client.delete(f"/api/v1/jobs/{job_id}") as response:
        assert response.status == 204
    assert stored_keys(settings) == [f"uploads/{other}.jsonl"]
    assert job_count(db) == 1
    assert db.execute("SELECT count(*) AS n FROM line_errors").fetchone()["n"] == 0
    entries = db.execute("SELECT job_id::text AS job_id FROM log_entries").fetchall()
    assert [e["job_id"] for e in entries] == [other]  # the job's own, and only them
    deletion = db.execute("SELECT * FROM job_deletions").fetchone()
    assert (str(deletion["job_id"]), deletion["deleted_by"]) == (job_id, "tester")
    audit = db.execute("SELECT event_context FROM outbox WHERE event_type = 'job.deleted'"
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
        message, ws.close_code)


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
        with pytest.raises(core.ConfigError, match="EH_AUTH=none is for a laptop"):
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


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.nip.io",
                                  "localhost.evil.example", "[::2]:80"])
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


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "file://", "127.0.0.1:{port}",
                                    "ftp://127.0.0.1:{port}", "http://127.0.0.1:{other}",
                                    "http://127.0.0.1:{port}.evil.example",
                                    "chrome-extension://127.0.0.1:{port}"])
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


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE-hunter2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad hunter2\x00: x\r\n\r\n",
    b"GET /hunter2" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
])
def test_a_malformed_request_is_one_short_log_line(settings, start_process, request_bytes):
    """Not a traceback quoting the request: anyone can send these, as often as they like."""
    api = start_process("eventhorizon.py")
    wait_for(lambda: logged_events(api, "listener.connected"), what="the API to start")
    with socket.create_connection(("127.0.0.1", settings.http_port), timeout=5) as sock:
        sock.sendall(request_bytes)
        assert sock.recv(100).startswith(b"HTTP/1.0 400 ")
    [line] = wait_for(lambda: logged_events(api, "http.malformed_request"),
                      what="the malformed request's log line")
    assert line["level"] == "warning" and line["error"]
    text = api.log_path.read_text()
    assert "hunter2" not in text and "Traceback" not in text


# --------------------------------------------------------------------------- live updates


async def received_until_closed(ws, timeout: float = 60.0) -> list[dict]:
    """Every state a WebSocket sends until the server closes it, within `timeout` seconds."""
    async def receive_all():
        states = []
        async for message in ws:
            assert message.type == aiohttp.WSMsgType.TEXT, message
            states.append(json.loads(message.data))
        return states
    return await asyncio.wait_for(receive_all(), timeout)


def ranks(states) -> list[tuple[int, int]]:
    return [(eventhorizon.STATUS_RANK[s["status"]], s["lines_processed"]) for s in states]


async def test_websocket_sends_every_committed_state_once_in_order(client, db):
    """All of a job's batches commit before the API handles the first notification: the
    watcher still gets each batch's state, in order, once, then the final one and 1000."""
    job = await (await upload(client, jsonl(*[VALID] * 100))).json()
    await listener_listening(db)
    ws = await client.ws_connect(f"/ws/jobs/{job['job_id']}")
    assert (await ws.receive_json(timeout=30))["status"] == "queued"

    queued = job_row(db, job["job_id"])
    committed = batches(queued, [0, *range(7, 100, 7), 100])
    final = db.execute("UPDATE jobs SET status = 'completed', started_at = created_at, "
                       "completed_at = now(), lines_processed = 100, lines_valid = 100 "
                       "WHERE job_id = %s RETURNING *", (job["job_id"],)
                       ).fetchone()  # what any re-read would find
    notify(db, [*committed, final])

    assert await received_until_closed(ws) == [jobs.job_json(jobs.Job(**s)) for s in [*committed, final]]
    assert ws.close_code == 1000


async def test_a_state_repeated_or_older_than_one_sent_is_not_sent(client, db):
    job = await (await upload(client, jsonl(*[VALID] * 30))).json()
    await listener_listening(db)
    ws = await client.ws_connect(f"/ws/jobs/{job['job_id']}")
    assert (await ws.receive_json(timeout=30))["status"] == "queued"
    started, ten, twenty, thirty = batches(job_row(db, job["job_id"]), [0, 10, 20, 30])
    notify(db, [started, ten, started, twenty, ten, twenty, thirty, dict(thirty, status="completed")])
    states = await received_until_closed(ws)
    assert ranks(states) == [(1, 0), (1, 10), (1, 20), (1, 30), (2, 30)]


def test_a_job_state_too_long_for_notify_goes_as_ids_only(db):
    row = dataclasses.replace(job_row_for_tests(), status="failed",
                              error="no storage: " + "x" * 9000)
    payload = jobs.job_notification(row)
    assert json.loads(payload) == {"job_id": str(row.job_id), "status": "failed",
                                   "lines_processed": 0}
    db.execute(core.QUERIES["notify"], {"channel": jobs.CHANNEL,
                                        "payload": payload})  # Postgres takes it

    long_name = dataclasses.replace(row, error=None, file_name="📜" * 250 + ".jsonl")  # 12 bytes a character
    assert json.loads(jobs.job_notification(long_name)) == jobs.job_json(long_name)
    for state in (row, long_name):
        assert len(jobs.job_notification(state).encode()) <= jobs.NOTIFY_PAYLOAD_MAX_BYTES


def job_row_for_tests() -> jobs.Job:
    """A job row as the worker's RETURNING * gives it."""
    now = dt.datetime.now(dt.timezone.utc)
    return jobs.Job(job_id=uuid.uuid4(), file_name="app.jsonl", size_bytes=10, bucket="b",
                    object_key="k", status="queued", lines_total=1, lines_processed=0,
                    bytes_processed=0, lines_valid=0, lines_invalid=0, attempts=0, error=None,
                    created_at=now, started_at=None, completed_at=None, updated_at=now,
                    owner="tester")


async def test_a_state_too_long_to_notify_is_read_from_the_database(client, db):
    job = await (await upload(client, jsonl(VALID))).json()
    await listener_listening(db)
    ws = await client.ws_connect(f"/ws/jobs/{job['job_id']}")
    assert (await ws.receive_json(timeout=30))["status"] == "queued"
    error = "the uploaded file is missing from storage: " + "x" * 9000
    failed = db.execute("UPDATE jobs SET status = 'failed', completed_at = now(), error = %s "
                        "WHERE job_id = %s RETURNING *", (error, job["job_id"])).fetchone()
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
    wait_for(lambda: job_row(db, job["job_id"])["status"] == "completed", timeout=120,
             what="the job completed, the API's loop held")  # blocks the loop on purpose
    states += await received_until_closed(ws, timeout=120)

    assert ws.close_code == 1000
    assert states[-1]["status"] == "completed" and states[-1]["lines_processed"] == 203
    assert ranks(states) == sorted(set(ranks(states)))  # no state twice, none out of order
    lines_processed = [s["lines_processed"] for s in states]
    assert lines_processed == sorted(lines_processed)
    marks = worker.progress_marks(203, 0)
    assert len(marks) == 9 and set(marks) <= set(lines_processed), (marks, lines_processed)


async def open_a_websocket_that_never_reads(host: str, port: int, path: str,
                                            token: str) -> socket.socket:
    """A WebSocket client with a tiny receive buffer that reads the handshake's answer and the
    first message (so it is subscribed) and nothing more: what the server sends it from then
    on backs up into the server."""
    sock = await upgrade_with_a_tiny_buffer(host, port, path, f"Authorization: Bearer {token}")
    first = json.loads(await read_frame(sock))
    assert first["status"] == "queued"
    return sock


async def test_websockets_are_closed_1001_when_the_server_stops(settings, start_process,
                                                               make_token):
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
    slow = await open_a_websocket_that_never_reads(client.host, client.port, f"/ws/jobs/{slow_id}",
                                                   client.session.headers["Authorization"][7:])
    try:
        other = await client.ws_connect(f"/ws/jobs/{other_job['job_id']}")
        assert (await other.receive_json(timeout=30))["status"] == "queued"

        slow_row = job_row(db, slow_job["job_id"])
        with capture_access_log() as logs:
            rounds = 0
            while not watchers_dropped(logs):  # each round ~1 MiB more for the slow client
                rounds += 1
                assert rounds <= 200, "the slow client was never dropped"
                with db.transaction():
                    other_state = advance_checkpoint(db, other_job["job_id"], rounds)
                    notify(db, [*batches(slow_row, range(rounds * 500, rounds * 500 + 500)),
                                other_state])
                # handled after the slow job's 500 of this transaction, without waiting on them
                assert await other.receive_json(timeout=30) == jobs.job_json(jobs.Job(**other_state))
            health = await asyncio.wait_for(client.get("/healthz"), 10)
            assert health.status == 200
        assert [(e["job_id"], e["close_code"]) for e in watchers_dropped(logs)] == [
            (str(slow_id), 1013)]
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


async def test_websockets_are_capped_per_owner_and_per_process(settings, aiohttp_client,
                                                               make_token):
    capped = dataclasses.replace(settings, max_websockets=3, max_websockets_per_owner=2)
    alice = await aiohttp_client(eventhorizon.init_app(capped),
                                 headers=bearer(make_token("alice")))
    bob = aiohttp.ClientSession(base_url=alice.server.make_url("/"),
                                headers=bearer(make_token("bob")))
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



# --------------------------------------------------------------------------- log formats


PINO = {"level": 30, "time": 1764496800000, "pid": 7, "hostname": "web-1", "msg": "listening",
        "port": 8080}


async def test_an_upload_names_its_format_and_fallbacks(client, db, start_process):
    response = await client.post("/api/v1/files/upload?format=pino&service=shop&environment=qa",
                                 data=multipart_of(jsonl(PINO)))
    assert response.status == 202, await response.text()
    job = await response.json()
    row = job_row(db, job["job_id"])
    assert (row["format"], row["default_service"], row["default_environment"]) == (
        "pino", "shop", "qa")
    start_process("worker.py")
    done = await asyncio.to_thread(wait_for, lambda: (
        job_row(db, job["job_id"])["status"] == "completed"), 60, what="the job")
    assert done
    final = await (await client.get(f"/api/v1/jobs/{job['job_id']}")).json()
    assert (final["lines_valid"], final["formats"]) == (1, {"pino": 1})
    entry = db.execute("SELECT * FROM log_entries").fetchone()
    assert (entry["level"], entry["message"], entry["environment"]) == ("info", "listening", "qa")
    assert entry["context"]["port"] == 8080  # unmapped fields kept


@pytest.mark.parametrize("query", ["format=nope", "format=", "service=", "service=" + "s" * 129,
                                   "environment=a%0Ab"])
async def test_bad_upload_options_are_422_and_leave_nothing(client, db, settings, query):
    response = await client.post(f"/api/v1/files/upload?{query}", data=multipart_of(jsonl(VALID)))
    await assert_problem(response, 422)
    assert job_count(db) == 0 and stored_keys(settings) == []


def multipart_of(content: bytes, name: str = "app.jsonl") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(content), filename=name,
                   content_type="application/x-ndjson")
    return form
