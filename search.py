"""Owner-wide search: an owner's events across all their jobs (`search_events`, keyset-paged by
cursor), their histogram, facets and export (`export_chunks`), within the owner's
`SearchScope` (`search_scope`, read from Postgres at each search: a job deleted a moment ago
is out at once). Plain functions of a clickhouse-connect client, as explore.py's job reads
are; the API runs them through explore.Explorer, in the owner's read slots. The SQL is
sql/clickhouse/queries.sql's `search_*`."""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime as dt
import io
import json
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
from psycopg.rows import tuple_row

import audit as audit_trail
import core
from explore import (
    EPOCH,
    MAX_TIME,
    QUERIES,
    InvalidFilter,
    Unavailable,
    checked_filters,
    histogram,
    no_histogram,
    pick_interval,
    time_param,
    utc,
)

CONTEXT_SLOTS = 8  # context.<path> filters of one read (sql/clickhouse/queries.sql's slots)
MAX_JOB_IDS = 100  # job_id values of one read
MAX_CONTEXT_VALUE_CHARS = 256
# A dotted path into an event's context: 1 to 8 keys of letters, digits, `_`, `-`, `@`, `:`.
CONTEXT_PATH = re.compile(r"[A-Za-z0-9_@:-]{1,64}(?:\.[A-Za-z0-9_@:-]{1,64}){0,7}")
EXCLUDABLE = ("level", "service", "event_type", "environment", "job_id")  # not.<field>=<value>
SEARCH_FILTER_NAMES = frozenset(
    {
        "from",
        "to",
        "level",
        "service",
        "event_type",
        "environment",
        "job_id",
        "q",
        *(f"not.{field}" for field in EXCLUDABLE),
    }
)
ORDERS = ("desc", "asc")
# What a facet counts, per field: fixed expressions (the context's through a bound path).
FACETS = {
    "level": "level",
    "service": "service",
    "event_type": "event_type",
    "environment": "environment",
    "job_id": "toString(job_id)",
    "context": "toString(getSubcolumn(event_context, concat('context.', {facet_path:String})))",
}
MAX_FACET_VALUES = 100
EXPORT_FORMATS = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
EXPORT_TIMEOUT_S = 600.0  # an export streams for as long as its client reads, up to this
EXPORT_BLOCK_ROWS = 8192  # rows ClickHouse sends per block: what a CSV export holds at once
EXPORT_CHUNK_BYTES = 256 * 1024  # of an NDJSON export, read and handed over at a time
CSV_COLUMNS = (
    "event_id",
    "job_id",
    "line_no",
    "timestamp",
    "level",
    "service",
    "event_type",
    "environment",
    "message",
    "context",
)
LAST_MS = "2106-02-07 06:28:16.000"  # after every event time event_log can hold
FIRST_MS = "1970-01-01 00:00:00.000"
ZERO_UUID, MAX_UUID = str(uuid.UUID(int=0)), str(uuid.UUID(int=2**128 - 1))


@dataclasses.dataclass(frozen=True)
class SearchScope:
    """Whose events a search sees: the owner's (admins too see only their own jobs' events),
    less `hidden`, the owner's jobs deleted while ClickHouse may still hold their events.
    A search of audit events (SearchFilters.audit) sees those of the owner's own actions, or
    everyone's with `every_owner` (an admin's)."""

    owner: str
    hidden: tuple[uuid.UUID, ...] = ()
    every_owner: bool = False

    def parameters(self, audit: bool = False) -> dict[str, Any]:
        if audit:
            return {"owner": self.owner, "every_owner": int(self.every_owner)}
        return {"owner": self.owner, "hidden": [str(j) for j in self.hidden]}


async def search_scope(pool, owner: str, *, every_owner: bool = False) -> SearchScope:
    """The scope of `owner`'s searches now. Read at each search from Postgres, where a
    deletion commits with the job's own rows: its events are hidden from that moment until
    the relay has deleted them from event_log (it records that in the same transaction)."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(core.QUERIES["hidden_jobs_of_owner"], {"owner": owner})
        return SearchScope(owner, tuple(job_id for (job_id,) in await cur.fetchall()), every_owner)


def scoped(text: str, audit: bool) -> str:
    """A search query's text for line events or for audit events: the scope's block in for
    `$scope`, the keyset's tie-break column in for `$tiebreak`."""
    scope = core.without_comments(QUERIES["audit_scope" if audit else "search_scope"])
    tiebreak = "event_log.event_id" if audit else "job_id"
    return text.replace("$scope", scope).replace("$tiebreak", tiebreak)


