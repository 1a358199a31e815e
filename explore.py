"""Explore: a job's events read back from ClickHouse, where they are meant to be queried — a
filtered page of them in line order, and a histogram of them over time by level.

Owner-wide search builds on these filters and runs through the same Explorer (search.py).

The reads are plain functions that take a clickhouse-connect client (`job_events`,
`job_histogram`; search.py's), so tests call them directly. `Explorer` runs
them for the API: on a small pool of threads (clickhouse-connect blocks), each in one of the
read slots it shares fairly between owners (read_slots.ReadSlots: one owner's flood waits in
its own queue while the others' reads are served), and every query under ClickHouse-side
limits.
The SQL is sql/clickhouse/queries.sql; every value in it is bound server-side.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import functools
import json
import math
import threading
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect

import clickhouse_errors
import core

LEVELS = ("debug", "info", "warning", "error", "critical")
MAX_FILTER_VALUES = 20  # of one repeatable filter (level, service, …)
MAX_TEXT_CHARS = 200
AUTO_BUCKETS = 120  # a histogram without an `interval` has at most this many buckets
MAX_BUCKETS = 1000  # and with one, at most this many
# The intervals a histogram picks from (seconds): round ones, so bars line up with clocks.
INTERVALS_S = (
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
    172800,
    604800,
    2592000,
    7776000,
    31536000,
)
MAX_INTERVAL_S = 31536000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


# sql/clickhouse/queries.sql by name, `$event_filters` (the filters every read shares) put in.
QUERIES = core.load_queries(core.SQL_DIR / "clickhouse" / "queries.sql")


class InvalidFilter(ValueError):
    """A filter or paging parameter that cannot be used; the message says which and why."""


class StreamAbandoned(Exception):
    """A streamed read's client stopped reading: its ClickHouse read ends here."""


class Unavailable(Exception):
    """ClickHouse cannot answer now (unreachable, too slow, or not a server): a 503. Its own
    text (endpoints, the driver's words) goes to the log; clients are told `public_reason`."""

    PUBLIC_REASON = "ClickHouse, where events are read, cannot answer now; retry later"

    def __init__(self, message: str, public_reason: str = PUBLIC_REASON):
        super().__init__(message)
        self.public_reason = public_reason


# Before the relay's first start nothing has made event_log: no event has reached ClickHouse.
NO_EVENT_LOG_YET = (
    "no event has reached ClickHouse yet: its event_log table is made by the "
    "relay when it starts; retry later"
)


# --------------------------------------------------------------------------- filters


@dataclasses.dataclass(frozen=True)
class EventFilters:
    """Which of a job's events a read selects; an empty field selects every event."""

    levels: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    environments: tuple[str, ...] = ()
    since: dt.datetime | None = None  # `from`, inclusive, whole seconds (as event_log keeps)
    until: dt.datetime | None = None  # `to`, exclusive
    text: str = ""  # `q`: a case-insensitive substring of the message

    def parameters(self) -> dict[str, Any]:
        return {
            "levels": list(self.levels),
            "services": list(self.services),
            "event_types": list(self.event_types),
            "environments": list(self.environments),
            "since": clickhouse_time(self.since),
            "until": clickhouse_time(self.until),
            "text": self.text,
        }

    def query_items(self) -> list[tuple[str, str]]:
        """The filters as query parameters again, for a `next` link."""
        items = [("level", v) for v in self.levels] + [("service", v) for v in self.services]
        items += [("event_type", v) for v in self.event_types]
        items += [("environment", v) for v in self.environments]
        items += [
            (name, rfc3339(value))
            for name, value in (("from", self.since), ("to", self.until))
            if value
        ]
        return items + ([("q", self.text)] if self.text else [])


def filters_from_query(query) -> EventFilters:
    """The filters of a request's query (a MultiDict: level, service, event_type and
    environment may repeat); InvalidFilter says what is wrong."""
    return checked_filters(
        levels=query.getall("level", ()),
        services=query.getall("service", ()),
        event_types=query.getall("event_type", ()),
        environments=query.getall("environment", ()),
        since=query.get("from"),
        until=query.get("to"),
        text=query.get("q", ""),
    )


