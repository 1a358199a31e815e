"""The relay: moves events from the Postgres outbox into ClickHouse's event_log, exactly once.

    python relay.py

A long-running loop, run in RELAY_LANES lanes side by side (run_lanes), so that one lane's
Postgres work overlaps another's ClickHouse insert. Each batch goes through three steps, each
its own transaction:

1. claim: the oldest outbox rows (`FOR UPDATE SKIP LOCKED`) are recorded in outbox_batch with
   their ids and a dedup token derived from them, and that record is committed. A row is one
   event, or a range of a job's lines (one row per worker batch): its events are built from
   the log entries, one per entry, when the batch is read (outbox_batch_rows);
2. send: with its outbox_batch row locked, the batch is inserted into ClickHouse with the token
   as `insert_deduplication_token`, as the JSONEachRow lines Postgres built (nothing decoded);
3. once ClickHouse has acknowledged, the outbox rows and the record are deleted, in that same
   transaction, which then commits.

A relay that dies (or loses a connection) after step 1 leaves the record behind, unlocked; the
next relay to look re-sends exactly those rows with the same token, and ClickHouse drops the
insert if it already has it. Because the record fixes the rows, this holds even when new rows
arrived in the meantime. Several relays side by side take different records (SKIP LOCKED) and
never claim rows a record covers.
A re-sent batch is then looked up in event_log, and what ClickHouse dropped as a duplicate
without having it is inserted again (restore_missing).

ClickHouse errors keep the rows. A batch ClickHouse refuses for the data's sake (by its error
code, clickhouse_errors.py: bad data, or rows too big for one insert, not a lost connection or a
server problem) is retried; on the DEAD_AFTER_ATTEMPTS-th refusal it is salvaged:
sent again in halves, and every refused half halved again, so the rows ClickHouse takes reach it
and only the rows it refuses on their own move to outbox_dead, each with its error. Anything
else is retried forever with capped exponential backoff.

Deleted jobs: when it is idle, the relay also deletes from event_log the events of jobs deleted
through the API, once none of their events is left in the outbox
(event_log.delete_events_of_deleted_jobs).

The loop sleeps on LISTEN eh_outbox (RELAY_POLL_S is the fallback wake-up) and lets a small
batch fill for up to RELAY_BATCH_MAX_WAIT_S, counted from its oldest row's created_at.
SIGTERM or SIGINT stops it (stopping.py): the current batch is finished, or abandoned after
EH_STOP_GRACE_S or a second signal (its transaction rolls back; the recorded batch is re-sent
by the next relay).

Fault injection, for tests only: with EH_RELAY_CRASH_AFTER_INSERT=1 the process SIGKILLs itself
right after ClickHouse acknowledged its first batch and before the Postgres commit.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

import psycopg
import structlog
from opentelemetry import trace
from psycopg.rows import tuple_row

import clickhouse_errors
import config
import core
import event_log
import logs
import observe
import outbox
import outbox_batches
import stopping
from core import QUERIES

log = structlog.get_logger("relay")
tracer = trace.get_tracer("eventhorizon.relay")

DEAD_AFTER_ATTEMPTS = 3
# Salvaging a refused batch halves it at most this many times in one transaction (one bad
# row in 10,000 takes about 14): the parts still refused then are recorded as batches of their
# own, salvaged later, so one transaction never sends more parts than ClickHouse's dedup window
# remembers, and no part is given up while it may hold rows ClickHouse would take.
SALVAGE_MAX_REFUSALS = 64
RECHECK_EVERY_S = 0.25  # while a small batch fills, NOTIFYs trigger a look at most this often
MAX_LINKS = 32  # a batch span links to at most this many traces of the events it carries
LINK_SAMPLES = 256  # events of a batch whose trace id is read for those links
AUDIT_EXPIRY_INTERVAL_S = 3600.0  # an idle relay deletes audit events past EH_AUDIT_RETENTION_DAYS
TRACE_ID_MEMBER = re.compile(rb'"trace_id": "([0-9a-f]{32})"')


def main() -> int:
    settings = config.load_settings()
    try:
        check_engine_installed(settings.clickhouse_url)
    except config.ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    logs.configure_logging(settings)
    observe.setup_tracing(settings, "eventhorizon-relay")
    try:
        observe.serve_metrics(observe.RELAY, settings, settings.relay_metrics_port)
    except OSError as exc:
        sys.exit(
            f"cannot serve metrics on {settings.metrics_host}:"
            f"{settings.relay_metrics_port} (RELAY_METRICS_PORT): {exc}"
        )
    stop = stopping.Stopper("relay", settings.stop_grace_s)
    stop.install()
    crash = settings.relay_crash_after_insert
    log.info(
        "relay.started",
        clickhouse=config.redact_url(settings.clickhouse_url),
        batch_max_rows=settings.relay_batch_max_rows,
        batch_max_wait_s=settings.relay_batch_max_wait_s,
        poll_s=settings.relay_poll_s,
        lanes=settings.relay_lanes,
        fault_injection="EH_RELAY_CRASH_AFTER_INSERT" if crash else None,
        metrics=f"{settings.metrics_host}:{settings.relay_metrics_port}"
        if settings.relay_metrics_port
        else None,
    )
    try:
        run_lanes(settings, stop, after_insert=crash_after_insert if crash else None)
    finally:
        stop.close()
    log.info("relay.stopped")
    return 0


def check_engine_installed(url: str) -> None:
    """chdb:// needs the embedded engine, an optional extra (the image leaves it out): without
    it the relay stops at once, rather than retrying a connection that can never be made."""
    if url.startswith("chdb:") and importlib.util.find_spec("chdb") is None:
        raise config.ConfigError(
            "CLICKHOUSE_URL is chdb://, but the embedded engine (chdb) is not installed: "
            "pip install '.[embedded]', or set CLICKHOUSE_URL to a server, http(s)://..."
        )


def crash_after_insert(_rows) -> None:
    """Fault injection (EH_RELAY_CRASH_AFTER_INSERT=1, tests only): die the hard way after
    ClickHouse acknowledged a batch and before the Postgres commit, as a power cut would."""
    os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------- the loop


def run_lanes(
    settings: config.Settings,
    stop: stopping.Stopper,
    *,
    after_insert: Callable[[list], None] | None = None,
) -> None:
    """`run` in RELAY_LANES lanes side by side, the first in this (the main) thread, so that
    Postgres reads the next batch while ClickHouse takes the current one. Lanes are relays as
    far as the outbox is concerned: each claims its own batches (SKIP LOCKED) with its own
    connections, and a lane that dies leaves its batch recorded, for any lane to re-send.

    The others are daemon threads: when the Stopper gives up on them (a second signal, or
    EH_STOP_GRACE_S after the first), the process exits and their transactions roll back
    with their connections. A lane that fails stops them all, and its error is raised here."""
    failures: list[BaseException] = []

    def lane(n: int) -> None:
        structlog.contextvars.bind_contextvars(lane=n)
        try:
            run(settings, stop, after_insert=after_insert)
        except BaseException as exc:  # raised in the main thread, below
            failures.append(exc)
            stop.request(f"lane {n} failed")

    others = [
        threading.Thread(target=lane, args=(n,), name=f"relay-lane-{n}", daemon=True)
        for n in range(1, settings.relay_lanes)
    ]
    for thread in others:
        thread.start()
    try:
        run(settings, stop, after_insert=after_insert)
    finally:
        stop.request("the main lane stopped")
        for thread in others:
            thread.join()
    if failures:
        raise failures[0]


def run(
    settings: config.Settings,
    stop: stopping.Stopper,
    *,
    after_insert: Callable[[list], None] | None = None,
) -> None:
    """Deliver batches until `stop` is requested; reconnect and back off whenever a side fails."""
    backoff = core.Backoff()
    pg = listener = ch = None
    audit_expiry_due = 0.0  # when, by time.monotonic(), to delete expired audit events next
    try:
        while not stop.is_set():
            try:
                if pg is None:
                    pg, listener = connect_postgres(settings.database_url)
                if ch is None:
                    ch = event_log.connect_clickhouse(settings.clickhouse_url)
                    log.info("relay.clickhouse_connected", event_log="ready")
                    event_log.fill_missing_owners(pg, ch)
                if relay_once(pg, ch, settings, after_insert=after_insert) == 0:
                    event_log.delete_events_of_deleted_jobs(pg, ch)
                    if time.monotonic() >= audit_expiry_due:  # EH_AUDIT_RETENTION_DAYS, hourly
                        event_log.delete_old_audit_events(ch, settings.audit_retention_days)
                        audit_expiry_due = time.monotonic() + AUDIT_EXPIRY_INTERVAL_S
                    wait_for_work(pg, listener, settings, stop)
                backoff.reset()
            except BatchRejected as exc:
                delay = backoff.next()
                log.warning(
                    "relay.batch_rejected",
                    batch_id=exc.batch_id,
                    attempts=exc.attempts,
                    error=exc.error[: event_log.MAX_ERROR_CHARS // 3],
                    retry_in_s=delay,
                )
                stop.wait(delay)
            except event_log.ClickHouseUnavailable as exc:
                delay = backoff.next()
                log.warning(
                    "relay.clickhouse_unavailable",
                    error=str(exc)[: event_log.MAX_ERROR_CHARS // 3],
                    retry_in_s=delay,
                )
                observe.RELAY_BATCHES.labels("unavailable").inc()
                ch = close_quietly(ch)  # reconnect: also re-creates a dropped event_log
                stop.wait(delay)
            except psycopg.Error as exc:
                if not core.is_outage(exc):
                    raise
                delay = backoff.next()
                log.warning("relay.postgres_unavailable", error=str(exc).strip(), retry_in_s=delay)
                pg, listener = close_quietly(pg), close_quietly(listener)
                stop.wait(delay)
    finally:
        for resource in (ch, listener, pg):
            close_quietly(resource)


def wait_for_work(pg, listener, settings: config.Settings, stop: stopping.Stopper) -> None:
    """Sleep until a batch may be due: rows arrive (NOTIFY), a small batch's wait is over, or
    RELAY_POLL_S passes (the fallback that also picks up batches another relay left behind)."""
    max_rows = settings.relay_batch_max_rows
    pending, oldest_age_s = outbox_batches.outbox_pending(pg, max_rows)
    if pending == 0:
        if stop.wait_readable(settings.relay_poll_s, listener):
            drain_notifies(listener)
        else:
            listener.execute("SELECT 1")  # idle: make sure the listening connection is alive
        return
    deadline = time.monotonic() + settings.relay_batch_max_wait_s - oldest_age_s
    if pending >= max_rows or time.monotonic() >= deadline:
        # Due now, yet nothing was claimed: another relay holds these rows for a moment.
        stop.wait(RECHECK_EVERY_S / 10)
        return
    while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
        if stop.wait_readable(min(remaining, settings.relay_poll_s), listener):
            drain_notifies(listener)
            if outbox_batches.outbox_pending(pg, max_rows)[0] >= max_rows:
                return  # a full batch needs no more waiting
            stop.wait(min(RECHECK_EVERY_S, max(deadline - time.monotonic(), 0.0)))


def drain_notifies(listener) -> None:
    for _ in listener.notifies(timeout=0):
        pass


def connect_postgres(database_url: str):
    """The relay's working connection and its LISTEN connection (both autocommit)."""
    name = core.process_name("relay")  # application_name: whose connection it is
    pg = psycopg.connect(database_url, autocommit=True, application_name=name)
    try:
        listener = psycopg.connect(database_url, autocommit=True, application_name=name)
    except BaseException:
        pg.close()
        raise
    core.listen(listener, outbox.CHANNEL)
    return pg, listener


