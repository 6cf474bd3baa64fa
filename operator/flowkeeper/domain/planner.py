"""The planner: one flow's facts in, the status to record, the replica count to set and the Events
to post out. Pure: no I/O, the clock is an argument. The controller applies the plan and skips every
write whose value did not change.

Order of concerns, each answering one class of trouble (docs/health.md):
1. configuration: pause (consumers to 0, backlog kept in the queue) or alert, and resume when fixed;
2. capacity: scale (domain/scaling.py), never down on missing metrics;
3. health: judge the signals (domain/health.py) into a severity, a phase and the Healthy condition.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from flowkeeper.api.v1alpha1 import IntegrationFlowSpec
from flowkeeper.domain import conditions as cond
from flowkeeper.domain.conditions import rfc3339
from flowkeeper.domain.flow import DeploymentRecord, FlowRecord
from flowkeeper.domain.health import HealthAssessment, assess
from flowkeeper.domain.scaling import ScalingDecision, ScalingMemory, decide
from flowkeeper.domain.signals import FlowSignals, SignalsFailure

RESUME_ANNOTATION = "flowkeeper.io/resume"
# Causes that can be seen to go away by looking again; a consumer's configuration errors cannot (its
# consumers are stopped while paused), so that pause waits for a fix: new pod template, new spec, or
# the resume annotation. A Secret the operator may not read clears when its RBAC is granted.
SELF_CLEARING = {"TargetNotFound", "SecretNotFound", "SecretKeyNotFound", "SecretForbidden", "InvalidQuery"}


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class FlowMemory:
    """What the planner keeps between passes, in the operator's memory only. Everything that must
    survive a restart (the pause, replicas before it) is in the flow's status instead."""

    scaling: ScalingMemory = field(default_factory=ScalingMemory)
    resumed_at: float | None = None
    not_ready_since: float | None = None  # since when no consumer is ready while some are wanted


@dataclass(frozen=True)
class Inputs:
    flow: FlowRecord
    deployment: DeploymentRecord | None
    signals: FlowSignals | None = None  # None: not read (no Prometheus configured, or the read failed)
    failure: SignalsFailure | None = None
    metrics_enabled: bool = False
    memory: FlowMemory = field(default_factory=FlowMemory)
    # After a resume, configuration errors counted before the pause still show in rate() windows.
    config_error_grace_seconds: float = 90.0


@dataclass(frozen=True)
class Plan:
    status: dict[str, Any]
    scale_to: int | None = None
    events: tuple[Event, ...] = ()
    memory: FlowMemory = field(default_factory=FlowMemory)

    def status_changed(self, current: dict[str, Any]) -> bool:
        return _comparable(self.status) != _comparable(current)


def _comparable(status: dict[str, Any]) -> dict[str, Any]:
    # The API server leaves out empty values; compare what it would store.
    return {k: v for k, v in status.items() if v not in (None, [], {})}


@dataclass(frozen=True)
class _Cause:
    reason: str
    message: str


class _Builder:
    """Accumulates one pass's status, conditions and Events for a flow."""

    def __init__(self, flow: FlowRecord, now: float) -> None:
        self.flow = flow
        self.now = now
        self.status = dict(flow.status)
        self.conditions = list(self.status.get("conditions") or [])
        self.events: list[Event] = []

    def condition(self, type_: str, status: bool | None, reason: str, message: str, *, event: bool = False) -> None:
        previous = cond.get_condition(self.conditions, type_)
        wire = "Unknown" if status is None else str(bool(status))
        # For Paused and ScalingLimited, True is the bad news.
        positive = status is False if type_ in (cond.PAUSED, cond.SCALING_LIMITED) else status is True
        if previous is None:
            # A new flow that is simply fine gets no Event: with thousands of flows applied at once,
            # "TargetFound" for each would be noise and API load. Bad news is told at once.
            changed = not positive
        else:
            changed = previous.get("status") != wire or previous.get("reason") != reason
        if event and changed:
            self.event("Normal" if positive else "Warning", reason, message)
        self.conditions = cond.set_condition(
            self.conditions, type_, status, reason, message, generation=self.flow.generation, now=self.now
        )

    def event(self, type_: str, reason: str, message: str) -> None:
        runbook = self.flow.spec.runbook_url if self.flow.spec else None
        if type_ == "Warning" and runbook and runbook not in message:
            message = f"{message} (runbook: {runbook})"
        self.events.append(Event(type_, reason, message))

    def done(self, scale_to: int | None, memory: FlowMemory) -> Plan:
        self.status["conditions"] = self.conditions
        self.status["observedGeneration"] = self.flow.generation
        return Plan(status=self.status, scale_to=scale_to, events=tuple(self.events), memory=memory)


