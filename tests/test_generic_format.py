"""The `generic` mapping: JSON log lines of the libraries no named format covers, mapped by the
names their fields go by. Lines are written by the library where a Python one exists (loguru,
structlog, python-json-logger); otherwise copied from the library's own documentation, whose
address is given beside the line. No services needed."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import pathlib
import uuid

import loguru
import pytest
import pythonjsonlogger.json
import structlog

import formats
import generic_format
import lines
import mappings
from line_samples import PINO, ZAP, leaves, mapped, parse, refused

VALIDATOR = lines.log_entry_validator()
ROOT = pathlib.Path(__file__).resolve().parent.parent
FORMATS_DOC = ROOT / "docs" / "formats.md"


def entry_of(line, fmt: str = "auto", **defaults) -> dict:
    """The canonical fields of a parsed line, and its context."""
    entry = parse(line, fmt, **defaults)
    return {**mapped(entry), "context": entry["context"]}


# --------------------------------------------------------------------------- written by Python


def loguru_lines() -> list[str]:
    """loguru's `serialize=True`: the record nested under `record`, beside the formatted text."""
    out = io.StringIO()
    logger = loguru.logger.bind()
    sink = logger.add(out, serialize=True, level="TRACE")
    try:
        logger.bind(order=42).info("order {} created", 42)
        logger.success("payment taken")
        logger.warning("slow upstream")
        logger.trace("tick")
    finally:
        logger.remove(sink)
    return out.getvalue().splitlines()


def test_loguru_serialized_lines_are_mapped():
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    found = [parse(line) for line in loguru_lines()]
    assert [e["format"] for e in found] == ["generic"] * 4
    assert [e["level"] for e in found] == ["info", "info", "warning", "debug"]
    assert [e["message"] for e in found] == ["order 42 created", "payment taken",
                                              "slow upstream", "tick"]
    assert {e["service"] for e in found} == {"test_generic_format"}  # record.name: the module
    assert all(e["timestamp"] > before for e in found)  # record.time.repr, with its offset
    record = found[0]["context"]["record"]
    assert record["extra"] == {"order": 42} and record["level"]["no"] == 20  # kept
    assert "time" in record and "repr" not in record["time"]  # taken out, the rest kept
    assert found[0]["context"]["text"].endswith("order 42 created\n")


def structlog_renamed_lines() -> list[str]:
    """structlog with the event renamed to `message` (EventRenamer) and epoch-second times
    (TimeStamper(fmt=None)), as its docs show for log shippers that want a message field."""
    out = io.StringIO()
    log = structlog.wrap_logger(structlog.PrintLogger(out), processors=[
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt=None, key="ts"),
        structlog.processors.EventRenamer("message"),
        structlog.processors.JSONRenderer(),
    ])
    log.info("user logged in", user_id=42, service="auth")
    log.error("payment failed", amount=9.5)
    return out.getvalue().splitlines()


def test_structlog_lines_with_a_message_field_are_mapped():
    first, second = (parse(line) for line in structlog_renamed_lines())
    assert (first["format"], first["level"], first["message"], first["service"]) == (
        "generic", "info", "user logged in", "auth")
    assert first["context"] == {"user_id": 42}
    assert (second["level"], second["service"], second["context"]) == ("error", "unknown",
                                                                      {"amount": 9.5})
    assert abs(first["timestamp"] - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(hours=1)


def test_structlog_epoch_second_times_are_read_by_the_structlog_format():
    out = io.StringIO()
    log = structlog.wrap_logger(structlog.PrintLogger(out), processors=[
        structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt=None),
        structlog.processors.JSONRenderer()])
    log.warning("disk.almost_full")
    entry = parse(out.getvalue())
    assert (entry["format"], entry["level"], entry["message"]) == (
        "structlog", "warning", "disk.almost_full")


