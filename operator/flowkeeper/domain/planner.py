"""The planner: one flow's facts in, the status to record, the replica count to set and the Events
to post out. Pure: no I/O, the clocks are arguments. The executor applies the plan in the order it
says and skips every write whose value did not change.

Order of concerns, each answering one class of trouble (docs/health.md):
0. ownership: a scale target claimed by an older flow is left alone (domain/ownership.py);
1. configuration: pause (consumers to 0, backlog kept in the queue) or alert, and resume when fixed
   (domain/pause.py);
2. capacity: scale (domain/scaling.py), never down on missing or impossible metrics, never against
   another writer of the replicas (domain/ownership.py);
3. health: judge the signals (domain/health.py) into a severity, a phase and the Healthy condition.

Two clocks: `now` is wall time, for the timestamps users read (conditions, lastScaleTime); windows
(stabilization, idleAfter, grace periods, hold-offs) run on `Inputs.monotonic`, so a clock step of
the machine neither stops nor shortens them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pydantic.alias_generators import to_camel

from flowkeeper.api.v1alpha1 import IntegrationFlowSpec
from flowkeeper.domain import conditions as cond
from flowkeeper.domain import ownership, pause
from flowkeeper.domain.conditions import rfc3339
from flowkeeper.domain.flow import TargetRecord, FlowRecord
from flowkeeper.domain.redrive import route_of
from flowkeeper.domain.health import HealthAssessment, assess, judged_alike_later
from flowkeeper.domain.pause import RESUME_ANNOTATION, Cause
from flowkeeper.domain.scaling import ScalingDecision, ScalingMemory, Steady, decide
from flowkeeper.domain.signals import FlowSignals, SignalsFailure

__all__ = ["RESUME_ANNOTATION", "Event", "FlowMemory", "Inputs", "Plan", "plan", "plan_failure", "repeated"]


# A busy flow's status restates its live numbers (signals, condition messages) at most this often;
# the exact values are the operator's per-flow metrics (observability/metrics.py).
STATUS_REFRESH_SECONDS = 60.0
# status.signals is rewritten between refreshes only when a value moves by at least this factor
# (or appears, goes, or reaches or leaves zero).
SIGNAL_MOVE_FACTOR = 2.0
# A flow applied together with its Deployment (kubectl apply -f dir/, an Argo CD sync) can reach the
# operator before the Deployment does: the two come through separate watches. For this long after the
# flow's creationTimestamp a target not seen yet is awaited (phase Pending), not taken for missing
# (a pause and a P1 alert that the next watch event would undo).
TARGET_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class FlowMemory:
    """What the planner keeps between passes, in the operator's memory only (monotonic times).
    Everything that must survive a restart (the pause, replicas before it) is in the flow's status."""

    scaling: ScalingMemory = field(default_factory=ScalingMemory)
    resumed_at: float | None = None
    not_ready_since: float | None = None  # since when no consumer is ready while some are wanted
    conflict: ownership.ConflictMemory = field(default_factory=ownership.ConflictMemory)
    refreshed_at: float | None = None  # when the status last restated live numbers (see _Builder)


def _evolve(memory: FlowMemory, **changes: Any) -> FlowMemory:
    """dataclasses.replace without its per-call field walk: FlowMemory has no __post_init__, and this
    runs several times for every flow of every pass."""
    evolved = object.__new__(FlowMemory)
    evolved.__dict__.update(memory.__dict__, **changes)
    return evolved


