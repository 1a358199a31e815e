"""The `generic` mapping: any common JSON log line, read by the names its fields actually go by.

`auto` uses it for a line none of the named formats recognises (formats.detect). For each
canonical field it tries a declared list of names (`SYNONYMS`, in order; docs/formats.md's
recognition table is written from it and a test keeps the two the same), anchored on Datadog's
date and status remappers, Loki's level and service discovery and the OpenTelemetry log data
model's example mappings, and widened to the JSON the common libraries of the main languages
write (their own documentation shows it): `@`-prefixed (Serilog's `@t`, `@m`, `@mt`, `@l`),
capitalised (`Timestamp`, `LogLevel`, `MESSAGE`) or nested (`log.level`, `fields.message`,
`record.level.name`). Names are compared without regard to letter case, a dotted name reaches
into nested objects or dotted keys, and the first name present whose value has the field's
type wins (a value of another type stays in the context, as every unmapped field does).

Values are read as generously as the formats that write them: a time is a date-time string
(RFC 3339, ISO 8601 with or without `T`, an offset or a comma; no offset: UTC; RFC 3164 and
RFC 2822 dates; Go's time.String()), a number since the epoch whose magnitude tells seconds,
milliseconds, microseconds and nanoseconds apart, or a two-part time object (log4j2's
`instant`, Google's `{seconds, nanos}`); a level is one of the level words of the common
libraries, else Datadog's prefix rules, or a syslog severity 0-7. A line without a time is
invalid with a reason naming every name tried; a line without a level is `info` (Serilog's
compact JSON leaves `@l` out for Information; Docker writes none), or `error` if it has klog's
`err`.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import reprlib

import formats

GENERIC = "generic"

# For each canonical field, the names it goes by, tried in this order (letter case aside).
# `message` takes a rendered message before a template (`@mt`, `MessageTemplate`); `service`
# names win over the upload's `service`, `service_fallback` names (a logger, a host) are used
# only when neither the line nor the upload names one.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "timestamp": (
        "timestamp",
        "@timestamp",
        "time",
        "ts",
        "@t",
        "date",
        "datetime",
        "_timestamp",
        "eventTime",
        "published_date",
        "timeMillis",
        "instant",
        "record.time.repr",
        "timeUnixNano",
        "observedTimeUnixNano",
        "__REALTIME_TIMESTAMP",
        "created",
        "asctime",
        "receiveTimestamp",
    ),
    "level": (
        "level",
        "log.level",
        "@l",
        "severity",
        "lvl",
        "levelname",
        "level_name",
        "loglevel",
        "log_level",
        "severityText",
        "record.level.name",
        "syslog.severity",
        "priority",
    ),
    "message": (
        "message",
        "msg",
        "@m",
        "fields.message",
        "record.message",
        "RenderedMessage",
        "short_message",
        "textPayload",
        "jsonPayload.message",
        "body",
        "log",
        "event",
        "@mt",
        "MessageTemplate",
        "message_template",
        "fields.message_template",
    ),
    "service": (
        "service",
        "service.name",
        "serviceName",
        "service_name",
        "app",
        "application",
        "app_name",
        "app_kubernetes_io_name",
        "container",
        "container_name",
        "component",
        "workload",
        "job",
        "SYSLOG_IDENTIFIER",
        "appname",
        "app-name",
        "programname",
        "ident",
        "resource.labels.service_name",
    ),
    "service_fallback": (
        "name",
        "logger",
        "logger_name",
        "loggerName",
        "log.logger",
        "target",
        "SourceContext",
        "Category",
        "record.name",
        "hostname",
        "host",
    ),
    "event_type": (
        "event_type",
        "eventType",
        "event.action",
        "event.name",
        "eventName",
        "event_name",
        "@i",
        "type",
        "event",
    ),
    "environment": (
        "environment",
        "env",
        "deployment.environment.name",
        "deployment.environment",
        "service.environment",
    ),
}

# Level words of the common libraries that the common names (formats.LEVEL_NAMES) and the
# prefix rules below would miss or misread ("fine" is not fatal, "config" not critical).
LEVEL_WORDS = {
    **formats.LEVEL_NAMES,
    "verbose": "debug",
    "silly": "debug",
    "http": "debug",  # Serilog, winston
    "fine": "debug",
    "finer": "debug",
    "finest": "debug",
    "config": "debug",  # java.util.logging
    "severe": "error",  # java.util.logging
    "success": "info",
    "ok": "info",  # loguru; Datadog's OK status
    "default": "info",  # Google Cloud Logging: no severity assigned
    "e": "error",  # glog and klog's letters (I, W, E, F) otherwise go by the prefix rules
}
# Datadog's status remapper, by prefix, in this order; our level set has no emergency, alert
# or notice: emergency and alert are critical, notice is info (as formats.LEVEL_NAMES has it).
LEVEL_PREFIXES = (
    (("emerg", "f"), "critical"),
    (("a",), "critical"),
    (("c",), "critical"),
    (("err",), "error"),
    (("w",), "warning"),
    (("n",), "info"),
    (("i",), "info"),
    (("d", "t", "v"), "debug"),
)
# Syslog severities (RFC 5424): 0 emergency, 1 alert, 2 critical, 3 error, 4 warning,
# 5 notice, 6 informational, 7 debug.
SYSLOG_SEVERITIES = (
    "critical",
    "critical",
    "critical",
    "error",
    "warning",
    "info",
    "info",
    "debug",
)

# A number below 10^11 is seconds (up to the year 5138), below 10^14 milliseconds, below
# 10^17 microseconds, else nanoseconds (times before March 1973 in a finer unit read wrong).
EPOCH_UNITS = ((10**11, "s"), (10**14, "ms"), (10**17, "us"))
NUMBER = re.compile(r"-?[0-9]{1,25}(\.[0-9]{1,25})?")  # ASCII digits, as many as a time has
# Two-part times: log4j2's JsonLayout `instant`, Google's protobuf Timestamp as JSON.
SECOND_PARTS = (("epochSecond", "nanoOfSecond"), ("seconds", "nanos"))
RFC3164 = re.compile(r"([A-Z][a-z]{2}) {1,2}(\d{1,2}) (\d\d:\d\d:\d\d)")
RFC2822 = re.compile(r"(?:[A-Z][a-z]{2}, )?\d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d")
SHORT = reprlib.Repr()  # (its keyword arguments are Python 3.12's)
SHORT.maxlevel, SHORT.maxdict, SHORT.maxlist, SHORT.maxstring, SHORT.maxlong = 2, 4, 4, 40, 40
MONTHS = {
    name: n
    for n, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}


class Name:
    """One synonym, split once: its lower-case text and dotted segments."""

    def __init__(self, text: str):
        self.text = text
        self.key = text.lower()
        self.segments = tuple(self.key.split("."))
        self.simple = len(self.segments) == 1
        # the top-level keys it could start at: "a.b.c", "a.b", "a"
        self.heads = tuple(
            ".".join(self.segments[:end]) for end in range(len(self.segments), 0, -1)
        )


NAMES = {field: tuple(Name(text) for text in texts) for field, texts in SYNONYMS.items()}


def names_by_head() -> dict[str, tuple[tuple[str, int], ...]]:
    """For each top-level key (lower case) a name could start at, the (field, rank) of the
    names starting there: a line's own keys pick the few names worth looking for."""
    table: dict[str, tuple[tuple[str, int], ...]] = {}
    for field, names in NAMES.items():
        for rank, name in enumerate(names):
            for head in name.heads:
                table[head] = (*table.get(head, ()), (field, rank))
    return table


