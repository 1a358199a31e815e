"""The `generic` mapping's rules: the names it looks for and the values it reads for each field,
the reasons it refuses a line with, and its place under `auto`. The libraries' own lines, mapped
by it, are test_generic_library_lines.py's. No services needed."""

from __future__ import annotations

import datetime as dt
import pathlib
import uuid

import pytest

import formats
import generic_format
import lines
import mappings
from helpers import VALIDATOR
from line_samples import PINO, ZAP, entry_of, parse, refused

ROOT = pathlib.Path(__file__).resolve().parent.parent
FORMATS_DOC = ROOT / "docs" / "formats.md"


# --------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("timestamp", "2026-11-23T10:00:00Z"),
        ("Timestamp", "2026-11-23T10:00:00Z"),
        ("TIMESTAMP", "2026-11-23T10:00:00Z"),
        ("@timestamp", "2026-11-23T10:00:00Z"),
        ("date", "2026-11-23T10:00:00Z"),
        ("_timestamp", "2026-11-23T10:00:00Z"),
        ("eventTime", "2026-11-23T10:00:00Z"),
        ("published_date", "2026-11-23T10:00:00Z"),
        ("@t", "2026-11-23T10:00:00Z"),
        ("time", 1795428000),
        ("ts", 1795428000.0),
        ("datetime", "2026-11-23 10:00:00"),
        ("timeMillis", 1795428000000),
        ("__REALTIME_TIMESTAMP", "1795428000000000"),
        ("timeUnixNano", 1795428000000000000),
    ],
)
def test_each_time_name(key, value):
    entry = parse({key: value, "message": "m", "level": "info"}, "generic")
    assert entry["timestamp"].isoformat() == "2026-11-23T10:00:00+00:00", key


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1795428000, "2026-11-23T10:00:00+00:00"),  # seconds
        (1795428000.25, "2026-11-23T10:00:00.250000+00:00"),
        ("1795428000.25", "2026-11-23T10:00:00.250000+00:00"),
        (1795428000123, "2026-11-23T10:00:00.123000+00:00"),  # milliseconds
        ("1795428000123", "2026-11-23T10:00:00.123000+00:00"),
        (1795428000123456, "2026-11-23T10:00:00.123456+00:00"),  # microseconds
        (1795428000123456789, "2026-11-23T10:00:00.123456+00:00"),  # nanoseconds
        ("1795428000123456789", "2026-11-23T10:00:00.123456+00:00"),
        (100_000_000_000, "1973-03-03T09:46:40+00:00"),  # 10^11: milliseconds
        ("2026-11-23T11:00:00+01:00", "2026-11-23T11:00:00+01:00"),
        ("2026-11-23T10:00:00.5+0000", "2026-11-23T10:00:00.500000+00:00"),
        ("2026-11-23 10:00:00,125", "2026-11-23T10:00:00.125000+00:00"),  # no offset: UTC
        ("2026-11-23 11:00:00.5 +0100 CET", "2026-11-23T11:00:00.500000+01:00"),  # Go
        ("Mon, 23 Nov 2026 10:00:00 GMT", "2026-11-23T10:00:00+00:00"),  # RFC 2822 / 1123
        ("23 Nov 2026 12:00:00 +0200", "2026-11-23T12:00:00+02:00"),
        ({"epochSecond": 1795428000, "nanoOfSecond": 5000}, "2026-11-23T10:00:00.000005+00:00"),
        ({"seconds": "1795428000", "nanos": 0}, "2026-11-23T10:00:00+00:00"),
    ],
)
def test_time_values(value, expected):
    entry = parse({"time": value, "msg": "m"}, "generic")
    assert entry["timestamp"].isoformat() == expected, value


def test_the_magnitude_boundaries():
    def read(value):
        return generic_format.time_text(value, "t", formats.EpochText())

    assert read(99_999_999_999) == "5138-11-16T09:46:39+00:00"  # the last one read as seconds
    assert read(99_999_999_999_999) == "5138-11-16T09:46:39.999000+00:00"  # milliseconds
    assert read(10**14) == "1973-03-03T09:46:40+00:00"  # microseconds from here
    assert read(10**17) == "1973-03-03T09:46:40+00:00"  # nanoseconds from here
    assert read(-1_000) == "1969-12-31T23:43:20+00:00"  # by magnitude: seconds


