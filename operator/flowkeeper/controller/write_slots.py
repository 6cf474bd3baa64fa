"""Write slots handed out urgent first: when a thousand flows need writing at once, the writes that
change what runs (a scale, a new flow's first status) go before routine ones (a condition's update,
an Event), so that the last flow of a burst is scaled after a thousand calls, not three thousand."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class PrioritySlots:
    """Like asyncio.Semaphore(size), but a waiting urgent caller is served before every routine one;
    callers of one kind are served in arrival order."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []  # (0 urgent | 1 routine, arrival, future)
        self._arrivals = itertools.count()

    @asynccontextmanager
    async def slot(self, *, urgent: bool) -> AsyncIterator[None]:
        await self._acquire(urgent)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, urgent: bool) -> None:
        if self.free > 0:  # a free slot means nobody live is waiting (_release serves them first)
            self.free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (0 if urgent else 1, next(self._arrivals), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # handed the slot just as it was cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():  # a cancelled waiter's future is done: skip it
                future.set_result(None)
                return
        self.free += 1