def plan(inputs: Inputs, *, now: float) -> Plan:
    flow, deployment = inputs.flow, inputs.deployment
    out = _Builder(flow, now)
    if flow.spec is None:
        out.condition(cond.READY, False, "InvalidSpec", f"the spec does not parse: {flow.spec_error}", event=True)
        out.status["phase"] = "Pending"
        return out.done(None, inputs.memory)
    spec = flow.spec
    if deployment is not None:
        out.status.update(replicas=deployment.replicas, readyReplicas=deployment.ready_replicas)

    cause = _configuration_cause(inputs, now)
    pause_wanted = cause is not None and (spec.paused or spec.on_configuration_error == "Pause")
    if pause_wanted:
        return _paused(inputs, out, cause)
    scale_to, memory = None, inputs.memory
    if flow.status.get("pause"):
        scale_to, memory = _resume(inputs, out)

    if deployment is None:
        message = f"consumer Deployment {flow.namespace}/{spec.consumer.deployment} not found"
        out.condition(cond.READY, False, "TargetNotFound", message, event=True)
        out.condition(cond.PAUSED, False, "NotPaused", "onConfigurationError is Alert")
        out.status.update(phase="Down", severity="P1")
        return out.done(None, memory)
    out.condition(cond.READY, True, "TargetFound", f"consumer Deployment {deployment.name} found", event=True)
    out.condition(cond.PAUSED, False, "NotPaused", "the flow is consuming")
    if not inputs.metrics_enabled:
        out.condition(cond.METRICS_AVAILABLE, None, "NoPrometheus", "the operator runs without a Prometheus address")
        out.status["phase"] = "Running"
        return out.done(scale_to, memory)

    current = scale_to if scale_to is not None else deployment.spec_replicas
    decision = decide(
        spec.scaling,
        None if inputs.failure else inputs.signals,
        current_replicas=current,
        ready_replicas=deployment.ready_replicas,
        memory=memory.scaling,
        now=now,
    )
    memory = replace(memory, scaling=decision.memory)
    if decision.desired_replicas != current:
        scale_to = decision.desired_replicas
        out.event("Normal", "Scaled", f"replicas {current} -> {scale_to}: {decision.reason}")
        out.status.update(lastScaleTime=rfc3339(now), lastScaleReason=decision.reason)
    out.status["desiredReplicas"] = decision.desired_replicas
    _record_metrics(out, inputs, decision)
    _record_scaling_limit(out, spec, decision)

    none_ready = deployment.ready_replicas == 0 and decision.desired_replicas > 0
    not_ready_since = (memory.not_ready_since or now) if none_ready else None
    memory = replace(memory, not_ready_since=not_ready_since)
    health = assess(
        spec.health,
        None if inputs.failure else inputs.signals,
        ready_replicas=deployment.ready_replicas,
        desired_replicas=decision.desired_replicas,
        scaling_limited=decision.limited_by is not None,
        now=now,
        not_ready_since=not_ready_since,
    )
    _record_health(out, inputs, health, alert=cause)
    severity = "P1" if cause else health.severity
    out.status["severity"] = str(getattr(severity, "value", severity))
    out.status["phase"] = _phase(out.status["severity"], decision, deployment, scale_to)
    return out.done(scale_to, memory)


