"""The dead-letter controller: reviews each flow's dead letters now and then, and drives the
DeadLetterRedrives (domain/redrive.py) one broker step at a time.

- Broker calls block, so they run on worker threads of their own; at most one at a time per
  dead-letter queue (a review holding messages unacknowledged would hide them from a redrive's batch),
  and nothing waits for them: the flows' passes never do.
- A review's result becomes the flow's status.deadLetters through the flow's next plan: the executor
  stays the only writer of a flow. This controller is the only writer of a redrive's status.
- A redrive writes its status before each broker step that needs it (Running before the cutoff is
  taken) and after it (the cutoff, the counts); the broker is the truth in between, so a SIGKILL
  anywhere loses no message and a restart goes on from what the broker shows.
- Only the leader works. Everything here runs on the event loop's thread; the threads only talk
  to the broker (and read Secrets).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flowkeeper.adapters import brokers
from flowkeeper.adapters.prometheus import FlowTarget
from flowkeeper.adapters.prometheus.signals_pass import NO_CONSUMER_SERIES
from flowkeeper.api.durations import to_seconds
from flowkeeper.api.v1alpha1 import SecretKeyRef
from flowkeeper.controller import crashpoints
from flowkeeper.controller.events import EventRecorder
from flowkeeper.controller.executor import status_patch
from flowkeeper.controller.ports import ClusterGateway, DeadLetterBroker, Leader
from flowkeeper.controller.store import ClusterStore
from flowkeeper.domain import redrive as rules
from flowkeeper.domain.conditions import parse_rfc3339, rfc3339
from flowkeeper.domain.dead_letters import TOP_REASONS, BrokerAddress, Cutoff, CutoffLost, Review
from flowkeeper.domain.errors import ConfigurationError, ConflictError, FlowkeeperError, TransientError
from flowkeeper.domain.flow import FlowRecord
from flowkeeper.domain.redrive import Action, RedriveRecord, Situation, Step, route_of
from flowkeeper.observability import metrics

log = logging.getLogger("flowkeeper.dead_letters")

TICK_SECONDS = 1.0
CUTOFF_MISSES = 3  # a redrive fails for a lost cutoff only when this many batches in a row miss it
BATCH_SECONDS = 20.0  # the deadline of one broker step: short, so a lost lease is not outlived for long
REVIEW_SECONDS = 30.0
NEVER_AGAIN = frozenset({"QuorumQueueNotSupported"})  # broker refusals after which a queue is not read again
SECRET_SECONDS = 60.0  # a Secret read for a broker's credentials is reused this long


def review_status(review: Review, now: float) -> dict[str, Any]:
    """status.deadLetters of a flow, from a review."""
    reasons = review.by_reason.most_common(TOP_REASONS)
    return {
        "depth": review.depth,
        "examined": review.examined,
        **({"oldest": rfc3339(review.oldest)} if review.oldest is not None else {}),
        **({"newest": rfc3339(review.newest)} if review.newest is not None else {}),
        "byClass": dict(sorted(review.by_class.items())),
        "byReason": [{"reason": reason, "count": count} for reason, count in reasons],
        "samples": list(review.samples),
        "redriven": sum(review.redriven.values()),
        "reviewedAt": rfc3339(now),
    }


class DeadLetterController:
    def __init__(
        self,
        store: ClusterStore,
        gateway: ClusterGateway,
        leader: Leader,
        recorder: EventRecorder,
        *,
        signals: Any = None,  # PrometheusSignals, for the cause check; None: the cause cannot be told
        namespaces: tuple[str, ...] = (),
        review_interval: float = 60.0,
        review_limit: int = 10_000,
        scan_limit: int = 10_000,
        allowed_brokers: tuple[str, ...] = (),
        connect: Callable[[BrokerAddress], DeadLetterBroker] = brokers.connect,
        workers: int = 4,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.gateway, self.leader, self.recorder = store, gateway, leader, recorder
        self.signals = signals
        self.namespaces = namespaces
        self.review_interval, self.review_limit, self.scan_limit = review_interval, review_limit, scan_limit
        self.allowed_brokers = frozenset(a.lower() for a in allowed_brokers)
        self.connect = connect
        self.wall_clock, self.monotonic = wall_clock, monotonic
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flowkeeper-broker")
        self._busy_queues: set[tuple[str, str, str]] = set()
        self._busy: set[str] = set()  # flow UIDs reviewing, redrive UIDs stepping
        self._next_review: dict[str, float] = {}  # flow UID -> monotonic
        self._next_step: dict[str, float] = {}  # redrive UID -> monotonic
        self._secrets: dict[tuple[str, str, str], tuple[float, str]] = {}
        self._cutoff_misses: dict[str, int] = {}  # redrive UID -> batches in a row that did not see its cutoff
        self._unusable: dict[tuple[Any, int], tuple[str, str]] = {}  # (queue, flow generation) -> (reason, message)
        self._pending: dict[str, Callable[[RedriveRecord], Step]] = {}  # redrive UID -> a broker step's result not written yet
        self._verify_deadline: dict[str, float] = {}  # redrive UID -> monotonic end of its verifyFor
        self.tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------------------------- loop

    async def run_forever(self, stopped: asyncio.Event) -> None:
        while not stopped.is_set():
            if not self.leader.is_leading():
                self._pending.clear()  # what a standby knew may be stale when it leads again: the broker is the truth
            else:
                try:
                    if not self.store.redrives_seeded:
                        self.store.seed_redrives(await asyncio.to_thread(self.gateway.list_objects, "redrives", self.namespaces))
                    self.tick()
                except FlowkeeperError as exc:
                    log.warning("dead letters: %s", exc, extra={"stage": "dead_letters", "reason": exc.reason, "outcome": "retry"})
                except Exception:  # noqa: BLE001 - one bad tick must not end the loop
                    log.exception("dead letters: tick failed", extra={"stage": "dead_letters", "outcome": "error"})
            self.store.redrive_wakeup.clear()
            try:
                await asyncio.wait_for(self.store.redrive_wakeup.wait(), TICK_SECONDS)
            except asyncio.TimeoutError:
                pass
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5.0)
        self._threads.shutdown(wait=False, cancel_futures=True)

    def tick(self) -> None:
        mono = self.monotonic()
        self._forget_deleted()
        for uid in self.store.reviews.keys() - self.store.dead_letter_flows.keys():
            del self.store.reviews[uid]  # no dead letters to reach (any more): nothing to show
        for uid in list(self.store.dead_letter_flows):
            flow = self.store.flows[uid]
            if flow.uid not in self._busy and self._next_review.get(flow.uid, 0.0) <= mono:
                if self._known_empty(flow):
                    self._next_review[flow.uid] = mono + self.review_interval
                    continue
                self._start(flow.uid, self._review(flow))
        for record in list(self.store.redrives.values()):
            if record.uid not in self._busy and record.phase not in rules.TERMINAL and self._next_step.get(record.uid, 0.0) <= mono:
                self._start(record.uid, self._step(record))

    def _start(self, key: str, work: Any) -> None:
        self._busy.add(key)
        task = asyncio.create_task(work, name=f"dead-letters-{key}")
        self.tasks.add(task)

        def done(finished: asyncio.Task, key: str = key) -> None:
            self._busy.discard(key)
            self.tasks.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.error("dead letters: %s", finished.exception(), extra={"stage": "dead_letters", "outcome": "error"})

        task.add_done_callback(done)

    def _forget_deleted(self) -> None:
        deleted, self.store.deleted_redrives = self.store.deleted_redrives, []
        for record in deleted:
            self._next_step.pop(record.uid, None)
            self._cutoff_misses.pop(record.uid, None)
            self._pending.pop(record.uid, None)
            self._verify_deadline.pop(record.uid, None)
            # A redrive deleted while it held a cutoff marker: the marker goes too.
            flow = self._flow_of(record)
            if record.cutoff is not None and flow is not None and route_of(flow):
                self._start(f"finish-{record.uid}", self._finish(flow, record.uid, record.cutoff))
        for uid in self._next_review.keys() - self.store.flows.keys():
            del self._next_review[uid]

    def _flow_of(self, record: RedriveRecord) -> FlowRecord | None:
        if record.spec is None:
            return None
        return next((f for f in self.store.flows.values() if f.namespace == record.namespace and f.name == record.spec.flow_ref.name), None)

    # ------------------------------------------------------------------------------------- broker

    async def _broker_call(self, flow: FlowRecord, credentials: Any, call: Callable[..., Any], seconds: float) -> Any:
        """Runs `call(broker, route, deadline)` on a worker thread, alone on its dead-letter queue.
        The deadline is also the end of this replica's lease as it stands: a call of a replica that
        may lose the lease meanwhile ends before another one can start."""
        route = route_of(flow)
        assert route is not None
        address = await self._address(flow, credentials)
        key = (route.broker, route.address.lower(), route.vhost, route.dead_letters)
        refused = self._unusable.get((key, flow.generation))
        if refused is not None:
            raise ConfigurationError(refused[1], reason=refused[0])
        while key in self._busy_queues:
            await asyncio.sleep(0.2)
        self._busy_queues.add(key)
        try:
            deadline = min(time.monotonic() + seconds, self._lease_end())
            if deadline <= time.monotonic():
                raise TransientError("this replica is not the leader (any more)", reason="NotLeading")

            def run() -> Any:
                broker = self.connect(address)  # the adapters connect and close on this thread, never the loop's
                try:
                    return call(broker, route, deadline)
                finally:
                    broker.close()

            return await asyncio.get_running_loop().run_in_executor(self._threads, run)
        except ConfigurationError as exc:
            if exc.reason in NEVER_AGAIN:
                # Each further look would do harm (a quorum queue counts every return toward its delivery
                # limit): not touched again until the flow's spec changes (or the operator restarts).
                self._unusable[(key, flow.generation)] = (exc.reason, str(exc))
            raise
        finally:
            self._busy_queues.discard(key)

    def _lease_end(self) -> float:
        until = getattr(self.leader, "leading_until", None)
        return until() if until is not None else float("inf")

    async def _address(self, flow: FlowRecord, credentials: Any) -> BrokerAddress:
        assert flow.spec is not None and flow.spec.source.connection is not None
        source, connection = flow.spec.source, flow.spec.source.connection
        if not broker_allowed(connection.address, self.allowed_brokers):
            raise ConfigurationError(
                f"spec.source.connection.address {connection.address} is not a broker this operator may connect to: "
                "its option --allowed-broker (FLOWKEEPER_ALLOWED_BROKERS) must list it",
                reason="BrokerNotAllowed",
            )
        username_ref = credentials.username_secret if credentials else connection.username_secret
        password_ref = credentials.password_secret if credentials else connection.password_secret
        return BrokerAddress(
            broker=str(source.broker),
            address=connection.address,
            vhost=source.vhost,
            username=await self._secret(flow.namespace, username_ref),
            password=await self._secret(flow.namespace, password_ref),
        )

    async def _secret(self, namespace: str, ref: SecretKeyRef | None) -> str | None:
        """The cache lives on the loop's thread; only the GET runs on a thread."""
        if ref is None:
            return None
        now = time.monotonic()
        self._secrets = {key: entry for key, entry in self._secrets.items() if entry[0] > now}
        key = (namespace, ref.name, ref.key)
        if key in self._secrets:
            return self._secrets[key][1]
        try:
            value = await asyncio.to_thread(self.gateway.read_secret_key, namespace, ref.name, ref.key)
        except ConfigurationError as exc:
            reason = {"NotFound": "SecretNotFound", "Forbidden": "SecretForbidden"}.get(exc.reason, exc.reason)
            raise ConfigurationError(f"Secret {namespace}/{ref.name} key {ref.key!r}: {exc}", reason=reason) from exc
        self._secrets[key] = (now + SECRET_SECONDS, value)
        return value

    # ------------------------------------------------------------------------------------- review

    def _known_empty(self, flow: FlowRecord) -> bool:
        """Prometheus says the dead letters are empty, and so did the last review: nothing to read
        (at thousands of flows, a broker connection per flow and minute would be the cost)."""
        depth = (flow.status.get("signals") or {}).get("deadLetterDepth")
        last = self.store.reviews.get(flow.uid)
        return depth == 0 and last is not None and last.get("depth") == 0 and "error" not in last

    async def _review(self, flow: FlowRecord) -> None:
        self._next_review[flow.uid] = self.monotonic() + self.review_interval
        started = time.monotonic()
        try:
            review: Review = await self._broker_call(
                flow, None, lambda broker, route, deadline: broker.review(route.dead_letters, limit=self.review_limit, deadline=deadline),
                REVIEW_SECONDS,
            )
        except FlowkeeperError as exc:
            previous = self.store.reviews.get(flow.uid) or {"depth": 0, "examined": 0}
            self.store.reviews[flow.uid] = {**previous, "error": f"{exc.reason}: {exc}"[:1024]}
            metrics.DEAD_LETTER_REVIEWS.labels(outcome="failed").inc()
            log.warning("dead-letter review failed: %s", exc, extra={"flow": flow.name, "namespace": flow.namespace, "stage": "review", "reason": exc.reason})
            return
        metrics.DEAD_LETTER_REVIEWS.labels(outcome="done").inc()
        metrics.DEAD_LETTER_REVIEW_SECONDS.observe(time.monotonic() - started)
        if flow.uid in self.store.flows:
            found = review_status(review, self.wall_clock())
            previous = self.store.reviews.get(flow.uid) or {}
            # Unchanged counts keep their time: the flow's status is not rewritten for a review that found the same.
            if {k: v for k, v in previous.items() if k != "reviewedAt"} != {k: v for k, v in found.items() if k != "reviewedAt"}:
                self.store.reviews[flow.uid] = found
        await self._clean_orphan_markers(flow, review)

    async def _clean_orphan_markers(self, flow: FlowRecord, review: Review) -> None:
        """Markers of redrives that are gone or done (deleted while the operator was down, killed
        before their last step) are removed, once every redrive is known."""
        if not review.markers or not self.store.redrives_seeded:
            return
        live = {r.uid for r in self.store.redrives.values() if r.holds_marker}
        for uid in review.markers - live - self._busy:
            await self._finish(flow, uid, None)

    async def _finish(self, flow: FlowRecord, uid: str, cutoff: Any) -> None:
        try:
            await self._broker_call(flow, None, lambda broker, route, _: broker.finish(route.dead_letters, redrive_uid=uid, cutoff=cutoff), REVIEW_SECONDS)
        except FlowkeeperError as exc:
            log.warning("cutoff marker not removed: %s", exc, extra={"flow": flow.name, "namespace": flow.namespace, "stage": "redrive", "reason": exc.reason})

    # ------------------------------------------------------------------------------------- redrive

    async def _step(self, record: RedriveRecord) -> None:
        try:
            await self._step_once(record)
        except Exception:  # noqa: BLE001 - a bug costs this redrive a retry, never the others
            log.exception("redrive step failed", extra={"redrive": record.name, "namespace": record.namespace, "stage": "redrive", "outcome": "error"})
            self._again(record.uid, rules.BLOCKED_RETRY)

    async def _step_once(self, record: RedriveRecord) -> None:
        flow = self._flow_of(record)
        pending = self._pending.get(record.uid)
        if self.store.selector.requirements and flow is None and pending is None:
            # Sharded (--selector): a redrive of a flow this replica does not serve is its shard's.
            self._again(record.uid, rules.BLOCKED_RETRY)
            return
        if pending is not None:
            # A broker step whose result was not written yet (a conflict, a failed write): written
            # first, onto the redrive as it is stored now, so that no batch goes uncounted.
            await self._conclude(record, pending(record))
            return
        situation = Situation(flow=flow, now=self.wall_clock())
        if record.cutoff is None and flow is not None and flow.spec is not None and record.spec is not None and not record.spec.dry_run:
            rate, problem = await self._cause_rate(flow, record)
            situation = Situation(flow=flow, cause_rate=rate, cause_problem=problem, now=situation.now)
        step = rules.decide(record, situation)
        if step.action in (Action.none, Action.finish) or flow is None or record.spec is None:
            await self._conclude(record, step)
            return
        # Before a broker step, the status is written only when the phase changes: the step's own
        # result is written right after it, and the broker keeps the truth in between.
        if step.status.get("phase") != record.phase and not await self._write(record, step):
            return
        result = await self._broker_step(self.store.redrives.get(record.uid, record), flow, step.action)
        self._pending[record.uid] = result
        await self._conclude(record, result(self.store.redrives.get(record.uid, record)))

    async def _conclude(self, record: RedriveRecord, step: Step) -> None:
        """Writes a step's status. A step that ends the redrive removes its marker first: once the
        status says it ended, the dead letters hold no marker of it (a kill in between ends it again,
        and removing a marker that is gone changes nothing)."""
        current = self.store.redrives.get(record.uid, record)
        if step.action == Action.finish and current.cutoff is not None:
            flow = self._flow_of(current)
            if flow is not None and route_of(flow) is not None:
                await self._finish(flow, current.uid, current.cutoff)
        if await self._write(record, step):
            self._pending.pop(record.uid, None)
            self._again(record.uid, step.retry_in)

    async def _broker_step(self, record: RedriveRecord, flow: FlowRecord, action: Action) -> Callable[[RedriveRecord], Step]:
        """Runs one broker step; returns how to turn its outcome into the redrive's next status."""
        spec = record.spec
        assert spec is not None
        route = route_of(flow)
        try:
            if action == Action.begin:
                cutoff = await self._broker_call(flow, spec.credentials, lambda broker, r, _: broker.begin(r.dead_letters, redrive_uid=record.uid), BATCH_SECONDS)
                crashpoints.after_write("redrive", "begin")
                return lambda current: rules.after_begin(current, cutoff, route, self.wall_clock())
            verifying = action == Action.verify
            result = await self._broker_call(flow, spec.credentials, lambda broker, r, deadline: broker.move(
                r.dead_letters, r.queue, redrive_uid=record.uid, cutoff=record.cutoff or Cutoff("", 0), selection=rules.selection_of(spec),
                batch=0 if verifying else _batch(spec, record), dry_run=spec.dry_run, scan_limit=self.scan_limit, deadline=deadline,
            ), BATCH_SECONDS)
            crashpoints.after_write("redrive", "move")
            self._cutoff_misses.pop(record.uid, None)
            metrics.DEAD_LETTERS_MOVED.inc(result.moved)
            if verifying:
                up = self._verify_time_up(record)
                return lambda current: rules.after_verify(current, result.refailed, self.wall_clock(), time_up=up)
            return lambda current: rules.after_batch(current, result, self.wall_clock())
        except CutoffLost as exc:
            if action == Action.verify and self._verify_time_up(record):
                # Verifying is over and the marker is gone: removed by this redrive's own end, which a
                # kill interrupted before its status was written. It ends as it was going to.
                return lambda current: rules.after_verify(current, 0, self.wall_clock(), time_up=True)
            # Another reader may hold the marker unacknowledged for a moment (a person browsing the queue,
            # the old leader's last call): lost only when it is missing several times in a row.
            misses = self._cutoff_misses.get(record.uid, 0) + 1
            self._cutoff_misses[record.uid] = misses
            lost = misses >= CUTOFF_MISSES
            reason, message = ("CutoffLost" if lost else "CutoffNotSeen"), str(exc)
            return lambda current: rules.after_failure(current, reason, message, lost_cutoff=lost, configuration=False, now=self.wall_clock())
        except FlowkeeperError as exc:
            configuration = isinstance(exc, ConfigurationError)
            reason, message = exc.reason, str(exc)
            return lambda current: rules.after_failure(current, reason, message, lost_cutoff=False, configuration=configuration, now=self.wall_clock())

    def _verify_time_up(self, record: RedriveRecord) -> bool:
        """Whether verifyFor has passed, on the monotonic clock: its end is fixed the first time this
        replica sees the redrive verifying, from what status.verifyUntil leaves of it, never more than
        verifyFor (a wall clock stepped back cannot stretch it, one stepped forward only ends it early
        once, at the first look after a restart)."""
        deadline = self._verify_deadline.get(record.uid)
        if deadline is None:
            assert record.spec is not None
            until = parse_rfc3339(record.status.get("verifyUntil"))
            left = 0.0 if until is None else until - self.wall_clock()
            deadline = self.monotonic() + min(max(0.0, left), to_seconds(record.spec.verify_for))
            self._verify_deadline[record.uid] = deadline
        return self.monotonic() >= deadline

    def _again(self, uid: str, seconds: float | None) -> None:
        self._next_step[uid] = self.monotonic() + (rules.BLOCKED_RETRY if seconds is None else seconds)

    async def _cause_rate(self, flow: FlowRecord, record: RedriveRecord) -> tuple[float | None, str | None]:
        if self.signals is None:
            return None, "the operator runs without a Prometheus address"
        assert flow.spec is not None and record.spec is not None
        target = FlowTarget(flow.uid, flow.namespace, flow.name, flow.spec)
        window = to_seconds(record.spec.cause_window)
        rate, problem = await asyncio.to_thread(self.signals.error_rate, target, rules.checked_classes(record.spec), window)
        consumers = self.store.target_of(flow)
        if rate is None and problem == NO_CONSUMER_SERIES and consumers is not None and consumers.replicas == 0:
            return 0.0, None  # no consumer runs, none fails: the redrive's own backlog will start them
        return rate, problem

    async def _write(self, record: RedriveRecord, step: Step) -> bool:
        """Writes the step's status (when it changed) and its Events. False: not written, the step is
        dropped (a conflict or another failure: the redrive is decided again from what is stored)."""
        if not self.leader.is_leading():
            return False
        current = self.store.redrives.get(record.uid)
        if current is None:
            return False
        patch = status_patch(step.status, current.status)
        if patch:
            try:
                stored = await asyncio.to_thread(self.gateway.patch_redrive_status, record.namespace, record.name, patch, current.resource_version or None)
            except ConflictError:
                self._again(record.uid, 0.5)
                return False
            except FlowkeeperError as exc:
                log.warning("redrive status not written: %s", exc, extra={"redrive": record.name, "namespace": record.namespace, "stage": "redrive", "reason": exc.reason})
                if exc.reason == "NotFound":
                    self.store.redrive_event("DELETED", {"metadata": {"uid": record.uid, "namespace": record.namespace, "name": record.name}})
                self._again(record.uid, rules.BLOCKED_RETRY)
                return False
            self.store.redrive_written(record.uid, stored)
        for type_, reason, message in step.events:
            log.info(message, extra={"redrive": record.name, "namespace": record.namespace, "stage": "redrive", "reason": reason})
            await self.recorder.record(record.reference, type_, reason, message)
        return True


def _batch(spec: Any, record: RedriveRecord) -> int:
    if spec.max_messages is None:
        return spec.batch_size
    return max(0, min(spec.batch_size, spec.max_messages - int(record.status.get("moved") or 0)))


def broker_allowed(address: str, allowed: frozenset[str]) -> bool:
    """Every host:port of the address is listed (case-blind; amqp URLs compared by their host:port).
    Nothing listed: no broker (flows' Secrets go to no address the operator was not told of)."""
    hosts = address.split("://", 1)[1].rstrip("/") if "://" in address else address
    return all(host.strip().lower() in allowed for host in hosts.split(","))
