"""Explore: a job's events read back from ClickHouse, where they are meant to be queried — a
filtered page of them in line order, and a histogram of them over time by level.

Owner-wide search (issue 23) is here too: an owner's events across their jobs
(`search_events`, keyset-paged by cursor), their histogram, facets and export, within the
owner's `SearchScope` (`search_scope`, read from Postgres at each search).

The reads are plain functions that take a clickhouse-connect client (`job_events`,
`job_histogram`, `search_*`, `export_chunks`), so tests call them directly. `Explorer` runs
them for the API: on a small pool of threads (clickhouse-connect blocks), each in one of the
read slots it shares fairly between owners (read_slots.ReadSlots: one owner's flood waits in
its own queue while the others' reads are served), and every query under ClickHouse-side
limits.
The SQL is sql/clickhouse/queries.sql; every value in it is bound server-side.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import csv
import dataclasses
import datetime as dt
import functools
import io
import json
import math
import re
import threading
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
import orjson
from psycopg.rows import tuple_row

import core

LEVELS = ("debug", "info", "warning", "error", "critical")
MAX_FILTER_VALUES = 20  # of one repeatable filter (level, service, …)
MAX_TEXT_CHARS = 200
AUTO_BUCKETS = 120  # a histogram without an `interval` has at most this many buckets
MAX_BUCKETS = 1000  # and with one, at most this many
# The intervals a histogram picks from (seconds): round ones, so bars line up with clocks.
INTERVALS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
               43200, 86400, 172800, 604800, 2592000, 7776000, 31536000)
MAX_INTERVAL_S = 31536000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


# sql/clickhouse/queries.sql by name, `$event_filters` (the filters every read shares) put in.
QUERIES = core.load_queries(core.SQL_DIR / "clickhouse" / "queries.sql")


class InvalidFilter(ValueError):
    """A filter or paging parameter that cannot be used; the message says which and why."""


class Unavailable(Exception):
    """ClickHouse cannot answer now (unreachable, too slow, or not a server): a 503. Its own
    text (endpoints, the driver's words) goes to the log; clients are told PUBLIC_REASON."""

    PUBLIC_REASON = "ClickHouse, where events are read, cannot answer now; retry later"


class ExportAbandoned(Exception):
    """An export's client stopped reading: its ClickHouse read ends here."""


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
        return {"levels": list(self.levels), "services": list(self.services),
                "event_types": list(self.event_types), "environments": list(self.environments),
                "since": clickhouse_time(self.since), "until": clickhouse_time(self.until),
                "text": self.text}

    def query_items(self) -> list[tuple[str, str]]:
        """The filters as query parameters again, for a `next` link."""
        items = [("level", v) for v in self.levels] + [("service", v) for v in self.services]
        items += [("event_type", v) for v in self.event_types]
        items += [("environment", v) for v in self.environments]
        items += [(name, rfc3339(value)) for name, value in (("from", self.since),
                                                             ("to", self.until)) if value]
        return items + ([("q", self.text)] if self.text else [])


def filters_from_query(query) -> EventFilters:
    """The filters of a request's query (a MultiDict: level, service, event_type and
    environment may repeat); InvalidFilter says what is wrong."""
    return checked_filters(
        levels=query.getall("level", ()), services=query.getall("service", ()),
        event_types=query.getall("event_type", ()),
        environments=query.getall("environment", ()),
        since=query.get("from"), until=query.get("to"), text=query.get("q", ""))


def checked_filters(*, levels=(), services=(), event_types=(), environments=(),
                    since: str | None = None, until: str | None = None,
                    text: str = "") -> EventFilters:
    """Filters from their values as a client sends them (text), each checked."""
    levels = tuple(dict.fromkeys(v.lower() for v in checked_values("level", levels, 16)))
    if unknown := [v for v in levels if v not in LEVELS]:
        raise InvalidFilter(f"level must be one of {', '.join(LEVELS)}, got {unknown[0]!r}")
    since_time, until_time = time_param("from", since), time_param("to", until)
    if since_time and until_time and since_time >= until_time:
        raise InvalidFilter("from must be earlier than to")
    if len(text) > MAX_TEXT_CHARS or not text.isprintable():
        raise InvalidFilter(f"q must be at most {MAX_TEXT_CHARS} printable characters")
    return EventFilters(levels, checked_values("service", services, 128),
                        checked_values("event_type", event_types, 128),
                        checked_values("environment", environments, 64), since_time, until_time, text)


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
        raise InvalidFilter(f"{name} must be an RFC 3339 date-time with an offset between "
                            "1970 and 2106, e.g. 2026-11-30T10:00:00Z")
    value = value.astimezone(dt.timezone.utc)
    return value.replace(microsecond=value.microsecond // 1000 * 1000 if ms else 0)


MAX_TIME = dt.datetime(2106, 2, 7, 6, 28, 15, tzinfo=dt.timezone.utc)


def clickhouse_time(value: dt.datetime | None) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else None


def rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- the reads


def job_events(ch, job_id: uuid.UUID, filters: EventFilters, *, after_line: int = 0,
               limit: int = 100, settings: Mapping[str, Any] | None = None) -> list[dict]:
    """Up to `limit` of the job's line events after line `after_line`, in line order."""
    result = ch.query(QUERIES["job_events"], parameters={
        "job_id": str(job_id), "after_line": after_line, "limit": limit, **filters.parameters()},
        settings=dict(settings or {}))
    return [event_json(dict(zip(result.column_names, row, strict=True))) for row in result.result_rows]


def event_json(row: dict) -> dict[str, Any]:
    context = json.loads(row["event_json"]).get("context", {})
    return {"event_id": row["event_id"], "event_type": row["event_type"],
            "timestamp": rfc3339(utc(row["event_date_time"])), "environment": row["environment"],
            "level": row["level"], "service": row["service"], "message": row["message"],
            "context": context, "line_no": row["line_no"]}


def job_histogram(ch, job_id: uuid.UUID, filters: EventFilters, *, interval_s: int | None = None,
                  settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The events the filters select, counted by level in buckets of `interval_s` seconds
    (chosen for at most AUTO_BUCKETS when not given) over the filters' time range, or the
    time the events span where the filters leave it open; empty buckets included, so a chart
    draws them as gaps."""
    parameters = {"job_id": str(job_id), **filters.parameters()}
    settings = dict(settings or {})
    first, last, events = ch.query(QUERIES["job_event_range"], parameters=parameters,
                                   settings=settings).result_rows[0]
    if not events:
        return no_histogram(interval_s)
    return histogram(ch, QUERIES["job_histogram"], parameters, filters.since or utc(first),
                     filters.until - dt.timedelta(seconds=1) if filters.until else utc(last),
                     interval_s=interval_s, settings=settings)


def histogram(ch, query: str, parameters: dict[str, Any], first: dt.datetime,
              last: dt.datetime, *, interval_s: int | None, settings: dict[str, Any],
              interval_name: str = "interval") -> dict[str, Any]:
    """The buckets `query` counts (start, level, events) with `parameters`, from `first` to
    `last` (the selected events' time range, the filters' from/to where given); `events` is
    what the buckets add up to."""
    span_s = (last - first).total_seconds() + 1
    if interval_s is None:
        interval_s = pick_interval(span_s)
    elif span_s / interval_s > MAX_BUCKETS:
        raise InvalidFilter(f"{interval_name} {interval_s} s gives more than {MAX_BUCKETS} "
                            f"buckets over these events' {int(span_s)} s; choose a longer one")
    rows = ch.query(query, parameters={**parameters, "interval_s": interval_s},
                    settings=settings).result_rows
    events = sum(row[2] for row in rows)
    if not events:
        return no_histogram(interval_s)
    return {"interval_s": interval_s, "events": events,
            "buckets": buckets(rows, first, last, interval_s)}


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


# --------------------------------------------------------------------------- search


CONTEXT_SLOTS = 8  # context.<path> filters of one read (sql/clickhouse/queries.sql's slots)
MAX_JOB_IDS = 100  # job_id values of one read
MAX_CONTEXT_VALUE_CHARS = 256
# A dotted path into an event's context: 1 to 8 keys of letters, digits, `_`, `-`, `@`, `:`.
CONTEXT_PATH = re.compile(r"[A-Za-z0-9_@:-]{1,64}(?:\.[A-Za-z0-9_@:-]{1,64}){0,7}")
SEARCH_FILTER_NAMES = frozenset({"from", "to", "level", "service", "event_type", "environment",
                                 "job_id", "q"})
ORDERS = ("desc", "asc")
# What a facet counts, per field: fixed expressions (the context's through a bound path).
FACETS = {"level": "level", "service": "service", "event_type": "event_type",
          "environment": "environment", "job_id": "toString(job_id)",
          "context": "toString(getSubcolumn(event_context, concat('context.', {facet_path:String})))"}
MAX_FACET_VALUES = 100
EXPORT_FORMATS = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
EXPORT_TIMEOUT_S = 600.0  # an export streams for as long as its client reads, up to this
EXPORT_BLOCK_ROWS = 8192  # rows ClickHouse sends per block: what a CSV export holds at once
EXPORT_CHUNK_BYTES = 256 * 1024  # of an NDJSON export, read and handed over at a time
CSV_COLUMNS = ("event_id", "job_id", "line_no", "timestamp", "level", "service", "event_type",
               "environment", "message", "context")
LAST_MS = "2106-02-07 06:28:16.000"  # after every event time event_log can hold
FIRST_MS = "1970-01-01 00:00:00.000"
ZERO_UUID, MAX_UUID = str(uuid.UUID(int=0)), str(uuid.UUID(int=2**128 - 1))


@dataclasses.dataclass(frozen=True)
class SearchScope:
    """Whose events a search sees: the owner's (admins too see only their own jobs' events),
    less `hidden`, the owner's jobs deleted while ClickHouse may still hold their events."""

    owner: str
    hidden: tuple[uuid.UUID, ...] = ()

    def parameters(self) -> dict[str, Any]:
        return {"owner": self.owner, "hidden": [str(j) for j in self.hidden]}


async def search_scope(pool, owner: str) -> SearchScope:
    """The scope of `owner`'s searches now. Read at each search from Postgres, where a
    deletion commits with the job's own rows: its events are hidden from that moment until
    the relay has deleted them from event_log (it records that in the same transaction)."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(core.QUERIES["hidden_jobs_of_owner"], {"owner": owner})
        return SearchScope(owner, tuple(job_id for (job_id,) in await cur.fetchall()))


@dataclasses.dataclass(frozen=True)
class SearchFilters:
    """Which of an owner's events a search selects: values of one field OR together, fields
    AND. Times to the millisecond; `context` is (dotted path, value) pairs, all of which hold."""

    levels: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    environments: tuple[str, ...] = ()
    job_ids: tuple[uuid.UUID, ...] = ()
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    text: str = ""
    context: tuple[tuple[str, str], ...] = ()

    def parameters(self) -> dict[str, Any]:
        slots = list(self.context) + [("", "")] * (CONTEXT_SLOTS - len(self.context))
        return {"levels": list(self.levels), "services": list(self.services),
                "event_types": list(self.event_types), "environments": list(self.environments),
                "job_ids": [str(j) for j in self.job_ids], "since": clickhouse_ms(self.since),
                "until": clickhouse_ms(self.until), "text": self.text,
                **{f"cp{n}": path for n, (path, _) in enumerate(slots, 1)},
                **{f"cv{n}": value for n, (_, value) in enumerate(slots, 1)}}

    def query_items(self) -> list[tuple[str, str]]:
        """The filters as query parameters again, for a `next` link."""
        items = [("level", v) for v in self.levels] + [("service", v) for v in self.services]
        items += [("event_type", v) for v in self.event_types]
        items += [("environment", v) for v in self.environments]
        items += [("job_id", str(v)) for v in self.job_ids]
        items += [(name, rfc3339_ms(value)) for name, value in (("from", self.since),
                                                                ("to", self.until)) if value]
        items += [(f"context.{path}", value) for path, value in self.context]
        return items + ([("q", self.text)] if self.text else [])


def search_filters_from_query(query, *, also: frozenset[str] = frozenset()) -> SearchFilters:
    """The filters of a search request's query (a MultiDict); any parameter that is neither
    a filter nor one of `also` (the route's own: limit, order, …) is refused by name."""
    context = []
    for name, value in query.items():
        if name.startswith("context."):
            context.append((name.removeprefix("context."), value))
        elif name not in SEARCH_FILTER_NAMES and name not in also:
            raise InvalidFilter(f"{name} is not a parameter of this route")
    return checked_search_filters(
        levels=query.getall("level", ()), services=query.getall("service", ()),
        event_types=query.getall("event_type", ()), environments=query.getall("environment", ()),
        job_ids=query.getall("job_id", ()), since=query.get("from"), until=query.get("to"),
        text=query.get("q", ""), context=context)


def checked_search_filters(*, levels=(), services=(), event_types=(), environments=(),
                           job_ids=(), since: str | None = None, until: str | None = None,
                           text: str = "", context=()) -> SearchFilters:
    """Search filters from their values as a client sends them (text), each checked; the
    shared ones as a job's reads check them."""
    base = checked_filters(levels=levels, services=services, event_types=event_types,
                           environments=environments, text=text)
    since_time, until_time = time_param("from", since, ms=True), time_param("to", until, ms=True)
    if since_time and until_time and since_time >= until_time:
        raise InvalidFilter("from must be earlier than to")
    return SearchFilters(base.levels, base.services, base.event_types, base.environments,
                         checked_job_ids(job_ids), since_time, until_time, base.text,
                         checked_context(context))


def checked_job_ids(values) -> tuple[uuid.UUID, ...]:
    values = tuple(values)
    if len(values) > MAX_JOB_IDS:
        raise InvalidFilter(f"job_id may be given at most {MAX_JOB_IDS} times")
    try:
        return tuple(dict.fromkeys(uuid.UUID(v) for v in values if len(v) <= 36))
    except ValueError:
        raise InvalidFilter("job_id must be a job's id (a UUID)") from None


def checked_context(pairs) -> tuple[tuple[str, str], ...]:
    pairs = tuple((str(path), str(value)) for path, value in pairs)
    if len(pairs) > CONTEXT_SLOTS:
        raise InvalidFilter(f"context.<path> may be given at most {CONTEXT_SLOTS} times")
    for path, value in pairs:
        if not CONTEXT_PATH.fullmatch(path):
            raise InvalidFilter(f"context.{path[:80]}: a path is 1 to 8 keys joined by '.', each "
                                "1 to 64 letters, digits, '_', '-', '@' or ':'")
        if len(value) > MAX_CONTEXT_VALUE_CHARS or not value.isprintable():
            raise InvalidFilter(f"context.{path} must be at most {MAX_CONTEXT_VALUE_CHARS} "
                                "printable characters")
    return pairs


def clickhouse_ms(value: dt.datetime | None) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}" if value else None


def rfc3339_ms(value: dt.datetime) -> str:
    value = utc(value)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


# A keyset position in a search's order: the last event's time (ms since the epoch), job and
# line, with the order it belongs to. Opaque to clients (base64url of JSON); one that does not
# decode to exactly that, or belongs to the other order, is an InvalidFilter (a 422).


def encode_cursor(order: str, event: Mapping[str, Any]) -> str:
    moment = dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    position = [order, (moment - EPOCH) // dt.timedelta(milliseconds=1), event["job_id"],
                event["line_no"]]
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def decode_cursor(raw: str, order: str) -> dict[str, Any]:
    """The query parameters of the keyset position `raw` (an `after` cursor)."""
    try:
        position = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        kind, ms, job_id, line_no = position
        if not (kind in ORDERS and type(ms) is int and type(line_no) is int
                and 0 <= ms < MAX_MS and 1 <= line_no < 2**63 and len(job_id) == 36):
            raise ValueError(position)
        job_id = str(uuid.UUID(job_id))
    except Exception:  # noqa: BLE001 - whatever a forged cursor makes the decoding raise
        raise InvalidFilter("after is not a cursor this API gave (follow `next` as it is)") from None
    if kind != order:
        raise InvalidFilter(f"after is a cursor of order={kind}, not of order={order}")
    moment = EPOCH + dt.timedelta(milliseconds=ms)
    return {"after_time": clickhouse_ms(moment), "after_job": job_id, "after_line": line_no}


MAX_MS = int((MAX_TIME - EPOCH).total_seconds()) * 1000 + 1000


# The keyset position before every event, in each order.
START = {"desc": {"after_time": LAST_MS, "after_job": MAX_UUID, "after_line": 2**64 - 1},
         "asc": {"after_time": FIRST_MS, "after_job": ZERO_UUID, "after_line": 0}}


def search_events(ch, scope: SearchScope, filters: SearchFilters, *, order: str = "desc",
                  after: str | None = None, limit: int = 100,
                  settings: Mapping[str, Any] | None = None) -> list[dict]:
    """Up to `limit` of the owner's line events the filters select, newest first (or oldest,
    order="asc"), after the keyset cursor `after` (from encode_cursor)."""
    if order not in ORDERS:
        raise InvalidFilter("order must be desc or asc")
    position = decode_cursor(after, order) if after else START[order]
    result = ch.query(events_query(order), parameters={
        **scope.parameters(), **filters.parameters(), **position, "limit": limit},
        settings=dict(settings or {}))
    return [search_event_json(dict(zip(result.column_names, row, strict=True))) for row in result.result_rows]


def events_query(order: str, columns: str = "search_columns") -> str:
    return QUERIES[f"search_events_{order}"].replace("$columns", QUERIES[columns])


def search_event_json(row: dict) -> dict[str, Any]:
    return {"event_id": row["event_id"], "job_id": row["job"], "line_no": row["line_no"],
            "timestamp": row["timestamp"], "level": row["level"],
            "service": row["service"], "event_type": row["event_type"],
            "environment": row["environment"], "message": row["message"],
            "context": json.loads(row["context"])}


def search_histogram(ch, scope: SearchScope, filters: SearchFilters, *,
                     interval_s: int | None = None,
                     settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """As job_histogram, over the owner's events the search filters select. Where from or
    to is not given, the first or last selected event's time is read in the projection's
    order (a read that stops at the first match), not by aggregating every selected row."""
    parameters = {**scope.parameters(), **filters.parameters()}
    settings = dict(settings or {})
    first = filters.since or search_time(ch, "asc", parameters, settings)
    last = (filters.until - dt.timedelta(milliseconds=1) if filters.until
            else search_time(ch, "desc", parameters, settings))
    if first is None or last is None:
        return no_histogram(interval_s)
    return histogram(ch, QUERIES["search_histogram"], parameters, first, last,
                     interval_s=interval_s, settings=settings, interval_name="interval_s")


def search_time(ch, order: str, parameters: dict, settings: dict) -> dt.datetime | None:
    """The time of the first (asc) or last (desc) event the parameters select, or None."""
    rows = ch.query(events_query(order, "search_time"), settings=settings,
                    parameters={**parameters, **START[order], "limit": 1}).result_rows
    return utc(rows[0][0]) if rows else None


def search_facets(ch, scope: SearchScope, filters: SearchFilters, field: str, *,
                  limit: int = 10, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `limit` commonest values of `field` (level, service, event_type, environment,
    job_id or context.<path>) among the events the filters select, most events first, and
    `other`: the events with another value. Events without a value at a context path are
    not counted."""
    path = field.removeprefix("context.") if field.startswith("context.") else ""
    if path:
        checked_context([(path, "")])
    elif field not in FACETS or field == "context":
        raise InvalidFilter(f"field must be one of {', '.join(list(FACETS)[:-1])} or "
                            "context.<path>")
    query = QUERIES["search_facet"].replace("$facet_value", FACETS["context" if path else field])
    rows = ch.query(query, parameters={**scope.parameters(), **filters.parameters(),
                                       "facet_path": path, "limit": limit},
                    settings=dict(settings or {})).result_rows
    values = [{"value": value, "count": events} for value, events, _ in rows]
    total = rows[0][2] if rows else 0
    return {"field": field, "values": values, "other": total - sum(v["count"] for v in values)}


def export_chunks(ch, scope: SearchScope, filters: SearchFilters, *, fmt: str = "ndjson",
                  order: str = "desc", max_rows: int, settings: Mapping[str, Any] | None = None
                  ) -> Iterator[bytes]:
    """Every event the filters select, as NDJSON lines or CSV rows, a ClickHouse block at a
    time (never all at once); past `max_rows`, a last line says the export stopped there."""
    if order not in ORDERS:
        raise InvalidFilter("order must be desc or asc")
    # prefer_column_name_to_alias: the line's "job_id" (text) is an alias; filters and the
    # order mean the column.
    settings = {**(settings or {}), "max_result_rows": max_rows + 1,
                "max_execution_time": EXPORT_TIMEOUT_S, "max_block_size": EXPORT_BLOCK_ROWS,
                "prefer_column_name_to_alias": 1}
    parameters = {**scope.parameters(), **filters.parameters(), **START[order],
                  "limit": max_rows + 1}
    chunks = (csv_chunks(ch, events_query(order), parameters, settings, max_rows) if fmt == "csv" else
              ndjson_chunks(ch, events_query(order, "export_ndjson_columns"), parameters,
                            settings, max_rows))
    seen = 0  # rows ClickHouse sent: at most max_rows + 1, the one past saying there are more
    for chunk, rows in chunks:
        seen += rows
        if chunk:
            yield chunk
    if seen > max_rows:
        yield truncation_line(fmt, max_rows)


def ndjson_chunks(ch, query: str, parameters: dict, settings: dict,
                  max_rows: int) -> Iterator[tuple[bytes, int]]:
    """The NDJSON lines as ClickHouse writes them (JSONEachRow: no decoding here), cut after
    `max_rows`, with how many rows each chunk ends (one more, past the cut, if there are)."""
    response = ch.raw_stream(query, parameters=parameters, settings=settings, fmt="JSONEachRow")
    try:
        lines, tail = 0, b""
        for data in response.stream(EXPORT_CHUNK_BYTES):
            data, tail = tail + data, b""
            ends = data.count(b"\n")
            if lines + ends > max_rows:  # cut after the max_rows-th line; the rest is the one past
                cut = -1
                for _ in range(max_rows - lines):
                    cut = data.index(b"\n", cut + 1)
                yield data[:cut + 1], max_rows - lines + 1
                return
            lines += ends
            cut = data.rfind(b"\n") + 1
            data, tail = data[:cut], data[cut:]  # whole lines only: a failure ends cleanly
            if data:
                yield data, ends
        if tail.strip():
            raise Unavailable(f"ClickHouse's export ended mid-line: {tail[:300]!r}")
    finally:
        response.close()


def csv_chunks(ch, query: str, parameters: dict, settings: dict,
               max_rows: int) -> Iterator[tuple[bytes, int]]:
    """CSV rows from ClickHouse's blocks (a message may hold a newline, so rows are counted
    as rows, not lines), cut after `max_rows`; the header once ClickHouse has taken the query."""
    with ch.query_row_block_stream(query, parameters=parameters, settings=settings) as stream:
        yield csv_text([CSV_COLUMNS]), 0
        rows = 0
        for block in stream:
            keep = block[:max(max_rows - rows, 0)]
            rows += len(block)
            yield csv_text(keep) if keep else b"", len(block)


def truncation_line(fmt: str, max_rows: int) -> bytes:
    detail = (f"export stopped after {max_rows} events (EH_EXPORT_MAX_ROWS); more match: "
              "narrow the filters, or export the rest with from/to")
    if fmt == "csv":
        return f"# truncated: {detail}\n".encode()
    return orjson.dumps({"truncated": True, "detail": detail}) + b"\n"


def failure_line(fmt: str) -> bytes:
    """The last line of an export ClickHouse failed partway: the events before it stand."""
    detail = f"export cut short: {Unavailable.PUBLIC_REASON}"
    if fmt == "csv":
        return f"# error: {detail}\n".encode()
    return orjson.dumps({"error": detail}) + b"\n"


def csv_text(rows) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()


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
        self.pool = concurrent.futures.ThreadPoolExecutor(slots.total,
                                                          thread_name_prefix="explore")
        self._client: Any = None  # a clickhouse_connect client, opened on first use
        self._client_lock = threading.Lock()

    @property
    def settings(self) -> dict[str, Any]:
        """Every query's limits: read-only, its time, and the rows it may return."""
        return {"readonly": 2, "max_execution_time": self.timeout_s,
                "max_result_rows": 100_000, "result_overflow_mode": "throw",
                "output_format_json_quote_64bit_integers": 0}

    async def events(self, owner: str, job_id: uuid.UUID, filters: EventFilters,
                     **paging) -> list[dict]:
        return await self.run(owner, job_events, job_id, filters, **paging)

    async def histogram(self, owner: str, job_id: uuid.UUID, filters: EventFilters,
                        interval_s: int | None) -> dict:
        return await self.run(owner, job_histogram, job_id, filters, interval_s=interval_s)

    async def search(self, scope: SearchScope, filters: SearchFilters, **paging) -> list[dict]:
        return await self.run(scope.owner, search_events, scope, filters, **paging)

    async def search_histogram(self, scope: SearchScope, filters: SearchFilters,
                               interval_s: int | None) -> dict:
        return await self.run(scope.owner, search_histogram, scope, filters, interval_s=interval_s)

    async def facets(self, scope: SearchScope, filters: SearchFilters, field: str,
                     limit: int) -> dict:
        return await self.run(scope.owner, search_facets, scope, filters, field, limit=limit)

    async def export(self, scope: SearchScope, filters: SearchFilters,
                     **options) -> AsyncGenerator[bytes, None]:
        """export_chunks run as one read (one of the threads, for as long as it streams),
        handed over through a small queue, so a slow client slows ClickHouse's sending
        rather than filling memory. Busy or Unavailable before the first chunk are raised as
        for any read; a client gone stops the read within half a second."""
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
            raise ExportAbandoned("the client went away")

        def produce(ch, *, settings):
            for chunk in export_chunks(ch, scope, filters, settings=settings, **options):
                hand_over(chunk)
            hand_over(None)

        task = asyncio.ensure_future(self.run(scope.owner, produce))
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
            raise Unavailable(f"ClickHouse did not answer: {str(exc)[:300]}") from exc

    def client(self):
        with self._client_lock:
            if self._client is None:
                if urlsplit(self.url).scheme not in ("http", "https"):
                    raise Unavailable("reading events needs a ClickHouse server: set "
                                      "CLICKHOUSE_READ_URL (or CLICKHOUSE_URL) to http(s)://…")
                self._client = clickhouse_connect.get_client(
                    dsn=self.url, autogenerate_session_id=False, connect_timeout=3,
                    send_receive_timeout=self.timeout_s + 5)
            return self._client

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
