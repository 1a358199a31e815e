"""Per-line CPU cost of reading a line under `auto`: lines.parse_line (JSON, mapping, schema) and
formats.detect alone, for a line of each kind. Not a test: run it by hand, no services needed.

    .venv/bin/python bench/formats.py            # 20,000 lines of each kind, best of 5
    .venv/bin/python bench/formats.py --lines 100000

Times are CPU time of this process (time.process_time), the best of the repeats, so other
work on the machine disturbs them little. Compare two checkouts by running each one's copy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import formats  # noqa: E402
import lines  # noqa: E402
import mappings  # noqa: E402

# One line of each kind, as the library writes it (see tests/test_formats.py and
# tests/test_generic_library_lines.py for where each comes from).
LINES = {
    "eventhorizon": '{"timestamp": "2026-11-23T10:00:00Z", "level": "INFO", "service": '
    '"checkout", "event_type": "order.created", "message": "order 42 created", '
    '"context": {"order": 42}}',
    "pino": '{"level":30,"time":1531171074631,"msg":"hello world","pid":657,"hostname":"web-1"}',
    "zap": '{"level":"info","ts":1525303480.993161,"caller":"main.go:22","logger":"http",'
    '"msg":"An info message","iteration":1}',
    "ecs": '{"@timestamp":"2020-03-20T18:11:38Z","log.level":"error","message":"charge declined",'
    '"service":{"name":"payments","environment":"staging"},"event":{"action":"charge"}}',
    "structlog": '{"event":"user.logged_in","user_id":42,"logger":"app.auth","level":"info",'
    '"timestamp":"2026-11-23T10:00:00.123456Z"}',
    "generic: zerolog": '{"time":1516134303,"level":"debug","message":"hello world"}',
    "generic: serilog": '{"@t":"2016-06-07T03:44:57.8532799Z","@mt":"Hello, {User}",'
    '"User":"nblumhardt"}',
    "generic: logstash": '{"@timestamp":"2019-11-03T10:15:30.123+01:00","@version":"1",'
    '"message":"My message","logger_name":"com.example.App",'
    '"thread_name":"main","level":"INFO","level_value":20000}',
    "generic: tracing": '{"timestamp":"2022-02-15T18:47:10.821315Z","level":"INFO","fields":'
    '{"message":"preparing to shave yaks","number_of_yaks":3},'
    '"target":"fmt_json"}',
}


def cpu_per_call(call, count: int, repeats: int) -> float:
    """The best CPU time of `count` calls, per call, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(count):
            call()
        best = min(best, time.process_time() - start)
    return best / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000, help="lines of each kind")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    validator = lines.log_entry_validator()
    mapping = mappings.compile_format(formats.AUTO)
    for kind, text in LINES.items():
        raw, obj = text.encode(), json.loads(text)
        try:
            name = lines.parse_line(raw, validator, mapping)["format"]
        except lines.InvalidLine as exc:  # an older checkout, without the generic mapping
            print(f"{kind:20s} -> refused: {str(exc)[:60]}")
            continue
        parse = cpu_per_call(
            lambda raw=raw: lines.parse_line(raw, validator, mapping), args.lines, args.repeats
        )
        detect = cpu_per_call(lambda obj=obj: formats.detect(obj), args.lines, args.repeats)
        print(
            f"{kind:20s} -> {name:13s} parse_line {parse * 1e6:6.2f} µs   "
            f"detect {detect * 1e9:5.0f} ns"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