def test_the_rfc_3164_year_is_this_one_unless_that_is_ahead():
    now = dt.datetime(2026, 1, 2, 12, tzinfo=dt.timezone.utc)
    assert generic_format.date_text("Jan  2 13:00:00", now) == "2026-01-02T13:00:00+00:00"
    assert generic_format.date_text("Jan 3 11:00:00", now) == "2026-01-03T11:00:00+00:00"
    assert generic_format.date_text("Dec 31 23:59:59", now) == "2025-12-31T23:59:59+00:00"
    assert generic_format.date_text("Feb 30 10:00:00", now) == "Feb 30 10:00:00"  # left as is
    entry = parse({"date": "Nov 23 10:00:00", "message": "m"})
    assert (entry["timestamp"].month, entry["timestamp"].day, entry["timestamp"].hour) == (
        11,
        23,
        10,
    )


@pytest.mark.parametrize(
    ("value", "level"),
    [
        # Datadog's status remapper, by prefix
        ("emerg", "critical"),
        ("EMERGENCY", "critical"),
        ("f", "critical"),
        ("Fatal", "critical"),
        ("alert", "critical"),
        ("a", "critical"),
        ("crit", "critical"),
        ("c", "critical"),
        ("err", "error"),
        ("ERROR", "error"),
        ("errors", "error"),
        ("w", "warning"),
        ("Warn", "warning"),
        ("n", "info"),
        ("notice", "info"),
        ("i", "info"),
        ("INF", "info"),
        ("d", "debug"),
        ("dbg", "debug"),
        ("t", "debug"),
        ("trace", "debug"),
        ("v", "debug"),
        ("verbose", "debug"),
        # syslog severities, as numbers or digits (journald writes "3")
        (0, "critical"),
        (1, "critical"),
        (2, "critical"),
        (3, "error"),
        (4, "warning"),
        (5, "info"),
        (6, "info"),
        (7, "debug"),
        ("3", "error"),
        # the libraries' own words the prefixes would misread
        ("Information", "info"),
        ("fine", "debug"),
        ("FINEST", "debug"),
        ("config", "debug"),
        ("SEVERE", "error"),
        ("silly", "debug"),
        ("http", "debug"),
        ("SUCCESS", "info"),
        ("DEFAULT", "info"),
        ("E", "error"),
        ("dpanic", "critical"),
        ("INFO+2", "info"),
        (" warning ", "warning"),
    ],
)
def test_level_values(value, level):
    assert parse({"time": 1795428000, "lvl": value, "msg": "m"}, "generic")["level"] == level


@pytest.mark.parametrize(
    "key",
    [
        "level",
        "LEVEL",
        "Level",
        "severity",
        "Severity",
        "SEVERITY",
        "lvl",
        "LVL",
        "Lvl",
        "@l",
        "levelname",
        "LogLevel",
        "log_level",
        "severityText",
        "priority",
    ],
)
def test_each_level_name(key):
    entry = parse({"time": 1795428000, key: "warn", "msg": "m"}, "generic")
    assert entry["level"] == "warning" and entry["context"] == {}


def test_nested_names():
    line = {
        "date": 1795428000,
        "log": {"level": "error", "logger": "db", "origin": "x.py"},
        "fields": {"message": "boom", "retry": 2},
        "record": {"name": "ignored"},
    }
    entry = entry_of(line, "generic")
    assert (entry["level"], entry["message"], entry["service"]) == ("error", "boom", "db")
    assert entry["context"] == {
        "log": {"origin": "x.py"},
        "fields": {"retry": 2},
        "record": {"name": "ignored"},
    }
    dotted = entry_of({"date": 1795428000, "log.level": "warn", "Service.Name": "pay"})
    assert (dotted["level"], dotted["service"], dotted["context"]) == ("warning", "pay", {})