def close_quietly(resource) -> None:
    """Close a connection or client whose side may already be gone; returns None."""
    if resource is not None:
        try:
            resource.close()
        except Exception as exc:  # noqa: BLE001 - closing a broken connection; nothing to keep
            log.debug("relay.close_failed", error=repr(exc))
    return None


# --------------------------------------------------------------------------- ClickHouse


class BatchRejected(Exception):
    """ClickHouse refused a batch as malformed. The refusal is counted on its outbox_batch row;
    the rows stay in the outbox until the DEAD_AFTER_ATTEMPTS-th, which salvages the batch (see
    salvage): the rows ClickHouse takes in smaller parts reach it, the rest go to outbox_dead."""

    def __init__(self, batch_id: int, attempts: int, error: str):
        super().__init__(f"batch {batch_id} refused ({attempts}/{DEAD_AFTER_ATTEMPTS}): {error}")
        self.batch_id, self.attempts, self.error = batch_id, attempts, error


# --------------------------------------------------------------------------- batches


@dataclasses.dataclass(frozen=True)
class Delivery:
    """What happened to one batch, logged by relay_once once its transaction has committed."""

    batch: outbox_batches.OutboxBatch
    rows: int = 0
    nbytes: int = 0
    lag_s: float = 0.0
    resent: bool = False
    rejection: BatchRejected | None = None
    dead: int = 0  # rows moved to outbox_dead
    dead_error: str | None = None  # the first of their errors
    left: int = 0  # rows of refused parts recorded as batches of their own, for later


