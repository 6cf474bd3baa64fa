"""The one loop that serves every flow: take the flows that are due, read their signals in one batched
pass, plan each flow (pure), and apply only what changed.

One loop for all flows instead of a timer per object: kopf timers are a task per object and patch
the object after every run, which is what makes per-object operators crawl at a few thousand flows.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from flowkeeper.api.durations import to_seconds
from flowkeeper.controller.leadership import AlwaysLeader
from flowkeeper.controller.store import ClusterStore
from flowkeeper.domain.errors import FlowkeeperError
from flowkeeper.domain.flow import FlowRecord
from flowkeeper.adapters.prometheus import FlowTarget, PassResult, PrometheusSignals
from flowkeeper.domain.planner import FlowMemory, Inputs, Plan, plan
from flowkeeper.observability import metrics, tracing

log = logging.getLogger("flowkeeper.controller")

def retry_delay(failures: int, rng: random.Random, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff with jitter: 1-3 s, 2-6 s, 4-12 s, ..., at most 3x the cap."""
    return min(cap, base * 2 ** (failures - 1)) * rng.uniform(1.0, 3.0) if failures else 0.0


def status_patch(desired: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """A merge patch from current to desired status: keys that went away are sent as null."""
    patch = {k: v for k, v in desired.items() if current.get(k) != v}
    patch.update({k: None for k in current if k not in desired})
    return patch


class FlowController:
    def __init__(
        self,
        store: ClusterStore,
        gateway,
        signals: PrometheusSignals | None = None,
        namespaces: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
        leader=None,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.signals = signals  # None: no Prometheus configured, flows are only checked for readiness
        self.namespaces = namespaces
        self.clock = clock
        self.leader = leader or AlwaysLeader()  # standbys keep the store warm but plan and write nothing
        self.memory: dict[str, FlowMemory] = {}
        self.api_failures: dict[str, int] = {}  # flow key -> failed writes in a row
        self.read_failures: dict[str, int] = {}  # flow key -> transient signal reads failed in a row
        self.random = random.Random()
        self.passes = 0
        self.last_iteration = time.monotonic()  # the liveness probe's heartbeat

    def seconds_since_iteration(self) -> float:
        """How long the loop has not come round: a loop stuck in a pass or a dead task grows this."""
        return time.monotonic() - self.last_iteration

    async def run_forever(self, stopped: asyncio.Event | None = None) -> None:
        stopped = stopped or asyncio.Event()
        await self._seed(stopped)
        log.info("controller loop running", extra={"stage": "startup", "flows": len(self.store.flows)})
        while not stopped.is_set():
            self.last_iteration = time.monotonic()
            wait = self.store.seconds_until_next(self.clock())
            self.store.wakeup.clear()
            try:
                await asyncio.wait_for(self.store.wakeup.wait(), timeout=1.0 if wait is None else min(wait, 1.0))
            except asyncio.TimeoutError:
                pass
            if not self.leader.is_leading():
                self._forget_plans()
                continue
            due = self.store.take_due(self.clock())
            if due:
                try:
                    await self.run_pass(due)
                except Exception:  # noqa: BLE001 - one bad pass must not end the loop for every flow
                    # The flows were already scheduled again by take_due; the next pass retries them.
                    log.exception("pass failed", extra={"stage": "pass", "outcome": "error", "flows": len(due)})

    def _forget_plans(self) -> None:
        """What a standby knew from an earlier term may be stale by the time it leads again; the
        state that matters (pause, replicas to restore) lives in the flows' status anyway."""
        self.memory.clear()
        self.api_failures.clear()
        self.read_failures.clear()
        metrics.FLOWS.clear()  # a standby reports no flows: only the leader's counts are current

    async def _seed(self, stopped: asyncio.Event) -> None:
        backoff = 1.0
        while not stopped.is_set():
            self.last_iteration = time.monotonic()
            try:
                flows = await asyncio.to_thread(self.gateway.list_objects, "flows", self.namespaces)
                deployments = await asyncio.to_thread(self.gateway.list_objects, "deployments", self.namespaces)
                self.store.seed(flows, deployments)
                return
            except FlowkeeperError as exc:
                log.warning("initial listing failed, retrying", extra={"reason": exc.reason, "stage": "startup"})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def run_pass(self, flows: list[FlowRecord]) -> None:
        pass_id = uuid.uuid4().hex[:12]
        with tracing.pass_span(pass_id, len(flows)):
            await self._run_pass(pass_id, flows)

    async def _run_pass(self, pass_id: str, flows: list[FlowRecord]) -> None:
        started = time.monotonic()
        with tracing.action_span("read_signals", "", ""):
            read = await self._read_signals(flows)
        now = self.clock()
        for flow in flows:
            if not self.leader.is_leading():
                # Lost the lease mid-pass: the new leader plans these flows; put them back as due.
                self.store.mark_due(flow.key, now)
                continue
            inputs = Inputs(
                flow=flow,
                deployment=self.store.deployment_of(flow),
                signals=read.signals.get(flow.key) if read else None,
                failure=read.failures.get(flow.key) if read else None,
                metrics_enabled=self.signals is not None,
                memory=self.memory.get(flow.key, FlowMemory()),
            )
            flow_plan = plan(inputs, now=now)
            self.memory[flow.key] = flow_plan.memory
            await self._apply(flow, flow_plan, pass_id)
        self._back_off_failed_reads(read, now)
        self._after_pass()
        self.passes += 1
        metrics.PASS_SECONDS.observe(time.monotonic() - started)
        metrics.PASS_FLOWS.observe(len(flows))
        log.info(
            "pass done",
            extra={
                "pass_id": pass_id,
                "stage": "pass",
                "flows": len(flows),
                "queries": read.queries if read else 0,
                "seconds": round(time.monotonic() - started, 4),
            },
        )

    async def _read_signals(self, flows: list[FlowRecord]) -> PassResult | None:
        if self.signals is None:
            return None
        targets = [FlowTarget(f.key, f.namespace, f.name, f.spec) for f in flows if f.spec is not None]
        result = await asyncio.to_thread(self.signals.collect, targets)
        metrics.PROMETHEUS_QUERIES.inc(result.queries)
        for failure in result.failures.values():
            metrics.PROMETHEUS_ERRORS.labels(error_class=failure.error_class.value, reason=failure.reason).inc()
        return result

    def _back_off_failed_reads(self, read: PassResult | None, now: float) -> None:
        """A flow whose signals could not be read (Prometheus down, timing out) is asked less often,
        with jitter, so a struggling Prometheus is not hit by every flow in step: 1, 2, then up to 4
        poll intervals, each stretched by up to half. Replicas hold meanwhile (never scaled down)."""
        failed = read.failures if read else {}
        for key in list(self.read_failures):
            if key not in failed:
                del self.read_failures[key]
        for key, failure in failed.items():
            flow = self.store.flows.get(key)
            if failure.error_class.value != "transient" or flow is None or flow.spec is None:
                continue
            failures = self.read_failures.get(key, 0) + 1
            self.read_failures[key] = failures
            poll = to_seconds(flow.spec.scaling.poll_interval)
            self.store.reschedule(key, now + poll * min(2 ** (failures - 1), 4) * self.random.uniform(1.0, 1.5))

    def _after_pass(self) -> None:
        """Forgets flows that are gone, and publishes the flows-by-phase gauge."""
        for key in self.memory.keys() - self.store.flows.keys():
            del self.memory[key]
        for key in self.api_failures.keys() - self.store.flows.keys():
            del self.api_failures[key]
        counts = Counter((f.status.get("phase", "Pending"), f.status.get("severity", "None")) for f in self.store.flows.values())
        metrics.record_flow_phases(counts)

    async def _apply(self, flow: FlowRecord, flow_plan: Plan, pass_id: str) -> None:
        """Writes what the plan changed. Every action logs the same fields: flow, namespace, pass_id
        (the correlation id of the pass), stage, reason and outcome (applied, or the error class)."""
        context = {"flow": flow.name, "namespace": flow.namespace, "pass_id": pass_id}
        stage = "scale"
        try:
            if flow_plan.scale_to is not None and flow.spec is not None:
                # The direction from before the write: the watch may update the store while we wait.
                before = self.store.deployment_of(flow)
                direction = "up" if before is None or flow_plan.scale_to > before.spec_replicas else "down"
                with tracing.action_span(stage, flow.namespace, flow.name):
                    await asyncio.to_thread(
                        self.gateway.scale_deployment, flow.namespace, flow.spec.consumer.deployment, flow_plan.scale_to
                    )
                metrics.SCALE_ACTIONS.labels(direction=direction).inc()
                reason = flow_plan.status.get("lastScaleReason", "")
                log.info("scaled", extra={**context, "stage": stage, "replicas": flow_plan.scale_to, "reason": reason, "outcome": "applied"})
            stage = "status"
            if flow_plan.status_changed(flow.status):
                patch = status_patch(flow_plan.status, flow.status)
                with tracing.action_span(stage, flow.namespace, flow.name):
                    await asyncio.to_thread(self.gateway.patch_flow_status, flow.namespace, flow.name, patch)
            stage = "event"
            for event in flow_plan.events:
                with tracing.action_span(stage, flow.namespace, flow.name):
                    await asyncio.to_thread(self.gateway.post_event, flow.reference, event.type, event.reason, event.message)
                log.info(event.message, extra={**context, "stage": stage, "reason": event.reason, "outcome": "applied"})
        except FlowkeeperError as exc:
            # Transient trouble (conflict, throttling, 5xx) is retried with exponential backoff and
            # jitter, so a struggling API server is not hammered by every flow at once.
            failures = self.api_failures.get(flow.key, 0) + 1
            self.api_failures[flow.key] = failures
            delay = retry_delay(failures, self.random)
            log.warning(
                str(exc),
                extra={**context, "stage": stage, "outcome": exc.error_class.value, "reason": exc.reason, "retry_in": round(delay, 1)},
            )
            self.store.mark_due(flow.key, self.clock() + delay)
        else:
            self.api_failures.pop(flow.key, None)