BY_HEAD = names_by_head()
# The key sets a mapping remembers (GenericMapper.names_for): at most 256, each of at most 32
# keys of 1,024 characters in all.
MAX_SHAPES, MAX_SHAPE_KEYS, MAX_SHAPE_CHARS = 256, 32, 1024


def look_for(obj: dict) -> tuple[dict[str, str], dict[str, list[Name]]]:
    """The line's keys by their lower case, and for each field the names worth looking for
    in it, in the field's order."""
    index: dict[str, str] = {}
    ranks: dict[str, list[int]] = {}
    for key in obj:
        lowered = key.lower()
        index[lowered] = key
        for field, rank in BY_HEAD.get(lowered, ()):
            if field in ranks:
                ranks[field].append(rank)
            else:
                ranks[field] = [rank]
    return index, {
        field: [NAMES[field][r] for r in (found if len(found) == 1 else sorted(set(found)))]
        for field, found in ranks.items()
    }


class GenericMapper:
    """The `generic` mapping, made ready to run: called with a line, returns
    ("generic", entry, sources) as formats.FormatMapper does."""

    name = GENERIC

    def __init__(self, default_service: str | None, default_environment: str | None):
        self.default_service = default_service
        self.default_environment = default_environment or formats.DEFAULT_ENVIRONMENT
        self.epoch_text = formats.EpochText()
        self.shapes: dict[tuple[str, ...], tuple[dict, dict]] = {}

    def names_for(self, obj: dict) -> tuple[dict[str, str], dict[str, list[Name]]]:
        """look_for's answer, remembered for the last few key sets: a file's lines mostly have
        the keys of the one logger that wrote them. Only small key sets are kept (a bounded
        memory whatever the lines)."""
        shape = tuple(obj)
        found = self.shapes.get(shape)
        if found is None:
            found = look_for(obj)
            if len(shape) <= MAX_SHAPE_KEYS and sum(map(len, shape)) <= MAX_SHAPE_CHARS:
                if len(self.shapes) >= MAX_SHAPES:
                    self.shapes.clear()
                self.shapes[shape] = found
        return found

    def __call__(self, obj) -> formats.Mapped:
        if type(obj) is not dict:
            raise ValueError(f"{GENERIC}: the line is not a JSON object")
        index, names = self.names_for(obj)
        sources: dict[str, str] = {}
        timestamp = self.read_time(obj, index, names.get("timestamp", ()), sources)
        level = read_level(obj, index, names.get("level", ()), sources)
        message = take_first(obj, index, names.get("message", ()), is_text, sources, "message")
        service = take_first(obj, index, names.get("service", ()), is_name, sources, "service")
        if service is None and self.default_service:
            service, sources["service"] = self.default_service, "service (given with the upload)"
        if service is None:
            service = take_first(
                obj, index, names.get("service_fallback", ()), is_name, sources, "service"
            )
        event_type = take_first(
            obj, index, names.get("event_type", ()), is_name, sources, "event_type"
        )
        environment = take_first(
            obj, index, names.get("environment", ()), is_name, sources, "environment"
        )
        return (
            GENERIC,
            {
                "timestamp": timestamp,
                "level": level,
                "service": formats.UNKNOWN_SERVICE if service is None else service,
                "event_type": f"{GENERIC}.log" if event_type is None else event_type,
                "message": "" if message is None else message,
                "environment": self.default_environment if environment is None else environment,
                "context": obj,
            },
            sources,
        )

    def read_time(self, obj: dict, index: dict, names, sources: dict[str, str]) -> str:
        unreadable = []
        for name in names:
            chain = find(obj, index, name)
            if chain is None:
                continue
            value = chain[-1][0][chain[-1][1]]
            if not is_time(value):
                unreadable.append(f"{path_of(chain)}: {short(value)}")
                continue
            sources["timestamp"] = where = path_of(chain)
            remove(chain)
            return time_text(value, f"{GENERIC}: {where}", self.epoch_text)
        tried = ", ".join(SYNONYMS["timestamp"])
        found = f"; not a time: {'; '.join(unreadable)}" if unreadable else ""
        raise ValueError(
            f"{GENERIC}: no time: none of {tried} (in any letter case) holds a "
            f"date-time or a number since the epoch{found}"
        )


