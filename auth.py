"""Who is asking: API tokens, and the principal a request acts as.

A token is `eh_<token_id>_<secret>`, the secret 256 random bits (URL-safe base64, so it also
fits a WebSocket subprotocol value). Postgres keeps only the SHA-256 of the secret
(`api_tokens.secret_hash`); a request's token is looked up by its id and its secret's hash
compared in constant time. A revoked token is refused by the next request that shows it,
and the sockets it opened are closed (revocation.py).

    python eventhorizon.py tokens create --owner NAME [--admin]
    python eventhorizon.py tokens list
    python eventhorizon.py tokens revoke ID
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import hmac
import ipaddress
import math
import re
import secrets
import time

from psycopg.rows import class_row, dict_row, tuple_row

import core

TOKEN_PATTERN = re.compile(r"eh_([1-9][0-9]{0,18})_([A-Za-z0-9_-]{43})")
OWNER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
SECRET_BYTES = 32


class InvalidOwner(ValueError):
    """An owner name that is not 1-64 letters, digits, `.`, `_`, `@` or `-`."""


@dataclasses.dataclass(frozen=True)
class Principal:
    """Whom a request acts for: jobs it uploads are `owner`'s; an admin sees every job."""

    owner: str
    admin: bool = False
    token_id: int | None = None

    @property
    def owner_filter(self) -> str | None:
        """What job queries filter on: the owner, or None (every job) for an admin."""
        return None if self.admin else self.owner


# The principal of EH_AUTH=none (single-user mode on a laptop): sees every job.
LOCAL = Principal(owner="local", admin=True)


@dataclasses.dataclass(frozen=True)
class TokenInfo:
    """A row of `tokens list`: never the token itself."""

    token_id: int
    owner: str
    admin: bool
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


# --------------------------------------------------------------------------- the CLI's work


def create_token(conn, owner: str, *, admin: bool = False) -> str:
    """Record a new token for `owner` and return it: the only time it is ever seen."""
    if not OWNER_PATTERN.fullmatch(owner):
        raise InvalidOwner(
            f"owner must be 1-64 letters, digits, '.', '_', '@' or '-', got {owner!r}"
        )
    secret = secrets.token_urlsafe(SECRET_BYTES)
    (token_id,) = (
        conn.cursor(row_factory=tuple_row)
        .execute(
            core.QUERIES["create_token"],
            {"owner": owner, "admin": admin, "secret_hash": secret_hash(secret)},
        )
        .fetchone()
    )
    return f"eh_{token_id}_{secret}"


def token_id_of(token: str) -> int:
    """The id part of a token this service made (`eh_<id>_<secret>`)."""
    match = TOKEN_PATTERN.fullmatch(token)
    if match is None:
        raise ValueError("not a token of this service")
    return int(match[1])


def list_tokens(conn) -> list[TokenInfo]:
    cur = conn.cursor(row_factory=class_row(TokenInfo))
    return cur.execute(core.QUERIES["list_tokens"]).fetchall()


def revoke_token(conn, token_id: int) -> bool:
    """Revoke a token; False if there is no live token with that id. Every API process is
    told (core.TOKEN_CHANNEL) and closes the sockets the token holds open."""
    return (
        conn.execute(
            core.QUERIES["revoke_token"], {"token_id": token_id, "channel": core.TOKEN_CHANNEL}
        ).fetchone()
        is not None
    )


# --------------------------------------------------------------------------- requests


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (RFC 6750), or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


async def authenticate(aconn, token: str | None) -> Principal | None:
    """The principal a token stands for; None if it is missing, malformed, unknown or revoked."""
    match = TOKEN_PATTERN.fullmatch(token or "")
    if match is None:
        return None
    token_id, secret = int(match[1]), match[2]
    cur = aconn.cursor(row_factory=dict_row)
    await cur.execute(core.QUERIES["live_token"], {"token_id": token_id})
    row = await cur.fetchone()
    # Compared even when there is no such token, so the time taken does not tell which.
    stored = row["secret_hash"] if row else b"\0" * 32
    if not hmac.compare_digest(secret_hash(secret), bytes(stored)) or row is None:
        return None
    await aconn.execute(core.QUERIES["touch_token"], {"token_id": token_id})
    return Principal(owner=row["owner"], admin=row["admin"], token_id=token_id)


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


MAX_TRACKED_CLIENTS = 10_000


def client_key(peer: str | None) -> str:
    """Whom the failed-authentication limit counts: the connection's peer address (never a
    header a client writes), an IPv6 client by its /64, which one host is commonly given."""
    try:
        address = ipaddress.ip_address((peer or "").split("%")[0])
    except ValueError:
        return peer or "?"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailedAuthLimiter:
    """A token bucket per client: `per_minute` failed authentications at once, then one more
    each 60/per_minute s. A client out of them is told how long to wait, and is not looked up
    meanwhile (nor is its token, right or wrong).

    Memory is bounded: at most `clients` buckets, the least recently failing dropped first (a
    dropped bucket was likely full again; a flood of distinct addresses costs its sender
    `clients` failures before any of its own buckets goes). Full buckets are dropped as they
    are met, so clients that fail now and then leave nothing behind."""

    def __init__(
        self, per_minute: int, *, clients: int = MAX_TRACKED_CLIENTS, clock=time.monotonic
    ):
        self.capacity, self.rate = float(per_minute), per_minute / 60.0
        self.clients, self.clock = clients, clock
        self.buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def retry_after(self, client: str) -> int:
        """Seconds `client` must wait before its next try (0: it may try now)."""
        tokens = self.tokens(client)
        return 0 if tokens >= 1 else math.ceil((1 - tokens) / self.rate)

    def failed(self, client: str) -> None:
        self.buckets[client] = (self.tokens(client) - 1, self.clock())
        self.buckets.move_to_end(client)
        while len(self.buckets) > self.clients:
            self.buckets.popitem(last=False)
        self.drop_full()

    def tokens(self, client: str) -> float:
        tokens, at = self.buckets.get(client, (self.capacity, self.clock()))
        return min(self.capacity, tokens + (self.clock() - at) * self.rate)

    def drop_full(self) -> None:
        """Forget the oldest buckets that have filled up again (at most a few per call)."""
        for _ in range(2):
            oldest = next(iter(self.buckets), None)
            if oldest is None or self.tokens(oldest) < self.capacity:
                return
            del self.buckets[oldest]