def test_python_json_logger_with_renamed_fields_is_mapped():
    """python-json-logger configured as its docs show for Google Cloud Logging: levelname
    renamed to severity, asctime to time."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(pythonjsonlogger.json.JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "severity", "asctime": "time"}))
    logger = logging.getLogger("app.billing")
    logger.handlers, logger.propagate = [handler], False
    logger.error("card declined", extra={"order": 7})
    entry = parse(out.getvalue())
    assert (entry["format"], entry["level"], entry["message"], entry["service"]) == (
        "generic", "error", "card declined", "app.billing")
    assert entry["context"] == {"order": 7}
    assert abs(entry["timestamp"] - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(days=1)


# --------------------------------------------------------------------------- from their docs

# Each: (where the line is shown, or the fields it is made of are documented, with the
# options named when they matter; the line; the mapped fields; the context left). Lines are
# copied from the page where it shows one (zerolog, Serilog's sample, log4j2, GELF, tracing,
# AWS Lambda, Docker, klog), trimmed to a few fields where it shows many (Google); otherwise
# written with the fields and spellings the page documents.
DOCUMENTED = {
    "zerolog": (
        "https://github.com/rs/zerolog#simple-logging-example (TimeFieldFormat = Unix)",
        '{"time":1516134303,"level":"debug","message":"hello world"}',
        ("2018-01-16T20:25:03+00:00", "debug", "unknown", "generic.log", "hello world"), {}),
    "serilog-compact": (
        "https://github.com/serilog/serilog-formatting-compact#sample (no @l: Information)",
        '{"@t":"2016-06-07T03:44:57.8532799Z","@mt":"Hello, {User}","User":"nblumhardt"}',
        ("2016-06-07T03:44:57.853279+00:00", "info", "unknown", "generic.log", "Hello, {User}"),
        {"User": "nblumhardt"}),
    "serilog-compact-rendered": (
        "https://github.com/serilog/serilog-formatting-compact#format-details (@m, @i, @l, @x)",
        '{"@t":"2016-06-07T03:44:57.8532799Z","@m":"Disk full on \\"C:\\"","@i":"a1e77001",'
        '"@l":"Error","@x":"System.IO.IOException: full","@mt":"Disk full on {Drive}",'
        '"Drive":"C:"}',
        ("2016-06-07T03:44:57.853279+00:00", "error", "unknown", "a1e77001",
         'Disk full on "C:"'),
        {"@x": "System.IO.IOException: full", "@mt": "Disk full on {Drive}", "Drive": "C:"}),
    "serilog-json": (
        "https://github.com/serilog/serilog-formatting-compact (JsonFormatter, for comparison)",
        '{"Timestamp":"2016-06-07T13:44:57.8532799+10:00","Level":"Information",'
        '"MessageTemplate":"Hello, {@User}","Properties":{"User":{"Name":"nblumhardt",'
        '"Tags":[1,2,3]}}}',
        ("2016-06-07T13:44:57.853279+10:00", "info", "unknown", "generic.log",
         "Hello, {@User}"),
        {"Properties": {"User": {"Name": "nblumhardt", "Tags": [1, 2, 3]}}}),
    "ms-extensions-logging": (
        "https://learn.microsoft.com/dotnet/core/extensions/console-log-formatters#json "
        "(TimestampFormat set)",
        '{"Timestamp":"2026-11-23T10:00:00.123Z","EventId":0,"LogLevel":"Information",'
        '"Category":"Program","Message":"Hello .NET friends!","State":{"Message":'
        '"Hello .NET friends!","{OriginalFormat}":"Hello .NET friends!"}}',
        ("2026-11-23T10:00:00.123000+00:00", "info", "Program", "generic.log",
         "Hello .NET friends!"),
        {"EventId": 0, "State": {"Message": "Hello .NET friends!",
                                 "{OriginalFormat}": "Hello .NET friends!"}}),
    "logstash-logback-encoder": (
        "https://github.com/logfellow/logstash-logback-encoder#standard-fields",
        '{"@timestamp":"2019-11-03T10:15:30.123+01:00","@version":"1","message":"My message",'
        '"logger_name":"com.example.App","thread_name":"main","level":"INFO",'
        '"level_value":20000}',
        ("2019-11-03T10:15:30.123000+01:00", "info", "com.example.App", "generic.log",
         "My message"),
        {"@version": "1", "thread_name": "main", "level_value": 20000}),
    "log4j2-json-layout": (
        "https://logging.apache.org/log4j/2.x/manual/layouts.html#JSONLayout",
        '{"instant":{"epochSecond":1493121664,"nanoOfSecond":118000000},"thread":"main",'
        '"level":"INFO","loggerName":"HelloWorld","message":"Hello, world!",'
        '"endOfBatch":false,"loggerFqcn":"org.apache.logging.log4j.spi.AbstractLogger",'
        '"threadId":1,"threadPriority":5}',
        ("2017-04-25T12:01:04.118000+00:00", "info", "HelloWorld", "generic.log",
         "Hello, world!"),
        {"thread": "main", "endOfBatch": False,
         "loggerFqcn": "org.apache.logging.log4j.spi.AbstractLogger", "threadId": 1,
         "threadPriority": 5}),
    "log4j2-json-layout-millis": (
        "https://logging.apache.org/log4j/2.x/manual/layouts.html#JSONLayout (timeMillis)",
        '{"timeMillis":1493121664118,"thread":"main","level":"WARN","loggerName":"HelloWorld",'
        '"message":"Hello, world!"}',
        ("2017-04-25T12:01:04.118000+00:00", "warning", "HelloWorld", "generic.log",
         "Hello, world!"), {"thread": "main"}),
    "gelf": (
        "https://go2docs.graylog.org/current/getting_in_log_data/gelf.html"
        "#GELFPayloadSpecification",
        '{"version":"1.1","host":"example.org","short_message":"A short message that helps '
        'you identify what is going on","full_message":"Backtrace here\\n\\nmore stuff",'
        '"timestamp":1385053862.3072,"level":1,"_user_id":9001,"_some_info":"foo",'
        '"_some_env_var":"bar"}',
        ("2013-11-21T17:11:02.307200+00:00", "critical", "example.org", "generic.log",
         "A short message that helps you identify what is going on"),
        {"version": "1.1", "full_message": "Backtrace here\n\nmore stuff", "_user_id": 9001,
         "_some_info": "foo", "_some_env_var": "bar"}),
    "winston": (
        "https://github.com/winstonjs/winston#usage (format.json() with format.timestamp() "
        "and defaultMeta {service: 'user-service'})",
        '{"level":"warn","message":"Hello distributed log files!","service":"user-service",'
        '"timestamp":"2026-11-23T10:00:00.000Z"}',
        ("2026-11-23T10:00:00+00:00", "warning", "user-service", "generic.log",
         "Hello distributed log files!"), {}),
    "tracing-subscriber": (
        "https://github.com/tokio-rs/tracing/blob/master/tracing-subscriber/src/fmt/format/json.rs"
        " (its doc comment)",
        '{"timestamp":"2022-02-15T18:47:10.821315Z","level":"INFO","fields":{"message":'
        '"preparing to shave yaks","number_of_yaks":3},"target":"fmt_json"}',
        ("2022-02-15T18:47:10.821315+00:00", "info", "fmt_json", "generic.log",
         "preparing to shave yaks"), {"fields": {"number_of_yaks": 3}}),
    "google-cloud-logging": (
        "https://cloud.google.com/logging/docs/structured-logging"
        "#structured_logging_special_fields",
        '{"severity":"ERROR","message":"There was an error in the application.",'
        '"httpRequest":{"requestMethod":"GET"},"time":"2020-10-12T07:20:50.52Z",'
        '"logging.googleapis.com/insertId":"42"}',
        ("2020-10-12T07:20:50.520000+00:00", "error", "unknown", "generic.log",
         "There was an error in the application."),
        {"httpRequest": {"requestMethod": "GET"}, "logging.googleapis.com/insertId": "42"}),
    "google-cloud-logging-seconds": (
        "https://cloud.google.com/logging/docs/structured-logging (timestamp as seconds, nanos)",
        '{"severity":"NOTICE","message":"started","timestamp":{"seconds":1602487250,'
        '"nanos":520000000}}',
        ("2020-10-12T07:20:50.520000+00:00", "info", "unknown", "generic.log", "started"), {}),
    "google-cloud-logentry": (
        "https://cloud.google.com/logging/docs/reference/v2/rest/v2/LogEntry (an exported entry "
        "of a Cloud Run service)",
        '{"insertId":"6501a","jsonPayload":{"message":"request served","latency_ms":12},'
        '"resource":{"type":"cloud_run_revision","labels":{"service_name":"hello",'
        '"revision_name":"hello-00001"}},"timestamp":"2023-09-13T04:22:10.552Z",'
        '"severity":"WARNING","logName":"projects/p/logs/run.googleapis.com%2Fstdout",'
        '"receiveTimestamp":"2023-09-13T04:22:10.600Z"}',
        ("2023-09-13T04:22:10.552000+00:00", "warning", "hello", "generic.log",
         "request served"),
        {"insertId": "6501a", "jsonPayload": {"latency_ms": 12},
         "resource": {"type": "cloud_run_revision", "labels": {"revision_name": "hello-00001"}},
         "logName": "projects/p/logs/run.googleapis.com%2Fstdout",
         "receiveTimestamp": "2023-09-13T04:22:10.600Z"}),
    "aws-lambda": (
        "https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs-advanced.html",
        '{"timestamp":"2023-10-27T19:17:45.586Z","level":"INFO","message":"some log message",'
        '"logger":"root","requestId":"79b4f56e-95b1-4643-9700-2807f4e68189"}',
        ("2023-10-27T19:17:45.586000+00:00", "info", "root", "generic.log",
         "some log message"), {"requestId": "79b4f56e-95b1-4643-9700-2807f4e68189"}),
    "aws-lambda-platform": (
        "https://docs.aws.amazon.com/lambda/latest/dg/telemetry-schema-reference.html"
        "#platform-start",
        '{"time":"2022-10-12T00:00:15.064Z","type":"platform.start","record":{"requestId":'
        '"6d68ca91-49c9-448d-89b8-7ca3e6dc66aa","version":"$LATEST"}}',
        ("2022-10-12T00:00:15.064000+00:00", "info", "unknown", "platform.start", ""),
        {"record": {"requestId": "6d68ca91-49c9-448d-89b8-7ca3e6dc66aa",
                    "version": "$LATEST"}}),
    "aws-lambda-powertools": (
        "https://docs.powertools.aws.dev/lambda/python/latest/core/logger/",
        '{"level":"INFO","location":"collect_payment:29","message":"Collecting payment",'
        '"timestamp":"2021-05-03 11:47:12,494+0000","service":"payment","cold_start":true}',
        ("2021-05-03T11:47:12.494000+00:00", "info", "payment", "generic.log",
         "Collecting payment"), {"location": "collect_payment:29", "cold_start": True}),
    "docker-json-file": (
        "https://docs.docker.com/engine/logging/drivers/json-file/",
        '{"log":"Log line is here\\n","stream":"stdout","time":"2019-01-01T11:11:11.111111111Z"}',
        ("2019-01-01T11:11:11.111111+00:00", "info", "unknown", "generic.log",
         "Log line is here\n"), {"stream": "stdout"}),
    "klog": (
        "https://github.com/kubernetes/enhancements/blob/master/keps/sig-instrumentation/"
        "1602-structured-logging/README.md#json-output",
        '{"ts": 1580306777.04728, "v": 4, "msg": "Pod status updated", "pod":{"name": '
        '"nginx-1", "namespace": "default"}, "status": "ready"}',
        ("2020-01-29T14:06:17.047280+00:00", "info", "unknown", "generic.log",
         "Pod status updated"),
        {"v": 4, "pod": {"name": "nginx-1", "namespace": "default"}, "status": "ready"}),
    "klog-error": (
        "https://github.com/kubernetes/enhancements/blob/master/keps/sig-instrumentation/"
        "1602-structured-logging/README.md#json-output (ErrorS: no level, an err)",
        '{"ts": 1580306777.04728, "msg": "Failed to update pod status", "err": "timeout"}',
        ("2020-01-29T14:06:17.047280+00:00", "error", "unknown", "generic.log",
         "Failed to update pod status"), {"err": "timeout"}),
    "journald": (
        "https://www.freedesktop.org/software/systemd/man/latest/systemd.journal-fields.html "
        "(journalctl -o json: every value a string)",
        '{"__REALTIME_TIMESTAMP":"1700000000123456","PRIORITY":"3","SYSLOG_IDENTIFIER":"sshd",'
        '"MESSAGE":"kex_exchange_identification: Connection closed","_PID":"812"}',
        ("2023-11-14T22:13:20.123456+00:00", "error", "sshd", "generic.log",
         "kex_exchange_identification: Connection closed"), {"_PID": "812"}),
    "semantic_logger": (
        "https://logger.rocketjob.io/appenders.html (Ruby, formatter: :json)",
        '{"host":"server1","application":"Semantic Logger","environment":"development",'
        '"timestamp":"2017-11-03T19:12:52.163459Z","level":"info","level_index":2,'
        '"pid":17236,"thread":"70103633012640","name":"Rails","message":"Started"}',
        ("2017-11-03T19:12:52.163459+00:00", "info", "Semantic Logger", "generic.log",
         "Started"),
        {"host": "server1", "level_index": 2, "pid": 17236, "thread": "70103633012640",
         "name": "Rails"}),
}


@pytest.mark.parametrize("library", DOCUMENTED)
def test_documented_lines_are_mapped(library):
    _source, line, (timestamp, level, service, event_type, message), context = DOCUMENTED[library]
    entry = entry_of(line)
    environment = "development" if library == "semantic_logger" else "production"
    assert entry == {"timestamp": timestamp, "level": level, "service": service,
                     "event_type": event_type, "message": message, "environment": environment,
                     "format": "generic", "context": context}


@pytest.mark.parametrize("library", DOCUMENTED)
def test_no_field_of_a_documented_line_is_lost(library):
    """Every leaf of the line is in the entry: in the context as it was, or a mapped value (a
    time or a level is converted, so only its name can be looked for)."""
    line = DOCUMENTED[library][1]
    entry = parse(line)
    converted = {name.lower().split(".")[-1] for field in ("timestamp", "level")
                 for name in generic_format.SYNONYMS[field]} | {"epochsecond", "nanoofsecond",
                                                                "seconds", "nanos"}
    kept = set(leaves(entry["context"]).items()) | {
        entry[field] for field in ("message", "service", "event_type", "environment")}
    for path, value in leaves(json.loads(line)).items():
        assert ((path, value) in kept or value in kept
                or path.lower().split(".")[-1] in converted), path


@pytest.mark.parametrize("library", DOCUMENTED)
def test_generic_by_name_maps_as_auto_does(library):
    line = DOCUMENTED[library][1]
    assert parse(line, "generic") == parse(line)


def test_slog_lines_are_logruss_and_their_offsets_are_read():
    """Go's log/slog JSONHandler (its documentation,
    https://github.com/golang/go/blob/master/src/log/slog/doc.go: `time`, `level`, `msg`): the
    logrus format's keys; a level between two is written with its distance, "WARN+2"."""
    line = '{"time":"2022-11-08T15:28:26.000000000-05:00","level":"INFO","msg":"hello","count":3}'
    entry = parse(line)
    assert (entry["format"], entry["level"], entry["context"]) == ("logrus", "info",
                                                                    {"count": 3})
    assert parse(line.replace('"INFO"', '"WARN+2"'))["level"] == "warning"
    assert parse(line.replace('"INFO"', '"DEBUG-4"'))["level"] == "debug"


