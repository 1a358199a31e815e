"""What the processes share (core): the settings table, the outage predicate, the backoff."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys

import botocore.exceptions
import psycopg
import psycopg_pool
import pytest

import config
import core

# --------------------------------------------------------------------------- settings


def test_the_configuration_tables_are_the_declared_settings():
    """Each setting is declared once; the tables of docs/configuration.md are printed from the
    declarations (scripts/stack.py settings-table), so a setting added, renamed or with a new
    default and not documented fails here."""
    doc = (core.ROOT / "docs" / "configuration.md").read_text()
    assert config.settings_table() in doc
    assert config.settings_table(tests_only=True) in doc
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", doc, re.MULTILINE))
    declared = {f.metadata["env"] for f in dataclasses.fields(config.Settings)}
    assert documented == declared


def test_settings_round_trip_through_the_environment():
    settings = dataclasses.replace(
        config.Settings(),
        http_port=9999,
        line_delay_max_s=0.25,
        relay_crash_after_insert=True,
        log_format="json",
        worker_crash_at="after_commit:500",
    )
    assert config.Settings.from_env(settings.to_env()) == settings


def test_settings_read_types_and_normalise_case():
    settings = config.Settings.from_env(
        {
            "EH_BATCH_LINES": " 40 ",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "JSON",
            "EH_RELAY_CRASH_AFTER_INSERT": "1",
            "RELAY_POLL_S": "0.5",
            "EH_QUEUE": "",
        }
    )
    assert (settings.batch_lines, settings.log_level, settings.log_format) == (40, "DEBUG", "json")
    assert settings.relay_crash_after_insert is True and settings.relay_poll_s == 0.5
    assert settings.queue == "eventhorizon.jobs"  # empty means the default


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EH_BATCH_LINES": "ten"}, "EH_BATCH_LINES must be an int"),
        ({"EH_BATCH_LINES": "0"}, "EH_BATCH_LINES must be >= 1"),
        ({"EH_HTTP_PORT": "70000"}, "EH_HTTP_PORT must be <= 65535"),
        ({"RELAY_POLL_S": "-1"}, "RELAY_POLL_S must be >= 0"),
        ({"RELAY_LANES": "9"}, "RELAY_LANES must be <= 8"),
        ({"RELAY_LANES": "0"}, "RELAY_LANES must be >= 1"),
        ({"RELAY_POLL_S": "soon"}, "RELAY_POLL_S must be a float"),
        ({"RELAY_POLL_S": "nan"}, "RELAY_POLL_S must be a float"),
        ({"EH_REQUEUE_AFTER_S": "inf"}, "EH_REQUEUE_AFTER_S must be a float"),
        ({"EH_RELAY_CRASH_AFTER_INSERT": "maybe"}, "EH_RELAY_CRASH_AFTER_INSERT must be 1 or 0"),
        ({"EH_WORKER_CRASH_AT": "before_commit"}, "EH_WORKER_CRASH_AT must be before_commit:N"),
        ({"EH_WORKER_CRASH_AT": "sometimes"}, "EH_WORKER_CRASH_AT must be before_commit:N"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be json or console"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be a logging level name"),
        ({"CLICKHOUSE_URL": "chdb://relative/dir"}, "chdb:///absolute/path"),
        ({"CLICKHOUSE_URL": "ftp://u:hunter2@host/db"}, "must be chdb:///path or http(s)://host"),
        (
            {"EH_TRUSTED_PROXIES": "10.0.0.0/8, proxy.local"},
            "EH_TRUSTED_PROXIES must be comma-separated",
        ),
        ({"EH_AUDIT_DENIED_PER_MINUTE": "0"}, "EH_AUDIT_DENIED_PER_MINUTE must be >= 1"),
        ({"EH_AUDIT_RETENTION_DAYS": "0"}, "EH_AUDIT_RETENTION_DAYS must be >= 1"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_variable(env, message):
    with pytest.raises(config.ConfigError) as info:
        config.Settings.from_env(env)
    assert message in str(info.value)
    assert "hunter2" not in str(info.value)  # a URL's password never reaches the message


# --------------------------------------------------------------------------- outages


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (psycopg.OperationalError("connection lost"), True),
        (psycopg.errors.AdminShutdown("terminating connection"), True),
        (ConnectionResetError(), True),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3"), True),
        (
            botocore.exceptions.ClientError(
                {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}},
                "GetObject",
            ),
            True,
        ),
        (
            botocore.exceptions.ClientError(
                {"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}},
                "GetObject",
            ),
            False,
        ),
        (psycopg.errors.ProgramLimitExceeded("index row size exceeds maximum"), False),
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), False),
        (psycopg.errors.DeadlockDetected("deadlock detected"), True),
        (psycopg.errors.DiskFull("could not extend file"), True),
        (psycopg.errors.DataError("invalid input"), False),
        (KeyError("a bug"), False),
    ],
)
def test_only_outages_are_retried_without_counting_an_attempt(exc, transient):
    """The one outage predicate all three processes use: the worker retries such a job
    without counting an attempt, the relay backs off, the API answers 503."""
    assert core.is_outage(exc) is transient


def test_a_pool_that_cannot_hand_out_a_connection_is_an_outage():
    assert core.is_outage(psycopg_pool.PoolTimeout("couldn't get a connection"))
    assert core.is_outage(psycopg.InterfaceError("the connection is closed"))


def test_backoff_doubles_up_to_its_cap_with_jitter_and_resets():
    backoff = core.Backoff(first=0.5, cap=4.0)
    delays = [backoff.next() for _ in range(6)]
    for delay, nominal in zip(delays, [0.5, 1, 2, 4, 4, 4], strict=True):
        assert 0.8 * nominal <= delay <= nominal
    backoff.reset()
    assert backoff.next() <= 0.5


# --------------------------------------------------------------------------- the house


PROCESSES = {"eventhorizon", "worker", "relay"}


def project_imports(module: str) -> set[str]:
    """The project's own modules that `module` imports."""
    tree = ast.parse((core.ROOT / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & project_modules()


def project_modules() -> set[str]:
    return {p.stem for p in core.ROOT.glob("*.py")}


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in the import graph, as the modules along it; None if there is none."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for imported in sorted(graph[module]):
            if cycle := visit(imported, [*path, module]):
                return cycle
        done.add(module)
        return None

    return next(filter(None, (visit(m, []) for m in sorted(graph))), None)


def test_modules_import_what_they_need_without_cycles():
    """Each module imports the project modules it uses; the graph has no cycle, config (the
    settings) imports nothing of ours and core (what everything shares) nothing but config,
    and no module imports a process file (the processes are the top of the graph)."""
    graph = {module: project_imports(module) for module in project_modules()}
    assert import_cycle(graph) is None, f"import cycle: {' -> '.join(import_cycle(graph))}"
    assert graph["config"] == set() and graph["core"] <= {"config"}
    for module, imports in graph.items():
        assert not imports & PROCESSES, f"{module} imports a process file: {imports & PROCESSES}"


def test_the_cycle_check_finds_a_cycle():
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b"}, "b": set()}) is None


REAL_CLICKHOUSE = {"CLICKHOUSE_URL": "https://eh:pw@ch:8443/eh"}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "AWS_SECRET_ACCESS_KEY, the password in AMQP_URL, the password in CLICKHOUSE_URL;"),
        ({"AWS_SECRET_ACCESS_KEY": "s3cret", **REAL_CLICKHOUSE}, ": the password in AMQP_URL;"),
        ({"AMQP_URL": "amqp://eh:pw@mq/%2F", **REAL_CLICKHOUSE}, ": AWS_SECRET_ACCESS_KEY;"),
        (
            {"AMQP_URL": "amqp://eh:pw@mq/%2F", "AWS_SECRET_ACCESS_KEY": "s3cret"},
            ": the password in CLICKHOUSE_URL;",
        ),
    ],
)
def test_production_refuses_the_development_credentials(env, named):
    with pytest.raises(config.ConfigError) as info:
        config.Settings.from_env({"EH_ENVIRONMENT": "production", **env}).check_deployable()
    assert "still the development defaults" in str(info.value) and named in str(info.value)
    real = {"AWS_SECRET_ACCESS_KEY": "s3cret", "AMQP_URL": "amqp://eh:pw@mq/%2F", **REAL_CLICKHOUSE}
    config.Settings.from_env({"EH_ENVIRONMENT": "production", **real}).check_deployable()
    config.Settings.from_env({"EH_ENVIRONMENT": "development"}).check_deployable()


@pytest.mark.parametrize("script", ["eventhorizon.py", "worker.py", "relay.py"])
def test_every_process_refuses_to_start_on_development_credentials_in_production(script):
    env = {**os.environ, "EH_ENVIRONMENT": "production"}
    env.pop("AWS_SECRET_ACCESS_KEY", None)
    done = subprocess.run(
        [sys.executable, str(core.ROOT / script)],
        env=env,
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "configuration error: EH_ENVIRONMENT is production" in done.stderr
