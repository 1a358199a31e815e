"""What the API, the worker and the relay share: settings, logging, SQL, the outbox, storage.

`publish_event` is the interface other code uses to emit an event: it writes to the outbox on
the caller's connection, inside the caller's transaction, and never commits.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import structlog

ROOT = Path(__file__).resolve().parent
SQL_DIR = ROOT / "sql"
MIGRATIONS_DIR = SQL_DIR / "migrations"
LOG_ENTRY_SCHEMA_PATH = ROOT / "log_entry.schema.json"

JOB_CHANNEL = "eh_job"
OUTBOX_CHANNEL = "eh_outbox"
TERMINAL_STATUSES = frozenset({"completed", "failed"})
METADATA_VERSION = 1


class ConfigError(Exception):
    """A setting from the environment is missing or malformed."""


# --------------------------------------------------------------------------- settings


def _env_str(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def _env_number(env: Mapping[str, str], name: str, default, kind=int, minimum=0):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {raw!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Settings:
    """All configuration, read once from the environment (see the README's table)."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/eventhorizon"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    s3_endpoint_url: str = "http://127.0.0.1:8333"
    s3_bucket: str = "eventhorizon"
    aws_access_key_id: str = "eventhorizon"
    aws_secret_access_key: str = "eventhorizon-dev-secret"
    aws_region: str = "us-east-1"
    clickhouse_url: str = f"chdb://{ROOT / 'var' / 'clickhouse'}"
    queue: str = "eventhorizon.jobs"
    environment: str = "production"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    max_upload_bytes: int = 1024**3
    line_delay_max_s: float = 0.0
    batch_lines: int = 5000
    max_attempts: int = 5
    requeue_after_s: float = 60.0
    relay_batch_max_rows: int = 10_000
    relay_batch_max_wait_s: float = 1.0
    relay_poll_s: float = 5.0
    log_format: str = "console" if sys.stdout.isatty() else "json"
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        d = cls()
        log_format = _env_str(env, "LOG_FORMAT", d.log_format).lower()
        if log_format not in ("json", "console"):
            raise ConfigError(f"LOG_FORMAT must be json or console, got {log_format!r}")
        log_level = _env_str(env, "LOG_LEVEL", d.log_level).upper()
        if log_level not in logging.getLevelNamesMapping():
            raise ConfigError(f"LOG_LEVEL must be a logging level name, got {log_level!r}")
        return cls(
            database_url=_env_str(env, "DATABASE_URL", d.database_url),
            amqp_url=_env_str(env, "AMQP_URL", d.amqp_url),
            s3_endpoint_url=_env_str(env, "S3_ENDPOINT_URL", d.s3_endpoint_url),
            s3_bucket=_env_str(env, "S3_BUCKET", d.s3_bucket),
            aws_access_key_id=_env_str(env, "AWS_ACCESS_KEY_ID", d.aws_access_key_id),
            aws_secret_access_key=_env_str(env, "AWS_SECRET_ACCESS_KEY", d.aws_secret_access_key),
            aws_region=_env_str(env, "AWS_REGION", d.aws_region),
            clickhouse_url=_env_str(env, "CLICKHOUSE_URL", d.clickhouse_url),
            queue=_env_str(env, "EH_QUEUE", d.queue),
            environment=_env_str(env, "EH_ENVIRONMENT", d.environment),
            http_host=_env_str(env, "EH_HTTP_HOST", d.http_host),
            http_port=_env_number(env, "EH_HTTP_PORT", d.http_port),
            max_upload_bytes=_env_number(env, "EH_MAX_UPLOAD_BYTES", d.max_upload_bytes, minimum=1),
            line_delay_max_s=_env_number(env, "EH_LINE_DELAY_MAX_S", d.line_delay_max_s, float),
            batch_lines=_env_number(env, "EH_BATCH_LINES", d.batch_lines, minimum=1),
            max_attempts=_env_number(env, "EH_MAX_ATTEMPTS", d.max_attempts, minimum=1),
            requeue_after_s=_env_number(env, "EH_REQUEUE_AFTER_S", d.requeue_after_s, float),
            relay_batch_max_rows=_env_number(
                env, "RELAY_BATCH_MAX_ROWS", d.relay_batch_max_rows, minimum=1
            ),
            relay_batch_max_wait_s=_env_number(
                env, "RELAY_BATCH_MAX_WAIT_S", d.relay_batch_max_wait_s, float
            ),
            relay_poll_s=_env_number(env, "RELAY_POLL_S", d.relay_poll_s, float),
            log_format=log_format,
            log_level=log_level,
        )


def load_settings() -> Settings:
    """Settings for a process entry point: a bad value stops the process with a clear message."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")


# --------------------------------------------------------------------------- logging


def configure_logging(settings: Settings) -> None:
    """structlog for our code and for the stdlib loggers of aiohttp, pika and psycopg."""
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if settings.log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # pika narrates every frame at INFO; its warnings and errors are what matter.
    logging.getLogger("pika").setLevel(max(logging.WARNING, root.level))


# --------------------------------------------------------------------------- SQL


_QUERY_HEADER = re.compile(r"^-- name: (\w+) --$", re.MULTILINE)


def load_queries(path: Path = SQL_DIR / "queries.sql") -> dict[str, str]:
    """The named `-- name: x --` blocks of queries.sql, by name."""
    parts = _QUERY_HEADER.split(path.read_text())
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2])}


QUERIES = load_queries()


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


# --------------------------------------------------------------------------- jobs


def job_json(job: Mapping[str, Any]) -> dict[str, Any]:
    """The public JSON shape of a job row (GET /api/v1/jobs/{id}, WebSocket messages)."""
    total = job["lines_total"]
    if job["status"] == "completed":
        progress = 1.0
    else:
        progress = round(job["lines_processed"] / total, 4) if total else 0.0
    return {
        "job_id": str(job["job_id"]),
        "file_name": job["file_name"],
        "size_bytes": job["size_bytes"],
        "status": job["status"],
        "lines_total": total,
        "lines_processed": job["lines_processed"],
        "lines_valid": job["lines_valid"],
        "lines_invalid": job["lines_invalid"],
        "progress": progress,
        "created_at": _iso(job["created_at"]),
        "started_at": _iso(job["started_at"]),
        "completed_at": _iso(job["completed_at"]),
        "error": job["error"],
    }


def job_notification(job: Mapping[str, Any]) -> str:
    """NOTIFY payload for a job change: ids and counts only; listeners re-read the row."""
    return json.dumps(
        {
            "job_id": str(job["job_id"]),
            "status": job["status"],
            "lines_processed": job["lines_processed"],
        }
    )


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --------------------------------------------------------------------------- outbox


@dataclasses.dataclass(frozen=True)
class Event:
    """One outbox row: a row of ClickHouse's event_log once the relay has moved it."""

    event_type: str
    context: Mapping[str, Any]
    environment: str
    event_date_time: dt.datetime
    event_id: uuid.UUID
    metadata_version: int = METADATA_VERSION

    def as_row(self) -> tuple:
        return (self.event_id, self.event_type, self.event_date_time, self.environment,
                json.dumps(self.context, default=str), self.metadata_version)

    def as_params(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "event_date_time": self.event_date_time,
            "environment": self.environment,
            "event_context": json.dumps(self.context, default=str),
            "metadata_version": self.metadata_version,
        }


def make_event(
    event_type: str,
    context: Mapping[str, Any],
    *,
    environment: str,
    event_date_time: dt.datetime | None = None,
    event_id: uuid.UUID | None = None,
) -> Event:
    return Event(
        event_type=event_type,
        context=context,
        environment=environment,
        event_date_time=event_date_time or dt.datetime.now(dt.timezone.utc),
        event_id=event_id or uuid.uuid4(),
    )


def line_event_id(job_id: uuid.UUID, line_no: int) -> uuid.UUID:
    """The stable event id of a log line, uuid5(job_id, str(line_no)): re-processing the line
    yields the same id."""
    return uuid.UUID(line_event_ids(job_id)(line_no))


def line_event_ids(job_id: uuid.UUID) -> Callable[[int], str]:
    """`line_event_id` for many lines of one job, as hex strings: the hash of the job id is
    computed once (this runs for every line of every file)."""
    prefix = hashlib.sha1(job_id.bytes, usedforsecurity=False)

    def event_id(line_no: int) -> str:
        digest = prefix.copy()
        digest.update(b"%d" % line_no)
        raw = bytearray(digest.digest()[:16])
        raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        return raw.hex()

    return event_id


def publish_event(conn, event_type: str, context: Mapping[str, Any], *, environment: str,
                  event_date_time: dt.datetime | None = None,
                  event_id: uuid.UUID | None = None) -> uuid.UUID:
    """Write one event to the outbox in the caller's transaction (psycopg sync connection).

    Never commits and never talks to ClickHouse: if the caller's transaction rolls back the
    event is gone; if it commits, the relay delivers it exactly once.
    """
    event = make_event(event_type, context, environment=environment,
                       event_date_time=event_date_time, event_id=event_id)
    insert_event(conn, event)
    return event.event_id


async def apublish_event(aconn, event_type: str, context: Mapping[str, Any], *,
                         environment: str, event_date_time: dt.datetime | None = None,
                         event_id: uuid.UUID | None = None) -> uuid.UUID:
    """`publish_event` for a psycopg AsyncConnection (the API)."""
    event = make_event(event_type, context, environment=environment,
                       event_date_time=event_date_time, event_id=event_id)
    await ainsert_event(aconn, event)
    return event.event_id


def insert_event(conn, event: Event) -> None:
    conn.execute(QUERIES["insert_outbox_event"], event.as_params())
    conn.execute(QUERIES["notify_outbox"])


async def ainsert_event(aconn, event: Event) -> None:
    await aconn.execute(QUERIES["insert_outbox_event"], event.as_params())
    await aconn.execute(QUERIES["notify_outbox"])


def copy_events(cur, events: Iterable[Event]) -> None:
    """The batch form of `publish_event`: COPY many events on the caller's cursor."""
    copy_outbox_rows(cur, (e.as_row() for e in events))


def copy_outbox_rows(cur, rows: Iterable[tuple]) -> None:
    """COPY ready-made outbox rows: (event_id, event_type, event_date_time, environment,
    event_context as JSON text, metadata_version). The worker's hot path uses this directly."""
    with cur.copy(QUERIES["copy_outbox"]) as copy:
        for row in rows:
            copy.write_row(row)
    cur.execute(QUERIES["notify_outbox"])


def job_event(event_type: str, job: Mapping[str, Any], *, environment: str) -> Event:
    """A lifecycle event (job.queued, job.started, job.completed, job.failed) for a job row.

    Its id is derived from the job and the event type, so a retried step yields the same id.
    """
    context = {"job_id": str(job["job_id"]), "file_name": job["file_name"],
               "status": job["status"], "lines_total": job["lines_total"],
               "lines_valid": job["lines_valid"], "lines_invalid": job["lines_invalid"],
               "error": job["error"]}
    return make_event(event_type, context, environment=environment,
                      event_id=uuid.uuid5(job["job_id"], event_type))


# --------------------------------------------------------------------------- storage


def s3_client(settings: Settings):
    """A boto3 S3 client for MinIO/SeaweedFS: path-style addressing, SigV4, bounded retries."""
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


# --------------------------------------------------------------------------- broker


def amqp_parameters(settings: Settings, process: str):
    """pika connection parameters from AMQP_URL, named after the process (shown by RabbitMQ's
    management UI and `rabbitmqctl list_connections`)."""
    import pika

    params = pika.URLParameters(settings.amqp_url)
    params.client_properties = {"connection_name": f"eventhorizon-{process} pid {os.getpid()}"}
    return params


def declare_queues(channel, queue: str) -> None:
    """The durable job queue, its dead-letter queue (rejected messages land there) and its
    retry queue (a message parked there returns to the job queue when its expiration is up).

    The API and the worker both declare them, with the same arguments, so either may start first.
    """
    channel.queue_declare(queue=dead_letter_queue(queue), durable=True)
    channel.queue_declare(
        queue=retry_queue(queue),
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue},
    )
    channel.queue_declare(
        queue=queue,
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead_letter_queue(queue)},
    )


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dead"


def retry_queue(queue: str) -> str:
    return f"{queue}.retry"


def job_message(job: Mapping[str, Any]) -> bytes:
    """The RabbitMQ message for a job: ids only; the worker reads the rest from Postgres."""
    return json.dumps(
        {"job_id": str(job["job_id"]), "bucket": job["bucket"], "key": job["object_key"]}
    ).encode()


def parse_job_message(body: bytes) -> uuid.UUID:
    """The job id of a message; ValueError for a malformed one."""
    try:
        return uuid.UUID(json.loads(body)["job_id"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed job message: {exc}") from None
