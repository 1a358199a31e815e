"""The Event Horizon HTTP API.

    python eventhorizon.py                                   serve on EH_HTTP_HOST:EH_HTTP_PORT
    python eventhorizon.py migrate                           apply sql/migrations (yoyo), exit
    python eventhorizon.py tokens create --owner NAME [--admin]   print a new API token
    python eventhorizon.py tokens list                       id, owner, admin, created, last used
    python eventhorizon.py tokens revoke ID                  the token stops working at once

Uploads stream to S3 in parts (never whole in memory; the checks and the S3 writes are
uploads.py's), become a `queued` job in Postgres and a RabbitMQ message; `GET /api/v1/jobs/{id}`
and the WebSocket `/ws/jobs/{id}` show the job live, fed by one Postgres LISTEN connection per
process. Every error is application/problem+json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import json
import math
import re
import sys
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import urlencode

import psycopg
import structlog
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from opentelemetry import propagate, trace
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

import amqp
import auth
import core
import explore
import formats
import graphql_api
import jobs
import lines
import live
import observe
import uploads
from live import STATUS_RANK, WS_NOT_FOUND  # noqa: F401  (the tests name them here)

log = structlog.get_logger("api")
tracer = trace.get_tracer("eventhorizon.api")

READ_CHUNK_BYTES = 256 * 1024
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # headers and boundaries around the file in the body
# The other fields of an upload's body, before the file and again after it: at most this many
# parts, and MULTIPART_OVERHEAD_BYTES of their headers and contents (see FieldBudget).
MAX_FIELDS = 16
MAX_REQUEST_LINE_BYTES = 128 * 1024
UPLOAD_FIELDS = ("format", "service", "environment")  # fields read before the file, if given
MAX_FORMAT_BYTES = 64 * 1024  # a custom log format's definition (POST /api/v1/formats)
MAX_FORMATS_PER_OWNER = 100
UPLOAD_RETRY_AFTER_S = 5  # Retry-After of an upload refused for want of a slot (429, 503)
STALE_UPLOAD_AGE_S = 3600  # S3 multipart uploads older than this are a dead process's: aborted
SWEEP_INTERVAL_S = 600  # how often each API process sweeps them (and once at start-up)
UPLOAD_PATH = "/api/v1/files/upload"
PLAIN_DIGITS = re.compile(r"[0-9]+")
# The problem+json titles of uploads.UploadRefused's statuses.
REFUSAL_TITLES = {413: "Content Too Large", 415: "Unsupported Media Type",
                  422: "Unprocessable Content"}
# What aiohttp raises on a malformed body (RuntimeError: an overlong `_charset_` field).
MULTIPART_ERRORS = (ValueError, HttpProcessingError, RuntimeError)


def main(argv: list[str]) -> int:
    args = command_line().parse_args(argv[1:])
    settings = core.load_settings(service=args.command is None)
    core.configure_logging(settings)
    if args.command == "migrate":
        applied = core.migrate(settings.database_url)
        log.info("migrations.applied", count=applied)
        return 0
    if args.command == "tokens":
        return tokens_command(settings, args)
    try:
        check_serving_settings(settings)
    except core.ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    observe.setup_tracing(settings, "eventhorizon-api")
    web.run_app(init_app(settings), host=settings.http_host, port=settings.http_port,
                print=None, access_log=None, shutdown_timeout=5)
    return 0


def command_line() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python eventhorizon.py",
                                     description="The Event Horizon HTTP API (serves by default).")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("migrate", help="apply sql/migrations and exit")
    tokens = commands.add_parser("tokens", help="create, list or revoke API tokens")
    actions = tokens.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="print a new token (its last line of output)")
    create.add_argument("--owner", required=True, help="whose jobs the token's uploads are")
    create.add_argument("--admin", action="store_true", help="the token sees every job")
    actions.add_parser("list", help="id, owner, admin, created, last used, revoked")
    revoke = actions.add_parser("revoke", help="the token stops working at once")
    revoke.add_argument("token_id", type=int, metavar="ID")
    verify = actions.add_parser("verify", help="exit 0 if the token on standard input works")
    verify.set_defaults(stdin=True)
    return parser


def tokens_command(settings: core.Settings, args: argparse.Namespace) -> int:
    """`tokens create|list|revoke|verify`: the token itself is printed once, by create, as
    the last line of standard output, and appears nowhere else."""
    if args.action == "verify":
        return asyncio.run(verify_token(settings, sys.stdin.read().strip()))
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        if args.action == "create":
            try:
                token = auth.create_token(conn, args.owner, admin=args.admin)
            except auth.InvalidOwner as exc:
                sys.exit(f"error: {exc}")
            kind = "admin token" if args.admin else "token"
            print(f"created {kind} for {args.owner}; keep it secret, it is not shown again:")
            print(token)
        elif args.action == "list":
            print("id\towner\tadmin\tcreated\tlast used\trevoked")
            for t in auth.list_tokens(conn):
                print("\t".join(str(v) for v in (
                    t.token_id, t.owner, "yes" if t.admin else "no", stamp(t.created_at),
                    stamp(t.last_used_at), stamp(t.revoked_at))))
        elif not auth.revoke_token(conn, args.token_id):
            sys.exit(f"error: no live token with id {args.token_id}")
        else:
            print(f"revoked token {args.token_id}")
    return 0


async def verify_token(settings: core.Settings, token: str) -> int:
    async with await psycopg.AsyncConnection.connect(settings.database_url,
                                                     autocommit=True) as aconn:
        return 0 if await auth.authenticate(aconn, token) else 1


def stamp(value) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def check_serving_settings(settings: core.Settings) -> None:
    """EH_AUTH=none lets anyone who can connect see and delete every job: only on loopback."""
    if settings.auth == "none" and not is_loopback(settings.http_host):
        raise core.ConfigError(f"EH_AUTH=none is for a laptop: EH_HTTP_HOST must be a loopback "
                               f"address, got {settings.http_host!r}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


SETTINGS = web.AppKey("settings", core.Settings)
POOL = web.AppKey("pool", AsyncConnectionPool)
S3 = web.AppKey("s3", object)
PUBLISHER = web.AppKey("publisher", amqp.Publisher)
WATCHERS = web.AppKey("watchers", live.JobWatchers)
GRAPHQL = web.AppKey("graphql", graphql_api.Services)
PRINCIPAL = web.RequestKey("principal", auth.Principal)
UPLOAD_SLOTS = web.AppKey("upload_slots", uploads.UploadSlots)
EXPLORER = web.AppKey("explorer", explore.Explorer)

routes = web.RouteTableDef()
STATIC_DIR = core.ROOT / "static"
STATIC_FILES = frozenset(p.name for p in STATIC_DIR.iterdir() if p.is_file())


def init_app(settings: core.Settings) -> web.Application:
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
    app = web.Application(middlewares=[tracing_middleware, access_log_middleware,
                                       security_headers_middleware,
                                       problem_middleware, guard_middleware, auth_middleware],
                          handler_args={"auto_decompress": False,
                                        "max_line_size": MAX_REQUEST_LINE_BYTES})
    app[SETTINGS] = settings
    app.cleanup_ctx.extend([postgres_ctx, s3_ctx, publisher_ctx, explorer_ctx, watchers_ctx,
                            uploads_ctx])
    app.on_shutdown.append(close_watchers)
    app.add_routes(routes)
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static_file)
    return app


# --------------------------------------------------------------------------- errors


class Problem(Exception):
    """An error answered as application/problem+json (RFC 9457)."""

    def __init__(self, status: int, title: str, detail: str = "", type_: str = "about:blank",
                 headers: dict[str, str] | None = None, errors: list[str] | None = None):
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.type = status, title, detail, type_
        self.headers, self.errors = headers, errors


def problem_response(status: int, title: str, detail: str = "", type_: str = "about:blank",
                     headers: dict[str, str] | None = None, errors: list[str] | None = None):
    body = {"type": type_, "title": title, "status": status, "detail": detail or title}
    if errors:
        body["errors"] = errors  # an extension member (RFC 9457): each problem of the request
    return web.json_response(body, status=status, content_type="application/problem+json",
                             headers=headers)


@web.middleware
async def problem_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except Problem as exc:
        return problem_response(exc.status, exc.title, exc.detail, exc.type, exc.headers,
                                exc.errors)
    except uploads.UploadRefused as exc:
        return problem_response(exc.status, REFUSAL_TITLES[exc.status], exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(exc.status, exc.reason, exc.text or exc.reason)
    except ConnectionResetError:
        # The client went away mid-request (aiohttp fails the body's reads): nobody is left
        # to answer and nothing went wrong here. The access log records it as 499.
        return problem_response(400, "Bad Request", "the connection closed mid-request")
    except Exception as exc:
        if not core.is_outage(exc):
            log.exception("http.unhandled_error", path=request.path)
            return problem_response(500, "Internal Server Error", "an unexpected error occurred")
        if isinstance(exc, psycopg.Error):
            log.warning("http.database_unavailable", error=str(exc))
            return problem_response(503, "Service Unavailable", "the database is unreachable")
        log.warning("http.storage_unavailable", error=str(exc))
        return problem_response(503, "Service Unavailable", "the file storage is unreachable")


TRACED_PREFIXES = ("/api/", "/ws/", "/graphql")  # not the page, health checks or /metrics


@web.middleware
async def tracing_middleware(request: web.Request, handler):
    """A server span for each API request, continuing the caller's trace if its request
    carries a `traceparent`. Named by route (`POST /api/v1/files/upload`), never with the
    query string or a header: no filter text, no token."""
    if not request.path.startswith(TRACED_PREFIXES):
        return await handler(request)
    route = request.match_info.route.resource
    name = f"{request.method} {route.canonical if route is not None else '(no route)'}"
    with observe.span(
            tracer, name, context=propagate.extract(request.headers), kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": request.method, "url.path": request.path}) as span:
        response = await handler(request)
        span.set_attribute("http.response.status_code", response.status)
        if response.status >= 500:
            span.set_status(trace.StatusCode.ERROR)
        return response


@web.middleware
async def access_log_middleware(request: web.Request, handler):
    """One `http.request` line per request, whatever became of it.

    Logged in `finally`, so a request whose handler raised, or whose client went away, has
    its line too (status 499 then, and `aborted` says why). A `request_id` is bound for every
    line logged meanwhile, and whatever the request bound (handlers bind `job_id`) is cleared
    at its end, so the next request on a keep-alive connection starts clean.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=uuid.uuid4().hex[:12])
    outcome: dict[str, Any] = {"status": 500}
    try:
        response = await handler(request)
        outcome["status"] = response.status
        if not response.prepared and client_gone(request):
            outcome.update(status=499, aborted="the client closed the connection")
        return response
    except web.HTTPException as exc:  # a redirect or other non-error problem_middleware let by
        outcome["status"] = exc.status
        raise
    except asyncio.CancelledError:
        outcome.update(status=499, aborted="cancelled: the client went away or the server stopped")
        raise
    finally:
        if request.path == UPLOAD_PATH and request.method == "POST":
            observe.UPLOADS.labels(str(outcome["status"])).inc()
        log.info("http.request", method=request.method, path=request.path,
                 ms=round((loop.time() - started) * 1000, 1), **outcome)
        structlog.contextvars.clear_contextvars()


