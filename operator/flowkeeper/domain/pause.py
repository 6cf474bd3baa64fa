"""Pause and resume: the answer to configuration errors (pure, no I/O; the clock is an argument).

A paused flow has its consumers at 0 and its backlog waiting safely in the queue. What the pause
needs to survive a restart lives in the flow's status (`status.pause`): why, since when, the replica
count to restore, and what the flow looked like when the pause began, so that a fix is recognised.

The pause record is written before the consumers are scaled to 0 (the plan says so, the executor
keeps the order), and the fix-detection fields (templateHash, specGeneration, resumeRequest) are taken
once, when a pause for that reason begins. Re-recording them on every pass would absorb the fix: a
rollback deployed while the rate window still shows the old errors would become the "broken" template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowkeeper.domain.flow import TargetRecord, FlowRecord
from flowkeeper.domain.signals import NOT_PAUSING, OVERRIDE_FIELDS, FlowSignals, SignalsFailure

RESUME_ANNOTATION = "flowkeeper.io/resume"
MANUAL = "Manual"
CONSUMER_CONFIGURATION_ERROR = "ConsumerConfigurationError"


@dataclass(frozen=True)
class Cause:
    reason: str  # CamelCase, e.g. TargetNotFound
    message: str


@dataclass(frozen=True)
class Facts:
    """What the pause rules look at for one flow in one pass."""

    flow: FlowRecord
    target: TargetRecord | None
    signals: FlowSignals | None
    failure: SignalsFailure | None
    # Configuration errors counted before a resume still show in rate() windows for a while.
    in_resume_grace: bool = False


def configuration_cause(facts: Facts) -> Cause | None:
    """Why the flow's configuration is broken now, or None."""
    flow, spec, signals, failure = facts.flow, facts.flow.spec, facts.signals, facts.failure
    assert spec is not None
    if spec.paused:
        return Cause(MANUAL, "paused by spec.paused")
    if facts.target is None:
        return Cause("TargetNotFound", f"{flow.target_text} not found")
    if failure is not None and failure.error_class.value == "configuration" and failure.reason not in NOT_PAUSING:
        return Cause(failure.reason, failure.message)
    if signals is not None and signals.invalid_queries:
        signal, message = sorted(signals.invalid_queries.items())[0]
        return Cause("InvalidQuery", f"Prometheus rejected {OVERRIDE_FIELDS.get(signal, signal)}: {message}")
    pause = flow.status.get("pause") or {}
    if pause.get("reason") == CONSUMER_CONFIGURATION_ERROR:
        # Consumers at 0 report nothing new: only a fix (or a request to resume) ends this pause,
        # whatever the rate window still shows.
        return None if fix_deployed(facts, pause) else Cause(pause["reason"], pause.get("message", ""))
    errors = signals.configuration_errors if signals is not None else None
    if errors is not None and errors > 0 and not facts.in_resume_grace:
        return Cause(CONSUMER_CONFIGURATION_ERROR, f"the consumers report configuration errors ({errors:.2g}/s)")
    return None


def fix_deployed(facts: Facts, pause: dict[str, Any]) -> bool:
    """A consumer-configuration pause ends when something that could fix it changed since it began."""
    flow, target = facts.flow, facts.target
    return (
        (target is not None and pause.get("templateHash") is not None and target.template_hash != pause["templateHash"])
        or flow.generation != pause.get("specGeneration")
        or resume_request(flow) != pause.get("resumeRequest")
    )


def pause_record(facts: Facts, cause: Cause, now_rfc3339: str) -> dict[str, Any]:
    """status.pause for a flow paused by `cause`: a new record when the reason changes, else the
    existing one with only its message refreshed."""
    flow, target = facts.flow, facts.target
    previous = flow.status.get("pause") or {}
    if previous.get("reason") == cause.reason:
        return {**previous, "message": cause.message}
    record: dict[str, Any] = {"reason": cause.reason, "since": previous.get("since") or now_rfc3339, "message": cause.message}
    # The count from before the first pause reason stands; a reason that changed may fill it in later.
    replicas_before = previous.get("replicasBefore") or _replicas_to_restore(flow, target)
    if replicas_before is not None:
        record["replicasBefore"] = replicas_before
    if target is not None:
        record["templateHash"] = target.template_hash
    elif previous.get("templateHash"):
        record["templateHash"] = previous["templateHash"]
    record["specGeneration"] = flow.generation
    if RESUME_ANNOTATION in flow.annotations:
        record["resumeRequest"] = resume_request(flow)
    return record


RESUME_REQUEST_MAX = 253  # status.pause.resumeRequest's maxLength in the schema


def resume_request(flow: FlowRecord) -> str | None:
    """The resume annotation as the pause record keeps it (cut to what the schema allows)."""
    value = flow.annotations.get(RESUME_ANNOTATION)
    return None if value is None else value[:RESUME_REQUEST_MAX]


def _replicas_to_restore(flow: FlowRecord, target: TargetRecord | None) -> int | None:
    """Never 0: a Deployment seen at 0 (watch lag, a scale-to-zero flow) says nothing about the count
    to restore. Then the last count Flowkeeper decided, when it was above 0; else unknown."""
    if target is not None and target.spec_replicas > 0:
        return target.spec_replicas
    desired = flow.status.get("desiredReplicas")
    return int(desired) if isinstance(desired, int) and desired > 0 else None


def replicas_on_resume(flow: FlowRecord, target: TargetRecord | None) -> int | None:
    """The count to restore, within today's bounds; None when unknown (autoscaling decides)."""
    pause = flow.status.get("pause") or {}
    before = pause.get("replicasBefore")
    if before is None or target is None or flow.spec is None:
        return None
    scaling = flow.spec.scaling
    return max(scaling.min_replicas, min(scaling.max_replicas, int(before)))