def relay_once(
    conn, ch, settings: config.Settings, *, after_insert: Callable[[list], None] | None = None
) -> int:
    """Deliver at most one batch; returns how many events ClickHouse took (0: nothing due).

    A batch left unfinished (its relay died, or ClickHouse failed it) goes first, re-sent as
    recorded. Otherwise the oldest outbox rows are claimed if a batch is due: relay_batch_max_rows
    of them, or fewer once the oldest has waited relay_batch_max_wait_s.

    `conn` is an autocommit psycopg connection this relay alone uses; `ch` a clickhouse-connect
    client. `after_insert(rows)` runs after each ClickHouse acknowledgement, before the Postgres
    commit (benchmark timing, fault injection). Raises event_log.ClickHouseUnavailable, or
    BatchRejected; the rows stay in the outbox either way, unless the refusal was the last allowed:
    then the batch is salvaged, and the rows ClickHouse refused on their own are in outbox_dead.
    """
    started = time.monotonic()
    span = BatchSpan()
    try:
        delivery = take_and_deliver(conn, ch, settings, span, after_insert)
    except BaseException as exc:
        span.end(error=exc)
        raise
    if delivery is None:
        return 0
    try:
        with span.current():  # the batch's log lines name its trace
            return report(delivery, time.monotonic() - started)
    finally:
        span.end(delivery=delivery)