def client_gone(request: web.Request) -> bool:
    """The connection is closed: a response could not reach the client any more."""
    transport = request.transport
    return transport is None or transport.is_closing()


def bind_job_id(job_id: Any) -> None:
    """Name the job on every log line of this request, its `http.request` line included."""
    structlog.contextvars.bind_contextvars(job_id=str(job_id))


class MalformedRequestLog(logging.Filter):
    """aiohttp logs a request it cannot parse as an error with a traceback whose messages
    quote the request's bytes (or, for a bad first line, at DEBUG, so not at all): anyone can
    send those, as often as they like. One short line says enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            log.warning("http.malformed_request", error=type(exc).__name__,
                        status=getattr(exc, "code", 400))
            return False
        return record.levelno >= logging.getLogger().getEffectiveLevel()


MALFORMED_REQUESTS = MalformedRequestLog()


# The page, its assets and the docs load only their own files: no inline script, style or
# event handler runs, and no other site may frame them. Sent on every response (an API
# answer shown in a tab is a page too).
SECURITY_HEADERS = {
    "Content-Security-Policy": "; ".join([
        "default-src 'self'", "script-src 'self'", "style-src 'self'",
        "img-src 'self' data:", "connect-src 'self'", "frame-ancestors 'none'",
        "base-uri 'none'", "form-action 'self'"]),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@web.middleware
async def security_headers_middleware(request: web.Request, handler):
    """Outside problem_middleware, so problem answers carry the headers too."""
    response = await handler(request)
    if not response.prepared:  # a WebSocket has sent its headers already
        response.headers.update(SECURITY_HEADERS)
    return response


# --------------------------------------------------------------------------- access


@web.middleware
async def guard_middleware(request: web.Request, handler):
    """Refuse a Host this API does not answer to (a DNS-rebinding page names its own) and, on
    what a browser may send cross-site (every method but GET and HEAD, and WebSocket
    upgrades), an Origin that is not exactly this site: http(s), this host and port."""
    settings = request.app[SETTINGS]
    if not host_allowed(request, settings.allowed_host_names):
        raise Problem(400, "Bad Request", "this server does not answer to that Host name "
                                          "(EH_ALLOWED_HOSTS)")
    if request.method not in ("GET", "HEAD") or request.headers.get("Upgrade"):
        check_origin(request)
    return await handler(request)


def host_allowed(request: web.Request, allowed: frozenset[str]) -> bool:
    if "*" in allowed:
        return True
    try:
        host = request.url.host
    except ValueError:
        return False
    return host is not None and host.lower() in allowed


def check_origin(request: web.Request) -> None:
    """Browsers send Origin on cross-site requests and WebSocket upgrades; programs such as
    curl do not, and are let through (they carry a token instead)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    scheme, sep, netloc = origin.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or netloc.lower() != request.host.lower():
        raise Problem(403, "Forbidden", "requests from another site's pages are not allowed")