@dataclass(frozen=True)
class Inputs:
    flow: FlowRecord
    target: TargetRecord | None
    signals: FlowSignals | None = None  # None: not read (no Prometheus configured, or the read failed)
    failure: SignalsFailure | None = None
    # False: `signals` is the last pass's reading, planned again after a watch event; it is not a new
    # observation (no failure counted, no recommendation remembered, no activity seen).
    fresh_signals: bool = True
    metrics_enabled: bool = False
    memory: FlowMemory = field(default_factory=FlowMemory)
    # After a resume, configuration errors counted before the pause still show in rate() windows.
    config_error_grace_seconds: float = 90.0
    monotonic: float | None = None  # the monotonic clock for windows; None: use `now` (tests)
    owner: FlowRecord | None = None  # the flow that owns the scale target (the oldest claim)
    outage: bool = False  # the operator's Prometheus is down for every flow: reported once, not per flow
    target_watched: bool = True  # False: the operator does not watch this kind of scale target
    conflict_hold_off: float = ownership.FIRST_HOLD_OFF
    dead_letters: dict[str, Any] | None = None  # the last review of the flow's dead letters (status.deadLetters)
    replicas_cap: int | None = None  # a running DeadLetterRedrive's spec.maxReplicas


@dataclass(frozen=True)
class Plan:
    status: dict[str, Any]
    scale_to: int | None = None
    events: tuple[Event, ...] = ()
    memory: FlowMemory = field(default_factory=FlowMemory)
    # Write the status before scaling: a pause's record (with the count to restore) must be on the API
    # server before the consumers go to 0, or a crash in between would lose the count for good.
    status_first: bool = False
    kind: str = ""  # "pause" or "resume" for the plans that start or end a pause (logs, fault tests)
    # Set when nothing in this plan reads the clock: the same inputs give the same plan at any later
    # time, but for the memory, which `repeated` moves on (the loop then skips planning the flow).
    repeatable: Steady | None = None
    # Seconds after which the flow must be planned again even if nothing changes (a grace that ends
    # before its next poll); None: its poll interval and its inputs' changes decide.
    plan_again_in: float | None = None

    def status_changed(self, current: dict[str, Any]) -> bool:
        return _comparable(self.status) != _comparable(current)


def _refresh_due(refreshed_at: float | None, mono: float) -> bool:
    return refreshed_at is None or mono - refreshed_at >= STATUS_REFRESH_SECONDS


def _comparable(status: dict[str, Any]) -> dict[str, Any]:
    # The API server leaves out empty values; compare what it would store.
    return {k: v for k, v in status.items() if v not in (None, [], {})}