def test_the_uploads_defaults_and_the_lines_own_fields():
    line = {"timestamp": "2026-11-23T10:00:00Z", "msg": "m", "logger": "app.db"}
    assert parse(line, service="shop", environment="qa")["service"] == "shop"  # over a logger
    assert parse({**line, "app": "web"}, service="shop")["service"] == "web"  # its own wins
    assert parse({**line, "env": "staging"}, environment="qa")["environment"] == "staging"
    assert parse(line, environment="qa")["environment"] == "qa"
    ecs_like = {"@timestamp": "2026-11-23T10:00:00Z", "message": "m",
                "service": {"name": "pay", "environment": "staging"}, "event": {"action": "a"}}
    entry = entry_of(ecs_like)
    assert (entry["service"], entry["environment"], entry["event_type"], entry["context"]) == (
        "pay", "staging", "a", {})


# --------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(("key", "value"), [
    ("timestamp", "2026-11-23T10:00:00Z"), ("Timestamp", "2026-11-23T10:00:00Z"),
    ("TIMESTAMP", "2026-11-23T10:00:00Z"), ("@timestamp", "2026-11-23T10:00:00Z"),
    ("date", "2026-11-23T10:00:00Z"), ("_timestamp", "2026-11-23T10:00:00Z"),
    ("eventTime", "2026-11-23T10:00:00Z"), ("published_date", "2026-11-23T10:00:00Z"),
    ("@t", "2026-11-23T10:00:00Z"), ("time", 1795428000), ("ts", 1795428000.0),
    ("datetime", "2026-11-23 10:00:00"), ("timeMillis", 1795428000000),
    ("__REALTIME_TIMESTAMP", "1795428000000000"), ("timeUnixNano", 1795428000000000000),
])
def test_each_time_name(key, value):
    entry = parse({key: value, "message": "m", "level": "info"}, "generic")
    assert entry["timestamp"].isoformat() == "2026-11-23T10:00:00+00:00", key


