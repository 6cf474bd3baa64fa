"""The planner's Ready condition, phase and Events (pure)."""

from __future__ import annotations

from flowkeeper.domain.flow import deployment_from_body, flow_from_body
from flowkeeper.domain.planner import plan
from tests.unit.test_store import deployment, flow


def test_missing_deployment_is_not_ready_with_one_warning() -> None:
    record = flow_from_body(flow())
    first = plan(record, None, now=100)
    ready = first.status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "TargetNotFound")
    assert first.status["phase"] == "Pending" and first.status["observedGeneration"] == 1
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "TargetNotFound")]

    again = plan(flow_from_body({**flow(), "status": first.status}), None, now=200)
    assert again.events == ()
    assert not again.status_changed(first.status)


def test_deployment_found_turns_ready() -> None:
    missing = plan(flow_from_body(flow()), None, now=100)
    record = flow_from_body({**flow(), "status": missing.status})
    found = plan(record, deployment_from_body(deployment(replicas=2, ready=1)), now=200)
    ready = found.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("True", "TargetFound")
    assert ready["lastTransitionTime"] == "1970-01-01T00:03:20Z"
    assert found.status["readyReplicas"] == 1 and found.status["replicas"] == 2
    assert [(e.type, e.reason) for e in found.events] == [("Normal", "TargetFound")]
    assert found.status_changed(missing.status)
