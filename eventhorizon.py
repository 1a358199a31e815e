"""The Event Horizon HTTP API.

    python eventhorizon.py                                   serve on EH_HTTP_HOST:EH_HTTP_PORT
    python eventhorizon.py migrate                           apply sql/migrations (yoyo), exit
    python eventhorizon.py tokens create --owner NAME [--admin]   print a new API token
    python eventhorizon.py tokens list                       id, owner, admin, created, last used
    python eventhorizon.py tokens revoke ID                  the token stops working at once
    python eventhorizon.py retention set|clear|show|sweep    owners' retention; sweep now

Uploads stream to S3 in parts (never whole in memory; the checks and the S3 writes are
uploads.py's), become a `queued` job in Postgres and a RabbitMQ message; `GET /api/v1/jobs/{id}`
and the WebSocket `/ws/jobs/{id}` show the job live, fed by one Postgres LISTEN connection per
process. Every error is application/problem+json.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import sys
import uuid
from typing import Any, TypeVar
from urllib.parse import urlencode

import structlog
from aiohttp import web
from opentelemetry import trace
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

import admin_cli
import amqp
import audit
import auth
import config
import core
import explore
import format_routes
import graphql_api
import graphql_resolvers
import graphql_socket
import http_server
import jobs
import live
import logs
import observe
import probe_routes
import read_slots
import retention_routes
import revocation
import search_routes
import upload_route
import uploads
from api_state import (
    AUTH_LIMITER,
    DENIED_TRAIL,
    EXPLORER,
    GRAPHQL,
    POOL,
    PUBLISHER,
    S3,
    SETTINGS,
    UPLOAD_SLOTS,
    WATCHERS,
    actor,
    principal,
)
from http_guard import (
    MALFORMED_REQUESTS,
    WS_AUTH_PROTOCOL,
    Problem,
    access_log_middleware,
    auth_middleware,
    bind_job_id,
    explore_read,
    guard_middleware,
    int_param,
    json_body,
    problem_middleware,
    security_headers_middleware,
    too_many_failures,
    tracing_middleware,
)
from live import STATUS_RANK, WS_NOT_FOUND  # noqa: F401  (the tests name them here)

log = structlog.get_logger("api")
T = TypeVar("T")
tracer = trace.get_tracer("eventhorizon.api")

MAX_REQUEST_LINE_BYTES = 128 * 1024
STALE_UPLOAD_AGE_S = 3600  # S3 multipart uploads older than this are a dead process's: aborted
SWEEP_INTERVAL_S = 600  # how often each API process sweeps them (and once at start-up)


def main(argv: list[str]) -> int:
    args = admin_cli.command_line().parse_args(argv[1:])
    settings = config.load_settings(service=args.command is None)
    logs.configure_logging(settings)
    if args.command == "migrate":
        applied = core.migrate(settings.database_url)
        log.info("migrations.applied", count=applied)
        return 0
    if args.command == "tokens":
        return admin_cli.tokens_command(settings, args)
    if args.command == "retention":
        return admin_cli.retention_command(settings, args)
    try:
        check_serving_settings(settings)
    except config.ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    observe.setup_tracing(settings, "eventhorizon-api")
    http_server.run(
        init_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        head_timeout_s=settings.request_head_timeout_s,
        keepalive_timeout_s=settings.keepalive_timeout_s,
        shutdown_timeout_s=5,
    )
    return 0


def check_serving_settings(settings: config.Settings) -> None:
    """EH_AUTH=none lets anyone who can connect see and delete every job: only on loopback."""
    if settings.auth == "none" and not is_loopback(settings.http_host):
        raise config.ConfigError(
            f"EH_AUTH=none is for a laptop: EH_HTTP_HOST must be a loopback "
            f"address, got {settings.http_host!r}"
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


routes = web.RouteTableDef()
STATIC_DIR = core.ROOT / "static"
STATIC_FILES = frozenset(p.name for p in STATIC_DIR.iterdir() if p.is_file())


def init_app(settings: config.Settings) -> web.Application:
    check_serving_settings(settings)
    server_log = logging.getLogger("aiohttp.server")
    if MALFORMED_REQUESTS not in server_log.filters:
        server_log.addFilter(MALFORMED_REQUESTS)
        server_log.setLevel(logging.DEBUG)  # it logs some malformed requests at DEBUG
    # The access log is outermost: it logs the status problem_middleware chose for an error.
    # auto_decompress off: aiohttp never inflates a request body (see check_body_not_compressed).
    # max_line_size: the longest request line the explore routes' filters can make (20 values
    # of 128 characters for each of several filters, percent-encoded), so that aiohttp does
    # not refuse one in plain text before the app can answer it.
    # The trace's span is outermost of all, so the access log's line carries its ids.
    app = web.Application(
        middlewares=[
            tracing_middleware,
            access_log_middleware,
            security_headers_middleware,
            problem_middleware,
            guard_middleware,
            auth_middleware,
        ],
        handler_args={"auto_decompress": False, "max_line_size": MAX_REQUEST_LINE_BYTES},
    )
    app[SETTINGS] = settings
    app[AUTH_LIMITER] = auth.FailedAuthLimiter(settings.auth_failures_per_minute)
    app.cleanup_ctx.extend(
        [
            loop_watch_ctx,
            postgres_ctx,
            audit_ctx,
            s3_ctx,
            publisher_ctx,
            explorer_ctx,
            watchers_ctx,
            uploads_ctx,
        ]
    )
    app.on_shutdown.append(close_watchers)
    app.add_routes(routes)
    app.add_routes(probe_routes.routes)  # /healthz, /readyz, /metrics
    app.add_routes(upload_route.routes)
    app.add_routes(format_routes.routes)
    retention_routes.setup(app)  # owners' retention (admins), and the periodic sweep
    app.add_routes(search_routes.routes)  # owner-wide search: GET /api/v1/events…
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static_file)
    return app


# --------------------------------------------------------------------------- errors


# --------------------------------------------------------------------------- access


# --------------------------------------------------------------------------- resources


async def loop_watch_ctx(app: web.Application):
    """The event loop's lag and the CPU time each callback holds it (observe.LoopWatch)."""
    watch = observe.LoopWatch(app[SETTINGS].loop_warn_s)
    watch.start()
    yield
    watch.stop()


