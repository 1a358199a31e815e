"""The GraphQL resolvers, attached to static/schema.graphql (SCHEMA), and what they run
with (the API process's Services, one operation's Context).

Resolvers are async and call the read functions the REST handlers call (jobs, explore,
search); `Job.errors` of many jobs is one query (LineErrorLoader); `Subscription.job` is one
more watcher on the API's LISTEN fan-out (live.JobWatchers), under the same WebSocket limits.
Requests reach them through graphql_api (its limits first) and graphql_socket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from graphql import GraphQLError, GraphQLScalarType, GraphQLSchema, build_schema

import auth
import core
import explore
import jobs
import live
import read_slots
import search

log = structlog.get_logger("api")

SCHEMA_PATH = core.ROOT / "static" / "schema.graphql"
JOBS_LIMIT = (1, 100)  # as GET /api/v1/jobs
ERRORS_FIRST = (1, 1000)  # as GET /api/v1/jobs/{id}/errors
EVENTS_FIRST = (1, 1000)  # as GET /api/v1/jobs/{id}/events
MAX_ERROR_LINES = 10_000  # invalid lines one operation (or one subscription state) may ask for
MAX_CLICKHOUSE_READS = 200  # Job.events and Job.histogram fields one operation may resolve
INIT_TIMEOUT_S = 10.0  # for connection_init after the upgrade (EH_GRAPHQL_INIT_TIMEOUT_S)


@dataclasses.dataclass
class Services:
    """What the resolvers and the socket need from the API process."""

    pool: Any  # psycopg_pool.AsyncConnectionPool
    watchers: live.JobWatchers
    # A token (or None) to its principal, or None when it does not work (EH_AUTH=none: LOCAL).
    authenticate: Callable[[str | None], Awaitable[auth.Principal | None]]
    explorer: explore.Explorer  # Job.events and Job.histogram, as the REST routes read them
    init_timeout_s: float = INIT_TIMEOUT_S  # EH_GRAPHQL_INIT_TIMEOUT_S
    # graphql_socket.Connection, each open GraphQL WebSocket (closed at shutdown)
    connections: set[Any] = dataclasses.field(default_factory=set)

    def close_all(self) -> None:
        """Server shutdown: every connection closes with 1001, idle ones too."""
        for connection in list(self.connections):
            connection.close_soon(1001, b"server shutting down")


@dataclasses.dataclass
class Context:
    """One operation's: who asks, and its batched line-error reads."""

    services: Services
    principal: auth.Principal
    errors: LineErrorLoader
    close_socket: Callable[[int, bytes], None] | None = None  # a subscription's connection
    clickhouse_reads: int = 0  # Job.events and Job.histogram resolved so far

    def count_clickhouse_read(self) -> None:
        """A ClickHouse read more for this operation: past MAX_CLICKHOUSE_READS it is refused
        (they run a few at a time in the owner's read slots, so any number under it is
        answered, in time)."""
        self.clickhouse_reads += 1
        if self.clickhouse_reads > MAX_CLICKHOUSE_READS:
            raise GraphQLError(
                f"the operation asks for more than {MAX_CLICKHOUSE_READS} "
                "events or histogram fields (jobs × fields); ask for fewer jobs",
                extensions={"code": "QUERY_TOO_LARGE"},
            )


