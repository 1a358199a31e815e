"""The built-in log formats: real lines as the libraries write them, mapped onto the canonical
entry and validated like any line; their levels and times, and which one `auto` picks. Custom
formats' definitions are test_format_definitions.py's. No services needed."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import uuid

import pytest
import pythonjsonlogger.json
import structlog

import formats
import lines
import mappings
from helpers import VALIDATOR
from line_samples import PINO, ZAP, leaves, mapped, parse, refused

# --------------------------------------------------------------------------- the libraries

# bunyan's README ("hi" and "au revoir" from `log.info(...)`, `log.warn({lang: 'fr'}, ...)`).
BUNYAN = [
    '{"name":"myapp","hostname":"banana.local","pid":40161,"level":30,"msg":"hi",'
    '"time":"2013-01-04T18:46:23.851Z","v":0}',
    '{"name":"myapp","hostname":"banana.local","pid":40161,"level":40,"lang":"fr",'
    '"msg":"au revoir","time":"2013-01-04T18:46:23.853Z","v":0}',
]
# logrus's README (JSONFormatter; the README's time is Go's time.String(); today's logrus
# writes RFC 3339, the second line).
LOGRUS = [
    '{"animal":"walrus","level":"info","msg":"A group of walrus emerges from the ocean",'
    '"size":10,"time":"2014-03-10 19:57:38.562264131 -0400 EDT"}',
    '{"level":"warning","msg":"The group\'s number increased tremendously!",'
    '"number":122,"omg":true,"time":"2014-03-10T19:57:38-04:00"}',
]
# Elastic's ecs-logging (Python) README, with service and event fields added as ECS names them.
ECS = [
    '{"@timestamp":"2020-03-20T18:11:37.895Z","log.level":"info","message":"Example message!",'
    '"ecs":{"version":"1.6.0"},"log":{"logger":"app","origin":{"file":{"line":14,'
    '"name":"test.py"},"function":"func"},"original":"Example message!"},'
    '"process":{"name":"MainProcess","pid":3044}}',
    '{"@timestamp":"2020-03-20T18:11:38.000Z","log":{"level":"ERROR","logger":"app"},'
    '"message":"charge declined","ecs.version":"1.6.0","service":{"name":"payments",'
    '"environment":"staging"},"event":{"action":"charge-declined","dataset":"payments.log"},'
    '"http.request.method":"POST"}',
]
# OpenTelemetry: the log record of opentelemetry-proto's examples/logs.json (OTLP/JSON), one
# record per line with its resource folded in, as a file exporter flattening them writes it.
OTEL = [
    '{"timeUnixNano":"1544712660300000000","observedTimeUnixNano":"1544712660300000000",'
    '"severityNumber":10,"severityText":"Information","traceId":"5B8EFFF798038103D269B633813FC60C",'
    '"spanId":"EEE19B7EC3C1B174","body":{"stringValue":"Example log record"},'
    '"attributes":[{"key":"string.attribute","value":{"stringValue":"some string"}},'
    '{"key":"boolean.attribute","value":{"boolValue":true}},'
    '{"key":"int.attribute","value":{"intValue":"10"}},'
    '{"key":"double.attribute","value":{"doubleValue":637.704}}],'
    '"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"my.service"}}]}}',
    '{"timeUnixNano":1544712661000000000,"severityText":"WARN","body":"disk almost full",'
    '"attributes":{"disk.free":0.05},"resource":{"service.name":"node-agent",'
    '"deployment.environment":"staging"}}',
]
# python-json-logger is not installed here (and not worth a dependency), so these lines are
# copied from its documentation: the README's "Example Output" (full formatter; one line, as
# the README says every message is), and JsonFormatter('%(asctime)s %(levelname)s %(name)s
# %(message)s') with asctime as Python's logging documents it ('2003-07-08 16:49:45,896').
PYTHON_JSON_LOGGER = [
    '{"threadName": "MainThread", "name": "root", "thread": 140735202359648, '
    '"created": 1336281068.506248, "process": 41937, "processName": "MainProcess", '
    '"relativeCreated": 9.100914001464844, "module": "tests", "funcName": "testFormatKeys", '
    '"levelno": 20, "msecs": 506.24799728393555, "pathname": "tests/tests.py", "lineno": 60, '
    '"asctime": ["12-05-05 22:11:08,506248"], "message": "testing logging format", '
    '"filename": "tests.py", "levelname": "INFO", "special": "value", "run": 12}',
    '{"asctime": "2003-07-08 16:49:45,896", "levelname": "WARNING", "name": "app.db", '
    '"message": "slow query", "ms": 1200}',
]


def structlog_lines() -> list[str]:
    """Lines written by structlog itself, with the processors its docs recommend for JSON."""
    out = io.StringIO()
    log = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
    )
    log.info("user.logged_in", user_id=42, logger="app.auth")
    log.warning("disk.almost_full", free_bytes=1024)
    log.bind(request_id="r-1").error("payment.failed", amount=9.5)
    return out.getvalue().splitlines()


def python_json_logger_lines() -> list[str]:
    """Lines written by python-json-logger itself, in the configurations its docs show: the
    fields named in a `%`-style or `{`-style format string, or a `timestamp` added."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("app.db")
    logger.handlers, logger.propagate = [handler], False
    for options in (
        {"fmt": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        {"fmt": "%(levelname)s %(name)s %(message)s", "timestamp": True},
        {"fmt": "{asctime}{levelname}{name}{message}", "style": "{"},
    ):
        handler.setFormatter(pythonjsonlogger.json.JsonFormatter(**options))
        logger.warning("slow query", extra={"ms": 1200})
    return out.getvalue().splitlines()


def test_pino_lines_are_mapped():
    first, second = (parse(line) for line in PINO)
    assert mapped(first) == {
        "timestamp": "2018-07-09T21:17:54.631000+00:00",
        "level": "info",
        "service": "Davids-MBP-3.fritz.box",
        "event_type": "pino.log",
        "message": "hello world",
        "environment": "production",
        "format": "pino",
    }
    assert first["context"] == {"pid": 657}
    assert second["context"] == {"pid": 657, "a": "property"}


def test_pino_service_is_its_name_then_the_uploads_then_the_hostname():
    named = json.loads(PINO[0]) | {"name": "checkout"}
    assert parse(named, service="shop")["service"] == "checkout"
    entry = parse(PINO[0], service="shop")
    assert entry["service"] == "shop"
    assert entry["context"] == {"pid": 657, "hostname": "Davids-MBP-3.fritz.box"}


def test_bunyan_lines_are_mapped():
    first, second = (parse(line) for line in BUNYAN)
    assert mapped(second) == {
        "timestamp": "2013-01-04T18:46:23.853000+00:00",
        "level": "warning",
        "service": "myapp",
        "event_type": "bunyan.log",
        "message": "au revoir",
        "environment": "production",
        "format": "bunyan",
    }
    assert first["context"] == {"hostname": "banana.local", "pid": 40161, "v": 0}
    assert second["context"]["lang"] == "fr"


def test_zap_lines_are_mapped():
    first, second = (parse(line) for line in ZAP)
    assert mapped(first) == {
        "timestamp": "2018-05-02T23:24:40.993161+00:00",
        "level": "info",
        "service": "unknown",
        "event_type": "zap.log",
        "message": "An info message",
        "environment": "production",
        "format": "zap",
    }
    assert first["context"] == {"caller": "globallogger/main.go:22", "iteration": 1}
    assert (second["level"], second["service"]) == ("warning", "http.log.access")
    assert second["context"] == {
        "caller": "caddy/main.go:7",
        "url": "http://example.com",
        "attempt": 3,
        "backoff": 1,
    }


def test_logrus_lines_are_mapped():
    first, second = (parse(line) for line in LOGRUS)
    assert mapped(first) == {
        "timestamp": "2014-03-10T19:57:38.562264-04:00",
        "level": "info",
        "service": "unknown",
        "event_type": "logrus.log",
        "message": "A group of walrus emerges from the ocean",
        "environment": "production",
        "format": "logrus",
    }
    assert first["context"] == {"animal": "walrus", "size": 10}
    assert second["level"] == "warning" and second["context"] == {"number": 122, "omg": True}


def test_structlog_lines_written_by_structlog_are_mapped():
    found = [parse(line) for line in structlog_lines()]
    assert [e["format"] for e in found] == ["structlog"] * 3
    assert [e["level"] for e in found] == ["info", "warning", "error"]
    assert [e["message"] for e in found] == ["user.logged_in", "disk.almost_full", "payment.failed"]
    assert [e["service"] for e in found] == ["app.auth", "unknown", "unknown"]
    assert found[0]["context"] == {"user_id": 42}
    assert found[2]["context"] == {"request_id": "r-1", "amount": 9.5}
    assert all(e["timestamp"].utcoffset().total_seconds() == 0 for e in found)
    assert found[1]["event_type"] == "structlog.log"


def test_ecs_lines_with_dotted_or_nested_keys_are_mapped():
    first, second = (parse(line) for line in ECS)
    assert mapped(first) == {
        "timestamp": "2020-03-20T18:11:37.895000+00:00",
        "level": "info",
        "service": "app",
        "event_type": "ecs.log",
        "message": "Example message!",
        "environment": "production",
        "format": "ecs",
    }
    assert first["context"] == {
        "ecs": {"version": "1.6.0"},
        "log": {
            "origin": {"file": {"line": 14, "name": "test.py"}, "function": "func"},
            "original": "Example message!",
        },
        "process": {"name": "MainProcess", "pid": 3044},
    }
    assert mapped(second) == {
        "timestamp": "2020-03-20T18:11:38+00:00",
        "level": "error",
        "service": "payments",
        "event_type": "charge-declined",
        "message": "charge declined",
        "environment": "staging",
        "format": "ecs",
    }
    assert second["context"] == {
        "log": {"logger": "app"},
        "ecs.version": "1.6.0",
        "event": {"dataset": "payments.log"},
        "http.request.method": "POST",
    }


def test_otel_log_records_are_mapped():
    first, second = (parse(line) for line in OTEL)
    assert mapped(first) == {
        "timestamp": "2018-12-13T14:51:00.300000+00:00",
        "level": "info",
        "service": "my.service",
        "event_type": "otel.log",
        "message": "Example log record",
        "environment": "production",
        "format": "otel",
    }
    assert first["context"]["severityText"] == "Information"
    assert first["context"]["traceId"] == "5B8EFFF798038103D269B633813FC60C"
    assert first["context"]["attributes"][3] == {
        "key": "double.attribute",
        "value": {"doubleValue": 637.704},
    }
    assert mapped(second) == {
        "timestamp": "2018-12-13T14:51:01+00:00",
        "level": "warning",
        "service": "node-agent",
        "event_type": "otel.log",
        "message": "disk almost full",
        "environment": "staging",
        "format": "otel",
    }
    assert second["context"] == {"attributes": {"disk.free": 0.05}}


def test_python_json_logger_lines_are_mapped():
    first, second = (parse(line) for line in PYTHON_JSON_LOGGER)
    assert mapped(first) == {
        "timestamp": "2012-05-06T05:11:08.506248+00:00",
        "level": "info",
        "service": "root",
        "event_type": "python-json-logger.log",
        "message": "testing logging format",
        "environment": "production",
        "format": "python-json-logger",
    }
    assert first["context"]["asctime"] == ["12-05-05 22:11:08,506248"]  # `created` was used
    assert first["context"]["special"] == "value" and first["context"]["levelno"] == 20
    assert mapped(second) == {
        "timestamp": "2003-07-08T16:49:45.896000+00:00",
        "level": "warning",
        "service": "app.db",
        "event_type": "python-json-logger.log",
        "message": "slow query",
        "environment": "production",
        "format": "python-json-logger",
    }
    assert second["context"] == {"ms": 1200}


def test_python_json_logger_lines_written_by_it_are_mapped():
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    for line in python_json_logger_lines():
        entry = parse(line)
        assert (
            entry["format"],
            entry["level"],
            entry["service"],
            entry["message"],
            entry["context"],
        ) == ("python-json-logger", "warning", "app.db", "slow query", {"ms": 1200}), line
        assert entry["timestamp"] > before  # asctime has no offset: read as UTC, not refused


@pytest.mark.parametrize(
    ("fmt", "examples"),
    [
        ("pino", PINO),
        ("bunyan", BUNYAN),
        ("zap", ZAP),
        ("logrus", LOGRUS),
        ("ecs", ECS),
        ("otel", OTEL),
        ("python-json-logger", PYTHON_JSON_LOGGER + python_json_logger_lines()),
        ("structlog", None),
    ],
)
def test_each_format_by_name_and_by_auto_gives_the_same_entry(fmt, examples):
    for line in examples or structlog_lines():
        by_name, by_auto = parse(line, fmt), parse(line)
        assert by_name == by_auto and by_name["format"] == fmt


@pytest.mark.parametrize(
    ("fmt", "examples"),
    [
        ("pino", PINO),
        ("zap", ZAP),
        ("ecs", ECS),
        ("otel", OTEL),
        ("python-json-logger", PYTHON_JSON_LOGGER),
        ("logrus", LOGRUS),
    ],
)
def test_no_field_of_a_line_is_lost(fmt, examples):
    """Every leaf of the line is in the entry: in the context as it was, or a mapped value
    (the time and the level are converted, so only their field names can be looked for)."""
    converted = {
        path.split(".")[-1]
        for f in formats.FORMATS.values()
        for path in (*(p for p, _ in f.time), *f.level)
    }
    for line in examples:
        entry = parse(line, fmt)
        kept = set(leaves(entry["context"]).items()) | {
            entry[field] for field in ("message", "service", "event_type", "environment")
        }
        for path, value in leaves(json.loads(line)).items():
            assert (path, value) in kept or value in kept or path.split(".")[-1] in converted, path


# --------------------------------------------------------------------------- levels


@pytest.mark.parametrize(
    ("number", "level"),
    [
        (10, "debug"),
        (20, "debug"),
        (30, "info"),
        (40, "warning"),
        (50, "error"),
        (60, "critical"),
    ],
)
def test_pino_level_numbers(number, level):
    assert parse({"level": number, "time": 1, "msg": "m"})["level"] == level


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("trace", "debug"),
        ("DEBUG", "debug"),
        ("Info", "info"),
        ("WARN", "warning"),
        ("warning", "warning"),
        ("error", "error"),
        ("fatal", "critical"),
        ("panic", "critical"),
        ("dpanic", "critical"),
        ("CRITICAL", "critical"),
    ],
)
def test_level_names(name, level):
    assert parse({"level": name, "ts": 1.5, "msg": "m"}, "zap")["level"] == level


