"""The audit trail: who did what to the service, from where, on which object, with what result.

Every state-changing action (a token created or revoked, a job uploaded or deleted, a format
registered or deleted, an export, an owner's retention set or cleared, a job the retention sweep
removed) writes one `audit.*` event through the outbox in the action's own transaction, so it
reaches ClickHouse exactly once, like every event, or not at all if the action rolled back. A
refusal of access (401, 403, the failed-token limit's 429) has no transaction to join: `DeniedTrail`
records it off the request's path, bounded per client address and minute
(docs/access.md#audit-trail).

An audit event is shaped as a log entry (level, service, message) whose `context` says
`actor`, `token_id`, `client_ip`, `request_id`, `object` and `result`. It carries no `job_id`
key of its own, so a job's deletion never deletes it, and event_log's `owner` is its actor
(sql/queries.sql's event_log_line): an owner searches the audit events of their own actions,
an admin everyone's (search.py's audit scope). Never the token: its id only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import getpass
import ipaddress
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import structlog

import auth
import config
import outbox

log = structlog.get_logger("audit")

PREFIX = "audit."
ALL = "audit.*"  # the search filter that selects every audit event
DENIED = "audit.access.denied"
DENIED_SUPPRESSED = "audit.access.denied_suppressed"
SERVICE = "eventhorizon"
WINDOW_S = 60.0  # EH_AUDIT_DENIED_PER_MINUTE's minute
MAX_TRACKED_CLIENTS = 10_000  # windows kept at once; the oldest is closed first
QUEUE_SIZE = 2_000  # refusal events waiting for their write; past it they are counted, dropped
WRITE_BATCH = 500  # refusal events per transaction
WRITE_TIMEOUT_S = 5.0  # for a pool connection, then the batch is dropped (logged)


@dataclasses.dataclass(frozen=True)
class Actor:
    """Who acts: an owner by a token (`token_id`), an operator at the command line
    (`os:<user>`), the service itself (`system:retention`), or "" (a request without a
    working token); from where, in which request."""

    actor: str
    token_id: int | None = None
    client_ip: str = ""
    request_id: str = ""


def event(
    event_type: str,
    who: Actor,
    *,
    environment: str,
    object_: Any = "",
    result: str | int = "ok",
    **details: Any,
) -> outbox.Event:
    """The audit event of an action (or refusal) on `object_`; `details` join its context."""
    result = str(result)
    context = {
        "actor": who.actor,
        "token_id": who.token_id,
        "client_ip": who.client_ip,
        "request_id": who.request_id,
        "object": str(object_),
        "result": result,
        **details,
    }
    message = (
        f"{event_type.removeprefix(PREFIX)} {context['object']} by {who.actor or '-'}: {result}"
    )
    return outbox.make_event(
        event_type,
        {
            "level": "info" if result == "ok" else "warning",
            "service": SERVICE,
            "message": message,
            "context": context,
        },
        environment=environment,
    )


async def arecord(
    aconn,
    settings: config.Settings,
    event_type: str,
    who: Actor,
    *,
    object_: Any,
    result: str | int = "ok",
    **details: Any,
) -> None:
    """Write the audit event in the caller's transaction (psycopg async connection)."""
    await outbox.ainsert_event(
        aconn,
        event(
            event_type,
            who,
            environment=settings.environment,
            object_=object_,
            result=result,
            **details,
        ),
    )


def record(
    conn,
    settings: config.Settings,
    event_type: str,
    who: Actor,
    *,
    object_: Any,
    result: str | int = "ok",
    **details: Any,
) -> None:
    """`arecord` on a sync connection (the `tokens` command)."""
    outbox.insert_event(
        conn,
        event(
            event_type,
            who,
            environment=settings.environment,
            object_=object_,
            result=result,
            **details,
        ),
    )


def operator() -> Actor:
    """The operating-system user running a command (`tokens …`, `retention …`): `os:<name>`."""
    return Actor(actor=f"os:{os_user()}", request_id=uuid.uuid4().hex[:12])


