"""One tenant's events cannot stall delivery for everyone: an insert ClickHouse refuses for
the data's sake (here: rows with so many JSON paths that the insert's parts need more files
than the server may open, code 76) is split and what is still refused dead-lettered, never
retried forever; ClickHouse's errors are classified by code, against a real server."""

from __future__ import annotations

import dataclasses

import clickhouse_connect
import psycopg
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

import clickhouse_errors
import core
import event_log
import outbox
import relay
from helpers import drain, event_log_ids, outbox_status

# ClickHouse (chDB 26.9's server) refuses one insert of 16 or more such lines (code 76) and takes
# 13: 20 are refused with a margin, and cost a third less to write than the 31 first used.
WIDE_LINES, WIDE_KEYS = 20, 20_000


@pytest.fixture
def ch(relay_settings):
    client = event_log.connect_clickhouse(relay_settings.clickhouse_url)
    yield client
    client.close()


def test_rows_too_wide_for_one_insert_are_split_and_never_block_the_others(db, ch, relay_settings):
    """20 events of 20,000 context keys each, in one batch with other tenants' events: the
    insert fails (CANNOT_OPEN_FILE, "Too many open files"), which is the data's fault, not an
    outage: after the refusals allowed, the batch is salvaged, and every event ends in
    event_log or outbox_dead — none is retried forever, none lost."""
    settings = dataclasses.replace(relay_settings, relay_batch_max_rows=100)
    with psycopg.connect(settings.database_url) as conn:
        others = [
            outbox.publish_event(conn, "test.other", {"i": i}, environment="test")
            for i in range(10)
        ]
        wide = [
            outbox.publish_event(
                conn, "test.wide", {f"k{n}_{i}": i for i in range(WIDE_KEYS)}, environment="test"
            )
            for n in range(WIDE_LINES)
        ]
    refusals = 0
    for _ in range(relay.DEAD_AFTER_ATTEMPTS + 5):
        try:
            delivered = relay.relay_once(db, ch, settings)
        except relay.BatchRejected as exc:
            refusals += 1
            assert "76" in exc.error or "CANNOT_OPEN_FILE" in exc.error, exc.error
            continue
        break
    assert refusals == relay.DEAD_AFTER_ATTEMPTS - 1  # refused for its data, then salvaged
    assert delivered > 0
    drain(db, ch, settings)
    in_event_log = set(event_log_ids(ch))
    dead = {row["event_id"] for row in db.execute("SELECT event_id FROM outbox_dead")}
    assert set(others) <= in_event_log
    assert set(wide) <= in_event_log | dead and not in_event_log & dead
    assert outbox_status(db)["backlog"] == 0


def server_error(ch, statement: str) -> DatabaseError:
    with pytest.raises(DatabaseError) as raised:
        ch.command(statement)
    return raised.value


def test_errors_are_classified_by_code_against_a_real_server(ch):
    """A refusal of the data (a path named twice) is one, whatever the client's exception
    class; a missing table, a lost connection and an unknown code are outages."""
    duplicate_path = server_error(
        ch,
        """INSERT INTO event_log (event_id, event_type, event_date_time, environment,
               event_context, metadata_version) FORMAT JSONEachRow
               {"event_id": "00000000-0000-0000-0000-000000000001", "event_type": "e",
                "event_date_time": 1, "environment": "p",
                "event_context": {"a.b": 1, "a": {"b": 2}}, "metadata_version": 1}""",
    )
    assert duplicate_path.code == clickhouse_errors.DATA_REFUSALS["INCORRECT_DATA"]
    assert clickhouse_errors.is_data_refusal(duplicate_path)
    retried = OperationalError(str(duplicate_path), code=duplicate_path.code)  # as when retried
    assert clickhouse_errors.is_data_refusal(retried)

    missing = server_error(ch, "INSERT INTO no_such_table VALUES (1)")
    assert missing.code == clickhouse_errors.OUTAGES["UNKNOWN_TABLE"]
    assert not clickhouse_errors.is_data_refusal(missing)

    unreachable = clickhouse_connect.get_client
    with pytest.raises(Exception) as lost:
        unreachable(host="127.0.0.1", port=1, connect_timeout=1)
    assert not clickhouse_errors.is_data_refusal(lost.value)
    assert not clickhouse_errors.is_data_refusal(DatabaseError("?", code=123_456))


def test_the_two_tables_are_disjoint_and_in_the_docs():
    assert not set(clickhouse_errors.DATA_REFUSALS.values()) & set(
        clickhouse_errors.OUTAGES.values()
    )
    assert (
        clickhouse_errors.table_markdown() in (core.ROOT / "docs" / "architecture.md").read_text()
    )