class _Builder:
    """Accumulates one pass's status, conditions and Events for a flow.

    `refresh` False: what only restates the same news (a condition whose status and reason stand, with
    a message that carries live numbers; signals that moved less than a meaningful step) keeps what
    the status says, so a busy flow's status is rewritten at most every STATUS_REFRESH_SECONDS, not
    on every pass. Changes of status, reason, generation, replicas and pauses are written at once."""

    def __init__(self, flow: FlowRecord, now: float, *, mono: float | None = None, refreshed_at: float | None = None) -> None:
        self.flow = flow
        self.now = now
        self.mono = mono
        self.refresh = mono is None or _refresh_due(refreshed_at, mono)
        self.status = dict(flow.status)
        self.status.pop("metricsFailures", None)  # left by older versions; no longer in the API
        self.conditions: dict[str, dict[str, Any]] = {c.get("type", ""): c for c in self.status.get("conditions") or []}
        self.events: list[Event] = []
        self.withheld = False  # something kept for the next refresh: a later pass writes it

    def condition(self, type_: str, status: bool | None, reason: str, message: str, *, event: bool = False) -> None:
        previous = self.conditions.get(type_)
        wire = "Unknown" if status is None else str(bool(status))
        # For Paused, ScalingLimited and ScalingConflict, True is the bad news.
        positive = status is False if type_ in cond.TRUE_IS_BAD else status is True
        if previous is None:
            # A new flow that is simply fine gets no Event: with thousands of flows applied at once,
            # "TargetFound" for each would be noise and API load. Bad news is told at once.
            changed = not positive
        else:
            changed = previous.get("status") != wire or previous.get("reason") != reason
        if event and changed:
            self.event("Normal" if positive else "Warning", reason, message)
        made = cond.make_condition(previous, type_, status, reason, message, generation=self.flow.generation, now=self.now)
        if previous is not None and not changed and not self.refresh and previous.get("observedGeneration") == self.flow.generation:
            self.withheld = self.withheld or made != previous
            return  # the same news; its message is brought up to date with the next refresh
        self.conditions[type_] = made

    def _record_claim(self) -> None:
        """status.scaleTarget: the target this flow claims and since when, so the oldest claim is
        known across restarts (domain/ownership.py)."""
        if self.flow.spec is None:
            return
        claim = self.flow.claim
        if claim is None:
            ref = self.flow.spec.scale_target_ref
            first = not self.flow.status.get("scaleTarget")
            claim = {"kind": ref.kind, "name": ref.name, "since": (self.flow.created if first and self.flow.created else rfc3339(self.now))}
        self.status["scaleTarget"] = claim

    def keep(self, type_: str, reason: str, message: str) -> None:
        """Leaves a condition as it is; sets it Unknown when the flow has none yet."""
        if type_ not in self.conditions:
            self.condition(type_, None, reason, message)

    def event(self, type_: str, reason: str, message: str) -> None:
        runbook = self.flow.spec.runbook_url if self.flow.spec else None
        if type_ == "Warning" and runbook and runbook not in message:
            message = f"{message} (runbook: {runbook})"
        self.events.append(Event(type_, reason, message))

    def done(
        self, scale_to: int | None, memory: FlowMemory, *, status_first: bool = False, repeatable: Steady | None = None,
        plan_again_in: float | None = None,
    ) -> Plan:
        self.status["conditions"] = cond.ordered(self.conditions.values())
        if self.refresh and self.mono is not None:
            memory = _evolve(memory, refreshed_at=self.mono)
        self.status["observedGeneration"] = self.flow.generation
        self._record_claim()
        paused_before, paused_now = bool(self.flow.status.get("pause")), bool(self.status.get("pause"))
        kind = "pause" if paused_now and (scale_to == 0 or not paused_before) else "resume" if paused_before and not paused_now else ""
        return Plan(
            status=self.status, scale_to=scale_to, events=tuple(self.events), memory=memory, status_first=status_first, kind=kind,
            repeatable=repeatable, plan_again_in=plan_again_in,
        )


def plan_failure(inputs: Inputs, error: Exception, *, now: float) -> Plan:
    """The plan for a flow whose planning raised: it says why on the flow and changes nothing else,
    so one flow's bad number never stops the pass for the others."""
    out = _Builder(inputs.flow, now)
    message = f"the flow could not be planned ({type(error).__name__}: {error}); replicas unchanged"
    out.condition(cond.READY, False, "PlanFailed", message[:1024], event=True)
    return out.done(None, inputs.memory)


