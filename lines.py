"""One line of an uploaded file: read, parse, validate, made into the rows the worker stores.

Pure logic, no I/O but the byte stream handed to `read_lines`: what a line means is decided
here, and tested without any service (`tests/test_lines.py`); `worker.py` consumes messages and
commits. `read_lines` splits a stream into lines in bounded memory, `add_line` puts one line's
result into a `LineBatch` (a log entry, or a line error with its reason).
"""

from __future__ import annotations

import codecs
import dataclasses
import datetime as dt
import functools
import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import jsonschema_rs
import orjson

import core
import formats

MAX_LINE_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024
MAX_REASON_CHARS = 500
# Paths (keys holding a value, nested ones counted) one line's context may have: ClickHouse's
# JSON type keeps files per path, and a few lines with tens of thousands each make an insert
# fail for everyone's events (EH_MAX_CONTEXT_PATHS; the default here).
MAX_CONTEXT_PATHS = 1000
NOT_UTF8 = "not valid UTF-8"
TOO_DEEP = "JSON nested too deeply (arrays or objects about a thousand levels deep)"
# An escape for NUL or for a surrogate (\ud800-\udfff): found in a line, its strings are
# checked (check_storable_strings).
SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
# The last dot (or escaped dot) of a key: found in a line, its context is checked
# (check_json_paths). A dot followed by plain characters, then a quote and a colon, can only be
# in a key; a dot followed by an escape might be, so it counts too (json.dumps escapes every
# non-ASCII character). Linear in the line's length: the possessive run stops at the next dot.
# The escaped dot is looked for only in lines with an escape at all (parse_entry): with a
# plain dot first, the pattern costs half as much on every line.
DOTTED_KEY = re.compile(rb'\.[^".\\]*+(?:\\|"\s*:)')
ESCAPED_DOTTED_KEY = re.compile(rb'\\u002[eE][^".\\]*+(?:\\|"\s*:)')
# Twenty digits in a row: maybe an integer past 64 bits, which orjson would make a float and
# the json module keeps exact (load_line). Looked for in a copy of the line with each digit
# made "0" and every other byte "x": ten times as fast as the regular expression \d{20}.
DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x78 for b in range(256))
LONG_NUMBER = b"0" * 20
KNOWN_FIELDS = frozenset(
    {"timestamp", "level", "service", "event_type", "message", "environment", "context"}
)
# What event_log.event_date_time (ClickHouse DateTime) holds; a line outside it is refused here
# rather than accepted and then refused by ClickHouse.
TIMESTAMP_MIN = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
TIMESTAMP_MAX = dt.datetime(2106, 2, 7, 6, 28, 15, tzinfo=dt.timezone.utc)


@dataclasses.dataclass
class LineBatch:
    """Results of consecutive lines not yet committed, and where the file stands after them."""

    entries: list[tuple] = dataclasses.field(default_factory=list)
    errors: list[tuple] = dataclasses.field(default_factory=list)
    formats: dict[str, int] = dataclasses.field(default_factory=dict)  # valid lines per format
    lines: int = 0
    bytes: int = 0


def read_lines(
    stream, max_line_bytes: int = MAX_LINE_BYTES, chunk_size: int = READ_CHUNK_BYTES
) -> Iterator[tuple[bytes | None, int, int]]:
    """Yield (line, size, lines) for the physical lines of a byte stream, in bounded memory.

    `lines` is 1 but for a run of empty lines (newlines only), yielded at once as
    (b"", n, n): a file of a GiB of newlines is a few thousand steps, not a billion. `size`
    counts the bytes including the newlines, so the caller can keep a byte offset. A line
    longer than `max_line_bytes` is yielded as None and never held whole.
    """
    pending = bytearray()
    pending_size = 0
    too_long = False
    while chunk := stream.read(chunk_size):
        start = 0
        while (nl := chunk.find(b"\n", start)) >= 0:
            if nl == start and not pending_size:
                run = NEWLINES.match(chunk, start).end() - start  # type: ignore[union-attr]
                if run > 1:
                    yield b"", run, run
                    start += run
                    continue
            size = pending_size + nl - start + 1
            if too_long or size - 1 > max_line_bytes:
                yield None, size, 1
            elif pending:
                yield bytes(pending) + chunk[start:nl], size, 1
            else:
                yield chunk[start:nl], size, 1
            pending.clear()
            pending_size = 0
            too_long = False
            start = nl + 1
        rest = len(chunk) - start
        if rest:
            pending_size += rest
            if pending_size > max_line_bytes:
                too_long = True
                pending.clear()
            elif not too_long:
                pending += chunk[start:]
    if pending_size:
        yield (None if too_long else bytes(pending)), pending_size, 1