@pytest.mark.parametrize(
    ("number", "level"),
    [
        (1, "debug"),
        (4, "debug"),
        (5, "debug"),
        (9, "info"),
        (12, "info"),
        (13, "warning"),
        (17, "error"),
        (21, "critical"),
        (24, "critical"),
    ],
)
def test_otel_severity_numbers(number, level):
    line = {"timeUnixNano": "1544712660300000000", "severityNumber": number, "body": "b"}
    assert parse(line)["level"] == level


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ({"level": 35, "time": 1, "msg": "m"}, "pino: level: unknown level 35"),
        ({"level": "verbose", "ts": 1.5, "msg": "m"}, "zap: level: unknown level 'verbose'"),
        (
            {"timeUnixNano": "1", "severityNumber": 0, "body": "b"},
            "otel: severityNumber: unknown level 0",
        ),
        ({"timeUnixNano": "1", "body": "b"}, "otel: no severityNumber or severityText (the level)"),
        (
            {"levelname": "LOUD", "created": 1.0, "message": "m"},
            "python-json-logger: levelname: unknown level 'LOUD'",
        ),
    ],
)
def test_unknown_levels_are_refused_naming_the_value(line, reason):
    assert refused(line) == reason


# --------------------------------------------------------------------------- times


@pytest.mark.parametrize(
    ("line", "fmt", "reason"),
    [
        (
            {"level": 30, "time": True, "msg": "m"},
            "pino",
            "pino: time: not a number of milliseconds",
        ),
        (
            {"level": 30, "time": "yesterday", "msg": "m"},
            "pino",
            "pino: time: 'yesterday' is not valid: RFC 3339",
        ),
        ({"level": "info", "ts": "soon", "msg": "m"}, "zap", "zap: ts: 'soon' is not valid"),
        ({"level": "info", "ts": [1], "msg": "m"}, "zap", "zap: ts: not a number of seconds"),
        (
            {"level": "info", "ts": 1e300, "msg": "m"},
            "zap",
            "zap: ts: 1e+300 seconds is not a time datetime can hold",
        ),
        (
            {"level": 30, "time": -5, "msg": "m"},
            "pino",
            "pino: time: '1969-12-31T23:59:59.995000+00:00' is outside the range",
        ),
        (
            {"level": "info", "time": 1700000000, "msg": "m"},
            "logrus",
            "logrus: time: not a date-time string",
        ),
        (
            {"level": "info", "time": "2026-11-23T10:00:00", "msg": "m"},
            "logrus",
            "logrus: time: '2026-11-23T10:00:00' is not valid: RFC 3339",
        ),
        ({"level": "info", "msg": "m"}, "logrus", "logrus: no time (the timestamp)"),
        (
            {"severityNumber": 9, "timeUnixNano": {"x": 1}, "body": "b"},
            "otel",
            "otel: timeUnixNano: not a number of nanoseconds",
        ),
        ({"level": 30, "time": "1" * 5000, "msg": "m"}, "pino", "pino: time: '11111"),  # not int()
        ({"level": 30, "time": "\u00b2", "msg": "m"}, "pino", "pino: time: '\u00b2' is not valid"),
    ],
)
def test_bad_times_are_refused_naming_format_and_field(line, fmt, reason):
    assert refused(line, fmt).startswith(reason)


