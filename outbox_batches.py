"""The relay's ledger of outbox batches (outbox_batch, sql/migrations/0003_outbox_batch.sql): a
batch of outbox rows is claimed and recorded with its dedup token (committed) before it is
sent, read back as the JSONEachRow lines Postgres builds, and deleted with its rows once
ClickHouse has them; what a salvage refuses is dead-lettered, what it leaves is split into rows
of its own. relay.py drives these steps; each runs in the caller's transaction unless it says
otherwise."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

from psycopg.rows import class_row, namedtuple_row, tuple_row

from core import QUERIES


@dataclasses.dataclass(frozen=True)
class OutboxBatch:
    """A recorded batch (a row of outbox_batch): its outbox ids (ascending) and the dedup token
    it is always sent with."""

    batch_id: int
    ids: list[int]
    token: str
    attempts: int = 0


def claim_batch(conn, max_rows: int, max_wait_s: float) -> tuple[OutboxBatch, list] | None:
    """Claim the oldest unclaimed outbox rows and record them as a batch (committed), if due:
    rows of `max_rows` events (a range row counts its lines'), or fewer once the oldest has
    waited `max_wait_s`. None otherwise. The events come as batch_rows gives them."""
    with conn.transaction():
        conn.execute(QUERIES["lock_outbox_claims"])
        cur = conn.cursor(row_factory=namedtuple_row)
        claimed = cur.execute(QUERIES["claim_outbox_batch"], {"max_rows": max_rows}).fetchall()
        claimed = without_recorded_rows(conn, claimed)
        if not claimed or (
            sum(r.events for r in claimed) < max_rows and max(r.age_s for r in claimed) < max_wait_s
        ):
            return None  # commits nothing; the row locks go
        ids = [r.id for r in claimed]
        rows = batch_rows(conn, ids)
        # The ids claimed, not those of the events read: a range row of a deleted job has no
        # event left, and goes with the batch all the same.
        return record_outbox_batch(conn, rows, ids=ids), rows


def without_recorded_rows(conn, rows: list) -> list:
    """Drop rows another batch was recorded with after the claim's snapshot was taken (its
    relay released them by dying between our snapshot and our lock)."""
    if not rows:
        return rows
    cur = conn.cursor(row_factory=tuple_row)
    taken = {
        i
        for (i,) in cur.execute(
            QUERIES["outbox_batch_overlap"], {"first_id": rows[0].id, "last_id": rows[-1].id}
        )
    }
    return [r for r in rows if r.id not in taken] if taken else rows


def batch_token(rows: Sequence) -> str:
    """The batch's insert_deduplication_token: a hash of its events' outbox ids and event ids,
    so the same events always get the same token, and another database's batch 1 does not
    collide."""
    digest = hashlib.sha256()
    for r in rows:
        digest.update(r.id.to_bytes(8, "big"))
        digest.update(r.event_id.bytes)
    return f"eh-outbox-{len(rows)}-{digest.hexdigest()[:40]}"


def record_outbox_batch(
    conn, rows: list, attempts: int = 0, ids: list[int] | None = None
) -> OutboxBatch:
    """Record events as a batch in outbox_batch, with their dedup token (caller's transaction):
    the outbox rows `ids` (ascending; by default the events')."""
    ids = ids or sorted({r.id for r in rows})
    return batch_query(
        conn,
        "record_outbox_batch",
        {
            "first_id": ids[0],
            "last_id": ids[-1],
            "ids": ids,
            "token": batch_token(rows),
            "attempts": attempts,
        },
    ).fetchone()


def take_unfinished_batch(conn) -> OutboxBatch | None:
    """Lock the oldest recorded batch no relay is sending (caller's transaction)."""
    return batch_query(conn, "take_unfinished_outbox_batch", {}).fetchone()


def lock_batch(conn, batch_id: int) -> OutboxBatch | None:
    """Lock a recorded batch (caller's transaction); None if gone or another relay has it."""
    return batch_query(conn, "lock_outbox_batch", {"batch_id": batch_id}).fetchone()


def batch_query(conn, name: str, params: dict):
    """Run a named query returning outbox_batch rows; its cursor yields OutboxBatches."""
    return conn.cursor(row_factory=class_row(OutboxBatch)).execute(QUERIES[name], params)


def batch_rows(conn, ids: list[int]) -> list:
    """A recorded batch's events, each with its outbox row's id, its `line_no` (a range row's
    line, else 0), its event_id and its JSONEachRow `line` (bytes)."""
    cur = conn.cursor(row_factory=namedtuple_row, binary=True)
    return cur.execute(QUERIES["outbox_batch_rows"], {"ids": ids}).fetchall()


def delete_batch(conn, batch: OutboxBatch, keep: set[int] = frozenset()) -> None:
    """Delete the batch's outbox rows but those in `keep`, and its record (caller's
    transaction)."""
    ids = [i for i in batch.ids if i not in keep] if keep else batch.ids
    conn.execute(QUERIES["delete_outbox_rows"], {"ids": ids})
    conn.execute(QUERIES["delete_outbox_batch"], {"batch_id": batch.batch_id})


def dead_letter_rows(conn, rows: list, error: str) -> None:
    """Copy the events to outbox_dead with the error (caller's transaction): a per-event row
    as it is, a range row's event as built from its entry; delete_batch then deletes the rows
    from the outbox."""
    if ids := [r.id for r in rows if not r.line_no]:
        conn.execute(QUERIES["dead_letter_outbox_rows"], {"ids": ids, "error": error})
    if lines := [r for r in rows if r.line_no]:
        conn.execute(
            QUERIES["dead_letter_line_events"],
            {"ids": [r.id for r in lines], "lines": [r.line_no for r in lines], "error": error},
        )


def split_ranges(conn, part: list) -> list:
    """A part of a batch a salvage left for later, its range rows' events moved to range rows
    of their own, each holding just this part's lines of it (caller's transaction): the range
    row they came from is deleted with the batch, and may have had other lines sent, refused
    or left in another part. Per-event rows stay as they are."""
    cur = conn.cursor(row_factory=tuple_row)
    moved: dict[int, int] = {}
    for range_id in dict.fromkeys(r.id for r in part if r.line_no):
        lines = [r.line_no for r in part if r.id == range_id]
        (moved[range_id],) = cur.execute(
            QUERIES["split_outbox_range"],
            {"id": range_id, "first_line": lines[0], "last_line": lines[-1], "events": len(lines)},
        ).fetchone()
    return [r._replace(id=moved[r.id]) if r.line_no else r for r in part]


def outbox_pending(conn, max_rows: int) -> tuple[int, float]:
    """Unclaimed rows (counting at most `max_rows`) and the age of the oldest of them, in s."""
    rows, oldest_age_s = (
        conn.cursor(row_factory=tuple_row)
        .execute(QUERIES["outbox_pending"], {"max_rows": max_rows})
        .fetchone()
    )
    return rows, oldest_age_s
