# shellcheck shell=bash
# What scripts/dev and scripts/test share: the virtualenv and the local Postgres and RabbitMQ.
# Sourced, not run. Expects `set -euo pipefail` in the caller.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.eventhorizon-installed"

# The local stack runs on the development default credentials, which EH_ENVIRONMENT=production
# (the default, for deployments) refuses.
export EH_ENVIRONMENT="${EH_ENVIRONMENT:-development}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The interpreter for a new venv: $PYTHON, else python3.11, else a python3 that is >= 3.11.
find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [[ -n "$candidate" ]] || continue
    if command -v "$candidate" >/dev/null 2>&1 \
      && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  die "Python 3.11 or newer not found (install it, or set PYTHON=/path/to/python3.11)"
}

# .venv with the project's dependencies, its dev extras and the embedded ClickHouse engine (the
# default CLICKHOUSE_URL); skipped when pyproject.toml has not changed since the last successful
# install. The project's own modules are not installed (pyproject.toml installs none): the
# processes run from the repository root, and pytest finds them through its `pythonpath`.
ensure_venv() {
  if [[ -e "$VENV" ]] && ! "$PY" -c 'pass' >/dev/null 2>&1; then
    log "$VENV is broken; recreating it"
    rm -rf "$VENV"
  fi
  if [[ ! -x "$PY" ]]; then
    local python
    python="$(find_python)"
    log "creating $VENV with $python"
    "$python" -m venv "$VENV"
  fi
  local want
  want="$(cat "$ROOT/pyproject.toml" <("$PY" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)"
  if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    return 0
  fi
  log "installing the dependencies into .venv (the first time takes a few minutes)"
  (cd "$ROOT" && "$PY" -m pip install --disable-pip-version-check --quiet '.[dev,embedded]')
  printf '%s\n' "$want" >"$STAMP"
}

# Service addresses from config.Settings (env overrides, else defaults): pg_host, pg_port,
# test_pg_host, test_pg_port, amqp_host, amqp_port, s3_host, s3_port, s3_endpoint, s3_bucket,
# ch_host, ch_port, ch_scheme, ch_user, ch_password, ch_database.
load_stack_env() {
  local assignments
  assignments="$("$PY" "$ROOT/scripts/stack.py" shell-env)" || die "could not read the settings"
  eval "$assignments"
}

port_open() { # host port
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" >/dev/null 2>&1
}

is_local() {
  case "$1" in 127.* | localhost | ::1 | "[::1]") return 0 ;; *) return 1 ;; esac
}

wait_port() { # host port seconds what
  local deadline=$((SECONDS + $3))
  until port_open "$1" "$2"; do
    ((SECONDS < deadline)) || die "$4 did not come up on $1:$2 within $3s"
    sleep 0.5
  done
}

# Postgres at host:port, started from the Debian cluster if it is local, installed and down.
ensure_postgres() { # host port
  local host=$1 port=$2
  port_open "$host" "$port" && return 0
  is_local "$host" || die "Postgres is not reachable at $host:$port (see DATABASE_URL)"
  local version
  version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)"
  if [[ -z "$version" ]] || ! command -v pg_ctlcluster >/dev/null 2>&1; then
    die "Postgres is not running on $host:$port and is not installed here" \
      "(apt-get install postgresql, or point DATABASE_URL at a running server)"
  fi
  log "starting Postgres $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start \
    || log "pg_ctlcluster failed; waiting for the port anyway"
  wait_port "$host" "$port" 30 Postgres
}

# RabbitMQ at host:port, started if it is local, installed and down.
ensure_rabbitmq() { # host port
  local host=$1 port=$2
  port_open "$host" "$port" && return 0
  is_local "$host" || die "RabbitMQ is not reachable at $host:$port (see AMQP_URL)"
  command -v rabbitmq-server >/dev/null 2>&1 \
    || die "RabbitMQ is not running on $host:$port and is not installed here" \
      "(apt-get install rabbitmq-server, or point AMQP_URL at a running server)"
  log "starting RabbitMQ"
  rabbitmq-server -detached || log "rabbitmq-server -detached failed; waiting for the port anyway"
  wait_port "$host" "$port" 120 RabbitMQ
}