@pytest.mark.parametrize(("value", "expected"), [
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
])
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
        11, 23, 10)


@pytest.mark.parametrize(("value", "level"), [
    # Datadog's status remapper, by prefix
    ("emerg", "critical"), ("EMERGENCY", "critical"), ("f", "critical"), ("Fatal", "critical"),
    ("alert", "critical"), ("a", "critical"), ("crit", "critical"), ("c", "critical"),
    ("err", "error"), ("ERROR", "error"), ("errors", "error"), ("w", "warning"),
    ("Warn", "warning"), ("n", "info"), ("notice", "info"), ("i", "info"), ("INF", "info"),
    ("d", "debug"), ("dbg", "debug"), ("t", "debug"), ("trace", "debug"), ("v", "debug"),
    ("verbose", "debug"),
    # syslog severities, as numbers or digits (journald writes "3")
    (0, "critical"), (1, "critical"), (2, "critical"), (3, "error"), (4, "warning"),
    (5, "info"), (6, "info"), (7, "debug"), ("3", "error"),
    # the libraries' own words the prefixes would misread
    ("Information", "info"), ("fine", "debug"), ("FINEST", "debug"), ("config", "debug"),
    ("SEVERE", "error"), ("silly", "debug"), ("http", "debug"), ("SUCCESS", "info"),
    ("DEFAULT", "info"), ("E", "error"), ("dpanic", "critical"), ("INFO+2", "info"),
    (" warning ", "warning"),
])
def test_level_values(value, level):
    assert parse({"time": 1795428000, "lvl": value, "msg": "m"}, "generic")["level"] == level


