"""The HTTP API over real HTTP, against real Postgres, RabbitMQ and S3."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import uuid
from urllib.parse import urlsplit

import aiohttp
import pytest
import structlog

import core
import eventhorizon
import jobs
import live
from helpers import (
    VALID,
    assert_problem,
    bearer,
    completed_job,
    file_part,
    job_count,
    job_row,
    jsonl,
    multipart_uploads,
    post_multipart,
    queued_messages,
    stored_keys,
    upload,
    wait_for,
)
from network import (
    ranks,
    received_until_closed,
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
        {"job_id": job["job_id"], "bucket": settings.s3_bucket, "key": row["object_key"]}
    ]
    events = db.execute("SELECT event_type, event_context FROM outbox ORDER BY id").fetchall()
    assert [(e["event_type"], e["event_context"].get("job_id")) for e in events] == [
        ("job.queued", job["job_id"]),
        ("audit.job.uploaded", None),
    ]  # the audit's is `object`


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
async def test_bad_uploads_are_refused_and_leave_nothing(
    client, settings, db, name, content, status, detail
):
    body = await assert_problem(await upload(client, content, name), status)
    assert detail in body["detail"]
    assert job_count(db) == 0
    assert stored_keys(settings) == []
    assert queued_messages(settings) == []


def upload_raw(client, disposition: bytes, content: bytes):
    """A multipart upload with the file part's Content-Disposition parameters as given (the
    way browsers and curl send a name: raw UTF-8 bytes, or RFC 5987's filename*)."""
    return post_multipart(client, file_part(content, disposition) + b"--b--\r\n")


NESTED_PART = (
    b'--b\r\nContent-Disposition: form-data; name="files"\r\n'
    b"Content-Type: multipart/mixed; boundary=inner\r\n\r\n"
    b'--inner\r\nContent-Disposition: attachment; filename="x.jsonl"\r\n\r\n{}\r\n'
    b"--inner--\r\n\r\n"
)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (
            file_part(jsonl(VALID)) + b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\n'
            b"hello\r\n--b--\r\n",
            202,
        ),  # fields after the file are fine
        (NESTED_PART + file_part(jsonl(VALID)) + b"--b--\r\n", 202),  # a nested part is skipped
        (NESTED_PART + b"--b--\r\n", 422),  # ... and is no file
        (file_part(jsonl(VALID)) + NESTED_PART + b"--b--\r\n", 400),
        (file_part(jsonl(VALID))[:-2], 400),  # cut short: no closing boundary
        (file_part(jsonl(VALID)), 400),  # cut short just before the closing boundary
        (
            b'--b\r\nContent-Disposition: form-data; name="_charset_"\r\n\r\n'
            + b"x" * 40
            + b"\r\n"
            + file_part(jsonl(VALID))
            + b"--b--\r\n",
            400,
        ),
        (
            file_part(jsonl(VALID))
            + b'--b\r\nContent-Disposition: form-data; name="pad"\r\n\r\n'
            + b"x" * (70 * 1024)
            + b"\r\n--b--\r\n",
            400,
        ),  # too much after the file
    ],
)
async def test_multipart_shapes(client, db, settings, body, status):
    response = await post_multipart(client, body)
    if status == 202:
        assert response.status == 202, await response.text()
        job = await response.json()
        assert job["lines_total"] == 1 and job["size_bytes"] == len(jsonl(VALID))
        return
    await assert_problem(response, status)
    assert job_count(db) == 0 and stored_keys(settings) == []


@pytest.mark.parametrize(
    "disposition",
    [
        b'filename="caf\xe9.jsonl"',  # Latin-1, not UTF-8
        b"filename*=UTF-8''a%00b.jsonl",  # a NUL
        b'filename="tab\there.jsonl"',
    ],
)
async def test_a_file_name_that_is_not_plain_text_is_422(client, db, settings, disposition):
    response = await upload_raw(client, disposition, jsonl(VALID))
    assert "file name" in (await assert_problem(response, 422))["detail"]
    assert job_count(db) == 0 and stored_keys(settings) == []


@pytest.mark.parametrize(
    "disposition",
    [
        'filename="журнал 日志 ログ.jsonl"'.encode(),
        b"filename*=UTF-8''%D0%B6%D1%83%D1%80%D0%BD%D0%B0%D0%BB%20%E6%97%A5%E5%BF%97%20"
        b"%E3%83%AD%E3%82%B0.jsonl",
    ],
)
async def test_a_file_name_in_any_script_is_kept(client, disposition):
    response = await upload_raw(client, disposition, jsonl(VALID))
    assert response.status == 202, await response.text()
    assert (await response.json())["file_name"] == "журнал 日志 ログ.jsonl"


async def test_uploads_work_right_after_postgres_dropped_the_pools_connections(client, db):
    assert (await upload(client, jsonl(VALID))).status == 202  # the pool has connections now
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
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