def plan(inputs: Inputs, *, now: float) -> Plan:
    flow, target = inputs.flow, inputs.target
    mono = now if inputs.monotonic is None else inputs.monotonic
    out = _Builder(flow, now, mono=mono, refreshed_at=inputs.memory.refreshed_at)
    if flow.spec is None:
        out.condition(cond.READY, False, "InvalidSpec", f"the spec does not parse: {flow.spec_error}", event=True)
        out.status["phase"] = "Pending"
        return out.done(None, inputs.memory)
    spec = flow.spec
    if target is not None:
        out.status.update(replicas=target.replicas, readyReplicas=target.ready_replicas)
    if inputs.dead_letters is not None:
        out.status["deadLetters"] = inputs.dead_letters
    elif route_of(flow) is None:
        out.status.pop("deadLetters", None)  # no dead letters to reach (any more): an old review would mislead

    if not inputs.target_watched:
        return _kind_not_watched(inputs, out)
    if inputs.owner is not None and inputs.owner.uid != flow.uid:
        return _claimed_elsewhere(inputs, out)
    awaited_for = _target_grace_left(flow, target, now)
    if awaited_for is not None:
        return _awaiting_target(inputs, out, awaited_for)

    in_grace = _seconds_since_resume(inputs, now, mono) < inputs.config_error_grace_seconds
    facts = pause.Facts(flow, target, inputs.signals, inputs.failure, in_resume_grace=in_grace)
    cause = pause.configuration_cause(facts)
    if cause is not None and (spec.paused or spec.on_configuration_error == "Pause"):
        return _paused(inputs, out, facts, cause, mono)
    scale_to, memory = None, inputs.memory
    if flow.status.get("pause"):
        scale_to, memory = _resume(inputs, out, mono)
        in_grace = True
    # "Resumed" for the grace period: the condition's transition time then tells a restarted operator
    # when the flow resumed.
    not_paused = ("Resumed", "resumed: the cause of the pause is gone") if in_grace else ("NotPaused", "the flow is consuming")

    if target is None:
        message = f"{flow.target_text} not found"
        out.condition(cond.READY, False, "TargetNotFound", message, event=True)
        out.condition(cond.PAUSED, False, not_paused[0], "onConfigurationError is Alert")
        out.status.update(phase="Down", severity="P1")
        return out.done(None, memory)
    out.condition(cond.READY, True, "TargetFound", f"{target.path} found", event=True)
    out.condition(cond.PAUSED, False, *not_paused)
    if not inputs.metrics_enabled:
        out.condition(cond.METRICS_AVAILABLE, None, "NoPrometheus", "the operator runs without a Prometheus address")
        out.status["phase"] = "Running"
        return out.done(scale_to, memory)

    current = scale_to if scale_to is not None else target.spec_replicas
    decision = decide(
        spec.scaling,
        None if inputs.failure else _on_monotonic_clock(inputs.signals, now, mono),
        current_replicas=current,
        ready_replicas=target.ready_replicas,
        memory=memory.scaling,
        now=mono,
        fresh=inputs.fresh_signals,
    )
    memory = _evolve(memory, scaling=decision.memory)
    desired = _capped(decision.desired_replicas, current, inputs.replicas_cap)
    holding, memory = (False, memory) if scale_to is not None else _hold_off_other_writers(inputs, out, target, memory, mono)
    if holding:
        desired = target.spec_replicas  # another writer's count stands until the hold-off ends
    else:
        if desired != current:
            scale_to = desired
            out.event("Normal", "Scaled", f"replicas {current} -> {scale_to}: {decision.reason}")
            out.status.update(lastScaleTime=rfc3339(now), lastScaleReason=decision.reason)
    out.status["desiredReplicas"] = desired
    failures_reached = decision.memory.metrics_failures >= spec.scaling.fallback.after_failures
    _record_metrics(out, inputs, decision, failures_reached)
    _record_scaling_limit(out, spec, decision)

    none_ready = target.ready_replicas == 0 and desired > 0
    not_ready_since = (memory.not_ready_since or mono) if none_ready else None
    memory = _evolve(memory, not_ready_since=not_ready_since)
    health = assess(
        spec.health,
        None if inputs.failure else inputs.signals,
        ready_replicas=target.ready_replicas,
        desired_replicas=desired,
        scaling_limited=decision.limited_by is not None,
        now=now,
        not_ready_since=None if not_ready_since is None else now - (mono - not_ready_since),
    )
    _record_health(out, inputs, health, alert=cause, failures_reached=failures_reached)
    severity = "P1" if cause else health.severity
    out.status["severity"] = str(getattr(severity, "value", severity))
    out.status["phase"] = _phase(out.status["severity"], target, scale_to)
    # The clock entered this plan only through the scaling windows and idleAfter (decision.steady
    # says they cannot move the count), the resume grace, the foreign-writer hold-off, two health
    # rules, and what the refresh withheld. Without any of them it repeats, also in an hour.
    time_free = (
        scale_to is None and not out.events and not out.withheld and cause is None and not in_grace and not holding
        and inputs.signals is not None and judged_alike_later(inputs.signals, not_ready_since=not_ready_since)
    )
    return out.done(scale_to, memory, repeatable=decision.steady if time_free else None)