@pytest.mark.parametrize("key", [
    "level", "LEVEL", "Level", "severity", "Severity", "SEVERITY", "lvl", "LVL", "Lvl", "@l",
    "levelname", "LogLevel", "log_level", "severityText", "priority",
])
def test_each_level_name(key):
    entry = parse({"time": 1795428000, key: "warn", "msg": "m"}, "generic")
    assert entry["level"] == "warning" and entry["context"] == {}


def test_nested_names():
    line = {"date": 1795428000, "log": {"level": "error", "logger": "db", "origin": "x.py"},
            "fields": {"message": "boom", "retry": 2}, "record": {"name": "ignored"}}
    entry = entry_of(line, "generic")
    assert (entry["level"], entry["message"], entry["service"]) == ("error", "boom", "db")
    assert entry["context"] == {"log": {"origin": "x.py"}, "fields": {"retry": 2},
                                "record": {"name": "ignored"}}
    dotted = entry_of({"date": 1795428000, "log.level": "warn", "Service.Name": "pay"})
    assert (dotted["level"], dotted["service"], dotted["context"]) == ("warning", "pay", {})


def test_a_rendered_message_comes_before_its_template():
    both = entry_of({"@t": "2026-11-23T10:00:00Z", "@mt": "Hi {U}", "@m": "Hi Ann", "U": "Ann"})
    assert (both["message"], both["context"]) == ("Hi Ann", {"@mt": "Hi {U}", "U": "Ann"})
    assert entry_of({"@t": "2026-11-23T10:00:00Z", "@mt": "Hi {U}"})["message"] == "Hi {U}"


