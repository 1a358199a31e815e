"""Abuse of the upload path, done for real: compressed bodies, floods of fields, stalled and
concurrent uploads, multipart uploads a killed API left open, and numbers that are not plain
digits. Each test checks that the limit holds and that a refused upload leaves nothing."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures.thread
import dataclasses
import gzip
import io
import json
import os
import time
import tracemalloc
import zlib

import aiohttp
import pytest
import structlog

import core
import eventhorizon
import upload_route
import uploads
from helpers import (
    VALID,
    assert_problem,
    bearer,
    file_part,
    job_count,
    jsonl,
    multipart_uploads,
    post_multipart,
    queued_messages,
    stored_keys,
    wait_until,
)
from processes import logged_events, serve_api

BOUNDARY = "eh-abuse"
UPLOAD_PATH = "/api/v1/files/upload"
FILE = file_part(jsonl(VALID))  # a file part, for bodies made by hand (boundary `b`)


# --------------------------------------------------------------------------- helpers


async def start_api(start_process, **env: str):
    """`python eventhorizon.py` as its own process, answering on its `port`."""
    _url, api = await asyncio.to_thread(serve_api, start_process, **env)
    return api


async def healthz_status(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return int((await reader.readline()).split()[1])
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.fixture
async def sockets():
    """Plain connections to the API, for requests no HTTP client sends (a body that stalls, a
    connection dropped mid-body): `await sockets(port)` is a (reader, writer) pair. Whatever
    is still open is dropped after the test."""
    writers: list[asyncio.StreamWriter] = []

    async def connect(port: int):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        return reader, writer

    yield connect
    for writer in writers:
        writer.transport.abort()
    await asyncio.sleep(0)  # the aborted sockets close on the loop's next turn


def lines_of_size(size: int) -> bytes:
    """Valid JSON lines, about `size` bytes of them."""
    line = jsonl(VALID)
    return line * (size // len(line))


async def start_raw_upload(
    sockets, port: int, token: str, content: bytes, *, content_length: int = 40 * 1024 * 1024
):
    """Send an upload's headers, the file part's head and `content` over a plain socket, and
    no more: the body stalls there (its Content-Length promises more). Returns the socket's
    reader and writer, to read the answer or drop the connection."""
    reader, writer = await sockets(port)
    writer.write(
        (
            f"POST {UPLOAD_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {content_length}\r\n\r\n"
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="stalled.jsonl"\r\nContent-Type: application/x-ndjson\r\n\r\n'
        ).encode()
    )
    for start in range(0, len(content), 1024 * 1024):
        writer.write(content[start : start + 1024 * 1024])
        await writer.drain()
    return reader, writer


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: status, headers (lower-case names), body."""
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, await reader.readexactly(int(headers.get("content-length", 0)))


def assert_nothing_kept(settings, db) -> None:
    assert job_count(db) == 0
    assert stored_keys(settings) == []
    assert queued_messages(settings) == []


# --------------------------------------------------------------------------- 1. encodings