def checked_filters(
    *,
    levels=(),
    services=(),
    event_types=(),
    environments=(),
    since: str | None = None,
    until: str | None = None,
    text: str = "",
) -> EventFilters:
    """Filters from their values as a client sends them (text), each checked."""
    levels = tuple(dict.fromkeys(v.lower() for v in checked_values("level", levels, 16)))
    if unknown := [v for v in levels if v not in LEVELS]:
        raise InvalidFilter(f"level must be one of {', '.join(LEVELS)}, got {unknown[0]!r}")
    since_time, until_time = time_param("from", since), time_param("to", until)
    if since_time and until_time and since_time >= until_time:
        raise InvalidFilter("from must be earlier than to")
    if len(text) > MAX_TEXT_CHARS or not text.isprintable():
        raise InvalidFilter(f"q must be at most {MAX_TEXT_CHARS} printable characters")
    return EventFilters(
        levels,
        checked_values("service", services, 128),
        checked_values("event_type", event_types, 128),
        checked_values("environment", environments, 64),
        since_time,
        until_time,
        text,
    )


def checked_values(name: str, values, max_chars: int) -> tuple[str, ...]:
    values = tuple(values)
    if len(values) > MAX_FILTER_VALUES:
        raise InvalidFilter(f"{name} may be given at most {MAX_FILTER_VALUES} times")
    if any(not 0 < len(v) <= max_chars or not v.isprintable() for v in values):
        raise InvalidFilter(f"{name} must be 1 to {max_chars} printable characters")
    return values


