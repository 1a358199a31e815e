"""GraphQL over a WebSocket: the graphql-transport-ws protocol (graphql-ws's PROTOCOL.md) on
`GET /graphql`. Operations run through graphql_api's limits and graphql_resolvers' schema and
resolvers; a subscription is one more watcher on live.py's fan-out, like `/ws/jobs/{id}`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import WSMsgType, web
from graphql import ExecutionResult, GraphQLError, execute, subscribe

import auth
import core
import live
import offload
import revocation
from graphql_api import (
    MAX_BODY_BYTES,
    MAX_SUBSCRIPTIONS_PER_SOCKET,
    PROTOCOL,
    BadRequest,
    prepare_off_loop,
    public_error,
    request_parts,
    response,
    run,
)
from graphql_resolvers import Context, LineErrorLoader, Services

log = structlog.get_logger("api")


async def serve_socket(request: web.Request, services: Services) -> web.WebSocketResponse:
    """The graphql-transport-ws protocol on an upgraded request (the caller holds one of the
    process's WebSocket slots; the owner's is taken at connection_init)."""
    ws = web.WebSocketResponse(protocols=(PROTOCOL,), heartbeat=30, max_msg_size=MAX_BODY_BYTES)
    await ws.prepare(request)
    if ws.ws_protocol != PROTOCOL:
        await ws.close(code=4406, message=b"Subprotocol not acceptable: graphql-transport-ws")
        return ws
    connection = Connection(ws, request, services)
    services.connections.add(connection)
    try:
        if services.watchers.shutting_down:
            connection.close_soon(1001, b"server shutting down")
        await connection.run()
    finally:
        services.connections.discard(connection)
    return ws


class Connection:
    """One graphql-transport-ws connection: connection_init (the token) → connection_ack,
    then any number of operations (`subscribe` → `next`… `complete`, or `error`), each its own
    task. connection_init must come within the services' init_timeout_s, whatever else comes
    before it (4408). The token is checked again as each operation starts, and a revoked
    token closes the connection (4403, revocation.py). Sends are awaited: a client that stops
    reading stalls its subscriptions, whose queues fill, and the fan-out drops them (1013), as
    it does a /ws/jobs watcher."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, services: Services):
        self.ws, self.request, self.services = ws, request, services
        self.principal: auth.Principal | None = None
        self.token_presented: str | None = None  # connection_init's, checked at each operation
        self.operations: dict[str, asyncio.Task] = {}
        self.closing = asyncio.Event()
        self.close_code, self.close_message = 1000, b""
        self.exits = contextlib.ExitStack()  # the WebSocket slot, once the owner is known

    async def run(self) -> None:
        reading = asyncio.create_task(self._read())
        told = asyncio.create_task(self.closing.wait())
        try:
            await asyncio.wait((reading, told), return_when=asyncio.FIRST_COMPLETED)
            # Close before the operations are cancelled: a send of theirs, waiting on a
            # client that does not read, would leave aiohttp's drain waiter cancelled.
            await live.close_socket(
                self.ws, self.request.transport, self.close_code, self.close_message
            )
        finally:
            tasks = [reading, told, *self.operations.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.exits.close()

    def close_soon(self, code: int, message: bytes) -> None:
        if not self.closing.is_set():
            self.close_code, self.close_message = code, message[:120]
            self.closing.set()

    async def _read(self) -> None:
        init_by = asyncio.get_running_loop().time() + self.services.init_timeout_s
        while True:
            try:
                # Until connection_init: a ping (or anything) does not extend the deadline.
                async with asyncio.timeout_at(init_by if self.principal is None else None):
                    message = await self.ws.receive()
            except TimeoutError:
                return self.close_soon(4408, b"Connection initialisation timeout")
            if message.type != WSMsgType.TEXT:
                break
            if not await self._handle(message.data):
                return
        if message.type == WSMsgType.BINARY:
            self.close_soon(4400, b"messages are JSON text")

    async def _handle(self, text: str) -> bool:
        """Act on one message; False once the connection is to close."""
        try:
            message = json.loads(text)
            kind = message["type"]
        except (ValueError, TypeError, KeyError):
            self.close_soon(4400, b"a message is a JSON object with a type")
            return False
        if kind == "connection_init":
            return await self._init(message.get("payload"))
        if kind == "ping":
            await self.send({"type": "pong"})
        elif kind == "pong":
            pass
        elif self.principal is None:
            self.close_soon(4401, b"Unauthorized")
            return False
        elif kind == "subscribe":
            return await self._subscribe(message)
        elif kind == "complete":
            task = self.operations.pop(str(message.get("id")), None)
            if task is not None:
                task.cancel()
        else:
            self.close_soon(4400, f"unknown message type {str(kind)[:40]!r}".encode())
            return False
        return True

    async def _init(self, payload: Any) -> bool:
        if self.principal is not None:
            self.close_soon(4429, b"Too many initialisation requests")
            return False
        token = self.token(payload)
        who = await self.services.authenticate(token)
        if who is None:
            self.close_soon(4403, b"Forbidden: the token is missing, not valid or revoked")
            return False
        try:
            self.exits.enter_context(self.services.watchers.limits.owner_slot(who.owner))
        except live.TooManySockets as exc:
            self.close_soon(1013, str(exc).encode()[:120])
            return False
        self.exits.enter_context(self.services.watchers.tokens.hold(who.token_id, self))
        self.principal, self.token_presented = who, token
        structlog.contextvars.bind_contextvars(owner=who.owner)
        await self.send({"type": "connection_ack"})
        return True

    def token(self, payload: Any) -> str | None:
        """connection_init's {"Authorization": "Bearer eh_…"} or {"token": "eh_…"}, else the
        upgrade request's Authorization header."""
        payload = payload if isinstance(payload, dict) else {}
        if isinstance(payload.get("token"), str):
            return payload["token"]
        header = payload.get("Authorization") or payload.get("authorization")
        if not isinstance(header, str):
            header = self.request.headers.get("Authorization")
        return auth.bearer_token(header)

    async def _subscribe(self, message: dict) -> bool:
        op_id, payload = message.get("id"), message.get("payload")
        if not isinstance(op_id, str) or not op_id or len(op_id) > 128:
            self.close_soon(4400, b"subscribe needs an id: a string of 1-128 characters")
            return False
        if op_id in self.operations:
            self.close_soon(4409, f"Subscriber for {op_id[:64]} already exists".encode())
            return False
        try:
            parts = request_parts(payload)
        except BadRequest as exc:
            await self.send_error(op_id, [GraphQLError(str(exc))])
            return True
        try:
            still_valid = await self.services.authenticate(self.token_presented)
        except Exception as exc:
            if not core.is_outage(exc):
                raise
            await self.send_error(
                op_id,
                [
                    GraphQLError(
                        "a service the API needs is unreachable; retry later",
                        extensions={"code": "UNAVAILABLE"},
                    )
                ],
            )
            return True
        if still_valid is None:  # revoked since connection_init
            self.close_soon(revocation.WS_REVOKED, revocation.REVOKED_MESSAGE)
            return False
        if len(self.operations) >= MAX_SUBSCRIPTIONS_PER_SOCKET:
            await self.send_error(
                op_id,
                [
                    GraphQLError(
                        f"this connection runs {MAX_SUBSCRIPTIONS_PER_SOCKET} operations, "
                        "as many as one may; complete one first",
                        extensions={"code": "TOO_MANY_SUBSCRIPTIONS"},
                    )
                ],
            )
            return True
        self.operations[op_id] = asyncio.create_task(self._operate(op_id, *parts))
        return True

    async def _operate(self, op_id: str, query: str, variables, operation_name) -> None:
        """Run one operation to its end; `complete` after the last `next` (not when the
        client completed it: it knows)."""
        started, sent = time.monotonic(), 0
        try:
            try:
                prepared, errors = await prepare_off_loop(query, variables, operation_name)
            except offload.Busy as exc:
                prepared, errors = (
                    None,
                    [GraphQLError(f"{exc}; retry shortly", extensions={"code": "BUSY"})],
                )
            if errors:
                return await self.send_error(op_id, errors)
            context = Context(
                self.services,
                self.principal,
                LineErrorLoader(self.services.pool),
                close_socket=self.close_soon,
            )
            operate = subscribe if prepared.is_subscription else execute
            outcome = await run(operate, prepared, context, variables)
            if isinstance(outcome, ExecutionResult):
                if prepared.is_subscription:  # the subscription could not start
                    return await self.send_error(op_id, outcome.errors or [])
                outcome = single(outcome)
            try:
                async for result in outcome:
                    await self.send({"id": op_id, "type": "next", "payload": response(result)})
                    sent += 1
            finally:
                with contextlib.suppress(Exception):
                    await outcome.aclose()
            if not self.closing.is_set():
                await self.send({"id": op_id, "type": "complete"})
        except (ConnectionError, RuntimeError):
            pass  # the socket closed under a send
        finally:
            self.operations.pop(op_id, None)
            log.info(
                "graphql.operation_done",
                operation_id=op_id[:64],
                messages=sent,
                seconds=round(time.monotonic() - started, 3),
            )

    async def send_error(self, op_id: str, errors: list[GraphQLError]) -> None:
        await self.send(
            {"id": op_id, "type": "error", "payload": [public_error(error) for error in errors]}
        )

    async def send(self, message: dict) -> None:
        await self.ws.send_json(message)


async def single(result: ExecutionResult) -> AsyncIterator[ExecutionResult]:
    yield result
