"""Custom log formats over REST: register, list, read and delete an owner's formats
(`/api/v1/formats`), each definition checked against log_format.schema.json off the loop."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from psycopg.types.json import Jsonb

import audit
import core
import formats
import offload
from api_state import POOL, SETTINGS, actor, principal
from http_guard import Problem, json_body

log = structlog.get_logger("api")
routes = web.RouteTableDef()


MAX_FORMAT_BYTES = 64 * 1024  # a custom log format's definition (POST /api/v1/formats)


MAX_FORMATS_PER_OWNER = 100


@routes.post("/api/v1/formats")
async def register_format(request: web.Request) -> web.Response:
    """Register a custom log format (201): checked against log_format.schema.json, then the
    token owner's, named in uploads as `format`. A name is registered once per owner. The
    check runs on a CPU thread (offload): bounded as it is, it is not the event loop's work."""
    definition = await json_body(request, MAX_FORMAT_BYTES)
    try:
        await offload.run(formats.custom_format, definition)
    except formats.InvalidFormat as exc:
        raise Problem(
            422,
            "Unprocessable Content",
            f"not a usable log format ({len(exc.reasons)} problems): {exc}"[:2000],
            errors=exc.reasons[:50],
        ) from None
    owner, name = principal(request).owner, definition["name"]
    async with request.app[POOL].connection() as conn, conn.transaction():
        await conn.execute(core.QUERIES["lock_owner_formats"], {"owner": owner})
        count = (
            await (
                await conn.execute(core.QUERIES["count_log_formats"], {"owner": owner})
            ).fetchone()
        )["n"]
        if count >= MAX_FORMATS_PER_OWNER:
            raise Problem(
                409,
                "Conflict",
                f"you have {count} log formats, as many as one owner "
                "may; delete one to register another",
            )
        row = await (
            await conn.execute(
                core.QUERIES["insert_log_format"],
                {"owner": owner, "name": name, "definition": Jsonb(definition)},
            )
        ).fetchone()
        if row is not None:
            await audit.arecord(
                conn, request.app[SETTINGS], "audit.format.registered", actor(request), object_=name
            )
    if row is None:
        raise Problem(
            409,
            "Conflict",
            f"you have a log format named {name!r} already; delete "
            "it to register it again (uploaded jobs keep theirs)",
        )
    log.info("format.registered", format=name)
    return web.json_response(
        format_json(row), status=201, headers={"Location": f"/api/v1/formats/{name}"}
    )


@routes.get("/api/v1/formats")
async def list_formats(request: web.Request) -> web.Response:
    """The built-in formats' names and the token owner's own formats."""
    async with request.app[POOL].connection() as conn:
        rows = await (
            await conn.execute(
                core.QUERIES["list_log_formats"], {"owner": principal(request).owner}
            )
        ).fetchall()
    return web.json_response(
        {"builtin": list(formats.NAMES), "formats": [format_json(row) for row in rows]}
    )


@routes.get("/api/v1/formats/{name}")
async def get_format(request: web.Request) -> web.Response:
    async with request.app[POOL].connection() as conn:
        row = await find_format(conn, principal(request).owner, request.match_info["name"])
    if row is None:
        raise format_not_found(request.match_info["name"])
    return web.json_response(format_json(row))


@routes.delete("/api/v1/formats/{name}")
async def delete_format(request: web.Request) -> web.Response:
    """Delete one of the owner's formats (204). Jobs uploaded with it keep their copy."""
    name = request.match_info["name"]
    async with request.app[POOL].connection() as conn, conn.transaction():
        row = await (
            await conn.execute(
                core.QUERIES["delete_log_format"], {"owner": principal(request).owner, "name": name}
            )
        ).fetchone()
        if row is not None:
            await audit.arecord(
                conn, request.app[SETTINGS], "audit.format.deleted", actor(request), object_=name
            )
    if row is None:
        raise format_not_found(name)
    log.info("format.deleted", format=name)
    return web.Response(status=204)


async def find_format(conn, owner: str, name: str) -> dict | None:
    """One of `owner`'s formats; another owner's is as unknown as one that never was."""
    return await (
        await conn.execute(core.QUERIES["get_log_format"], {"owner": owner, "name": name})
    ).fetchone()


def format_not_found(name: str) -> Problem:
    kind = "a built-in format (see GET /api/v1/formats)" if name in formats.NAMES else "unknown"
    return Problem(404, "Not Found", f"you have no log format named {name[:64]!r}: {kind}")


def format_json(row: dict) -> dict[str, Any]:
    return {
        "name": row["name"],
        "created_at": row["created_at"].isoformat(),
        "definition": row["definition"],
    }
