"""The executor: the only writer. It applies one flow's plan in the order the plan says, many flows
at once up to a bound, and stores what the API server answered (write-through), so the next plan
starts from the truth even when the watch lags.

- Order within a flow: status before scale when the plan says so (a pause's record before the
  consumers go to 0), else scale then status; Events last, each through the recorder.
- Optimistic concurrency: status and scale are written at the resourceVersion the plan was made
  from; a 409 means the object moved on, so the rest of the plan is dropped (never a scale to 0
  without the pause record before it) and the flow is planned again: at once the first time, then
  with backoff that the watch event bringing the new version cuts short.
- Failures: transient ones are retried with exponential backoff and jitter that events cannot bring
  forward; a body the API server refuses (400/422) is looked at again in an hour or when the flow or
  its target changes; a 404 means the flow or its target is gone, and it is forgotten.
- Writes run on threads of their own within a client-side rate limit (QPS and burst, like
  client-go), and nothing is written while this replica is not the leader.
- Each call takes a write slot of its own, urgent first (write_slots.py): a scale, the status a
  scale waits for (a pause's record) and a new flow's first status go before the status after a
  scale and Events, so a burst of flows is scaled before their records are written.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from flowkeeper.controller import crashpoints
from flowkeeper.controller.events import EventRecorder
from flowkeeper.controller.ports import ClusterGateway, Leader
from flowkeeper.controller.store import ClusterStore
from flowkeeper.controller.write_slots import PrioritySlots
from flowkeeper.domain.errors import ConfigurationError, ConflictError, FlowkeeperError, RejectedError
from flowkeeper.domain.flow import FlowRecord, TargetRecord
from flowkeeper.domain.planner import Plan
from flowkeeper.observability import metrics, tracing

log = logging.getLogger("flowkeeper.controller")

PARKED_SECONDS = 3600.0  # a flow whose status the API server refuses is looked at again after this


def retry_delay(failures: int, rng: random.Random, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff with jitter: 1-3 s, 2-6 s, 4-12 s, ..., at most 3x the cap."""
    return min(cap, base * 2 ** (failures - 1)) * rng.uniform(1.0, 3.0) if failures else 0.0