async def postgres_ctx(app: web.Application):
    settings = app[SETTINGS]
    # check: a connection Postgres dropped (restart, failover) is replaced before use, so the
    # first upload after a restart is not answered 503 after its whole body went to S3.
    pool = AsyncConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=10,
        open=False,
        timeout=settings.db_wait_s,
        kwargs={"row_factory": dict_row, "autocommit": True},
        check=AsyncConnectionPool.check_connection,
    )
    await pool.open(wait=False)
    app[POOL] = pool
    yield
    await pool.close()


async def audit_ctx(app: web.Application):
    """The refusals' audit events (audit.DeniedTrail) and their writer; at shutdown, the
    refusals counted but not yet summed up are written too."""
    trail = audit.DeniedTrail(app[POOL], app[SETTINGS])
    app[DENIED_TRAIL] = trail
    writer = asyncio.create_task(trail.run(), name="audit-denied-writer")
    yield
    writer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writer


async def s3_ctx(app: web.Application):
    app[S3] = core.s3_client(app[SETTINGS])
    yield


async def publisher_ctx(app: web.Application):
    publisher = amqp.Publisher(app[SETTINGS])
    app[PUBLISHER] = publisher
    yield
    await publisher.close()


async def watchers_ctx(app: web.Application):
    settings = app[SETTINGS]
    tokens = revocation.TokenSockets(app[POOL], settings.token_recheck_s)
    watchers = live.JobWatchers(
        settings.database_url,
        app[POOL],
        live.SocketLimits(settings.max_websockets, settings.max_websockets_per_owner),
        tokens,
    )
    app[WATCHERS] = watchers
    app[GRAPHQL] = graphql_resolvers.Services(
        app[POOL],
        watchers,
        graphql_authenticator(app),
        app[EXPLORER],
        init_timeout_s=settings.graphql_init_timeout_s,
    )
    observe.WEBSOCKETS.set_function(lambda: watchers.limits.open)
    tasks = [
        asyncio.create_task(watchers.listen(), name="job-listener"),
        asyncio.create_task(tokens.recheck_periodically(), name="token-recheck"),
    ]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def close_watchers(app: web.Application) -> None:
    """On shutdown, before aiohttp waits for the handlers: WebSockets would keep it waiting."""
    if WATCHERS in app:
        app[WATCHERS].close_all()
        app[GRAPHQL].close_all()


async def uploads_ctx(app: web.Application):
    """The upload path's own: the slots that cap how many uploads run at once, and a task
    sweeping away the S3 multipart uploads of API processes that died mid-upload."""
    settings = app[SETTINGS]
    app[UPLOAD_SLOTS] = uploads.UploadSlots(settings.max_uploads, settings.max_uploads_per_owner)
    sweeper = asyncio.create_task(sweep_stale_uploads_periodically(app[S3], settings.s3_bucket))
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper


async def explorer_ctx(app: web.Application):
    """The ClickHouse reads of the events and histogram routes (explore.Explorer); the client
    connects at the first such request, so the API starts and serves without ClickHouse."""
    settings = app[SETTINGS]
    slots = read_slots.ReadSlots(
        settings.explore_queries,
        settings.explore_queries_per_owner,
        queue_per_owner=settings.explore_queue_per_owner,
        max_wait_s=settings.explore_wait_s,
    )
    app[EXPLORER] = explore.Explorer(
        settings.clickhouse_read_url or settings.clickhouse_url,
        timeout_s=settings.explore_timeout_s,
        slots=slots,
    )
    yield
    app[EXPLORER].close()


async def sweep_stale_uploads_periodically(s3, bucket: str) -> None:
    """At start-up and then every SWEEP_INTERVAL_S, abort multipart uploads older than
    STALE_UPLOAD_AGE_S (uploads.sweep_stale_uploads, in a thread: boto3 blocks). A failed
    sweep (S3 away) is logged and tried again at the next interval."""
    while True:
        try:
            count = await asyncio.to_thread(
                uploads.sweep_stale_uploads, s3, bucket, STALE_UPLOAD_AGE_S
            )
            log.info("upload.swept", count=count, older_than_s=STALE_UPLOAD_AGE_S)
        except Exception as exc:
            log.warning("upload.sweep_failed", error=str(exc))
        await asyncio.sleep(SWEEP_INTERVAL_S)


# --------------------------------------------------------------------------- routes


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def static_file(request: web.Request) -> web.FileResponse:
    """The page's assets. A file that is not there is a problem+json 404 like any other
    (aiohttp's own static route would answer an empty one)."""
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise Problem(404, "Not Found", f"no such file: /static/{name}")
    return web.FileResponse(STATIC_DIR / name)


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.FileResponse:
    """The API's contract, kept in static/ and checked against these routes by the tests."""
    return web.FileResponse(
        STATIC_DIR / "openapi.json", headers={"Content-Type": "application/json"}
    )


@routes.get("/docs")
async def docs(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "docs.html")


@routes.get("/api/v1/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", default=20, low=1, high=100)
    found = await jobs.read_jobs(
        request.app[POOL], owner=principal(request).owner_filter, limit=limit
    )
    return web.json_response({"jobs": [jobs.job_json(job) for job in found]})


@routes.get("/api/v1/stats")
async def stats(request: web.Request) -> web.Response:
    """Jobs by status, and how far the relay is behind: events still in the outbox, the age
    of the oldest, and events ClickHouse refused (in outbox_dead). Admins only: the figures
    cover every owner."""
    if not principal(request).admin:
        raise Problem(403, "Forbidden", "the service's stats are for admin tokens")
    return web.json_response(await jobs.read_stats(request.app[POOL]))


