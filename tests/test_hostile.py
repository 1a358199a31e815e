"""The hostile tier: attacks on a live API process (`python eventhorizon.py`), each checked
for its answer and for the rule that no single request, message or line holds the API's
event loop for more than ~50 ms, while another client is served.

How the loop is measured, and why so. A probe outside the API (a timer here, or the time
/healthz takes) measures the machine as much as the API: on a loaded machine (these tests
run beside others on two cores) every wake-up is late, and a test that judged by it would
be flaky or would need a budget so loose it proves nothing. So the API measures itself: it
records the CPU time (`time.thread_time`) of each callback its loop runs
(observe.LoopWatch, `eventhorizon_event_loop_hold_seconds` on /metrics). CPU time is the
loop's own work only, whatever else the machine runs; a callback that held the loop for
2 s of computing shows as 2 s however busy or quiet the machine is, and preemption shows
as nothing. The test reads the histogram before and after an attack and requires that no
callback in between took more than HOLD_BUDGET_S: twice the rule's 50 ms, so a slower or
shared CPU does not fail it, and far below what each attack held the loop for before its
fix (0.3 s to 40 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import re
import urllib.parse

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import auth
import http_server
import uploads
from helpers import VALID, bearer, jsonl
from processes import serve_api

pytestmark = pytest.mark.hostile

HOLD_BUDGET_S = 0.1  # a bucket of eventhorizon_event_loop_hold_seconds
HEAD_TIMEOUT_S = 2.0
AUTH_FAILURES_PER_MINUTE = 10
PROTOCOL = "graphql-transport-ws"


# --------------------------------------------------------------------------- the live API


class LiveApi:
    """The API as its own process, a token for an attacker and one for a bystander."""

    def __init__(self, url: str, proc, attacker: str, bystander: str):
        self.url, self.proc = url, proc
        self.port = int(url.rsplit(":", 1)[1])
        self.attacker, self.bystander = attacker, bystander

    async def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, keyed by name and labels: `name{label="v"}`."""
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{self.url}/metrics") as response:
                assert response.status == 200
                text = await response.text()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    async def holds_over_budget(self) -> int:
        """How many callbacks so far held the loop for more than HOLD_BUDGET_S of CPU."""
        samples = await self.metrics()
        return int(
            samples["eventhorizon_event_loop_hold_seconds_count"]
            - samples[f'eventhorizon_event_loop_hold_seconds_bucket{{le="{HOLD_BUDGET_S}"}}']
        )

    async def bystander_is_served(self) -> None:
        """Another owner's read, answered in full."""
        async with aiohttp.ClientSession(headers=bearer(self.bystander)) as session:
            async with session.get(f"{self.url}/api/v1/jobs") as response:
                assert response.status == 200, await response.text()


@pytest.fixture
async def api(settings, start_process, make_token):
    url, proc = await asyncio.to_thread(
        serve_api,
        start_process,
        EH_REQUEST_HEAD_TIMEOUT_S=str(HEAD_TIMEOUT_S),
        EH_AUTH_FAILURES_PER_MINUTE=str(AUTH_FAILURES_PER_MINUTE),
    )
    live = LiveApi(url, proc, make_token("mallory"), make_token("bystander"))
    await live.bystander_is_served()
    return live


class LoopBudget:
    """`async with LoopBudget(api):` — no callback of the API's loop inside the block may
    take more than HOLD_BUDGET_S of CPU, and the bystander is served at its end."""

    def __init__(self, api: LiveApi):
        self.api = api

    async def __aenter__(self):
        self.before = await self.api.holds_over_budget()
        return self

    async def __aexit__(self, *exc_info):
        if exc_info[0] is not None:
            return False
        await self.api.bystander_is_served()
        held = await self.api.holds_over_budget() - self.before
        warnings = [
            line
            for line in self.api.proc.log_path.read_text().splitlines()
            if '"loop.held"' in line
        ]
        assert held == 0, (
            f"{held} callbacks held the API's event loop for more than "
            f"{HOLD_BUDGET_S} s of CPU: {warnings[-5:]}"
        )
        return False


async def post_json(api: LiveApi, path: str, body, token: str | None = None):
    headers = bearer(token or api.attacker)
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(
            f"{api.url}{path}",
            data=json.dumps(body, separators=(",", ":")),
            headers={"Content-Type": "application/json"},
        ) as response:
            return response.status, response.headers.copy(), await response.json(content_type=None)


