"""Live job states for the API's WebSockets: one Postgres LISTEN connection per process,
fanned out to every watcher of a job (`/ws/jobs/{id}` and GraphQL subscriptions alike), and the
caps on how many WebSockets a process and an owner may hold. The same connection hears of
revoked tokens (core.TOKEN_CHANNEL), whose sockets revocation.py closes.

Each watcher has its own bounded queue of states; the listener only queues, never waits on a
client, so one that stops reading is dropped alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import socket
import struct
import uuid
from typing import Protocol, TypeVar

import psycopg
import structlog
from aiohttp import WSCloseCode, web
from psycopg_pool import AsyncConnectionPool

import core
import jobs

W = TypeVar("W", bound="StateQueue")
log = structlog.get_logger("api")

STATUS_RANK = {"queued": 0, "processing": 1, "completed": 2, "failed": 2}
WS_NOT_FOUND = 4404
WS_BACKLOG_STATES = 256  # states a watcher may fall behind before it is closed (1013) and dropped
WS_CLOSE_TIMEOUT_S = 5.0  # for the client to read the close frame and answer it


class TokenListener(Protocol):
    """What hears of revoked tokens on the listener's connection (revocation.TokenSockets)."""

    def on_notify(self, payload: str) -> None: ...

    async def recheck(self) -> None: ...


class TooManySockets(Exception):
    """A WebSocket refused: the process (per_owner False) or the owner holds `limit` already."""

    def __init__(self, limit: int, *, per_owner: bool, owner: str = ""):
        super().__init__(
            f"{owner} holds its limit of {limit} WebSockets "
            "(EH_MAX_WEBSOCKETS_PER_OWNER); close one or retry later"
            if per_owner
            else f"this server holds its limit of {limit} WebSockets "
            "(EH_MAX_WEBSOCKETS); retry later"
        )
        self.limit, self.per_owner = limit, per_owner


class SocketLimits:
    """How many WebSockets this process holds open, in all and per owner: past a limit a new
    one is refused (before the upgrade where the owner is known by then: 503 for the process,
    429 for an owner, with Retry-After), so no client can exhaust the process's sockets and
    memory for the others."""

    RETRY_AFTER_S = 10

    def __init__(self, total: int, per_owner: int):
        self.total, self.per_owner = total, per_owner
        self.open = 0
        self.open_by_owner: collections.Counter[str] = collections.Counter()

    def check_process(self) -> None:
        """Refuse at once when the process is full, before the owner is known."""
        if self.open >= self.total:
            raise TooManySockets(self.total, per_owner=False)

    @contextlib.contextmanager
    def slot(self, owner: str):
        with self.process_slot(), self.owner_slot(owner):
            yield

    @contextlib.contextmanager
    def process_slot(self):
        """One of the process's sockets, whoever holds it: taken at the upgrade, before the
        owner may be known (a GraphQL socket's is, at connection_init)."""
        self.check_process()
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1

    @contextlib.contextmanager
    def owner_slot(self, owner: str):
        """One of the owner's sockets (inside a process_slot)."""
        if self.open_by_owner[owner] >= self.per_owner:
            raise TooManySockets(self.per_owner, per_owner=True, owner=owner)
        self.open_by_owner[owner] += 1
        try:
            yield
        finally:
            self.open_by_owner[owner] -= 1
            if not self.open_by_owner[owner]:
                del self.open_by_owner[owner]