# The WebSocket subprotocol a browser names, with its token as the second value, because a
# browser cannot set an Authorization header on a WebSocket (and a token in the URL would end
# up in logs and history): new WebSocket(url, ["eventhorizon.bearer", token]).
WS_AUTH_PROTOCOL = "eventhorizon.bearer"


def needs_token(request: web.Request) -> bool:
    """The API and the WebSockets; not the page, its assets, the docs or the health checks
    (the contracts, /api/v1/openapi.json and /graphql/schema.graphql, are public too). A
    GraphQL WebSocket sends its token in connection_init, after the upgrade."""
    path = request.path
    return ((path.startswith("/api/") and path != "/api/v1/openapi.json")
            or path.startswith("/ws/") or (path == "/graphql" and request.method == "POST"))


@web.middleware
async def auth_middleware(request: web.Request, handler):
    """Resolve the request's principal (401 without a working token), or LOCAL with EH_AUTH=none."""
    if request.app[SETTINGS].auth == "none":
        request[PRINCIPAL] = auth.LOCAL
    elif needs_token(request):
        token = auth.bearer_token(request.headers.get("Authorization")) or protocol_token(request)
        async with request.app[POOL].connection() as conn:
            who = await auth.authenticate(conn, token)
        if who is None:
            raise unauthorized(presented=token is not None)
        request[PRINCIPAL] = who
        structlog.contextvars.bind_contextvars(owner=who.owner)
    return await handler(request)


def protocol_token(request: web.Request) -> str | None:
    """The token a browser sent as the second `Sec-WebSocket-Protocol` value."""
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    if len(offered) == 2 and offered[0] == WS_AUTH_PROTOCOL:
        return offered[1]
    return None


def unauthorized(*, presented: bool) -> Problem:
    challenge = 'Bearer realm="eventhorizon"'
    if presented:
        challenge += ', error="invalid_token"'
    detail = ("the token is malformed, unknown or revoked" if presented else
              "send a token: Authorization: Bearer <token> (python eventhorizon.py tokens create)")
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": challenge})


def principal(request: web.Request) -> auth.Principal:
    return request[PRINCIPAL]


# --------------------------------------------------------------------------- resources