@dataclasses.dataclass(frozen=True)
class Excluded:
    """Values a search leaves out (`not.<field>`): an event with any of them is not selected."""

    levels: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    environments: tuple[str, ...] = ()
    job_ids: tuple[uuid.UUID, ...] = ()

    def parameters(self) -> dict[str, Any]:
        return {
            "not_levels": list(self.levels),
            "not_services": list(self.services),
            "not_event_types": list(self.event_types),
            "not_environments": list(self.environments),
            "not_job_ids": [str(j) for j in self.job_ids],
        }

    def query_items(self) -> list[tuple[str, str]]:
        values = (self.levels, self.services, self.event_types, self.environments, self.job_ids)
        return [
            (f"not.{field}", str(v))
            for field, vs in zip(EXCLUDABLE, values, strict=True)
            for v in vs
        ]


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
    excluded: Excluded = Excluded()

    @property
    def audit(self) -> bool:
        """The filters select audit events (`audit.*` or `audit.<type>`s), which a search
        reads apart from line events (SearchScope, `audit_scope`)."""
        return bool(self.event_types) and all(map(audit_trail.is_audit_type, self.event_types))

    def parameters(self) -> dict[str, Any]:
        slots = list(self.context) + [("", "")] * (CONTEXT_SLOTS - len(self.context))
        event_types = [t for t in self.event_types if t != audit_trail.ALL]
        return {
            "levels": list(self.levels),
            "services": list(self.services),
            "event_types": event_types,
            "environments": list(self.environments),
            "job_ids": [str(j) for j in self.job_ids],
            "since": clickhouse_ms(self.since),
            "until": clickhouse_ms(self.until),
            "text": self.text,
            **{f"cp{n}": path for n, (path, _) in enumerate(slots, 1)},
            **{f"cv{n}": value for n, (_, value) in enumerate(slots, 1)},
            **{f"ct{n}": context_token(value) for n, (_, value) in enumerate(slots, 1)},
            **self.excluded.parameters(),
        }

    def by_hour(self) -> bool:
        """Whether `by_hour` can answer these filters: no text or context filter, and
        from/to (where given) on the hour."""
        return not (self.text or self.context) and all(
            t is None or t == t.replace(minute=0, second=0, microsecond=0)
            for t in (self.since, self.until)
        )

    def query_items(self) -> list[tuple[str, str]]:
        """The filters as query parameters again, for a `next` link."""
        items = [("level", v) for v in self.levels] + [("service", v) for v in self.services]
        items += [("event_type", v) for v in self.event_types]
        items += [("environment", v) for v in self.environments]
        items += [("job_id", str(v)) for v in self.job_ids]
        items += [
            (name, rfc3339_ms(value))
            for name, value in (("from", self.since), ("to", self.until))
            if value
        ]
        items += [(f"context.{path}", value) for path, value in self.context]
        items += self.excluded.query_items()
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
        levels=query.getall("level", ()),
        services=query.getall("service", ()),
        event_types=query.getall("event_type", ()),
        environments=query.getall("environment", ()),
        job_ids=query.getall("job_id", ()),
        since=query.get("from"),
        until=query.get("to"),
        text=query.get("q", ""),
        context=context,
        excluded={field: query.getall(f"not.{field}", ()) for field in EXCLUDABLE},
    )


def checked_search_filters(
    *,
    levels=(),
    services=(),
    event_types=(),
    environments=(),
    job_ids=(),
    since: str | None = None,
    until: str | None = None,
    text: str = "",
    context=(),
    excluded: Mapping[str, Any] | None = None,
) -> SearchFilters:
    """Search filters from their values as a client sends them (text), each checked; the
    shared ones as a job's reads check them. `excluded`: values by field (EXCLUDABLE) to
    leave out, checked as the field's own."""
    base = checked_filters(
        levels=levels,
        services=services,
        event_types=event_types,
        environments=environments,
        text=text,
    )
    since_time, until_time = time_param("from", since, ms=True), time_param("to", until, ms=True)
    if since_time and until_time and since_time >= until_time:
        raise InvalidFilter("from must be earlier than to")
    if len({audit_trail.is_audit_type(t) for t in base.event_types}) > 1:
        raise InvalidFilter(
            "event_type: audit events are searched apart from the others; give "
            "audit.* (or audit.<type>s) alone"
        )
    return SearchFilters(
        base.levels,
        base.services,
        base.event_types,
        base.environments,
        checked_job_ids(job_ids),
        since_time,
        until_time,
        base.text,
        checked_context(context),
        checked_excluded(excluded or {}),
    )


