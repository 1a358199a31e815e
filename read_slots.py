"""The API's ClickHouse read slots, shared fairly between owners.

An API process runs at most `total` ClickHouse reads at once (EH_EXPLORE_QUERIES), and one
owner at most `per_owner` of them (EH_EXPLORE_QUERIES_PER_OWNER): however many reads an owner
sends, the other slots stay free for the others. A read that cannot start at once waits in its
owner's queue (first come, first served within an owner; owners take turns as slots free up),
so a GraphQL query asking for the events of many jobs runs them a share at a time and never
fails for its size. Only genuine overload is refused: an owner with `queue_per_owner` reads
waiting already (OwnerQueueFull: 429) or a read that waited `max_wait_s` without a slot
(WaitedTooLong: 503), both with a Retry-After.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math


class NoReadSlot(Exception):
    """A read refused for want of a slot; `retry_after_s` says when to try again."""

    retry_after_s = 1


class OwnerQueueFull(NoReadSlot):
    """The owner has as many reads waiting as one owner may."""

    def __init__(self, owner: str, waiting: int):
        super().__init__(
            f"{owner} has {waiting} ClickHouse reads waiting for a slot, as many as "
            "one owner may (EH_EXPLORE_QUEUE_PER_OWNER); retry once some have "
            "finished"
        )


class WaitedTooLong(NoReadSlot):
    """A read waited for a slot as long as a read may."""

    def __init__(self, waited_s: float, per_owner: int):
        super().__init__(
            f"this read waited {waited_s:g} s for a ClickHouse read slot "
            f"(EH_EXPLORE_WAIT_S) behind this owner's earlier reads, {per_owner} "
            "at a time; retry later"
        )
        self.retry_after_s = max(1, math.ceil(waited_s / 4))


class ReadSlots:
    """Who runs a read now, and who waits: see the module's docstring."""

    def __init__(self, total: int, per_owner: int, *, queue_per_owner: int, max_wait_s: float):
        self.total, self.per_owner = total, min(per_owner, total)
        self.queue_per_owner, self.max_wait_s = queue_per_owner, max_wait_s
        self.running = 0
        self.running_by_owner: collections.Counter[str] = collections.Counter()
        # Owners with reads waiting, in turn order; each one's waiters first come, first served.
        self.waiting: collections.OrderedDict[str, collections.deque[asyncio.Future]] = (
            collections.OrderedDict()
        )

    @contextlib.asynccontextmanager
    async def slot(self, owner: str):
        """Hold one of the slots for the block; NoReadSlot if it cannot be had."""
        await self.acquire(owner)
        try:
            yield
        finally:
            self.release(owner)

    async def acquire(self, owner: str) -> None:
        """One of the slots, now or once it is the owner's turn; `release` it after."""
        if self.can_start(owner):
            self.take(owner)
        else:
            await self.wait_for_slot(owner)

    def can_start(self, owner: str) -> bool:
        return (
            self.running < self.total
            and self.running_by_owner[owner] < self.per_owner
            and owner not in self.waiting
        )

    def take(self, owner: str) -> None:
        self.running += 1
        self.running_by_owner[owner] += 1

    def release(self, owner: str) -> None:
        self.running -= 1
        self.running_by_owner[owner] -= 1
        if not self.running_by_owner[owner]:
            del self.running_by_owner[owner]
        self.hand_over()

    async def wait_for_slot(self, owner: str) -> None:
        queue = self.waiting.setdefault(owner, collections.deque())
        if len(queue) >= self.queue_per_owner:
            raise OwnerQueueFull(owner, len(queue))
        granted = asyncio.get_running_loop().create_future()
        queue.append(granted)
        try:
            async with asyncio.timeout(self.max_wait_s):
                await granted
        except BaseException as exc:
            if granted.done() and not granted.cancelled():
                self.release(owner)  # handed over in the same moment: give it back
            else:
                granted.cancel()
                self.forget(owner, granted)
            if isinstance(exc, TimeoutError):
                raise WaitedTooLong(self.max_wait_s, self.per_owner) from None
            raise

    def forget(self, owner: str, waiter: asyncio.Future) -> None:
        queue = self.waiting.get(owner)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
            if not queue:
                del self.waiting[owner]

    def hand_over(self) -> None:
        """Give free slots to waiting reads, owners in turn, each within its share."""
        progress = True
        while self.running < self.total and self.waiting and progress:
            progress = False
            for owner in list(self.waiting):
                if self.running >= self.total:
                    break
                if self.running_by_owner[owner] >= self.per_owner:
                    continue
                queue = self.waiting[owner]
                waiter = queue.popleft()
                if not queue:
                    del self.waiting[owner]
                else:
                    self.waiting.move_to_end(owner)  # the next turn is another owner's
                if not waiter.done():
                    self.take(owner)
                    waiter.set_result(None)
                progress = True