async def raw_exchange(port: int, data: bytes, *, read_until_closed: bool = True) -> bytes:
    """Send bytes over a plain socket; what the server sent back until it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 60) if read_until_closed else b""
    finally:
        writer.close()


def parse_responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP/1.1 responses (each with a Content-Length) in a byte stream."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }
        length = int(headers.get("content-length", 0))
        found.append((int(lines[0].split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return found


def assert_guarded_problem(
    status: int, headers: dict[str, str], body: bytes, expected: int
) -> dict:
    assert status == expected, body
    assert headers["content-type"].startswith("application/problem+json"), headers
    for name, value in http_server.SECURITY_HEADERS.items():
        assert headers[name.lower()] == value
    problem = json.loads(body)
    assert problem["status"] == expected and problem["detail"]
    return problem


# --------------------------------------------------------------------------- 1. definitions


async def test_a_format_definition_of_thousands_of_mixed_paths_is_refused_without_holding_the_loop(
    api,
):
    """Issue 21 §1: the schema's uniqueItems compared 9,000 mixed-type entries pairwise on the
    loop (tens of seconds). Now the definition's shape is bounded first."""
    paths = [i if i % 2 else str(i) for i in range(9000)]
    definition = {"name": "bomb", "fields": {"timestamp": paths, "level": ["level"]}}
    async with LoopBudget(api):
        status, _headers, body = await post_json(api, "/api/v1/formats", definition)
    assert status == 422, body
    assert "9000 items, more than 8" in body["detail"]


async def test_definitions_are_checked_off_the_loop_many_at_once(api):
    """Twenty definitions at the bounds at once: each checked on a CPU thread, none on the
    loop; those the threads cannot take now are 503 with Retry-After, never queued without
    bound."""
    definition = {
        "name": "wide",
        "fields": {
            name: [f"p{i}.{name}" for i in range(8)]
            for name in ("timestamp", "level", "message", "service", "event_type", "environment")
        },
        "levels": {str(i): "info" for i in range(64)},
    }
    async with LoopBudget(api):
        answers = await asyncio.gather(
            *(
                post_json(api, "/api/v1/formats", {**definition, "name": f"wide{i}"})
                for i in range(20)
            )
        )
    for status, headers, body in answers:
        assert status in (201, 503), body
        if status == 503:
            assert headers["Retry-After"]
    assert any(status == 201 for status, _, _ in answers)


# --------------------------------------------------------------------------- 2. GraphQL


def unused_fragment(fields: int) -> str:
    """A small query and a fragment nobody uses, of `fields` sub-selections that validation
    compares pairwise (they share a response name)."""
    return (
        "query Q { jobs(limit: 1) { id } } fragment F on Query { "
        + " ".join("jobs { id }" for _ in range(fields))
        + " }"
    )


