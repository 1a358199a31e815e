"""The transactional outbox: events written in the caller's transaction, for the relay to
move into ClickHouse's event_log exactly once.

`publish_event` is the interface other code uses to emit an event: it writes to the outbox on
the caller's connection, inside the caller's transaction, and never commits.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import core

CHANNEL = "eh_outbox"  # NOTIFY: new events (the relay wakes up)
METADATA_VERSION = 1


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
        return (
            self.event_id,
            self.event_type,
            self.event_date_time,
            self.environment,
            json.dumps(self.context, default=str),
            self.metadata_version,
        )

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
    yields the same id. The relay computes it in SQL (sql/queries.sql: line_event_id) for the
    events it builds from entries; tests/test_relay.py checks both agree."""
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


def publish_event(
    conn,
    event_type: str,
    context: Mapping[str, Any],
    *,
    environment: str,
    event_date_time: dt.datetime | None = None,
    event_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Write one event to the outbox in the caller's transaction (psycopg sync connection).

    Never commits and never talks to ClickHouse: if the caller's transaction rolls back the
    event is gone; if it commits, the relay delivers it exactly once.
    """
    event = make_event(
        event_type,
        context,
        environment=environment,
        event_date_time=event_date_time,
        event_id=event_id,
    )
    insert_event(conn, event)
    return event.event_id


def insert_event(conn, event: Event) -> None:
    conn.execute(core.QUERIES["insert_outbox_event"], event.as_params())
    conn.execute(core.QUERIES["notify"], {"channel": CHANNEL, "payload": ""})


async def ainsert_event(aconn, event: Event) -> None:
    """`insert_event` for a psycopg AsyncConnection (the API's job.queued)."""
    await aconn.execute(core.QUERIES["insert_outbox_event"], event.as_params())
    await aconn.execute(core.QUERIES["notify"], {"channel": CHANNEL, "payload": ""})


async def ainsert_events(aconn, events: Iterable[Event]) -> None:
    """Many events in the caller's transaction (psycopg AsyncConnection), one NOTIFY."""
    async with aconn.cursor() as cur:
        await cur.executemany(core.QUERIES["insert_outbox_event"], [e.as_params() for e in events])
    await aconn.execute(core.QUERIES["notify"], {"channel": CHANNEL, "payload": ""})


def copy_events(cur, events: Iterable[Event]) -> None:
    """The batch form of `publish_event`: COPY many events on the caller's cursor."""
    copy_outbox_rows(cur, (e.as_row() for e in events))


def copy_outbox_rows(cur, rows: Iterable[tuple]) -> None:
    """COPY ready-made outbox rows: (event_id, event_type, event_date_time, environment,
    event_context as JSON text, metadata_version)."""
    with cur.copy(core.QUERIES["copy_outbox"]) as copy:
        for row in rows:
            copy.write_row(row)
    cur.execute(core.QUERIES["notify"], {"channel": CHANNEL, "payload": ""})


def insert_line_range(
    cur, job_id: uuid.UUID, first_line: int, last_line: int, events: int, trace_id: str | None
) -> None:
    """The line events of a batch of a job's entries, in the batch's transaction: one row
    naming lines first_line..last_line, of which `events` are entries (log_entries). The relay
    builds each event from its entry (sql/queries.sql: range_event_log_line), with the id
    `line_event_id` gives and the trace `trace_id` (None: none)."""
    cur.execute(
        core.QUERIES["insert_outbox_range"],
        {
            "job_id": job_id,
            "first_line": first_line,
            "last_line": last_line,
            "events": events,
            "trace_id": trace_id,
        },
    )
    cur.execute(core.QUERIES["notify"], {"channel": CHANNEL, "payload": ""})


def outbox_status_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """{backlog, oldest_age_s, dead} from the outbox_status query's row: events not yet in
    ClickHouse, how long the oldest has waited (0 when none), events in outbox_dead."""
    return {
        "backlog": row["backlog"],
        "oldest_age_s": round(row["oldest_age_s"], 3),
        "dead": row["dead"],
    }
