"""The planner's Ready condition, phase and Events when the operator runs without Prometheus (pure)."""

from __future__ import annotations

from flowkeeper.api.v1alpha1 import DEPLOYMENT
from flowkeeper.domain.flow import flow_from_body, target_from_body
from flowkeeper.domain.planner import Inputs, plan
from tests.unit.test_store import deployment, flow


def run(body: dict, deploy: dict | None, now: float):
    return plan(Inputs(flow=flow_from_body(body), target=target_from_body(deploy, DEPLOYMENT) if deploy else None), now=now)


def condition(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_missing_deployment_is_not_ready_with_one_warning() -> None:
    first = run(flow(), None, now=100)
    ready = condition(first.status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TargetNotFound")
    assert first.status["phase"] == "Paused" and first.status["observedGeneration"] == 1
    assert first.status["pause"]["reason"] == "TargetNotFound"
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "TargetNotFound")]

    again = run({**flow(), "status": first.status}, None, now=200)
    assert again.events == ()
    assert not again.status_changed(first.status)


def test_a_new_flow_that_is_fine_posts_no_event() -> None:
    # Thousands of flows applied at once must not mean thousands of "TargetFound" Events.
    first = run(flow(), deployment(replicas=2, ready=2), now=100)
    assert condition(first.status, "Ready")["status"] == "True"
    assert first.events == ()


def test_deployment_found_turns_ready() -> None:
    missing = run(flow(), None, now=100)
    found = run({**flow(), "status": missing.status}, deployment(replicas=2, ready=1), now=200)
    ready = condition(found.status, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "TargetFound")
    assert ready["lastTransitionTime"] == "1970-01-01T00:03:20Z"
    assert found.status["readyReplicas"] == 1 and found.status["replicas"] == 2
    assert "pause" not in found.status and found.status["phase"] == "Running"
    assert [(e.type, e.reason) for e in found.events] == [("Normal", "Resumed"), ("Normal", "TargetFound")]
    assert found.scale_to is None  # a Deployment never seen before keeps its own count
    assert found.status_changed(missing.status)


def test_status_signals_show_cpu_and_memory_in_percent() -> None:
    # FlowSignals carries fractions; users read percent, as they write spec.*.cpuUtilization.
    from tests.unit.test_planner_pause import flow_with, run, signals

    status = run(flow_with(), deployment(replicas=2, ready=2), signals(cpu_utilization=0.734, memory_utilization=1.5)).status
    assert (status["signals"]["cpuUtilization"], status["signals"]["memoryUtilization"]) == (73.4, 150.0)
    assert "metricsFailures" not in status


def test_a_statefulset_target_is_named_by_its_kind() -> None:
    from flowkeeper.api.v1alpha1 import STATEFULSET

    body = flow()
    body["spec"]["scaleTargetRef"] = {"kind": "StatefulSet", "name": "d"}
    missing = plan(Inputs(flow=flow_from_body(body), target=None), now=1000.0)
    ready = next(c for c in missing.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "TargetNotFound" and ready["message"].startswith("StatefulSet ns/d")
    found = plan(Inputs(flow=flow_from_body(body), target=target_from_body(deployment(), STATEFULSET)), now=1000.0)
    ready = next(c for c in found.status["conditions"] if c["type"] == "Ready")
    assert (ready["reason"], ready["message"]) == ("TargetFound", "StatefulSet ns/d found")


def test_a_target_kind_the_operator_does_not_watch_is_reported_not_paused() -> None:
    from flowkeeper.domain.flow import flow_from_body
    from flowkeeper.domain.planner import Inputs, plan

    body = {"metadata": {"namespace": "ns", "name": "f", "uid": "u", "generation": 1},
            "spec": {"scaleTargetRef": {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "r"},
                     "source": {"broker": "rabbitmq", "queue": "q"}}}
    result = plan(Inputs(flow=flow_from_body(body), target=None, metrics_enabled=True, target_watched=False), now=10_000.0)
    ready = next(c for c in result.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TargetKindNotWatched") and "--watch-rollouts" in ready["message"]
    assert "pause" not in result.status and result.scale_to is None