def take_and_deliver(
    conn,
    ch,
    settings: config.Settings,
    span: BatchSpan,
    after_insert: Callable[[list], None] | None,
) -> Delivery | None:
    """relay_once's work: the unfinished batch, else a new one if due (None: nothing)."""
    with conn.transaction():
        batch = outbox_batches.take_unfinished_batch(conn)
        if batch is not None:
            rows = outbox_batches.batch_rows(conn, batch.ids)
            span.claimed(batch, rows, resent=True)
            return deliver_batch(
                conn, ch, batch, rows, resent=True, after_insert=after_insert, span=span
            )
    claimed = outbox_batches.claim_batch(
        conn, settings.relay_batch_max_rows, settings.relay_batch_max_wait_s
    )
    if claimed is None:
        return None
    batch, rows = claimed
    with conn.transaction():
        # Locked, a recorded batch's rows stay as they were read: only its holder deletes them.
        if outbox_batches.lock_batch(conn, batch.batch_id) is None:
            return None  # another relay took it over in the moment between; it sends it
        span.claimed(batch, rows)
        return deliver_batch(conn, ch, batch, rows, after_insert=after_insert, span=span)


class BatchSpan:
    """The span of one batch, `relay.batch`, with its steps as children: `relay.claim`,
    `relay.insert` (ClickHouse, salvage included) and `relay.finish` (the outbox rows
    deleted or dead-lettered; the commit follows, inside relay.batch). It begins, back-dated
    to the claim, only once a batch is found, so an idle poll records nothing. It links to
    the traces of the events it carries (their `trace_id`, from a sample of them, at most
    MAX_LINKS), so a batch is found from the upload's trace and the other way round."""

    def __init__(self):
        self.start_ns = time.time_ns()
        self.span: trace.Span | None = None

    def claimed(
        self, batch: outbox_batches.OutboxBatch, rows: Sequence, *, resent: bool = False
    ) -> None:
        self.span = tracer.start_span(
            "relay.batch",
            start_time=self.start_ns,
            links=event_links(rows),
            attributes={"batch.id": batch.batch_id, "rows": len(rows), "resent": resent},
        )
        tracer.start_span(
            "relay.claim", context=trace.set_span_in_context(self.span), start_time=self.start_ns
        ).end()

    def current(self):
        """The batch's span made current, for what is logged about it (ended by `end`)."""
        return trace.use_span(
            self.span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )

    def step(self, name: str):
        """A child span of the batch around one step (nothing before a batch is found)."""
        if self.span is None:
            return contextlib.nullcontext()
        return observe.span(tracer, name, context=trace.set_span_in_context(self.span))

    def end(self, *, delivery: Delivery | None = None, error: BaseException | None = None) -> None:
        if self.span is None:
            return
        if error is not None:
            observe.record_failure(self.span, error)
        elif delivery.rejection is not None:
            self.span.set_status(trace.StatusCode.ERROR, "ClickHouse refused the batch")
        else:
            self.span.set_attributes(
                {
                    "rows_sent": delivery.rows,
                    "rows_dead": delivery.dead,
                    "rows_left": delivery.left,
                    "lag_s": delivery.lag_s,
                }
            )
        self.span.end()