def repeated(memory: FlowMemory, steady: Steady, mono: float) -> FlowMemory:
    """The memory a repeatable plan leaves when it is made again at `mono` (Plan.repeatable): also the
    refresh comes round as it would, so the next real plan restates numbers when it would have."""
    refreshed_at = mono if _refresh_due(memory.refreshed_at, mono) else memory.refreshed_at
    return _evolve(memory, scaling=steady.memory(memory.scaling, mono), refreshed_at=refreshed_at)


def _capped(desired: int, current: int, cap: int | None) -> int:
    """A running redrive's maxReplicas limits scaling up only: replicas the flow has already stay
    (the cap never scales a flow down, also not while metrics are missing)."""
    if cap is None or desired <= current or desired <= cap:
        return desired
    return max(current, cap)


def _seconds_since_resume(inputs: Inputs, now: float, mono: float) -> float:
    """From memory (monotonic); after a restart from the Paused condition's last transition to False,
    the resume itself, so that a restart right after a resume does not take the errors still in the
    rate window for new ones and pause the fixed flow again."""
    if inputs.memory.resumed_at is not None:
        return mono - inputs.memory.resumed_at
    paused = cond.get_condition(inputs.flow.status.get("conditions") or [], cond.PAUSED) or {}
    if paused.get("status") != "False" or paused.get("reason") != "Resumed":
        return math.inf
    since = cond.parse_rfc3339(paused.get("lastTransitionTime"))
    return math.inf if since is None else max(0.0, now - since)


def _on_monotonic_clock(signals: FlowSignals | None, now: float, mono: float) -> FlowSignals | None:
    """Signals are stamped with wall time; scaling judges their age on the monotonic clock."""
    return None if signals is None else signals.observed_on(mono - (now - signals.observed_at))


# ------------------------------------------------------------------------------ ownership


def _hold_off_other_writers(inputs: Inputs, out: _Builder, target: TargetRecord, memory: FlowMemory, mono: float) -> tuple[bool, FlowMemory]:
    """Whether another writer's count must stand this pass (domain/ownership.py), and says so."""
    verdict = ownership.judge(inputs.flow, target, memory.conflict, mono, inputs.conflict_hold_off)
    memory = _evolve(memory, conflict=verdict.memory)
    if not verdict.holding:
        out.condition(cond.SCALING_CONFLICT, False, "NoConflict", "no other writer changed the replicas")
        return False, memory
    out.condition(
        cond.SCALING_CONFLICT,
        True,
        "ForeignWriter",
        f"spec.replicas of {target.path} was set to {target.spec_replicas} by {verdict.manager}; "
        f"Flowkeeper does not write it for {verdict.memory.hold_off:.0f}s, then corrects it once",
        event=True,
    )
    return True, memory


def _kind_not_watched(inputs: Inputs, out: _Builder) -> Plan:
    """A target kind this operator does not watch is unknown to it, not missing: it is said so, and
    nothing is paused or written (pausing would stop nothing and claim a cause that is not there)."""
    spec = inputs.flow.spec
    assert spec is not None
    kind = spec.scale_target_ref.kind
    out.condition(
        cond.READY, False, "TargetKindNotWatched",
        f"this operator does not watch {kind}s: run it with --watch-rollouts (chart value argoRollouts.enabled)",
        event=True,
    )
    out.status.update(phase="Pending", severity="None")
    out.status.pop("desiredReplicas", None)
    return out.done(None, inputs.memory)