# ------------------------------------------------------------------------------ configuration & pause


def _configuration_cause(inputs: Inputs, now: float) -> _Cause | None:
    flow, spec, signals = inputs.flow, inputs.flow.spec, inputs.signals
    assert spec is not None
    if spec.paused:
        return _Cause("Manual", "paused by spec.paused")
    if inputs.deployment is None:
        return _Cause("TargetNotFound", f"consumer Deployment {flow.namespace}/{spec.consumer.deployment} not found")
    if inputs.failure is not None and inputs.failure.error_class.value == "configuration":
        return _Cause(inputs.failure.reason, inputs.failure.message)
    if signals is not None and signals.invalid_queries:
        name, message = sorted(signals.invalid_queries.items())[0]
        return _Cause("InvalidQuery", f"Prometheus rejected the {name} query: {message}")
    in_grace = inputs.memory.resumed_at is not None and now - inputs.memory.resumed_at < inputs.config_error_grace_seconds
    if signals is not None and (signals.configuration_errors or 0) > 0 and not in_grace:
        return _Cause(
            "ConsumerConfigurationError",
            f"the consumers report configuration errors ({signals.configuration_errors:.2g}/s)",
        )
    pause = flow.status.get("pause")
    if pause and pause.get("reason") == "ConsumerConfigurationError" and not _fix_deployed(inputs, pause):
        return _Cause(pause["reason"], pause.get("message", ""))
    return None


def _fix_deployed(inputs: Inputs, pause: dict[str, Any]) -> bool:
    """A consumer-configuration pause ends when something that could fix it changed."""
    flow, deployment = inputs.flow, inputs.deployment
    return (
        (deployment is not None and deployment.template_hash != pause.get("templateHash"))
        or flow.generation != pause.get("specGeneration")
        or flow.annotations.get(RESUME_ANNOTATION) != pause.get("resumeRequest")
    )


def _paused(inputs: Inputs, out: _Builder, cause: _Cause) -> Plan:
    flow, deployment, spec = inputs.flow, inputs.deployment, inputs.flow.spec
    assert spec is not None
    previous = flow.status.get("pause") or {}
    if previous:
        replicas_before = previous.get("replicasBefore")
    else:
        # A Deployment never seen has no count to restore: when it appears it keeps its own.
        replicas_before = deployment.spec_replicas if deployment else flow.status.get("desiredReplicas")
    pause = {"reason": cause.reason, "since": previous.get("since") or rfc3339(out.now), "message": cause.message}
    if replicas_before is not None:
        pause["replicasBefore"] = replicas_before
    if deployment is not None:
        pause["templateHash"] = deployment.template_hash
    elif previous.get("templateHash"):
        pause["templateHash"] = previous["templateHash"]
    pause["specGeneration"] = flow.generation
    if RESUME_ANNOTATION in flow.annotations:
        pause["resumeRequest"] = flow.annotations[RESUME_ANNOTATION]
    out.status["pause"] = pause

    manual = cause.reason == "Manual"
    what = "paused by hand" if manual else "paused: consumers stopped, the backlog waits in the queue"
    out.condition(cond.PAUSED, True, cause.reason, f"{what}; {cause.message}", event=True)
    if deployment is None:
        out.condition(cond.READY, False, "TargetNotFound", cause.message)
    else:
        out.condition(cond.READY, False, "Paused", what)
    out.status.update(phase="Paused", severity="None" if manual else "P1", desiredReplicas=0)
    scale_to = 0 if deployment is not None and deployment.spec_replicas != 0 else None
    if scale_to is not None:
        out.status.update(lastScaleTime=rfc3339(out.now), lastScaleReason=f"paused ({cause.reason})")
    return out.done(scale_to, inputs.memory)