def read_level(obj: dict, index: dict, names, sources: dict[str, str]) -> str:
    """The line's level from the first level name present whose value is text or a number;
    when there is none, `error` for a line with klog's `err` (ErrorS writes it, InfoS a `v`),
    else `info`."""
    value = take_first(obj, index, names, is_level, sources, "level")
    if value is None:
        return "error" if "err" in obj else "info"
    return level_of(value, f"{GENERIC}: {sources['level']}")


def take_first(obj: dict, index: dict, names, accepts, sources: dict[str, str], field: str):
    """The value of the first of `names` present with a value `accepts` takes (taken out of
    the line), or None; `sources[field]` says where it was."""
    for name in names:
        if name.simple:  # the common case, without the walk
            key = name.key if name.key in obj else index[name.key]
            if key in obj and accepts(value := obj[key]):
                sources[field] = key
                del obj[key]
                return value
            continue
        chain = find(obj, index, name)
        if chain is None:
            continue
        value = chain[-1][0][chain[-1][1]]
        if accepts(value):
            sources[field] = path_of(chain)
            remove(chain)
            return value
    return None


def find(obj: dict, index: dict, name: Name) -> list[tuple[dict, str]] | None:
    """Where `name` is in the line: the (object, key) of each step down to its value. A top-level
    key is looked up exactly, then without regard to letter case (`index`: lower-case key ->
    key); a dotted name also as nested objects, the longest dotted key first."""
    if name.simple:
        key = index.get(name.key)  # the common case: absent, one look-up
        if key is None:
            return None
        if name.key in obj:
            key = name.key
        return [(obj, key)] if key in obj else None
    for head in name.heads:
        if head in index:
            return locate(obj, name.segments, index)
    return None


