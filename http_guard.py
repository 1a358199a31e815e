"""The HTTP guard: every request passes these middlewares (outermost first): its trace span,
the access log, the security headers, problem+json for every error (`Problem`), the Host and
Origin checks, and the token (401, and 429 for a client out of tries). The server underneath
(request-head deadline, aiohttp's own refusals as problem+json) is http_server.py's."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

import psycopg
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from opentelemetry import propagate, trace

import auth
import core
import explore
import lines
import observe
import offload
import read_slots
import uploads
from api_state import AUTH_LIMITER, DENIED_TRAIL, POOL, PRINCIPAL, SETTINGS, UPLOAD_PATH, actor
from http_server import SECURITY_HEADERS, problem_response

log = structlog.get_logger("api")
tracer = trace.get_tracer("eventhorizon.api")


class Problem(Exception):
    """An error answered as application/problem+json (RFC 9457)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
        errors: list[str] | None = None,
        denied: bool | None = None,
    ):
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.type = status, title, detail, type_
        self.headers, self.errors = headers, errors
        # A refusal of access, for the audit trail: 401 and 403, and the 429 of a client out
        # of tries for a token (not the 429s of a busy owner).
        self.denied = status in (401, 403) if denied is None else denied


@web.middleware
async def problem_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except Problem as exc:
        if exc.denied and DENIED_TRAIL in request.app:
            request.app[DENIED_TRAIL].denied(
                actor(request), exc.status, method=request.method, path=request.path
            )
        return problem_response(
            exc.status, exc.title, exc.detail, exc.type, exc.headers, exc.errors
        )
    except uploads.UploadRefused as exc:
        return problem_response(exc.status, REFUSAL_TITLES[exc.status], exc.detail)
    except offload.Busy as exc:
        return problem_response(
            503,
            "Service Unavailable",
            f"{exc}; retry shortly",
            headers={"Retry-After": str(offload.RETRY_AFTER_S)},
        )
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
        tracer,
        name,
        context=propagate.extract(request.headers),
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": request.method, "url.path": request.path},
    ) as span:
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
        log.info(
            "http.request",
            method=request.method,
            path=request.path,
            ms=round((loop.time() - started) * 1000, 1),
            **outcome,
        )
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
            log.warning(
                "http.malformed_request", error=type(exc).__name__, status=getattr(exc, "code", 400)
            )
            return False
        return record.levelno >= logging.getLogger().getEffectiveLevel()


MALFORMED_REQUESTS = MalformedRequestLog()


@web.middleware
async def security_headers_middleware(request: web.Request, handler):
    """Outside problem_middleware, so problem answers carry the headers too."""
    response = await handler(request)
    if not response.prepared:  # a WebSocket has sent its headers already
        response.headers.update(SECURITY_HEADERS)
    return response


@web.middleware
async def guard_middleware(request: web.Request, handler):
    """Refuse a Host this API does not answer to (a DNS-rebinding page names its own) and, on
    what a browser may send cross-site (every method but GET and HEAD, and WebSocket
    upgrades), an Origin that is not exactly this site: http(s), this host and port."""
    settings = request.app[SETTINGS]
    if not host_allowed(request, settings.allowed_host_names):
        raise Problem(
            400, "Bad Request", "this server does not answer to that Host name (EH_ALLOWED_HOSTS)"
        )
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
    return (
        (path.startswith("/api/") and path != "/api/v1/openapi.json")
        or path.startswith("/ws/")
        or (path == "/graphql" and request.method == "POST")
    )


@web.middleware
async def auth_middleware(request: web.Request, handler):
    """Resolve the request's principal (401 without a working token), or LOCAL with EH_AUTH=none."""
    if request.app[SETTINGS].auth == "none":
        request[PRINCIPAL] = auth.LOCAL
    elif needs_token(request):
        limiter, client = request.app[AUTH_LIMITER], auth.client_key(request.remote)
        if wait_s := limiter.retry_after(client):
            observe.AUTH_FAILURES.labels("limited").inc()
            raise too_many_failures(wait_s, request.app[SETTINGS].auth_failures_per_minute)
        token = auth.bearer_token(request.headers.get("Authorization")) or protocol_token(request)
        async with request.app[POOL].connection() as conn:
            who = await auth.authenticate(conn, token)
        if who is None:
            limiter.failed(client)
            observe.AUTH_FAILURES.labels("refused").inc()
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
    detail = (
        "the token is malformed, unknown or revoked"
        if presented
        else "send a token: Authorization: Bearer <token> (python eventhorizon.py tokens create)"
    )
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": challenge})


def too_many_failures(wait_s: int, per_minute: int) -> Problem:
    return Problem(
        429,
        "Too Many Requests",
        f"too many requests from this address had no working token ({per_minute} "
        f"a minute, EH_AUTH_FAILURES_PER_MINUTE); retry in {wait_s} s",
        headers={"Retry-After": str(wait_s)},
        denied=True,
    )


# The problem+json titles of uploads.UploadRefused's statuses.
REFUSAL_TITLES = {
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
}


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
        raise Problem(
            408,
            "Request Timeout",
            f"the upload sent nothing for {seconds}; it was dropped, nothing of it is kept",
        ) from None


def check_body_not_compressed(headers) -> None:
    """415 for a body with any Content-Encoding but identity, before a byte of it is read.

    aiohttp inflates a gzip or deflate body while it is read: EH_MAX_UPLOAD_BYTES would be
    checked against the compressed Content-Length, and a few hundred KB of gzip inflate to
    128 MiB, all of it the event loop's work."""
    if codings := content_codings(headers):
        raise Problem(
            415,
            "Unsupported Media Type",
            f"the body has Content-Encoding {codings!r}: send the file uncompressed, "
            "without Content-Encoding",
        )


def content_codings(headers) -> str:
    """The Content-Encoding codings other than identity, as sent ("" if there are none)."""
    codings = [
        c.strip()
        for value in headers.getall("Content-Encoding", ())
        for c in value.split(",")
        if c.strip()
    ]
    return ", ".join(codings) if any(c.lower() != "identity" for c in codings) else ""


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


# --------------------------------------------------------------------------- parameters and reads


PLAIN_DIGITS = re.compile(r"[0-9]+")


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
        raise Problem(
            422, "Unprocessable Content", f"{name} must be an integer from {low} to {high}"
        )
    return value


async def explore_read(read: Awaitable[T]) -> T:
    """A ClickHouse read's result; its failure as a problem of this request alone."""
    try:
        return await read
    except explore.InvalidFilter as exc:
        raise Problem(422, "Unprocessable Content", str(exc)) from None
    except read_slots.OwnerQueueFull as exc:
        raise Problem(
            429, "Too Many Requests", str(exc), headers={"Retry-After": str(exc.retry_after_s)}
        ) from None
    except read_slots.NoReadSlot as exc:
        raise Problem(
            503, "Service Unavailable", str(exc), headers={"Retry-After": str(exc.retry_after_s)}
        ) from None
    except explore.Unavailable as exc:
        log.warning("explore.clickhouse_unavailable", error=str(exc))
        raise Problem(
            503,
            "Service Unavailable",
            f"{exc.public_reason} (uploads and job status are not affected)",
        ) from None