async def graphql_socket_answer(api: LiveApi, query: str) -> dict:
    """The first message a graphql-transport-ws socket answers a `subscribe` with."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{api.url}/graphql", protocols=(PROTOCOL,)) as ws:
            await ws.send_json(
                {"type": "connection_init", "payload": {"Authorization": f"Bearer {api.attacker}"}}
            )
            assert (await ws.receive_json(timeout=30))["type"] == "connection_ack"
            await ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": query}})
            return await ws.receive_json(timeout=60)


@pytest.mark.parametrize("over", ["http", "socket"])
async def test_a_graphql_document_with_a_large_unused_fragment_is_refused_without_holding_the_loop(
    api, over
):
    """Issue 21 §2: the field limit counted what the operation used, while validation walked
    every definition, comparing fields pairwise (about 1 s for this one)."""
    query = unused_fragment(450)
    async with LoopBudget(api):
        if over == "http":
            status, _headers, body = await post_json(api, "/graphql", {"query": query})
            assert status == 200 and "data" not in body
            errors = body["errors"]
        else:
            message = await graphql_socket_answer(api, query)
            assert message["type"] == "error", message
            errors = message["payload"]
    assert any("in all its definitions, used or not" in e["message"] for e in errors), errors


@pytest.mark.parametrize("over", ["http", "socket"])
async def test_a_graphql_document_within_the_limits_is_validated_off_the_loop(api, over):
    """At the limits, validation still compares 149 selections pairwise (a tenth of a second
    or more of CPU): it runs on a CPU thread, the loop goes on."""
    query = unused_fragment(149)
    async with LoopBudget(api):
        for _ in range(3):
            if over == "http":
                status, _headers, body = await post_json(api, "/graphql", {"query": query})
                assert status == 200, body
                errors = body["errors"]
            else:
                errors = (await graphql_socket_answer(api, query))["payload"]
            assert any("never used" in e["message"] for e in errors), errors


# --------------------------------------------------------------------------- 7. slow heads


@pytest.mark.parametrize("after_a_request", [False, True])
async def test_a_request_head_sent_slowly_is_cut_off_with_408(api, after_a_request):
    """Issue 21 §7: one header every half second kept a connection as long as it liked. Now
    the head must be whole within EH_REQUEST_HEAD_TIMEOUT_S of its first byte, the first
    request's on a connection or a later one's on a kept-alive connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    if after_a_request:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b'{"status": "ok"}'), 30)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    sent = 0
    answer = b""
    for sent in range(1, 241):  # two minutes of headers, if the server allowed it
        try:
            writer.write(f"X-Slow-{sent}: a\r\n".encode())
            await writer.drain()
            # Any bytes at all (read(n) returns what has come, b"" at the end): the answer
            # has begun. A timeout cancels nothing already read.
            answer = await asyncio.wait_for(reader.read(65536), 0.5)
        except TimeoutError:
            continue
        except ConnectionError:  # closed after its answer: that answer is still to be read
            pass
        break
    with contextlib.suppress(ConnectionError):  # the rest, to the server's close
        answer += await asyncio.wait_for(reader.read(), 30)
    writer.close()
    # Each header came half a second (or more, on a busy machine) after the last: the
    # server stopped reading after its 2 s deadline, well before the 240th.
    assert sent < 240, "the server kept reading a request head sent one header at a time"
    [(status, headers, body)] = parse_responses(answer)
    problem = assert_guarded_problem(status, headers, body, 408)
    assert "EH_REQUEST_HEAD_TIMEOUT_S" in problem["detail"]


async def test_five_hundred_half_sent_requests_are_not_held(api):
    """Issue 21 §7: 500 connections, each with half a request line, were all held. Each is
    now answered 408 and closed at its deadline, and others are served meanwhile."""
    connections = [await asyncio.open_connection("127.0.0.1", api.port) for _ in range(500)]
    for _reader, writer in connections:
        writer.write(b"GET /api/v1/jo")
    await api.bystander_is_served()
    answers = await asyncio.gather(
        *(asyncio.wait_for(reader.read(), 120) for reader, _writer in connections)
    )
    for _reader, writer in connections:
        writer.close()
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), {
        answer[:40] for answer in answers
    }


# --------------------------------------------------------------------------- 8. wrong tokens


async def test_a_client_sending_wrong_tokens_is_limited_and_others_are_not(api):
    """Issue 21 §8: 2,000 wrong tokens were all looked up. Now a client address gets
    EH_AUTH_FAILURES_PER_MINUTE of them, then 429 with Retry-After (counted), before any
    look-up; a client at another address is served throughout."""
    before = await api.metrics()
    # The attacker connects from 127.0.0.2, the bystander from 127.0.0.1.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    statuses = []
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(AUTH_FAILURES_PER_MINUTE + 20):
            async with session.get(
                f"{api.url}/api/v1/jobs", headers=bearer(f"eh_1_{'A' * 42}{i % 10}")
            ) as response:
                statuses.append(response.status)
                if response.status == 429:
                    problem = await response.json(content_type="application/problem+json")
                    retry_after = int(response.headers["Retry-After"])
                    for name in http_server.SECURITY_HEADERS:
                        assert name in response.headers
            if i % 10 == 0:
                await api.bystander_is_served()
        # Once limited, even a working token waits: guessing is what is being limited.
        async with session.get(f"{api.url}/api/v1/jobs", headers=bearer(api.attacker)) as answer:
            assert answer.status == 429
    assert statuses[:AUTH_FAILURES_PER_MINUTE] == [401] * AUTH_FAILURES_PER_MINUTE
    assert set(statuses[AUTH_FAILURES_PER_MINUTE:]) == {429}
    assert 1 <= retry_after <= 60 // AUTH_FAILURES_PER_MINUTE + 1
    assert "EH_AUTH_FAILURES_PER_MINUTE" in problem["detail"]
    after = await api.metrics()
    limited = 'eventhorizon_auth_failures_total{outcome="limited"}'
    refused = 'eventhorizon_auth_failures_total{outcome="refused"}'
    assert after[limited] - before[limited] == 21
    assert after[refused] - before[refused] == AUTH_FAILURES_PER_MINUTE
    await api.bystander_is_served()


