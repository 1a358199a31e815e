"""What guards the API's connections before and around its routes: a deadline on each
request's line and headers, problem+json (with the security headers) for what aiohttp's own
parser refuses, the security headers themselves, and the per-client limit on failed
authentications.

aiohttp (3.14) has a keep-alive timeout but none for a request's head: a client sending one
header every few seconds kept its connection until the keep-alive timeout, and 500 such
connections were held for free. GuardedRequestHandler, aiohttp's protocol with a deadline
armed at the first byte of a request's head and disarmed once the head is parsed, closes
such a connection with a 408. aiohttp's Server offers no hook for the protocol class, so
GuardedRunner makes the server and `run` serves the app as `web.run_app` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from http import HTTPStatus

import structlog
from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

log = structlog.get_logger("api")

# The page, its assets and the docs load only their own files: no inline script, style or
# event handler runs, and no other site may frame them. Sent on every response (an API
# answer shown in a tab is a page too), aiohttp's own refusals included.
SECURITY_HEADERS = {
    "Content-Security-Policy": "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ]
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
PROBLEM_TYPE = "application/problem+json"


def problem_response(
    status: int,
    title: str,
    detail: str = "",
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    errors: list[str] | None = None,
) -> web.Response:
    """An application/problem+json answer (RFC 9457)."""
    body = {"type": type_, "title": title, "status": status, "detail": detail or title}
    if errors:
        body["errors"] = errors  # an extension member (RFC 9457): each problem of the request
    return web.json_response(body, status=status, content_type=PROBLEM_TYPE, headers=headers)


# --------------------------------------------------------------------------- the protocol


# What a request aiohttp could not parse is told: in words of ours, never its bytes.
PARSER_ERRORS = {
    http_exceptions.LineTooLong: "the request line or a header is too long",
    http_exceptions.BadStatusLine: "the request line is not an HTTP/1.1 request line",
    http_exceptions.BadHttpMethod: "the request's method is not a valid HTTP method",
    http_exceptions.InvalidHeader: "a header of the request is malformed",
    http_exceptions.TransferEncodingError: "the request's chunked body is malformed",
    http_exceptions.ContentLengthError: "the request's body does not match its Content-Length",
}


def parser_error_detail(exc: BaseException | None) -> str:
    for kind, detail in PARSER_ERRORS.items():
        if isinstance(exc, kind):
            return detail
    return "the request is not valid HTTP/1.1"


class GuardedRequestHandler(RequestHandler):
    """aiohttp's HTTP/1.1 protocol with a deadline on each request's line and headers, and
    problem+json for the errors aiohttp answers itself."""

    def __init__(self, manager, *, head_timeout_s: float, **kwargs):
        super().__init__(manager, **kwargs)
        self.head_timeout_s = head_timeout_s
        self.head_deadline: asyncio.TimerHandle | None = None

    def waiting_for_a_request(self) -> bool:
        """Between requests: the protocol waits for the next one's head (not running a
        handler, nor lingering over the rest of a body a handler left unread)."""
        return self._waiter is not None and not self._waiter.done() and not self._messages

    def data_received(self, data: bytes) -> None:
        between_requests = self.waiting_for_a_request()
        super().data_received(data)
        if self._messages or self._upgraded or self._payload_parser is not None:
            self.disarm_head_deadline()  # a head arrived whole (or the socket is upgraded)
        elif between_requests and data and self.head_deadline is None:
            self.head_deadline = self._loop.call_later(self.head_timeout_s, self.head_too_slow)

    def disarm_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def head_too_slow(self) -> None:
        self.head_deadline = None
        if self.transport is None or not self.waiting_for_a_request():
            return
        log.info(
            "http.request_head_timeout",
            timeout_s=self.head_timeout_s,
            peer=str(self.transport.get_extra_info("peername")),
        )
        self.transport.write(
            raw_problem(
                408,
                f"the request line and headers did not arrive within {self.head_timeout_s:g} s"
                " (EH_REQUEST_HEAD_TIMEOUT_S)",
            )
        )
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.disarm_head_deadline()
        super().connection_lost(exc)

    def handle_error(
        self,
        request,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (or a handler's error no
        middleware caught): the same status, as problem+json with the security headers; the
        request's bytes never echoed (aiohttp's text quotes them)."""
        super().handle_error(request, status, exc, message)  # logs; raises if a response began
        if status == 500:
            detail = "an unexpected error occurred"
        elif status == 504:
            detail = "the request took too long"
        else:
            detail = parser_error_detail(exc)
        response = problem_response(
            status, HTTPStatus(status).phrase, detail, headers=SECURITY_HEADERS
        )
        response.force_close()
        return response


def raw_problem(status: int, detail: str) -> bytes:
    """A whole HTTP/1.1 problem+json response, for a connection with no request to answer."""
    title = HTTPStatus(status).phrase
    body = json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail}
    ).encode()
    head = [
        f"HTTP/1.1 {status} {title}",
        f"Content-Type: {PROBLEM_TYPE}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in SECURITY_HEADERS.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class GuardedServer(web.Server):
    """aiohttp's Server, making GuardedRequestHandler protocols."""

    def __init__(self, *args, head_timeout_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(
            self, loop=self._loop, head_timeout_s=self.head_timeout_s, **self._kwargs
        )


class GuardedRunner(web.AppRunner):
    """web.AppRunner whose server is a GuardedServer with the same settings."""

    def __init__(self, app: web.Application, *, head_timeout_s: float, **kwargs):
        super().__init__(app, **kwargs)
        self.head_timeout_s = head_timeout_s

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            head_timeout_s=self.head_timeout_s,
            **plain._kwargs,
        )


def run(
    app: web.Application,
    *,
    host: str,
    port: int,
    head_timeout_s: float,
    keepalive_timeout_s: float,
    shutdown_timeout_s: float,
) -> None:
    """Serve `app` until SIGINT or SIGTERM, as web.run_app does (which has no way to name
    the protocol)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    runner = GuardedRunner(
        app,
        head_timeout_s=head_timeout_s,
        handle_signals=True,
        access_log=None,
        keepalive_timeout=keepalive_timeout_s,
        shutdown_timeout=shutdown_timeout_s,
    )
    main = loop.create_task(serve(runner, host, port))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def serve(runner: web.AppRunner, host: str, port: int) -> None:
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        # The port bound (EH_HTTP_PORT=0: one the system chose, as the tests do).
        log.info("api.listening", host=host, port=runner.addresses[0][1])
        await asyncio.Event().wait()  # until a signal raises GracefulExit
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------- failed authentications
