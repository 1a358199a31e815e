"""What a ClickHouse error means for the rows the relay sent: refused for the data's sake (the
same rows would be refused again: split, and what is still refused dead-lettered), or an outage
(the server, the network, the schema, its load: the rows wait and the batch is retried, with
backoff, for as long as it takes).

Decided by ClickHouse's error code (or its symbolic name), whatever the client's exception
class: clickhouse-connect raises a server's refusal as an OperationalError when it retried the
request, so the class alone says nothing. An error without a code (a lost connection, a timeout
on the client) and a code in neither table are outages: a row is never given up on a guess.
"""

from __future__ import annotations

from clickhouse_connect.driver.exceptions import DatabaseError, DataError

# Refused for the data's sake, by symbolic name and code.
DATA_REFUSALS = {
    "CANNOT_PARSE_TEXT": 6,
    "CANNOT_PARSE_ESCAPE_SEQUENCE": 25,
    "CANNOT_PARSE_QUOTED_STRING": 26,
    "CANNOT_PARSE_INPUT_ASSERTION_FAILED": 27,
    "CANNOT_PARSE_DATE": 38,
    "CANNOT_PARSE_DATETIME": 41,
    "TYPE_MISMATCH": 53,
    "ARGUMENT_OUT_OF_BOUND": 69,
    "CANNOT_CONVERT_TYPE": 70,
    "CANNOT_PARSE_NUMBER": 72,
    # The parts one insert writes need more files than the server may open: rows with tens
    # of thousands of JSON paths each (event_context keeps files per path). Smaller parts of
    # the same rows go in. (A server short of file descriptors for every insert would refuse
    # them all alike: what is dead-lettered then replays from outbox_dead.)
    "CANNOT_OPEN_FILE": 76,
    "INCORRECT_DATA": 117,
    "TOO_LARGE_ARRAY_SIZE": 128,
    "TOO_LARGE_STRING_SIZE": 131,
    "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE": 321,
    "CANNOT_PARSE_UUID": 376,
    "CANNOT_PARSE_BOOL": 467,
}

# Outages, named so the table is read as a decision and not an omission: the server or the
# network is away or overloaded, the schema or access is wrong. Any code in neither table
# is treated as these are.
OUTAGES = {
    "UNKNOWN_TABLE": 60,
    "UNKNOWN_DATABASE": 81,
    "TIMEOUT_EXCEEDED": 159,
    "READONLY": 164,
    "CANNOT_ALLOCATE_MEMORY": 173,
    "REQUIRED_PASSWORD": 194,
    "TOO_MANY_SIMULTANEOUS_QUERIES": 202,
    "SOCKET_TIMEOUT": 209,
    "NETWORK_ERROR": 210,
    "ABORTED": 236,
    "MEMORY_LIMIT_EXCEEDED": 241,
    "TABLE_IS_READ_ONLY": 242,
    "NOT_ENOUGH_SPACE": 243,
    "TOO_MANY_PARTS": 252,
    "QUERY_WAS_CANCELLED": 394,
    "CANNOT_SCHEDULE_TASK": 439,
    "ACCESS_DENIED": 497,
    "AUTHENTICATION_FAILED": 516,
    "KEEPER_EXCEPTION": 999,
}

DATA_REFUSAL_CODES = frozenset(DATA_REFUSALS.values())


def is_data_refusal(exc: BaseException) -> bool:
    """Whether ClickHouse (or the client, encoding the rows) refused the data itself."""
    if isinstance(exc, DataError):  # a value the column type cannot hold, found by the client
        return True
    if not isinstance(exc, DatabaseError):
        return False
    return exc.code in DATA_REFUSAL_CODES or (exc.code is None and exc.name in DATA_REFUSALS)


def is_missing_table(exc: BaseException) -> bool:
    """Whether ClickHouse said the table is not there (UNKNOWN_TABLE): to a reader of
    event_log, that no relay has made it yet."""
    return isinstance(exc, DatabaseError) and (
        exc.code == OUTAGES["UNKNOWN_TABLE"] or (exc.code is None and exc.name == "UNKNOWN_TABLE")
    )


def table_markdown() -> str:
    """The table of the two kinds in docs/architecture.md, from the declarations above."""
    rows = [
        "| Kind | What the relay does | ClickHouse errors |",
        "|---|---|---|",
        "| refused for the data's sake | retried twice, then split in halves until the rows "
        "ClickHouse takes are in; each row still refused alone goes to `outbox_dead` with "
        "its error | " + codes(DATA_REFUSALS) + " |",
        "| outage | rows kept, batch retried with backoff for as long as it takes | "
        + codes(OUTAGES)
        + "; any other code, and errors without one (connection lost, "
        "timeouts) |",
    ]
    return "\n".join(rows)


def codes(table: dict[str, int]) -> str:
    return ", ".join(
        f"`{name}` ({code})" for name, code in sorted(table.items(), key=lambda item: item[1])
    )