def gzip_bomb(content_bytes: int) -> bytes:
    """A multipart body holding a file of `content_bytes` of valid JSON lines, gzipped whole:
    a fifth of a percent of its size on the wire (deflate packs best the lines' long runs of
    one letter)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    block = jsonl({**VALID, "message": "x" * 64 * 1024}) * 16
    out = [compressor.compress(file_part(b"")[:-2])]  # the part's head, without the content
    for _ in range(-(-content_bytes // len(block))):
        out.append(compressor.compress(block))
    out.append(compressor.compress(b"\r\n--b--\r\n"))
    out.append(compressor.flush())
    return b"".join(out)


async def test_a_gzip_bomb_is_refused_with_415_and_leaves_nothing(
    settings, db, aiohttp_client, make_token
):
    """300 KB that aiohttp would inflate to a 128 MiB file, against a 1 MiB limit."""
    small = dataclasses.replace(settings, max_upload_bytes=1024 * 1024)
    client = await aiohttp_client(eventhorizon.init_app(small), headers=bearer(make_token()))
    bomb = gzip_bomb(128 * 1024 * 1024)
    assert len(bomb) < small.max_upload_bytes / 2  # its Content-Length looks harmless
    assert len(gzip.decompress(bomb)) > 128 * small.max_upload_bytes
    response = await client.post(
        UPLOAD_PATH,
        data=bomb,
        headers={"Content-Type": "multipart/form-data; boundary=b", "Content-Encoding": "gzip"},
    )
    body = await assert_problem(response, 415)
    assert "Content-Encoding" in body["detail"] and "gzip" in body["detail"]
    assert_nothing_kept(settings, db)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_a_refused_gzip_bomb_is_not_inflated_afterwards_either(
    settings, start_process, make_token
):
    """After answering, aiohttp reads what is left of a body to the void (its lingering
    close), inflating it on the event loop as it goes: four 2.4 MB bombs, refused in
    milliseconds, cost the API 4.8 s of CPU and made /healthz a second late. It must not
    inflate request bodies at all.

    Each bomb goes whole on a connection of its own, followed on the same connection by a
    GET /healthz: the API answers that only once it has read the bomb to its end, so when
    the four answers are in, all the reading is done, and its CPU time is counted."""
    api = await start_api(start_process)
    bomb = gzip_bomb(1024**3)
    head = (
        f"POST {UPLOAD_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {make_token()}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Encoding: gzip\r\n"
        f"Content-Length: {len(bomb)}\r\n\r\n"
    ).encode()
    before = cpu_seconds(api.pid)

    async def send() -> tuple[int, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
        try:
            writer.write(head + bomb)
            refused, _, _ = await read_response(reader)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            healthy, _, _ = await read_response(reader)
            return refused, healthy
        finally:
            writer.close()

    answers = await asyncio.wait_for(asyncio.gather(*(send() for _ in range(4))), 60)
    assert answers == [(415, 200)] * 4
    used = cpu_seconds(api.pid) - before
    assert used < 1.0, f"the API spent {used:.1f}s of CPU on 4 GiB it refused"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "x-custom", "identity, gzip", "GZIP"])
async def test_any_content_encoding_is_refused_before_the_body_is_read(
    settings, db, make_token, start_process, sockets, encoding
):
    """Headers alone get the answer: the body is never read, so never inflated."""
    api = await start_api(start_process)
    reader, writer = await sockets(api.port)
    writer.write(
        (
            f"POST {UPLOAD_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {make_token()}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Encoding: {encoding}\r\nContent-Length: 100000\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    status, headers, body = await asyncio.wait_for(read_response(reader), timeout=10)
    assert status == 415 and headers["content-type"].startswith("application/problem+json")
    assert "Content-Encoding" in json.loads(body)["detail"]
    assert_nothing_kept(settings, db)


async def test_identity_is_no_encoding(client):
    response = await client.post(
        UPLOAD_PATH,
        data=file_part(jsonl(VALID)) + b"--b--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=b", "Content-Encoding": "identity"},
    )
    assert response.status == 202, await response.text()


def encoded_part(content: bytes, header: bytes) -> bytes:
    return (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="app.jsonl"\r\n'
        + header
        + b"\r\n\r\n"
        + content
        + b"\r\n--b--\r\n"
    )


@pytest.mark.parametrize(
    ("header", "content"),
    [
        (b"Content-Encoding: gzip", gzip.compress(lines_of_size(8 * 1024 * 1024))),
        (b"Content-Encoding: deflate", zlib.compress(lines_of_size(1024 * 1024))),
        (b"Content-Transfer-Encoding: base64", base64.encodebytes(jsonl(VALID, VALID))),
        (b"Content-Transfer-Encoding: quoted-printable", jsonl({**VALID, "message": "=41=42"})),
    ],
)
async def test_a_file_part_with_its_own_encoding_is_refused_with_415(
    settings, db, aiohttp_client, make_token, header, content
):
    """The stored file must be the bytes sent: a part whose bytes are an encoding of the file
    (which aiohttp's read(decode=True) would inflate past the limit) is refused."""
    small = dataclasses.replace(settings, max_upload_bytes=1024 * 1024)
    client = await aiohttp_client(eventhorizon.init_app(small), headers=bearer(make_token()))
    response = await post_multipart(client, encoded_part(content, header))
    body = await assert_problem(response, 415)
    assert header.split(b":")[0].decode() in body["detail"]
    assert_nothing_kept(settings, db)


@pytest.mark.parametrize(
    "header",
    [
        b"Content-Transfer-Encoding: binary",
        b"Content-Transfer-Encoding: 8bit",
        b"Content-Encoding: identity",
    ],
)
async def test_a_file_part_in_plain_bytes_is_stored_exactly_as_sent(client, settings, header):
    content = jsonl(VALID, {**VALID, "message": "=41=42 caf\u00e9"}) + b"QUJD\n"
    response = await post_multipart(client, encoded_part(content, header))
    assert response.status == 202, await response.text()
    job = await response.json()
    stored = core.s3_client(settings).get_object(
        Bucket=settings.s3_bucket, Key=f"uploads/{job['job_id']}.jsonl"
    )
    assert stored["Body"].read() == content


# --------------------------------------------------------------------------- 2. fields


def fields(count: int, value: bytes = b"x", prefix: str = "f") -> bytes:
    return b"".join(
        b'--b\r\nContent-Disposition: form-data; name="%s%d"\r\n\r\n%s\r\n'
        % (prefix.encode(), i, value)
        for i in range(count)
    )


def nested(count: int) -> bytes:
    inner = b"".join(
        b'--inner\r\nContent-Disposition: attachment; filename="%d.txt"\r\n\r\nx\r\n' % i
        for i in range(count)
    )
    return (
        b'--b\r\nContent-Disposition: form-data; name="files"\r\n'
        b"Content-Type: multipart/mixed; boundary=inner\r\n\r\n" + inner + b"--inner--\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (fields(16) + FILE + b"--b--\r\n", 202, None),
        (fields(17) + FILE + b"--b--\r\n", 400, "16 fields"),
        (fields(1, b"x" * 70 * 1024) + FILE + b"--b--\r\n", 400, "64 KiB"),
        (fields(15, b"x" * 4500) + FILE + b"--b--\r\n", 400, "64 KiB"),  # 66 KiB in all
        (nested(10) + FILE + b"--b--\r\n", 202, None),  # a nested part's parts count too:
        (nested(16) + FILE + b"--b--\r\n", 400, "16 fields"),  # 1 + 16 parts
        (FILE + fields(16) + b"--b--\r\n", 202, None),
        (FILE + fields(17) + b"--b--\r\n", 400, "16 fields"),
    ],
)
async def test_what_may_come_around_the_file_is_capped(client, settings, db, body, status, detail):
    response = await post_multipart(client, body)
    if status == 202:
        assert response.status == 202, await response.text()
        return
    problem = await assert_problem(response, status)
    assert detail in problem["detail"]
    assert_nothing_kept(settings, db)


