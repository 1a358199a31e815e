"""Log formats: the JSON log lines other libraries write, mapped onto the canonical entry.

Pure logic, no I/O. Each built-in format is data (a `Format`: which source fields give the
timestamp, level, message, service, event type and environment, and how to read their values),
and one mapper reads them all; `auto` picks the format per line from its keys (`detect`), and
a line none of them recognises goes to the `generic` mapping (generic_format.py), which finds
each field under the names the common libraries give it. What a format does not map stays in
the entry's `context` as it was, so nothing in the line is lost. The mapped entry is then
validated by `lines.py` against the one canonical schema, `log_entry.schema.json`, exactly like
a line written in Event Horizon's own format.

Custom formats are the same data written as JSON by a user (`log_format.schema.json`):
`custom_format` checks one and turns it into a `Format`; the API keeps it, and a job carries a
copy of the one it was uploaded with.

`compile_format(name, default_service, default_environment, definition)` is called once per job
and returns
a callable `mapping(obj) -> (format_name, entry, sources)`: `sources` names, for each canonical
field, the source field it came from, so that a line's error reason can say which field of the
line failed (`pino: time: not a number of milliseconds`); it is None for a canonical line, whose
reasons are the schema's own (`$.level: …`). A line that cannot be mapped raises ValueError
with its reason (lines.py imports nothing of ours but core, so ValueError is the contract).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jsonschema

CANONICAL = "eventhorizon"
AUTO = "auto"
GENERIC = "generic"  # any common JSON log line, by the names its fields go by (generic_format)
UNKNOWN_SERVICE = "unknown"
DEFAULT_ENVIRONMENT = "production"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

# Level names of the common libraries (any letter case) onto the canonical five.
LEVEL_NAMES = {
    "trace": "debug",
    "debug": "debug",
    "info": "info",
    "information": "info",
    "informational": "info",
    "notice": "info",
    "warn": "warning",
    "warning": "warning",
    "error": "error",
    "err": "error",
    "critical": "critical",
    "crit": "critical",
    "fatal": "critical",
    "panic": "critical",
    "dpanic": "critical",
    "alert": "critical",
    "emergency": "critical",
    "emerg": "critical",
}
# pino and bunyan: trace 10, debug 20, info 30, warn 40, error 50, fatal 60.
PINO_LEVELS = {10: "debug", 20: "debug", 30: "info", 40: "warning", 50: "error", 60: "critical"}
# OpenTelemetry severityNumber: TRACE 1-4, DEBUG 5-8, INFO 9-12, WARN 13-16, ERROR 17-20,
# FATAL 21-24.
OTEL_SEVERITIES = {
    **dict.fromkeys(range(1, 9), "debug"),
    **dict.fromkeys(range(9, 13), "info"),
    **dict.fromkeys(range(13, 17), "warning"),
    **dict.fromkeys(range(17, 21), "error"),
    **dict.fromkeys(range(21, 25), "critical"),
}
NO_NUMBERS: Mapping[int, str] = {}
# Go's slog names a level between two by the one below and the distance: "INFO+2", "DEBUG-4".
SLOG_LEVEL = re.compile(r"([a-z]+)[+-]\d{1,3}")

# How a time field's value is read. A number is seconds, milliseconds, microseconds or
# nanoseconds since the epoch (a string of digits too: OTLP/JSON writes 64-bit integers as
# strings); any other string is a date-time; `iso` takes strings only, `asctime` reads a
# date-time without an offset as UTC.
TIME_UNITS = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
TIME_TEXT = ("iso", "asctime")
ANY_VALUE_KEYS = frozenset({"stringValue", "intValue", "doubleValue", "boolValue"})
# Go's time.Time.String(), as logrus's README shows it: "2014-03-10 19:57:38.562264131 -0400 EDT"
GO_TIME = re.compile(r"(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)(\.\d+)? ([+-]\d\d)(\d\d)(?: \S+)?")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")


@dataclasses.dataclass(frozen=True)
class Format:
    """One log format, as data: for each canonical field, the source paths that may hold it
    (dotted: `log.level` is found as `{"log": {"level": …}}` or as `{"log.level": …}`; the
    first path present wins), and how to read the time and the level.

    `service` paths name the service and win over the upload's `service`; `service_fallback`
    paths name something near it (a logger, a host) and are used only when the upload gave
    none. `event_type` defaults to `<name>.log`, `message` to an empty string. A level is
    looked up in `level_numbers` (a number) or `level_names` (text, lower-case), then in the
    common `LEVEL_NAMES`. `defaults` (a custom format's) are what a line without any of a
    field's paths gets: a `level` instead of being refused, the others instead of the
    defaults above (a `service` or an `environment` given with the upload still wins)."""

    name: str
    time: tuple[tuple[str, str], ...]  # (path, unit: s, ms, us, ns, iso or asctime)
    level: tuple[str, ...]
    message: tuple[str, ...]
    service: tuple[str, ...] = ()
    service_fallback: tuple[str, ...] = ()
    event_type: tuple[str, ...] = ()
    environment: tuple[str, ...] = ()
    level_numbers: Mapping[int, str] = dataclasses.field(default_factory=lambda: NO_NUMBERS)
    level_names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    defaults: Mapping[str, str] = dataclasses.field(default_factory=dict)


FORMATS = {
    f.name: f
    for f in (
        Format(
            "pino",
            time=(("time", "ms"),),
            level=("level",),
            message=("msg",),
            service=("name",),
            service_fallback=("hostname",),
            level_numbers=PINO_LEVELS,
        ),
        Format(
            "bunyan",
            time=(("time", "ms"),),
            level=("level",),
            message=("msg",),
            service=("name",),
            service_fallback=("hostname",),
            level_numbers=PINO_LEVELS,
        ),
        Format(
            "zap",
            time=(("ts", "s"),),
            level=("level",),
            message=("msg",),
            service_fallback=("logger",),
        ),
        Format("logrus", time=(("time", "iso"),), level=("level",), message=("msg",)),
        # structlog's TimeStamper writes ISO text, or epoch seconds with fmt=None
        Format(
            "structlog",
            time=(("timestamp", "s"),),
            level=("level",),
            message=("event",),
            service_fallback=("logger",),
        ),
        Format(
            "ecs",
            time=(("@timestamp", "iso"),),
            level=("log.level",),
            message=("message",),
            service=("service.name",),
            service_fallback=("log.logger",),
            event_type=("event.action", "event.dataset"),
            environment=("service.environment",),
        ),
        Format(
            "python-json-logger",
            time=(("timestamp", "iso"), ("created", "s"), ("asctime", "asctime")),
            level=("levelname", "level"),
            message=("message",),
            service_fallback=("name",),
        ),
        Format(
            "otel",
            time=(("timeUnixNano", "ns"), ("observedTimeUnixNano", "ns")),
            level=("severityNumber", "severityText"),
            message=("body",),
            service=("resource.attributes.service.name", "resource.service.name"),
            event_type=("eventName", "attributes.event.name"),
            environment=(
                "resource.attributes.deployment.environment.name",
                "resource.attributes.deployment.environment",
                "resource.deployment.environment.name",
                "resource.deployment.environment",
            ),
            level_numbers=OTEL_SEVERITIES,
        ),
    )
}
NAMES = (AUTO, CANONICAL, *FORMATS, GENERIC)

# What a mapping returns for a line: the format's name, the canonical entry, and for each
# canonical field the source path it came from (None for a canonical line).
Mapped = tuple[str, dict[str, Any], dict[str, str] | None]


class InvalidFormat(ValueError):
    """A custom format's definition that cannot be used; `reasons` says every way why."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


def custom_format(definition: Any) -> Format:
    """A custom format's definition (JSON, `log_format.schema.json`) as a `Format`; raises
    InvalidFormat naming each problem. Its shape is bounded first (definition_bounds): the
    schema's checks are not all linear (`uniqueItems` compares a list's items pairwise when
    they are of mixed types), so they only ever see a definition of a few dozen values."""
    reasons = definition_bounds(definition)
    if reasons:
        raise InvalidFormat(reasons)
    reasons = [
        definition_error(error)
        for error in sorted(format_validator().iter_errors(definition), key=lambda e: list(e.path))
    ]
    if not reasons and definition["name"] in NAMES:
        reasons.append(f"$.name: {definition['name']!r} is a built-in format's name")
    if reasons:
        raise InvalidFormat(reasons)
    fields, unit = definition["fields"], definition.get("time_unit", "iso")
    levels = {str(value).lower(): level for value, level in definition.get("levels", {}).items()}
    return Format(
        definition["name"],
        time=tuple((path, unit) for path in fields["timestamp"]),
        level=tuple(fields["level"]),
        # a rendered message first, else its template (Serilog's compact JSON: @m, else @mt)
        message=tuple(
            dict.fromkeys((*fields.get("message", ()), *fields.get("message_template", ())))
        ),
        service=tuple(fields.get("service", ())),
        service_fallback=tuple(fields.get("service_fallback", ())),
        event_type=tuple(fields.get("event_type", ())),
        environment=tuple(fields.get("environment", ())),
        level_numbers={
            int(value): level for value, level in levels.items() if INTEGER.fullmatch(value)
        },
        level_names=levels,
        defaults=definition.get("defaults", {}),
    )


def definition_bounds(definition: Any) -> list[str]:
    """What makes a definition larger than any the schema allows, found in one walk that stops
    at the first list, object or nesting too large: its lists hold at most MAX_DEFINITION_ITEMS
    values, its objects MAX_DEFINITION_MEMBERS, and it nests MAX_DEFINITION_DEPTH deep."""
    pending = [(definition, "$", 1)]
    while pending:
        value, where, depth = pending.pop()
        if isinstance(value, (list, dict)) and depth > MAX_DEFINITION_DEPTH:
            return [
                f"{where}: nested {depth} deep, deeper than a definition goes "
                f"({MAX_DEFINITION_DEPTH}); not checked further"
            ]
        if isinstance(value, list):
            if len(value) > MAX_DEFINITION_ITEMS:
                return [
                    f"{where}: {len(value)} items, more than {MAX_DEFINITION_ITEMS}; not "
                    "checked further"
                ]
            pending += [(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
        elif isinstance(value, dict):
            if len(value) > MAX_DEFINITION_MEMBERS:
                return [
                    f"{where}: {len(value)} members, more than {MAX_DEFINITION_MEMBERS}; "
                    "not checked further"
                ]
            pending += [(item, f"{where}.{key}"[:300], depth + 1) for key, item in value.items()]
    return []


def definition_error(error) -> str:
    """A schema error in a definition, put for a person: a pattern is explained by the
    property's description rather than shown as a regular expression."""
    if error.validator == "pattern" and "description" in error.schema:
        return f"{error.json_path}: {error.instance!r} is not valid: {error.schema['description']}"
    return f"{error.json_path}: {error.message}"


INTEGER = re.compile(r"-?\d{1,18}")
FORMAT_SCHEMA_PATH = pathlib.Path(__file__).resolve().parent / "log_format.schema.json"
# The largest shapes log_format.schema.json allows: a field's paths (`maxItems`), the levels
# (`maxProperties`), and the nesting of the definition, `fields`, a field's paths.
_FORMAT_SCHEMA = json.loads(FORMAT_SCHEMA_PATH.read_text())
MAX_DEFINITION_ITEMS = _FORMAT_SCHEMA["$defs"]["paths"]["maxItems"]
MAX_DEFINITION_MEMBERS = _FORMAT_SCHEMA["properties"]["levels"]["maxProperties"]
MAX_DEFINITION_DEPTH = 3


@functools.cache
def format_validator():
    """The compiled validator of custom format definitions (built once per process)."""
    cls = jsonschema.validators.validator_for(_FORMAT_SCHEMA)
    cls.check_schema(_FORMAT_SCHEMA)
    return cls(_FORMAT_SCHEMA)


def detect(obj: dict) -> str:
    """The format a line is written in, from its keys (the `auto` rules, in this order)."""
    if "@timestamp" in obj:
        if "log.level" in obj:
            return "ecs"
        log = obj.get("log")
        return "ecs" if type(log) is dict and "level" in log else GENERIC  # logstash-logback
    if "timeUnixNano" in obj or "observedTimeUnixNano" in obj:
        return "otel"
    level = obj.get("level")
    if "time" in obj and type(level) is int:
        return "bunyan" if "v" in obj else "pino"
    if "ts" in obj and "msg" in obj and "level" in obj:
        return "zap"  # (klog's JSON has ts and msg, but no level: generic)
    if "levelname" in obj:
        return "python-json-logger"
    if "event" in obj and "timestamp" in obj and "message" not in obj:
        return "structlog"
    if "time" in obj and "msg" in obj and type(level) is str:
        return "logrus"
    if "event_type" in obj:
        return CANONICAL  # Event Horizon's own field: its lines keep the schema's reasons
    return GENERIC


class CanonicalMapper:
    """Event Horizon's own format: the line is the entry. Only the upload's defaults are filled
    in, so reasons stay the schema's own, exactly as without a mapping."""

    def __init__(self, default_service: str | None, default_environment: str | None):
        self.defaults = {
            k: v
            for k, v in (("service", default_service), ("environment", default_environment))
            if v
        }

    def __call__(self, obj) -> Mapped:
        if self.defaults and type(obj) is dict:
            for key, value in self.defaults.items():
                obj.setdefault(key, value)
        return CANONICAL, obj, None


class FormatMapper:
    """A `Format` made ready to run: its paths split once, its defaults chosen once."""

    def __init__(self, fmt: Format, default_service: str | None, default_environment: str | None):
        self.name = fmt.name
        # (path, unit, where): `where` names the field in a reason (`pino: time`)
        self.time = [(Path(p), unit, f"{fmt.name}: {p}") for p, unit in fmt.time]
        self.epoch_text = EpochText()
        self.level = [(Path(p), f"{fmt.name}: {p}") for p in fmt.level]
        self.level_numbers = fmt.level_numbers
        self.level_names = fmt.level_names
        self.message = [Path(p) for p in fmt.message]
        self.service = [Path(p) for p in fmt.service]
        self.service_fallback = [Path(p) for p in fmt.service_fallback]
        self.event_type = [Path(p) for p in fmt.event_type]
        self.environment = [Path(p) for p in fmt.environment]
        self.default_service = default_service
        self.default_environment = (
            default_environment or fmt.defaults.get("environment") or DEFAULT_ENVIRONMENT
        )
        self.default_event_type = fmt.defaults.get("event_type", f"{fmt.name}.log")
        self.default_message = fmt.defaults.get("message", "")
        self.last_service = fmt.defaults.get("service", UNKNOWN_SERVICE)
        self.default_level = fmt.defaults.get("level")

    def __call__(self, obj) -> Mapped:
        """The canonical entry of one line. The mapped fields are taken out of the line (it is
        not used again), and what is left of it becomes the entry's context."""
        if type(obj) is not dict:
            raise ValueError(f"{self.name}: the line is not a JSON object")
        sources: dict[str, str] = {}
        timestamp = self.read_time(obj, sources)
        level = self.read_level(obj, sources)
        message = take(obj, self.message, sources, "message", self.default_message)
        service = take(obj, self.service, sources, "service", None)
        if service is None and self.default_service:
            service, sources["service"] = self.default_service, "service (given with the upload)"
        if service is None:
            service = take(obj, self.service_fallback, sources, "service", self.last_service)
        event_type = take(obj, self.event_type, sources, "event_type", self.default_event_type)
        environment = take(obj, self.environment, sources, "environment", self.default_environment)
        return (
            self.name,
            {
                "timestamp": timestamp,
                "level": level,
                "service": service,
                "event_type": event_type,
                "message": message,
                "environment": environment,
                "context": obj,
            },
            sources,
        )

    def read_time(self, obj: dict, sources: dict[str, str]) -> Any:
        for path, unit, where in self.time:
            value = path.take(obj)
            if value is not MISSING:
                sources["timestamp"] = path.text
                return time_text(value, unit, where, self.epoch_text)
        raise ValueError(
            f"{self.name}: no {' or '.join(p.text for p, _, _ in self.time)} (the timestamp)"
        )

    def read_level(self, obj: dict, sources: dict[str, str]) -> str:
        for path, where in self.level:
            value = path.take(obj)
            if value is not MISSING:
                sources["level"] = path.text
                return level_name(value, self.level_numbers, where, self.level_names)
        if self.default_level is not None:
            return self.default_level
        raise ValueError(
            f"{self.name}: no {' or '.join(p.text for p, _ in self.level)} (the level)"
        )


def take(obj: dict, paths: list[Path], sources: dict[str, str], field: str, default):
    """The value at the first of `paths` present (taken out of the line), else `default`."""
    for path in paths:
        value = path.take(obj)
        if value is not MISSING:
            sources[field] = path.text
            return value
    return default


MISSING = object()


class Path:
    """A dotted source path, split once. `take` finds it through nested objects or dotted keys
    (ECS writes both), and through OTLP attribute lists ([{"key": …, "value": {…}}]); an OTLP
    value ({"stringValue": …}) is unwrapped. The value is removed from its object (an object
    left empty goes too); a value found in an attribute list is left where it is."""

    def __init__(self, text: str):
        self.text = text
        self.segments = tuple(text.split("."))
        self.simple = len(self.segments) == 1

    def take(self, obj: dict):
        if self.simple:  # the common case: a top-level key
            value = obj.pop(self.text, MISSING)
        else:
            value = take_nested(obj, self.segments)
        if type(value) is dict and len(value) == 1:  # perhaps an OTLP AnyValue
            return any_value(value)
        return value


def take_nested(obj: dict, segments: tuple[str, ...]):
    """Find and remove the value at `segments`, trying the longest dotted key first."""
    for end in range(len(segments), 0, -1):
        key = ".".join(segments[:end])
        if key not in obj:
            continue
        if end == len(segments):
            return obj.pop(key)
        inner, rest = obj[key], segments[end:]
        if type(inner) is dict:
            value = take_nested(inner, rest)
            if value is not MISSING:
                if not inner:
                    del obj[key]
                return value
        elif type(inner) is list:
            value = attribute(inner, ".".join(rest))
            if value is not MISSING:
                return value
    return MISSING


def attribute(items: list, key: str):
    """The value of `key` in an OTLP attribute list, or MISSING."""
    for item in items:
        if type(item) is dict and item.get("key") == key and "value" in item:
            return item["value"]
    return MISSING


def any_value(value: dict):
    """An OTLP AnyValue ({"stringValue": "x"}, a dict of one key) as the plain value it holds;
    any other dict as it is."""
    ((key, inner),) = value.items()
    return inner if key in ANY_VALUE_KEYS else value


def level_name(
    value, numbers: Mapping[int, str], where: str, names: Mapping[str, str] | None = None
) -> str:
    """The canonical level of a level value: a name (any case; the format's own first) or a
    number of the format."""
    if type(value) is str:
        lowered = value.lower()
        level = (names.get(lowered) if names else None) or LEVEL_NAMES.get(lowered)
        if level is None and (slog := SLOG_LEVEL.fullmatch(lowered)):
            level = LEVEL_NAMES.get(slog[1])
    elif type(value) in (int, float) and value in numbers:
        level = numbers[int(value)]
    else:
        level = None
    if level is None:
        raise ValueError(f"{where}: unknown level {value!r}")
    return level


def time_text(value, unit: str, where: str, epoch_text: EpochText) -> Any:
    """The timestamp as an RFC 3339 string (the canonical schema checks it), from a number of
    `unit` since the epoch or from a date-time string (normalised when it is not RFC 3339
    already: a `+0100` offset, a comma before the fraction, Go's time format). An integer
    is written by `epoch_text`, the job's."""
    if type(value) is str:
        # ASCII digits only ("²" is a digit to isdigit), and no more than a time can have
        # (int() refuses past 4,300 digits, with a reason that names no field)
        if unit in TIME_UNITS and value.isascii() and value.isdigit() and len(value) <= 25:
            value = int(value)
        else:
            return normalised_time(value, naive_is_utc=unit == "asctime")
    if unit in TIME_TEXT:
        raise ValueError(f"{where}: not a date-time string")
    if type(value) not in (int, float):
        raise ValueError(f"{where}: not a number of {TIME_UNITS[unit]}")
    try:
        if type(value) is int:
            return epoch_text(value // 1000 if unit == "ns" else value * MICROSECONDS[unit])
        if unit == "ns":
            moment = EPOCH + dt.timedelta(microseconds=value // 1000)
        elif unit == "us":
            moment = EPOCH + dt.timedelta(microseconds=value)
        elif unit == "ms":
            moment = EPOCH + dt.timedelta(milliseconds=value)
        else:
            moment = EPOCH + dt.timedelta(seconds=value)
    except (OverflowError, ValueError):  # beyond datetime's years, or NaN
        raise ValueError(
            f"{where}: {value!r} {TIME_UNITS[unit]} is not a time datetime can hold"
        ) from None
    return moment.isoformat()


MICROSECONDS = {"s": 1_000_000, "ms": 1_000, "us": 1}


class EpochText:
    """Whole microseconds since the epoch as RFC 3339 text, in UTC, as datetime.isoformat
    writes it. The date and clock of the last second are kept: the lines of a log file come
    in order, many in the same second, and the calendar arithmetic costs more than the rest
    of a line's mapping."""

    def __init__(self):
        self.second: int | None = None
        self.prefix = ""

    def __call__(self, microseconds: int) -> str:
        second, fraction = divmod(microseconds, 1_000_000)
        if second != self.second:
            self.prefix = (EPOCH + dt.timedelta(seconds=second)).isoformat()[: -len("+00:00")]
            self.second = second
        if fraction:
            return f"{self.prefix}.{fraction:06d}+00:00"
        return f"{self.prefix}+00:00"


def normalised_time(text: str, *, naive_is_utc: bool) -> str:
    """`text` as RFC 3339 if it can be read as a date-time; else unchanged (the schema then
    says why)."""
    if RFC3339.fullmatch(text):
        return text
    if go := GO_TIME.fullmatch(text):
        date, clock, fraction, hours, minutes = go.groups()
        text = f"{date}T{clock}{(fraction or '')[:7]}{hours}:{minutes}"
    try:
        moment = dt.datetime.fromisoformat(text.replace(",", "."))
    except ValueError:
        return text
    if moment.tzinfo is None:
        if not naive_is_utc:
            return text
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.isoformat()