def status_patch(desired: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) from current to desired: keys that went away are sent as null, at
    every depth (a merge patch merges nested objects, so a key missing from a nested object would
    stay); lists are replaced whole."""
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        before = current.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = status_patch(value, before)
            if nested:
                patch[key] = nested
        elif before != value:
            patch[key] = value
    patch.update({k: None for k in current if k not in desired})
    return patch


class _NotLeading(Exception):
    """This replica lost the lead before a write of the plan: the rest is left to the next leader."""


@dataclass(frozen=True)
class Outcome:
    applied: bool
    stage: str = ""
    error: FlowkeeperError | None = None


class Executor:
    def __init__(
        self,
        gateway: ClusterGateway,
        store: ClusterStore,
        recorder: EventRecorder,
        leader: Leader,
        *,
        concurrency: int = 16,
        qps: float = 50.0,
        burst: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gateway = gateway
        self.store = store
        self.recorder = recorder
        self.leader = leader
        self.clock = clock
        self._slots = PrioritySlots(concurrency)
        # Writes get threads of their own (one per slot): the shared default pool also serves the
        # elector's Lease calls and the signals pass, which must not wait behind a slow write.
        self._threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="flowkeeper-write")
        self._rate = TokenBucket(qps, burst, clock)
        self.failures: dict[str, int] = {}  # flow UID -> failed writes in a row
        self.conflicts: dict[str, int] = {}  # flow UID -> conflicts in a row
        self.random = random.Random()

    async def _call(self, urgent: bool, fn: Callable[..., Any], *args: Any) -> Any:
        """One API write on the writers' threads, in a slot and within the client-side rate limit."""
        loop = asyncio.get_running_loop()
        return await self._in_slot(urgent, lambda: loop.run_in_executor(self._threads, fn, *args), rate_limited=True)

    async def _in_slot(self, urgent: bool, write: Callable[[], Awaitable[Any]], *, rate_limited: bool) -> Any:
        """`write()` in a write slot, after a rate-limit token if `rate_limited`, and only if this
        replica still leads right before it: the waits for a slot and for a token may be long."""
        async with self._slots.slot(urgent=urgent):
            if rate_limited:
                await self._rate.take()
            if not self.leader.is_leading():
                raise _NotLeading
            return await write()

    def has_work(self, flow: FlowRecord, target: TargetRecord | None, plan: Plan) -> bool:
        """Whether applying `plan` would write anything: most plans of a quiet pass change nothing, and
        they cost no task, no slot and no thread. A flow with nothing to write has no failed write
        pending either (its retries are forgotten, as after a write that landed)."""
        if plan.events or _scales(flow, target, plan):
            return True
        current = self.store.flows.get(flow.uid)
        if current is not None and plan.status_changed(current.status):
            return True
        self.failures.pop(flow.uid, None)
        self.conflicts.pop(flow.uid, None)
        return False

    async def apply(self, flow: FlowRecord, target: TargetRecord | None, plan: Plan, pass_id: str) -> Outcome:
        """Applies `plan`, made from `flow` and `target` as they were: writes are conditional on
        their resourceVersions."""
        context = {"flow": flow.name, "namespace": flow.namespace, "pass_id": pass_id}
        steps = ("status", "scale") if plan.status_first else ("scale", "status")
        stage = steps[0]
        try:
            for stage in steps:
                wrote = await (self._scale(flow, target, plan, context) if stage == "scale" else self._status(flow, target, plan))
                if wrote:
                    crashpoints.after_write(plan.kind, stage)
            stage = "event"
            for event in plan.events:
                with tracing.action_span(stage, flow.namespace, flow.name):
                    # Events take no rate-limit token: the recorder has its own per-object spam filter.
                    posted = await self._in_slot(
                        False, lambda e=event: self.recorder.record(flow.reference, e.type, e.reason, e.message), rate_limited=False
                    )
                    if posted:
                        log.info(event.message, extra={**context, "stage": stage, "reason": event.reason, "outcome": "applied"})
                        crashpoints.after_write(plan.kind, stage)
        except _NotLeading:
            if stage != "event":
                self.store.mark_due(flow.uid)  # the next leader plans it
            return Outcome(False, stage)
        except ConflictError as exc:
            # The flow or its scale target moved on since the plan was made: plan again from what is there,
            # at once the first time, then with backoff (postponed only: the watch event that brings the
            # new version makes the flow due at once). A lagging watch must not make a hot loop.
            conflicts = self.conflicts.get(flow.uid, 0) + 1
            self.conflicts[flow.uid] = conflicts
            delay = 0.0 if conflicts == 1 else retry_delay(conflicts - 1, self.random, base=0.5, cap=30.0)
            log.info("re-planning: %s", exc, extra={**context, "stage": stage, "reason": exc.reason, "outcome": "conflict", "retry_in": round(delay, 1)})
            self.store.postpone(flow.uid, self.clock() + delay)
            return Outcome(False, stage, exc)
        except RejectedError as exc:
            # Sending the same body again cannot succeed: looked at again in an hour, or at once when the
            # flow or its target changes.
            log.error(str(exc), extra={**context, "stage": stage, "reason": exc.reason, "outcome": "rejected"})
            self.store.postpone(flow.uid, self.clock() + PARKED_SECONDS)
            return Outcome(False, stage, exc)
        except ConfigurationError as exc:
            if exc.reason != "NotFound":
                raise  # pragma: no cover - no other configuration error comes from a write
            # Deleted under us: forget it now rather than retrying a write that cannot land.
            log.info(str(exc), extra={**context, "stage": stage, "reason": exc.reason, "outcome": "gone"})
            if stage == "status":
                self.store.flow_gone(flow.uid)
            elif target is not None:
                self.store.target_gone(target.key)
            return Outcome(False, stage, exc)
        except Exception as exc:  # noqa: BLE001 - transient trouble, or a bug: this flow retries, the others go on
            if not isinstance(exc, FlowkeeperError):
                log.exception("write failed", extra={**context, "stage": stage, "outcome": "error"})
                exc = FlowkeeperError(f"{type(exc).__name__}: {exc}", reason="UnexpectedError")
            failures = self.failures.get(flow.uid, 0) + 1
            self.failures[flow.uid] = failures
            delay = retry_delay(failures, self.random)
            log.warning(
                str(exc),
                extra={**context, "stage": stage, "outcome": exc.error_class.value, "reason": exc.reason, "retry_in": round(delay, 1)},
            )
            self.store.retry_at(flow.uid, self.clock() + delay)
            return Outcome(False, stage, exc)
        self.failures.pop(flow.uid, None)
        self.conflicts.pop(flow.uid, None)
        return Outcome(True)

    async def _scale(self, flow: FlowRecord, target: TargetRecord | None, plan: Plan, context: dict[str, str]) -> bool:
        if not _scales(flow, target, plan):
            return False
        assert target is not None and plan.scale_to is not None  # _scales checked both
        direction = "up" if plan.scale_to > target.spec_replicas else "down"
        with tracing.action_span("scale", flow.namespace, flow.name):
            replicas, version = await self._call(
                True, self.gateway.scale, target.scale_target, plan.scale_to, target.resource_version or None
            )
        self.store.scale_written(target.key, replicas, version)
        metrics.SCALE_ACTIONS.labels(direction=direction).inc()
        reason = plan.status.get("lastScaleReason", "")
        log.info("scaled", extra={**context, "stage": "scale", "replicas": plan.scale_to, "reason": reason, "outcome": "applied"})
        return True

    async def _status(self, flow: FlowRecord, target: TargetRecord | None, plan: Plan) -> bool:
        current = self.store.flows.get(flow.uid)
        if current is None:
            return False  # deleted meanwhile
        if not plan.status_changed(current.status):
            return False
        patch = status_patch(plan.status, current.status)
        # Urgent when a scale waits for it, or when the flow has no status yet (`kubectl get` shows nothing).
        urgent = (plan.status_first and _scales(flow, target, plan)) or "observedGeneration" not in current.status
        with tracing.action_span("status", flow.namespace, flow.name):
            stored = await self._call(urgent, self.gateway.patch_flow_status, flow.namespace, flow.name, patch, flow.resource_version or None)
        self.store.status_written(flow.uid, stored)
        return True

    def forget(self, uids: set[str]) -> None:
        for uid in self.failures.keys() - uids:
            del self.failures[uid]
        for uid in self.conflicts.keys() - uids:
            del self.conflicts[uid]


def _scales(flow: FlowRecord, target: TargetRecord | None, plan: Plan) -> bool:
    return plan.scale_to is not None and flow.spec is not None and target is not None and target.spec_replicas != plan.scale_to


class TokenBucket:
    """Client-side rate limit of API writes, like client-go's QPS and burst: thousands of flows that
    retry together after an outage are spread out instead of hitting a recovering API server at once."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.qps, self.burst, self.clock = qps, burst, clock
        self.tokens = float(burst)
        self.at = clock()

    async def take(self) -> None:
        while True:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.qps)
            self.at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.qps)
