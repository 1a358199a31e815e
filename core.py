"""What the API, the worker and the relay share besides their settings (config.py's): the
named SQL queries and migrations, the binary COPY of log entries, the S3 client, and how to
wait out an outage (`Backoff`, `is_outage`). How they log, and the trace ids logs and events
carry, are logs.py's; a job's row and its changes are jobs.py's, the outbox is outbox.py's,
the broker's queues and messages are amqp.py's.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.pq import Format

if TYPE_CHECKING:
    from config import Settings

ROOT = Path(__file__).resolve().parent
SQL_DIR = ROOT / "sql"
MIGRATIONS_DIR = SQL_DIR / "migrations"
LOG_ENTRY_SCHEMA_PATH = ROOT / "log_entry.schema.json"

TOKEN_CHANNEL = "eh_token"  # NOTIFY: a token revoked, {"token_id": N} (revocation.py)


# Postgres errors that mean an outage, not a problem with the work: connection exceptions,
# insufficient resources (disk full, too many connections), transaction rollbacks
# (serialization failures, deadlocks), and the server shutting down or starting up.
OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "53", "40"})
OUTAGE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


# --------------------------------------------------------------------------- outages


def is_outage(exc: BaseException) -> bool:
    """Whether a failure means a service is unreachable or overloaded (the database, the file
    storage), not that the work itself is wrong: the work is retried, with backoff, for as long
    as it takes. The one definition every process uses."""
    if isinstance(exc, psycopg.InterfaceError):  # the connection was closed under us
        return True
    if isinstance(exc, psycopg.OperationalError):
        # No SQLSTATE: the client lost or could not make the connection (or a pool timed out).
        # Otherwise only what says the server is away or short of resources, or asks for a
        # retry; not, say, a statement timeout or a program limit, which would recur.
        state = exc.sqlstate or ""
        return not state or state[:2] in OUTAGE_SQLSTATE_CLASSES or state in OUTAGE_SQLSTATES
    if isinstance(exc, ClientError):
        return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500
    return isinstance(exc, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError))


class Backoff:
    """Capped exponential delays (`first`, twice that, … up to `cap` seconds), with jitter so
    processes that lost the same service do not come back in step. `reset` after a success."""

    def __init__(self, first: float = 0.5, cap: float = 30.0):
        self.first, self.cap, self.failures = first, cap, 0

    def next(self) -> float:
        delay = min(self.first * 2**self.failures, self.cap)
        self.failures += 1
        return round(delay * random.uniform(0.8, 1.0), 3)

    def reset(self) -> None:
        self.failures = 0


# --------------------------------------------------------------------------- SQL


_QUERY_HEADER = re.compile(r"^-- name: (\w+) --$", re.MULTILINE)


def without_comments(sql_text: str) -> str:
    """SQL text without its comment lines (`-- …` alone on a line)."""
    return "\n".join(line for line in sql_text.splitlines() if not line.lstrip().startswith("--"))


def load_queries(path: Path = SQL_DIR / "queries.sql") -> dict[str, str]:
    """The named `-- name: x --` queries of queries.sql, by name. A block another names as
    `$x` is a fragment, not a query: its text (without its comment lines) is put in there,
    the fragments it names in turn put in it."""
    parts = _QUERY_HEADER.split(path.read_text())
    named = {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
    used = {m.group(1) for body in named.values() for m in _FRAGMENT.finditer(body)} & set(named)
    fragments = {name: without_comments(named[name]) for name in used}

    def fragment(match: re.Match) -> str:
        text = fragments.get(match.group(1))
        return match.group(0) if text is None else _FRAGMENT.sub(fragment, text)

    return {name: _FRAGMENT.sub(fragment, body) for name, body in named.items() if name not in used}


_FRAGMENT = re.compile(r"\$(\w+)")


QUERIES = load_queries()


def listen(conn, channel: str):
    """LISTEN on a channel (sync or async connection: await the result of the latter). LISTEN
    takes an identifier, not a bound parameter, so it is composed here, never formatted."""
    return conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))


def yoyo_url(database_url: str) -> str:
    """yoyo picks its driver by URL scheme; psycopg 3 is `postgresql+psycopg`."""
    scheme, _, rest = database_url.partition("://")
    return f"postgresql+psycopg://{rest}" if scheme in ("postgres", "postgresql") else database_url


def migrate(database_url: str) -> int:
    """Apply every pending migration under yoyo's lock; returns how many were applied."""
    import yoyo

    backend = yoyo.get_backend(yoyo_url(database_url))
    try:
        migrations = yoyo.read_migrations(str(MIGRATIONS_DIR))
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        return len(pending)
    finally:
        backend.connection.close()


# --------------------------------------------------------------------------- log entries

# The columns of copy_log_entries, as lines.add_line makes its rows: the context is JSON text.
ENTRY_TYPES = ("uuid", "int8", "timestamptz", "text", "text", "text", "text", "text", "jsonb")


class JsonTextAsJsonb(Dumper):
    """jsonb's binary form (a version byte, then the text) of JSON text already written,
    where psycopg's own would write a str as a JSON string."""

    format = Format.BINARY
    oid = psycopg.postgres.types["jsonb"].oid

    def dump(self, obj: str) -> bytes:
        return b"\x01" + obj.encode()


def copy_entries(cur, rows, statement: Any = None) -> None:
    """COPY log entries in binary (copy_log_entries, or `statement` with the same columns):
    psycopg spends half the CPU per row it spends on text, and Postgres parses no text for
    the uuid, the number and the time."""
    cur.adapters.register_dumper(None, JsonTextAsJsonb)  # by type: the context's, set below
    with cur.copy(statement or QUERIES["copy_log_entries"]) as copy:
        copy.set_types(ENTRY_TYPES)
        for row in rows:
            copy.write_row(row)


# --------------------------------------------------------------------------- storage


def s3_client(settings: Settings):
    """A boto3 client for an S3-compatible server: path-style addressing, SigV4, bounded retries."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        region_name=settings.aws_region,
        config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=20,
        ),
    )


def process_name(process: str) -> str:
    """How this process names its connections (RabbitMQ's connection name, Postgres's
    application_name), so an operator or a test can tell whose they are."""
    return f"eventhorizon-{process} pid {os.getpid()}"