def test_values_of_another_type_stay_in_the_context():
    line = {"time": 1795428000, "message": {"text": "an object"}, "msg": "the message",
            "service": {"tier": 1}, "level": True, "env": ""}
    entry = entry_of(line, "generic")
    assert (entry["message"], entry["service"], entry["level"], entry["environment"]) == (
        "the message", "unknown", "info", "production")
    assert entry["context"] == {"message": {"text": "an object"}, "service": {"tier": 1},
                                "level": True, "env": ""}


def test_a_line_without_a_level_is_info_and_an_http_status_is_not_a_level():
    entry = entry_of({"time": 1795428000, "msg": "GET /", "status": 500})
    assert (entry["level"], entry["context"]) == ("info", {"status": 500})


# --------------------------------------------------------------------------- bad input


def test_a_line_without_a_time_names_every_name_tried():
    reason = refused({"level": "error", "message": "no clock here"})
    assert reason.startswith("generic: no time: none of timestamp, @timestamp, time, ts, @t, ")
    for name in generic_format.SYNONYMS["timestamp"]:
        assert name in reason
    assert refused({"time": True, "date": [1], "msg": "m"}).endswith(
        "; not a time: time: True; date: [1]")
    assert refused({"time": [list(range(1000))] * 1000}).endswith(
        "not a time: time: [[0, 1, 2, 3, ...], [0, 1, 2, 3, ...], [0, 1, 2, 3, ...], "
        "[0, 1, 2, 3, ...], ...]")