def bounded(name: str, value: int, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if not low <= value <= high:
        raise GraphQLError(
            f"{name} must be an integer from {low} to {high}", extensions={"code": "BAD_USER_INPUT"}
        )
    return value


# --------------------------------------------------------------------------- resolvers


async def resolve_job(_root, info, id: str) -> dict | None:
    """Null for an unknown id, a malformed one and another owner's job alike."""
    context: Context = info.context
    job_id = parse_uuid(id)
    job = job_id and await jobs.read_job(
        context.services.pool, job_id, owner=context.principal.owner_filter
    )
    return jobs.job_json(job) if job else None


async def resolve_jobs(_root, info, limit: int, status: str | None = None) -> list[dict]:
    context: Context = info.context
    found = await jobs.read_jobs(
        context.services.pool,
        owner=context.principal.owner_filter,
        limit=bounded("limit", limit, JOBS_LIMIT),
        status=status,
    )
    return [jobs.job_json(job) for job in found]


async def resolve_stats(_root, info) -> dict:
    context: Context = info.context
    if not context.principal.admin:
        raise GraphQLError(
            "the service's stats are for admin tokens", extensions={"code": "FORBIDDEN"}
        )
    return await jobs.read_stats(context.services.pool)


async def resolve_errors(job: dict, info, first: int, afterLine: int) -> dict:
    """A page of the job's invalid lines, read with every other job's of this operation."""
    first = bounded("first", first, ERRORS_FIRST)
    after = bounded("afterLine", afterLine, (0, 2**62))
    rows = await info.context.errors.load(uuid.UUID(job["job_id"]), first, after)
    return {"items": rows, "next_after_line": rows[-1]["line_no"] if len(rows) == first else None}


async def resolve_delivery(job: dict, info) -> dict:
    """One query per job asked for: `jobs` returns at most 100."""
    job_id = uuid.UUID(job["job_id"])
    return await jobs.read_delivery(info.context.services.pool, job_id, job["lines_valid"])


async def resolve_events(
    job: dict, info, first: int, afterLine: int, filter: dict | None = None
) -> dict:
    """A page of the job's events from ClickHouse (GET /api/v1/jobs/{id}/events)."""
    first = bounded("first", first, EVENTS_FIRST)
    after = bounded("afterLine", afterLine, (0, 2**62))
    context: Context = info.context
    context.count_clickhouse_read()
    events = await explore_read(
        context.services.explorer.events(
            context.principal.owner,
            uuid.UUID(job["job_id"]),
            event_filters(filter),
            after_line=after,
            limit=first + 1,
        )
    )
    return {
        "items": [event_node(e) for e in events[:first]],
        "next_after_line": events[first - 1]["line_no"] if len(events) > first else None,
    }


async def resolve_histogram(
    job: dict, info, filter: dict | None = None, intervalS: int | None = None
) -> dict:
    """The job's events by level over time (GET /api/v1/jobs/{id}/histogram)."""
    if intervalS is not None:
        bounded("intervalS", intervalS, (1, explore.MAX_INTERVAL_S))
    context: Context = info.context
    context.count_clickhouse_read()
    histogram = await explore_read(
        context.services.explorer.histogram(
            context.principal.owner, uuid.UUID(job["job_id"]), event_filters(filter), intervalS
        )
    )
    return histogram_node(histogram)


def histogram_node(histogram: dict) -> dict:
    return {
        **histogram,
        "buckets": [
            {
                "start": b["start"],
                "counts": [
                    {"level": level.upper(), "events": n} for level, n in b["counts"].items()
                ],
            }
            for b in histogram["buckets"]
        ],
    }


async def resolve_search(
    _root, info, first: int, order: str, after: str | None = None, filter: dict | None = None
) -> dict:
    """A page of the owner's events across their jobs (GET /api/v1/events)."""
    first = bounded("first", first, EVENTS_FIRST)
    info.context.count_clickhouse_read()
    scope = await search_scope(info)
    events = await explore_read(
        info.context.services.explorer.run(
            scope.owner,
            search.search_events,
            scope,
            search_filters(filter),
            order=order,
            after=after,
            limit=first + 1,
        )
    )
    items = events[:first]
    return {
        "items": [event_node(e) for e in items],
        "next_after": search.encode_cursor(order, items[-1]) if len(events) > first else None,
    }


async def resolve_search_histogram(
    _root, info, filter: dict | None = None, intervalS: int | None = None
) -> dict:
    if intervalS is not None:
        bounded("intervalS", intervalS, (1, explore.MAX_INTERVAL_S))
    info.context.count_clickhouse_read()
    scope = await search_scope(info)
    return histogram_node(
        await explore_read(
            info.context.services.explorer.run(
                scope.owner,
                search.search_histogram,
                scope,
                search_filters(filter),
                interval_s=intervalS,
            )
        )
    )


async def resolve_facets(_root, info, field: str, first: int, filter: dict | None = None) -> dict:
    first = bounded("first", first, (1, search.MAX_FACET_VALUES))
    info.context.count_clickhouse_read()
    scope = await search_scope(info)
    return await explore_read(
        info.context.services.explorer.run(
            scope.owner, search.search_facets, scope, search_filters(filter), field, limit=first
        )
    )


async def search_scope(info) -> search.SearchScope:
    who = info.context.principal
    return await search.search_scope(info.context.services.pool, who.owner, every_owner=who.admin)


def search_filters(filter: dict | None) -> search.SearchFilters:
    """The GraphQL EventFilter of a search, checked as GET /api/v1/events' parameters are."""
    filter = filter or {}
    try:
        return search.checked_search_filters(
            levels=[level.lower() for level in filter.get("levels") or ()],
            services=filter.get("services") or (),
            event_types=filter.get("eventTypes") or (),
            environments=filter.get("environments") or (),
            job_ids=filter.get("jobIds") or (),
            since=filter.get("from"),
            until=filter.get("to"),
            text=filter.get("text") or "",
            context=[(m["path"], m["value"]) for m in filter.get("context") or ()],
            excluded=excluded(filter.get("exclude") or {}),
        )
    except explore.InvalidFilter as exc:
        raise GraphQLError(str(exc), extensions={"code": "BAD_USER_INPUT"}) from None


def excluded(exclude: dict) -> dict[str, Any]:
    """An EventExclusion as search.checked_search_filters takes it (by not.<field> name)."""
    return {
        "level": [level.lower() for level in exclude.get("levels") or ()],
        "service": exclude.get("services") or (),
        "event_type": exclude.get("eventTypes") or (),
        "environment": exclude.get("environments") or (),
        "job_id": exclude.get("jobIds") or (),
    }


def event_filters(filter: dict | None) -> explore.EventFilters:
    """The GraphQL EventFilter, checked as the REST routes' query parameters are."""
    filter = filter or {}
    if any(filter.get(name) is not None for name in ("jobIds", "context", "exclude")):
        raise GraphQLError(
            "jobIds, context and exclude filter searches (Query.events), not a job's events",
            extensions={"code": "BAD_USER_INPUT"},
        )
    try:
        return explore.checked_filters(
            levels=[level.lower() for level in filter.get("levels") or ()],
            services=filter.get("services") or (),
            event_types=filter.get("eventTypes") or (),
            environments=filter.get("environments") or (),
            since=filter.get("from"),
            until=filter.get("to"),
            text=filter.get("text") or "",
        )
    except explore.InvalidFilter as exc:
        raise GraphQLError(str(exc), extensions={"code": "BAD_USER_INPUT"}) from None


async def explore_read(read: Awaitable[Any]) -> Any:
    try:
        return await read
    except explore.InvalidFilter as exc:
        raise GraphQLError(str(exc), extensions={"code": "BAD_USER_INPUT"}) from None
    except read_slots.NoReadSlot as exc:  # the owner's own reads queued past the limits
        raise GraphQLError(
            str(exc), extensions={"code": "TOO_MANY_READS", "retryAfterS": exc.retry_after_s}
        ) from None
    except explore.Unavailable as exc:
        log.warning("explore.clickhouse_unavailable", error=str(exc))
        raise GraphQLError(exc.public_reason, extensions={"code": "UNAVAILABLE"}) from None


def event_node(event: dict) -> dict:
    return {
        **event,
        "id": event["event_id"],
        "level": event["level"].upper(),
        "context": json.dumps(event["context"]),
    }


def resolve_formats(job: dict, _info) -> list[dict]:
    return [{"name": name, "lines": lines} for name, lines in job["formats"].items()]


async def subscribe_job(_root, info, id: str) -> AsyncIterator[dict | None]:
    """The job's current state, then each one the fan-out hands over, until a final one.
    Null once (then the end) for a job that is not the caller's, or deleted meanwhile."""
    context: Context = info.context
    watchers = context.services.watchers
    job_id = parse_uuid(id)
    queue = job_id and await watchers.start_watching(
        job_id, live.StateQueue(), owner=context.principal.owner_filter
    )
    if not queue:
        yield None
        return
    try:
        while (state := await next_state(queue)) is not None:
            yield state
            if state["status"] in jobs.TERMINAL_STATUSES:
                return
        if queue.close_code == live.WS_NOT_FOUND:
            yield None
        else:  # too far behind (1013), or the server stopping (1001): as /ws/jobs does
            context.close_socket(queue.close_code, queue.close_message)
    finally:
        watchers.discard(job_id, queue)


def resolve_subscribed_job(state: dict | None, info, **_args) -> dict | None:
    info.context.errors = LineErrorLoader(info.context.services.pool)  # a budget per state
    info.context.clickhouse_reads = 0
    return state


async def next_state(queue: live.StateQueue) -> dict | None:
    """The next queued state, or None once the fan-out asked this watcher to stop."""
    if queue.closing.is_set():
        return None
    getting = asyncio.ensure_future(queue.states.get())
    closing = asyncio.ensure_future(queue.closing.wait())
    try:
        await asyncio.wait((getting, closing), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (getting, closing):
            task.cancel()
    return (
        None
        if queue.closing.is_set() or not getting.done() or getting.cancelled()
        else getting.result()
    )


def parse_uuid(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


@functools.cache
def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def snake_case_field(source, info, **_args):
    """Every other field: the job JSON's (and the stats') own key, in snake case."""
    return source.get(snake_case(info.field_name)) if isinstance(source, dict) else None


class LineErrorLoader:
    """Batches the `Job.errors` pages one operation asks for: those with the same `first`
    and `afterLine`, asked in the same turn of the event loop (a list's items are), are one
    query (jobs.read_line_errors), however many jobs. An operation asks for at most
    MAX_ERROR_LINES lines in all."""

    def __init__(self, pool):
        self.pool = pool
        self.asked = 0
        self.pending: dict[tuple[int, int], dict[uuid.UUID, asyncio.Future]] = {}
        self.reads: set[asyncio.Task] = set()  # held: the loop keeps only weak references

    async def load(self, job_id: uuid.UUID, first: int, after: int) -> list[dict]:
        self.asked += first
        if self.asked > MAX_ERROR_LINES:
            raise GraphQLError(
                f"the operation asks for more than {MAX_ERROR_LINES} invalid "
                "lines (jobs × first); ask for fewer jobs or a smaller first",
                extensions={"code": "QUERY_TOO_LARGE"},
            )
        key = (first, after)
        if key not in self.pending:
            self.pending[key] = {}
            asyncio.get_running_loop().call_soon(self._start_read, key)
        batch = self.pending[key]
        if job_id not in batch:
            batch[job_id] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(batch[job_id])

    def _start_read(self, key: tuple[int, int]) -> None:
        """After every resolver of this turn has asked: one read for all of them."""
        task = asyncio.ensure_future(self._read(key))
        self.reads.add(task)
        task.add_done_callback(self.reads.discard)

    async def _read(self, key: tuple[int, int]) -> None:
        batch = self.pending.pop(key)
        try:
            pages = await jobs.read_line_errors(
                self.pool, list(batch), after_line=key[1], limit=key[0]
            )
        except Exception as exc:
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc)
            return
        for job_id, future in batch.items():
            if not future.done():
                future.set_result(pages[job_id])


def load_schema() -> GraphQLSchema:
    """static/schema.graphql with the resolvers attached."""
    schema = build_schema(SCHEMA_PATH.read_text())
    for name, value in schema.type_map["JobStatus"].values.items():
        value.value = name.lower()  # the job JSON's own words
    safe_int: GraphQLScalarType = schema.type_map["SafeInt"]
    safe_int.serialize = safe_int.parse_value = check_safe_int
    query, job = schema.query_type.fields, schema.type_map["Job"].fields
    query["job"].resolve = resolve_job
    query["jobs"].resolve = resolve_jobs
    query["stats"].resolve = resolve_stats
    query["events"].resolve = resolve_search
    query["eventHistogram"].resolve = resolve_search_histogram
    query["eventFacets"].resolve = resolve_facets
    for name, value in schema.type_map["Order"].values.items():
        value.value = name.lower()
    job["id"].resolve = lambda job, _info: job["job_id"]
    job["formats"].resolve = resolve_formats
    job["errors"].resolve = resolve_errors
    job["delivery"].resolve = resolve_delivery
    job["events"].resolve = resolve_events
    job["histogram"].resolve = resolve_histogram
    schema.subscription_type.fields["job"].subscribe = subscribe_job
    schema.subscription_type.fields["job"].resolve = resolve_subscribed_job
    return schema


def check_safe_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**53 - 1:
        raise GraphQLError(f"SafeInt cannot represent {value!r}")
    return value


SCHEMA = load_schema()