async def test_oversize_is_refused_from_content_length_before_reading(
    settings, aiohttp_client, make_token
):
    small = dataclasses.replace(settings, max_upload_bytes=100)
    client = await aiohttp_client(eventhorizon.init_app(small), headers=bearer(make_token()))
    await assert_problem(await upload(client, jsonl(VALID) * 10), 413)


async def test_missing_file_field_and_non_multipart(client, db):
    form = aiohttp.FormData()
    form.add_field("other", b"x", filename="app.jsonl")
    await assert_problem(await client.post("/api/v1/files/upload", data=form), 422)
    response = await client.post(
        "/api/v1/files/upload", data=jsonl(VALID), headers={"Content-Type": "application/x-ndjson"}
    )
    await assert_problem(response, 415)
    assert job_count(db) == 0


@pytest.mark.parametrize(
    ("setting", "closed_port_url", "detail"),
    [
        ("amqp_url", "amqp://guest:guest@127.0.0.1:1/%2F", "broker"),
        ("s3_endpoint_url", "http://127.0.0.1:1", "storage"),
    ],
)
async def test_upload_while_broker_or_storage_is_down_is_503_and_leaves_nothing(
    settings, db, aiohttp_client, make_token, setting, closed_port_url, detail
):
    broken = dataclasses.replace(settings, **{setting: closed_port_url})
    client = await aiohttp_client(eventhorizon.init_app(broken), headers=bearer(make_token()))
    body = await assert_problem(await upload(client, jsonl(VALID)), 503)
    assert detail in body["detail"]
    assert job_count(db) == 0
    assert stored_keys(settings) == []


# --------------------------------------------------------------------------- reading jobs


async def test_unknown_and_malformed_job_ids_are_404(client):
    for path in (
        f"/api/v1/jobs/{uuid.uuid4()}",
        "/api/v1/jobs/not-a-uuid",
        f"/api/v1/jobs/{uuid.uuid4()}/errors",
        "/api/v1/jobs/123/errors",
    ):
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
        await client.ws_connect(
            f"/ws/jobs/{job['job_id']}", headers={"Origin": "http://evil.example"}
        )
    assert info.value.status == 403


async def test_health_and_readiness(settings, client, aiohttp_client, make_token):
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200, await ready.text()
    assert (await ready.json())["checks"] == {
        "postgres": "ok",
        "rabbitmq": "ok",
        "s3": "ok",
        "listener": "ok",
    }

    broken = dataclasses.replace(
        settings, amqp_url="amqp://guest:guest@127.0.0.1:1/%2F", s3_bucket="no-such-bucket-here"
    )
    broken_client = await aiohttp_client(
        eventhorizon.init_app(broken), headers=bearer(make_token())
    )
    response = await broken_client.get("/readyz")
    assert response.status == 503
    checks = (await response.json())["checks"]
    assert checks["postgres"] == "ok"
    assert checks["rabbitmq"].startswith("unavailable") and checks["s3"].startswith("unavailable")
    text = await response.text()  # anyone may read /readyz: no endpoints, no exception text
    assert "127.0.0.1" not in text and "no-such-bucket" not in text and "Error" not in text


async def test_a_dependency_that_never_answers_is_unavailable_after_the_ready_timeout(
    settings, aiohttp_client, make_token, tcp_proxy
):
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
    assert checks == {
        "postgres": "ok",
        "rabbitmq": "ok",
        "s3": "unavailable: no answer within 0.5 s",
        "listener": "ok",
    }
    proxy.close()  # the stuck request fails now, not at boto3's 60 s read timeout (teardown)


# --------------------------------------------------------------------------- end to end


async def test_upload_to_completed_watched_over_websocket(client, start_process, db):
    lines = [dict(VALID, message=f"line {i}") for i in range(1, 201)]
    content = (
        jsonl(*lines[:50])
        + b"{broken\n"
        + jsonl(*lines[50:120])
        + b"\n"
        + jsonl({**VALID, "level": "loud"})
        + jsonl(*lines[120:])
    )
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
        "job_id": job["job_id"],
        "errors": [],
        "next": None,
    }

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