NEWLINES = re.compile(rb"\n+")


def add_line(
    batch: LineBatch,
    job_id: uuid.UUID,
    line_no: int,
    raw: bytes | None,
    validator,
    mapping: Mapping | None = None,
    max_context_paths: int = MAX_CONTEXT_PATHS,
) -> None:
    """Validate one line and put its result (a log entry, or an error) in the batch.

    This runs for every line of every file, so the entry is a ready COPY row, its context
    serialised once. Its event is not built here: the batch's outbox row names its line range,
    and the relay builds the events from the entries (docs/design.md). `mapping` is the job's
    log format (see parse_line); `max_context_paths` EH_MAX_CONTEXT_PATHS.
    """
    if raw is None:
        batch.errors.append((job_id, line_no, f"line too long (over {MAX_LINE_BYTES} bytes)"))
        return
    if line_no == 1 and raw.startswith(codecs.BOM_UTF8):  # as Windows tools write it
        raw = raw[len(codecs.BOM_UTF8) :]
    if not raw or raw.isspace():  # blank lines are skipped (isspace copies nothing)
        return
    try:
        entry = parse_entry(raw, validator, mapping, max_context_paths)
    except InvalidLine as exc:
        batch.errors.append((job_id, line_no, str(exc)))
        return
    except RecursionError:  # from json.loads, json.dumps or the walks over the value
        batch.errors.append((job_id, line_no, TOO_DEEP))
        return
    name = entry[0]
    batch.formats[name] = batch.formats.get(name, 0) + 1
    batch.entries.append((job_id, line_no) + entry[2:])


class InvalidLine(Exception):
    """A line that is not a valid log entry; the message is the reason shown to the user."""

    def __init__(self, reason: str):
        super().__init__(reason[:MAX_REASON_CHARS])


# A job's log format, compiled once (mappings.compile_format): called with each decoded line, it
# returns (format name, canonical entry, source path of each field, or None for a canonical
# line), or raises ValueError with the reason.
Mapping = Callable[[Any], tuple[str, dict[str, Any], "dict[str, str] | None"]]


def parse_line(
    raw: bytes,
    validator,
    mapping: Mapping | None = None,
    max_context_paths: int = MAX_CONTEXT_PATHS,
) -> dict[str, Any]:
    """One log entry from one line of bytes, normalised; InvalidLine says why not.

    Without a mapping the line must be a canonical entry. With one, the line is mapped first
    and the mapped entry goes through every check a canonical line does; reasons then name
    the format and the line's own field (`pino: time: …`)."""
    (name, context, timestamp, level, service, event_type, environment, message, context_json) = (
        parse_entry(raw, validator, mapping, max_context_paths)
    )
    return {
        "timestamp": timestamp,
        "level": level,
        "service": service,
        "event_type": event_type,
        "environment": environment,
        "message": message,
        "context": context,
        "context_json": context_json,
        "format": name,
    }