async def test_a_flood_of_fields_is_refused_at_once_and_health_checks_stay_prompt(
    settings, db, start_process, make_token
):
    """50,000 tiny fields before the file (three such uploads at once): each is refused 400
    after 16 fields, and the API spends under 1 s of CPU on all three (the event loop is one
    thread: it was never held longer than that), while /healthz, polled all the while, is
    answered 200 every time. Before the cap, parsing them took seconds of the event loop, and
    health checks were that late. (CPU time, not the health checks' latency: a busy machine
    makes those late whatever the API does.)"""
    api = await start_api(start_process)
    base = f"http://127.0.0.1:{api.port}"
    flood = fields(50_000) + FILE + b"--b--\r\n"
    answered: list[int] = []
    done = asyncio.Event()

    async def poll_healthz(session: aiohttp.ClientSession) -> None:
        while not done.is_set():
            async with session.get(f"{base}/healthz") as response:
                answered.append(response.status)
            await asyncio.sleep(0.02)

    async def send_flood(session: aiohttp.ClientSession) -> tuple[int, dict]:
        async with session.post(
            f"{base}{UPLOAD_PATH}",
            data=io.BytesIO(flood),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        ) as response:
            return response.status, await response.json(content_type=None)

    async with (
        aiohttp.ClientSession(headers=bearer(make_token())) as uploads_session,
        aiohttp.ClientSession() as health_session,
    ):
        poller = asyncio.create_task(poll_healthz(health_session))
        await wait_until(lambda: len(answered) >= 3, what="/healthz answering")
        cpu_before = cpu_seconds(api.pid)
        results = await asyncio.gather(*(send_flood(uploads_session) for _ in range(3)))
        used = cpu_seconds(api.pid) - cpu_before
        polled = len(answered)
        await wait_until(lambda: len(answered) >= polled + 3, what="/healthz after the floods")
        done.set()
        await poller
    assert set(answered) == {200}
    assert used < 1.0, f"the API spent {used:.2f}s of CPU refusing three floods of fields"
    for status, problem in results:
        assert status == 400 and "16 fields" in problem["detail"], problem
    assert_nothing_kept(settings, db)


