"""The fork server (tests/forkserver.py) runs a script as `python <script>` would: its exit
status, its uncaught exception, its signals, its environment and its atexit handlers."""

from __future__ import annotations

import signal
import subprocess
import textwrap

import pytest

from forkserver import ForkServer
from helpers import wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("forkserver"))
    server.start({"PATH": "/usr/bin:/bin"})
    yield server
    server.stop()


def run(server, tmp_path, body: str, env: dict | None = None):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    log_path = tmp_path / "script.log"
    return server.fork([str(script)], env or {}, tmp_path, log_path), log_path


@pytest.mark.parametrize(
    ("body", "status", "logged"),
    [
        ("print('hello')", 0, "hello\n"),
        ("import sys; sys.exit(3)", 3, ""),
        ("raise SystemExit('went wrong')", 1, "went wrong\n"),
        ("raise ValueError('boom')", 1, "ValueError: boom"),
        ("import atexit; atexit.register(print, 'at exit')", 0, "at exit\n"),
    ],
)
def test_a_script_exits_and_logs_as_under_python(server, tmp_path, body, status, logged):
    proc, log_path = run(server, tmp_path, body)
    assert proc.wait(timeout=30) == status
    assert logged in log_path.read_text()


def test_a_script_has_the_environment_and_directory_it_was_given(server, tmp_path):
    proc, log_path = run(
        server, tmp_path, "import os; print(dict(os.environ), os.getcwd())", {"EXTRA": "given"}
    )
    assert proc.wait(timeout=30) == 0
    assert log_path.read_text() == f"{ {'EXTRA': 'given'} } {tmp_path}\n"


def test_a_signal_ends_it_as_a_signal_and_a_wait_can_time_out(server, tmp_path):
    proc, _ = run(server, tmp_path, "import time; time.sleep(600)")
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.1)
    assert proc.poll() is None
    proc.kill()
    assert proc.wait(timeout=30) == -signal.SIGKILL


def test_sigterm_and_sigint_act_as_in_a_fresh_interpreter(server, tmp_path):
    script = (
        "import time\nprint('up', flush=True)\ntry:\n    time.sleep(600)\n"
        "except KeyboardInterrupt:\n    exit(7)\n"
    )
    for sig, status in ((signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 7)):
        proc, log_path = run(server, tmp_path, script)
        wait_for(
            lambda log_path=log_path: log_path.read_text() == "up\n", 30, what="the script to start"
        )
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == status


def test_run_captures_stdout_and_stderr_apart_and_feeds_stdin(server, tmp_path):
    script = tmp_path / "echo.py"
    script.write_text(
        "import sys\nprint(sys.stdin.read().upper())\n"
        "print('to stderr', file=sys.stderr)\nsys.exit(2)\n"
    )
    done = server.run([str(script)], {}, tmp_path, input="given")
    assert (done.returncode, done.stdout, done.stderr) == (2, "GIVEN\n", "to stderr\n")