async def postgres_ctx(app: web.Application):
    settings = app[SETTINGS]
    # check: a connection Postgres dropped (restart, failover) is replaced before use, so the
    # first upload after a restart is not answered 503 after its whole body went to S3.
    pool = AsyncConnectionPool(
        settings.database_url, min_size=1, max_size=10, open=False, timeout=settings.db_wait_s,
        kwargs={"row_factory": dict_row, "autocommit": True},
        check=AsyncConnectionPool.check_connection,
    )
    await pool.open(wait=False)
    app[POOL] = pool
    yield
    await pool.close()


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
    watchers = live.JobWatchers(settings.database_url, app[POOL], live.SocketLimits(
        settings.max_websockets, settings.max_websockets_per_owner))
    app[WATCHERS] = watchers
    app[GRAPHQL] = graphql_api.Services(app[POOL], watchers, graphql_authenticator(app),
                                        app[EXPLORER])
    observe.WEBSOCKETS.set_function(lambda: watchers.limits.open)
    task = asyncio.create_task(watchers.listen(), name="job-listener")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


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
    app[EXPLORER] = explore.Explorer(settings.clickhouse_read_url or settings.clickhouse_url,
                                     timeout_s=settings.explore_timeout_s,
                                     queries=settings.explore_queries)
    yield
    app[EXPLORER].close()


async def sweep_stale_uploads_periodically(s3, bucket: str) -> None:
    """At start-up and then every SWEEP_INTERVAL_S, abort multipart uploads older than
    STALE_UPLOAD_AGE_S (uploads.sweep_stale_uploads, in a thread: boto3 blocks). A failed
    sweep (S3 away) is logged and tried again at the next interval."""
    while True:
        try:
            count = await asyncio.to_thread(uploads.sweep_stale_uploads, s3, bucket,
                                            STALE_UPLOAD_AGE_S)
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
    return web.FileResponse(STATIC_DIR / "openapi.json",
                            headers={"Content-Type": "application/json"})


@routes.get("/docs")
async def docs(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "docs.html")


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
        *(asyncio.wait_for(c, timeout=timeout_s) for c in checks.values()),
        return_exceptions=True)
    report = {name: readiness(name, result, timeout_s) for name, result in zip(checks, results)}
    ready = all(v == "ok" for v in report.values())
    return web.json_response({"status": "ready" if ready else "unavailable", "checks": report},
                             status=200 if ready else 503)


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
        raise Problem(403, "Forbidden", "/metrics answers only to the networks in "
                                        "EH_METRICS_ALLOW")
    await read_outbox_gauges(request.app[POOL], request.app[SETTINGS].ready_timeout_s)
    return web.Response(body=observe.exposition(observe.API),
                        headers={"Content-Type": observe.CONTENT_TYPE})


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


@routes.post(UPLOAD_PATH)
async def upload(request: web.Request) -> web.Response:
    """Stream a JSON-lines file (compressed or not) to S3, record a queued job, publish it,
    answer 202.

    What the headers tell is checked before a byte of the body is read: its type, that it is
    not compressed, its length, and that an upload slot is free (held until the answer,
    however the upload ends)."""
    settings = request.app[SETTINGS]
    if request.content_type != "multipart/form-data":
        raise Problem(415, "Unsupported Media Type",
                      "send the file as multipart/form-data in a field named 'file'")
    check_body_not_compressed(request.headers)
    if (request.content_length or 0) > settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES:
        raise uploads.UploadTooLarge(settings.max_upload_bytes)
    try:
        with request.app[UPLOAD_SLOTS].claim(principal(request).owner):
            return await receive_upload(request)
    except uploads.TooManyUploads as exc:
        raise no_upload_slot(exc) from None


async def receive_upload(request: web.Request) -> web.Response:
    """The body: the file part streamed to S3 as it is checked, every read bounded by the
    idle timeout; then the job, committed and published."""
    settings = request.app[SETTINGS]
    idle_s = settings.upload_idle_timeout_s
    reader, part, fields = await find_file_part(request, idle_s)
    file_name = part.filename or ""
    if not is_plain_text(file_name):
        raise Problem(422, "Unprocessable Content",
                      "the file name must be UTF-8 text without control characters")
    compression = uploads.compression_of(file_name)
    check_part_not_encoded(part.headers)
    options = await upload_options(request, fields)
    if not await request.app[PUBLISHER].is_available():
        raise Problem(503, "Service Unavailable", "the message broker is unreachable; retry later")

    job_id = uuid.uuid4()
    bind_job_id(job_id)  # refused or not, the upload's lines name the id it was given
    key = uploads.object_key(job_id, compression)
    writer = uploads.ObjectWriter(request.app[S3], settings.s3_bucket, key)
    inspector = uploads.UploadInspector(settings.max_upload_bytes, compression)
    try:
        with observe.span(tracer, "s3.put", attributes={"s3.key": key}) as span:
            while chunk := await read_chunk(part, idle_s):
                inspector.feed(chunk)
                await writer.write(chunk)
            await read_to_the_closing_boundary(reader, idle_s)
            inspector.finish()
            await writer.close()
            span.set_attribute("size_bytes", inspector.size)
        job = await create_job(request.app, job_id, file_name, inspector, key,
                               owner=principal(request).owner, options=options)
    except BaseException:
        await asyncio.shield(writer.abort())
        raise
    await publish_job(request.app, job)
    observe.UPLOAD_BYTES.inc(inspector.size)
    body = jobs.job_json(job)
    log.info("job.queued", job_id=body["job_id"], size_bytes=inspector.size,
             lines_total=inspector.lines_total)
    return web.json_response(body, status=202,
                             headers={"Location": f"/api/v1/jobs/{body['job_id']}"})