def test_a_rendered_message_comes_before_its_template():
    both = entry_of({"@t": "2026-11-23T10:00:00Z", "@mt": "Hi {U}", "@m": "Hi Ann", "U": "Ann"})
    assert (both["message"], both["context"]) == ("Hi Ann", {"@mt": "Hi {U}", "U": "Ann"})
    assert entry_of({"@t": "2026-11-23T10:00:00Z", "@mt": "Hi {U}"})["message"] == "Hi {U}"


def test_values_of_another_type_stay_in_the_context():
    line = {
        "time": 1795428000,
        "message": {"text": "an object"},
        "msg": "the message",
        "service": {"tier": 1},
        "level": True,
        "env": "",
    }
    entry = entry_of(line, "generic")
    assert (entry["message"], entry["service"], entry["level"], entry["environment"]) == (
        "the message",
        "unknown",
        "info",
        "production",
    )
    assert entry["context"] == {
        "message": {"text": "an object"},
        "service": {"tier": 1},
        "level": True,
        "env": "",
    }


def test_a_line_without_a_level_is_info_and_an_http_status_is_not_a_level():
    entry = entry_of({"time": 1795428000, "msg": "GET /", "status": 500})
    assert (entry["level"], entry["context"]) == ("info", {"status": 500})


def test_the_uploads_defaults_and_the_lines_own_fields():
    line = {"timestamp": "2026-11-23T10:00:00Z", "msg": "m", "logger": "app.db"}
    assert parse(line, service="shop", environment="qa")["service"] == "shop"  # over a logger
    assert parse({**line, "app": "web"}, service="shop")["service"] == "web"  # its own wins
    assert parse({**line, "env": "staging"}, environment="qa")["environment"] == "staging"
    assert parse(line, environment="qa")["environment"] == "qa"
    ecs_like = {
        "@timestamp": "2026-11-23T10:00:00Z",
        "message": "m",
        "service": {"name": "pay", "environment": "staging"},
        "event": {"action": "a"},
    }
    entry = entry_of(ecs_like)
    assert (entry["service"], entry["environment"], entry["event_type"], entry["context"]) == (
        "pay",
        "staging",
        "a",
        {},
    )


# --------------------------------------------------------------------------- bad input


def test_a_line_without_a_time_names_every_name_tried():
    reason = refused({"level": "error", "message": "no clock here"})
    assert reason.startswith("generic: no time: none of timestamp, @timestamp, time, ts, @t, ")
    for name in generic_format.SYNONYMS["timestamp"]:
        assert name in reason
    assert refused({"time": True, "date": [1], "msg": "m"}).endswith(
        "; not a time: time: True; date: [1]"
    )
    assert refused({"time": [list(range(1000))] * 1000}).endswith(
        "not a time: time: [[0, 1, 2, 3, ...], [0, 1, 2, 3, ...], [0, 1, 2, 3, ...], "
        "[0, 1, 2, 3, ...], ...]"
    )


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (
            {"timestamp": 1795428000, "level": 30, "msg": "m"},
            "generic: level: 30 is not a syslog severity (0-7); "
            "other numbers mean different levels",
        ),
        (
            {"timestamp": 1795428000, "severity": 8, "msg": "m"},
            "generic: severity: 8 is not a syslog severity",
        ),
        (
            {"timestamp": 1795428000, "level": "LOUD", "msg": "m"},
            "generic: level: unknown level 'LOUD'",
        ),
        (
            {"timestamp": 1795428000, "level": "200", "msg": "m"},
            "generic: level: unknown level '200'",
        ),
        (
            {"timestamp": "yesterday", "msg": "m"},
            "generic: timestamp: 'yesterday' is not valid: RFC",
        ),
        ({"Timestamp": "2026-11-23T10:00:00", "msg": "m"}, None),  # no offset: UTC, accepted
        ({"timestamp": 1e300, "msg": "m"}, "generic: timestamp: 1e+300 nanoseconds is not a time"),
        (
            {"timestamp": -5, "msg": "m"},
            "generic: timestamp: '1969-12-31T23:59:55+00:00' is outside",
        ),
        (
            {"instant": {"epochSecond": 1.5}, "msg": "m"},
            "generic: instant: {'epochSecond': 1.5} is not a time: seconds and nanoseconds",
        ),
        ({"timestamp": 1795428000, "message": 42}, None),  # not text: kept, the message is ""
        ({"timestamp": 1795428000, "msg": "m", "app": "x" * 200}, "generic: app: 'xxxx"),
        ([1, 2], "$: [1, 2] is not of type 'object'"),
        # what int() would choke on, with a reason naming no field
        ({"time": "1" * 5000, "msg": "m"}, "generic: time: '1111-11-11T11:11:11.111111+00:00' is "),
        ({"time": "\u00b2", "msg": "m"}, "generic: time: '\u00b2' is not valid: RFC 3339"),
        ({"time": 1795428000, "level": "\u00b2"}, "generic: level: unknown level '\u00b2'"),
        # a huge value that is not a time is named, cut short
        ({"time": [list(range(1000))] * 1000, "msg": "m"}, "generic: no time: none of timestamp, "),
    ],
)
def test_odd_values(line, reason):
    if reason is None:
        assert parse(line)["format"] == "generic"
    else:
        assert refused(line).startswith(reason)