def checked_excluded(excluded: Mapping[str, Any]) -> Excluded:
    if unknown := set(excluded) - set(EXCLUDABLE):
        raise InvalidFilter(
            f"not.{sorted(unknown)[0]} is not a filter (not.<field> takes {', '.join(EXCLUDABLE)})"
        )
    try:
        values = checked_filters(
            levels=excluded.get("level", ()),
            services=excluded.get("service", ()),
            event_types=excluded.get("event_type", ()),
            environments=excluded.get("environment", ()),
        )
        job_ids = checked_job_ids(excluded.get("job_id", ()))
    except InvalidFilter as exc:
        raise InvalidFilter(f"not.{exc}") from None
    return Excluded(
        values.levels, values.services, values.event_types, values.environments, job_ids
    )


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
            raise InvalidFilter(
                f"context.{path[:80]}: a path is 1 to 8 keys joined by '.', each "
                "1 to 64 letters, digits, '_', '-', '@' or ':'"
            )
        if len(value) > MAX_CONTEXT_VALUE_CHARS or not value.isprintable():
            raise InvalidFilter(
                f"context.{path} must be at most {MAX_CONTEXT_VALUE_CHARS} printable characters"
            )
    return pairs


# A word of a context filter's value, for the `context_tokens` index (sql/clickhouse/
# queries.sql's search_matches): a run of ASCII letters and digits with an ASCII separator
# (printable, not a letter or digit) or the value's end on each side. ClickHouse's tokens end
# only at such separators (a byte past ASCII belongs to a token), and the context's JSON text
# writes each of these separators as itself or as an escape that starts with a separator
# (`\/`, `\"`, `\\`): so the run is a whole token of the text wherever the value is.
CONTEXT_WORD = re.compile(
    r"(?:(?<=[\x20-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f])|^)[A-Za-z0-9]+"
    r"(?=[\x20-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]|$)"
)


def context_token(value: str) -> str:
    """The longest word of `value` (CONTEXT_WORD), the last of equals (ids end in their own
    part: `r-7`'s is `7`), '' for none: the index's key to it."""
    return max(reversed(CONTEXT_WORD.findall(value)), key=len, default="")


def clickhouse_ms(value: dt.datetime | None) -> str | None:
    return (
        value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}" if value else None
    )


def rfc3339_ms(value: dt.datetime) -> str:
    value = utc(value)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


# A keyset position in a search's order: the last event's time (ms since the epoch), job and
# line, with the order it belongs to. Opaque to clients (base64url of JSON); one that does not
# decode to exactly that, or belongs to the other order, is an InvalidFilter (a 422).