@routes.get("/api/v1/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    job_id = job_id_param(request)
    job = await fetch_job(request.app[POOL], job_id, owner=principal(request).owner_filter)
    delivery = await jobs.read_delivery(request.app[POOL], job.job_id, job.lines_valid)
    return web.json_response({**jobs.job_json(job), "delivery": delivery})


@routes.get("/api/v1/jobs/{job_id}/errors")
async def get_job_errors(request: web.Request) -> web.Response:
    """Invalid lines in line order, a page at a time: follow `next` until it is null."""
    job_id = job_id_param(request)
    limit = int_param(request, "limit", default=100, low=1, high=1000)
    after = int_param(request, "after_line", default=0, low=0, high=2**62)
    await fetch_job(request.app[POOL], job_id, owner=principal(request).owner_filter)
    rows = (
        await jobs.read_line_errors(request.app[POOL], [job_id], after_line=after, limit=limit)
    )[job_id]
    next_url = None
    if len(rows) == limit:
        next_url = f"/api/v1/jobs/{job_id}/errors?limit={limit}&after_line={rows[-1]['line_no']}"
    return web.json_response({"job_id": str(job_id), "errors": rows, "next": next_url})


@routes.get("/api/v1/jobs/{job_id}/events")
async def get_job_events(request: web.Request) -> web.Response:
    """The job's events as ClickHouse holds them, in line order, filtered, a page at a time:
    follow `next` (it keeps the filters) until it is null."""
    job_id = job_id_param(request)
    filters = explore_filters(request)
    limit = int_param(request, "limit", default=100, low=1, high=1000)
    after = int_param(request, "after_line", default=0, low=0, high=2**62)
    await fetch_job(request.app[POOL], job_id, owner=principal(request).owner_filter)
    events = await explore_read(
        request.app[EXPLORER].events(
            principal(request).owner, job_id, filters, after_line=after, limit=limit + 1
        )
    )
    next_url = None
    if len(events) > limit:
        events = events[:limit]
        query = [
            ("limit", str(limit)),
            ("after_line", str(events[-1]["line_no"])),
            *filters.query_items(),
        ]
        next_url = f"/api/v1/jobs/{job_id}/events?{urlencode(query)}"
    return web.json_response({"job_id": str(job_id), "events": events, "next": next_url})


@routes.get("/api/v1/jobs/{job_id}/histogram")
async def get_job_histogram(request: web.Request) -> web.Response:
    """The job's events over time, counted by level per bucket, with the same filters."""
    job_id = job_id_param(request)
    filters = explore_filters(request)
    interval = None
    if "interval" in request.query:
        interval = int_param(request, "interval", default=0, low=1, high=explore.MAX_INTERVAL_S)
    await fetch_job(request.app[POOL], job_id, owner=principal(request).owner_filter)
    histogram = await explore_read(
        request.app[EXPLORER].histogram(principal(request).owner, job_id, filters, interval)
    )
    return web.json_response({"job_id": str(job_id), **histogram})


def explore_filters(request: web.Request) -> explore.EventFilters:
    try:
        return explore.filters_from_query(request.query)
    except explore.InvalidFilter as exc:
        raise Problem(422, "Unprocessable Content", str(exc)) from None


@routes.delete("/api/v1/jobs/{job_id}")
async def delete_job(request: web.Request) -> web.Response:
    """Delete a job and all it produced (204): its stored file, log entries, line errors and
    the job itself at once; its events in ClickHouse soon after (the relay, see
    delete_events_of_deleted_jobs), a `job.deleted` event staying, and an `audit.job.deleted`
    (kept as long as the audit trail is, audit.py) in the deletion's transaction. A job
    a worker is processing right now is refused (409): delete it once it has finished."""
    job_id = job_id_param(request)
    who = principal(request)
    app = request.app
    async with app[POOL].connection() as conn, conn.transaction():
        job = await jobs.lock_for_deletion(conn, job_id, owner=who.owner_filter)
        if job is None:
            raise job_not_found(job_id)
        if not await jobs.try_lock_in_transaction(conn, job_id):
            raise Problem(
                409,
                "Conflict",
                "a worker is processing this job right now; delete "
                "it once it has completed or failed",
            )
        await asyncio.to_thread(app[S3].delete_object, Bucket=job.bucket, Key=job.object_key)
        await jobs.delete(conn, app[SETTINGS], job, deleted_by=who.owner)
        await audit.arecord(
            conn,
            app[SETTINGS],
            "audit.job.deleted",
            actor(request),
            object_=job_id,
            owner=job.owner,
            file_name=job.file_name,
        )
    log.info("job.deleted", deleted_by=who.owner, lines=job.lines_processed)
    return web.Response(status=204)


# --------------------------------------------------------------------------- log formats


@routes.get("/ws/jobs/{job_id}")
async def watch_job(request: web.Request) -> web.WebSocketResponse:
    """Send the job now, then each state a commit made, in order; close after its final one."""
    watchers = request.app[WATCHERS]
    try:
        with watchers.limits.slot(principal(request).owner):
            return await watch_job_socket(request, watchers)
    except live.TooManySockets as exc:
        raise no_socket_slot(exc) from None


async def watch_job_socket(
    request: web.Request, watchers: live.JobWatchers
) -> web.WebSocketResponse:
    """The WebSocket itself, once it has a place among the process's and its owner's."""
    ws = web.WebSocketResponse(heartbeat=30, protocols=(WS_AUTH_PROTOCOL,))
    await ws.prepare(request)
    job_id = parse_job_id(request.match_info["job_id"])
    if job_id is not None:
        bind_job_id(job_id)
    who = principal(request)
    job = (
        await fetch_job_or_none(request.app[POOL], job_id, owner=who.owner_filter)
        if job_id
        else None
    )
    watcher = job and await watchers.start_watching(
        job_id, live.Watcher(ws, request.transport), owner=who.owner_filter
    )
    if not watcher:
        await ws.close(code=WS_NOT_FOUND, message=b"job not found")
        return ws
    try:
        with watchers.tokens.hold(who.token_id, watcher):  # closed 4403 once it is revoked
            await watcher.run()
    finally:
        watchers.discard(job_id, watcher)
    return ws


def no_socket_slot(exc: live.TooManySockets) -> Problem:
    """429 when the owner holds as many WebSockets as one owner may, 503 when the process
    holds as many as it takes; either way a Retry-After."""
    headers = {"Retry-After": str(live.SocketLimits.RETRY_AFTER_S)}
    if exc.per_owner:
        return Problem(429, "Too Many Requests", str(exc), headers=headers)
    return Problem(503, "Service Unavailable", str(exc), headers=headers)


# --------------------------------------------------------------------------- GraphQL


@routes.post("/graphql")
async def graphql_query(request: web.Request) -> web.Response:
    """A GraphQL query (graphql_api.run_http): 200 with {"data", "errors"} for whatever the
    document says, 400 for a body that is no GraphQL request."""
    body = await json_body(request, graphql_api.MAX_BODY_BYTES)
    try:
        answer = await graphql_api.run_http(body, request.app[GRAPHQL], principal(request))
    except graphql_api.BadRequest as exc:
        raise Problem(400, "Bad Request", str(exc)) from None
    return web.json_response(answer)


@routes.get("/graphql")
async def graphql_websocket(request: web.Request) -> web.StreamResponse:
    """GraphQL subscriptions over graphql-transport-ws (graphql_socket.serve_socket)."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise Problem(
            400,
            "Bad Request",
            "GET /graphql is a WebSocket (graphql-transport-ws); send queries with POST /graphql",
        )
    client = auth.client_key(request.remote)
    if wait_s := request.app[AUTH_LIMITER].retry_after(client):
        observe.AUTH_FAILURES.labels("limited").inc()
        raise too_many_failures(wait_s, request.app[SETTINGS].auth_failures_per_minute)
    SOCKET_CLIENT.set(client)  # for its connection_init's token (graphql_authenticator)
    SOCKET_ACTOR.set(actor(request))  # and for the audit event of a refusal
    try:  # every socket counts, before its connection_init too
        with request.app[WATCHERS].limits.process_slot():
            return await graphql_socket.serve_socket(request, request.app[GRAPHQL])
    except live.TooManySockets as exc:
        raise no_socket_slot(exc) from None


@routes.get("/graphql/schema.graphql")
async def graphql_schema(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        graphql_resolvers.SCHEMA_PATH, headers={"Content-Type": "text/plain; charset=utf-8"}
    )


# The client address a GraphQL socket's upgrade came from: set in its handler's task, where
# its connection_init is authenticated too.
SOCKET_CLIENT: contextvars.ContextVar[str] = contextvars.ContextVar("socket_client", default="?")
SOCKET_ACTOR: contextvars.ContextVar[audit.Actor | None] = contextvars.ContextVar(
    "socket_actor", default=None
)


def graphql_authenticator(app: web.Application):
    """A GraphQL socket's token (from connection_init) to its principal, as auth_middleware
    resolves a request's; a failure counts against the socket's client address as a
    request's does (its next upgrade is refused once the client is out of tries), and is an
    `audit.access.denied` as a request's 401 is."""

    async def authenticate(token: str | None) -> auth.Principal | None:
        if app[SETTINGS].auth == "none":
            return auth.LOCAL
        async with app[POOL].connection() as conn:
            who = await auth.authenticate(conn, token)
        if who is None:
            app[AUTH_LIMITER].failed(SOCKET_CLIENT.get())
            app[DENIED_TRAIL].denied(
                SOCKET_ACTOR.get() or audit.Actor(""), 401, method="GET", path="/graphql"
            )
            observe.AUTH_FAILURES.labels("refused").inc()
        return who

    return authenticate


# --------------------------------------------------------------------------- request helpers


def parse_job_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


def job_id_param(request: web.Request) -> uuid.UUID:
    """The job id of the path, bound to the request's log lines; 404 if it is no UUID."""
    job_id = parse_job_id(request.match_info["job_id"])
    if job_id is None:
        raise job_not_found(request.match_info["job_id"])
    bind_job_id(job_id)
    return job_id


def job_not_found(job_id: Any) -> Problem:
    return Problem(404, "Not Found", f"no job with id {job_id!s}")


async def fetch_job_or_none(
    pool: AsyncConnectionPool, job_id: uuid.UUID, *, owner: str | None
) -> jobs.Job | None:
    """The job, if `owner` may see it (None: whoever owns it, for admins).
    Another owner's job is as unknown as a job that never was: the same 404."""
    return await jobs.read_job(pool, job_id, owner=owner)


async def fetch_job(pool: AsyncConnectionPool, job_id: uuid.UUID, *, owner: str | None) -> jobs.Job:
    job = await fetch_job_or_none(pool, job_id, owner=owner)
    if job is None:
        raise job_not_found(job_id)
    return job


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
