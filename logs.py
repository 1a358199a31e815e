"""How every process logs: structlog for our code and for the stdlib loggers of aiohttp, pika
and psycopg (JSON lines off a terminal, LOG_FORMAT), each line inside a span naming its trace;
and the current trace's ids, which logs, outbox events and messages carry."""

from __future__ import annotations

import logging
import sys

import structlog
from opentelemetry import propagate, trace

import config

# --------------------------------------------------------------------------- logging


def configure_logging(settings: config.Settings) -> None:
    """structlog for our code and for the stdlib loggers of aiohttp, pika and psycopg."""
    shared = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if settings.log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # pika narrates every frame at INFO; its warnings and errors are what matter.
    logging.getLogger("pika").setLevel(max(logging.WARNING, root.level))
    for name in PikaConnectionLoss.LOGGERS:
        logging.getLogger(name).addFilter(PIKA_CONNECTION_LOSS)


class PikaConnectionLoss(logging.Filter):
    """One warning line, not ~90 lines of traceback at error level, for a connection the
    broker or the network dropped (an idle connection reset, say). pika reports such a loss
    three times: its transport and its connection with tracebacks, then the blocking adapter
    with the cause. The API's publisher and the worker reconnect by themselves, so the
    adapter's line is kept as a warning and the other two are dropped. Anything else pika
    logs (a failed connect, an error that is not a lost connection) passes unchanged."""

    TRANSPORT = "pika.adapters.utils.io_services_utils"
    CONNECTION = "pika.adapters.base_connection"
    ADAPTER = "pika.adapters.blocking_connection"
    LOGGERS = (TRANSPORT, CONNECTION, ADAPTER)

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if record.name == self.TRANSPORT:
            failed = record.exc_info is not None and isinstance(record.exc_info[1], OSError)
            return not (
                message.startswith("Socket EOF")
                or (failed and message.startswith("_AsyncBaseTransport."))
            )
        if record.name == self.CONNECTION:
            return not message.startswith(("connection_lost:", "Transport indicated EOF"))
        if record.name == self.ADAPTER and message.startswith("Unexpected connection close"):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = None
        return True


PIKA_CONNECTION_LOSS = PikaConnectionLoss()


def add_trace_ids(_logger, _method, event_dict: dict) -> dict:
    """structlog processor: a line logged inside a span names its trace and span, so logs and
    traces join (ids as the OTLP exporters write them: lower-case hex)."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


# --------------------------------------------------------------------------- traces


def current_trace_id() -> str | None:
    """The current span's trace id, as 32 lower-case hex digits; None outside a span."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span (what a message carries to continue its
    trace elsewhere); None outside a span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")