def encode_cursor(order: str, event: Mapping[str, Any]) -> str:
    """An audit event (line 0, no job) is placed by its own id in the job's place."""
    moment = dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    tiebreak = event["event_id"] if event["line_no"] == 0 else event["job_id"]
    position = [order, (moment - EPOCH) // dt.timedelta(milliseconds=1), tiebreak, event["line_no"]]
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def decode_cursor(raw: str, order: str, audit: bool = False) -> dict[str, Any]:
    """The query parameters of the keyset position `raw` (an `after` cursor); an audit
    search's cursor is at line 0, any other's at a line from 1."""
    try:
        position = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        kind, ms, job_id, line_no = position
        lines = range(0, 1) if audit else range(1, 2**63)
        if not (
            kind in ORDERS
            and type(ms) is int
            and type(line_no) is int
            and 0 <= ms < MAX_MS
            and line_no in lines
            and len(job_id) == 36
        ):
            raise ValueError(position)
        job_id = str(uuid.UUID(job_id))
    except Exception:  # noqa: BLE001 - whatever a forged cursor makes the decoding raise
        raise InvalidFilter(
            "after is not a cursor this API gave (follow `next` as it is)"
        ) from None
    if kind != order:
        raise InvalidFilter(f"after is a cursor of order={kind}, not of order={order}")
    moment = EPOCH + dt.timedelta(milliseconds=ms)
    return {"after_time": clickhouse_ms(moment), "after_job": job_id, "after_line": line_no}


MAX_MS = int((MAX_TIME - EPOCH).total_seconds()) * 1000 + 1000


# The keyset position before every event, in each order.
START = {
    "desc": {"after_time": LAST_MS, "after_job": MAX_UUID, "after_line": 2**64 - 1},
    "asc": {"after_time": FIRST_MS, "after_job": ZERO_UUID, "after_line": 0},
}


# ClickHouse 26.9 applies skip indexes while reading by default (use_skip_indexes_on_data_read),
# after it has chosen between the table and a projection: a context filter would then read
# `by_owner` (all the owner's events) though `context_tokens` leaves a few of the table's
# granules. Applied when the read is planned, the index counts in that choice.
READ_SETTINGS = {"use_skip_indexes_on_data_read": 0}


def read_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**READ_SETTINGS, **(settings or {})}


def search_events(
    ch,
    scope: SearchScope,
    filters: SearchFilters,
    *,
    order: str = "desc",
    after: str | None = None,
    limit: int = 100,
    settings: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Up to `limit` of the owner's line events the filters select, newest first (or oldest,
    order="asc"), after the keyset cursor `after` (from encode_cursor)."""
    if order not in ORDERS:
        raise InvalidFilter("order must be desc or asc")
    position = decode_cursor(after, order, filters.audit) if after else START[order]
    result = ch.query(
        events_query(order, audit=filters.audit),
        parameters={
            **scope.parameters(filters.audit),
            **filters.parameters(),
            **position,
            "limit": limit,
        },
        settings=read_settings(settings),
    )
    return [
        search_event_json(dict(zip(result.column_names, row, strict=True)))
        for row in result.result_rows
    ]


def events_query(order: str, columns: str = "search_columns", *, audit: bool = False) -> str:
    return scoped(QUERIES[f"search_events_{order}"].replace("$columns", QUERIES[columns]), audit)


def search_event_json(row: dict) -> dict[str, Any]:
    return {
        "event_id": row["event_id"],
        "job_id": row["job"],
        "line_no": row["line_no"],
        "timestamp": row["timestamp"],
        "level": row["level"],
        "service": row["service"],
        "event_type": row["event_type"],
        "environment": row["environment"],
        "message": row["message"],
        "context": json.loads(row["context"]),
    }


def search_histogram(
    ch,
    scope: SearchScope,
    filters: SearchFilters,
    *,
    interval_s: int | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """As job_histogram, over the owner's events the search filters select. Where from or
    to is not given, the first or last selected event's time is read in the projection's
    order (a read that stops at the first match), not by aggregating every selected row."""
    parameters = {**scope.parameters(filters.audit), **filters.parameters()}
    settings = read_settings(settings)
    first = filters.since or search_time(ch, "asc", parameters, settings, filters.audit)
    last = (
        filters.until - dt.timedelta(milliseconds=1)
        if filters.until
        else search_time(ch, "desc", parameters, settings, filters.audit)
    )
    if first is None or last is None:
        return no_histogram(interval_s)
    interval_s = interval_s or pick_interval((last - first).total_seconds() + 1)
    return histogram(
        ch,
        histogram_query(filters, interval_s),
        parameters,
        first,
        last,
        interval_s=interval_s,
        settings=settings,
        interval_name="interval_s",
    )


def histogram_query(filters: SearchFilters, interval_s: int) -> str:
    """The histogram's query: from `by_hour` where it can answer (whole hours)."""
    hourly = filters.by_hour() and interval_s % 3600 == 0
    return scoped(
        QUERIES["search_histogram_by_hour" if hourly else "search_histogram"], filters.audit
    )


def search_time(
    ch, order: str, parameters: dict, settings: dict, audit: bool = False
) -> dt.datetime | None:
    """The time of the first (asc) or last (desc) event the parameters select, or None."""
    query = scoped(QUERIES["search_first_time" if order == "asc" else "search_last_time"], audit)
    rows = ch.query(query, settings=settings, parameters=parameters).result_rows
    return utc(rows[0][0]) if rows else None