class JobWatchers:
    """One LISTEN connection per API process, fanned out to the WebSockets watching each job.

    Each notification carries the state its transaction committed (jobs.job_notification),
    and that state is what the watchers are sent: a re-read could find a later batch already
    committed and skip this one. The listener only queues states (Watcher.offer) and never
    waits on a client: each socket's own handler sends its queue. A watcher too far behind
    (its queue full: a client that stopped reading) is closed with 1013 and dropped, and the
    others go on. A notification too long for Postgres carries ids only: the row is re-read
    for it. After a reconnect every watcher gets its job re-read, since notifications sent
    while the listener was away are gone.
    """

    def __init__(
        self,
        database_url: str,
        pool: AsyncConnectionPool,
        limits: SocketLimits,
        tokens: TokenListener,
    ):
        self.database_url = database_url
        self.pool = pool
        self.limits = limits
        self.tokens = tokens  # the sockets by token: the listener also hears of revocations
        self.watching: dict[uuid.UUID, set[StateQueue]] = {}
        self.shutting_down = False
        self.listening = asyncio.Event()  # set while the LISTEN connection is up

    def add(self, job_id: uuid.UUID, watcher: W) -> W:
        self.watching.setdefault(job_id, set()).add(watcher)
        if self.shutting_down:
            watcher.close_soon(WSCloseCode.GOING_AWAY, b"server shutting down")
        return watcher

    def discard(self, job_id: uuid.UUID, watcher: StateQueue) -> None:
        watchers = self.watching.get(job_id)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self.watching[job_id]

    async def start_watching(self, job_id: uuid.UUID, watcher: W, *, owner: str | None) -> W | None:
        """Add a watcher and queue the job's current state; None (and not added) when `owner`
        may not see the job, or it is gone."""
        # Right after start-up the listener may still be connecting: a watcher added before it
        # listens would miss the states committed meanwhile. Wait for it (briefly: while
        # Postgres is away the watcher gets the job's state when the listener is back).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), timeout=5)
        self.add(job_id, watcher)
        # Read after subscribing: a change that landed in between is not lost (and a
        # notification of an older state, still on its way, is skipped by offer).
        job = await jobs.read_job(self.pool, job_id, owner=owner)
        if job is None:
            self.discard(job_id, watcher)
            return None
        watcher.offer(jobs.job_json(job))
        return watcher

    async def listen(self) -> None:
        """Follow the jobs' NOTIFY channel for the process's life. Whatever ends a connection,
        Postgres going away or a bug in handling a notification, the listener logs it and
        starts again after the shared backoff; `listening` is clear (and /readyz unready)
        until it is back."""
        backoff = core.Backoff(cap=10.0)
        while True:
            try:
                await self.listen_once(backoff)
            except Exception as exc:  # noqa: BLE001  (supervised: logged, then restarted)
                self.listening.clear()
                delay = backoff.next()
                if isinstance(exc, psycopg.OperationalError):
                    log.warning("listener.disconnected", error=str(exc), retry_in_s=delay)
                else:
                    log.exception("listener.failed", retry_in_s=delay)
                await asyncio.sleep(delay)

    async def listen_once(self, backoff: core.Backoff) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True
        ) as conn:
            await core.listen(conn, core.TOKEN_CHANNEL)
            await core.listen(conn, jobs.CHANNEL)  # last: the tests look for it
            self.listening.set()
            log.info("listener.connected", channel=jobs.CHANNEL)
            backoff.reset()
            await self.refresh_all()
            await self.recheck_tokens()  # revocations sent while away are gone too
            while True:
                # Closed as the loop ends, however it ends: notifies() holds the connection's
                # lock while we handle a notification, and the connection's exit needs it; left
                # to the garbage collector, that release would come whenever it runs.
                async with contextlib.aclosing(conn.notifies(timeout=15)) as notifies:
                    async for notify in notifies:
                        if notify.channel == core.TOKEN_CHANNEL:
                            self.tokens.on_notify(notify.payload)
                        else:
                            await self.on_notify(notify.payload)
                await conn.execute("SELECT 1")  # a quiet connection may be a dead one

    async def recheck_tokens(self) -> None:
        """After a reconnect; a failure is left to the periodic re-check, which comes anyway."""
        try:
            await self.tokens.recheck()
        except Exception as exc:  # noqa: BLE001 - the backstop's backstop; logged
            log.warning("listener.token_recheck_failed", error=str(exc)[:300])

    async def on_notify(self, payload: str) -> None:
        """Hand the state a notification carries to its job's watchers (re-read from the
        database only when the payload had to leave it out)."""
        try:
            note = json.loads(payload)
            job_id = uuid.UUID(note["job_id"])
            state_rank(note)
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("listener.bad_payload", payload=payload[:200])
            return
        if job_id not in self.watching:
            return
        state = note if carries_whole_state(note) else await self.read_state(job_id)
        if state is None:  # deleted (DELETE /api/v1/jobs/{id} notifies ids only)
            self.close_watchers(job_id, WS_NOT_FOUND, b"job deleted")
        else:
            self.fan_out(job_id, state)

    def close_watchers(self, job_id: uuid.UUID, code: int, message: bytes) -> None:
        for watcher in list(self.watching.get(job_id, ())):
            self.discard(job_id, watcher)
            watcher.close_soon(code, message)

    def fan_out(self, job_id: uuid.UUID, state: dict) -> None:
        """Queue the state for every watcher of the job, waiting on none of them."""
        for watcher in list(self.watching.get(job_id, ())):
            if not watcher.offer(state):
                self.drop(job_id, watcher)

    def drop(self, job_id: uuid.UUID, watcher: StateQueue) -> None:
        """A watcher whose client stopped reading: closed (its own handler does it) and no
        longer fed, so it holds back no one and its backlog stops growing."""
        self.discard(job_id, watcher)
        watcher.close_soon(
            WSCloseCode.TRY_AGAIN_LATER, b"too far behind; reconnect for the current state"
        )
        log.warning(
            "listener.watcher_dropped",
            job_id=str(job_id),
            backlog=watcher.states.qsize(),
            close_code=int(WSCloseCode.TRY_AGAIN_LATER),
        )

    async def read_state(self, job_id: uuid.UUID) -> dict | None:
        job = await jobs.read_job(self.pool, job_id, owner=None)  # watchers were checked
        return jobs.job_json(job) if job is not None else None

    async def refresh_all(self) -> None:
        for job_id in list(self.watching):
            state = await self.read_state(job_id)
            if state is not None:
                self.fan_out(job_id, state)

    def close_all(self) -> None:
        """Server shutdown: every socket is closed with 1001 by its handler; sockets that
        subscribe from now on are closed at once."""
        self.shutting_down = True
        for watchers in self.watching.values():
            for watcher in watchers:
                watcher.close_soon(WSCloseCode.GOING_AWAY, b"server shutting down")