def locate(obj: dict, segments: tuple[str, ...], index: dict | None = None):
    for end in range(len(segments), 0, -1):
        wanted = ".".join(segments[:end])
        key = key_in(obj, wanted, index)
        if key is None:
            continue
        if end == len(segments):
            return [(obj, key)]
        inner = obj[key]
        if type(inner) is dict:
            rest = locate(inner, segments[end:])
            if rest is not None:
                return [(obj, key), *rest]
    return None


def key_in(obj: dict, wanted: str, index: dict | None) -> str | None:
    """The key of `obj` that is `wanted` in lower case (the line's own spelling), or None."""
    if wanted in obj:
        return wanted
    if index is not None:
        key = index.get(wanted)
        return key if key is not None and key in obj else None
    for key in obj:  # a nested object: small, and reached only through a dotted name
        if type(key) is str and key.lower() == wanted:
            return key
    return None


def remove(chain: list[tuple[dict, str]]) -> None:
    """Take the value out of the line, and any object it leaves empty."""
    holder, key = chain[-1]
    del holder[key]
    for (parent, parent_key), (child, _) in zip(
        reversed(chain[:-1]), reversed(chain[1:]), strict=True
    ):
        if child:
            break
        del parent[parent_key]


def short(value) -> str:
    """A value for a reason, cut short before it is written out whole (reprlib)."""
    return SHORT.repr(value)


def path_of(chain: list[tuple[dict, str]]) -> str:
    return ".".join(key for _, key in chain)


def is_text(value) -> bool:
    return type(value) is str


def is_name(value) -> bool:
    return type(value) is str and value != ""


def is_level(value) -> bool:
    return type(value) is str or type(value) is int


def is_time(value) -> bool:
    if type(value) is str:
        return value != ""
    if type(value) in (int, float):
        return True
    return type(value) is dict and any(s in value for s, _ in SECOND_PARTS)


