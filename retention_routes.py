"""Retention over REST, for admins: an owner's retention read, set and cleared
(`/api/v1/admin/owners/{owner}/retention`, retention.py's), and each API process's periodic
sweep (EH_RETENTION_INTERVAL_S)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from aiohttp import web

import retention
from api_state import POOL, S3, SETTINGS, actor, principal
from http_guard import Problem, json_body

log = structlog.get_logger("api")
routes = web.RouteTableDef()

PATH = "/api/v1/admin/owners/{owner}/retention"
MAX_BODY_BYTES = 1024


def setup(app: web.Application) -> None:
    app.add_routes(routes)
    app.cleanup_ctx.append(sweeper_ctx)


async def sweeper_ctx(app: web.Application):
    """The process's periodic sweep (none with EH_RETENTION_INTERVAL_S 0)."""
    settings = app[SETTINGS]
    task = None
    if settings.retention_interval_s > 0:
        task = asyncio.create_task(
            retention.sweep_periodically(settings, app[S3]), name="retention-sweep"
        )
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@routes.get(PATH)
async def get_retention(request: web.Request) -> web.Response:
    """How long the owner's jobs are kept, and whether by their own setting or the default."""
    owner = admin_owner(request)
    async with request.app[POOL].connection() as conn:
        policy = await retention.read_policy(conn, request.app[SETTINGS], owner)
    return web.json_response(policy.json())


@routes.put(PATH)
async def put_retention(request: web.Request) -> web.Response:
    """Set the owner's own retention: `{"days": N}` (1-36500) or `{"days": null}` (for ever).
    The next sweep removes their jobs uploaded more than N days ago."""
    owner = admin_owner(request)
    days = days_of(await json_body(request, MAX_BODY_BYTES))
    async with request.app[POOL].connection() as conn:
        policy = await retention.set_policy(
            conn,
            request.app[SETTINGS],
            owner,
            days,
            set_by=principal(request).owner,
            who=actor(request),
        )
    return web.json_response(policy.json())


@routes.delete(PATH)
async def delete_retention(request: web.Request) -> web.Response:
    """The owner keeps EH_RETENTION_DAYS again (204, whether or not they had their own)."""
    owner = admin_owner(request)
    async with request.app[POOL].connection() as conn:
        await retention.clear_policy(conn, request.app[SETTINGS], owner, who=actor(request))
    return web.Response(status=204)


def admin_owner(request: web.Request) -> str:
    """The path's owner, for an admin's request: 403 for anyone else, 422 a name no owner has."""
    if not principal(request).admin:
        raise Problem(403, "Forbidden", "owners' retention is for admin tokens")
    try:
        return retention.check_owner(request.match_info["owner"])
    except retention.InvalidRetention as exc:
        raise Problem(422, "Unprocessable Content", str(exc)) from None


def days_of(body: Any) -> int | None:
    if not isinstance(body, dict) or set(body) != {"days"}:
        raise Problem(
            422,
            "Unprocessable Content",
            'the body must be {"days": N} (1-36500) or {"days": null} (for ever)',
        )
    try:
        return retention.check_days(body["days"])
    except retention.InvalidRetention as exc:
        raise Problem(422, "Unprocessable Content", str(exc)) from None