# --------------------------------------------------------------------------- 3. stalls


async def test_a_stalled_upload_is_dropped_with_408_and_its_multipart_upload_aborted(
    settings, db, start_process, make_token, sockets
):
    """9 MiB of the file (an 8 MiB part is in S3 already), then nothing: after the idle
    timeout the upload is answered 408, the S3 multipart upload aborted, no job made; the
    upload's slot is free again (EH_MAX_UPLOADS=1, and the next upload gets in)."""
    api = await start_api(start_process, EH_UPLOAD_IDLE_TIMEOUT_S="1", EH_MAX_UPLOADS="1")
    token = make_token()
    reader, writer = await start_raw_upload(
        sockets, api.port, token, lines_of_size(9 * 1024 * 1024)
    )
    await wait_until(
        lambda: multipart_uploads(settings), timeout=10, what="the first part's multipart upload"
    )

    status, headers, body = await asyncio.wait_for(read_response(reader), timeout=15)
    assert status == 408 and headers["content-type"].startswith("application/problem+json")
    assert "1 second" in json.loads(body)["detail"]
    writer.transport.abort()
    await wait_until(
        lambda: not multipart_uploads(settings),
        timeout=10,
        what="the multipart upload to be aborted",
    )
    assert_nothing_kept(settings, db)
    [line] = await wait_until(
        lambda: [e for e in logged_events(api, "http.request") if e["path"] == UPLOAD_PATH],
        timeout=10,
        what="the upload's access-log line",
    )
    assert line["status"] == 408

    async with aiohttp.ClientSession(headers=bearer(token)) as session:
        form = aiohttp.FormData()
        form.add_field("file", jsonl(VALID), filename="next.jsonl")
        async with session.post(f"http://127.0.0.1:{api.port}{UPLOAD_PATH}", data=form) as response:
            assert response.status == 202, await response.text()


async def test_a_stall_before_the_file_is_dropped_too(
    settings, db, aiohttp_client, make_token, sockets
):
    """Headers sent, then not even the first boundary."""
    quick = dataclasses.replace(settings, upload_idle_timeout_s=0.5)
    client = await aiohttp_client(eventhorizon.init_app(quick))
    reader, writer = await sockets(client.port)
    writer.write(
        (
            f"POST {UPLOAD_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {make_token()}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: 1000\r\n\r\n--b\r\nContent-Disp"
        ).encode()
    )
    status, _headers, _body = await asyncio.wait_for(read_response(reader), timeout=10)
    assert status == 408
    assert job_count(db) == 0


# --------------------------------------------------------------------------- 4. concurrency