def parse_entry(
    raw: bytes,
    validator,
    mapping: Mapping | None = None,
    max_context_paths: int = MAX_CONTEXT_PATHS,
) -> tuple:
    """parse_line's work, as the tuple add_line copies from: (format name, context, then the
    COPY row's columns after job_id and line_no: timestamp, level, service, event_type,
    environment, message, context as JSON text). It runs for every line of every file: no
    dict is built for the entry, and the checks that walk the value run only for lines whose
    bytes may need them."""
    obj, by_orjson = load_line(raw)
    name, sources = formats.CANONICAL, None
    if mapping is not None:
        try:
            name, obj, sources = mapping(obj)
        except ValueError as exc:  # the mapping's reason names the format and the field
            raise InvalidLine(str(exc)) from None
    if not validator.is_valid(obj):
        raise InvalidLine(schema_error_reason(validator, obj, name, sources))
    escapes = b"\\u" in raw
    if escapes and SUSPECT_ESCAPE.search(raw):
        check_storable_strings(obj)
    try:
        # RFC 3339 allows a lower-case t and z; Python 3.11's fromisoformat does not.
        timestamp = dt.datetime.fromisoformat(obj["timestamp"].upper())
    except ValueError as exc:
        raise InvalidLine(
            f"{where('timestamp', name, sources)}: not a valid date-time ({exc})"
        ) from None
    if not TIMESTAMP_MIN <= timestamp <= TIMESTAMP_MAX:
        raise InvalidLine(
            f"{where('timestamp', name, sources)}: {obj['timestamp']!r} is "
            "outside the range event_log holds (1970-01-01T00:00:00Z to "
            "2106-02-07T06:28:15Z)"
        )
    context = obj.get("context", {})
    if not obj.keys() <= KNOWN_FIELDS:
        extra = {k: v for k, v in obj.items() if k not in KNOWN_FIELDS}
        context = {**context, free_key(context, "extra"): extra}
    if DOTTED_KEY.search(raw) or (escapes and ESCAPED_DOTTED_KEY.search(raw)):
        check_json_paths(context)
    # A path is a key of the line's text ('"":0' at least: 4 bytes) and every key is followed
    # by a colon: shorter lines, or lines with fewer colons, cannot have more paths.
    if len(raw) > 4 * max_context_paths and raw.count(b":") > max_context_paths:
        check_context_paths(context, max_context_paths)
    return (
        name,
        context,
        timestamp,
        obj["level"].lower(),
        obj["service"],
        obj["event_type"],
        obj.get("environment", "production"),
        obj["message"],
        dump_context(context, by_orjson),
    )