def _resume(inputs: Inputs, out: _Builder) -> tuple[int | None, FlowMemory]:
    pause = inputs.flow.status["pause"]
    spec = inputs.flow.spec
    assert spec is not None
    out.status.pop("pause", None)
    # Autoscaling starts again from the restored count, with fresh stabilization history.
    memory = FlowMemory(scaling=ScalingMemory(), resumed_at=out.now)
    before = pause.get("replicasBefore")
    if before is None or inputs.deployment is None:
        out.event("Normal", "Resumed", f"cause gone ({pause.get('reason')})")
        return None, memory
    restored = max(spec.scaling.min_replicas, min(spec.scaling.max_replicas, int(before)))
    out.event("Normal", "Resumed", f"cause gone ({pause.get('reason')}); replicas restored to {restored}")
    if inputs.deployment.spec_replicas == restored:
        return None, memory
    out.status.update(lastScaleTime=rfc3339(out.now), lastScaleReason=f"resumed after {pause.get('reason')}")
    return restored, memory


# ---------------------------------------------------------------------------------- metrics & health


def _record_metrics(out: _Builder, inputs: Inputs, decision: ScalingDecision) -> None:
    if inputs.failure is not None:
        out.condition(cond.METRICS_AVAILABLE, False, inputs.failure.reason, f"{inputs.failure.message}; {decision.reason}", event=True)
        return
    if not decision.metrics_available:
        out.condition(cond.METRICS_AVAILABLE, False, "NoBacklogSignal", decision.reason, event=True)
    else:
        out.condition(cond.METRICS_AVAILABLE, True, "SignalsRead", "the flow's signals were read", event=True)
    signals = inputs.signals
    if signals is None:
        return
    values = {
        "queueDepth": signals.queue_depth,
        "deadLetterDepth": signals.dead_letter_depth,
        "throughput": _round(signals.throughput),
        "errorRatio": _round(signals.error_ratio),
        "latencySeconds": _round(signals.latency_seconds),
        "cpuUtilization": _round(signals.cpu_utilization),
        "memoryUtilization": _round(signals.memory_utilization),
    }
    values = {k: v for k, v in values.items() if v is not None}
    previous = {k: v for k, v in (out.status.get("signals") or {}).items() if k != "observedAt"}
    # Signals are rewritten only when a value changed, so an idle flow costs no writes.
    if values != previous:
        out.status["signals"] = {**values, "observedAt": rfc3339(signals.observed_at)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _record_scaling_limit(out: _Builder, spec: IntegrationFlowSpec, decision: ScalingDecision) -> None:
    if decision.limited_by:
        cap = spec.scaling.max_replicas if decision.limited_by == "maxReplicas" else spec.scaling.partitions
        out.condition(cond.SCALING_LIMITED, True, "At" + decision.limited_by[0].upper() + decision.limited_by[1:],
                      f"the backlog wants more than {decision.limited_by}={cap}: {decision.reason}", event=True)
    else:
        out.condition(cond.SCALING_LIMITED, False, "WithinLimits", "replicas are within their limits")


def _record_health(out: _Builder, inputs: Inputs, health: HealthAssessment, alert: _Cause | None) -> None:
    if alert is not None:
        out.condition(cond.HEALTHY, False, alert.reason, f"configuration error (onConfigurationError: Alert): {alert.message}", event=True)
    elif inputs.failure is not None or inputs.signals is None:
        out.condition(cond.HEALTHY, None, "SignalsUnknown", "the flow's signals could not be read")
    else:
        runbook = inputs.flow.spec.runbook_url if inputs.flow.spec else None
        message = health.message if health.healthy or not runbook else f"{health.message}; runbook: {runbook}"
        out.condition(cond.HEALTHY, health.healthy, health.reason, message, event=True)


def _phase(severity: str, decision: ScalingDecision, deployment: DeploymentRecord, scale_to: int | None) -> str:
    if severity == "P1":
        return "Down"
    if severity in ("P2", "P3"):
        return "Degraded"
    if scale_to is not None or deployment.spec_replicas != deployment.ready_replicas:
        return "Scaling"
    return "Running"