async def test_concurrent_uploads_are_capped_per_owner_and_per_process(
    settings, db, sockets, start_process, make_token
):
    api = await start_api(
        start_process,
        EH_MAX_UPLOADS_PER_OWNER="2",
        EH_MAX_UPLOADS="3",
        EH_UPLOAD_IDLE_TIMEOUT_S="120",
    )
    base = f"http://127.0.0.1:{api.port}"
    alice, bob, carol = make_token("alice"), make_token("bob"), make_token("carol")

    async def post(token: str, name: str = "app.jsonl"):
        form = aiohttp.FormData()
        form.add_field("file", jsonl(VALID), filename=name)
        async with aiohttp.ClientSession(headers=bearer(token)) as session:
            async with session.post(f"{base}{UPLOAD_PATH}", data=form) as response:
                return response.status, dict(response.headers), await response.read()

    async def refused_until(token: str, status: int):
        """Probe with a file the API refuses (415, its name) once it has a slot, so no probe
        makes a job, until the probe is refused for want of a slot."""
        for _ in range(100):
            answer = await post(token, "probe.txt")
            if answer[0] == status:
                return answer
            assert answer[0] == 415, answer
            await asyncio.sleep(0.1)
        raise AssertionError(f"never refused with {status}")

    stalled = [await start_raw_upload(sockets, api.port, alice, jsonl(VALID)) for _ in range(2)]
    status, headers, body = await refused_until(alice, 429)
    assert headers["Content-Type"].startswith("application/problem+json")
    assert int(headers["Retry-After"]) > 0
    assert "2 uploads" in json.loads(body)["detail"]

    status, _headers, body = await post(bob)
    assert status == 202, body  # another owner gets in
    stalled.append(await start_raw_upload(sockets, api.port, bob, jsonl(VALID)))
    status, headers, body = await refused_until(carol, 503)
    assert headers["Content-Type"].startswith("application/problem+json")
    assert int(headers["Retry-After"]) > 0
    assert "3 uploads" in json.loads(body)["detail"]

    for _reader, writer in stalled:
        writer.transport.abort()
    for _ in range(100):
        status, _headers, body = await post(alice)
        if status == 202:
            break
        assert status in (429, 503), body
        await asyncio.sleep(0.1)
    assert status == 202
    assert job_count(db) == 2  # bob's and alice's last: no stalled upload left a job


async def test_refused_uploads_give_their_slot_back(settings, aiohttp_client, make_token):
    one = dataclasses.replace(settings, max_uploads=1, max_uploads_per_owner=1)
    client = await aiohttp_client(eventhorizon.init_app(one), headers=bearer(make_token()))
    for content, status in [(b"[1]\n", 422), (b"", 422), (b"\xff\n", 422), (jsonl(VALID), 202)]:
        form = aiohttp.FormData()
        form.add_field("file", content, filename="a.jsonl")
        response = await client.post(UPLOAD_PATH, data=form)
        assert response.status == status, await response.text()
    assert (await post_multipart(client, fields(20) + FILE + b"--b--\r\n")).status == 400
    response = await post_multipart(client, FILE + b"--b--\r\n")
    assert response.status == 202, await response.text()


def test_upload_slots_count_per_owner_and_in_all():
    slots = uploads.UploadSlots(max_uploads=3, max_per_owner=2)
    with slots.claim("alice"), slots.claim("alice"):
        with pytest.raises(uploads.TooManyUploads) as owner_full:
            slots.claim("alice").__enter__()
        assert (owner_full.value.per_owner, owner_full.value.limit) == (True, 2)
        with slots.claim("bob"):
            with pytest.raises(uploads.TooManyUploads) as process_full:
                slots.claim("carol").__enter__()
            assert (process_full.value.per_owner, process_full.value.limit) == (False, 3)
    with pytest.raises(RuntimeError), slots.claim("alice"):
        raise RuntimeError("an upload that failed")
    assert slots.running() == 0


class NullS3:
    """An S3 client that takes an object's parts and keeps nothing."""

    def create_multipart_upload(self, **_):
        return {"UploadId": "upload-1"}

    def upload_part(self, *, PartNumber, **_):
        return {"ETag": f"etag-{PartNumber}"}

    def complete_multipart_upload(self, **_):
        pass