@routes.get("/api/v1/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", default=20, low=1, high=100)
    found = await jobs.read_jobs(request.app[POOL], owner=principal(request).owner_filter,
                                 limit=limit)
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
    rows = (await jobs.read_line_errors(request.app[POOL], [job_id], after_line=after,
                                        limit=limit))[job_id]
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
    events = await explore_read(request.app[EXPLORER].events(
        job_id, filters, after_line=after, limit=limit + 1))
    next_url = None
    if len(events) > limit:
        events = events[:limit]
        query = [("limit", str(limit)), ("after_line", str(events[-1]["line_no"])),
                 *filters.query_items()]
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
    histogram = await explore_read(request.app[EXPLORER].histogram(job_id, filters, interval))
    return web.json_response({"job_id": str(job_id), **histogram})


def explore_filters(request: web.Request) -> explore.EventFilters:
    try:
        return explore.filters_from_query(request.query)
    except explore.InvalidFilter as exc:
        raise Problem(422, "Unprocessable Content", str(exc)) from None


async def explore_read(read: Awaitable[T]) -> T:
    """A ClickHouse read's result; its failure as a problem of this request alone."""
    try:
        return await read
    except explore.InvalidFilter as exc:
        raise Problem(422, "Unprocessable Content", str(exc)) from None
    except explore.Busy as exc:
        raise Problem(503, "Service Unavailable", f"{exc}; retry shortly",
                      headers={"Retry-After": "1"}) from None
    except explore.Unavailable as exc:
        log.warning("explore.clickhouse_unavailable", error=str(exc))
        raise Problem(503, "Service Unavailable", f"{explore.Unavailable.PUBLIC_REASON} "
                      "(uploads and job status are not affected)") from None


@routes.delete("/api/v1/jobs/{job_id}")
async def delete_job(request: web.Request) -> web.Response:
    """Delete a job and all it produced (204): its stored file, log entries, line errors and
    the job itself at once; its events in ClickHouse soon after (the relay, see
    delete_events_of_deleted_jobs), a `job.deleted` event staying as the audit trail. A job
    a worker is processing right now is refused (409): delete it once it has finished."""
    job_id = job_id_param(request)
    who = principal(request)
    app = request.app
    async with app[POOL].connection() as conn, conn.transaction():
        job = await jobs.lock_for_deletion(conn, job_id, owner=who.owner_filter)
        if job is None:
            raise job_not_found(job_id)
        if not await jobs.try_lock_in_transaction(conn, job_id):
            raise Problem(409, "Conflict", "a worker is processing this job right now; delete "
                                           "it once it has completed or failed")
        await asyncio.to_thread(app[S3].delete_object, Bucket=job.bucket, Key=job.object_key)
        await jobs.delete(conn, app[SETTINGS], job, deleted_by=who.owner)
    log.info("job.deleted", deleted_by=who.owner, lines=job.lines_processed)
    return web.Response(status=204)


# --------------------------------------------------------------------------- log formats


@routes.post("/api/v1/formats")
async def register_format(request: web.Request) -> web.Response:
    """Register a custom log format (201): checked against log_format.schema.json, then the
    token owner's, named in uploads as `format`. A name is registered once per owner."""
    definition = await json_body(request, MAX_FORMAT_BYTES)
    try:
        formats.custom_format(definition)
    except formats.InvalidFormat as exc:
        raise Problem(422, "Unprocessable Content",
                      f"not a usable log format ({len(exc.reasons)} problems): {exc}"[:2000],
                      errors=exc.reasons[:50]) from None
    owner, name = principal(request).owner, definition["name"]
    async with request.app[POOL].connection() as conn, conn.transaction():
        await conn.execute(core.QUERIES["lock_owner_formats"], {"owner": owner})
        count = (await (await conn.execute(core.QUERIES["count_log_formats"],
                                           {"owner": owner})).fetchone())["n"]
        if count >= MAX_FORMATS_PER_OWNER:
            raise Problem(409, "Conflict", f"you have {count} log formats, as many as one owner "
                                           "may; delete one to register another")
        row = await (await conn.execute(core.QUERIES["insert_log_format"], {
            "owner": owner, "name": name, "definition": Jsonb(definition)})).fetchone()
    if row is None:
        raise Problem(409, "Conflict", f"you have a log format named {name!r} already; delete "
                                       "it to register it again (uploaded jobs keep theirs)")
    log.info("format.registered", format=name)
    return web.json_response(format_json(row), status=201,
                             headers={"Location": f"/api/v1/formats/{name}"})


@routes.get("/api/v1/formats")
async def list_formats(request: web.Request) -> web.Response:
    """The built-in formats' names and the token owner's own formats."""
    async with request.app[POOL].connection() as conn:
        rows = await (await conn.execute(core.QUERIES["list_log_formats"], {
            "owner": principal(request).owner})).fetchall()
    return web.json_response({"builtin": list(formats.NAMES),
                              "formats": [format_json(row) for row in rows]})


@routes.get("/api/v1/formats/{name}")
async def get_format(request: web.Request) -> web.Response:
    async with request.app[POOL].connection() as conn:
        row = await find_format(conn, principal(request).owner, request.match_info["name"])
    if row is None:
        raise format_not_found(request.match_info["name"])
    return web.json_response(format_json(row))


@routes.delete("/api/v1/formats/{name}")
async def delete_format(request: web.Request) -> web.Response:
    """Delete one of the owner's formats (204). Jobs uploaded with it keep their copy."""
    name = request.match_info["name"]
    async with request.app[POOL].connection() as conn:
        row = await (await conn.execute(core.QUERIES["delete_log_format"], {
            "owner": principal(request).owner, "name": name})).fetchone()
    if row is None:
        raise format_not_found(name)
    log.info("format.deleted", format=name)
    return web.Response(status=204)


