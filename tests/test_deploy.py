"""The deployment files, with no service running: docker-compose.yml against the compose
specification's schema and the settings the code reads, the systemd units through
`systemd-analyze verify`, and what the image leaves out (the embedded ClickHouse engine).

`systemd-analyze` comes with Debian's `systemd` package. Where it is missing the unit check is
skipped, so a developer without it still runs the rest; with CI=true (as `.ci/run` sets, after
installing it) it fails instead.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tomllib

import jsonschema
import pytest
import yaml

import config
from helpers import ROOT, in_ci

COMPOSE = ROOT / "docker-compose.yml"
# Vendored: see tests/data/README.md for where it comes from.
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
SYSTEMD = ROOT / "deploy" / "systemd"
ENV_EXAMPLE = SYSTEMD / "eventhorizon.env.example"
INSTALL_DIR = "/opt/eventhorizon"  # where the units expect the source tree and its .venv
APP_SERVICES = {"createbucket", "migrate", "api", "worker", "relay"}
# The stop timeout each unit gives its process, and the grace period the process honours.
STOP_GRACE_MAX_S = next(
    f.metadata["maximum"] for f in dataclasses.fields(config.Settings) if f.name == "stop_grace_s"
)  # EH_STOP_GRACE_S at most
UNIT_GRACE_S = {
    "eventhorizon-worker@.service": STOP_GRACE_MAX_S + 2,  # gone within 10 s
    "eventhorizon-relay@.service": STOP_GRACE_MAX_S + 2,
    "eventhorizon-api.service": 5,
}  # aiohttp's shutdown_timeout in eventhorizon.main


def service_settings() -> set[str]:
    """The variables config.Settings declares for the services (not the tests-only ones)."""
    return {
        f.metadata["env"]
        for f in dataclasses.fields(config.Settings)
        if not f.metadata["tests_only"]
    }


def compose_file() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# --------------------------------------------------------------------------- compose


def test_the_compose_file_follows_the_compose_specification():
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in validator.iter_errors(compose_file())
    ]
    assert errors == []


def test_the_schema_catches_a_wrong_compose_file():
    """The vendored schema is strict enough to matter: a misspelt key is an error."""
    doc = compose_file()
    doc["services"]["api"]["helthcheck"] = doc["services"]["api"].pop("healthcheck")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    assert not jsonschema.Draft7Validator(schema).is_valid(doc)


def test_the_app_services_set_only_settings_the_code_reads():
    """Every variable given to a container of the app's image is a setting of config.Settings
    (a renamed or misspelt one would be silently ignored), and the values parse."""
    doc = compose_file()
    image = doc["x-app"]["image"]
    services = {name: s for name, s in doc["services"].items() if s.get("image") == image}
    assert set(services) == APP_SERVICES
    for name, service in services.items():
        env = {key: str(value) for key, value in service["environment"].items()}
        assert set(env) <= service_settings(), f"{name}: {set(env) - service_settings()}"
        config.Settings.from_env(env)


def test_every_image_is_pinned_to_a_release():
    for name, service in compose_file()["services"].items():
        tag = service["image"].rpartition(":")[2] if ":" in service["image"] else ""
        assert tag and tag != "latest", f"{name}: {service['image']} is not pinned"


def test_the_api_is_published_on_loopback_only():
    assert compose_file()["services"]["api"]["ports"] == ["127.0.0.1:8080:8080"]


# --------------------------------------------------------------------------- systemd


def unit_settings(unit: str) -> dict[str, list[str]]:
    """A unit file's `Key=value` lines, by key."""
    found: dict[str, list[str]] = {}
    for key, value in re.findall(r"^(\w+)=(.*)$", (SYSTEMD / unit).read_text(), re.MULTILINE):
        found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize("unit", sorted(UNIT_GRACE_S))
def test_each_unit_restarts_on_failure_hardened_and_waits_out_its_process(unit):
    keys = unit_settings(unit)
    assert keys["Restart"] == ["on-failure"]
    assert keys["EnvironmentFile"] == ["/etc/eventhorizon/eventhorizon.env"]
    assert keys["User"] == ["eventhorizon"]
    assert keys["NoNewPrivileges"] == ["yes"] and keys["ProtectSystem"] == ["strict"]
    assert float(keys["TimeoutStopSec"][0]) > UNIT_GRACE_S[unit]


