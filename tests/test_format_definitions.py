"""Custom log formats as a definition says them: lines mapped as defined (its level table,
its defaults, what its lines leave out), unusable definitions refused naming each problem, and
the definition schema as the OpenAPI document carries it. The formats over the API are
test_custom_formats.py's. No services needed."""

from __future__ import annotations

import json

import pytest

import formats
import lines
import mappings
from helpers import MYAPP, MYAPP_LINE, VALIDATOR
from line_samples import CLEF, PINO, mapped, parse


# A format of a team's own: Java-ish severities, epoch milliseconds, its service nested.
def parse_custom(line, definition=MYAPP, **defaults) -> dict:
    mapping = mappings.compile_format(
        definition["name"], defaults.get("service"), defaults.get("environment"), definition
    )
    return lines.parse_line(json.dumps(line).encode(), VALIDATOR, mapping)


def test_a_custom_format_maps_its_lines_as_defined():
    entry = parse_custom(MYAPP_LINE)
    assert mapped(entry) == {
        "timestamp": "2025-11-30T10:00:00+00:00",
        "level": "warning",
        "service": "gateway",
        "event_type": "proxy.slow",
        "message": "slow upstream",
        "environment": "staging",
        "format": "myapp",
    }
    assert entry["context"] == {"app": {"build": 41}, "upstream": "db-1"}  # nothing lost


@pytest.mark.parametrize(
    ("value", "level"),
    [
        ("W", "warning"),
        ("w", "warning"),
        ("severe", "critical"),
        (5, "debug"),
        ("5", "debug"),
        ("warn", "warning"),
        ("ERROR", "error"),  # not in its table: the common names
    ],
)
def test_a_custom_level_table_comes_before_the_common_names(value, level):
    assert parse_custom({**MYAPP_LINE, "sev": value})["level"] == level


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"sev": "WARNING!"}, "myapp: sev: unknown level 'WARNING!'"),
        ({"sev": 6}, "myapp: sev: unknown level 6"),
        ({"epoch_ms": "yesterday"}, "myapp: epoch_ms: 'yesterday' is not valid"),
        ({"epoch_ms": True}, "myapp: epoch_ms: not a number of milliseconds"),
        ({"kind": ""}, "myapp: kind: '' should be non-empty"),
    ],
)
def test_a_custom_formats_errors_name_the_source_field(change, reason):
    with pytest.raises(lines.InvalidLine) as info:
        parse_custom({**MYAPP_LINE, **change})
    assert str(info.value).startswith(reason)


def test_a_custom_format_falls_back_like_the_built_in_ones():
    minimal = {"name": "tiny", "fields": {"timestamp": ["t"], "level": ["l"]}}
    entry = parse_custom(
        {"t": "2026-11-30T10:00:00Z", "l": "info", "msg": "kept"},
        minimal,
        service="shop",
        environment="qa",
    )
    assert mapped(entry) == {
        "timestamp": "2026-11-30T10:00:00+00:00",
        "level": "info",
        "service": "shop",
        "event_type": "tiny.log",
        "message": "",
        "environment": "qa",
        "format": "tiny",
    }
    assert entry["context"] == {"msg": "kept"}


def test_a_custom_format_says_what_its_lines_leave_out():
    sample = {"@t": "2016-06-07T03:44:57.8532799Z", "@mt": "Hello, {User}", "User": "nblumhardt"}
    entry = parse_custom(sample, CLEF)  # the README's sample line
    assert mapped(entry) == {
        "timestamp": "2016-06-07T03:44:57.853279+00:00",
        "level": "info",
        "service": "unknown",
        "event_type": "clef.log",
        "message": "Hello, {User}",
        "environment": "production",
        "format": "clef",
    }
    assert entry["context"] == {"User": "nblumhardt"}
    rendered = parse_custom(
        {**sample, "@m": 'Hello, "nblumhardt"', "@l": "Verbose", "@i": "a1e77001"}, CLEF
    )
    assert (rendered["level"], rendered["message"], rendered["event_type"]) == (
        "debug",
        'Hello, "nblumhardt"',
        "a1e77001",
    )
    assert rendered["context"] == {"@mt": "Hello, {User}", "User": "nblumhardt"}
    without = {**CLEF, "name": "strict-clef"}
    del without["defaults"]
    with pytest.raises(lines.InvalidLine, match=r"^strict-clef: no @l \(the level\)$"):
        parse_custom(sample, without)


def test_each_default_and_what_comes_before_it():
    definition = {
        "name": "tiny",
        "fields": {"timestamp": ["t"], "level": ["l"], "service_fallback": ["logger"]},
        "defaults": {
            "level": "warning",
            "message": "(none)",
            "service": "billing",
            "event_type": "billing.log",
            "environment": "staging",
        },
    }
    line = {"t": "2026-11-30T10:00:00Z"}
    assert mapped(parse_custom(line, definition)) == {
        "timestamp": "2026-11-30T10:00:00+00:00",
        "level": "warning",
        "service": "billing",
        "event_type": "billing.log",
        "message": "(none)",
        "environment": "staging",
        "format": "tiny",
    }
    by_upload = parse_custom(line, definition, service="shop", environment="qa")
    assert (by_upload["service"], by_upload["environment"]) == ("shop", "qa")
    assert parse_custom({**line, "logger": "db"}, definition)["service"] == "db"
    assert parse_custom({**line, "l": "error"}, definition)["level"] == "error"
    with pytest.raises(lines.InvalidLine, match="^tiny: l: unknown level 'LOUD'$"):
        parse_custom({**line, "l": "LOUD"}, definition)  # present and unknown: not defaulted