async def test_a_running_upload_holds_one_part_and_one_chunk(monkeypatch):
    """The memory budget of EH_MAX_UPLOADS (docs/access.md, Limits): one upload, streamed in the
    API's chunks, never holds more than an S3 part and a chunk, ~8.3 MiB. (Copying each
    part out of the buffer took 24 MiB.) The thread pool's workers are made slow to let go
    of their work items after each call, as on a busy machine, where a part passed as the
    call's argument was seen still held when the next one had filled (16.9 MiB)."""
    run = concurrent.futures.thread._WorkItem.run

    def run_then_hold_on(work_item):
        run(work_item)
        time.sleep(0.05)

    monkeypatch.setattr(concurrent.futures.thread._WorkItem, "run", run_then_hold_on)
    writer = uploads.ObjectWriter(NullS3(), "bucket", "uploads/x.jsonl")
    chunk = b"x" * upload_route.READ_CHUNK_BYTES
    await asyncio.to_thread(lambda: None)  # the thread pool exists before measuring
    tracemalloc.start()
    try:
        for _ in range(3 * uploads.PART_BYTES // len(chunk) + 7):
            await writer.write(chunk)
        await writer.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < uploads.PART_BYTES + 4 * len(chunk), f"{peak / 2**20:.1f} MiB"


# --------------------------------------------------------------------------- 5. sweeping


def open_multipart_upload(settings, key: str) -> str:
    s3 = core.s3_client(settings)
    return s3.create_multipart_upload(Bucket=settings.s3_bucket, Key=key)["UploadId"]


def test_sweep_aborts_old_multipart_uploads_under_uploads_only(settings):
    s3 = core.s3_client(settings)
    for key in ("uploads/a.jsonl", "uploads/b.jsonl", "elsewhere/c.jsonl"):
        open_multipart_upload(settings, key)
    assert uploads.sweep_stale_uploads(s3, settings.s3_bucket, older_than_s=3600) == 0
    assert len(multipart_uploads(settings)) == 3  # none is an hour old
    assert uploads.sweep_stale_uploads(s3, settings.s3_bucket, older_than_s=0) == 2
    assert [u["Key"] for u in multipart_uploads(settings)] == ["elsewhere/c.jsonl"]


async def test_a_multipart_upload_a_killed_api_left_open_is_swept(
    settings, db, start_process, make_token, sockets
):
    api = await start_api(start_process)
    await start_raw_upload(sockets, api.port, make_token(), lines_of_size(9 * 1024 * 1024))
    [left] = await wait_until(
        lambda: multipart_uploads(settings), timeout=10, what="the first part's multipart upload"
    )
    api.kill()
    await asyncio.to_thread(api.wait, 10)
    assert [u["UploadId"] for u in multipart_uploads(settings)] == [left["UploadId"]]  # left open
    assert job_count(db) == 0

    s3 = core.s3_client(settings)
    assert uploads.sweep_stale_uploads(s3, settings.s3_bucket, older_than_s=3600) == 0
    assert uploads.sweep_stale_uploads(s3, settings.s3_bucket, older_than_s=0) == 1
    assert multipart_uploads(settings) == []


async def test_the_api_sweeps_at_start_up_and_then_periodically(
    settings, aiohttp_client, monkeypatch
):
    open_multipart_upload(settings, "uploads/left-by-a-dead-api.jsonl")
    monkeypatch.setattr(eventhorizon, "STALE_UPLOAD_AGE_S", 0)
    monkeypatch.setattr(eventhorizon, "SWEEP_INTERVAL_S", 0.3)
    with structlog.testing.capture_logs() as logs:
        await aiohttp_client(eventhorizon.init_app(settings))
        await wait_until(
            lambda: not multipart_uploads(settings), timeout=10, what="the start-up sweep"
        )
        open_multipart_upload(settings, "uploads/left-later.jsonl")
        await wait_until(
            lambda: not multipart_uploads(settings), timeout=10, what="the periodic sweep"
        )
    swept = [e["count"] for e in logs if e["event"] == "upload.swept"]
    assert swept[0] == 1 and sum(swept) == 2


# --------------------------------------------------------------------------- 6. numbers


@pytest.mark.parametrize(
    "raw",
    ["\u0663", "1_0", " 1 ", "+5", "-1", "1.0", "0x10", "\uff15", "5\n", "", "1e2", "9" * 5000],
)
async def test_numeric_parameters_are_plain_ascii_digits(client, raw):
    body = await assert_problem(await client.get("/api/v1/jobs", params={"limit": raw}), 422)
    assert body["detail"] == "limit must be an integer from 1 to 100"
    job = await (await post_multipart(client, FILE + b"--b--\r\n")).json()
    response = await client.get(f"/api/v1/jobs/{job['job_id']}/errors", params={"after_line": raw})
    assert "after_line" in (await assert_problem(response, 422))["detail"]


async def test_plain_digits_are_fine(client):
    for raw in ("5", "05", "100"):
        assert (await client.get("/api/v1/jobs", params={"limit": raw})).status == 200