def _target_grace_left(flow: FlowRecord, target: TargetRecord | None, now: float) -> float | None:
    """Seconds the flow still awaits a target the operator has never seen for it (TARGET_GRACE_SECONDS
    after its creation), or None: the target is there, or was once (the status holds desiredReplicas:
    a target deleted is missing at once, and its count is what a pause keeps), the flow is older (or
    its age unknown, or further off than the grace, as with a clock far from the API server's), or it
    is paused already (a pause is never undone by a grace)."""
    status = flow.status
    if target is None and flow.spec is not None and not flow.spec.paused and not status.get("pause") and "desiredReplicas" not in status:
        created = cond.parse_rfc3339(flow.created)
        if created is not None and abs(now - created) < TARGET_GRACE_SECONDS:
            return created + TARGET_GRACE_SECONDS - now
    return None


def _awaiting_target(inputs: Inputs, out: _Builder, grace_left: float) -> Plan:
    """A young flow whose target has not reached the operator yet: said so, nothing paused, no
    Event; planned again when the target comes, or when the grace ends."""
    out.condition(
        cond.READY, False, "TargetPending",
        f"{inputs.flow.target_text} not seen yet; it counts as not found {TARGET_GRACE_SECONDS:g}s after the flow was created",
    )
    out.status.update(phase="Pending", severity="None")
    return out.done(None, inputs.memory, plan_again_in=grace_left)


def _claimed_elsewhere(inputs: Inputs, out: _Builder) -> Plan:
    flow, owner = inputs.flow, inputs.owner
    assert owner is not None and flow.spec is not None
    out.condition(
        cond.READY,
        False,
        "TargetClaimed",
        f"{flow.target_text} is scaled by IntegrationFlow {owner.path} "
        "(the oldest claim); this flow does not write it",
        event=True,
    )
    out.status.update(phase="Pending", severity="None")
    out.status.pop("desiredReplicas", None)
    return out.done(None, inputs.memory)


# ------------------------------------------------------------------------------ configuration & pause


def _paused(inputs: Inputs, out: _Builder, facts: pause.Facts, cause: Cause, mono: float) -> Plan:
    target = inputs.target
    out.status["pause"] = pause.pause_record(facts, cause, rfc3339(out.now))
    manual = cause.reason == pause.MANUAL
    what = "paused by hand" if manual else "paused: consumers stopped, the backlog waits in the queue"
    out.condition(cond.PAUSED, True, cause.reason, f"{what}; {cause.message}", event=True)
    if target is None:
        out.condition(cond.READY, False, "TargetNotFound", cause.message)
    else:
        out.condition(cond.READY, False, "Paused", what)
    out.status.update(phase="Paused", severity="None" if manual else "P1", desiredReplicas=0)
    # The backlog and the dead letters are still read while paused: they are what ops look at.
    if inputs.signals is not None and inputs.failure is None:
        _record_signal_values(out, inputs.signals)
    memory = inputs.memory
    scale_to = 0 if target is not None and target.spec_replicas != 0 else None
    if target is not None:
        # Someone scaling a paused flow's consumers up (a person debugging, Argo CD self-heal) is not
        # fought either: the same bounded hold-off as for a running flow.
        holding, memory = _hold_off_other_writers(inputs, out, target, memory, mono)
        if holding:
            scale_to = None
    if scale_to is not None:
        out.status.update(lastScaleTime=rfc3339(out.now), lastScaleReason=f"paused ({cause.reason})")
    return out.done(scale_to, memory, status_first=True)