def test_only_the_relay_writes_and_only_to_its_state_directory():
    """The embedded engine's directory (CLICKHOUSE_URL=chdb:///var/lib/eventhorizon/…);
    the API and the worker write no file."""
    relay_unit = unit_settings("eventhorizon-relay@.service")
    assert relay_unit["ReadWritePaths"] == ["/var/lib/eventhorizon"]
    for unit in ("eventhorizon-api.service", "eventhorizon-worker@.service"):
        assert "ReadWritePaths" not in unit_settings(unit)


def test_the_environment_file_example_sets_only_settings_and_is_deployable():
    env = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert set(env) <= service_settings(), set(env) - service_settings()
    config.Settings.from_env(env).check_deployable()


def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path):
    """`systemd-analyze verify` checks every key and that ExecStart's program exists, so the
    units are verified as installed: copies whose INSTALL_DIR is a scratch directory holding
    .venv/bin/python. Any warning fails the test, as a misspelt key is only a warning."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        reason = "systemd-analyze not found: apt-get install systemd (Debian's package)"
        if in_ci():
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    install = tmp_path / "install"
    (install / ".venv" / "bin").mkdir(parents=True)
    (install / ".venv" / "bin" / "python").symlink_to(sys.executable)
    units = []
    for unit in sorted(SYSTEMD.glob("*.service")):
        units.append(tmp_path / unit.name)
        units[-1].write_text(unit.read_text().replace(INSTALL_DIR, str(install)))
    assert {u.name for u in units} == set(UNIT_GRACE_S)
    done = subprocess.run(
        [analyze, "verify", *map(str, units)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (0, "")


# --------------------------------------------------------------------------- the image


def test_dependencies_are_pinned_and_the_embedded_engine_is_an_extra():
    """The image installs `dependencies` only: the embedded engine (chdb, with pandas and
    pyarrow, ~800 MB) is the `embedded` extra, which dev installs add."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    every = project["dependencies"] + [d for group in extras.values() for d in group]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[0-9][A-Za-z0-9.]*", d) for d in every), every
    assert not any("chdb" in d for d in project["dependencies"])
    assert {"chdb==4.4.0", "chdb-core==26.9.0"} <= set(extras["embedded"])
    assert "'.[dev,embedded]'" in (ROOT / "scripts" / "lib.sh").read_text()


def test_installing_the_project_installs_its_dependencies_and_no_module():
    """An application, not a library: no `core`, `lines`, … in site-packages, where they would
    shadow or be shadowed by other distributions' top-level names. The processes run from the
    source tree (the image's /app, the units' WorkingDirectory, scripts/dev's root), and
    pytest finds the modules through `pythonpath`."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"] == {"py-modules": [], "packages": []}
    assert "." in pyproject["tool"]["pytest"]["ini_options"]["pythonpath"]
    assert "install --no-cache-dir --no-deps ." not in (ROOT / "Dockerfile").read_text()
    assert (
        "pip install --disable-pip-version-check --quiet '.[dev,embedded]'"
        in (ROOT / "scripts" / "lib.sh").read_text()
    )  # not -e: nothing to edit in place


def test_the_relay_refuses_chdb_without_the_embedded_engine(tmp_path):
    """As in the image: chdb cannot be imported (a None in sys.modules makes it so)."""
    code = (
        "import sys; sys.modules['chdb'] = None; sys.argv = ['relay.py']; "
        "import relay; sys.exit(relay.main())"
    )
    env = {
        "CLICKHOUSE_URL": f"chdb://{tmp_path}/clickhouse",
        "EH_ENVIRONMENT": "development",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, timeout=60, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "configuration error: CLICKHOUSE_URL is chdb://, but the embedded engine" in done.stderr
    assert "pip install '.[embedded]'" in done.stderr


def test_the_observability_stack_is_an_optional_profile_with_its_files_present():
    """`docker compose up` starts the app alone; `--profile observability` adds Prometheus,
    Grafana and Jaeger, whose UIs are published on loopback only, and whose mounted
    configuration (deploy/prometheus, deploy/grafana) exists."""
    services = compose_file()["services"]
    observability = {name for name, s in services.items() if s.get("profiles")}
    assert observability == {"prometheus", "grafana", "jaeger"}
    for name in observability:
        service = services[name]
        assert service["profiles"] == ["observability"]
        assert all(port.startswith("127.0.0.1:") for port in service.get("ports", [])), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"