async def test_upload_aborted_mid_body_leaves_no_job_and_no_object(
    client, settings, db, make_token
):
    """A client that disconnects after 12 MiB of a 40 MiB upload, once its multipart upload
    is open in S3 with a part in it. Broken, it looks like: the multipart upload still open
    afterwards (its parts kept, and billed, until a sweep), an object or a job for a file that
    never arrived."""
    boundary = "eh-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="big.jsonl"\r\nContent-Type: application/x-ndjson\r\n\r\n'
    ).encode()
    line = jsonl(VALID)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        (
            f"POST /api/v1/files/upload HTTP/1.1\r\nHost: {client.host}\r\n"
            f"Authorization: Bearer {make_token()}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {40 * 1024 * 1024}\r\n\r\n"
        ).encode()
        + head
    )
    sent = 0
    while sent < 12 * 1024 * 1024:
        writer.write(line * 1000)
        sent += len(line) * 1000
        await writer.drain()

    def a_part_sent():
        s3 = core.s3_client(settings)
        return [
            u
            for u in multipart_uploads(settings)
            if s3.list_parts(Bucket=settings.s3_bucket, Key=u["Key"], UploadId=u["UploadId"]).get(
                "Parts"
            )
        ]

    [started] = await asyncio.to_thread(
        wait_for, a_part_sent, timeout=30, what="a multipart upload with a part"
    )
    assert started["Key"].startswith("uploads/")
    writer.transport.abort()

    await asyncio.to_thread(
        wait_for,
        lambda: not multipart_uploads(settings),
        timeout=30,
        what="the multipart upload aborted",
    )
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
    killed = db.execute(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
        "WHERE query = 'LISTEN \"eh_job\"' AND datname = current_database()"
    ).fetchone()["n"]
    assert killed == 1
    assert job_row(db, job["job_id"])["status"] == "processing"  # the kill landed mid-job
    wait_for(
        lambda: job_row(db, job["job_id"])["status"] == "completed",
        timeout=60,
        what="the job completed while the API could not listen",
    )

    states += await received_until_closed(ws)
    assert states[-1]["status"] == "completed" and states[-1]["lines_valid"] == 2_000
    assert ranks(states) == sorted(set(ranks(states)))  # in order, none twice


async def test_the_listener_restarts_after_an_unexpected_error_and_is_unready_meanwhile(
    client, db, monkeypatch
):
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
        db.execute(
            "UPDATE jobs SET status = 'processing', started_at = now() WHERE job_id = %s",
            (job["job_id"],),
        )
        db.execute(
            core.QUERIES["notify"],
            {
                "channel": jobs.CHANNEL,
                "payload": jobs.job_notification(
                    jobs.query(db, "get_job", {"job_id": job["job_id"]}).fetchone()
                ),
            },
        )
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
    assert empty == {
        "jobs": {"queued": 0, "processing": 0, "completed": 0, "failed": 0},
        "outbox": {"backlog": 0, "oldest_age_s": 0, "dead": 0},
    }
    await upload(client, jsonl(VALID))
    stats = await (await client.get("/api/v1/stats")).json()
    assert stats["jobs"]["queued"] == 1
    assert stats["outbox"]["backlog"] == 2  # job.queued and audit.job.uploaded, until the relay


async def test_upload_while_database_is_down_is_503_and_leaves_nothing(
    settings, aiohttp_client, make_token
):
    broken = dataclasses.replace(
        settings,
        database_url="postgresql://postgres@127.0.0.1:1/x",
        db_wait_s=0.5,
        ready_timeout_s=0.5,
    )
    client = await aiohttp_client(eventhorizon.init_app(broken), headers=bearer(make_token()))
    body = await assert_problem(await upload(client, jsonl(VALID)), 503)
    assert "database" in body["detail"]
    assert stored_keys(settings) == []  # the stored object was removed again
    assert (await client.get("/readyz")).status == 503


# --------------------------------------------------------------------------- log formats


PINO = {
    "level": 30,
    "time": 1764496800000,
    "pid": 7,
    "hostname": "web-1",
    "msg": "listening",
    "port": 8080,
}


async def test_an_upload_names_its_format_and_fallbacks(client, db, start_process):
    response = await client.post(
        "/api/v1/files/upload?format=pino&service=shop&environment=qa",
        data=multipart_of(jsonl(PINO)),
    )
    assert response.status == 202, await response.text()
    job = await response.json()
    row = job_row(db, job["job_id"])
    assert (row["format"], row["default_service"], row["default_environment"]) == (
        "pino",
        "shop",
        "qa",
    )
    start_process("worker.py")
    done = await asyncio.to_thread(
        wait_for, lambda: (job_row(db, job["job_id"])["status"] == "completed"), 60, what="the job"
    )
    assert done
    final = await (await client.get(f"/api/v1/jobs/{job['job_id']}")).json()
    assert (final["lines_valid"], final["formats"]) == (1, {"pino": 1})
    entry = db.execute("SELECT * FROM log_entries").fetchone()
    assert (entry["level"], entry["message"], entry["environment"]) == ("info", "listening", "qa")
    assert entry["context"]["port"] == 8080  # unmapped fields kept


@pytest.mark.parametrize(
    "query", ["format=nope", "format=", "service=", "service=" + "s" * 129, "environment=a%0Ab"]
)
async def test_bad_upload_options_are_422_and_leave_nothing(client, db, settings, query):
    response = await client.post(f"/api/v1/files/upload?{query}", data=multipart_of(jsonl(VALID)))
    await assert_problem(response, 422)
    assert job_count(db) == 0 and stored_keys(settings) == []


def multipart_of(content: bytes, name: str = "app.jsonl") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(content), filename=name, content_type="application/x-ndjson")
    return form