@pytest.mark.parametrize(
    ("value", "unit_fmt", "expected"),
    [
        (1531171074631, "pino", "2018-07-09T21:17:54.631000+00:00"),
        ("2026-11-23T10:00:00.123+0100", "pino", "2026-11-23T10:00:00.123000+01:00"),
        ("1544712660300000000", "otel", "2018-12-13T14:51:00.300000+00:00"),
        (1544712660300000000, "otel", "2018-12-13T14:51:00.300000+00:00"),
    ],
)
def test_times_in_each_unit(value, unit_fmt, expected):
    line = (
        {"level": 30, "time": value, "msg": "m"}
        if unit_fmt == "pino"
        else {"timeUnixNano": value, "severityNumber": 9, "body": "b"}
    )
    assert parse(line, unit_fmt)["timestamp"].isoformat() == expected


def test_epoch_text_writes_what_isoformat_writes(rng):
    """formats.EpochText keeps the last second's date and clock: consecutive values (the same
    second, the next, back in time, before 1970) must read exactly as datetime writes them."""
    write = formats.EpochText()
    values = [0, 1, 999_999, 1_000_000, -1, -1_000_001, 1_764_496_800_123_000]
    start = rng.randrange(-2 * 10**15, 4 * 10**15)
    values += [start + rng.randrange(0, 3 * 10**6) for _ in range(2_000)]
    values += [rng.randrange(-(10**16), 10**17) for _ in range(2_000)]
    for us in values:
        expected = (formats.EPOCH + dt.timedelta(microseconds=us)).isoformat()
        assert write(us) == expected, us