def search_facets(
    ch,
    scope: SearchScope,
    filters: SearchFilters,
    field: str,
    *,
    limit: int = 10,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `limit` commonest values of `field` (level, service, event_type, environment,
    job_id or context.<path>) among the events the filters select, most events first, and
    `other`: the events with another value. Events without a value at a context path are
    not counted."""
    path = field.removeprefix("context.") if field.startswith("context.") else ""
    rows = ch.query(
        facet_query(field, filters),
        parameters={
            **scope.parameters(filters.audit),
            **filters.parameters(),
            "facet_path": path,
            "limit": limit,
        },
        settings=read_settings(settings),
    ).result_rows
    values = [{"value": value, "count": events} for value, events, _ in rows]
    total = rows[0][2] if rows else 0
    return {"field": field, "values": values, "other": total - sum(v["count"] for v in values)}


def facet_query(field: str, filters: SearchFilters) -> str:
    """The facet's query for `field` (checked here): from `by_hour` where it can answer."""
    path = field.removeprefix("context.") if field.startswith("context.") else ""
    if path:
        checked_context([(path, "")])
    elif field not in FACETS or field == "context":
        raise InvalidFilter(
            f"field must be one of {', '.join(list(FACETS)[:-1])} or context.<path>"
        )
    name = "search_facet" if path or not filters.by_hour() else "search_facet_by_hour"
    return scoped(
        QUERIES[name].replace("$facet_value", FACETS["context" if path else field]), filters.audit
    )


def export_chunks(
    ch,
    scope: SearchScope,
    filters: SearchFilters,
    *,
    fmt: str = "ndjson",
    order: str = "desc",
    max_rows: int,
    settings: Mapping[str, Any] | None = None,
) -> Iterator[bytes]:
    """Every event the filters select, as NDJSON lines or CSV rows, a ClickHouse block at a
    time (never all at once); past `max_rows`, a last line says the export stopped there."""
    if order not in ORDERS:
        raise InvalidFilter("order must be desc or asc")
    # prefer_column_name_to_alias: the line's "job_id" (text) is an alias; filters and the
    # order mean the column.
    settings = {
        **read_settings(settings),
        "max_result_rows": max_rows + 1,
        "max_execution_time": EXPORT_TIMEOUT_S,
        "max_block_size": EXPORT_BLOCK_ROWS,
        "prefer_column_name_to_alias": 1,
    }
    parameters = {
        **scope.parameters(filters.audit),
        **filters.parameters(),
        **START[order],
        "limit": max_rows + 1,
    }
    audit = filters.audit
    chunks = (
        csv_chunks(ch, events_query(order, audit=audit), parameters, settings, max_rows)
        if fmt == "csv"
        else ndjson_chunks(
            ch,
            events_query(order, "export_ndjson_columns", audit=audit),
            parameters,
            settings,
            max_rows,
        )
    )
    seen = 0  # rows ClickHouse sent: at most max_rows + 1, the one past saying there are more
    for chunk, rows in chunks:
        seen += rows
        if chunk:
            yield chunk
    if seen > max_rows:
        yield truncation_line(fmt, max_rows)


def ndjson_chunks(
    ch, query: str, parameters: dict, settings: dict, max_rows: int
) -> Iterator[tuple[bytes, int]]:
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
                yield data[: cut + 1], max_rows - lines + 1
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


def csv_chunks(
    ch, query: str, parameters: dict, settings: dict, max_rows: int
) -> Iterator[tuple[bytes, int]]:
    """CSV rows from ClickHouse's blocks (a message may hold a newline, so rows are counted
    as rows, not lines), cut after `max_rows`; the header once ClickHouse has taken the query."""
    with ch.query_row_block_stream(query, parameters=parameters, settings=settings) as stream:
        yield csv_text([CSV_COLUMNS]), 0
        rows = 0
        for block in stream:
            keep = block[: max(max_rows - rows, 0)]
            rows += len(block)
            yield csv_text(keep) if keep else b"", len(block)


def truncation_line(fmt: str, max_rows: int) -> bytes:
    detail = (
        f"export stopped after {max_rows} events (EH_EXPORT_MAX_ROWS); more match: "
        "narrow the filters, or export the rest with from/to"
    )
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
