"""The `generic` mapping on real lines: JSON log lines of the libraries no named format covers,
mapped by the names their fields go by, and a job of them counting the mapping each line took.
Lines are written by the library where a Python one exists (loguru, structlog,
python-json-logger); otherwise copied from the library's own documentation, whose address is
given beside the line. The mapping's rules are test_generic_format.py's. No services needed."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import uuid

import loguru
import pytest
import pythonjsonlogger.json
import structlog

import generic_format
import lines
import mappings
from helpers import VALIDATOR
from line_samples import PINO, ZAP, entry_of, leaves, parse

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
    assert [e["message"] for e in found] == [
        "order 42 created",
        "payment taken",
        "slow upstream",
        "tick",
    ]
    assert {e["service"] for e in found} == {
        "test_generic_library_lines"
    }  # record.name: the module
    assert all(e["timestamp"] > before for e in found)  # record.time.repr, with its offset
    record = found[0]["context"]["record"]
    assert record["extra"] == {"order": 42} and record["level"]["no"] == 20  # kept
    assert "time" in record and "repr" not in record["time"]  # taken out, the rest kept
    assert found[0]["context"]["text"].endswith("order 42 created\n")


def structlog_renamed_lines() -> list[str]:
    """structlog with the event renamed to `message` (EventRenamer) and epoch-second times
    (TimeStamper(fmt=None)), as its docs show for log shippers that want a message field."""
    out = io.StringIO()
    log = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt=None, key="ts"),
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(),
        ],
    )
    log.info("user logged in", user_id=42, service="auth")
    log.error("payment failed", amount=9.5)
    return out.getvalue().splitlines()


def test_structlog_lines_with_a_message_field_are_mapped():
    first, second = (parse(line) for line in structlog_renamed_lines())
    assert (first["format"], first["level"], first["message"], first["service"]) == (
        "generic",
        "info",
        "user logged in",
        "auth",
    )
    assert first["context"] == {"user_id": 42}
    assert (second["level"], second["service"], second["context"]) == (
        "error",
        "unknown",
        {"amount": 9.5},
    )
    assert abs(first["timestamp"] - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(hours=1)


def test_structlog_epoch_second_times_are_read_by_the_structlog_format():
    out = io.StringIO()
    log = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt=None),
            structlog.processors.JSONRenderer(),
        ],
    )
    log.warning("disk.almost_full")
    entry = parse(out.getvalue())
    assert (entry["format"], entry["level"], entry["message"]) == (
        "structlog",
        "warning",
        "disk.almost_full",
    )


def test_python_json_logger_with_renamed_fields_is_mapped():
    """python-json-logger configured as its docs show for Google Cloud Logging: levelname
    renamed to severity, asctime to time."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        pythonjsonlogger.json.JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "severity", "asctime": "time"},
        )
    )
    logger = logging.getLogger("app.billing")
    logger.handlers, logger.propagate = [handler], False
    logger.error("card declined", extra={"order": 7})
    entry = parse(out.getvalue())
    assert (entry["format"], entry["level"], entry["message"], entry["service"]) == (
        "generic",
        "error",
        "card declined",
        "app.billing",
    )
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
        ("2018-01-16T20:25:03+00:00", "debug", "unknown", "generic.log", "hello world"),
        {},
    ),
    "serilog-compact": (
        "https://github.com/serilog/serilog-formatting-compact#sample (no @l: Information)",
        '{"@t":"2016-06-07T03:44:57.8532799Z","@mt":"Hello, {User}","User":"nblumhardt"}',
        ("2016-06-07T03:44:57.853279+00:00", "info", "unknown", "generic.log", "Hello, {User}"),
        {"User": "nblumhardt"},
    ),
    "serilog-compact-rendered": (
        "https://github.com/serilog/serilog-formatting-compact#format-details (@m, @i, @l, @x)",
        '{"@t":"2016-06-07T03:44:57.8532799Z","@m":"Disk full on \\"C:\\"","@i":"a1e77001",'
        '"@l":"Error","@x":"System.IO.IOException: full","@mt":"Disk full on {Drive}",'
        '"Drive":"C:"}',
        ("2016-06-07T03:44:57.853279+00:00", "error", "unknown", "a1e77001", 'Disk full on "C:"'),
        {"@x": "System.IO.IOException: full", "@mt": "Disk full on {Drive}", "Drive": "C:"},
    ),
    "serilog-json": (
        "https://github.com/serilog/serilog-formatting-compact (JsonFormatter, for comparison)",
        '{"Timestamp":"2016-06-07T13:44:57.8532799+10:00","Level":"Information",'
        '"MessageTemplate":"Hello, {@User}","Properties":{"User":{"Name":"nblumhardt",'
        '"Tags":[1,2,3]}}}',
        ("2016-06-07T13:44:57.853279+10:00", "info", "unknown", "generic.log", "Hello, {@User}"),
        {"Properties": {"User": {"Name": "nblumhardt", "Tags": [1, 2, 3]}}},
    ),
    "ms-extensions-logging": (
        "https://learn.microsoft.com/dotnet/core/extensions/console-log-formatters#json "
        "(TimestampFormat set)",
        '{"Timestamp":"2026-11-23T10:00:00.123Z","EventId":0,"LogLevel":"Information",'
        '"Category":"Program","Message":"Hello .NET friends!","State":{"Message":'
        '"Hello .NET friends!","{OriginalFormat}":"Hello .NET friends!"}}',
        (
            "2026-11-23T10:00:00.123000+00:00",
            "info",
            "Program",
            "generic.log",
            "Hello .NET friends!",
        ),
        {
            "EventId": 0,
            "State": {"Message": "Hello .NET friends!", "{OriginalFormat}": "Hello .NET friends!"},
        },
    ),
    "logstash-logback-encoder": (
        "https://github.com/logfellow/logstash-logback-encoder#standard-fields",
        '{"@timestamp":"2019-11-03T10:15:30.123+01:00","@version":"1","message":"My message",'
        '"logger_name":"com.example.App","thread_name":"main","level":"INFO",'
        '"level_value":20000}',
        (
            "2019-11-03T10:15:30.123000+01:00",
            "info",
            "com.example.App",
            "generic.log",
            "My message",
        ),
        {"@version": "1", "thread_name": "main", "level_value": 20000},
    ),
    "log4j2-json-layout": (
        "https://logging.apache.org/log4j/2.x/manual/layouts.html#JSONLayout",
        '{"instant":{"epochSecond":1493121664,"nanoOfSecond":118000000},"thread":"main",'
        '"level":"INFO","loggerName":"HelloWorld","message":"Hello, world!",'
        '"endOfBatch":false,"loggerFqcn":"org.apache.logging.log4j.spi.AbstractLogger",'
        '"threadId":1,"threadPriority":5}',
        ("2017-04-25T12:01:04.118000+00:00", "info", "HelloWorld", "generic.log", "Hello, world!"),
        {
            "thread": "main",
            "endOfBatch": False,
            "loggerFqcn": "org.apache.logging.log4j.spi.AbstractLogger",
            "threadId": 1,
            "threadPriority": 5,
        },
    ),
    "log4j2-json-layout-millis": (
        "https://logging.apache.org/log4j/2.x/manual/layouts.html#JSONLayout (timeMillis)",
        '{"timeMillis":1493121664118,"thread":"main","level":"WARN","loggerName":"HelloWorld",'
        '"message":"Hello, world!"}',
        (
            "2017-04-25T12:01:04.118000+00:00",
            "warning",
            "HelloWorld",
            "generic.log",
            "Hello, world!",
        ),
        {"thread": "main"},
    ),
    "gelf": (
        "https://go2docs.graylog.org/current/getting_in_log_data/gelf.html"
        "#GELFPayloadSpecification",
        '{"version":"1.1","host":"example.org","short_message":"A short message that helps '
        'you identify what is going on","full_message":"Backtrace here\\n\\nmore stuff",'
        '"timestamp":1385053862.3072,"level":1,"_user_id":9001,"_some_info":"foo",'
        '"_some_env_var":"bar"}',
        (
            "2013-11-21T17:11:02.307200+00:00",
            "critical",
            "example.org",
            "generic.log",
            "A short message that helps you identify what is going on",
        ),
        {
            "version": "1.1",
            "full_message": "Backtrace here\n\nmore stuff",
            "_user_id": 9001,
            "_some_info": "foo",
            "_some_env_var": "bar",
        },
    ),
    "winston": (
        "https://github.com/winstonjs/winston#usage (format.json() with format.timestamp() "
        "and defaultMeta {service: 'user-service'})",
        '{"level":"warn","message":"Hello distributed log files!","service":"user-service",'
        '"timestamp":"2026-11-23T10:00:00.000Z"}',
        (
            "2026-11-23T10:00:00+00:00",
            "warning",
            "user-service",
            "generic.log",
            "Hello distributed log files!",
        ),
        {},
    ),
    "tracing-subscriber": (
        "https://github.com/tokio-rs/tracing/blob/master/tracing-subscriber/src/fmt/format/json.rs"
        " (its doc comment)",
        '{"timestamp":"2022-02-15T18:47:10.821315Z","level":"INFO","fields":{"message":'
        '"preparing to shave yaks","number_of_yaks":3},"target":"fmt_json"}',
        (
            "2022-02-15T18:47:10.821315+00:00",
            "info",
            "fmt_json",
            "generic.log",
            "preparing to shave yaks",
        ),
        {"fields": {"number_of_yaks": 3}},
    ),
    "google-cloud-logging": (
        "https://cloud.google.com/logging/docs/structured-logging"
        "#structured_logging_special_fields",
        '{"severity":"ERROR","message":"There was an error in the application.",'
        '"httpRequest":{"requestMethod":"GET"},"time":"2020-10-12T07:20:50.52Z",'
        '"logging.googleapis.com/insertId":"42"}',
        (
            "2020-10-12T07:20:50.520000+00:00",
            "error",
            "unknown",
            "generic.log",
            "There was an error in the application.",
        ),
        {"httpRequest": {"requestMethod": "GET"}, "logging.googleapis.com/insertId": "42"},
    ),
    "google-cloud-logging-seconds": (
        "https://cloud.google.com/logging/docs/structured-logging (timestamp as seconds, nanos)",
        '{"severity":"NOTICE","message":"started","timestamp":{"seconds":1602487250,'
        '"nanos":520000000}}',
        ("2020-10-12T07:20:50.520000+00:00", "info", "unknown", "generic.log", "started"),
        {},
    ),
    "google-cloud-logentry": (
        "https://cloud.google.com/logging/docs/reference/v2/rest/v2/LogEntry (an exported entry "
        "of a Cloud Run service)",
        '{"insertId":"6501a","jsonPayload":{"message":"request served","latency_ms":12},'
        '"resource":{"type":"cloud_run_revision","labels":{"service_name":"hello",'
        '"revision_name":"hello-00001"}},"timestamp":"2023-09-13T04:22:10.552Z",'
        '"severity":"WARNING","logName":"projects/p/logs/run.googleapis.com%2Fstdout",'
        '"receiveTimestamp":"2023-09-13T04:22:10.600Z"}',
        ("2023-09-13T04:22:10.552000+00:00", "warning", "hello", "generic.log", "request served"),
        {
            "insertId": "6501a",
            "jsonPayload": {"latency_ms": 12},
            "resource": {"type": "cloud_run_revision", "labels": {"revision_name": "hello-00001"}},
            "logName": "projects/p/logs/run.googleapis.com%2Fstdout",
            "receiveTimestamp": "2023-09-13T04:22:10.600Z",
        },
    ),
    "aws-lambda": (
        "https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs-advanced.html",
        '{"timestamp":"2023-10-27T19:17:45.586Z","level":"INFO","message":"some log message",'
        '"logger":"root","requestId":"79b4f56e-95b1-4643-9700-2807f4e68189"}',
        ("2023-10-27T19:17:45.586000+00:00", "info", "root", "generic.log", "some log message"),
        {"requestId": "79b4f56e-95b1-4643-9700-2807f4e68189"},
    ),
    "aws-lambda-platform": (
        "https://docs.aws.amazon.com/lambda/latest/dg/telemetry-schema-reference.html"
        "#platform-start",
        '{"time":"2022-10-12T00:00:15.064Z","type":"platform.start","record":{"requestId":'
        '"6d68ca91-49c9-448d-89b8-7ca3e6dc66aa","version":"$LATEST"}}',
        ("2022-10-12T00:00:15.064000+00:00", "info", "unknown", "platform.start", ""),
        {"record": {"requestId": "6d68ca91-49c9-448d-89b8-7ca3e6dc66aa", "version": "$LATEST"}},
    ),
    "aws-lambda-powertools": (
        "https://docs.powertools.aws.dev/lambda/python/latest/core/logger/",
        '{"level":"INFO","location":"collect_payment:29","message":"Collecting payment",'
        '"timestamp":"2021-05-03 11:47:12,494+0000","service":"payment","cold_start":true}',
        (
            "2021-05-03T11:47:12.494000+00:00",
            "info",
            "payment",
            "generic.log",
            "Collecting payment",
        ),
        {"location": "collect_payment:29", "cold_start": True},
    ),
    "docker-json-file": (
        "https://docs.docker.com/engine/logging/drivers/json-file/",
        '{"log":"Log line is here\\n","stream":"stdout","time":"2019-01-01T11:11:11.111111111Z"}',
        (
            "2019-01-01T11:11:11.111111+00:00",
            "info",
            "unknown",
            "generic.log",
            "Log line is here\n",
        ),
        {"stream": "stdout"},
    ),
    "klog": (
        "https://github.com/kubernetes/enhancements/blob/master/keps/sig-instrumentation/"
        "1602-structured-logging/README.md#json-output",
        '{"ts": 1580306777.04728, "v": 4, "msg": "Pod status updated", "pod":{"name": '
        '"nginx-1", "namespace": "default"}, "status": "ready"}',
        (
            "2020-01-29T14:06:17.047280+00:00",
            "info",
            "unknown",
            "generic.log",
            "Pod status updated",
        ),
        {"v": 4, "pod": {"name": "nginx-1", "namespace": "default"}, "status": "ready"},
    ),
    "klog-error": (
        "https://github.com/kubernetes/enhancements/blob/master/keps/sig-instrumentation/"
        "1602-structured-logging/README.md#json-output (ErrorS: no level, an err)",
        '{"ts": 1580306777.04728, "msg": "Failed to update pod status", "err": "timeout"}',
        (
            "2020-01-29T14:06:17.047280+00:00",
            "error",
            "unknown",
            "generic.log",
            "Failed to update pod status",
        ),
        {"err": "timeout"},
    ),
    "journald": (
        "https://www.freedesktop.org/software/systemd/man/latest/systemd.journal-fields.html "
        "(journalctl -o json: every value a string)",
        '{"__REALTIME_TIMESTAMP":"1700000000123456","PRIORITY":"3","SYSLOG_IDENTIFIER":"sshd",'
        '"MESSAGE":"kex_exchange_identification: Connection closed","_PID":"812"}',
        (
            "2023-11-14T22:13:20.123456+00:00",
            "error",
            "sshd",
            "generic.log",
            "kex_exchange_identification: Connection closed",
        ),
        {"_PID": "812"},
    ),
    "semantic_logger": (
        "https://logger.rocketjob.io/appenders.html (Ruby, formatter: :json)",
        '{"host":"server1","application":"Semantic Logger","environment":"development",'
        '"timestamp":"2017-11-03T19:12:52.163459Z","level":"info","level_index":2,'
        '"pid":17236,"thread":"70103633012640","name":"Rails","message":"Started"}',
        ("2017-11-03T19:12:52.163459+00:00", "info", "Semantic Logger", "generic.log", "Started"),
        {
            "host": "server1",
            "level_index": 2,
            "pid": 17236,
            "thread": "70103633012640",
            "name": "Rails",
        },
    ),
}