def test_other_field_errors_name_the_source_field():
    assert refused({"level": "info", "ts": 1.5, "msg": 42}, "zap") == (
        "zap: msg: 42 is not of type 'string'"
    )
    assert refused({"level": "info", "ts": 1.5, "msg": "m", "logger": "x" * 200}, "zap") == (
        f"zap: logger: {'x' * 200!r} is too long"
    )
    assert refused(
        {"timeUnixNano": "1", "severityNumber": 9, "body": {"kvlistValue": {}}}, "otel"
    ).startswith("otel: body: {'kvlistValue': {}} is not of type 'string'")
    assert refused([1, 2], "pino") == "pino: the line is not a JSON object"


def test_the_per_line_checks_apply_to_mapped_entries():
    assert "NUL character" in refused({"level": 30, "time": 1, "msg": "a\x00b"})
    assert "two keys name the path 'a.b'" in refused(
        {"level": 30, "time": 1, "msg": "m", "a.b": 1, "a": {"b": 2}}
    )
    assert "NaN, Infinity" in refused(b'{"level": 30, "time": 1, "msg": "m", "x": NaN}')


# --------------------------------------------------------------------------- auto, defaults


def test_auto_maps_a_file_mixing_formats_line_by_line():
    canonical = {
        "timestamp": "2026-11-23T10:00:00Z",
        "level": "info",
        "service": "checkout",
        "event_type": "order.created",
        "message": "order 42 created",
    }
    mixed = [
        PINO[0],
        ZAP[0],
        ECS[1],
        json.dumps(canonical),
        BUNYAN[0],
        LOGRUS[1],
        OTEL[0],
        PYTHON_JSON_LOGGER[1],
        *structlog_lines()[:1],
    ]
    batch = lines.LineBatch()
    mapping = mappings.compile_format("auto")
    for line_no, line in enumerate(mixed, 1):
        lines.add_line(batch, uuid.uuid4(), line_no, line.encode(), VALIDATOR, mapping)
    assert batch.errors == []
    assert batch.formats == {
        "pino": 1,
        "zap": 1,
        "ecs": 1,
        "eventhorizon": 1,
        "bunyan": 1,
        "logrus": 1,
        "otel": 1,
        "python-json-logger": 1,
        "structlog": 1,
    }