def time_param(name: str, raw: str | None, *, ms: bool = False) -> dt.datetime | None:
    """An RFC 3339 date-time with an offset, as UTC, to the second (or the millisecond)."""
    if raw is None:
        return None
    try:
        value = dt.datetime.fromisoformat(raw.upper()) if len(raw) <= 40 else None
    except ValueError:
        value = None
    if value is None or value.tzinfo is None or not EPOCH <= value < MAX_TIME:
        raise InvalidFilter(
            f"{name} must be an RFC 3339 date-time with an offset between "
            "1970 and 2106, e.g. 2026-11-30T10:00:00Z"
        )
    value = value.astimezone(dt.timezone.utc)
    return value.replace(microsecond=value.microsecond // 1000 * 1000 if ms else 0)


MAX_TIME = dt.datetime(2106, 2, 7, 6, 28, 15, tzinfo=dt.timezone.utc)


def clickhouse_time(value: dt.datetime | None) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else None


def rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- the reads


def job_events(
    ch,
    job_id: uuid.UUID,
    filters: EventFilters,
    *,
    after_line: int = 0,
    limit: int = 100,
    settings: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Up to `limit` of the job's line events after line `after_line`, in line order."""
    result = ch.query(
        QUERIES["job_events"],
        parameters={
            "job_id": str(job_id),
            "after_line": after_line,
            "limit": limit,
            **filters.parameters(),
        },
        settings=dict(settings or {}),
    )
    return [
        event_json(dict(zip(result.column_names, row, strict=True))) for row in result.result_rows
    ]


def event_json(row: dict) -> dict[str, Any]:
    context = json.loads(row["event_json"]).get("context", {})
    return {
        "event_id": row["event_id"],
        "event_type": row["event_type"],
        "timestamp": rfc3339(utc(row["event_date_time"])),
        "environment": row["environment"],
        "level": row["level"],
        "service": row["service"],
        "message": row["message"],
        "context": context,
        "line_no": row["line_no"],
    }


def job_histogram(
    ch,
    job_id: uuid.UUID,
    filters: EventFilters,
    *,
    interval_s: int | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The events the filters select, counted by level in buckets of `interval_s` seconds
    (chosen for at most AUTO_BUCKETS when not given) over the filters' time range, or the
    time the events span where the filters leave it open; empty buckets included, so a chart
    draws them as gaps."""
    parameters = {"job_id": str(job_id), **filters.parameters()}
    settings = dict(settings or {})
    first, last, events = ch.query(
        QUERIES["job_event_range"], parameters=parameters, settings=settings
    ).result_rows[0]
    if not events:
        return no_histogram(interval_s)
    return histogram(
        ch,
        QUERIES["job_histogram"],
        parameters,
        filters.since or utc(first),
        filters.until - dt.timedelta(seconds=1) if filters.until else utc(last),
        interval_s=interval_s,
        settings=settings,
    )


def histogram(
    ch,
    query: str,
    parameters: dict[str, Any],
    first: dt.datetime,
    last: dt.datetime,
    *,
    interval_s: int | None,
    settings: dict[str, Any],
    interval_name: str = "interval",
) -> dict[str, Any]:
    """The buckets `query` counts (start, level, events) with `parameters`, from `first` to
    `last` (the selected events' time range, the filters' from/to where given); `events` is
    what the buckets add up to."""
    span_s = (last - first).total_seconds() + 1
    if interval_s is None:
        interval_s = pick_interval(span_s)
    elif span_s / interval_s > MAX_BUCKETS:
        raise InvalidFilter(
            f"{interval_name} {interval_s} s gives more than {MAX_BUCKETS} "
            f"buckets over these events' {int(span_s)} s; choose a longer one"
        )
    rows = ch.query(
        query, parameters={**parameters, "interval_s": interval_s}, settings=settings
    ).result_rows
    events = sum(row[2] for row in rows)
    if not events:
        return no_histogram(interval_s)
    return {
        "interval_s": interval_s,
        "events": events,
        "buckets": buckets(rows, first, last, interval_s),
    }


def no_histogram(interval_s: int | None) -> dict[str, Any]:
    return {"interval_s": interval_s or INTERVALS_S[0], "events": 0, "buckets": []}


def pick_interval(span_s: float) -> int:
    """The shortest round interval that cuts `span_s` into at most AUTO_BUCKETS buckets."""
    wanted = span_s / AUTO_BUCKETS
    return next((s for s in INTERVALS_S if s >= wanted), math.ceil(wanted))


def buckets(rows, first: dt.datetime, last: dt.datetime, interval_s: int) -> list[dict]:
    counts: dict[dt.datetime, dict[str, int]] = {}
    for start, level, events in rows:
        counts.setdefault(utc(start), {})[level] = events
    start = bucket_start(first, interval_s)
    out = []
    while start <= last:
        out.append({"start": rfc3339(start), "counts": counts.get(start, {})})
        start += dt.timedelta(seconds=interval_s)
    return out


def bucket_start(moment: dt.datetime, interval_s: int) -> dt.datetime:
    """As ClickHouse's toStartOfInterval: a multiple of the interval since the epoch."""
    seconds = int((moment - EPOCH).total_seconds())
    return EPOCH + dt.timedelta(seconds=seconds - seconds % interval_s)


def utc(value: dt.datetime) -> dt.datetime:
    """A DateTime('UTC') as clickhouse-connect returns it, naive or not, as an aware UTC time."""
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


# --------------------------------------------------------------------------- for the API


class Explorer:
    """Runs the reads for the API on threads of their own, each in one of `slots` (a
    read_slots.ReadSlots of as many slots as threads: one owner holds at most its share, the
    rest of its reads wait in its own queue; past that queue or wait, read_slots.NoReadSlot),
    each under ClickHouse's own limits. ClickHouse being unreachable or slow is Unavailable and
    concerns these reads only."""

    def __init__(self, url: str, *, timeout_s: float, slots):
        self.url, self.timeout_s = url, timeout_s
        self.slots = slots
        self.pool = concurrent.futures.ThreadPoolExecutor(slots.total, thread_name_prefix="explore")
        self._client: Any = None  # a clickhouse_connect client, opened on first use
        self._client_lock = threading.Lock()

    @property
    def settings(self) -> dict[str, Any]:
        """Every query's limits: read-only, its time, and the rows it may return."""
        return {
            "readonly": 2,
            "max_execution_time": self.timeout_s,
            "max_result_rows": 100_000,
            "result_overflow_mode": "throw",
            "output_format_json_quote_64bit_integers": 0,
        }

    async def events(
        self, owner: str, job_id: uuid.UUID, filters: EventFilters, **paging
    ) -> list[dict]:
        return await self.run(owner, job_events, job_id, filters, **paging)

    async def histogram(
        self, owner: str, job_id: uuid.UUID, filters: EventFilters, interval_s: int | None
    ) -> dict:
        return await self.run(owner, job_histogram, job_id, filters, interval_s=interval_s)

    async def stream(
        self, owner: str, chunks: Callable[..., Iterator[bytes]], *args, **kwargs
    ) -> AsyncGenerator[bytes, None]:
        """`chunks(client, *args, settings=…, **kwargs)` run as one read (one of `owner`'s
        slots, for as long as it streams: search.export_chunks), handed over through a small
        queue, so a slow client slows ClickHouse's sending rather than filling memory. A
        refusal or Unavailable before the first chunk is raised as for any read; a client
        gone stops the read within half a second (StreamAbandoned in its thread)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=4)
        gone = threading.Event()

        def hand_over(chunk: bytes | None) -> None:
            future = asyncio.run_coroutine_threadsafe(queue.put(chunk), loop)
            while not gone.is_set():
                try:
                    return future.result(timeout=0.5)
                except concurrent.futures.TimeoutError:
                    continue
            future.cancel()
            raise StreamAbandoned("the client went away")

        def produce(ch, *, settings):
            for chunk in chunks(ch, *args, settings=settings, **kwargs):
                hand_over(chunk)
            hand_over(None)

        task = asyncio.ensure_future(self.run(owner, produce))
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done() and task.done() and (failure := task.exception()):
                    getter.cancel()
                    raise failure
                chunk = await getter
                if chunk is None:
                    return
                yield chunk
        finally:
            gone.set()
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def run(self, owner: str, read: Callable, *args, **kwargs):
        """`read` in one of `owner`'s read slots, on a thread. The slot is held until the
        thread is done, even when the request goes away first: a client that asks and hangs
        up again and again cannot keep more ClickHouse queries running than its share."""
        await self.slots.acquire(owner)
        try:
            call = functools.partial(self.call, read, *args, **kwargs)
            running = asyncio.get_running_loop().run_in_executor(self.pool, call)
        except BaseException:
            self.slots.release(owner)
            raise
        running.add_done_callback(functools.partial(self.finished, owner))
        return await asyncio.shield(running)

    def finished(self, owner: str, running: asyncio.Future) -> None:
        """A read's thread is done: its slot is free; its error, if no one waits for it any
        more, is taken here (not reported as never retrieved)."""
        self.slots.release(owner)
        if not running.cancelled():
            running.exception()

    def call(self, read: Callable, *args, **kwargs):
        try:
            return read(self.client(), *args, settings=self.settings, **kwargs)
        except (InvalidFilter, Unavailable):
            raise
        except Exception as exc:
            public = (
                NO_EVENT_LOG_YET
                if clickhouse_errors.is_missing_table(exc)
                else Unavailable.PUBLIC_REASON
            )
            raise Unavailable(f"ClickHouse did not answer: {str(exc)[:300]}", public) from exc

    def client(self):
        with self._client_lock:
            if self._client is None:
                if urlsplit(self.url).scheme not in ("http", "https"):
                    raise Unavailable(
                        "reading events needs a ClickHouse server: set "
                        "CLICKHOUSE_READ_URL (or CLICKHOUSE_URL) to http(s)://…"
                    )
                self._client = clickhouse_connect.get_client(
                    dsn=self.url,
                    autogenerate_session_id=False,
                    connect_timeout=3,
                    send_receive_timeout=self.timeout_s + 5,
                )
            return self._client

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
