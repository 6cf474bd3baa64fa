"""When each flow is next due, on the monotonic clock (a wall-clock step of the machine neither stops
passes nor runs them early).

A flow is due every pollInterval, on the interval's grid so that flows sharing an interval fall due
together and one batched Prometheus pass serves them all, and at once when something it depends on
changes. A retry after a failed write sets a `not_before` that events cannot bring forward: backoff
really spaces the retries.

Each take also tells which flows an event brought forward (`by_event`): their last reading of signals
may still serve (controller/readings.py); a flow due on its own interval is always read afresh.
"""

from __future__ import annotations

import heapq
import math

# The shortest interval the loop honours, whatever a spec that slipped past the CRD says.
MIN_INTERVAL = 1.0


class DueQueue:
    def __init__(self) -> None:
        self._due: dict[str, float] = {}  # key -> next time it is due
        self._not_before: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._woken: set[str] = set()  # keys whose pending due time an event (or a write retry) set
        self.by_event: frozenset[str] = frozenset()  # of the keys the last take_due returned

    def __contains__(self, key: str) -> bool:
        return key in self._due

    def mark_due(self, key: str, at: float) -> None:
        """Due at `at` or earlier: never moves a flow later (see retry_at for that)."""
        at = max(at, self._not_before.get(key, at))
        if self._due.get(key, math.inf) <= at:
            return
        self._set(key, at)
        self._woken.add(key)

    def retry_at(self, key: str, at: float) -> None:
        """Due exactly at `at`, later or earlier, and not before it, whatever happens meanwhile."""
        self._not_before[key] = at
        self._set(key, at)
        self._woken.add(key)  # a write to retry, not a reading to renew

    def postpone(self, key: str, at: float) -> None:
        """Due at `at`, later or earlier; a later mark_due may still bring it forward."""
        self._not_before.pop(key, None)
        self._set(key, at)
        self._woken.discard(key)  # postponed reads (a failing Prometheus) are read afresh

    def forget(self, key: str) -> None:
        self._due.pop(key, None)
        self._not_before.pop(key, None)
        self._woken.discard(key)

    def take_due(self, now: float, interval_of) -> list[str]:
        """Keys whose time has come; each is scheduled again after its own interval."""
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            when, key = heapq.heappop(self._heap)
            if self._due.get(key) != when:
                continue  # superseded by another mark
            del self._due[key]
            self._not_before.pop(key, None)
            due.append(key)
        self.by_event = frozenset(key for key in due if key in self._woken)
        self._woken.difference_update(due)
        for key in due:
            interval = max(MIN_INTERVAL, interval_of(key))
            self._set(key, (math.floor(now / interval) + 1) * interval)
        return due

    def seconds_until_next(self, now: float) -> float | None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return max(0.0, self._heap[0][0] - now) if self._heap else None

    def _set(self, key: str, at: float) -> None:
        self._due[key] = at
        heapq.heappush(self._heap, (at, key))