def test_canonical_lines_under_auto_keep_todays_reasons():
    line = {
        "timestamp": "2026-11-23T10:00:00Z",
        "level": "verbose",
        "service": "s",
        "event_type": "e",
        "message": "m",
    }
    assert refused(line) == (
        "$.level: 'verbose' is not valid: debug, info, warning, error or "
        "critical, in any letter case."
    )
    without_service = {k: v for k, v in line.items() if k != "service"}
    assert refused(without_service) == "$: 'service' is a required property"
    # a line without the canonical keys is no longer refused for lacking them: generic tries it
    assert refused({"message": "m"}).startswith("generic: no time: none of timestamp, ")


def test_upload_defaults_fill_what_a_line_lacks():
    canonical = {
        "timestamp": "2026-11-23T10:00:00Z",
        "level": "info",
        "event_type": "e",
        "message": "m",
    }
    entry = parse(canonical, service="shop", environment="staging")
    assert (entry["service"], entry["environment"], entry["context"]) == ("shop", "staging", {})
    assert parse(LOGRUS[1], service="shop", environment="staging")["environment"] == "staging"
    assert parse(ECS[1], service="shop", environment="dev")["environment"] == "staging"
    assert parse(ZAP[1], service="shop")["service"] == "shop"  # beats the logger name


