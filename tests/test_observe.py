"""Observability: each process's /metrics after a known upload, and who may read the API's."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import re

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import core
import eventhorizon
import observe
from conftest import ROOT, _free_port, bearer

SAMPLE = ROOT / "examples" / "sample.jsonl"
SAMPLE_VALID, SAMPLE_INVALID = 280, 16
LIFECYCLE = 3  # job.queued, job.started, job.completed


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def scrape(session: aiohttp.ClientSession, port: int) -> dict[tuple[str, tuple], float]:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200, await response.text()
        return samples(await response.text())


async def eventually(check, what: str, timeout: float = 60.0):
    """Await `check()` until it returns something truthy (async twin of conftest.wait_for)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await check()):
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)
    return value


async def test_every_process_counts_a_known_upload(settings, start_process, make_token):
    """The sample's 280 valid and 16 invalid lines, counted by the worker at its commits, and
    its 280 + 3 events by the relay once delivered; the API counts the upload and its bytes,
    and reads the outbox (empty at the end) at the scrape. Breaking a count (counting before
    the commit, a rolled-back batch, a label) shows here as a wrong number."""
    worker_port, relay_port = _free_port(), _free_port()
    api = start_process("eventhorizon.py")
    start_process("worker.py", WORKER_METRICS_PORT=str(worker_port))
    start_process("relay.py", RELAY_METRICS_PORT=str(relay_port), RELAY_BATCH_MAX_WAIT_S="0.2",
                  RELAY_POLL_S="0.5")
    token = make_token("root", admin=True)
    base = f"http://127.0.0.1:{settings.http_port}"
    async with aiohttp.ClientSession(headers=bearer(token)) as http:
        async def api_up():
            try:
                async with http.get(f"{base}/healthz") as r:
                    return r.status == 200
            except aiohttp.ClientConnectionError:
                return api.poll() is not None
        await eventually(api_up, "the API to listen")
        form = aiohttp.FormData()
        form.add_field("file", io.BytesIO(SAMPLE.read_bytes()), filename="sample.jsonl")
        async with http.post(f"{base}/api/v1/files/upload", data=form) as r:
            assert r.status == 202
            job = await r.json()

        async def completed():
            async with http.get(f"{base}/api/v1/jobs/{job['job_id']}") as r:
                state = await r.json()
            return state if state["status"] == "completed" else None
        final = await eventually(completed, "the job to complete")
        assert (final["lines_valid"], final["lines_invalid"]) == (SAMPLE_VALID, SAMPLE_INVALID)

        delivered = SAMPLE_VALID + LIFECYCLE

        async def relay_done():
            relay = await scrape(http, relay_port)
            return relay if relay[("eventhorizon_relay_events_total", ())] == delivered else None
        relay = await relay_done() or await eventually(relay_done, "the relay to deliver")
        worker = await scrape(http, worker_port)
        api_metrics = await scrape(http, settings.http_port)

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


@pytest.mark.parametrize(("allow", "status"), [
    ("127.0.0.1/32,::1/128", 200),      # the default: this machine
    ("10.0.0.0/8", 403),                # a network the test's peer is not in
    ("", 403),                          # nobody
])
async def test_the_apis_metrics_answer_only_to_the_allowed_networks(
        settings, aiohttp_client, allow, status):
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


@pytest.mark.parametrize(("peer", "allowed"), [
    ("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.1.2.3", False), ("fe80::1%eth0", False), (None, False), ("not an address", False)])
def test_may_scrape_reads_the_peer_address(peer, allowed):
    networks = core.parse_networks("127.0.0.1/32,::1/128", "EH_METRICS_ALLOW")
    assert observe.may_scrape(peer, networks) is allowed


def test_the_dashboard_and_the_scrape_config_name_only_what_exists():
    """A metric renamed in observe.py and not in deploy/grafana would leave an empty panel;
    a port changed in core and not in deploy/prometheus, a target never scraped."""
    declared = {sample for registry in (observe.API, observe.WORKER, observe.RELAY)
                for family in registry.collect() for sample in
                {family.name, f"{family.name}_total", f"{family.name}_bucket",
                 f"{family.name}_sum", f"{family.name}_count"}}
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "eventhorizon.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    named = {name for expr in exprs for name in re.findall(r"eventhorizon_\w+", expr)}
    assert named and named <= declared, named - declared
    scrape = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    defaults = core.Settings()
    assert f"port: {defaults.worker_metrics_port}" in scrape
    assert f"port: {defaults.relay_metrics_port}" in scrape
