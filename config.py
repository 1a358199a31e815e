"""The settings: every environment variable a process reads, declared once (`setting`), read
once at start-up (`Settings.from_env`, `load_settings`) and checked there; the configuration
tables of docs/configuration.md are printed from the same declarations (`settings_table`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import os
import re
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEV_S3_SECRET = "eventhorizon-dev-secret"
DEV_CLICKHOUSE_PASSWORD = "eventhorizon"
# EH_WORKER_CRASH_AT (tests only): where worker.crash_if kills the worker.
WORKER_CRASH_POINT = re.compile(r"(before_commit|after_commit):[0-9]+|before_ack")


class ConfigError(Exception):
    """A setting from the environment is missing or malformed."""


def setting(
    env: str,
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    shown_default: str | None = None,
    tests_only: bool = False,
) -> Any:
    """One setting, declared once: its environment variable, default, bounds and the help text the
    configuration table (docs/configuration.md) is made of (`settings_table`). `shown_default` is
    the table's text for a default that depends on the machine; `tests_only` settings are listed
    apart from the others."""
    return dataclasses.field(
        default=default,
        metadata={
            "env": env,
            "help": help,
            "minimum": minimum,
            "maximum": maximum,
            "shown_default": shown_default,
            "tests_only": tests_only,
        },
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    """All configuration, read once from the environment (`from_env`); `to_env` gives it back
    as variables, for child processes. A bad value is a ConfigError naming the variable."""

    database_url: str = setting(
        "DATABASE_URL",
        "postgresql://postgres@127.0.0.1:5432/eventhorizon",
        "Postgres: jobs, log entries, line errors, the outbox",
    )
    amqp_url: str = setting(
        "AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F", "RabbitMQ, for job messages"
    )
    s3_endpoint_url: str = setting(
        "S3_ENDPOINT_URL",
        "http://127.0.0.1:8333",
        "S3-compatible endpoint (SeaweedFS locally and in compose); path-style, SigV4",
    )
    s3_bucket: str = setting(
        "S3_BUCKET", "eventhorizon", "bucket for uploaded files (`uploads/<job_id>.jsonl`)"
    )
    aws_access_key_id: str = setting(
        "AWS_ACCESS_KEY_ID",
        "eventhorizon",
        "S3 access key (development default; `scripts/dev` gives the same to `weed`)",
    )
    aws_secret_access_key: str = setting(
        "AWS_SECRET_ACCESS_KEY", DEV_S3_SECRET, "S3 secret key (development default)"
    )
    aws_region: str = setting("AWS_REGION", "us-east-1", "region used to sign S3 requests")
    clickhouse_url: str = setting(
        "CLICKHOUSE_URL",
        f"http://eventhorizon:{DEV_CLICKHOUSE_PASSWORD}@127.0.0.1:8123/eventhorizon",
        "where the relay writes: `http(s)://user:password@host:port/database`, a ClickHouse "
        "server of version 25.3 or later (`event_log` uses the JSON column type; `scripts/dev` "
        "starts one, `scripts/clickhouse-server`, with this user and password), or "
        "`chdb:///absolute/dir`, the embedded engine, for a setup of one relay (one process "
        "per directory)",
    )
    clickhouse_read_url: str = setting(
        "CLICKHOUSE_READ_URL",
        "",
        "where the API reads a job's events and histogram: `http(s)://…` of a user who may only "
        "read `event_log` (profile `readonly = 2`: read-only, and the API may still set its "
        "query limits); empty: CLICKHOUSE_URL. These two routes answer `503` while ClickHouse "
        "is unreachable or with `chdb://`; nothing else depends on it",
        shown_default="empty (CLICKHOUSE_URL)",
    )
    explore_timeout_s: float = setting(
        "EH_EXPLORE_TIMEOUT_S",
        5.0,
        "longest a ClickHouse query of the events or histogram routes may run "
        "(`max_execution_time`); past it: `503`",
        minimum=0.1,
        maximum=300,
    )
    explore_queries: int = setting(
        "EH_EXPLORE_QUERIES",
        4,
        "ClickHouse reads (events, histogram; REST and GraphQL) one API process runs at once "
        "(threads); the others wait in their owner's queue",
        minimum=1,
        maximum=64,
    )
    explore_queries_per_owner: int = setting(
        "EH_EXPLORE_QUERIES_PER_OWNER",
        2,
        "of those, how many one owner's reads may hold at once (at most EH_EXPLORE_QUERIES): "
        "the rest stay free for other owners however many reads one sends",
        minimum=1,
        maximum=64,
    )
    explore_queue_per_owner: int = setting(
        "EH_EXPLORE_QUEUE_PER_OWNER",
        256,
        "ClickHouse reads one owner may have waiting for a slot in one API process; past it "
        "a read is refused with `429` and `Retry-After` (a GraphQL operation makes at most "
        "200 reads, so one alone always fits)",
        minimum=1,
    )
    explore_wait_s: float = setting(
        "EH_EXPLORE_WAIT_S",
        30.0,
        "longest a ClickHouse read waits for a slot; past it: `503` with `Retry-After`",
        minimum=0.1,
        maximum=600,
    )
    export_max_rows: int = setting(
        "EH_EXPORT_MAX_ROWS",
        1_000_000,
        "most events one `GET /api/v1/events/export` streams; past it the export ends with a "
        "last line saying so",
        minimum=1,
        maximum=100_000_000,
    )
    queue: str = setting(
        "EH_QUEUE",
        "eventhorizon.jobs",
        "RabbitMQ job queue; refused messages go to `<queue>.dead`, duplicates of a job another "
        "worker is on wait 10 s in `<queue>.retry`",
    )
    environment: str = setting(
        "EH_ENVIRONMENT",
        "production",
        "`environment` of the service's own job lifecycle events. With `production` every "
        "process refuses to start on the development default credentials (the S3 secret "
        "below, RabbitMQ's `guest`, ClickHouse's `eventhorizon`); `scripts/dev` and the tests "
        "say `development`",
    )
    http_host: str = setting(
        "EH_HTTP_HOST", "127.0.0.1", "API bind address (`0.0.0.0` in the container image)"
    )
    http_port: int = setting("EH_HTTP_PORT", 8080, "API port", minimum=0, maximum=65535)
    auth: str = setting(
        "EH_AUTH",
        "token",
        "`token`: every `/api/v1/*` and `/ws/*` request needs a bearer token (see "
        "[Access](access.md#access)); `none`: single-user mode for a laptop, no tokens, every job "
        "visible, refused unless `EH_HTTP_HOST` is a loopback address",
    )
    allowed_hosts: str = setting(
        "EH_ALLOWED_HOSTS",
        "127.0.0.1,localhost,::1",
        "comma-separated host names the API answers to (the `Host` header, port aside); "
        "others get 400, so a DNS-rebinding page cannot reach it. `*` allows any",
    )
    db_wait_s: float = setting(
        "EH_DB_WAIT_S",
        5.0,
        "longest an API request waits for a Postgres connection from its pool before it is "
        "answered 503",
        minimum=0.1,
        maximum=60,
    )
    ready_timeout_s: float = setting(
        "EH_READY_TIMEOUT_S",
        3.0,
        "`/readyz` (and the API's metrics): how long each dependency's check may take before "
        "it counts as unavailable",
        minimum=0.1,
        maximum=60,
    )
    upload_idle_timeout_s: float = setting(
        "EH_UPLOAD_IDLE_TIMEOUT_S",
        30.0,
        "an upload whose body sends nothing for this long is dropped (408) and its partial "
        "object removed",
        minimum=0.1,
    )
    request_head_timeout_s: float = setting(
        "EH_REQUEST_HEAD_TIMEOUT_S",
        10.0,
        "a request's line and headers must arrive in full within this many seconds of their "
        "first byte, else the connection is answered 408 and closed (a client sending one "
        "header every few seconds holds nothing longer)",
        minimum=0.1,
        maximum=300,
    )
    keepalive_timeout_s: float = setting(
        "EH_KEEPALIVE_TIMEOUT_S",
        30.0,
        "a connection with no request under way is closed after this many seconds, one that "
        "never sends a byte included",
        minimum=0.1,
        maximum=3600,
    )
    auth_failures_per_minute: int = setting(
        "EH_AUTH_FAILURES_PER_MINUTE",
        30,
        "requests with a missing or wrong token one client address (an IPv6 client's /64) may "
        "make: that many at once, then one more each 60/N s; past it every request needing a "
        "token is answered 429 with `Retry-After`, before any look-up",
        minimum=1,
    )
    trusted_proxies: str = setting(
        "EH_TRUSTED_PROXIES",
        "",
        "addresses or networks (CIDR) of "
        "proxies whose `X-Forwarded-For` the audit trail believes (its right-most address not in "
        "them is the client; [Audit trail](access.md#audit-trail))",
        shown_default="empty (none)",
    )
    audit_denied_per_minute: int = setting(
        "EH_AUDIT_DENIED_PER_MINUTE",
        10,
        "`audit.access.denied` "
        "events per client address a minute; the rest of its minute's refusals are counted in one "
        "`audit.access.denied_suppressed`",
        minimum=1,
        maximum=1000,
    )
    audit_retention_days: int = setting(
        "EH_AUDIT_RETENTION_DAYS",
        400,
        "how long `audit.*` events are kept: a job's deletion and data retention never remove them",
        minimum=1,
    )
    loop_warn_s: float = setting(
        "EH_LOOP_WARN_S",
        0.05,
        "a callback holding the API's event loop for this much CPU time or more is logged "
        "(`loop.held`, with its request's id); all from 10 ms are counted in "
        "`eventhorizon_event_loop_hold_seconds`",
        minimum=0.001,
    )
    max_uploads: int = setting(
        "EH_MAX_UPLOADS",
        16,
        "uploads one API process receives at once; more get 503 with `Retry-After`. Each holds "
        "at most one 8 MiB part, so this caps upload memory at about 140 MiB",
        minimum=1,
    )
    max_uploads_per_owner: int = setting(
        "EH_MAX_UPLOADS_PER_OWNER",
        4,
        "uploads one owner may have running at once; more get 429 with `Retry-After`",
        minimum=1,
    )
    max_websockets: int = setting(
        "EH_MAX_WEBSOCKETS", 4096, "WebSockets one API process holds open; more get 503", minimum=1
    )
    max_websockets_per_owner: int = setting(
        "EH_MAX_WEBSOCKETS_PER_OWNER",
        1024,
        "WebSockets one owner may hold open on one API process; more get 429",
        minimum=1,
    )
    graphql_init_timeout_s: float = setting(
        "EH_GRAPHQL_INIT_TIMEOUT_S",
        10.0,
        "a GraphQL WebSocket must send `connection_init` within this long of the upgrade, "
        "whatever it sends before (a `ping` too), or it is closed with 4408; until then it "
        "holds one of the process's EH_MAX_WEBSOCKETS",
        minimum=0.1,
        maximum=300,
    )
    token_recheck_s: float = setting(
        "EH_TOKEN_RECHECK_S",
        30.0,
        "how often the API looks up the tokens of its open WebSockets and closes (4403) those "
        "of revoked ones: the backstop to `tokens revoke`'s notification, which closes them at "
        "once",
        minimum=0.5,
        maximum=3600,
    )
    retention_days: int = setting(
        "EH_RETENTION_DAYS",
        0,
        "a job uploaded more than this many days ago is removed everywhere by the retention "
        "sweep, unless an admin set its owner's own ([Retention](operations.md#retention)); `0`: "
        "kept for ever",
        minimum=0,
        maximum=36500,
        shown_default="`0` (kept for ever)",
    )
    retention_batch: int = setting(
        "EH_RETENTION_BATCH",
        100,
        "the retention sweep reads this many expired jobs at a time "
        "(each then removed in a short transaction of its own)",
        minimum=1,
        maximum=10_000,
    )
    retention_interval_s: float = setting(
        "EH_RETENTION_INTERVAL_S",
        3600.0,
        "each API process sweeps about this often (±25 % "
        "jitter; one sweep at a time across every process, by lock); `0`: never by itself (run "
        "`retention sweep` from cron)",
        minimum=0,
        maximum=7 * 86400,
    )
    max_upload_bytes: int = setting(
        "EH_MAX_UPLOAD_BYTES",
        1024**3,
        "largest accepted file; larger gets 413",
        minimum=1,
        shown_default="`1073741824` (1 GiB)",
    )
    max_decoded_bytes: int = setting(
        "EH_MAX_DECODED_BYTES",
        64 * 1024**3,
        "worker: most bytes one compressed upload (`.gz`, `.zst`) may decode to; past it the "
        "job fails, naming this limit",
        minimum=1,
        shown_default="`68719476736` (64 GiB)",
    )
    max_decode_ratio: float = setting(
        "EH_MAX_DECODE_RATIO",
        200.0,
        "worker: most decoded bytes per compressed byte read, once 1 MiB is decoded; past it "
        "the job fails as a compression bomb, naming this limit (0: no ratio limit)",
        minimum=0,
    )
    line_delay_max_s: float = setting(
        "EH_LINE_DELAY_MAX_S",
        0.0,
        "worker demo mode: a random delay of up to this many seconds after each line (the "
        "original brief's mode is `1.0`)",
        minimum=0,
    )
    max_context_paths: int = setting(
        "EH_MAX_CONTEXT_PATHS",
        1000,
        "worker: most paths (keys holding a value, nested keys counted) one line's `context` "
        "may have; a line with more is an invalid line with that reason, and never reaches "
        "ClickHouse (whose JSON type keeps files per path)",
        minimum=1,
        maximum=100_000,
    )
    batch_lines: int = setting(
        "EH_BATCH_LINES",
        5000,
        "worker: most lines per committed batch (one transaction, one checkpoint)",
        minimum=1,
    )
    max_attempts: int = setting(
        "EH_MAX_ATTEMPTS",
        5,
        "worker: attempts at a job before it is marked `failed`. A crash counts (it may be the "
        "job's doing); a clean stop (SIGTERM) and an attempt that failed because storage or the "
        "database was unreachable do not: those jobs wait out the outage",
        minimum=1,
    )
    requeue_after_s: float = setting(
        "EH_REQUEUE_AFTER_S",
        60.0,
        "worker: a job still `queued` this long is re-published once its message cannot be "
        "waiting any more (the queue is empty, or a job uploaded this much after its last "
        "publish has started)",
        minimum=0,
    )
    relay_batch_max_rows: int = setting(
        "RELAY_BATCH_MAX_ROWS", 10_000, "relay: most events per ClickHouse insert", minimum=1
    )
    relay_batch_max_wait_s: float = setting(
        "RELAY_BATCH_MAX_WAIT_S",
        1.0,
        "relay: how long a small batch may wait to fill, from its oldest event",
        minimum=0,
    )
    relay_poll_s: float = setting(
        "RELAY_POLL_S", 5.0, "relay: wake-up interval when no NOTIFY arrives", minimum=0
    )
    relay_lanes: int = setting(
        "RELAY_LANES",
        2,
        "relay: batches in flight at once, each lane with its own connections; while one "
        "lane's batch is in ClickHouse, another claims and reads the next from Postgres",
        minimum=1,
        maximum=8,
    )
    metrics_allow: str = setting(
        "EH_METRICS_ALLOW",
        "127.0.0.1/32,::1/128",
        "comma-separated networks (CIDR) whose peers may read the API's `GET /metrics` "
        "(no token; checked on the connection's peer address, never on a header); others get "
        "403. In compose: the containers' network, for Prometheus",
    )
    metrics_host: str = setting(
        "EH_METRICS_HOST",
        "127.0.0.1",
        "where the worker and the relay serve their `/metrics` (`0.0.0.0` in compose, for "
        "Prometheus; the API serves it on its own port)",
    )
    worker_metrics_port: int = setting(
        "WORKER_METRICS_PORT",
        9101,
        "worker: port of its `/metrics`; `0` turns it off "
        "(several workers on one host need one port each)",
        minimum=0,
        maximum=65535,
    )
    relay_metrics_port: int = setting(
        "RELAY_METRICS_PORT",
        9102,
        "relay: port of its `/metrics`; `0` turns it off",
        minimum=0,
        maximum=65535,
    )
    otel_endpoint: str = setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "",
        "OpenTelemetry's standard variable: traces are exported over OTLP/HTTP to "
        "`<this>/v1/traces` (e.g. `http://127.0.0.1:4318`); empty: nothing is exported. The "
        "SDK reads the other standard `OTEL_*` variables itself (`OTEL_SERVICE_NAME`, "
        "`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, "
        "`OTEL_EXPORTER_OTLP_HEADERS`, …)",
        shown_default="empty (off)",
    )
    otel_traces_endpoint: str = setting(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "",
        "the full URL traces go to, instead of the one above (OpenTelemetry's standard variable)",
        shown_default="empty (the one above)",
    )
    log_format: str = setting(
        "LOG_FORMAT",
        "console" if sys.stdout.isatty() else "json",
        "`json` (one JSON object per line) or `console`",
        shown_default="`console` on a terminal, else `json`",
    )
    log_level: str = setting("LOG_LEVEL", "INFO", "a logging level name")
    test_admin_dsn: str = setting(
        "EH_TEST_ADMIN_DSN",
        "postgresql://postgres@127.0.0.1:5432/test",
        "where the tests create their own databases (migrated from a template; each test "
        "has one to itself, emptied between tests)",
        tests_only=True,
    )
    test_seed: int = setting(
        "EH_TEST_SEED",
        0,
        "seeds the tests' random choices (which worker a fault test kills, at what line; the "
        "fuzz test's cases); 0: a new seed each run (the fuzz test's fixed one in CI), printed "
        "with a failing test's output so that run can be replayed",
        minimum=0,
        tests_only=True,
    )
    relay_crash_after_insert: bool = setting(
        "EH_RELAY_CRASH_AFTER_INSERT",
        False,
        "fault injection: `relay.py` SIGKILLs itself after its first ClickHouse insert, before "
        "the Postgres commit",
        tests_only=True,
    )
    stop_grace_s: float = setting(
        "EH_STOP_GRACE_S",
        8.0,
        "after SIGTERM or SIGINT, how long `worker.py` and `relay.py` let the work in hand "
        "commit or give up before they leave as a crash would (stopping.py; a second signal "
        "leaves at once). At most 8 s: the systemd units and compose stop them 2 s later",
        minimum=0.1,
        maximum=8.0,
    )
    retry_later_s: float = setting(
        "EH_RETRY_LATER_S",
        10.0,
        "how long a duplicate of a job another worker holds waits in `<queue>.retry` before it "
        "comes back; shortened by the tests",
        minimum=0.1,
        tests_only=True,
    )
    worker_crash_at: str = setting(
        "EH_WORKER_CRASH_AT",
        "",
        "fault injection: `worker.py` SIGKILLs itself at one point of a job: `before_commit:N` "
        "(the batch that reaches line N written, not committed), `after_commit:N` (that batch "
        "committed, the next not begun) or `before_ack` (a job completed, its message not yet "
        "acked)",
        shown_default="empty (off)",
        tests_only=True,
    )

    def __post_init__(self):
        if self.auth not in ("token", "none"):
            raise ConfigError(f"EH_AUTH must be token or none, got {self.auth!r}")
        if self.log_format not in ("json", "console"):
            raise ConfigError(f"LOG_FORMAT must be json or console, got {self.log_format!r}")
        if self.log_level not in logging.getLevelNamesMapping():
            raise ConfigError(f"LOG_LEVEL must be a logging level name, got {self.log_level!r}")
        check_clickhouse_url(self.clickhouse_url)
        if self.clickhouse_read_url:
            check_clickhouse_url(self.clickhouse_read_url, "CLICKHOUSE_READ_URL")
        parse_networks(self.metrics_allow, "EH_METRICS_ALLOW")
        parse_networks(self.trusted_proxies, "EH_TRUSTED_PROXIES")
        if self.worker_crash_at and not WORKER_CRASH_POINT.fullmatch(self.worker_crash_at):
            raise ConfigError(
                "EH_WORKER_CRASH_AT must be before_commit:N, after_commit:N or "
                f"before_ack, got {self.worker_crash_at!r}"
            )

    def check_deployable(self) -> None:
        """Refuse, in production, credentials that are the development defaults (every
        process checks this at start; see load_settings)."""
        if self.environment == "production" and (dev := self.development_credentials()):
            raise ConfigError(
                f"EH_ENVIRONMENT is production, but these are still the "
                f"development defaults: {', '.join(dev)}; set real credentials "
                "(or EH_ENVIRONMENT=development on a development machine)"
            )

    def development_credentials(self) -> list[str]:
        """The credentials that are still the development defaults, by variable."""
        found = []
        if self.aws_secret_access_key == DEV_S3_SECRET:
            found.append("AWS_SECRET_ACCESS_KEY")
        if urlsplit(self.amqp_url).password == "guest":
            found.append("the password in AMQP_URL")
        if urlsplit(self.clickhouse_url).password == DEV_CLICKHOUSE_PASSWORD:
            found.append("the password in CLICKHOUSE_URL")
        if urlsplit(self.clickhouse_read_url).password == DEV_CLICKHOUSE_PASSWORD:
            found.append("the password in CLICKHOUSE_READ_URL")
        return found

    @property
    def metrics_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """Who may read the API's /metrics (EH_METRICS_ALLOW)."""
        return parse_networks(self.metrics_allow, "EH_METRICS_ALLOW")

    @property
    def allowed_host_names(self) -> frozenset[str]:
        return frozenset(
            h.strip().lower().strip("[]") for h in self.allowed_hosts.split(",") if h.strip()
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values = {}
        for field in dataclasses.fields(cls):
            raw = env.get(field.metadata["env"], "").strip()
            if raw:
                values[field.name] = parse_setting(field, raw)
        values["log_format"] = values.get("log_format", cls.log_format).lower()
        values["log_level"] = values.get("log_level", cls.log_level).upper()
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables: what gives a child process the same."""
        return {
            field.metadata["env"]: format_setting(getattr(self, field.name))
            for field in dataclasses.fields(self)
        }


def parse_setting(field: dataclasses.Field, raw: str) -> Any:
    """A setting's value from its variable's text, checked against its type and bounds."""
    name, kind = field.metadata["env"], SETTING_TYPES[field.type]
    if kind is str:
        return raw
    try:
        value = kind(raw)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {SETTING_TYPE_NAMES[field.type]}, got {raw!r}") from None
    low, high = field.metadata["minimum"], field.metadata["maximum"]
    if low is not None and value < low:
        raise ConfigError(f"{name} must be >= {low}, got {raw!r}")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be <= {high}, got {raw!r}")
    return value


def parse_networks(
    text: str, name: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated networks (`10.0.0.0/8`, `::1/128`; a bare address is its /32 or /128)."""
    try:
        return tuple(
            ipaddress.ip_network(n.strip(), strict=False) for n in text.split(",") if n.strip()
        )
    except ValueError as exc:
        raise ConfigError(
            f"{name} must be comma-separated networks such as 10.0.0.0/8: {exc}"
        ) from None


def parse_flag(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def format_setting(value: Any) -> str:
    return ("1" if value else "0") if isinstance(value, bool) else str(value)


SETTING_TYPES = {"str": str, "int": int, "float": float, "bool": parse_flag}
SETTING_TYPE_NAMES = {"int": "an int", "float": "a float", "bool": "1 or 0"}


def settings_table(*, tests_only: bool = False) -> str:
    """The configuration table of docs/configuration.md (or the tests-only one), from the
    declarations."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for field in dataclasses.fields(Settings):
        meta = field.metadata
        if meta["tests_only"] != tests_only:
            continue
        shown = meta["shown_default"] or f"`{format_setting(field.default)}`"
        rows.append(f"| `{meta['env']}` | {shown} | {meta['help']} |")
    return "\n".join(rows)


def check_clickhouse_url(url: str, name: str = "CLICKHOUSE_URL") -> None:
    """A ClickHouse URL is `chdb:///absolute/dir` or `http(s)://user:password@host:port/database`."""
    parts = urlsplit(url)
    if parts.scheme == "chdb":
        if parts.netloc or not parts.path.startswith("/"):
            raise ConfigError(f"{name} for chDB must be chdb:///absolute/path, got {url!r}")
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be chdb:///path or http(s)://host, got {redact_url(url)!r}")


def redact_url(url: str) -> str:
    """The URL with its password, if any, replaced by ***: fit for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def load_settings(*, service: bool = True) -> Settings:
    """Settings for a process entry point: a bad value stops the process with a clear message.
    A service (not a one-off command such as `tokens` or `migrate`) also refuses development
    credentials in production."""
    try:
        settings = Settings.from_env()
        if service:
            settings.check_deployable()
        return settings
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