def test_unknown_format_names_are_refused():
    with pytest.raises(mappings.UnknownFormat, match="unknown log format 'log4j'"):
        mappings.compile_format("log4j")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"@timestamp": "x", "log.level": "info", "message": "m"}, "ecs"),
        ({"@timestamp": "x", "log": {"level": "info"}}, "ecs"),
        ({"@timestamp": "x", "level": "INFO", "message": "m"}, "generic"),  # logstash-logback
        ({"ts": 1, "msg": "m", "v": 0}, "generic"),  # klog: no level
        ({"timeUnixNano": 1, "body": "b"}, "otel"),
        ({"level": 30, "time": 1, "msg": "m"}, "pino"),
        ({"level": 30, "time": 1, "msg": "m", "v": 0}, "bunyan"),
        ({"level": "info", "ts": 1, "msg": "m"}, "zap"),
        ({"levelname": "INFO", "message": "m"}, "python-json-logger"),
        ({"event": "e", "timestamp": "t", "level": "info"}, "structlog"),
        ({"time": "t", "msg": "m", "level": "info"}, "logrus"),
        ({"timestamp": "t", "message": "m", "event": "e"}, "generic"),  # has a message
        ({"timestamp": "t", "level": "l", "event_type": "e", "message": "m"}, "eventhorizon"),
        ({"timestamp": "t", "event_type": "e"}, "eventhorizon"),  # its reasons: the schema's
        ({"event_type": "e", "level": "warn"}, "eventhorizon"),
        ({"level": "info", "time": 1, "msg": "m"}, "logrus"),  # a string level is not pino's
        ({}, "generic"),
    ],
)
def test_detect_rules(line, expected):
    assert formats.detect(line) == expected
