"""How search reads ClickHouse's event_log: a first page, facets, a histogram of whole hours and
a context filter each read through the projection or skip index that reads least (EXPLAIN, and
the rows read of 200,000 events), and the context index's word never makes a filter miss a
value, however its JSON is written. The events are stored as the worker writes them
(search_samples.store_job)."""

from __future__ import annotations

import json
import uuid

import clickhouse_connect

import event_log
import search
from helpers import relay_all
from search_samples import store_job


def explain(ch, query: str, parameters: dict) -> str:
    return "\n".join(
        row[0]
        for row in ch.query(
            f"EXPLAIN indexes = 1, projections = 1 {query}", parameters=parameters
        ).result_rows
    )


# 200,000 events of Alice's over about 5.6 hours, written by ClickHouse (many granules, so that
# a skip index has something to skip): request ids shared by 10 events in a row.
MANY_EVENTS = """
INSERT INTO event_log (event_id, event_type, event_date_time, environment, event_context,
                       metadata_version, owner, event_time)
SELECT generateUUIDv4(), 'http.request', toDateTime(t), 'production',
       concat('{"job_id": "', {job:String}, '", "line_no": ', toString(number + 1),
              ', "level": "', ['info', 'error'][number % 2 + 1], '", "service": "s',
              toString(number % 5), '", "message": "m", "context": {"request_id": "req-',
              toString(intDiv(number, 10)), '"}}'), 1, 'alice', t
FROM (SELECT number, toDateTime64('2026-11-01 00:00:00', 3, 'UTC')
                     + toIntervalMillisecond(number * 100) AS t FROM numbers(200000))
"""


def test_search_reads_take_the_projection_or_index_that_reads_least(db, settings):
    """Of 200,000 events of Alice's (25 granules): a first page over all time reads a few
    granules of the by_owner projection (bounded by its limit-th time), facets and a histogram
    of whole hours read the by_hour aggregate, and a context filter reads the few granules the
    context_tokens index keeps. Broken, each would read every one of the owner's events."""
    job = store_job(db, 0, "alice", 1)
    hidden = search.SearchScope("alice", (uuid.uuid4(),)).parameters()
    start = {
        "after_time": search.LAST_MS,
        "after_job": search.MAX_UUID,
        "after_line": 2**64 - 1,
        "limit": 100,
    }
    with clickhouse_connect.get_client(dsn=settings.clickhouse_url) as ch:
        event_log.ensure_event_log(ch)
        ch.command(MANY_EVENTS, parameters={"job": str(job)})

        def rows_read(query: str, parameters: dict) -> int:
            result = ch.query(query, parameters=parameters, settings=search.READ_SETTINGS)
            return int(result.summary["read_rows"])

        everything = {**hidden, **search.SearchFilters().parameters(), **start}
        plan = explain(ch, search.events_query("desc"), everything)
        assert "ReadFromMergeTree (by_owner)" in plan, plan
        assert rows_read(search.events_query("desc"), everything) <= 4 * 8192 * 2

        facet = search.facet_query("service", search.SearchFilters())
        assert "ReadFromMergeTree (by_hour)" in explain(ch, facet, everything)
        assert rows_read(facet, everything) <= 8192
        hours = search.histogram_query(search.SearchFilters(), 7200)
        assert "ReadFromMergeTree (by_hour)" in explain(
            ch, hours, {**everything, "interval_s": 7200}
        )

        filters = search.checked_search_filters(context=[("request_id", "req-4242")])
        one_request = {**hidden, **filters.parameters(), **start}
        assert rows_read(search.events_query("desc"), one_request) <= 4 * 8192 * 2
        found = search.search_events(ch, search.SearchScope("alice"), filters)
        assert sorted(e["line_no"] for e in found) == list(range(42421, 42431))


# Context values whose JSON text differs from the value, or whose words touch bytes past ASCII,
# or that ClickHouse would read as a date or a time if it were let guess (it would print them
# back otherwise): each must still be found by its own filter (context_token picks a word the
# text holds), and read back as it was written.
AWKWARD = [
    "2026-11-20T09:15:00Z",
    "2026-11-20",
    "2026-11-20 09:15:00.123456",
    "09:15:00",
    "café-42",
    "é-abc",
    "abc-é",
    "ok🙂",
    "🙂ok",
    "x/y/z",
    'say "hi"',
    "back\\slash",
    "UPPER_case-7",
    "1.5",
    "a b  c",
    "--",
    "",
    "日本語 id-9",
    1.5,
    1e21,
    -7,
    2**62,
    True,
    None,
    0.1,
]


def as_read_back(value):
    """A context value as event_log gives it back (docs/api.md): a null member is no path in a
    JSON column (absent), and a number past 64 bits is kept as a string of its digits (jsonb
    writes 1e21 as 1000000000000000000000)."""
    if isinstance(value, float) and abs(value) >= 2**64:
        return str(int(value))
    return value


def test_a_context_filter_finds_every_value_however_its_json_is_written(db, settings, monkeypatch):
    """Each awkward value (escaped in JSON, beside non-ASCII, numbers, booleans, dates) is found
    by context.v=<its text> as it is without the index's word (context_token ''): the word never
    makes a filter miss. Every string value is found, at its own line at least, and every value
    reads back as it was written."""
    contexts = [{"v": value, "n": n} for n, value in enumerate(AWKWARD)]
    store_job(db, 0, "alice", len(contexts), settings.s3_bucket, contexts=contexts)
    relay_all(db, settings)
    scope = search.SearchScope("alice")

    def found(text: str) -> list[int]:
        filters = search.checked_search_filters(context=[("v", text)])
        return sorted(e["context"]["n"] for e in search.search_events(ch, scope, filters))

    with clickhouse_connect.get_client(dsn=settings.clickhouse_url) as ch:
        texts = [v if isinstance(v, str) else json.dumps(v) for v in AWKWARD if v not in ("", None)]
        with_word = {text: (search.context_token(text), found(text)) for text in texts}
        monkeypatch.setattr(search, "context_token", lambda value: "")
        without_word = {text: found(text) for text in texts}
        every = search.search_events(ch, scope, search.checked_search_filters())
    assert sorted((e["context"]["n"], e["context"].get("v")) for e in every) == [
        (n, as_read_back(value)) for n, value in enumerate(AWKWARD)
    ]
    assert {t: f for t, (_, f) in with_word.items()} == without_word
    for n, value in enumerate(AWKWARD):
        if isinstance(value, str) and value:
            assert n in with_word[value][1], (value, with_word[value])
    assert sum(1 for word, _ in with_word.values() if word) >= 12  # the words were used
