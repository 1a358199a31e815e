"""Owner-wide search over REST: the events of every job of the token's owner, filtered, a page
at a time (GET /api/v1/events), their histogram, facets and an export.

A layer of the API, like graphql_api: the reads are search.py's (search_scope, then
search_events, search_histogram, search_facets, export_chunks, run through the app's
Explorer), the same functions GraphQL calls; the app's state is api_state's, problems and
parameters http_guard's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import structlog
from aiohttp import web

import audit
import explore
import search
from api_state import EXPLORER, POOL, SETTINGS, actor, principal
from http_guard import Problem, explore_read, int_param

log = structlog.get_logger("search")
routes = web.RouteTableDef()

MAX_CURSOR_CHARS = 200


@routes.get("/api/v1/events")
async def get_events(request: web.Request) -> web.Response:
    """The owner's events, newest first (order=asc: oldest), filtered, a page at a time:
    follow `next` (it keeps the filters) until it is null."""
    filters = search_filters(request, {"limit", "after", "order"})
    limit = int_param(request, "limit", default=100, low=1, high=1000)
    order, after = order_param(request), cursor_param(request)
    scope = await request_scope(request)
    events = await explore_read(
        request.app[EXPLORER].run(
            scope.owner,
            search.search_events,
            scope,
            filters,
            order=order,
            after=after,
            limit=limit + 1,
        )
    )
    next_url = None
    if len(events) > limit:
        events = events[:limit]
        query = [
            ("limit", str(limit)),
            ("order", order),
            ("after", search.encode_cursor(order, events[-1])),
            *filters.query_items(),
        ]
        next_url = f"/api/v1/events?{urlencode(query)}"
    return web.json_response({"events": events, "next": next_url})


@routes.get("/api/v1/events/histogram")
async def get_events_histogram(request: web.Request) -> web.Response:
    """The owner's events the filters select, counted by level per bucket of time."""
    filters = search_filters(request, {"interval_s"})
    interval = None
    if "interval_s" in request.query:
        interval = int_param(request, "interval_s", default=0, low=1, high=explore.MAX_INTERVAL_S)
    scope = await request_scope(request)
    histogram = await explore_read(
        request.app[EXPLORER].run(
            scope.owner, search.search_histogram, scope, filters, interval_s=interval
        )
    )
    return web.json_response(histogram)


@routes.get("/api/v1/events/facets")
async def get_events_facets(request: web.Request) -> web.Response:
    """The commonest values of one field among the events the filters select."""
    filters = search_filters(request, {"field", "limit"})
    field = request.query.get("field")
    if not field:
        raise Problem(
            422,
            "Unprocessable Content",
            "field is required: level, service, event_type, environment, job_id or context.<path>",
        )
    limit = int_param(request, "limit", default=10, low=1, high=search.MAX_FACET_VALUES)
    scope = await request_scope(request)
    facets = await explore_read(
        request.app[EXPLORER].run(
            scope.owner, search.search_facets, scope, filters, field, limit=limit
        )
    )
    return web.json_response(facets)


@routes.get("/api/v1/events/export")
async def get_events_export(request: web.Request) -> web.StreamResponse:
    """Every event the filters select (up to EH_EXPORT_MAX_ROWS), streamed as NDJSON or CSV
    while ClickHouse sends it: memory stays flat however many there are."""
    filters = search_filters(request, {"format", "order"})
    fmt, order = request.query.get("format", "ndjson"), order_param(request)
    if fmt not in search.EXPORT_FORMATS:
        raise Problem(422, "Unprocessable Content", "format must be ndjson or csv")
    scope = await request_scope(request)
    chunks = request.app[EXPLORER].stream(
        scope.owner,
        search.export_chunks,
        scope,
        filters,
        fmt=fmt,
        order=order,
        max_rows=request.app[SETTINGS].export_max_rows,
    )
    async with contextlib.aclosing(chunks):
        first = await explore_read(first_chunk(chunks))  # a 503 or 422 before any byte
        await record_export(request, filters, fmt)
        response = web.StreamResponse(
            headers={
                "Content-Type": search.EXPORT_FORMATS[fmt],
                "Content-Disposition": f'attachment; filename="events.{fmt}"',
            }
        )
        await response.prepare(request)
        await response.write(first)
        try:
            async for chunk in chunks:
                await response.write(chunk)
        except (explore.Unavailable, explore.InvalidFilter) as exc:
            log.warning("search.export_failed", error=str(exc))
            await response.write(search.failure_line(fmt))
        await response.write_eof()
    return response


async def request_scope(request: web.Request) -> search.SearchScope:
    """The scope of a request's search: an admin's audit searches see every owner's."""
    who = principal(request)
    return await search.search_scope(request.app[POOL], who.owner, every_owner=who.admin)


async def record_export(request: web.Request, filters: search.SearchFilters, fmt: str) -> None:
    """The export's audit event (`audit.events.exported`), committed before its first byte
    goes out: the filters say which events, the object is the search route."""
    async with request.app[POOL].connection() as conn, conn.transaction():
        await audit.arecord(
            conn,
            request.app[SETTINGS],
            "audit.events.exported",
            actor(request),
            object_=request.path,
            format=fmt,
            filters=urlencode(filters.query_items()),
        )


async def first_chunk(chunks: AsyncIterator[bytes]) -> bytes:
    return await anext(chunks, b"")


def search_filters(request: web.Request, also: set[str]) -> search.SearchFilters:
    try:
        return search.search_filters_from_query(request.query, also=frozenset(also))
    except explore.InvalidFilter as exc:
        raise Problem(422, "Unprocessable Content", str(exc)) from None


def order_param(request: web.Request) -> str:
    order = request.query.get("order", "desc")
    if order not in search.ORDERS:
        raise Problem(422, "Unprocessable Content", "order must be desc or asc")
    return order


def cursor_param(request: web.Request) -> str | None:
    """`after` as given: checked here for its size, and decoded (or refused, 422) by the read."""
    after = request.query.get("after")
    if after is not None and not 0 < len(after) <= MAX_CURSOR_CHARS:
        raise Problem(
            422, "Unprocessable Content", "after is not a cursor this API gave (follow `next`)"
        )
    return after
