"""Writes examples/sample.jsonl: realistic log lines with some invalid and blank ones mixed in.

usage: python examples/make_sample.py [--out PATH] [--valid N] [--seed S]

Deterministic (seeded). After writing, every line is checked the way the worker checks it
(JSON object, log_entry.schema.json with Draft 2020-12, then datetime.fromisoformat on the
timestamp) and the counts are printed; the script fails if they are not what it meant.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "log_entry.schema.json"
START = dt.datetime(2026, 11, 20, 8, 0, 0, tzinfo=dt.timezone.utc)

LEVELS = ["debug", "info", "warning", "error", "critical"]
LEVEL_WEIGHTS = [12, 60, 15, 10, 3]

# service -> [(event_type, level bias, message template)]
EVENTS = {
    "checkout": [
        ("cart.viewed", "info", "cart viewed with {items} items"),
        ("order.placed", "info", "order {order_id} placed, total {amount} {currency}"),
        ("order.failed", "error", "order {order_id} failed: payment declined"),
        ("coupon.rejected", "warning", "coupon {coupon} rejected: expired"),
    ],
    "auth": [
        ("login.succeeded", "info", "user {user_id} logged in"),
        ("login.failed", "warning", "login failed for {email}: bad password"),
        ("token.refreshed", "debug", "access token refreshed for user {user_id}"),
        ("account.locked", "error", "account {user_id} locked after 5 failed attempts"),
    ],
    "search": [
        ("query.executed", "info", "query \u201c{query}\u201d returned {hits} hits in {ms} ms"),
        ("query.slow", "warning", "slow query \u201c{query}\u201d took {ms} ms"),
        ("index.refreshed", "debug", "index products refreshed ({docs} docs)"),
    ],
    "payments": [
        ("charge.created", "info", "charge {charge_id} of {amount} {currency} created"),
        ("charge.declined", "warning", "charge {charge_id} declined by issuer"),
        ("webhook.failed", "error", "webhook delivery to provider failed: timeout after {ms} ms"),
        ("ledger.mismatch", "critical", "ledger mismatch on charge {charge_id}"),
    ],
    "inventory": [
        ("stock.reserved", "info", "reserved {qty} x {sku}"),
        ("stock.low", "warning", "stock low for {sku}: {qty} left"),
        ("sync.completed", "debug", "warehouse sync completed in {ms} ms"),
    ],
}
SERVICE_WEIGHTS = {"checkout": 25, "auth": 20, "search": 25, "payments": 18, "inventory": 12}

QUERIES = [
    "running shoes",
    "caf\u00e9 cups",
    "usb-c cable",
    "M\u00fcnchen guide",
    "desk lamp",
    "winter jacket",
    "\u65e5\u672c\u8336",
    "yoga mat",
]
HOSTS = ["web-1", "web-2", "worker-a", "ip-10-0-3-17"]
PATHS = {
    "checkout": "/api/cart",
    "auth": "/api/login",
    "search": "/api/search",
    "payments": "/api/charges",
    "inventory": "/api/stock",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "sample.jsonl")
    parser.add_argument("--valid", type=int, default=280, help="valid lines to write")
    parser.add_argument("--seed", type=int, default=20261123)
    args = parser.parse_args(argv)

    lines, expected = build_lines(random.Random(args.seed), args.valid)
    args.out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    counts = check(args.out)
    print(
        f"{args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}: "
        f"{counts['physical']} physical lines, {counts['blank']} blank, "
        f"{counts['valid']} valid, {counts['invalid']} invalid"
    )
    if counts != expected:
        print(f"error: expected {expected}, got {counts}", file=sys.stderr)
        return 1
    return 0


def build_lines(rng: random.Random, n_valid: int) -> tuple[list[str], dict[str, int]]:
    """The file's lines (without newlines) and the counts they are meant to have."""
    valid = [json.dumps(entry, ensure_ascii=False) for entry in valid_entries(rng, n_valid)]
    invalid = invalid_lines()
    lines = list(valid)
    # Invalid and blank lines anywhere but first (the first line is a valid object) and
    # last (so the file ends with a real line).
    for line in invalid + [""] * 4:
        lines.insert(rng.randrange(1, len(lines)), line)
    expected = {"physical": len(lines), "blank": 4, "valid": len(valid), "invalid": len(invalid)}
    return lines, expected


