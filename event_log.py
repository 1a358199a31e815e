"""ClickHouse's event_log as the relay keeps it: the connection, the table made or upgraded to
the shape of sql/clickhouse/event_log.sql, the insert of a batch's JSONEachRow lines, the
owners of events stored before the table had them, and the deletion of deleted jobs' events."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import clickhouse_connect
import structlog
from psycopg.rows import tuple_row

import config
import core
import jobs
from core import QUERIES

log = structlog.get_logger("relay")

MAX_ERROR_CHARS = 1000  # of a ClickHouse error, kept in outbox_dead (logs get a third of it)


EVENT_LOG_DDL_PATH = core.SQL_DIR / "clickhouse" / "event_log.sql"


EVENT_LOG_UPGRADE_PATH = core.SQL_DIR / "clickhouse" / "event_log_upgrade.sql"


EVENT_LOG_SEARCH_UPGRADE_PATH = core.SQL_DIR / "clickhouse" / "event_log_search_upgrade.sql"


EVENT_LOG_ROLLUP_UPGRADE_PATH = core.SQL_DIR / "clickhouse" / "event_log_rollup_upgrade.sql"


EVENT_LOG_TABLE = "event_log"


EVENT_LOG_COLUMNS = (
    "event_id",
    "event_type",
    "event_date_time",
    "environment",
    "event_context",
    "metadata_version",
    "event_time",
    "owner",
)


# A mutation, waited for (DELETE_SETTINGS): it rewrites the parts holding the job's events,
# projections included. Not a lightweight DELETE: its mask is not applied by a read of the
# `by_owner` projection in time order (ClickHouse 26.9), so owner-wide search would still
# find the rows (tests/test_search.py's deletion test). Search hides the job meanwhile.
DELETE_SETTINGS = {"mutations_sync": 2}


DELETE_JOB_EVENTS = (
    f"ALTER TABLE {EVENT_LOG_TABLE} DELETE "
    "WHERE job_id IN {job_ids:Array(UUID)} AND event_type != 'job.deleted'"
)
# Deleted jobs whose events one mutation deletes: a mutation rewrites every part holding any of
# them, so a retention sweep's thousands of jobs go in a few, not one each.
DELETIONS_PER_MUTATION = 500


# The audit trail's own retention (EH_AUDIT_RETENTION_DAYS): audit events carry no job_id, so
# neither a job's deletion (DELETE_JOB_EVENTS) nor a job's retention removes them; only this.
# Counted first (the sort key's event_type prefix prunes it to the audit rows): a mutation
# only when there is something to delete.
OLD_AUDIT_EVENTS = (
    "startsWith(event_type, 'audit.') AND event_date_time < now() - toIntervalDay({days:UInt32})"
)


PRESENCE_CHUNK = 1_000  # event ids per look-up, well inside a URL's length


class ClickHouseUnavailable(Exception):
    """ClickHouse did not take a batch for a reason other than its content (connection, server,
    schema). The rows stay in the outbox and the batch is retried, forever."""


def connect_clickhouse(url: str):
    """A clickhouse-connect client for CLICKHOUSE_URL, with event_log created if missing.

    One call for both backends. chDB: one process at a time may open a directory; within a
    process, clients on the same directory share the engine.
    """
    try:
        ch = clickhouse_connect.get_client(dsn=url)
    except Exception as exc:
        raise ClickHouseUnavailable(f"cannot connect to {config.redact_url(url)}: {exc}") from exc
    try:
        ensure_event_log(ch)
    except Exception as exc:
        with contextlib.suppress(Exception):  # the client may be broken already
            ch.close()
        raise ClickHouseUnavailable(f"cannot create {EVENT_LOG_TABLE}: {exc}") from exc
    return ch


def ensure_event_log(ch) -> None:
    """CREATE TABLE IF NOT EXISTS event_log (sql/clickhouse/event_log.sql); a table made
    before it had the columns a job's reads use is upgraded (event_log_upgrade.sql), one
    made before owner-wide search too (event_log_search_upgrade.sql), one made before the
    search's aggregate and context index too (event_log_rollup_upgrade.sql)."""
    ch.command(EVENT_LOG_DDL_PATH.read_text())
    if ch.command(EXPLORE_COLUMNS_FOUND) < len(EXPLORE_COLUMNS):
        log.info("relay.event_log_upgrading", statements=str(EVENT_LOG_UPGRADE_PATH))
        for statement in sql_statements(EVENT_LOG_UPGRADE_PATH.read_text()):
            ch.command(statement)
    create = ch.command(f"SHOW CREATE TABLE {EVENT_LOG_TABLE}")
    for marker, upgrade in (
        ("PROJECTION by_owner", EVENT_LOG_SEARCH_UPGRADE_PATH),
        ("PROJECTION by_hour", EVENT_LOG_ROLLUP_UPGRADE_PATH),
    ):
        if marker not in create:
            log.info("relay.event_log_upgrading", statements=str(upgrade))
            for statement in sql_statements(upgrade.read_text()):
                ch.command(statement)


def sql_statements(text: str) -> list[str]:
    """The statements of a SQL file: comments dropped, split at semicolons (the files hold no
    semicolon inside a statement)."""
    code = core.without_comments(text)
    return [statement.strip() for statement in code.split(";") if statement.strip()]


EXPLORE_COLUMNS = ("job_id", "line_no", "level", "service")