async def find_format(conn, owner: str, name: str) -> dict | None:
    """One of `owner`'s formats; another owner's is as unknown as one that never was."""
    return await (await conn.execute(core.QUERIES["get_log_format"],
                                     {"owner": owner, "name": name})).fetchone()


def format_not_found(name: str) -> Problem:
    kind = "a built-in format (see GET /api/v1/formats)" if name in formats.NAMES else "unknown"
    return Problem(404, "Not Found", f"you have no log format named {name[:64]!r}: {kind}")


def format_json(row: dict) -> dict[str, Any]:
    return {"name": row["name"], "created_at": row["created_at"].isoformat(),
            "definition": row["definition"]}


async def json_body(request: web.Request, max_bytes: int) -> Any:
    """The request's JSON body, read within the idle timeout and at most `max_bytes` long."""
    if request.content_type != "application/json":
        raise Problem(415, "Unsupported Media Type", "send the body as application/json")
    check_body_not_compressed(request.headers)
    too_large = Problem(413, "Content Too Large", f"the body may be at most {max_bytes} bytes")
    if (request.content_length or 0) > max_bytes:
        raise too_large
    body = bytearray()
    idle_s = request.app[SETTINGS].upload_idle_timeout_s
    while chunk := await within_idle_timeout(request.content.readany(), idle_s):
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise Problem(400, "Bad Request", f"the body is not JSON: {str(exc)[:200]}") from None
    try:
        lines.check_storable_strings(value)
    except lines.InvalidLine as exc:
        raise Problem(422, "Unprocessable Content", f"the body cannot be stored: {exc}") from None
    return value


@routes.get("/ws/jobs/{job_id}")
async def watch_job(request: web.Request) -> web.WebSocketResponse:
    """Send the job now, then each state a commit made, in order; close after its final one."""
    watchers = request.app[WATCHERS]
    try:
        with watchers.limits.slot(principal(request).owner):
            return await watch_job_socket(request, watchers)
    except live.TooManySockets as exc:
        raise no_socket_slot(exc) from None


async def watch_job_socket(request: web.Request, watchers: live.JobWatchers) -> web.WebSocketResponse:
    """The WebSocket itself, once it has a place among the process's and its owner's."""
    ws = web.WebSocketResponse(heartbeat=30, protocols=(WS_AUTH_PROTOCOL,))
    await ws.prepare(request)
    job_id = parse_job_id(request.match_info["job_id"])
    if job_id is not None:
        bind_job_id(job_id)
    owner = principal(request).owner_filter
    job = await fetch_job_or_none(request.app[POOL], job_id, owner=owner) if job_id else None
    watcher = job and await watchers.start_watching(
        job_id, live.Watcher(ws, request.transport), owner=owner)
    if not watcher:
        await ws.close(code=WS_NOT_FOUND, message=b"job not found")
        return ws
    try:
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
        answer = await graphql_api.run_http(body, request.app[GRAPHQL],
                                            principal(request))
    except graphql_api.BadRequest as exc:
        raise Problem(400, "Bad Request", str(exc)) from None
    return web.json_response(answer)


@routes.get("/graphql")
async def graphql_socket(request: web.Request) -> web.StreamResponse:
    """GraphQL subscriptions over graphql-transport-ws (graphql_api.serve_socket)."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise Problem(400, "Bad Request", "GET /graphql is a WebSocket (graphql-transport-ws); "
                                          "send queries with POST /graphql")
    try:
        request.app[WATCHERS].limits.check_process()
    except live.TooManySockets as exc:
        raise no_socket_slot(exc) from None
    return await graphql_api.serve_socket(request, request.app[GRAPHQL])


@routes.get("/graphql/schema.graphql")
async def graphql_schema(request: web.Request) -> web.FileResponse:
    return web.FileResponse(graphql_api.SCHEMA_PATH,
                            headers={"Content-Type": "text/plain; charset=utf-8"})


def graphql_authenticator(app: web.Application):
    """A GraphQL socket's token (from connection_init) to its principal, as auth_middleware
    resolves a request's."""
    async def authenticate(token: str | None) -> auth.Principal | None:
        if app[SETTINGS].auth == "none":
            return auth.LOCAL
        async with app[POOL].connection() as conn:
            return await auth.authenticate(conn, token)

    return authenticate


# --------------------------------------------------------------------------- request helpers


async def upload_options(request: web.Request, fields: dict[str, str]) -> dict[str, Any]:
    """The upload's `format` (`auto` by default, a built-in format's name or one of the
    owner's own, copied into the job), and the `service` and `environment` that lines whose
    format has none fall back to. Each as a field before the file or a query parameter."""
    name = upload_param(request, fields, "format") or formats.AUTO
    definition = None
    if name not in formats.NAMES:
        async with request.app[POOL].connection() as conn:
            row = await find_format(conn, principal(request).owner, name)
        if row is None:
            raise Problem(422, "Unprocessable Content",
                          f"format must be one of {', '.join(formats.NAMES)} or one of your "
                          f"formats (GET /api/v1/formats), got {name[:64]!r}")
        definition = Jsonb(row["definition"])
    return {"format": name, "format_definition": definition,
            "default_service": upload_param(request, fields, "service"),
            "default_environment": upload_param(request, fields, "environment")}