def _resume(inputs: Inputs, out: _Builder, mono: float) -> tuple[int | None, FlowMemory]:
    flow = inputs.flow
    record = flow.status["pause"]
    out.status.pop("pause", None)
    # Autoscaling starts again from the restored count, with fresh stabilization history.
    memory = FlowMemory(scaling=ScalingMemory(), resumed_at=mono, conflict=inputs.memory.conflict)
    restored = pause.replicas_on_resume(flow, inputs.target)
    if restored is None:
        out.event("Normal", "Resumed", f"cause gone ({record.get('reason')})")
        return None, memory
    out.event("Normal", "Resumed", f"cause gone ({record.get('reason')}); replicas restored to {restored}")
    assert inputs.target is not None  # replicas_on_resume needs it
    if inputs.target.spec_replicas == restored:
        return None, memory
    out.status.update(lastScaleTime=rfc3339(out.now), lastScaleReason=f"resumed after {record.get('reason')}")
    return restored, memory


# ---------------------------------------------------------------------------------- metrics & health


def _unread_text(unread: dict[str, str]) -> str:
    # Signal names as the status spells them (camelCase, like every API field).
    return ", ".join(f"{to_camel(k)} ({why})" for k, why in sorted(unread.items()))


def _record_metrics(out: _Builder, inputs: Inputs, decision: ScalingDecision, failures_reached: bool) -> None:
    holding = f"replicas held at {decision.desired_replicas}, never scaled down on missing metrics"
    if inputs.failure is not None:
        if not failures_reached:
            # A pass or two without metrics is noise; the condition flips after fallback.afterFailures.
            out.keep(cond.METRICS_AVAILABLE, "SignalsPending", "the flow's signals have not been read yet")
            return
        transient = inputs.failure.error_class.value == "transient"
        out.condition(
            cond.METRICS_AVAILABLE, False, inputs.failure.reason, f"{inputs.failure.message}; {holding}",
            event=not (transient and inputs.outage),
        )
        return
    signals = inputs.signals
    unread = dict(signals.unread) if signals is not None else {}
    # A signal Prometheus did not answer this pass is not the flow's news: with a slow query over
    # thousands of flows it comes and goes, and each flip would rewrite every flow's status.
    own_unread = {k: why for k, why in unread.items() if k not in signals.unanswered} if signals is not None else {}
    if not decision.metrics_available:
        if signals is not None and signals.backlog_unanswered is not None:
            # Prometheus did not answer the backlog query: its trouble, said like a failed read.
            if failures_reached:
                out.condition(
                    cond.METRICS_AVAILABLE, False, signals.backlog_unanswered, f"not read: {_unread_text(unread)}; {holding}",
                    event=not inputs.outage,
                )
            else:
                out.keep(cond.METRICS_AVAILABLE, "SignalsPending", "the flow's backlog has not been read yet")
        elif "queue_depth" in unread:
            # An impossible backlog is a broken exporter or query: said at once, never acted on.
            out.condition(cond.METRICS_AVAILABLE, False, "ImpossibleValue", f"not used: {_unread_text(unread)}; {holding}", event=True)
        elif failures_reached:
            out.condition(cond.METRICS_AVAILABLE, False, "NoBacklogSignal", f"no queueDepth series; {holding}", event=True)
        else:
            out.keep(cond.METRICS_AVAILABLE, "SignalsPending", "the flow's backlog has not been read yet")
    elif own_unread:
        out.condition(cond.METRICS_AVAILABLE, True, "SomeSignalsUnread", f"the backlog was read; not read: {_unread_text(own_unread)}")
    else:
        previous = out.conditions.get(cond.METRICS_AVAILABLE) or {}
        # Recovering from an outage is told once for the operator, not once per flow; a new flow's
        # first reading is no news either (thousands applied at once would post thousands of Events).
        quiet = previous.get("reason") in _OUTAGE_REASONS or previous.get("reason") == "SignalsPending"
        out.condition(cond.METRICS_AVAILABLE, True, "SignalsRead", "the flow's signals were read", event=not quiet)
    if signals is not None:
        _record_signal_values(out, signals)


# Reasons a whole Prometheus gives when it cannot answer (adapters/prometheus).
_OUTAGE_REASONS = frozenset(
    {"PrometheusUnavailable", "PrometheusTimeout", "PrometheusPassTimeout", "PrometheusQueryFailed", "PrometheusClientError"}
)