def load_line(raw: bytes) -> tuple[Any, bool]:
    """The JSON value of a line, and whether orjson read it. orjson is three times as fast as
    the json module and agrees with it on every line it takes, but for an integer past 64 bits
    (a float to orjson: a line with twenty digits in a row is left to json, which keeps it
    exact). What orjson refuses goes to json too, which says why in the words users have
    always seen, or takes it (NaN, an unpaired surrogate: refused later, with their reasons)."""
    if LONG_NUMBER not in raw.translate(DIGITS_AS_ZERO):
        try:
            return orjson.loads(raw), True
        except orjson.JSONDecodeError:
            pass
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidLine(f"{NOT_UTF8} (byte {exc.start})") from None
    try:
        return json.loads(text), False
    except json.JSONDecodeError as exc:
        raise InvalidLine(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise InvalidLine(f"invalid JSON: {exc}") from None


def dump_context(context: dict, by_orjson: bool) -> str:
    """The context as JSON text. orjson writes what orjson read (it holds no NaN and no
    integer past 64 bits), unless it is nested deeper than orjson writes (254 levels); json
    writes the rest, refusing NaN and Infinity."""
    if by_orjson:
        try:
            return orjson.dumps(context).decode()
        except orjson.JSONEncodeError:
            pass
    try:
        return json.dumps(context, allow_nan=False)
    except ValueError:
        raise InvalidLine(
            "a number is NaN, Infinity or too large for a 64-bit float; JSON "
            "has no such values and the database cannot store them"
        ) from None


def where(field: str, name: str, sources: dict[str, str] | None) -> str:
    """Where a field of the entry came from, for a reason: `$.timestamp` in a canonical line,
    `pino: time` in a mapped one."""
    if sources is None:
        return f"$.{field}"
    return f"{name}: {sources.get(field, field)}"


def check_storable_strings(obj) -> None:
    """Refuse what JSON can escape but Postgres cannot store: a NUL character (\\u0000) or
    an unpaired surrogate (\\ud800) in any string, key or value. Only called for lines whose
    text holds such an escape (SUSPECT_ESCAPE), so ordinary lines never pay for the walk."""
    for text in strings_in(obj):
        if "\x00" in text:
            raise InvalidLine(
                "a string holds a NUL character (\\u0000), which the database cannot store"
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidLine(
                "a string holds an unpaired surrogate (such as \\ud800), which "
                "is not a Unicode character"
            ) from None


def check_context_paths(context: dict, limit: int) -> None:
    """Refuse a context with more than `limit` paths: keys holding anything but an object
    (nested keys counted, and those of objects in arrays). Stops counting past the limit, so
    it costs at most the line's size; only lines long enough and with more colons than
    `limit` are walked."""
    paths, objects = 0, [context]
    while objects:
        for item in objects.pop().values():
            if isinstance(item, dict):
                objects.append(item)  # its own keys are the paths
                continue
            if isinstance(item, list):
                objects.extend(objects_in_array(item))
            paths += 1
            if paths > limit:
                raise InvalidLine(
                    f"$.context: more than {limit} paths (keys holding a value, "
                    "nested keys counted); the event store takes at most that "
                    "many per line (EH_MAX_CONTEXT_PATHS)"
                )


def check_json_paths(context: dict) -> None:
    """Refuse a context in which two keys name the same path for ClickHouse's JSON type,
    which reads a dotted key as nested objects: {"a.b": 1, "a": {"b": 2}} names a.b twice,
    and event_log would refuse the event. A null or an empty object names no path; each
    object inside an array is a JSON value of its own, checked on its own.

    The paths go into a trie of their segments, so the check costs time and memory in
    proportion to the line, however long its keys (iteratively, however deep)."""
    objects = [context]
    while objects:
        taken: dict = {}  # segment -> subtrie; LEAF marks a value at that path
        pending: list[tuple[dict, dict, tuple]] = [(objects.pop(), taken, ())]
        while pending:
            value, trie, path = pending.pop()
            for key, item in value.items():
                node = trie
                for segment in key.split("."):
                    node = node.setdefault(segment, {})
                if isinstance(item, dict):
                    pending.append((item, node, (path, key)))
                    continue
                if item is None:
                    continue
                if LEAF in node:
                    raise InvalidLine(
                        f"$.context: two keys name the path {dotted(path, key)!r} (a dotted key "
                        'such as "a.b" means the same as "a": {"b": …}); the event '
                        "store cannot hold both"
                    )
                node[LEAF] = True
                if isinstance(item, list):
                    objects.extend(objects_in_array(item))


LEAF = object()  # a trie key no JSON key can equal


def dotted(path: tuple, key: str) -> str:
    """The dotted path of `key` under `path` ((…((), k1), k2)…), built only for a message."""
    keys = [key]
    while path:
        path, parent = path
        keys.append(parent)
    return ".".join(reversed(keys))


def objects_in_array(items: list) -> Iterator[dict]:
    """The objects in an array, at any depth of nested arrays."""
    arrays = [items]
    while arrays:
        for item in arrays.pop():
            if isinstance(item, dict):
                yield item
            elif isinstance(item, list):
                arrays.append(item)


def free_key(mapping: dict, key: str) -> str:
    """`key`, or `_key`, `__key`, … : the first that `mapping` does not have."""
    while key in mapping:
        key = f"_{key}"
    return key


def strings_in(obj) -> Iterator[str]:
    """Every string in a decoded JSON value: keys and values, at any depth (iteratively: a
    recursive generator would cost time in proportion to the depth for every string)."""
    pending = [obj]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            yield from value.keys()
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def schema_error_reason(
    validator, obj, name: str = formats.CANONICAL, sources: dict[str, str] | None = None
) -> str:
    """The most relevant schema error, put for a person: a pattern is explained by the
    property's description rather than shown as a regular expression. In a mapped entry the
    error is placed at the line's own field (`zap: logger: …`), not the entry's."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if sources is None or not error.path:
        path = error.json_path if sources is None else name
    else:
        path = where(str(error.path[0]), name, sources)
        if len(error.path) > 1:
            path += "".join(f"[{key!r}]" for key in list(error.path)[1:])
    if error.validator == "pattern" and "description" in error.schema:
        return f"{path}: {error.instance!r} is not valid: {error.schema['description']}"
    return f"{path}: {error.message}"


@functools.cache
def log_entry_validator() -> EntryValidator:
    """The compiled LogEntry validator (built once per process)."""
    return EntryValidator(json.loads(core.LOG_ENTRY_SCHEMA_PATH.read_text()))


class EntryValidator:
    """The one schema, compiled twice: jsonschema-rs decides whether a line is valid (about 50
    times faster: validation was most of the worker's time), and python-jsonschema says why
    one is not, so the reasons users see are the ones they always were. A line only the
    first refuses is judged by the second as well: the reason can never be missing, and a
    line is refused only when python-jsonschema refuses it too
    (tests/test_lines.py compares the two verdicts on every kind of bad line)."""

    def __init__(self, schema: dict):
        self.fast = jsonschema_rs.validator_for(schema)
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        self.explainer = cls(schema)

    def is_valid(self, obj) -> bool:
        return self.fast.is_valid(obj) or self.explainer.is_valid(obj)

    def iter_errors(self, obj):
        return self.explainer.iter_errors(obj)
