"""A fork server for the service processes the tests start (start_process in conftest.py).

`python worker.py` spends 0.4 s of CPU importing its libraries and `python eventhorizon.py`
0.75 s, before doing anything; the suite starts some 170 of them, a sixth of its CPU. The fork
server is a Python process that imports the three services' modules once and then forks a
child per start: the child takes the test's environment, working directory and log file and
runs the script as `python <script>` would (`runpy`, as `__main__`), so each service process
is still a process of its own, with its own pid, signals and exit status; only the imports are
shared.

The server reports a child's exit status on the connection that started it; ForkedProcess
reads it there and otherwise behaves as the subprocess.Popen it replaces (poll, wait with a
timeout, send_signal, terminate, kill, pid, returncode); ForkServer.run stands for
subprocess.run (a command's output captured, its exit awaited).

  python tests/forkserver.py SOCKET   serve until stdin closes (the pytest process exits)
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRELOADED = ("eventhorizon", "worker", "relay")  # and everything they import


# --------------------------------------------------------------------------- the test's side


class ForkServer:
    """The server process, started on first use and stopped with the pytest process."""

    def __init__(self, directory: Path):
        self.path = str(directory / "forkserver.sock")
        self.proc: subprocess.Popen | None = None

    def start(self, env: dict[str, str]) -> None:
        # stdin is the server's lifeline: it exits when the pipe closes, even if pytest is killed.
        self.proc = subprocess.Popen(
            [sys.executable, __file__, self.path],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        ready = self.proc.stdout.readline()
        assert ready == b"ready\n", f"the fork server did not start: {ready!r}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            self.proc.stdout.close()

    def fork(
        self, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path
    ) -> ForkedProcess:
        return ForkedProcess(self.path, argv, env, cwd, log_path)

    def run(
        self,
        argv: list[str],
        env: dict[str, str],
        directory: Path,
        *,
        input: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess:
        """As subprocess.run(argv, env=env, cwd=ROOT, input=input, capture_output=True,
        text=True, timeout=timeout), `python` left out of argv; the streams pass through files
        in `directory`."""
        run = uuid.uuid4().hex[:8]
        stdin, stdout, stderr = (directory / f"run-{run}.{n}" for n in ("in", "out", "err"))
        stdin.write_text(input or "")
        proc = ForkedProcess(self.path, argv, env, ROOT, stdout, stderr=stderr, stdin=stdin)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        return subprocess.CompletedProcess(
            argv, proc.returncode, stdout.read_text(), stderr.read_text()
        )


class ForkedProcess:
    """A child of the fork server, used as subprocess.Popen is."""

    def __init__(
        self,
        server_path: str,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        stdout: Path,
        *,
        stderr: Path | None = None,
        stdin: Path | None = None,
    ):
        """The child's stdout goes to `stdout`, its stderr to `stderr` (else to `stdout`), its
        stdin comes from `stdin` (else /dev/null)."""
        self.args, self.returncode = argv, None
        for path in (stdout, stderr):  # there before the call returns, as with Popen
            if path is not None:
                path.write_bytes(b"")
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._conn.connect(server_path)
        request = {
            "argv": argv,
            "env": env,
            "cwd": str(cwd),
            "stdout": str(stdout),
            "stderr": str(stderr or stdout),
            "stdin": str(stdin or os.devnull),
        }
        self._conn.sendall(json.dumps(request).encode() + b"\n")
        self._reader = self._conn.makefile("rb")
        self.pid = json.loads(self._reader.readline())["pid"]

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._conn], [], [], 0)[0]:
            self._read_status()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._conn], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self._read_status()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # as Popen: never signal a pid that may have been reused
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _read_status(self) -> None:
        line = self._reader.readline()
        assert line, "the fork server went away before its child exited"
        self.returncode = os.waitstatus_to_exitcode(json.loads(line)["status"])
        self._reader.close()
        self._conn.close()


# --------------------------------------------------------------------------- the server


def serve(path: str) -> None:
    sys.path[0] = str(ROOT)  # not tests/: the children import as `python <script>` would
    for name in PRELOADED:
        __import__(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    wakeup_r, wakeup_w = os.pipe()
    os.set_blocking(wakeup_w, False)
    signal.set_wakeup_fd(wakeup_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the wakeup fd is written
    children: dict[int, socket.socket] = {}
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        readable = select.select([listener, wakeup_r, sys.stdin], [], [])[0]
        if sys.stdin in readable and not sys.stdin.buffer.read1(1):
            return
        if wakeup_r in readable:
            os.read(wakeup_r, 4096)
            report_exits(children)
        if listener in readable:
            conn, _ = listener.accept()
            request = json.loads(conn.makefile("rb").readline())
            pid = fork_child(
                request, close=[listener, conn, wakeup_r, wakeup_w, *children.values()]
            )
            children[pid] = conn
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            report_exits(children)  # one that exited before we knew its pid


def report_exits(children: dict[int, socket.socket]) -> None:
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            conn = children.pop(pid)
            try:
                conn.sendall(json.dumps({"status": status}).encode() + b"\n")
            except OSError:  # the test is gone
                pass
            conn.close()


def fork_child(request: dict, close: list) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for resource in close:
            os.close(resource) if isinstance(resource, int) else resource.close()
        become(request)
        code = run_as_main(request["argv"])
    finally:
        os._exit(code)


def become(request: dict) -> None:
    """The child as `python <script>` in the test's environment would start."""
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stdin = os.open(request["stdin"], os.O_RDONLY)
    stdout = os.open(request["stdout"], os.O_WRONLY | os.O_APPEND)
    stderr = (
        stdout
        if request["stderr"] == request["stdout"]
        else os.open(request["stderr"], os.O_WRONLY | os.O_APPEND)
    )
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
    for fd in {stdin, stdout, stderr}:
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    sys.path[0] = str(Path(sys.argv[0]).resolve().parent)


def run_as_main(argv: list[str]) -> int:
    """Run the script as the interpreter would, through to its exit status: SystemExit's code,
    1 after an uncaught exception, then non-daemon threads joined and atexit handlers run."""
    try:
        runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_code(exit_.code)
    except BaseException:  # noqa: BLE001 (as the interpreter: print it, exit 1)
        traceback.print_exc()
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  (what Py_Finalize does first)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    serve(sys.argv[1])