@pytest.mark.parametrize(
    ("definition", "reason"),
    [
        ({"fields": {"timestamp": ["t"], "level": ["l"]}}, "$: 'name' is a required property"),
        ({**CLEF, "defaults": {"level": "loud"}}, "$.defaults.level: 'loud' is not one of"),
        ({**CLEF, "defaults": {}}, "$.defaults: {} should be non-empty"),
        (
            {**CLEF, "defaults": {"host": "h"}},
            "$.defaults: Additional properties are not allowed ('host' was unexpected)",
        ),
        ({**CLEF, "defaults": {"service": ""}}, "$.defaults.service: '' should be non-empty"),
        ({**CLEF, "defaults": {"environment": "e" * 65}}, "$.defaults.environment: 'eeee"),
        ({**CLEF, "defaults": "info"}, "$.defaults: 'info' is not of type 'object'"),
        (
            {**CLEF, "fields": {"timestamp": ["t"], "level": ["l"], "message_template": []}},
            "$.fields.message_template: [] should be non-empty",
        ),
        ({**MYAPP, "name": "pino"}, "$.name: 'pino' is a built-in format's name"),
        ({**MYAPP, "name": "auto"}, "$.name: 'auto' is a built-in format's name"),
        ({**MYAPP, "name": "My App"}, "$.name: 'My App' is not valid: How uploads name the format"),
        ({**MYAPP, "fields": {"level": ["l"]}}, "$.fields: 'timestamp' is a required property"),
        (
            {**MYAPP, "fields": {"timestamp": [], "level": ["l"]}},
            "$.fields.timestamp: [] should be non-empty",
        ),
        (
            {**MYAPP, "fields": {"timestamp": ["a..b"], "level": ["l"]}},
            "$.fields.timestamp[0]: 'a..b' is not valid: A field's path",
        ),
        (
            {**MYAPP, "fields": {"timestamp": ["t"], "level": ["l"], "host": ["h"]}},
            "$.fields: Additional properties are not allowed ('host' was unexpected)",
        ),
        ({**MYAPP, "time_unit": "weeks"}, "$.time_unit: 'weeks' is not one of"),
        ({**MYAPP, "levels": {"W": "warn"}}, "$.levels.W: 'warn' is not one of"),
        (
            {**MYAPP, "levels": {str(n): "info" for n in range(65)}},
            "$.levels: 65 members, more than 64",
        ),
        (
            {**MYAPP, "fields": {"timestamp": ["t"] * 2, "level": ["l"]}},
            "$.fields.timestamp: ['t', 't'] has non-unique elements",
        ),
        ([], "$: [] is not of type 'object'"),
    ],
)
def test_unusable_definitions_are_refused_naming_each_problem(definition, reason):
    with pytest.raises(formats.InvalidFormat) as info:
        formats.custom_format(definition)
    assert any(r.startswith(reason) for r in info.value.reasons), info.value.reasons


def test_every_problem_of_a_definition_is_named():
    with pytest.raises(formats.InvalidFormat) as info:
        formats.custom_format({"name": "x y", "fields": {"level": []}, "time_unit": "weeks"})
    assert len(info.value.reasons) == 4, info.value.reasons


def test_the_built_in_formats_are_expressible_as_definitions():
    """The definition schema can say what a built-in format says (a single time unit aside):
    pino, written as a custom format, maps pino's lines exactly as the built-in one does."""
    as_custom = {
        "name": "my-pino",
        "time_unit": "ms",
        "fields": {
            "timestamp": ["time"],
            "level": ["level"],
            "message": ["msg"],
            "service": ["name"],
            "service_fallback": ["hostname"],
        },
        "levels": {str(n): level for n, level in formats.PINO_LEVELS.items()},
    }
    for line in PINO:
        ours, theirs = parse_custom(json.loads(line), as_custom), parse(line, "pino")
        assert {**mapped(ours), "format": "pino", "event_type": "pino.log"} == mapped(theirs)
        assert ours["context"] == theirs["context"]


def test_the_openapi_document_carries_the_definition_schema_as_it_is():
    """static/openapi.json's LogFormatDefinition is log_format.schema.json (its $defs as the
    document's components): a change to one that misses the other fails here."""
    root = formats.FORMAT_SCHEMA_PATH.parent
    schema = json.loads(formats.FORMAT_SCHEMA_PATH.read_text())
    components = json.loads((root / "static" / "openapi.json").read_text())["components"]
    as_component = json.loads(
        json.dumps({k: v for k, v in schema.items() if k[0] != "$"}).replace(
            '"#/$defs/paths"', '"#/components/schemas/FormatPaths"'
        )
    )
    assert components["schemas"]["LogFormatDefinition"] == as_component
    assert components["schemas"]["FormatPaths"] == schema["$defs"]["paths"]