def event_links(rows: Sequence) -> list[trace.Link]:
    """Links to the traces of a batch's events, at most MAX_LINKS, read from a sample of
    LINK_SAMPLES of them spread evenly over the batch, so the cost stays the same however large
    it is; a job with fewer events in the batch than one in LINK_SAMPLES may be missed. An
    event names its trace, not a span: each link is to the trace (span id 0), and says so."""
    found: dict[str, None] = {}
    for row in rows[:: max(1, len(rows) // LINK_SAMPLES)]:
        match = TRACE_ID_MEMBER.search(row.line)
        if match and (trace_id := match.group(1).decode()) not in found:
            found[trace_id] = None
            if len(found) == MAX_LINKS:
                break
    return [
        trace.Link(
            trace.SpanContext(int(t, 16), 0, is_remote=True),
            attributes={"eventhorizon.link": "the trace of events in this batch"},
        )
        for t in found
    ]


def report(delivery: Delivery, seconds: float) -> int:
    """Log a committed delivery; raise its rejection, if it was one."""
    batch = delivery.batch
    count_delivery(delivery)
    if delivery.rejection is not None:
        raise delivery.rejection
    if delivery.dead:
        log.error(
            "relay.batch_dead",
            batch_id=batch.batch_id,
            rows_sent=delivery.rows,
            rows_dead=delivery.dead,
            rows_left=delivery.left,
            attempts=DEAD_AFTER_ATTEMPTS,
            error=delivery.dead_error[: event_log.MAX_ERROR_CHARS // 3],
        )
    elif delivery.left:
        log.warning(
            "relay.batch_split",
            batch_id=batch.batch_id,
            rows_sent=delivery.rows,
            rows_left=delivery.left,
        )
    log.info(
        "relay.batch_sent",
        batch_id=batch.batch_id,
        rows=delivery.rows,
        bytes=delivery.nbytes,
        seconds=round(seconds, 3),
        lag_s=round(delivery.lag_s, 3),
        resent=delivery.resent,
    )
    return delivery.rows


def count_delivery(delivery: Delivery) -> None:
    """The relay's metrics for a committed delivery (observe.py)."""
    if delivery.rejection is not None:
        observe.RELAY_BATCHES.labels("rejected").inc()
        return
    salvaged = delivery.dead or delivery.left
    observe.RELAY_BATCHES.labels("salvaged" if salvaged else "sent").inc()
    observe.RELAY_EVENTS.inc(delivery.rows)
    observe.EVENTS_DEAD.inc(delivery.dead)
    observe.RELAY_BATCH_ROWS.observe(delivery.rows)
    observe.RELAY_LAG.observe(delivery.lag_s)


def deliver_batch(
    conn,
    ch,
    batch: outbox_batches.OutboxBatch,
    rows: list,
    *,
    resent: bool = False,
    after_insert: Callable[[list], None] | None = None,
    span: BatchSpan | None = None,
) -> Delivery:
    """Send a locked batch and, once ClickHouse has it, delete its rows and record (caller's
    transaction). A malformed batch is counted, or dead-lettered on its last attempt."""
    span = span or BatchSpan()
    fetched = time.monotonic()
    approx_bytes, dead, left = 0, [], []
    if rows:
        with span.step("relay.insert"):
            try:
                approx_bytes = event_log.insert_batch(ch, rows, batch.token)
            except Exception as exc:
                error = refusal(exc)
                attempts = count_refusal(conn, batch, error)
                if attempts < DEAD_AFTER_ATTEMPTS:
                    return Delivery(batch, rejection=BatchRejected(batch.batch_id, attempts, error))
                approx_bytes, dead, left = salvage(ch, rows, error, after_insert=after_insert)
            else:
                if after_insert is not None:
                    after_insert(rows)
            if resent:
                approx_bytes += restore_missing(ch, without(rows, dead, left))
    with span.step("relay.finish"):
        for part, error in dead:
            outbox_batches.dead_letter_rows(conn, part, error)
        left = [outbox_batches.split_ranges(conn, part) for part in left]
        outbox_batches.delete_batch(conn, batch, keep={r.id for part in left for r in part})
        for part in left:  # refused already: its next refusal salvages it at once
            outbox_batches.record_outbox_batch(conn, part, attempts=DEAD_AFTER_ATTEMPTS - 1)
    lag_s = max((r.age_s for r in rows), default=0.0) + time.monotonic() - fetched
    dead_rows = sum(len(part) for part, _ in dead)
    left_rows = sum(len(part) for part in left)
    return Delivery(
        batch,
        rows=len(rows) - dead_rows - left_rows,
        nbytes=approx_bytes,
        lag_s=lag_s,
        resent=resent,
        dead=dead_rows,
        dead_error=dead[0][1] if dead else None,
        left=left_rows,
    )


def without(rows: list, dead: list, left: list) -> list:
    """The rows of a batch but those dead-lettered or left for later by a salvage."""
    if not dead and not left:
        return rows
    out = {event_key(r) for part, _ in dead for r in part} | {
        event_key(r) for part in left for r in part
    }
    return [r for r in rows if event_key(r) not in out]


def event_key(row) -> tuple[int, int]:
    """One event of a batch: its outbox row, and its line for a range row's (else 0)."""
    return row.id, row.line_no


def restore_missing(ch, rows: list) -> int:
    """Insert what event_log lacks of a re-sent batch's rows, which ClickHouse has just taken
    (or dropped as duplicates); returns the bytes sent.

    ClickHouse writes an insert's dedup token to its log before it commits the insert's part:
    a ClickHouse process that died between the two (a server killed, or chDB inside a relay
    that died) left the token without the rows, and the re-send under the same token was
    dropped. So after a re-send, which follows every such death, the batch's events are looked
    up, and the missing ones go again under a token of their own, new each time: the look-up
    right before is what keeps them from being doubled."""
    missing = missing_from_event_log(ch, rows)
    if not missing:
        return 0
    log.warning("relay.batch_restored", rows=len(missing), of=len(rows))
    try:
        token = f"{outbox_batches.batch_token(missing)}-{os.urandom(4).hex()}"
        return event_log.insert_batch(ch, missing, token)
    except Exception as exc:
        raise event_log.ClickHouseUnavailable(event_log.describe(exc)) from exc


def missing_from_event_log(ch, rows: list) -> list:
    """The rows whose event event_log does not have, looked up event_log.PRESENCE_CHUNK at a time by
    event id, within their event types and times (event_log's sort key)."""
    present = set()
    for start in range(0, len(rows), event_log.PRESENCE_CHUNK):
        chunk = rows[start : start + event_log.PRESENCE_CHUNK]
        events = [json.loads(r.line) for r in chunk]
        try:
            found = ch.query(
                EVENTS_PRESENT,
                parameters={
                    "types": sorted({e["event_type"] for e in events}),
                    "first": min(e["event_date_time"] for e in events),
                    "last": max(e["event_date_time"] for e in events),
                    "ids": [r.event_id for r in chunk],
                },
            ).result_rows
        except Exception as exc:
            raise event_log.ClickHouseUnavailable(event_log.describe(exc)) from exc
        present.update(event_id for (event_id,) in found)
    return [r for r in rows if r.event_id not in present]


EVENTS_PRESENT = (
    f"SELECT event_id FROM {event_log.EVENT_LOG_TABLE} "
    "WHERE event_type IN {types:Array(String)} "
    "AND event_date_time BETWEEN toDateTime({first:Int64}, 'UTC') "
    "AND toDateTime({last:Int64}, 'UTC') AND event_id IN {ids:Array(UUID)}"
)


def refusal(exc: Exception) -> str:
    """The error text of ClickHouse refusing data as malformed; any other failure is raised
    as event_log.ClickHouseUnavailable, so the batch is retried as it is."""
    if not clickhouse_errors.is_data_refusal(exc):
        raise event_log.ClickHouseUnavailable(event_log.describe(exc)) from exc
    return event_log.describe(exc)


def count_refusal(conn, batch: outbox_batches.OutboxBatch, error: str) -> int:
    """Count ClickHouse's refusal of a batch (caller's transaction); returns the count."""
    cur = conn.cursor(row_factory=tuple_row)
    (attempts,) = cur.execute(
        QUERIES["reject_outbox_batch"], {"batch_id": batch.batch_id, "error": error}
    ).fetchone()
    return attempts


def salvage(
    ch, rows: list, error: str, *, after_insert: Callable[[list], None] | None = None
) -> tuple[int, list[tuple[list, str]], list[list]]:
    """Get what ClickHouse takes of a batch it refused (with `error`) into event_log: send it
    in halves, halving each refused part again, until a refused part is a single row.
    Returns the bytes sent, the single rows refused with their errors (for outbox_dead), and
    the parts still refused when SALVAGE_MAX_REFUSALS refusals were spent (to be recorded as
    batches of their own and salvaged later).

    Each part goes with its own dedup token, from its rows, and the halving is deterministic:
    if the relay dies half-way, the next one salvages the batch the same way and ClickHouse
    drops the parts it already has.
    """
    sent_bytes, dead, left, refusals = 0, [], [], 0
    refused = collections.deque([(rows, error)])
    while refused:
        part, error = refused.popleft()
        if len(part) == 1:
            dead.append((part, error))
            continue
        if refusals >= SALVAGE_MAX_REFUSALS:
            left.append(part)
            continue
        middle = len(part) // 2
        for half in (part[:middle], part[middle:]):
            try:
                sent_bytes += event_log.insert_batch(ch, half, outbox_batches.batch_token(half))
            except Exception as exc:
                refused.append((half, refusal(exc)))
                refusals += 1
            else:
                if after_insert is not None:
                    after_insert(half)
    return sent_bytes, dead, left


if __name__ == "__main__":
    sys.exit(main())
