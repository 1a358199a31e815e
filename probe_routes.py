"""What operators and orchestrators ask the API, with no token: liveness (`/healthz`),
readiness (`/readyz`: Postgres, RabbitMQ, S3 and the live-update listener, each within
EH_READY_TIMEOUT_S) and Prometheus's scrape (`/metrics`, to the networks in EH_METRICS_ALLOW)."""

from __future__ import annotations

import asyncio
import math

import structlog
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

import core
import observe
from api_state import POOL, PUBLISHER, S3, SETTINGS, WATCHERS
from http_guard import Problem

log = structlog.get_logger("api")
routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    app = request.app
    timeout_s = app[SETTINGS].ready_timeout_s
    checks = {
        "postgres": check_postgres(app[POOL], timeout_s),
        "rabbitmq": app[PUBLISHER].check(),
        "s3": asyncio.to_thread(app[S3].head_bucket, Bucket=app[SETTINGS].s3_bucket),
        # Live updates: the listener (re)connecting, e.g. after Postgres was away.
        "listener": app[WATCHERS].listening.wait(),
    }
    results = await asyncio.gather(
        *(asyncio.wait_for(c, timeout=timeout_s) for c in checks.values()), return_exceptions=True
    )
    report = {
        name: readiness(name, result, timeout_s)
        for name, result in zip(checks, results, strict=True)
    }
    ready = all(v == "ok" for v in report.values())
    return web.json_response(
        {"status": "ready" if ready else "unavailable", "checks": report},
        status=200 if ready else 503,
    )


def readiness(name: str, result, timeout_s: float) -> str:
    """A check's result in plain words: anyone may ask /readyz, so the reason (endpoints,
    exception text) goes to the log only."""
    if not isinstance(result, BaseException):
        return "ok"
    log.warning("readiness.check_failed", check=name, error=repr(result)[:300])
    if isinstance(result, (TimeoutError, asyncio.TimeoutError)):
        return f"unavailable: no answer within {timeout_s:g} s"
    return "unavailable: unreachable or refusing"


async def check_postgres(pool: AsyncConnectionPool, timeout_s: float) -> None:
    async with pool.connection(timeout=timeout_s) as conn:
        await conn.execute("SELECT 1")


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus's scrape: no token, but only to peers in EH_METRICS_ALLOW (the connection's
    own address: a header could be forged). The outbox figures are read now, by one query."""
    if not observe.may_scrape(request.remote, request.app[SETTINGS].metrics_networks):
        raise Problem(403, "Forbidden", "/metrics answers only to the networks in EH_METRICS_ALLOW")
    await read_outbox_gauges(request.app[POOL], request.app[SETTINGS].ready_timeout_s)
    return web.Response(
        body=observe.exposition(observe.API), headers={"Content-Type": observe.CONTENT_TYPE}
    )


async def read_outbox_gauges(pool: AsyncConnectionPool, timeout_s: float) -> None:
    """Set the outbox gauges from Postgres (the query of /api/v1/stats); NaN while Postgres
    is away, so a stale figure is never shown as current."""
    try:
        async with pool.connection(timeout=timeout_s) as conn:
            cur = await conn.execute(core.QUERIES["outbox_status"])
            row = await cur.fetchone()
    except Exception as exc:
        if not core.is_outage(exc):
            raise
        log.warning("metrics.outbox_unavailable", error=str(exc))
        row = {"backlog": math.nan, "oldest_age_s": math.nan, "dead": math.nan}
    observe.OUTBOX_BACKLOG.set(row["backlog"])
    observe.OUTBOX_OLDEST_AGE.set(row["oldest_age_s"])
    observe.OUTBOX_DEAD.set(row["dead"])