class StateQueue:
    """What the fan-out feeds: one watcher's states still to deliver, in order, and a request
    to stop (`close_soon`: 1013 too far behind, 1001 shutting down, 4404 job deleted).

    The listener queues states (`offer`) without waiting; the watcher's own task takes them.
    """

    def __init__(self):
        self.states: asyncio.Queue[dict] = asyncio.Queue(WS_BACKLOG_STATES)
        self.newest = (-1, -1)  # rank of the newest state queued
        self.closing = asyncio.Event()
        self.close_code, self.close_message = WSCloseCode.OK, b""

    def offer(self, state: dict) -> bool:
        """Queue a state newer than any before it (an older or equal one, e.g. a notification
        already on its way when the handler read the row, is skipped). False when the queue
        is full: the client is not reading."""
        rank = state_rank(state)
        if rank <= self.newest:
            return True
        try:
            self.states.put_nowait(state)
        except asyncio.QueueFull:
            return False
        self.newest = rank
        return True

    def close_soon(self, code: int, message: bytes) -> None:
        """Have the watcher's task stop with this code, whatever it is doing."""
        if not self.closing.is_set():
            self.close_code, self.close_message = code, message
            self.closing.set()


class Watcher(StateQueue):
    """One `/ws/jobs/{id}` WebSocket watching one job: its handler runs `run`, which sends the
    queued states while it reads from the socket, so it notices the client leaving."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None):
        super().__init__()
        self.ws = ws
        self.transport = transport

    async def run(self) -> None:
        """Send the queued states until the final one (then close 1000), until told to close
        (close_soon), or until the client leaves."""
        sending = asyncio.create_task(self._send_states())
        reading = asyncio.create_task(self._read_until_closed())
        told = asyncio.create_task(self.closing.wait())
        tasks = (sending, reading, told)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # Close before the sender is cancelled: a write of its, waiting for a client that
            # does not read, would leave aiohttp's drain waiter cancelled, failing the close.
            if sending.done() and sending.result():
                await self._close(WSCloseCode.OK, b"")
            else:  # told to close; or the client left, and the close is a no-op
                await self._close(self.close_code, self.close_message)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _send_states(self) -> bool:
        """Send states in order; True once the final one went out, False if the client is gone."""
        while True:
            state = await self.states.get()
            try:
                await self.ws.send_json(state)
            except (ConnectionError, RuntimeError):
                return False
            if state["status"] in jobs.TERMINAL_STATUSES:
                return True

    async def _read_until_closed(self) -> None:
        async for _message in self.ws:
            pass  # clients have nothing to say; this notices the close

    async def _close(self, code: int, message: bytes) -> None:
        await close_socket(self.ws, self.transport, code, message)


async def close_socket(
    ws: web.WebSocketResponse, transport: asyncio.Transport | None, code: int, message: bytes
) -> None:
    """Close a WebSocket (a no-op if the client closed it already). A client that has not
    answered the close within WS_CLOSE_TIMEOUT_S is reading nothing: it is reset."""
    try:
        await asyncio.wait_for(ws.close(code=code, message=message), WS_CLOSE_TIMEOUT_S)
        return
    except TimeoutError:
        pass
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling():
            raise
        # Not this task's cancellation: aiohttp's drain waiter, shared by every write to
        # the socket, was left cancelled by another write that was (a heartbeat's ping).
    if transport is not None:
        reset_connection(transport)


def reset_connection(transport: asyncio.Transport) -> None:
    """Drop a connection at once, with whatever its client has not read: a plain close would
    hold the unread bytes, in this process and then in the kernel, until it reads them."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.fileno() >= 0:
        with contextlib.suppress(OSError):  # reset, not closed after the unread bytes
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def state_rank(state: dict) -> tuple[int, int]:
    """Job states only move forward: by status, then by lines processed."""
    return STATUS_RANK[state["status"]], int(state["lines_processed"])


def carries_whole_state(note: dict) -> bool:
    """A full job state, not the ids-only payload of a state too long for NOTIFY."""
    return "lines_total" in note