@pytest.mark.parametrize(("line", "reason"), [
    ({"timestamp": 1795428000, "level": 30, "msg": "m"},
     "generic: level: 30 is not a syslog severity (0-7); other numbers mean different levels"),
    ({"timestamp": 1795428000, "severity": 8, "msg": "m"},
     "generic: severity: 8 is not a syslog severity"),
    ({"timestamp": 1795428000, "level": "LOUD", "msg": "m"},
     "generic: level: unknown level 'LOUD'"),
    ({"timestamp": 1795428000, "level": "200", "msg": "m"}, "generic: level: unknown level '200'"),
    ({"timestamp": "yesterday", "msg": "m"}, "generic: timestamp: 'yesterday' is not valid: RFC"),
    ({"Timestamp": "2026-11-23T10:00:00", "msg": "m"}, None),  # no offset: UTC, accepted
    ({"timestamp": 1e300, "msg": "m"}, "generic: timestamp: 1e+300 nanoseconds is not a time"),
    ({"timestamp": -5, "msg": "m"}, "generic: timestamp: '1969-12-31T23:59:55+00:00' is outside"),
    ({"instant": {"epochSecond": 1.5}, "msg": "m"},
     "generic: instant: {'epochSecond': 1.5} is not a time: seconds and nanoseconds"),
    ({"timestamp": 1795428000, "message": 42}, None),  # not text: kept, the message is ""
    ({"timestamp": 1795428000, "msg": "m", "app": "x" * 200}, "generic: app: 'xxxx"),
    ([1, 2], "$: [1, 2] is not of type 'object'"),
    # what int() would choke on, with a reason naming no field
    ({"time": "1" * 5000, "msg": "m"}, "generic: time: '1111-11-11T11:11:11.111111+00:00' is "),
    ({"time": "\u00b2", "msg": "m"}, "generic: time: '\u00b2' is not valid: RFC 3339"),
    ({"time": 1795428000, "level": "\u00b2"}, "generic: level: unknown level '\u00b2'"),
    # a huge value that is not a time is named, cut short
    ({"time": [list(range(1000))] * 1000, "msg": "m"},
     "generic: no time: none of timestamp, "),
])
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
    canonical = {"timestamp": "2026-11-23T10:00:00Z", "level": "info", "service": "s",
                 "event_type": "e", "message": "m"}
    assert parse(canonical)["format"] == "eventhorizon"


def test_the_jobs_counts_say_which_mapping_each_line_took():
    mixed = [PINO[0], DOCUMENTED["zerolog"][1], DOCUMENTED["serilog-compact"][1], ZAP[0],
             *loguru_lines()[:2], '{"level": "info", "message": "no time"}']
    batch = lines.LineBatch()
    mapping = mappings.compile_format("auto")
    for line_no, line in enumerate(mixed, 1):
        lines.add_line(batch, uuid.uuid4(), line_no, line.encode(), VALIDATOR, mapping)
    assert batch.formats == {"pino": 1, "generic": 4, "zap": 1}
    assert [(line_no, reason[:26]) for _, line_no, reason in batch.errors] == [
        (7, "generic: no time: none of ")]


def test_the_readme_shows_the_table_the_code_uses():
    assert generic_format.recognition_table() in FORMATS_DOC.read_text()


def test_generic_is_a_built_in_name():
    assert "generic" in formats.NAMES
    with pytest.raises(formats.InvalidFormat, match="built-in format's name"):
        formats.custom_format({"name": "generic", "fields": {"timestamp": ["t"],
                                                             "level": ["l"]}})


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
