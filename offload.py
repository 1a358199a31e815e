"""CPU work the API must not do on its event loop: checking a custom format's definition
against its schema, parsing and validating a large GraphQL document.

The input is bounded before it gets here (sizes, counts, depth), so each call is bounded too;
running it on a thread keeps the loop answering meanwhile (the interpreter hands the loop the
GIL every few milliseconds). At most WORKERS calls run at once and WAITING more wait; any more
is Busy, answered 503 with `Retry-After`, so a flood of expensive requests queues nowhere
without bound and costs the process at most WORKERS threads of CPU.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable
from typing import TypeVar

WORKERS = 2
WAITING = 16
RETRY_AFTER_S = 2

T = TypeVar("T")

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_lock = threading.Lock()
_pending = 0  # calls running or waiting in the pool (a caller that went away does not count)


class Busy(Exception):
    """WORKERS calls are running and WAITING more are waiting."""


def pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="cpu")
        return _pool


async def run(fn: Callable[..., T], *args, **kwargs) -> T:
    """`fn(*args, **kwargs)` on one of the CPU threads; Busy when as many calls as allowed are
    running or waiting. A call counts until it has run (or, not yet started, was dropped
    because its caller went away), so callers that hang up cannot pile work up unseen."""
    global _pending
    with _lock:
        if _pending >= WORKERS + WAITING:
            raise Busy(
                f"{_pending} checks are running or waiting, as many as this process takes at once"
            )
        _pending += 1
    try:
        work = pool().submit(functools.partial(fn, *args, **kwargs))
    except BaseException:
        _release(None)
        raise
    work.add_done_callback(_release)
    return await asyncio.wrap_future(work)


def _release(_work) -> None:
    global _pending
    with _lock:
        _pending -= 1