def valid_entries(rng: random.Random, n: int):
    when = START
    services = list(SERVICE_WEIGHTS)
    weights = list(SERVICE_WEIGHTS.values())
    for i in range(n):
        when += dt.timedelta(milliseconds=rng.randint(50, 90_000))
        service = rng.choices(services, weights)[0]
        event_type, bias, template = rng.choice(EVENTS[service])
        level = bias if rng.random() < 0.7 else rng.choices(LEVELS, LEVEL_WEIGHTS)[0]
        if rng.random() < 0.15:  # some producers shout
            level = level.upper()
        elif rng.random() < 0.03:
            level = level.capitalize()
        fields = {
            "items": rng.randint(1, 9),
            "order_id": f"ord_{rng.randrange(16**8):08x}",
            "amount": f"{rng.randint(3, 900)}.{rng.randint(0, 99):02d}",
            "currency": rng.choice(["EUR", "USD", "GBP"]),
            "coupon": rng.choice(["WINTER10", "VIP20"]),
            "user_id": rng.randint(1000, 99999),
            "email": f"user{rng.randint(1, 500)}@example.com",
            "query": rng.choice(QUERIES),
            "hits": rng.randint(0, 4000),
            "ms": rng.randint(3, 9000),
            "docs": rng.randint(10_000, 90_000),
            "charge_id": f"ch_{rng.randrange(16**10):010x}",
            "sku": f"SKU-{rng.randint(100, 999)}",
            "qty": rng.randint(0, 40),
        }
        entry: dict = {
            "timestamp": timestamp(rng, when),
            "level": level,
            "service": service,
            "event_type": event_type,
            "message": template.format(**fields),
        }
        if rng.random() < 0.6:
            entry["environment"] = rng.choices(["production", "staging"], [3, 1])[0]
        if rng.random() < 0.8:
            entry["context"] = context(rng, service, fields)
        if rng.random() < 0.3:
            entry["request_id"] = f"req-{rng.randrange(16**12):012x}"
        if rng.random() < 0.15:
            entry["host"] = rng.choice(HOSTS)
        if rng.random() < 0.05:
            entry["trace"] = {"trace_id": f"{rng.randrange(16**32):032x}", "sampled": True}
        if i == 0:  # the first line shows every feature
            entry.setdefault("environment", "production")
            entry.setdefault("context", context(rng, service, fields))
            entry.setdefault("request_id", "req-000000000001")
        yield entry


def timestamp(rng: random.Random, when: dt.datetime) -> str:
    """RFC 3339 in the shapes producers use: Z, +00:00, a local offset, with or without ms."""
    style = rng.random()
    if style < 0.55:
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    if style < 0.75:
        return when.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    if style < 0.9:
        return when.isoformat()  # +00:00 with microseconds
    return when.astimezone(dt.timezone(dt.timedelta(hours=1))).isoformat(timespec="milliseconds")


def context(rng: random.Random, service: str, fields: dict) -> dict:
    ctx: dict = {
        "http": {
            "method": "POST" if service in ("checkout", "payments") else "GET",
            "path": PATHS[service],
            "status": rng.choice([200, 200, 201, 400, 502]),
            "duration_ms": round(rng.uniform(1, 1500), 1),
        }
    }
    if service in ("checkout", "payments"):
        ctx["order"] = {
            "id": fields["order_id"],
            "total": {"amount": fields["amount"], "currency": fields["currency"]},
            "items": [
                {"sku": f"SKU-{rng.randint(100, 999)}", "qty": rng.randint(1, 3)}
                for _ in range(rng.randint(1, 3))
            ],
        }
    if service in ("auth", "checkout") or rng.random() < 0.3:
        ctx["user"] = {
            "id": fields["user_id"],
            "tier": rng.choice(["free", "plus", "pro"]),
            "geo": {"country": rng.choice(["DE", "FR", "US", "JP"])},
        }
    if service == "search":
        ctx["search"] = {"query": fields["query"], "hits": fields["hits"], "filters": []}
    return ctx


def invalid_lines() -> list[str]:
    """One line per way to be wrong; each must be rejected by the worker."""
    ok = {
        "timestamp": "2026-11-20T09:15:00Z",
        "level": "info",
        "service": "checkout",
        "event_type": "cart.viewed",
        "message": "cart viewed",
    }

    def with_(**changes):
        entry = {**ok, **changes}
        return json.dumps({k: v for k, v in entry.items() if v is not _DROP})

    return [
        '{"timestamp": "2026-11-20T09:15:00Z", "level": "info", "service": "checkout", "event_t',
        '{"timestamp": "2026-11-20T09:16:00Z", "level": "info", "service": "auth", '
        '"event_type": "login.succeeded", "message": "ok",}',
        "{'timestamp': '2026-11-20T09:17:00Z', 'level': 'info', 'service': 'search'}",
        "2026-11-20 09:18:00 ERROR payments webhook timeout",
        with_(message=_DROP),
        with_(service=_DROP),
        with_(timestamp=_DROP),
        with_(level="verbose"),
        with_(level="warn"),
        with_(timestamp="2026-11-20T09:20:00"),  # no offset
        with_(timestamp="2026-13-02T09:21:00Z"),  # month 13: pattern ok, fromisoformat not
        with_(timestamp="2026-11-20T25:61:00+01:00"),  # hour 25
        with_(timestamp=1795425660),  # epoch seconds, not a string
        json.dumps([ok]),  # an array, not an object
        with_(service=""),
        with_(context="user=42 cart=3"),  # context must be an object
    ]


_DROP = object()


def check(path: Path) -> dict[str, int]:
    """Count the file's lines as the worker would classify them."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    counts = {"physical": 0, "blank": 0, "valid": 0, "invalid": 0}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        raise SystemExit(f"error: {path} does not end with a newline")
    for raw in data.split(b"\n")[:-1] if data else []:
        counts["physical"] += 1
        if not raw.strip():
            counts["blank"] += 1
        elif is_valid(raw, validator):
            counts["valid"] += 1
        else:
            counts["invalid"] += 1
    return counts


def is_valid(raw: bytes, validator) -> bool:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not validator.is_valid(obj):
        return False
    try:
        dt.datetime.fromisoformat(obj["timestamp"])
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
