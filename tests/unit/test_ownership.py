"""One flow per scale target, and other writers of the replicas reported instead of fought."""

from __future__ import annotations

from flowkeeper.domain import ownership
from flowkeeper.api.v1alpha1 import DEPLOYMENT
from flowkeeper.domain.flow import flow_from_body, target_from_body
from flowkeeper.domain.planner import FlowMemory, Inputs, plan
from flowkeeper.domain.signals import FlowSignals
from tests.unit.test_planner_pause import NOW, condition, flow_with, signals
from tests.unit.test_store import deployment, flow


def test_a_second_flow_on_a_claimed_target_never_writes_and_names_the_owner() -> None:
    old = flow_from_body(flow("old", created="2026-01-01T00:00:00Z"))
    young_body = flow_with()
    young_body["metadata"].update(name="young", uid="young", creationTimestamp="2026-03-01T00:00:00Z")
    young = flow_from_body(young_body)
    result = plan(Inputs(flow=young, target=target_from_body(deployment(replicas=1), DEPLOYMENT), signals=signals(queue_depth=5000.0),
                         metrics_enabled=True, owner=old), now=NOW)
    assert result.scale_to is None
    ready = condition(result.status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TargetClaimed") and "ns/old" in ready["message"]
    assert [e.reason for e in result.events] == ["TargetClaimed"]
    again = plan(Inputs(flow=flow_from_body({**young_body, "status": result.status}), target=target_from_body(deployment(), DEPLOYMENT),
                        signals=signals(queue_depth=5000.0), metrics_enabled=True, owner=old), now=NOW + 10)
    assert again.events == () and not again.status_changed(result.status)  # one Event, not one per pass


def test_the_oldest_claim_wins_whatever_order_the_flows_arrive_in() -> None:
    a = flow_from_body(flow("a", created="2026-01-02T00:00:00Z"))
    b = flow_from_body(flow("b", created="2026-01-01T00:00:00Z"))
    assert ownership.owner([a, b]) == ownership.owner([b, a]) == b


def _pass(status: dict, replicas: int, manager: str | None, memory: FlowMemory, now: float, depth: float = 300.0):
    body = flow_with(status, scaling={"scaleDown": {"stabilizationWindow": "0s"}, "pollInterval": "10s"})
    return plan(Inputs(flow=flow_from_body(body), target=target_from_body(deployment(replicas=replicas, ready=replicas, manager=manager), DEPLOYMENT),
                       signals=FlowSignals(observed_at=now, queue_depth=depth), metrics_enabled=True, memory=memory, monotonic=now,
                       conflict_hold_off=60.0), now=now)


def test_a_foreign_writer_is_reported_and_corrections_are_bounded() -> None:
    # Regression: `kubectl scale` (or an HPA) was reverted at once, forever, hundreds of times.
    first = _pass({}, 3, "kubectl-create", FlowMemory(), NOW)  # 300 / 100 = 3: nothing to do
    assert first.scale_to is None and first.status["desiredReplicas"] == 3
    hpa = "kube-controller-manager"
    moved = _pass(first.status, 7, hpa, first.memory, NOW + 10)
    assert moved.scale_to is None
    conflict = condition(moved.status, "ScalingConflict")
    assert (conflict["status"], conflict["reason"]) == ("True", "ForeignWriter") and hpa in conflict["message"]
    assert [(e.type, e.reason) for e in moved.events] == [("Warning", "ForeignWriter")]
    status, memory, corrections, now = moved.status, moved.memory, [], NOW + 10
    for _ in range(120):  # 20 minutes of passes against a writer that puts 7 back every time
        now += 10
        current = _pass(status, 7, hpa, memory, now)
        if current.scale_to is not None:
            corrections.append(now)
            current = _pass(current.status, 3, "flowkeeper", current.memory, now)  # our write landed
            status, memory = current.status, current.memory
            continue
        status, memory = current.status, current.memory
    assert 1 <= len(corrections) <= 4, corrections  # hold-offs of 60, 120, 240, 480 s
    gaps = [b - a for a, b in zip(corrections, corrections[1:])]
    assert gaps == sorted(gaps)


def test_our_own_write_is_not_a_conflict() -> None:
    result = _pass({"desiredReplicas": 3}, 5, "flowkeeper", FlowMemory(), NOW)
    assert condition(result.status, "ScalingConflict")["status"] == "False"


def test_an_old_flow_re_pointed_at_a_claimed_target_does_not_take_it() -> None:
    # Regression: the oldest flow won, not the oldest claim: a typo in an old flow's spec took over
    # another flow's Deployment at once.
    owner_body = flow("owner", created="2026-06-01T00:00:00Z")
    owner_body["status"] = {"scaleTarget": {"kind": "Deployment", "name": "d", "since": "2026-06-01T00:00:00Z"}}
    old_body = flow("old", created="2025-01-01T00:00:00Z")  # older flow, re-pointed at d today
    old_body["status"] = {"scaleTarget": {"kind": "Deployment", "name": "elsewhere", "since": "2025-01-01T00:00:00Z"}}
    owner_record, old_record = flow_from_body(owner_body), flow_from_body(old_body)
    assert ownership.owner([old_record, owner_record]) == owner_record
    # Its plan records the new claim from now on, so it stays behind the owner after a restart too.
    today = 1_796_000_000.0  # 2026-12
    result = plan(Inputs(flow=old_record, target=target_from_body(deployment(), DEPLOYMENT), metrics_enabled=True, owner=owner_record), now=today)
    assert result.status["scaleTarget"]["name"] == "d" and result.status["scaleTarget"]["since"] > "2026-06-01T00:00:00Z"
    again = flow_from_body({**old_body, "status": result.status})
    assert ownership.owner([again, owner_record]) == owner_record


def test_a_flow_created_with_its_target_claims_it_since_its_creation() -> None:
    body = flow("new", created="2026-03-01T00:00:00Z")
    result = plan(Inputs(flow=flow_from_body(body), target=target_from_body(deployment(), DEPLOYMENT), metrics_enabled=True), now=NOW)
    assert result.status["scaleTarget"] == {"kind": "Deployment", "name": "d", "since": "2026-03-01T00:00:00Z"}
