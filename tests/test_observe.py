"""Observability: each process's /metrics after a known upload, and who may read the API's;
one trace from the upload to ClickHouse, exported to an OTLP/HTTP receiver in the test."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import io
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pika
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Status
from prometheus_client.parser import text_string_to_metric_families

import amqp
import config
import core
import event_log
import eventhorizon
import jobs
import observe
import worker
from helpers import (
    ROOT,
    SAMPLE,
    SAMPLE_INVALID,
    SAMPLE_VALID,
    VALID,
    bearer,
    enqueue_job,
    job_row,
    jsonl,
    wait_for,
    wait_until,
)
from processes import free_port, logged_events, serve_api

LIFECYCLE = 3  # job.queued, job.started, job.completed


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(session: aiohttp.ClientSession, port: int) -> dict[tuple[str, tuple], float]:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200, await response.text()
        return samples(await response.text())


async def test_every_process_counts_a_known_upload(settings, start_process, make_token):
    """The sample's 280 valid and 16 invalid lines, counted by the worker at its commits, and its
    280 + 3 events (and the upload's audit event) by the relay once delivered; the API counts the
    upload and its bytes, and reads the outbox (empty at the end) at the scrape. Breaking a count
    (counting before the commit, a rolled-back batch, a label) shows here as a wrong number."""
    worker_port, relay_port = free_port(), free_port()
    base, _ = serve_api(start_process)
    start_process("worker.py", WORKER_METRICS_PORT=str(worker_port))
    start_process(
        "relay.py",
        RELAY_METRICS_PORT=str(relay_port),
        RELAY_BATCH_MAX_WAIT_S="0.2",
        RELAY_POLL_S="0.5",
    )
    token = make_token("root", admin=True)
    async with aiohttp.ClientSession(headers=bearer(token)) as http:
        form = aiohttp.FormData()
        form.add_field("file", io.BytesIO(SAMPLE.read_bytes()), filename="sample.jsonl")
        async with http.post(f"{base}/api/v1/files/upload", data=form) as r:
            assert r.status == 202
            job = await r.json()

        async def completed():
            async with http.get(f"{base}/api/v1/jobs/{job['job_id']}") as r:
                state = await r.json()
            return state if state["status"] == "completed" else None

        final = await wait_until(completed, 60, what="the job to complete")
        assert (final["lines_valid"], final["lines_invalid"]) == (SAMPLE_VALID, SAMPLE_INVALID)

        delivered = SAMPLE_VALID + LIFECYCLE + 1  # and the upload's audit event

        async def relay_done():
            try:
                relay = await scrape(http, relay_port)
            except aiohttp.ClientConnectorError:
                return None  # its /metrics not listening yet (a slow start on a busy machine)
            return relay if relay[("eventhorizon_relay_events_total", ())] == delivered else None

        relay = await wait_until(relay_done, 60, what="the relay to deliver")
        worker = await scrape(http, worker_port)
        api_metrics = await scrape(http, urlsplit(base).port)

    assert worker[("eventhorizon_lines_total", (("result", "valid"),))] == SAMPLE_VALID
    assert worker[("eventhorizon_lines_total", (("result", "invalid"),))] == SAMPLE_INVALID
    assert worker[("eventhorizon_jobs_total", (("status", "completed"),))] == 1
    assert worker[("eventhorizon_jobs_total", (("status", "failed"),))] == 0
    assert worker[("eventhorizon_job_duration_seconds_count", ())] == 1

    sent = relay[("eventhorizon_relay_batches_total", (("result", "sent"),))]
    assert sent >= 1
    assert relay[("eventhorizon_relay_batch_rows_sum", ())] == delivered
    assert relay[("eventhorizon_relay_batch_rows_count", ())] == sent
    assert relay[("eventhorizon_relay_delivery_lag_seconds_count", ())] == sent
    assert relay[("eventhorizon_events_dead_total", ())] == 0

    assert api_metrics[("eventhorizon_uploads_total", (("status", "202"),))] == 1
    assert api_metrics[("eventhorizon_upload_bytes_total", ())] == SAMPLE.stat().st_size
    assert api_metrics[("eventhorizon_outbox_backlog", ())] == 0
    assert api_metrics[("eventhorizon_outbox_oldest_age_seconds", ())] == 0
    assert api_metrics[("eventhorizon_outbox_dead", ())] == 0
    assert api_metrics[("eventhorizon_websockets", ())] == 0


@pytest.mark.parametrize(
    ("allow", "status"),
    [
        ("127.0.0.1/32,::1/128", 200),  # the default: this machine
        ("10.0.0.0/8", 403),  # a network the test's peer is not in
        ("", 403),  # nobody
    ],
)
async def test_the_apis_metrics_answer_only_to_the_allowed_networks(
    settings, aiohttp_client, allow, status
):
    """The peer address decides, not a token and not a header (X-Forwarded-For is no proof)."""
    app = eventhorizon.init_app(dataclasses.replace(settings, metrics_allow=allow))
    client = await aiohttp_client(app)
    response = await client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
    assert response.status == status
    if status == 200:
        assert "eventhorizon_uploads_total" in await response.text()
        assert response.headers["Content-Type"].startswith("text/plain")
    else:
        assert response.content_type == "application/problem+json"
        assert "EH_METRICS_ALLOW" in (await response.json())["detail"]


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.1.2.3", False),
        ("fe80::1%eth0", False),
        (None, False),
        ("not an address", False),
    ],
)
def test_may_scrape_reads_the_peer_address(peer, allowed):
    networks = config.parse_networks("127.0.0.1/32,::1/128", "EH_METRICS_ALLOW")
    assert observe.may_scrape(peer, networks) is allowed


def test_the_dashboard_and_the_scrape_config_name_only_what_exists():
    """A metric renamed in observe.py and not in deploy/grafana would leave an empty panel;
    a port changed in core and not in deploy/prometheus, a target never scraped."""
    declared = {
        sample
        for registry in (observe.API, observe.WORKER, observe.RELAY)
        for family in registry.collect()
        for sample in {
            family.name,
            f"{family.name}_total",
            f"{family.name}_bucket",
            f"{family.name}_sum",
            f"{family.name}_count",
        }
    }
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "eventhorizon.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    named = {name for expr in exprs for name in re.findall(r"eventhorizon_\w+", expr)}
    assert named and named <= declared, named - declared
    scrape = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    defaults = config.Settings()
    assert f"port: {defaults.worker_metrics_port}" in scrape
    assert f"port: {defaults.relay_metrics_port}" in scrape


# --------------------------------------------------------------------------- traces


class OtlpReceiver:
    """A small OTLP/HTTP collector: POST /v1/traces with ExportTraceServiceRequest bodies
    (protobuf), kept as spans: (service name, span)."""

    def __init__(self):
        self.spans: list[tuple[str, Any]] = []

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((attributes["service.name"], span) for span in scope_spans.spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def named(self, service: str, name: str) -> list:
        return [span for who, span in self.spans if who == service and span.name == name]


@pytest.fixture
async def otlp_receiver():
    receiver = OtlpReceiver()
    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/v1/traces", receiver.receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    receiver.url = f"http://127.0.0.1:{port}"
    yield receiver
    await runner.cleanup()


async def test_one_trace_from_the_upload_to_clickhouse(
    settings, start_process, make_token, otlp_receiver
):
    """The upload's span and the job's are one trace, across the API, RabbitMQ and the worker;
    its line and lifecycle events carry that trace's id into ClickHouse; the relay's batch
    links to it; a job that fails has its span marked error; log lines inside a span name it;
    and no span carries the token or a line's contents. Losing the traceparent on the way
    (message headers, the job row) splits the trace and fails here."""
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    # In a thread: the receiver, on this event loop, keeps answering meanwhile.
    base, _ = await asyncio.to_thread(serve_api, start_process, **otel)
    token = make_token("root", admin=True)
    s3 = core.s3_client(settings)
    async with aiohttp.ClientSession(headers=bearer(token)) as http:
        job = await upload_over_http(http, base, SAMPLE.read_bytes(), "sample.jsonl")
        doomed = await upload_over_http(http, base, SAMPLE.read_bytes(), "doomed.jsonl")
        # Its file gone before any worker looks: the job fails, "missing from storage".
        s3.delete_object(Bucket=settings.s3_bucket, Key=f"uploads/{doomed['job_id']}.jsonl")
        worker = start_process("worker.py", WORKER_METRICS_PORT="0", **otel)
        start_process(
            "relay.py",
            RELAY_METRICS_PORT="0",
            RELAY_BATCH_MAX_WAIT_S="0.2",
            RELAY_POLL_S="0.5",
            **otel,
        )
        states = {
            j: await wait_until(lambda j=j: finished(http, base, j), 60, what=f"job {j}")
            for j in (job["job_id"], doomed["job_id"])
        }
        assert states[doomed["job_id"]]["status"] == "failed"

        async def drained():
            async with http.get(f"{base}/api/v1/stats") as r:
                return (await r.json())["outbox"]["backlog"] == 0

        await wait_until(drained, 60, what="the relay to drain the outbox")

    def spans(service, name, trace_id=None):
        return [
            s
            for s in otlp_receiver.named(service, name)
            if trace_id is None or s.trace_id.hex() == trace_id
        ]

    async def all_exported():
        uploads = spans("eventhorizon-api", "POST /api/v1/files/upload")
        return (
            len(uploads) == 2
            and len(spans("eventhorizon-worker", "job")) >= 2
            and spans("eventhorizon-relay", "relay.batch")
        )

    await wait_until(all_exported, 60, what="the spans of all three services")

    by_job = {}
    for upload_span in spans("eventhorizon-api", "POST /api/v1/files/upload"):
        trace_id = upload_span.trace_id.hex()
        children = {
            s.name for _, s in otlp_receiver.spans if s.parent_span_id == upload_span.span_id
        }
        assert {"s3.put", "job.insert", "job.publish"} <= children
        (job_span,) = spans("eventhorizon-worker", "job", trace_id)
        assert job_span.parent_span_id == upload_span.span_id  # the upload's child
        job_id = next(a.value.string_value for a in job_span.attributes if a.key == "job.id")
        by_job[job_id] = (trace_id, job_span)

    trace_id, job_span = by_job[job["job_id"]]
    assert len(trace_id) == 32 and trace_id != "0" * 32
    assert job_span.status.code == Status.STATUS_CODE_UNSET
    batches = spans("eventhorizon-worker", "job.batch", trace_id)
    assert batches and all(b.parent_span_id == job_span.span_id for b in batches)
    _, doomed_span = by_job[doomed["job_id"]]
    assert doomed_span.status.code == Status.STATUS_CODE_ERROR
    assert "missing from storage" in doomed_span.status.message

    linked = {
        link.trace_id.hex() for s in spans("eventhorizon-relay", "relay.batch") for link in s.links
    }
    assert trace_id in linked
    relay_steps = {s.name for _, s in otlp_receiver.spans if s.name.startswith("relay.")}
    assert {"relay.batch", "relay.claim", "relay.insert", "relay.finish"} <= relay_steps

    with event_log.connect_clickhouse(settings.clickhouse_url) as ch:
        rows = ch.query(
            "SELECT event_type, toString(event_context.trace_id) FROM event_log "
            "WHERE toString(event_context.job_id) = {job:String}",
            parameters={"job": job["job_id"]},
        ).result_rows
    assert len(rows) == SAMPLE_VALID + LIFECYCLE
    assert {t for _, t in rows} == {trace_id}
    assert {e for e, _ in rows} >= {"job.queued", "job.started", "job.completed"}

    completed = [
        e for e in logged_events(worker, "job.completed") if e.get("job_id") == job["job_id"]
    ]
    assert completed[0]["trace_id"] == trace_id and len(completed[0]["span_id"]) == 16

    first_message = json.loads(SAMPLE.read_text().splitlines()[0])["message"]
    for _, span in otlp_receiver.spans:
        values = (
            [str(a.value) for a in span.attributes]
            + [span.status.message]
            + [str(a.value) for event in span.events for a in event.attributes]
        )
        assert not any(token in v or first_message in v for v in values), span


async def upload_over_http(
    http: aiohttp.ClientSession, base: str, content: bytes, name: str
) -> dict:
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(content), filename=name)
    async with http.post(f"{base}/api/v1/files/upload", data=form) as r:
        assert r.status == 202, await r.text()
        return await r.json()


async def finished(http: aiohttp.ClientSession, base: str, job_id: str) -> dict | None:
    async with http.get(f"{base}/api/v1/jobs/{job_id}") as r:
        state = await r.json()
    return state if state["status"] in ("completed", "failed") else None


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_republished_or_parked_job_message_keeps_its_trace(settings, db):
    """The reconciler re-publishes a lost job with the traceparent its row kept, and a
    duplicate parked for a retry keeps the original's: the worker that finally runs the job
    continues the upload's trace. Publishing without it would start a new trace there."""
    job_id = uuid.uuid4()
    db.execute(
        core.QUERIES["insert_job"],
        {
            "job_id": job_id,
            "file_name": "t.jsonl",
            "size_bytes": 1,
            "bucket": "b",
            "object_key": "k",
            "lines_total": 1,
            "owner": "tester",
            "format": "auto",
            "format_definition": None,
            "default_service": None,
            "default_environment": None,
            "traceparent": TRACEPARENT,
            "compression": None,
        },
    )
    db.execute(
        "UPDATE jobs SET updated_at = now() - interval '1 hour' WHERE job_id = %s", (job_id,)
    )
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = connection.channel()
        amqp.declare_queues(channel, settings.queue)
        lost = dataclasses.replace(settings, requeue_after_s=60)
        assert worker.requeue_lost_jobs(db, channel, lost, queue_empty=True) == 1
        _, properties, body = channel.basic_get(settings.queue, auto_ack=True)
        assert jobs.parse_message(body) == job_id
        assert properties.headers == {"traceparent": TRACEPARENT}

        worker.park_for_retry(channel, settings, body, properties.headers["traceparent"])
        _, parked, _ = channel.basic_get(amqp.retry_queue(settings.queue), auto_ack=True)
        assert parked.headers == {"traceparent": TRACEPARENT}
    finally:
        connection.close()


def test_a_failure_marks_its_span_by_the_exceptions_type_never_its_message():
    """A database's error can quote the value it refused: a span keeps the type only."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    with pytest.raises(ValueError):
        with observe.span(provider.get_tracer("test"), "step"):
            raise ValueError('invalid input: "secret line contents"')
    (span,) = exported.get_finished_spans()
    assert span.status.status_code.name == "ERROR"
    assert [dict(e.attributes) for e in span.events] == [{"exception.type": "builtins.ValueError"}]
    assert "secret" not in repr(span.to_json())


def test_a_worker_whose_trace_backend_does_not_answer_still_stops(settings, db, start_process):
    """Spans are exported on a thread, so a backend that accepts connections and never
    answers holds back no job; and SIGTERM still ends the worker, exit 0, its last spans'
    flush given up (how soon: the export timeout, checked below, not a stopwatch here)."""
    import socket

    silent = socket.socket()  # listens, never accepts: requests hang
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        job_id = enqueue_job(settings, db, jsonl(VALID, VALID))
        proc = start_process(
            "worker.py",
            OTEL_EXPORTER_OTLP_ENDPOINT=(f"http://127.0.0.1:{silent.getsockname()[1]}"),
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        wait_for(lambda: job_row(db, job_id)["status"] == "completed", what="the job")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0  # a hang guard: the SDK alone would wait 10 s
    finally:
        silent.close()


def test_the_span_exporter_gives_up_after_the_export_timeout():
    """A process's OTLP exporter (observe.setup_tracing, in a process of its own: the tracer
    provider is global) waits EXPORT_TIMEOUT_S, 2 s, not the SDK's 10 s: the bound on how long
    a stopping process waits for a trace backend that does not answer."""
    code = (
        "import config, observe; p = observe.setup_tracing(config.Settings.from_env(), 'x'); "
        "[processor] = p._active_span_processor._span_processors; "
        "print(processor.span_exporter._client._timeout)"
    )  # the SDK's, as pinned
    env = {
        "PATH": os.environ["PATH"],
        "EH_ENVIRONMENT": "development",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, timeout=120, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == observe.EXPORT_TIMEOUT_S == 2.0
