"""The planner: one flow's facts in, the status to record, the replica count to set and the Events
to post out. Pure: no I/O, the clock is an argument. The controller applies the plan and skips every
write whose value did not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flowkeeper.domain import conditions as cond
from flowkeeper.domain.flow import DeploymentRecord, FlowRecord


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    status: dict[str, Any]
    scale_to: int | None = None
    events: tuple[Event, ...] = field(default_factory=tuple)

    def status_changed(self, current: dict[str, Any]) -> bool:
        return _comparable(self.status) != _comparable(current)


def _comparable(status: dict[str, Any]) -> dict[str, Any]:
    # The API server leaves out empty values; compare what it would store.
    return {k: v for k, v in status.items() if v not in (None, [], {})}


def plan(flow: FlowRecord, deployment: DeploymentRecord | None, *, now: float) -> Plan:
    status = dict(flow.status)
    conditions = list(status.get("conditions") or [])
    events: list[Event] = []
    generation = flow.generation

    if flow.spec is None:
        ready, reason, message = False, "InvalidSpec", f"the spec does not parse: {flow.spec_error}"
    elif deployment is None:
        ready, reason = False, "TargetNotFound"
        message = f"consumer Deployment {flow.namespace}/{flow.spec.consumer.deployment} not found"
    else:
        ready, reason = True, "TargetFound"
        message = f"consumer Deployment {deployment.name} has {deployment.ready_replicas}/{deployment.replicas} ready replicas"

    previous = cond.get_condition(conditions, cond.READY)
    if previous is None or previous.get("status") != ("True" if ready else "False") or previous.get("reason") != reason:
        events.append(Event("Normal" if ready else "Warning", reason, message))
    conditions = cond.set_condition(conditions, cond.READY, ready, reason, message, generation=generation, now=now)

    status.update(
        observedGeneration=generation,
        phase="Running" if ready else "Pending",
        conditions=conditions,
    )
    if deployment is not None:
        status.update(replicas=deployment.replicas, readyReplicas=deployment.ready_replicas)
    return Plan(status=status, events=tuple(events))