def level_of(value, where: str) -> str:
    """The canonical level of a level value: a level word, else Datadog's prefix rules; a
    syslog severity 0-7 (a number, or its digit)."""
    if type(value) is str and not (len(value) == 1 and "0" <= value <= "9"):
        word = value.strip().lower()
        if word not in LEVEL_WORDS and (slog := formats.SLOG_LEVEL.fullmatch(word)):
            word = slog[1]  # "INFO+2": Go's slog, between info and warning
        level = LEVEL_WORDS.get(word)
        if level is None:
            level = next((to for prefixes, to in LEVEL_PREFIXES if word.startswith(prefixes)), None)
        if level is None:
            raise ValueError(f"{where}: unknown level {value!r}")
        return level
    number = int(value)
    if not 0 <= number <= 7:
        raise ValueError(
            f"{where}: {value!r} is not a syslog severity (0-7); other numbers "
            "mean different levels in different libraries (30 is info to pino, "
            "warning to Python): upload with the library's format, or a custom one"
        )
    return SYSLOG_SEVERITIES[number]


def time_text(value, where: str, epoch_text: formats.EpochText) -> str:
    """A time value as RFC 3339 text (the schema checks what could not be read)."""
    if type(value) is dict:
        return two_part_time(value, where, epoch_text)
    if type(value) is str:
        if not NUMBER.fullmatch(value):
            return date_text(value)
        value = float(value) if "." in value else int(value)
    unit = next((u for limit, u in EPOCH_UNITS if abs(value) < limit), "ns")
    return formats.time_text(value, unit, where, epoch_text)


def two_part_time(value: dict, where: str, epoch_text: formats.EpochText) -> str:
    for seconds_key, nanos_key in SECOND_PARTS:
        if seconds_key in value:
            seconds, nanos = value[seconds_key], value.get(nanos_key, 0)
            if type(seconds) is str and seconds.isdigit():  # protobuf JSON writes int64 as text
                seconds = int(seconds)
            if type(seconds) is int and type(nanos) is int:
                return formats.time_text(
                    seconds * 1_000_000 + nanos // 1000, "us", where, epoch_text
                )
    raise ValueError(
        f"{where}: {short(value)} is not a time: seconds and nanoseconds must be whole numbers"
    )


def date_text(text: str, now: dt.datetime | None = None) -> str:
    """A date-time string as RFC 3339 when it can be read (no offset: UTC); else unchanged."""
    if formats.RFC3339.fullmatch(text):
        return text
    if syslog := RFC3164.fullmatch(text):
        month, day, clock = syslog.groups()
        return rfc3164_time(month, day, clock, now or dt.datetime.now(dt.timezone.utc)) or text
    if RFC2822.match(text):
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return text
        return (moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)).isoformat()
    return formats.normalised_time(text, naive_is_utc=True)


def rfc3164_time(month: str, day: str, clock: str, now: dt.datetime) -> str | None:
    """An RFC 3164 (BSD syslog) time, which has no year and no zone: UTC, in this year unless
    that is more than a day ahead of `now` (then last year), as syslog receivers read it."""
    if month not in MONTHS:
        return None
    try:
        moment = dt.datetime.fromisoformat(
            f"{now.year:04d}-{MONTHS[month]:02d}-{int(day):02d}T{clock}+00:00"
        )
        if moment > now + dt.timedelta(days=1):
            moment = moment.replace(year=now.year - 1)
    except ValueError:  # 30 Feb, or 29 Feb outside a leap year
        return None
    return moment.isoformat()


def recognition_table() -> str:
    """The recognition table of docs/formats.md (Markdown), written from SYNONYMS."""
    rows = [
        "| Field | Names tried, in order (any letter case; dotted: nested or a dotted key) |",
        "|---|---|",
    ]
    for field, names in SYNONYMS.items():
        rows.append(f"| `{field}` | {', '.join(f'`{n}`' for n in names)} |")
    return "\n".join(rows)