async def test_wrong_tokens_on_graphql_sockets_are_limited_too(api):
    """A token guessed in connection_init instead: each wrong one closes its socket (4403)
    and counts; once out of tries, the client's upgrade is refused with 429."""
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(AUTH_FAILURES_PER_MINUTE):
            async with session.ws_connect(f"{api.url}/graphql", protocols=(PROTOCOL,)) as ws:
                await ws.send_json(
                    {"type": "connection_init", "payload": {"token": f"eh_1_{'B' * 42}{i % 10}"}}
                )
                message = await ws.receive(timeout=30)
                assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 4403
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{api.url}/graphql", protocols=(PROTOCOL,))
        assert refused.value.status == 429
        assert int(refused.value.headers["Retry-After"]) >= 1
    await api.bystander_is_served()


def test_the_failed_authentication_table_is_bounded():
    """A flood from distinct addresses keeps at most `clients` buckets, and a client's
    bucket refills with time."""
    now = [0.0]
    limiter = auth.FailedAuthLimiter(2, clients=100, clock=lambda: now[0])
    for i in range(10_000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter.buckets) <= 100
    limiter.failed("192.0.2.1")
    limiter.failed("192.0.2.1")
    assert limiter.retry_after("192.0.2.1") == 30
    now[0] += 30
    assert limiter.retry_after("192.0.2.1") == 0
    assert auth.client_key("2001:db8::1") == auth.client_key("2001:db8::2")
    assert auth.client_key("::ffff:192.0.2.1") == "192.0.2.1"


# --------------------------------------------------------------------------- 9. small things


@pytest.mark.parametrize(
    ("char", "named"),
    [
        ("\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("\u2066", "U+2066 LEFT-TO-RIGHT ISOLATE"),
        ("\u200f", "U+200F RIGHT-TO-LEFT MARK"),
        ("\u0085", "U+0085"),
        ("\x1b", "U+001B"),
    ],
)
async def test_a_file_name_with_control_or_bidirectional_characters_is_refused(api, char, named):
    """Issue 21 §9: `evil\u202egpj.jsonl` was stored as given (and shown reversed)."""
    name = f"evil{char}lmnosj.jsonl"
    # As browsers send a name (its UTF-8 bytes), or as RFC 5987's filename* (percent-encoded),
    # which is how a C0 control can get through a header at all.
    disposition = (
        f'filename="{name}"'.encode()
        if ord(char) > 0x7F
        else f"filename*=UTF-8''{urllib.parse.quote(name)}".encode()
    )
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; '
        + disposition
        + b"\r\nContent-Type: application/x-ndjson\r\n\r\n"
        + jsonl(VALID)
        + b"\r\n--b--\r\n"
    )
    async with aiohttp.ClientSession(headers=bearer(api.attacker)) as session:
        async with session.post(
            f"{api.url}/api/v1/files/upload",
            data=body,
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        ) as response:
            assert response.status == 422, await response.text()
            problem = await response.json(content_type="application/problem+json")
    assert named in problem["detail"]
    assert char not in problem["detail"]


def test_leading_blank_lines_are_skipped_however_many():
    """Issue 21 §9: over 1 MiB of blank lines before the first entry was refused as "the
    first line is longer than 1 MiB"; the first line to count is the first non-blank one."""
    inspector = uploads.UploadInspector(64 * 1024 * 1024)
    inspector.feed(uploads.UTF8_BOM)
    for _ in range(12):
        inspector.feed(b"\n" * (256 * 1024))
        inspector.feed(b" \t\r\n" * 1024)
    inspector.feed(jsonl(VALID))
    inspector.finish()
    assert inspector.first_line_checked
    assert len(inspector.head) == 0
    too_long = uploads.UploadInspector(64 * 1024 * 1024)
    too_long.feed(b"\n" * 4096)
    with pytest.raises(uploads.NotJsonLines, match="longer than 1 MiB"):
        for _ in range(5):
            too_long.feed(b"x" * (256 * 1024))


