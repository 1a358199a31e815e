"""Revoked tokens end what they hold: every open WebSocket (`/ws/jobs/{id}` and GraphQL's)
authenticated by a token is closed with 4403 once the token is revoked, in every API process.

`tokens revoke` NOTIFYs `eh_token` with the token's id in the transaction that revokes it
(sql/queries.sql, revoke_token). Each API process LISTENs on that channel with the connection
its job fan-out already holds (live.JobWatchers.listen) and hands the id to its `TokenSockets`,
which closes that token's sockets at once. A notification can be missed (the LISTEN connection
was down when it was sent): after every reconnect, and every EH_TOKEN_RECHECK_S in any case,
the tokens of the open sockets are looked up, and the sockets of those no longer live close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Protocol

import structlog
from psycopg.rows import tuple_row

import core

log = structlog.get_logger("api")

WS_REVOKED = 4403  # as graphql-transport-ws's Forbidden; /ws/jobs uses the same
REVOKED_MESSAGE = b"Forbidden: the token was revoked"


class Closable(Protocol):
    """What holds a socket open: asked to close it, it does so from its own task."""

    def close_soon(self, code: int, message: bytes) -> None: ...


class TokenSockets:
    """The open sockets of this process by the token that authenticated them."""

    def __init__(self, pool, recheck_s: float):
        self.pool, self.recheck_s = pool, recheck_s
        self.by_token: dict[int, set[Closable]] = {}

    @contextlib.contextmanager
    def hold(self, token_id: int | None, socket: Closable):
        """Register `socket` under its token for as long as the block runs (no token:
        EH_AUTH=none, nothing to revoke)."""
        if token_id is None:
            yield
            return
        self.by_token.setdefault(token_id, set()).add(socket)
        try:
            yield
        finally:
            sockets = self.by_token.get(token_id)
            if sockets is not None:
                sockets.discard(socket)
                if not sockets:
                    del self.by_token[token_id]

    def revoked(self, token_id: int) -> int:
        """Close every socket of a revoked token; how many there were."""
        sockets = self.by_token.pop(token_id, set())
        for socket in sockets:
            socket.close_soon(WS_REVOKED, REVOKED_MESSAGE)
        if sockets:
            log.info("token.sockets_closed", token_id=token_id, sockets=len(sockets))
        return len(sockets)

    def on_notify(self, payload: str) -> None:
        """A `tokens revoke` notification: {"token_id": N}."""
        try:
            token_id = int(json.loads(payload)["token_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("token.bad_payload", payload=payload[:200])
            return
        self.revoked(token_id)

    async def recheck(self) -> None:
        """Close the sockets of every token no longer live (a notification missed)."""
        held = list(self.by_token)
        if not held:
            return
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(core.QUERIES["live_token_ids"], {"token_ids": held})
            live = {token_id for (token_id,) in await cur.fetchall()}
        for token_id in held:
            if token_id not in live:
                self.revoked(token_id)

    async def recheck_periodically(self) -> None:
        """The backstop: every recheck_s, whatever the notifications did. A failure (Postgres
        away) is logged and the check tried again next time: it must not stop for good."""
        while True:
            await asyncio.sleep(self.recheck_s)
            try:
                await self.recheck()
            except Exception as exc:  # noqa: BLE001 - logged, and tried again
                log.warning(
                    "token.recheck_failed", error=str(exc)[:300], outage=core.is_outage(exc)
                )
