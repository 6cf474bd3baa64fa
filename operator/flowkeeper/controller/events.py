"""Events the way client-go's recorder posts them: a repeat is a count, not a new object.

- The same Event (object, type, reason, message) within the window is one Event whose `count` and
  `lastTimestamp` move (a PATCH), not a new object.
- More than AGGREGATE_AFTER different messages of one (object, type, reason) within the window are
  folded into one Event "(combined from similar events): <latest message>".
- Per object a token bucket (burst SPAM_BURST, one token per SPAM_REFILL_SECONDS) drops the rest, so a
  flapping flow cannot flood the API server or `kubectl describe`.
What is remembered is bounded (an LRU of CACHE_SIZE keys) and lives in memory: after a restart the
next repeat is a new Event. An Event that cannot be posted is logged, never fatal to the flow.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from flowkeeper.controller.ports import ClusterGateway
from flowkeeper.domain.errors import FlowkeeperError

log = logging.getLogger("flowkeeper.events")

WINDOW_SECONDS = 600.0
AGGREGATE_AFTER = 10
SPAM_BURST = 25
SPAM_REFILL_SECONDS = 300.0
CACHE_SIZE = 4096
COMBINED = "(combined from similar events): "
EVENT_THREADS = 16  # the executor's default write concurrency


@dataclass
class _Posted:
    namespace: str
    name: str  # the Event object's name
    count: int
    first_at: float  # monotonic


@dataclass
class _Bucket:
    tokens: float
    at: float


class _Lru(OrderedDict):
    def touch(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > CACHE_SIZE:
            self.popitem(last=False)


class EventRecorder:
    def __init__(
        self, gateway: ClusterGateway, instance: str, clock: Callable[[], float] = time.monotonic, threads: int = EVENT_THREADS
    ) -> None:
        # Threads of its own: a storm of Events (thousands of flows turning at once) must not queue the
        # signals pass, the Lease or the LISTs behind it on asyncio's shared default pool. As many as
        # the executor's write slots: Events are posted within a slot, and a slot must not wait for a thread.
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="flowkeeper-events")
        self.gateway = gateway
        self.instance = instance
        self.clock = clock
        self._posted: _Lru = _Lru()  # (uid, type, reason, message) -> _Posted
        self._messages: _Lru = _Lru()  # (uid, type, reason) -> {message: first seen}
        self._buckets: _Lru = _Lru()  # uid -> _Bucket

    async def record(self, reference: dict[str, str], type_: str, reason: str, message: str) -> bool:
        """Posts or counts the Event; False when it was dropped or could not be posted."""
        now = self.clock()
        uid = reference.get("uid", "")
        message, combined = self._aggregate(uid, type_, reason, message[:1024], now)
        # Combined events share one object whatever their latest message says.
        key = (uid, type_, reason, COMBINED if combined else message)
        posted = self._posted.get(key)
        if posted is not None and now - posted.first_at < WINDOW_SECONDS:
            if not self._take_token(uid, now):
                return False
            posted.count += 1
            patch = {"count": posted.count, "lastTimestamp": _rfc3339_now(), "message": message}
            try:
                await self._run(self.gateway.patch_event, posted.namespace, posted.name, patch)
                return True
            except FlowkeeperError as exc:
                if exc.reason != "NotFound":
                    return self._failed(exc, reason, reference)
                del self._posted[key]  # the Event expired or was deleted: post a new one, as client-go does
        if not self._take_token(uid, now):
            log.debug("event dropped by the spam filter", extra={"reason": reason, "flow": reference.get("name", "")})
            return False
        body = self._body(reference, type_, reason, message)
        name: list[str] = []
        sent = await self._send(lambda: name.append(self.gateway.create_event(body)), reason, reference)
        if sent:
            self._posted.touch(key, _Posted(reference["namespace"], name[0], 1, now))
        return sent

    def _aggregate(self, uid: str, type_: str, reason: str, message: str, now: float) -> tuple[str, bool]:
        seen: dict[str, float] = self._messages.get((uid, type_, reason)) or {}
        seen = {m: at for m, at in seen.items() if now - at < WINDOW_SECONDS}
        if len(seen) <= AGGREGATE_AFTER:  # past that only the count matters: memory stays bounded
            seen.setdefault(message, now)
        self._messages.touch((uid, type_, reason), seen)
        if len(seen) > AGGREGATE_AFTER:
            return f"{COMBINED}{message}"[:1024], True
        return message, False

    def _take_token(self, uid: str, now: float) -> bool:
        bucket = self._buckets.get(uid) or _Bucket(SPAM_BURST, now)
        bucket.tokens = min(SPAM_BURST, bucket.tokens + (now - bucket.at) / SPAM_REFILL_SECONDS)
        bucket.at = now
        self._buckets.touch(uid, bucket)
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    async def _run(self, fn: Callable[..., object], *args: object) -> object:
        context = contextvars.copy_context()  # as asyncio.to_thread: the trace context comes along
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(context.run, fn, *args))

    async def _send(self, call: Callable[[], object], reason: str, reference: dict[str, str]) -> bool:
        try:
            await self._run(call)
            return True
        except FlowkeeperError as exc:
            return self._failed(exc, reason, reference)

    @staticmethod
    def _failed(exc: FlowkeeperError, reason: str, reference: dict[str, str]) -> bool:
        log.warning("event not posted: %s", exc, extra={"reason": reason, "flow": reference.get("name", ""), "outcome": exc.error_class.value})
        return False

    def _body(self, reference: dict[str, str], type_: str, reason: str, message: str) -> dict:
        now = _rfc3339_now()
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{reference['name']}.", "namespace": reference["namespace"]},
            "involvedObject": {k: v for k, v in reference.items() if v},
            "type": type_,
            "reason": reason,
            "message": message,
            "source": {"component": "flowkeeper"},
            "reportingComponent": "flowkeeper.io/operator",
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }


def _rfc3339_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