@pytest.mark.parametrize("library", DOCUMENTED)
def test_documented_lines_are_mapped(library):
    _source, line, (timestamp, level, service, event_type, message), context = DOCUMENTED[library]
    entry = entry_of(line)
    environment = "development" if library == "semantic_logger" else "production"
    assert entry == {
        "timestamp": timestamp,
        "level": level,
        "service": service,
        "event_type": event_type,
        "message": message,
        "environment": environment,
        "format": "generic",
        "context": context,
    }


@pytest.mark.parametrize("library", DOCUMENTED)
def test_no_field_of_a_documented_line_is_lost(library):
    """Every leaf of the line is in the entry: in the context as it was, or a mapped value (a
    time or a level is converted, so only its name can be looked for)."""
    line = DOCUMENTED[library][1]
    entry = parse(line)
    converted = {
        name.lower().split(".")[-1]
        for field in ("timestamp", "level")
        for name in generic_format.SYNONYMS[field]
    } | {"epochsecond", "nanoofsecond", "seconds", "nanos"}
    kept = set(leaves(entry["context"]).items()) | {
        entry[field] for field in ("message", "service", "event_type", "environment")
    }
    for path, value in leaves(json.loads(line)).items():
        assert (path, value) in kept or value in kept or path.lower().split(".")[-1] in converted, (
            path
        )


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
    assert (entry["format"], entry["level"], entry["context"]) == ("logrus", "info", {"count": 3})
    assert parse(line.replace('"INFO"', '"WARN+2"'))["level"] == "warning"
    assert parse(line.replace('"INFO"', '"DEBUG-4"'))["level"] == "debug"


# --------------------------------------------------------------------------- in one job


def test_the_jobs_counts_say_which_mapping_each_line_took():
    mixed = [
        PINO[0],
        DOCUMENTED["zerolog"][1],
        DOCUMENTED["serilog-compact"][1],
        ZAP[0],
        *loguru_lines()[:2],
        '{"level": "info", "message": "no time"}',
    ]
    batch = lines.LineBatch()
    mapping = mappings.compile_format("auto")
    for line_no, line in enumerate(mixed, 1):
        lines.add_line(batch, uuid.uuid4(), line_no, line.encode(), VALIDATOR, mapping)
    assert batch.formats == {"pino": 1, "generic": 4, "zap": 1}
    assert [(line_no, reason[:26]) for _, line_no, reason in batch.errors] == [
        (7, "generic: no time: none of ")
    ]
