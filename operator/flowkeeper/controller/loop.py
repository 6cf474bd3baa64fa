"""The one loop that serves every flow: take the flows that are due, read their signals in one batched
pass, plan each flow (pure, isolated), and hand the plans to the executor, the only writer.

One loop for all flows instead of a timer per object: kopf timers are a task per object and patch
the object after every run, which is what makes per-object operators crawl at a few thousand flows.
Scheduling and windows run on the monotonic clock; only timestamps users read are wall time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable

from flowkeeper.adapters.prometheus import FlowTarget, PassResult
from flowkeeper.api.durations import to_seconds
from flowkeeper.api.v1alpha1 import BUILT_IN_TARGET_KINDS, ScaleTargetKind
from flowkeeper.controller import heap
from flowkeeper.controller.events import EventRecorder
from flowkeeper.controller.executor import Executor
from flowkeeper.controller.leadership import AlwaysLeader
from flowkeeper.controller.ports import ClusterGateway, Leader, SignalSource
from flowkeeper.controller.readings import Reading
from flowkeeper.controller.repeats import Repeat
from flowkeeper.controller.store import ClusterStore
from flowkeeper.domain import ownership
from flowkeeper.domain.errors import ErrorClass, FlowkeeperError
from flowkeeper.domain.flow import FlowRecord, TargetRecord, target_from_body
from flowkeeper.domain.redrive import replicas_cap
from flowkeeper.domain.planner import FlowMemory, Inputs, Plan, plan, plan_failure, repeated
from flowkeeper.domain.signals import FlowSignals, SignalsFailure
from flowkeeper.observability import metrics, tracing

log = logging.getLogger("flowkeeper.controller")

RESYNC_SECONDS = 300.0  # how often the store is checked against a fresh LIST
HEARTBEAT_SECONDS = 5.0  # the loop comes round at least this often, also as a standby (liveness)
# Woken by a watch event, the loop waits this long before its pass, so the events of one moment (a
# rollout, a namespace applied at once) are one pass and one Prometheus read, not one each.
EVENT_DEBOUNCE_SECONDS = 0.2
YIELD_EVERY = 200  # flows planned between two yields to the event loop (watch events keep flowing)


class FlowController:
    def __init__(
        self,
        store: ClusterStore,
        gateway: ClusterGateway,
        signals: SignalSource | None = None,
        namespaces: tuple[str, ...] = (),
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        leader: Leader | None = None,
        operator_ref: dict[str, str] | None = None,
        conflict_hold_off: float = ownership.FIRST_HOLD_OFF,
        write_concurrency: int = 16,
        write_qps: float = 50.0,
        write_burst: int = 100,
        target_kinds: tuple[ScaleTargetKind, ...] = BUILT_IN_TARGET_KINDS,
        settle_heap: bool = False,
    ) -> None:
        self.store = store
        self.heap = heap.LongLivedHeap() if settle_heap else None  # the operator's process, not tests' loops
        self.target_kinds = target_kinds  # the kinds the handlers watch: the startup LIST lists the same
        self._watched_kinds = frozenset(k.kind for k in target_kinds)
        self.gateway = gateway
        self.signals = signals  # None: no Prometheus configured, flows are only checked for readiness
        self.namespaces = namespaces
        # Wall time only stamps what users read (conditions, lastScaleTime); scheduling and every window
        # run on the monotonic clock.
        self.wall_clock = wall_clock
        self.monotonic = monotonic
        self.leader = leader or AlwaysLeader()  # standbys keep the store warm but plan and write nothing
        self.recorder = EventRecorder(gateway, instance=(operator_ref or {}).get("name", "flowkeeper"), clock=monotonic, threads=write_concurrency)
        self.executor = Executor(gateway, store, self.recorder, self.leader, concurrency=write_concurrency, qps=write_qps, burst=write_burst, clock=monotonic)
        self.operator_ref = operator_ref  # the operator's own Pod: operator-wide trouble is told there, once
        self.conflict_hold_off = conflict_hold_off
        self.memory: dict[str, FlowMemory] = {}  # by flow UID
        self.read_failures: dict[str, int] = {}  # flow UID -> transient signal reads failed in a row
        self.readings: dict[str, Reading] = {}  # flow UID -> its last signals read afresh
        self.repeats: dict[str, Repeat] = {}  # flow UID -> its last plan, when the same inputs repeat it
        self.prometheus_down = False
        self.random = random.Random()
        self.passes = 0
        self.last_iteration = time.monotonic()  # the liveness probe's heartbeat
        self._resynced_at = 0.0
        self._resync_listing: asyncio.Task | None = None  # a resync's LIST on its way (passes go on meanwhile)
        self.writing: dict[str, asyncio.Task] = {}  # flow UID -> its plan being written
        self.flow_gauges = metrics.FlowGauges()

    def seconds_since_iteration(self) -> float:
        """How long the loop has not come round: a loop stuck in a pass or a dead task grows this."""
        return time.monotonic() - self.last_iteration

    async def run_forever(self, stopped: asyncio.Event | None = None) -> None:
        stopped = stopped or asyncio.Event()
        await self._seed(stopped)
        log.info("controller loop running", extra={"stage": "startup", "flows": len(self.store.flows), "selector": self.store.selector.text or "(every flow)"})
        while not stopped.is_set():
            self.last_iteration = time.monotonic()
            await self._resync_now_and_then()
            if not self.leader.is_leading():
                self._forget_plans()
                # A standby does nothing until the lease can change hands: no work, no CPU.
                await _wait_any([stopped, self._leader_changed()], HEARTBEAT_SECONDS)
                continue
            try:
                await self._report_deletions()
            except Exception:  # noqa: BLE001 - a report that fails must not end the loop
                log.exception("deletion not reported", extra={"stage": "delete", "outcome": "error"})
            wait = self.store.seconds_until_next(self.monotonic())
            self.store.wakeup.clear()
            await _wait_any([self.store.wakeup, stopped, self._leader_changed()], min(HEARTBEAT_SECONDS if wait is None else wait, HEARTBEAT_SECONDS))
            if not self.leader.is_leading():
                continue
            if self.store.wakeup.is_set() and (wait is None or wait > 0):
                await _wait_any([stopped], EVENT_DEBOUNCE_SECONDS)
            due = self.store.take_due(self.monotonic())
            if due:
                try:
                    await self.run_pass(due, by_event=self.store.due_by_event)
                except Exception:  # noqa: BLE001 - one bad pass must not end the loop for every flow
                    # The flows were already scheduled again by take_due; the next pass retries them.
                    log.exception("pass failed", extra={"stage": "pass", "outcome": "error", "flows": len(due)})
        if self._resync_listing is not None:
            self._resync_listing.cancel()
        await self.finish_writes(timeout=5.0)

    def _leader_changed(self) -> asyncio.Event | None:
        """The elector's gain-or-loss signal, cleared here: the loop is its only reader."""
        changed: asyncio.Event | None = getattr(self.leader, "changed", None)
        if changed is not None and changed.is_set():
            changed.clear()
        return changed

    def _forget_plans(self) -> None:
        """What a standby knew from an earlier term may be stale by the time it leads again; the
        state that matters (pause, replicas to restore) lives in the flows' status anyway."""
        if self.memory or self.read_failures or self.readings or self.repeats:
            self.memory.clear()
            self.read_failures.clear()
            self.readings.clear()
            self.repeats.clear()
            self.executor.forget(set())
        metrics.FLOWS.clear()  # a standby reports no flows: only the leader's counts are current
        self.flow_gauges.forget()

    async def _seed(self, stopped: asyncio.Event) -> None:
        backoff = 1.0
        while not stopped.is_set():
            self.last_iteration = time.monotonic()
            try:
                self.store.seed(*await self._list())
                self._resynced_at = self.monotonic()
                self._settle_heap()
                return
            except FlowkeeperError as exc:
                log.warning("initial listing failed, retrying", extra={"reason": exc.reason, "stage": "startup"})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _list(self):
        # Each object is made into its record as its page arrives (in the listing's thread).
        flows = await asyncio.to_thread(self.gateway.list_objects, "flows", self.namespaces, self.store.listed_flow)
        targets = {
            kind: await asyncio.to_thread(self.gateway.list_objects, kind.plural, self.namespaces, functools.partial(target_from_body, kind=kind))
            for kind in self.target_kinds
        }
        return flows, targets

    async def _resync_now_and_then(self) -> None:
        """A LIST every RESYNC_SECONDS drops what was deleted while a watch was down: kopf re-lists
        after a broken watch but tells nothing of the objects that went away meanwhile.

        The LIST runs beside the passes (at 10,000 flows on a busy API server it took almost a
        minute, and the passes waited for it); the loop applies it when it is in. Applying a listing
        older than what the watches and the writes told meanwhile is what store.resync is made for:
        newer records are kept, and only what the list has seen and no longer holds is dropped."""
        listing = self._resync_listing
        if listing is not None:
            if not listing.done():
                return
            self._resync_listing = None
            try:
                self.store.resync(*listing.result())
            except FlowkeeperError as exc:
                log.warning("resync listing failed", extra={"reason": exc.reason, "stage": "resync", "outcome": "retry"})
                return
            self._settle_heap()
            return
        if self.monotonic() - self._resynced_at >= RESYNC_SECONDS:
            self._resynced_at = self.monotonic()
            self._resync_listing = asyncio.create_task(self._list(), name="flowkeeper-resync-list")

    def _settle_heap(self) -> None:
        if self.heap is not None:
            self.heap.settle()

    async def run_pass(self, flows: list[FlowRecord], by_event: frozenset[str] = frozenset()) -> None:
        """`by_event`: the flows a watch event made due; their last reading may serve (readings.py)."""
        pass_id = uuid.uuid4().hex[:12]
        with tracing.pass_span(pass_id, len(flows)):
            await self._run_pass(pass_id, flows, by_event)

    async def _run_pass(self, pass_id: str, flows: list[FlowRecord], by_event: frozenset[str]) -> None:
        started = time.monotonic()
        if self.writing:
            # A flow whose last plan is still being written is not planned (below): its signals are
            # not read either. A burst of scales makes each scaled flow due by its own Deployment's
            # events, and reading the pass's queries for those alone parsed every flow's series.
            flows = [f for f in flows if f.uid not in self.writing]
        reused = self._reusable_readings(flows, by_event, self.monotonic())
        to_read = [f for f in flows if f.uid not in reused] if reused else flows
        with tracing.action_span("read_signals", "", ""):
            read = await self._read_signals(to_read)
        outage = await self._note_outage(to_read, read)
        now, mono = self.wall_clock(), self.monotonic()
        for i, taken in enumerate(flows):
            if i and i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            # Planned from the store as it is now, after the read: the watch may have moved on meanwhile.
            flow = self.store.flows.get(taken.uid)
            if flow is None or flow.uid in self.writing:
                continue  # deleted during the read, or its last plan is still being written
            target = self.store.target_of(flow)
            flow_plan = self._plan(flow, target, read, reused.get(flow.uid), outage, now, mono)
            if flow_plan is not None:
                self._write(flow, target, flow_plan, pass_id)
        self._back_off_failed_reads(read, mono)
        self._after_pass()
        if self.heap is not None:
            self.heap.after_pass()
        self.passes += 1
        metrics.PASS_SECONDS.observe(time.monotonic() - started)
        metrics.PASS_FLOWS.observe(len(flows))
        # Routine: at DEBUG. What a pass changed is logged by the executor at INFO.
        log.debug(
            "pass done",
            extra={"pass_id": pass_id, "stage": "pass", "flows": len(flows), "reused": len(reused), "queries": read.queries if read else 0,
                   "seconds": round(time.monotonic() - started, 4)},
        )

    def _write(self, flow: FlowRecord, target, flow_plan: Plan, pass_id: str) -> None:
        """Hands the plan to the executor without waiting for it: a slow write holds up its own flow
        (planned again only when it is done), never the next pass of the others."""
        if not self.executor.has_work(flow, target, flow_plan):
            return
        self.repeats.pop(flow.uid, None)  # a plan that writes is no plan to repeat, also if its write fails
        task = asyncio.create_task(self.executor.apply(flow, target, flow_plan, pass_id), name=f"write-{flow.uid}")
        self.writing[flow.uid] = task
        task.add_done_callback(lambda _, uid=flow.uid: self.writing.pop(uid, None))

    async def finish_writes(self, timeout: float) -> None:
        """Lets the writes in flight land (on shutdown), up to `timeout` seconds."""
        if self.writing:
            await asyncio.wait(list(self.writing.values()), timeout=timeout)

    def _reusable_readings(self, flows: list[FlowRecord], by_event: frozenset[str], now: float) -> dict[str, FlowSignals]:
        if self.signals is None or not by_event:
            return {}
        reused = {}
        for flow in flows:
            reading = self.readings.get(flow.uid) if flow.uid in by_event else None
            if reading is not None and reading.still_serves(flow, self.store.target_of(flow), now):
                reused[flow.uid] = reading.signals
        return reused

    def _plan(
        self, flow: FlowRecord, target: TargetRecord | None, read: PassResult | None, reused: FlowSignals | None,
        outage: bool, now: float, mono: float,
    ) -> Plan | None:
        """The flow's plan; None when its last plan repeats (controller/repeats.py): nothing to write."""
        if reused is not None:
            signals, failure = reused, None
        else:
            signals = read.signals.get(flow.uid) if read else None
            failure = read.failures.get(flow.uid) if read else None
            if signals is not None and failure is None and target is not None and signals.backlog_unanswered is None:
                self.readings[flow.uid] = Reading.of(signals, flow, target, mono)
            else:
                self.readings.pop(flow.uid, None)
        inputs = Inputs(
            flow=flow,
            target=target,
            signals=signals,
            failure=failure,
            fresh_signals=reused is None,
            metrics_enabled=self.signals is not None,
            memory=self.memory.get(flow.uid, FlowMemory()),
            monotonic=mono,
            owner=self.store.owner_of(flow),
            target_watched=flow.spec is None or flow.spec.scale_target_ref.kind in self._watched_kinds,
            outage=outage,
            conflict_hold_off=self.conflict_hold_off,
            dead_letters=self.store.reviews.get(flow.uid),
            replicas_cap=replicas_cap(self.store.redrives_of(flow)) if self.store.redrives else None,
        )
        last = self.repeats.get(flow.uid)
        if last is not None and last.serves(inputs, now):
            self.memory[flow.uid] = repeated(inputs.memory, last.steady, mono)
            return None
        try:
            flow_plan = plan(inputs, now=now)
        except Exception as exc:  # noqa: BLE001 - one flow's bad number is that flow's condition, not the pass's
            log.exception("planning failed", extra={"flow": flow.name, "namespace": flow.namespace, "stage": "plan", "outcome": "error"})
            flow_plan = plan_failure(inputs, exc, now=now)
        self.memory[flow.uid] = flow_plan.memory
        if flow_plan.plan_again_in is not None:
            self.store.mark_due(flow.uid, mono + flow_plan.plan_again_in)
        if flow_plan.repeatable is not None:
            self.repeats[flow.uid] = Repeat(inputs, flow_plan.repeatable)
        else:
            self.repeats.pop(flow.uid, None)
        depth = inputs.signals.queue_depth if inputs.signals is not None and inputs.failure is None else None
        self.flow_gauges.show(flow.uid, flow.namespace, flow.name, flow_plan.status.get("desiredReplicas"), depth)
        return flow_plan

    async def _read_signals(self, flows: list[FlowRecord]) -> PassResult | None:
        if self.signals is None:
            return None
        targets = [FlowTarget(f.uid, f.namespace, f.name, f.spec) for f in flows if f.spec is not None]
        if not targets:  # every flow of the pass planned again on its last reading
            return PassResult(signals={}, failures={}, queries=0, seconds=0.0)
        result = await asyncio.to_thread(self.signals.collect, targets)
        metrics.PROMETHEUS_QUERIES.inc(result.queries)
        for failure in result.failures.values():
            metrics.PROMETHEUS_ERRORS.labels(error_class=failure.error_class.value, reason=failure.reason).inc()
        return result

    async def _note_outage(self, flows: list[FlowRecord], read: PassResult | None) -> bool:
        """The operator's own Prometheus failing for every flow is one incident: a gauge and one Event
        on the operator's own object when it starts and when it ends, not a Warning per flow."""
        if read is None:
            return False
        on_default = [f.uid for f in flows if f.spec is not None and f.spec.metrics.server is None]
        if not on_default:
            return self.prometheus_down
        failed = [read.failures.get(uid) or _backlog_unanswered(read.signals.get(uid)) for uid in on_default]
        down = all(f is not None and f.error_class.value == "transient" for f in failed)
        metrics.PROMETHEUS_UP.set(0 if down else 1)
        if down != self.prometheus_down:
            self.prometheus_down = down
            first = next((f for f in failed if f is not None), None)
            if down:
                message = f"Prometheus cannot be read for any flow: {first.message if first else ''}; replicas held"
                log.warning(message, extra={"stage": "signals", "reason": "PrometheusUnavailable", "outcome": "holding"})
            else:
                message = "Prometheus answers again"
                log.info(message, extra={"stage": "signals", "reason": "PrometheusAvailable", "outcome": "recovered"})
            if self.operator_ref is not None:
                await self.recorder.record(
                    self.operator_ref, "Warning" if down else "Normal", "PrometheusUnavailable" if down else "PrometheusAvailable", message
                )
        return down

    async def _report_deletions(self) -> None:
        """A paused flow that is deleted leaves its consumers at 0 (its configuration is still broken:
        restoring them would consume into it); the scale target gets a Warning that says so and what
        to restore, since nobody else will."""
        deleted, self.store.deleted = self.store.deleted, []
        for flow in deleted:
            record = flow.status.get("pause")
            target = self.store.targets.get(flow.target_key or "")
            if not record or target is None or target.spec_replicas != 0:
                continue
            before = record.get("replicasBefore")
            heir = ownership.owner(self.store.flows_of_target(target.key))
            if heir is not None:
                # Another flow names the same target: it owns it now and decides its replicas.
                then = f"IntegrationFlow {heir.path} scales it from now on"
            else:
                then = "consumers left at 0" + (f"; restore with `kubectl scale {target.kind.lower()}/{target.name} --replicas={before}`" if before else "")
            message = f"IntegrationFlow {flow.path} was deleted while paused ({record.get('reason')}): {then}"
            log.warning(message, extra={"flow": flow.name, "namespace": flow.namespace, "stage": "delete", "reason": "PausedFlowDeleted"})
            await self.recorder.record(target.reference, "Warning", "PausedFlowDeleted", message)

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
            poll = max(1.0, to_seconds(flow.spec.scaling.poll_interval))
            # Postponed, not fenced: a change of the flow (a fixed spec) still makes it due at once.
            self.store.postpone(key, now + poll * min(2 ** (failures - 1), 4) * self.random.uniform(1.0, 1.5))

    def _after_pass(self) -> None:
        """Forgets flows that are gone, and publishes the flows-by-phase gauge."""
        live = set(self.store.flows)
        for key in self.memory.keys() - live:
            del self.memory[key]
        for key in self.readings.keys() - live:
            del self.readings[key]
        for key in self.repeats.keys() - live:
            del self.repeats[key]
        self.executor.forget(live)
        self.flow_gauges.forget(live)
        counts = Counter((f.status.get("phase", "Pending"), f.status.get("severity", "None")) for f in self.store.flows.values())
        metrics.record_flow_phases(counts)


def _backlog_unanswered(signals: FlowSignals | None) -> SignalsFailure | None:
    """A read whose backlog query Prometheus did not answer (timed out, not asked by the deadline)
    counts towards an outage like a failed one: every flow's backlog query is the same batched query."""
    if signals is None or signals.backlog_unanswered is None:
        return None
    return SignalsFailure(ErrorClass.transient, signals.backlog_unanswered, signals.unread.get("queue_depth", "the backlog was not read"))


async def _wait_any(events: list[asyncio.Event | None], timeout: float) -> None:
    """Returns when one of the events is set, or after `timeout` seconds."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events if e is not None]
    try:
        await asyncio.wait(waiters, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
