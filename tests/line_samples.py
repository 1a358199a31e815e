"""Lines as real loggers write them (pino, zap, Serilog's CLEF) and one line through the
parser as the worker runs it: what the parsing and format tests share."""

from __future__ import annotations

import json

import pytest

import lines
import mappings
from helpers import VALIDATOR


def parse(line, fmt: str = "auto", *, service=None, environment=None) -> dict:
    """A line (text, bytes or a value to dump) parsed with a format and the upload's defaults."""
    raw = (
        line
        if isinstance(line, bytes)
        else (line.encode() if isinstance(line, str) else json.dumps(line).encode())
    )
    return lines.parse_line(raw, VALIDATOR, mappings.compile_format(fmt, service, environment))


def refused(line, fmt: str = "auto") -> str:
    with pytest.raises(lines.InvalidLine) as info:
        parse(line, fmt)
    return str(info.value)


def mapped(entry: dict) -> dict:
    """The canonical fields of a parsed entry, timestamp as text."""
    return {
        "timestamp": entry["timestamp"].isoformat(),
        "level": entry["level"],
        "service": entry["service"],
        "event_type": entry["event_type"],
        "message": entry["message"],
        "environment": entry["environment"],
        "format": entry["format"],
    }


def entry_of(line, fmt: str = "auto", **defaults) -> dict:
    """The canonical fields of a parsed line, and its context."""
    entry = parse(line, fmt, **defaults)
    return {**mapped(entry), "context": entry["context"]}


# pino's README (one line per call of `logger.info('hello world')`, then a child logger).
PINO = [
    '{"level":30,"time":1531171074631,"msg":"hello world","pid":657,'
    '"hostname":"Davids-MBP-3.fritz.box"}',
    '{"level":30,"time":1531171082399,"msg":"hello child!","pid":657,'
    '"hostname":"Davids-MBP-3.fritz.box","a":"property"}',
]


# zap's production logger (zap.NewProduction()), as zap's global-logger example prints it.
ZAP = [
    '{"level":"info","ts":1525303480.993161,"caller":"globallogger/main.go:22",'
    '"msg":"An info message","iteration":1}',
    '{"level":"warn","ts":1525303481.5,"logger":"http.log.access","caller":"caddy/main.go:7",'
    '"msg":"slow request","url":"http://example.com","attempt":3,"backoff":1}',
]


def leaves(value, path: str = "") -> dict:
    if isinstance(value, dict):
        return {
            k: v
            for key, item in value.items()
            for k, v in leaves(item, f"{path}.{key}" if path else key).items()
        }
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in leaves(item, path).items()}
    return {path: value}


# Serilog's compact JSON (CLEF, https://github.com/serilog/serilog-formatting-compact) as a
# custom format: `@l` is left out for Information, `@m` unless the event was rendered.
CLEF = {
    "name": "clef",
    "fields": {
        "timestamp": ["@t"],
        "level": ["@l"],
        "message": ["@m"],
        "message_template": ["@mt"],
        "event_type": ["@i"],
    },
    "defaults": {"level": "info"},
    "levels": {"verbose": "debug", "fatal": "critical"},
}