def upload_param(request: web.Request, fields: dict[str, str], name: str) -> str | None:
    """A field before the file, or else a query parameter (not both), of 1-128 characters of
    plain text."""
    value, query = fields.get(name), request.query.get(name)
    if value is not None and query is not None and value != query:
        raise Problem(422, "Unprocessable Content",
                      f"{name} is given twice, as a field and in the query, differently")
    value = query if value is None else value
    if value is not None and not (0 < len(value) <= 128 and is_plain_text(value)):
        raise Problem(422, "Unprocessable Content",
                      f"{name} must be 1 to 128 characters without control characters")
    return value


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


def int_param(request: web.Request, name: str, *, default: int, low: int, high: int) -> int:
    """A number of the query: plain ASCII digits only. int() alone would also take "+5",
    " 1 ", "1_0" and other scripts' digits ("٣"), none of which a client means here."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if PLAIN_DIGITS.fullmatch(raw) else None
    except ValueError:  # more digits than int() converts
        value = None
    if value is None or not low <= value <= high:
        raise Problem(422, "Unprocessable Content", f"{name} must be an integer from {low} to {high}")
    return value


def job_not_found(job_id: Any) -> Problem:
    return Problem(404, "Not Found", f"no job with id {job_id!s}")


def is_plain_text(name: str) -> bool:
    """No control characters, and no surrogates (aiohttp's stand-ins for bytes that were
    not UTF-8): a name Postgres can store and a page can show."""
    return not any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in name)


async def find_file_part(request: web.Request, idle_s: float):
    """The multipart reader, its part named `file` and the upload's fields that came before
    it (`format`, `service`, `environment`); other fields are skipped. All within their
    FieldBudget."""
    budget = FieldBudget("before")
    fields: dict[str, str] = {}
    try:
        reader = await request.multipart()
        while (part := await within_idle_timeout(reader.next(), idle_s)) is not None:
            if isinstance(part, BodyPartReader) and part.name == "file":
                return reader, part, fields
            budget.add_part(part.headers)
            if isinstance(part, BodyPartReader) and part.name in UPLOAD_FIELDS:
                fields[part.name] = await read_field(part, budget, idle_s)
            else:
                await skip_part(part, budget, idle_s)
    except MULTIPART_ERRORS as exc:
        raise malformed_multipart(exc) from None
    raise Problem(422, "Unprocessable Content", "the multipart body has no field named 'file'")


async def read_field(part: BodyPartReader, budget: FieldBudget, idle_s: float) -> str:
    """A small text field's value, counted against the budget."""
    value = bytearray()
    while chunk := await within_idle_timeout(part.read_chunk(READ_CHUNK_BYTES), idle_s):
        budget.add_bytes(len(chunk))
        value += chunk
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(422, "Unprocessable Content",
                      f"the field {part.name!r} is not UTF-8 text") from None


async def read_to_the_closing_boundary(reader, idle_s: float) -> None:
    """Skip the fields after the file, up to the body's closing boundary. A body cut short
    before it is refused: the file's last bytes could be missing, or be bytes of the body's
    framing that aiohttp handed over as the file's."""
    budget = FieldBudget("after")
    try:
        while (part := await within_idle_timeout(reader.next(), idle_s)) is not None:
            if not isinstance(part, BodyPartReader):
                raise ValueError("a nested multipart part after the file")
            budget.add_part(part.headers)
            await skip_part(part, budget, idle_s)
    except MULTIPART_ERRORS as exc:
        raise malformed_multipart(exc) from None


async def skip_part(part, budget: FieldBudget, idle_s: float) -> None:
    """Read a field to the void, counting its bytes; a nested multipart part's own parts
    count as fields too."""
    if isinstance(part, BodyPartReader):
        while chunk := await within_idle_timeout(part.read_chunk(READ_CHUNK_BYTES), idle_s):
            budget.add_bytes(len(chunk))
        return
    while (inner := await within_idle_timeout(part.next(), idle_s)) is not None:
        budget.add_part(inner.headers)
        await skip_part(inner, budget, idle_s)


class FieldBudget:
    """What the fields before the file (or after it) may cost: MAX_FIELDS parts and
    MULTIPART_OVERHEAD_BYTES of their headers and contents.

    aiohttp parses each part on the event loop, so tens of thousands of tiny fields took
    seconds of it, and every other request (health checks too) waited that long. Past the
    budget the body is refused at once (400), its other parts never parsed.
    """

    def __init__(self, where: str):
        self.where = where  # "before" or "after" (the file)
        self.parts = 0
        self.bytes = 0

    def add_part(self, headers) -> None:
        self.parts += 1
        if self.parts > MAX_FIELDS:
            raise Problem(400, "Bad Request",
                          f"more than {MAX_FIELDS} fields {self.where} the file")
        self.add_bytes(sum(len(name) + len(value) + 4 for name, value in headers.items()))

    def add_bytes(self, count: int) -> None:
        self.bytes += count
        if self.bytes > MULTIPART_OVERHEAD_BYTES:
            raise Problem(400, "Bad Request",
                          f"more than {uploads.in_binary_units(MULTIPART_OVERHEAD_BYTES)} "
                          f"({MULTIPART_OVERHEAD_BYTES} bytes) of fields {self.where} the file")


async def read_chunk(part, idle_s: float) -> bytes:
    try:
        return await within_idle_timeout(part.read_chunk(READ_CHUNK_BYTES), idle_s)
    except MULTIPART_ERRORS as exc:
        raise malformed_multipart(exc) from None


T = TypeVar("T")