EXPLORE_COLUMNS_FOUND = (
    f"SELECT count() FROM system.columns WHERE database = currentDatabase() "
    f"AND table = '{EVENT_LOG_TABLE}' AND name IN {EXPLORE_COLUMNS!r}"
)


def fill_missing_owners(conn, ch) -> int:
    """Give the line events event_log holds without an owner (stored before it had the
    column) the owner Postgres records for their job; returns how many jobs. Run at each
    connect, so a relay stopped halfway finishes the work at its next start; cheap once done,
    since `by_owner` keeps the events without an owner together. Events of jobs Postgres no
    longer has keep '' (no owner sees them; their deletion is the relay's, below)."""
    try:
        job_ids = [str(j) for (j,) in ch.query(UNOWNED_JOBS).result_rows]
    except Exception as exc:
        raise ClickHouseUnavailable(describe(exc)) from exc
    if not job_ids:
        return 0
    owned = (
        conn.cursor(row_factory=tuple_row)
        .execute(QUERIES["owners_of_jobs"], {"job_ids": job_ids})
        .fetchall()
    )
    for owner, ids in owned:
        for start in range(0, len(ids), PRESENCE_CHUNK):
            chunk = [str(i) for i in ids[start : start + PRESENCE_CHUNK]]
            try:
                ch.command(SET_OWNER, parameters={"owner": owner, "ids": chunk})
            except Exception as exc:
                raise ClickHouseUnavailable(describe(exc)) from exc
    filled = sum(len(ids) for _, ids in owned)
    if filled:
        log.info("relay.owners_filled", jobs=filled)
    return filled


UNOWNED_JOBS = (
    f"SELECT DISTINCT job_id FROM {EVENT_LOG_TABLE} WHERE owner = '' AND line_no > 0 LIMIT 100000"
)


SET_OWNER = (
    f"ALTER TABLE {EVENT_LOG_TABLE} UPDATE owner = {{owner:String}} "
    "WHERE owner = '' AND job_id IN {ids:Array(UUID)}"
)


# An event time event_log's DateTime cannot hold (before 1970, after 2106) is refused
# (VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE, so dead-lettered) rather than clamped to the range's end.
# A string in the context stays a string: left to guess, ClickHouse stores one that looks like
# a date or a time ("2026-11-20T09:15:00Z") as a Date or DateTime, which reads back in its own
# words ("2026-11-20 09:15:00") and is no longer found by the text a user searches for.
INSERT_SETTINGS = {
    "date_time_overflow_behavior": "throw",
    "input_format_try_infer_dates": 0,
    "input_format_try_infer_datetimes": 0,
}


def insert_batch(ch, rows: Sequence, token: str) -> int:
    """Insert rows into event_log as one insert that ClickHouse drops if `token` was seen
    before (non_replicated_deduplication_window). Returns the bytes sent.

    Each row's `line` is its event as a JSONEachRow line, built by Postgres
    (outbox_batch_rows): the batch goes as the lines joined, nothing decoded or re-encoded.
    """
    block = b"\n".join(r.line for r in rows)
    ch.raw_insert(
        EVENT_LOG_TABLE,
        EVENT_LOG_COLUMNS,
        insert_block=block,
        fmt="JSONEachRow",
        settings={**INSERT_SETTINGS, "insert_deduplication_token": token},
    )
    return len(block)


def describe(exc: BaseException) -> str:
    return (str(exc).strip() or repr(exc))[:MAX_ERROR_CHARS]


def delete_events_of_deleted_jobs(conn, ch) -> int:
    """Delete from event_log the events of deleted jobs (through the API or by the retention
    sweep), once none of their events is left in the outbox (so no later insert can bring one
    back), DELETIONS_PER_MUTATION jobs at a time; returns how many jobs.

    Each deletion is recorded done (job_deletions.clickhouse_at) in the transaction that held
    it while ClickHouse deleted: a relay that dies in between leaves it pending, and deleting
    twice is harmless. While ClickHouse is away the deletions wait (ClickHouseUnavailable).
    The job's `job.deleted` event is kept: it is the audit trail of the deletion.
    """
    done = 0
    while True:
        with conn.transaction():
            job_ids = jobs.take_pending_deletions(conn, DELETIONS_PER_MUTATION)
            if not job_ids:
                return done
            try:
                ch.command(
                    DELETE_JOB_EVENTS,
                    parameters={"job_ids": [str(j) for j in job_ids]},
                    settings=DELETE_SETTINGS,
                )
            except Exception as exc:
                raise ClickHouseUnavailable(describe(exc)) from exc
            jobs.finish_deletions(conn, job_ids)
        log.info("relay.job_events_deleted", jobs=len(job_ids))
        done += len(job_ids)


def delete_old_audit_events(ch, days: int) -> int:
    """Delete the `audit.*` events older than `days` (EH_AUDIT_RETENTION_DAYS); returns how
    many there were. For the retention sweep, which runs it with its own work."""
    try:
        old = ch.command(
            f"SELECT count() FROM {EVENT_LOG_TABLE} WHERE {OLD_AUDIT_EVENTS}",
            parameters={"days": days},
        )
        if old:
            ch.command(
                f"ALTER TABLE {EVENT_LOG_TABLE} DELETE WHERE {OLD_AUDIT_EVENTS}",
                parameters={"days": days},
                settings=DELETE_SETTINGS,
            )
    except Exception as exc:
        raise ClickHouseUnavailable(describe(exc)) from exc
    if old:
        log.info("relay.audit_events_expired", events=old, days=days)
    return int(old)