async def test_parser_refusals_are_problem_json_with_the_security_headers(api):
    """Issue 21 §9: aiohttp's own 400s were text/plain, echoed the request and had none of
    the security headers."""
    long_line = b"GET /" + b"A" * (129 * 1024) + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    [(status, headers, body)] = parse_responses(await raw_exchange(api.port, long_line))
    assert_guarded_problem(status, headers, body, 400)
    assert b"AAAA" not in body
    pipelined = (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        b"GET /\x01<script>secret HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    # aiohttp parses what arrived in one read at once: the good request before the bad one
    # is answered only if it came in a read of its own; either way the refusal is ours.
    *answered, refusal = parse_responses(await raw_exchange(api.port, pipelined))
    assert [status for status, _, _ in answered] in ([], [200])
    assert_guarded_problem(*refusal, 400)
    assert b"script" not in refusal[2] and b"secret" not in refusal[2]
    garbage = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n"
    [(status, headers, body)] = parse_responses(await raw_exchange(api.port, garbage))
    assert_guarded_problem(status, headers, body, 400)


# --------------------------------------------------------------------------- the first round


async def test_the_first_rounds_attacks_hold_the_loop_no_longer(api):
    """Representatives of issue 20's attacks, now under the loop's budget: a flood of 50,000
    tiny fields before the file, a gzip bomb, and a 16 MiB upload of valid lines (checked
    chunk by chunk as it streams)."""
    multipart = {"Content-Type": "multipart/form-data; boundary=b"}
    flood = b"".join(
        b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i for i in range(50_000)
    )
    bomb = gzip.compress(b"\n" * (64 * 1024 * 1024))
    line = jsonl(VALID)
    big = line * (16 * 1024 * 1024 // len(line))

    def upload(content: bytes) -> bytes:
        return (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
            b"Content-Type: application/x-ndjson\r\n\r\n" + content + b"\r\n--b--\r\n"
        )

    async with LoopBudget(api), aiohttp.ClientSession(headers=bearer(api.attacker)) as session:
        async with session.post(
            f"{api.url}/api/v1/files/upload",
            data=io.BytesIO(flood + upload(line)),
            headers=multipart,
        ) as response:
            assert response.status == 400
        async with session.post(
            f"{api.url}/api/v1/files/upload",
            data=io.BytesIO(upload(bomb)),
            headers={**multipart, "Content-Encoding": "gzip"},
        ) as response:
            assert response.status == 415
        async with session.post(
            f"{api.url}/api/v1/files/upload", data=io.BytesIO(upload(big)), headers=multipart
        ) as response:
            assert response.status == 202, await response.text()


# --------------------------------------------------------------------------- the measure


async def test_the_api_reports_its_loop_lag_and_what_holds_it(api):
    """The gauge and the histogram are on /metrics; the hold budget this tier checks is one
    of the histogram's buckets."""
    samples = await api.metrics()
    assert samples["eventhorizon_event_loop_lag_seconds"] >= 0
    assert f'eventhorizon_event_loop_hold_seconds_bucket{{le="{HOLD_BUDGET_S}"}}' in samples
    assert re.search(r"eventhorizon_event_loop_hold_seconds_count", "\n".join(samples))


async def test_a_callback_computing_past_the_threshold_is_counted_and_logged():
    """observe.LoopWatch, in this process: a callback computing for 60 ms of CPU is counted
    in the histogram and logged as loop.held; one that waits as long (asleep, not
    computing) holds nothing."""
    import time

    import structlog

    import observe

    def count() -> float:
        return observe.API.get_sample_value("eventhorizon_event_loop_hold_seconds_count") or 0

    def compute(seconds: float) -> None:
        started = time.thread_time()
        while time.thread_time() - started < seconds:
            pass

    watch = observe.LoopWatch(warn_s=0.05)
    watch.start()
    try:
        before = count()
        with structlog.testing.capture_logs() as logged:
            structlog.contextvars.bind_contextvars(request_id="probe")
            asyncio.get_running_loop().call_soon(compute, 0.06)
            await asyncio.sleep(0.01)
            asyncio.get_running_loop().call_soon(time.sleep, 0.06)
            await asyncio.sleep(0.01)
        structlog.contextvars.clear_contextvars()
    finally:
        watch.stop()
    assert count() - before == 1
    held = [entry for entry in logged if entry["event"] == "loop.held"]
    assert len(held) == 1 and held[0]["cpu_ms"] >= 60