def os_user() -> str:
    """Who runs this process, as the operating system knows them."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid{os.getuid()}"


def is_audit_type(event_type: str) -> bool:
    return event_type.startswith(PREFIX)


# --------------------------------------------------------------------------- requests


def request_actor(request, principal: auth.Principal | None, settings: config.Settings) -> Actor:
    """The actor of an API request: its principal (None before or without a working token),
    its client address (`client_address`) and its request id (the access log's)."""
    client_ip = client_address(
        request.remote,
        request.headers.getall("X-Forwarded-For", ()),
        trusted_networks(settings.trusted_proxies),
    )
    request_id = structlog.contextvars.get_contextvars().get("request_id", "")
    if principal is None:
        return Actor("", None, client_ip, request_id)
    return Actor(principal.owner, principal.token_id, client_ip, request_id)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.cache
def trusted_networks(text: str) -> tuple[Network, ...]:
    """EH_TRUSTED_PROXIES's networks (checked when the settings were read)."""
    return config.parse_networks(text, "EH_TRUSTED_PROXIES")


def client_address(
    peer: str | None, forwarded_for: Iterable[str], trusted: Sequence[Network]
) -> str:
    """The client's address: the connection's peer, unless it is a trusted proxy
    (EH_TRUSTED_PROXIES); then X-Forwarded-For is read from its right end (the hop each proxy
    appended) and the first address not itself a trusted proxy is the client. An entry that
    is no address stops the walk at the last trusted hop: whatever is left of it was written
    by someone not trusted."""
    address = parse_address(peer)
    if address is None:
        return peer or ""
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    while hops and any(address in network for network in trusted):
        hop = parse_address(hops.pop())
        if hop is None:
            break
        address = hop
    return str(address)


def parse_address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address((text or "").split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


# --------------------------------------------------------------------------- refusals


@dataclasses.dataclass
class Window:
    """One client's refusals in its current minute."""

    started: float
    client_ip: str
    recorded: int = 0
    suppressed: collections.Counter = dataclasses.field(default_factory=collections.Counter)


class DeniedTrail:
    """The refusals' audit events, bounded and off the request's path.

    A refusal is not a transaction: it is recorded by `denied`, which never waits. Per client
    address (auth.client_key: an IPv6 client's /64) at most `per_minute` `audit.access.denied`
    events are recorded a minute; the refusals past that are counted, and when the client's
    minute ends one `audit.access.denied_suppressed` event says how many (by status). Events
    wait in a queue of QUEUE_SIZE for one writer task (`run`), which writes them in batches
    on one pooled connection at a time: a flood of refusals holds neither the event loop nor
    the pool. Past the queue's bound, or with Postgres away, refusal events are dropped and
    logged (`audit.denied_dropped`): best effort beyond the bound, by design."""

    def __init__(
        self,
        pool,
        settings: config.Settings,
        *,
        clock=time.monotonic,
        clients: int = MAX_TRACKED_CLIENTS,
        queue_size: int = QUEUE_SIZE,
    ):
        self.pool, self.settings, self.clock, self.clients = pool, settings, clock, clients
        self.per_minute = settings.audit_denied_per_minute
        self.windows: collections.OrderedDict[str, Window] = collections.OrderedDict()
        self.queue: asyncio.Queue[outbox.Event] = asyncio.Queue(maxsize=queue_size)
        self.dropped = 0

    def denied(self, who: Actor, status: int, *, method: str, path: str) -> None:
        """Record a refusal (or count it, past the client's bound). Never waits."""
        key, now = auth.client_key(who.client_ip), self.clock()
        window = self.windows.get(key)
        if window is not None and now - window.started >= WINDOW_S:
            self.close(self.windows.pop(key))
            window = None
        if window is None:
            window = self.windows[key] = Window(now, who.client_ip)
            while len(self.windows) > self.clients:
                self.close(self.windows.popitem(last=False)[1])
        self.windows.move_to_end(key)
        if window.recorded < self.per_minute:
            window.recorded += 1
            self.put(
                event(
                    DENIED,
                    who,
                    environment=self.settings.environment,
                    object_=path,
                    result=status,
                    method=method,
                )
            )
        else:
            window.suppressed[str(status)] += 1

    def close(self, window: Window) -> None:
        """The end of a client's minute: its suppressed refusals, if any, as one event."""
        if total := sum(window.suppressed.values()):
            who = Actor("", None, window.client_ip, "")
            self.put(
                event(
                    DENIED_SUPPRESSED,
                    who,
                    environment=self.settings.environment,
                    result=max(window.suppressed, key=window.suppressed.__getitem__),
                    suppressed=total,
                    statuses=dict(window.suppressed),
                    recorded=window.recorded,
                    window_s=WINDOW_S,
                )
            )

    def close_expired(self) -> None:
        now = self.clock()
        for key in [k for k, w in self.windows.items() if now - w.started >= WINDOW_S]:
            self.close(self.windows.pop(key))

    def close_all(self) -> None:
        while self.windows:
            self.close(self.windows.popitem(last=False)[1])

    def put(self, audit_event: outbox.Event) -> None:
        try:
            self.queue.put_nowait(audit_event)
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        """The writer: batches from the queue, and each few seconds the minutes that ended.
        On cancellation (the API stopping) every open minute is closed and what waits is
        written, within WRITE_TIMEOUT_S."""
        try:
            while True:
                first = None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(WINDOW_S / 12):
                        first = await self.queue.get()
                if first is not None:
                    await self.write([first, *self.take(WRITE_BATCH - 1)])
                self.close_expired()
                self.report_dropped()
        except asyncio.CancelledError:
            self.close_all()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    while batch := self.take(WRITE_BATCH):
                        await self.write(batch)
            self.report_dropped()
            raise

    def take(self, limit: int) -> list[outbox.Event]:
        batch: list[outbox.Event] = []
        while len(batch) < limit and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch

    async def write(self, batch: list[outbox.Event]) -> None:
        try:
            async with self.pool.connection(timeout=WRITE_TIMEOUT_S) as conn, conn.transaction():
                await outbox.ainsert_events(conn, batch)
        except Exception as exc:  # noqa: BLE001 - best effort: the writer keeps running
            self.dropped += len(batch)
            log.warning("audit.denied_write_failed", events=len(batch), error=str(exc)[:300])

    def report_dropped(self) -> None:
        if self.dropped:
            log.warning("audit.denied_dropped", events=self.dropped)
            self.dropped = 0
