"""The file bench/ingest.py uploads: generated log lines of five services, about 1 % invalid
(eight kinds of mistake), up to a number of lines or of bytes; the valid ones canonical
(`eventhorizon`), as pino writes them (`pino`), or as winston's JSON does (`generic`)."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from pathlib import Path

MIB = 1024**2
INVALID_RATE = 0.01


SERVICES = {
    "checkout": ["cart.viewed", "order.placed", "order.failed"],
    "auth": ["login.succeeded", "login.failed", "token.refreshed"],
    "search": ["query.executed", "query.slow"],
    "payments": ["charge.created", "charge.declined", "webhook.failed"],
    "inventory": ["stock.reserved", "stock.low"],
}
LEVELS = ["debug", "info", "info", "info", "INFO", "warning", "error", "critical"]
LINE_FORMATS = ("eventhorizon", "pino", "generic")
PINO_LEVELS = {"debug": 20, "info": 30, "warning": 40, "error": 50, "critical": 60}
INVALID = [
    '{"timestamp": "2026-11-20T09:15:00Z", "level": "info", "service": "checkout", "event_t',
    '{"timestamp": "2026-11-20T09:15:00Z", "level": "verbose", "service": "auth", '
    '"event_type": "login.failed", "message": "bad level"}',
    '{"timestamp": "2026-11-20T09:15:00", "level": "info", "service": "auth", '
    '"event_type": "login.failed", "message": "no offset"}',
    '{"timestamp": "2026-13-20T09:15:00Z", "level": "info", "service": "auth", '
    '"event_type": "login.failed", "message": "month 13"}',
    '{"level": "info", "service": "search", "event_type": "query.executed", "message": "no ts"}',
    '{"timestamp": "2026-11-20T09:15:00Z", "level": "info", "service": "", '
    '"event_type": "x", "message": "empty service"}',
    '["not", "an", "object"]',
    "plain text, not JSON",
]


def templates(rng: random.Random, n: int = 2000, line_format: str = "eventhorizon") -> list[str]:
    """Line bodies after the timestamp: `, "level": ..., ...}` (valid entries)."""
    out = []
    for _ in range(n):
        service = rng.choice(list(SERVICES))
        entry = {
            "level": rng.choice(LEVELS),
            "service": service,
            "event_type": rng.choice(SERVICES[service]),
            "message": f"{service} did something for user {rng.randint(1, 99999)} "
            f"in {rng.randint(1, 3000)} ms",
            "environment": rng.choice(["production", "production", "staging"]),
            "context": {
                "http": {
                    "method": rng.choice(["GET", "POST"]),
                    "status": rng.choice([200, 201, 400, 404, 500]),
                },
                "user": {"id": rng.randint(1, 99999), "tier": rng.choice(["free", "pro"])},
            },
        }
        if rng.random() < 0.3:
            entry["request_id"] = uuid.UUID(int=rng.getrandbits(128)).hex
        if line_format == "pino":
            entry = as_pino(entry)
        elif line_format == "generic":
            entry = as_generic(entry)
        out.append(", " + json.dumps(entry, ensure_ascii=False)[1:])
    return out


def as_pino(entry: dict) -> dict:
    """The same entry as pino writes it (the time goes first, in generate): the fields pino
    has, the rest at the top level as a child logger's bindings put them."""
    pino = {
        "level": PINO_LEVELS[entry["level"].lower()],
        "pid": 4242,
        "hostname": "web-1",
        "name": entry["service"],
        "msg": entry["message"],
        "event": entry["event_type"],
        "env": entry["environment"],
        **entry["context"],
    }
    if "request_id" in entry:
        pino["reqId"] = entry["request_id"]
    return pino


def as_generic(entry: dict) -> dict:
    """The same entry as winston's or zerolog's JSON writes it (no named format has its keys,
    so `auto` reads it by the generic rules): `time` first, in generate; `app`, `type`, `env`."""
    generic = {
        "level": entry["level"].lower(),
        "message": entry["message"],
        "app": entry["service"],
        "type": entry["event_type"],
        "env": entry["environment"],
        **entry["context"],
    }
    if "request_id" in entry:
        generic["request_id"] = entry["request_id"]
    return generic


def generate(
    path: Path,
    rng: random.Random,
    *,
    max_lines: int | None,
    max_bytes: int | None,
    line_format: str = "eventhorizon",
) -> dict[str, int]:
    """Write lines until `max_lines` lines or `max_bytes` bytes; the first line is valid."""
    bodies = templates(rng, line_format=line_format)
    base = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
    size = lines = valid = 0
    buf: list[str] = []
    buf_bytes = 0
    with path.open("w", encoding="utf-8", newline="\n") as f:
        while max_lines is None or lines < max_lines:
            if lines and rng.random() < INVALID_RATE:
                line = rng.choice(INVALID) + "\n"
                is_valid = False
            else:
                moment = base + dt.timedelta(milliseconds=lines * 7)
                if line_format == "pino":
                    head = '{"time": ' + str(int(moment.timestamp() * 1000))
                elif line_format == "generic":
                    head = '{"time": "' + moment.isoformat(timespec="milliseconds") + '"'
                else:
                    head = '{"timestamp": "' + moment.isoformat(timespec="milliseconds") + '"'
                line = head + rng.choice(bodies) + "\n"
                is_valid = True
            n = len(line.encode()) if not line.isascii() else len(line)
            if max_bytes is not None and size + n > max_bytes:
                break
            buf.append(line)
            buf_bytes += n
            size += n
            lines += 1
            valid += is_valid
            if buf_bytes >= 4 * MIB:
                f.write("".join(buf))
                buf.clear()
                buf_bytes = 0
        f.write("".join(buf))
    return {"size": size, "lines": lines, "valid": valid, "invalid": lines - valid}