async def within_idle_timeout(read: Awaitable[T], idle_s: float) -> T:
    """A read of the upload's body, which must bring something within `idle_s` seconds
    (EH_UPLOAD_IDLE_TIMEOUT_S), else 408. A client that stalls would otherwise hold its
    upload slot, up to a part's worth of memory and an open S3 multipart upload forever."""
    try:
        async with asyncio.timeout(idle_s):
            return await read
    except TimeoutError:
        log.info("upload.stalled", idle_timeout_s=idle_s)
        seconds = f"{idle_s:g} second{'' if idle_s == 1 else 's'}"
        raise Problem(408, "Request Timeout", f"the upload sent nothing for {seconds}; it was "
                      "dropped, nothing of it is kept") from None


def check_body_not_compressed(headers) -> None:
    """415 for a body with any Content-Encoding but identity, before a byte of it is read.

    aiohttp inflates a gzip or deflate body while it is read: EH_MAX_UPLOAD_BYTES would be
    checked against the compressed Content-Length, and a few hundred KB of gzip inflate to
    128 MiB, all of it the event loop's work."""
    if codings := content_codings(headers):
        raise Problem(415, "Unsupported Media Type",
                      f"the body has Content-Encoding {codings!r}: send the file uncompressed, "
                      "without Content-Encoding")


# Transfer encodings under which a part's bytes are the file's bytes (RFC 2045).
PLAIN_TRANSFER_ENCODINGS = frozenset({"", "7bit", "8bit", "binary"})


def check_part_not_encoded(headers) -> None:
    """415 for a file part with its own Content-Encoding or Content-Transfer-Encoding.

    read_chunk hands over a part's bytes as sent, never decoded (aiohttp's read(decode=True)
    would inflate them, past the limit), so a gzipped or base64 file would be stored as its
    encoding, not as the file: the stored file must be the bytes sent."""
    if codings := content_codings(headers):
        raise Problem(415, "Unsupported Media Type",
                      f"the file part has Content-Encoding {codings!r}: send the file "
                      "uncompressed, without Content-Encoding")
    transfer = headers.get("Content-Transfer-Encoding", "").strip()
    if transfer.lower() not in PLAIN_TRANSFER_ENCODINGS:
        raise Problem(415, "Unsupported Media Type",
                      f"the file part has Content-Transfer-Encoding {transfer!r}: send the "
                      "file's bytes as they are (binary)")


def content_codings(headers) -> str:
    """The Content-Encoding codings other than identity, as sent ("" if there are none)."""
    codings = [c.strip() for value in headers.getall("Content-Encoding", ())
               for c in value.split(",") if c.strip()]
    return ", ".join(codings) if any(c.lower() != "identity" for c in codings) else ""


def no_upload_slot(exc: uploads.TooManyUploads) -> Problem:
    """429 when the owner has as many uploads running as one owner may, 503 when the process
    has as many as it takes; either way a Retry-After."""
    headers = {"Retry-After": str(UPLOAD_RETRY_AFTER_S)}
    if exc.per_owner:
        return Problem(429, "Too Many Requests",
                       f"you have {exc.limit} uploads running, as many as one owner may at "
                       "once; retry when one has finished", headers=headers)
    return Problem(503, "Service Unavailable",
                   f"the server is receiving {exc.limit} uploads, as many as it takes at once; "
                   f"retry in {UPLOAD_RETRY_AFTER_S} seconds", headers=headers)


def malformed_multipart(exc: Exception) -> Problem:
    return Problem(400, "Bad Request", f"the body is not well-formed multipart/form-data: {exc}"[:300])


async def fetch_job_or_none(pool: AsyncConnectionPool, job_id: uuid.UUID, *,
                            owner: str | None) -> jobs.Job | None:
    """The job, if `owner` may see it (None: whoever owns it, for admins).
    Another owner's job is as unknown as a job that never was: the same 404."""
    return await jobs.read_job(pool, job_id, owner=owner)


async def fetch_job(pool: AsyncConnectionPool, job_id: uuid.UUID, *,
                    owner: str | None) -> jobs.Job:
    job = await fetch_job_or_none(pool, job_id, owner=owner)
    if job is None:
        raise job_not_found(job_id)
    return job


async def create_job(app: web.Application, job_id: uuid.UUID, file_name: str,
                     inspector: uploads.UploadInspector, key: str, *, owner: str,
                     options: dict[str, str | None]) -> jobs.Job:
    """The queued job row and its job.queued event, in one transaction. The row keeps the
    upload's traceparent: the worker's span of the job continues the upload's trace."""
    settings = app[SETTINGS]
    traceparent = core.current_traceparent()  # the request's span, not job.insert's
    with observe.span(tracer, "job.insert"):
        async with app[POOL].connection() as conn, conn.transaction():
            return await jobs.create(
                conn, settings, job_id=job_id, file_name=file_name[:255],
                size_bytes=inspector.size, object_key=key, lines_total=inspector.lines_total,
                owner=owner, options=options, traceparent=traceparent,
                compression=inspector.compression)


async def publish_job(app: web.Application, job: jobs.Job) -> None:
    """Hand the job to the workers. The job is committed already: if this fails, the worker's
    reconciler re-publishes jobs left queued too long, so the upload is not lost."""
    with observe.span(tracer, "job.publish", kind=trace.SpanKind.PRODUCER) as span:
        try:
            await app[PUBLISHER].publish(jobs.message(job), job.traceparent)
        except amqp.BrokerUnavailable as exc:
            log.warning("job.publish_failed", job_id=str(job.job_id), error=str(exc))
            span.set_status(trace.StatusCode.ERROR, "the broker did not take the message")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
