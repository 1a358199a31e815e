"""How the worker and the relay stop, the one way both do it.

SIGTERM or SIGINT asks the process to stop: its loops see `Stopper.is_set()` and their waits
return at once, and the work in hand gets EH_STOP_GRACE_S to commit or give up cleanly. Past
the grace, or on a second signal, the process leaves at once (`leave_now`), as a crash would.
That is safe by design: every unit of work is a transaction that rolls back when its
connection goes, and nothing is acknowledged (a message, an outbox batch) before its commit.

Signal handlers only record the request and start the grace timer; nothing is raised into
whatever the main thread was doing.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
from collections.abc import Callable
from typing import Protocol

import structlog

log = structlog.get_logger("stopping")


class Stop(Protocol):
    """What work checks between steps: a Stopper, or a plain threading.Event (the tests')."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...


class Stopper:
    """A stop request that threads can poll (`is_set`) and sleep on (`wait`, `wait_readable`),
    set by a signal (`install`) or by the process itself (`request`)."""

    def __init__(
        self, process: str, grace_s: float, *, before_exit: Callable[[], None] = lambda: None
    ):
        self.process = process
        self.grace_s = grace_s
        self.reason = ""
        self._before_exit = before_exit
        self._requested = threading.Event()
        self._timer: threading.Timer | None = None
        self._wake_r, self._wake_w = os.pipe()  # select()able: wait_readable wakes on a stop
        os.set_blocking(self._wake_w, False)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def request(self, reason: str = "requested") -> None:
        if not self._requested.is_set():
            self.reason = reason
            log.info(f"{self.process}.stopping", reason=reason)
        self._requested.set()
        try:
            os.write(self._wake_w, b".")
        except BlockingIOError:  # the pipe is full of earlier wake-ups: awake enough
            pass

    def is_set(self) -> bool:
        return self._requested.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` s, or until a stop; True if a stop was requested."""
        return self._requested.wait(max(timeout, 0.0))

    def wait_readable(self, timeout: float, conn) -> bool:
        """Sleep up to `timeout` s, until `conn` (a socket or connection with fileno()) is
        readable, or until a stop; True if `conn` became readable."""
        if self.is_set():
            return False
        ready, _, _ = select.select([self._wake_r, conn.fileno()], [], [], max(timeout, 0.0))
        return conn.fileno() in ready

    def finished(self) -> None:
        """The process stopped cleanly within its grace: no hurry any more."""
        if self._timer is not None:
            self._timer.cancel()

    def close(self) -> None:
        self.finished()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def leave_now(self, reason: str) -> None:
        """Exit at once (0: the stop was asked for), without waiting for any thread."""
        log.warning(f"{self.process}.abandoned", reason=reason)
        self._before_exit()
        sys.stdout.flush()
        os._exit(0)

    def _on_signal(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if self.is_set():
            self.leave_now(f"second {name}")
        self.request(name)
        self._timer = threading.Timer(
            self.grace_s, self.leave_now, args=(f"still working {self.grace_s:g} s after {name}",)
        )
        self._timer.daemon = True
        self._timer.start()
