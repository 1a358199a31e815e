"""What the API's layers share of a running app: its state under typed aiohttp keys, and the
request's principal. eventhorizon.init_app fills them; the guard and the route modules read
them."""

from __future__ import annotations

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

import amqp
import audit
import auth
import config
import explore
import graphql_resolvers
import live
import uploads

SETTINGS = web.AppKey("settings", config.Settings)


POOL = web.AppKey("pool", AsyncConnectionPool)


S3 = web.AppKey("s3", object)


PUBLISHER = web.AppKey("publisher", amqp.Publisher)


WATCHERS = web.AppKey("watchers", live.JobWatchers)


GRAPHQL = web.AppKey("graphql", graphql_resolvers.Services)


PRINCIPAL = web.RequestKey("principal", auth.Principal)


UPLOAD_SLOTS = web.AppKey("upload_slots", uploads.UploadSlots)


EXPLORER = web.AppKey("explorer", explore.Explorer)


AUTH_LIMITER = web.AppKey("auth_limiter", auth.FailedAuthLimiter)


DENIED_TRAIL = web.AppKey("denied_trail", audit.DeniedTrail)


def principal(request: web.Request) -> auth.Principal:
    return request[PRINCIPAL]


def actor(request: web.Request) -> audit.Actor:
    """Who the request's audit events name (audit.request_actor)."""
    return audit.request_actor(request, request.get(PRINCIPAL), request.app[SETTINGS])


UPLOAD_PATH = "/api/v1/files/upload"