def _record_signal_values(out: _Builder, signals: FlowSignals) -> None:
    values = {
        "queueDepth": signals.queue_depth,
        "deadLetterDepth": signals.dead_letter_depth,
        "throughput": _round(signals.throughput),
        "errorRatio": _round(signals.error_ratio),
        "latencySeconds": _round(signals.latency_seconds),
        # Percent, as users write them in the spec; FlowSignals carries fractions.
        "cpuUtilization": _percent(signals.cpu_utilization),
        "memoryUtilization": _percent(signals.memory_utilization),
    }
    values = {k: v for k, v in values.items() if v is not None}
    previous = {k: v for k, v in (out.status.get("signals") or {}).items() if k != "observedAt"}
    # Rewritten only when a value changed, so an idle flow costs no writes; and a busy flow's small
    # moves wait for the next refresh.
    if values == previous:
        return
    if out.refresh or moved_meaningfully(previous, values):
        out.status["signals"] = {**values, "observedAt": rfc3339(signals.observed_at)}
    else:
        out.withheld = True


def moved_meaningfully(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether a signal appeared or went, reached or left zero, or moved by SIGNAL_MOVE_FACTOR or more."""
    if before.keys() != after.keys():
        return True
    for key, new in after.items():
        old = before[key]
        if not isinstance(old, (int, float)) or not isinstance(new, (int, float)):
            if old != new:
                return True  # not numbers (a status edited by hand): any change counts
            continue
        if (old == 0) != (new == 0):
            return True
        low, high = sorted((abs(old), abs(new)))
        if low and high >= SIGNAL_MOVE_FACTOR * low:
            return True
    return False


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else round(fraction * 100, 2)


def _record_scaling_limit(out: _Builder, spec: IntegrationFlowSpec, decision: ScalingDecision) -> None:
    if decision.limited_by:
        cap = spec.scaling.max_replicas if decision.limited_by == "maxReplicas" else spec.scaling.partitions
        # No live numbers in the message: it would force a status write on every pass at the cap.
        out.condition(cond.SCALING_LIMITED, True, "At" + decision.limited_by[0].upper() + decision.limited_by[1:],
                      f"the backlog wants more consumers than {decision.limited_by}={cap} allows", event=True)
    else:
        out.condition(cond.SCALING_LIMITED, False, "WithinLimits", "replicas are within their limits")


def _record_health(out: _Builder, inputs: Inputs, health: HealthAssessment, alert: Cause | None, failures_reached: bool) -> None:
    if alert is not None:
        out.condition(cond.HEALTHY, False, alert.reason, f"configuration error (onConfigurationError: Alert): {alert.message}", event=True)
    elif inputs.failure is not None or inputs.signals is None:
        if failures_reached:
            out.condition(cond.HEALTHY, None, "SignalsUnknown", "the flow's signals could not be read")
        else:
            out.keep(cond.HEALTHY, "SignalsUnknown", "the flow's signals have not been read yet")
    else:
        runbook = inputs.flow.spec.runbook_url if inputs.flow.spec else None
        message = health.message if health.healthy or not runbook else f"{health.message}; runbook: {runbook}"
        # Healthy again once the signals are read again (an outage ended) is no news of the flow: the
        # outage's end is told once, for the operator. Bad news after it still is.
        previous = out.conditions.get(cond.HEALTHY) or {}
        back = health.healthy and previous.get("reason") == "SignalsUnknown"
        out.condition(cond.HEALTHY, health.healthy, health.reason, message, event=not back)


def _phase(severity: str, target: TargetRecord, scale_to: int | None) -> str:
    if severity == "P1":
        return "Down"
    if severity in ("P2", "P3"):
        return "Degraded"
    if scale_to is not None or target.spec_replicas != target.ready_replicas:
        return "Scaling"
    return "Running"