def test_generic_by_name_refuses_what_is_not_an_object():
    assert refused([1, 2], "generic") == "generic: the line is not a JSON object"


# --------------------------------------------------------------------------- auto and the job


def test_the_named_formats_come_first():
    """A line a named format recognises is that format's, even though generic could read it."""
    assert parse(PINO[0])["format"] == "pino" and parse(ZAP[0])["format"] == "zap"
    canonical = {
        "timestamp": "2026-11-23T10:00:00Z",
        "level": "info",
        "service": "s",
        "event_type": "e",
        "message": "m",
    }
    assert parse(canonical)["format"] == "eventhorizon"


def test_the_readme_shows_the_table_the_code_uses():
    assert generic_format.recognition_table() in FORMATS_DOC.read_text()


def test_generic_is_a_built_in_name():
    assert "generic" in formats.NAMES
    with pytest.raises(formats.InvalidFormat, match="built-in format's name"):
        formats.custom_format({"name": "generic", "fields": {"timestamp": ["t"], "level": ["l"]}})


def test_canonical_lines_with_mistakes_are_still_refused_as_canonical():
    """The sample file's sixteen invalid lines are Event Horizon's own lines with a mistake
    each: under `auto` they are refused with the schema's reasons, as before the generic
    mapping, not read by its rules (a level `warn`, a time in epoch seconds)."""
    sample = (ROOT / "examples" / "sample.jsonl").read_bytes().splitlines()
    batch = lines.LineBatch()
    mapping = mappings.compile_format("auto")
    for line_no, raw in enumerate(sample, 1):
        lines.add_line(batch, uuid.uuid4(), line_no, raw, VALIDATOR, mapping)
    assert len(batch.errors) == 16 and list(batch.formats) == ["eventhorizon"]
    assert not [reason for _, _, reason in batch.errors if reason.startswith("generic")]


def test_the_names_looked_for_are_remembered_per_key_set_and_bounded():
    """Lines with the same keys share one look-up of the names to try, but each line's own
    values still decide (a `message` object on one line, text on the next); the remembered
    key sets stay few and small whatever the lines."""
    mapper = generic_format.GenericMapper(None, None)
    first = mapper({"time": 1795428000, "message": {"x": 1}, "msg": "from msg"})
    second = mapper({"time": 1795428000, "message": "from message", "msg": "m"})
    assert (first[1]["message"], second[1]["message"]) == ("from msg", "from message")
    assert len(mapper.shapes) == 1
    for n in range(generic_format.MAX_SHAPES * 3):
        mapper({"time": 1795428000, f"k{n}": n})
    assert 0 < len(mapper.shapes) <= generic_format.MAX_SHAPES
    mapper.shapes.clear()
    mapper({"time": 1795428000, **{f"k{n}": n for n in range(100)}})  # too many keys
    mapper({"time": 1795428000, "k" * 2000: 1})  # too long
    assert mapper.shapes == {}
