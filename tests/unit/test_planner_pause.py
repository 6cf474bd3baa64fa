"""Pause and resume on configuration errors (pure planner)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowkeeper.domain.errors import ErrorClass
from flowkeeper.api.v1alpha1 import DEPLOYMENT
from flowkeeper.domain.flow import flow_from_body, target_from_body
from flowkeeper.domain.planner import RESUME_ANNOTATION, TARGET_GRACE_SECONDS, FlowMemory, Inputs, plan
from flowkeeper.domain.signals import FlowSignals, SignalsFailure
from tests.unit.test_store import deployment, flow

NOW = 10_000.0


def flow_with(status: dict | None = None, *, generation: int = 1, annotations: dict | None = None, **spec) -> dict:
    body = flow(generation=generation)
    body["spec"].update(spec)
    body["status"] = status or {}
    body["metadata"]["annotations"] = annotations or {}
    return body


def signals(**values) -> FlowSignals:
    return FlowSignals(observed_at=NOW, **{"queue_depth": 50.0, **values})


def run(body: dict, deploy: dict | None, sig: FlowSignals | None = None, *, failure=None, memory=None, now=NOW):
    return plan(
        Inputs(
            flow=flow_from_body(body),
            target=target_from_body(deploy, DEPLOYMENT) if deploy else None,
            signals=sig,
            failure=failure,
            metrics_enabled=True,
            memory=memory or FlowMemory(),
        ),
        now=now,
    )


def condition(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_consumer_configuration_errors_pause_to_zero_and_keep_the_count() -> None:
    paused = run(flow_with(), deployment(replicas=4, ready=4), signals(configuration_errors=0.5))
    assert paused.scale_to == 0
    assert paused.status["pause"]["replicasBefore"] == 4
    assert paused.status["pause"]["reason"] == "ConsumerConfigurationError"
    assert (paused.status["phase"], paused.status["severity"]) == ("Paused", "P1")
    assert condition(paused.status, "Paused")["status"] == "True"
    assert [e.reason for e in paused.events] == ["ConsumerConfigurationError"]
    assert paused.events[0].type == "Warning"


def test_pause_holds_while_nothing_was_fixed_even_when_errors_stop() -> None:
    first = run(flow_with(), deployment(replicas=4, ready=4), signals(configuration_errors=0.5))
    # Consumers are at 0 now, so the error rate drops to 0: that is not a fix.
    later = run(flow_with(first.status), deployment(replicas=0, ready=0), signals(configuration_errors=0.0), now=NOW + 60)
    assert later.scale_to is None
    assert later.status["pause"]["replicasBefore"] == 4
    assert later.events == ()
    assert later.status["pause"] == first.status["pause"]
    same = run(flow_with(later.status), deployment(replicas=0, ready=0), signals(configuration_errors=0.0), now=NOW + 75)
    assert not same.status_changed(later.status)


def test_new_pod_template_resumes_with_the_previous_replicas() -> None:
    first = run(flow_with(), deployment(replicas=4, ready=4), signals(configuration_errors=0.5))
    fixed = deployment(replicas=0, ready=0, image="fixed")
    resumed = run(flow_with(first.status), fixed, signals(configuration_errors=0.0), now=NOW + 60)
    assert resumed.scale_to == 4
    assert "pause" not in resumed.status
    assert [e.reason for e in resumed.events][:1] == ["Resumed"]
    assert resumed.memory.resumed_at == NOW + 60


def test_errors_still_in_the_rate_window_after_resume_do_not_pause_again() -> None:
    first = run(flow_with(), deployment(replicas=4, ready=4), signals(configuration_errors=0.5))
    resumed = run(flow_with(first.status), deployment(replicas=0, ready=0, image="fixed"), signals(), now=NOW + 60)
    again = run(
        flow_with(resumed.status), deployment(replicas=4, ready=4, image="fixed"), signals(configuration_errors=0.2),
        memory=resumed.memory, now=NOW + 75,
    )
    assert "pause" not in again.status and again.scale_to != 0


def test_spec_change_or_resume_annotation_resumes() -> None:
    first = run(flow_with(), deployment(replicas=3, ready=3), signals(configuration_errors=1.0))
    by_spec = run(flow_with(first.status, generation=2), deployment(replicas=0, ready=0), signals(), now=NOW + 30)
    assert by_spec.scale_to == 3
    by_hand = run(
        flow_with(first.status, annotations={RESUME_ANNOTATION: "1"}), deployment(replicas=0, ready=0), signals(), now=NOW + 30
    )
    assert by_hand.scale_to == 3


def test_missing_deployment_pauses_and_recovers_when_it_returns() -> None:
    running = run(flow_with({"desiredReplicas": 5}), None)
    assert running.status["pause"]["reason"] == "TargetNotFound"
    assert running.status["pause"]["replicasBefore"] == 5
    assert running.scale_to is None  # nothing to scale
    assert condition(running.status, "Ready")["reason"] == "TargetNotFound"
    back = run(flow_with(running.status), deployment(replicas=1, ready=1), signals(), now=NOW + 30)
    assert "pause" not in back.status
    assert back.scale_to == 5
    assert condition(back.status, "Ready")["status"] == "True"


def test_invalid_query_pauses_and_a_missing_secret_too() -> None:
    bad = run(flow_with(), deployment(replicas=2, ready=2), replace(signals(), invalid_queries={"queueDepth": "parse error"}))
    assert bad.status["pause"]["reason"] == "InvalidQuery" and bad.scale_to == 0
    secret = run(
        flow_with(), deployment(replicas=2, ready=2), None,
        failure=SignalsFailure(ErrorClass.configuration, "SecretNotFound", "Secret ns/prom-token not found"),
    )
    assert secret.status["pause"]["reason"] == "SecretNotFound"


@pytest.mark.parametrize("reason", ["SecretNotFound", "SecretKeyNotFound", "SecretForbidden"])
def test_a_secret_that_cannot_be_read_pauses_until_it_can(reason: str) -> None:
    # Created, given the key, or granted to the operator's RBAC: the next pass resumes by itself.
    failure = SignalsFailure(ErrorClass.configuration, reason, "Secret ns/prom-token: cannot be used")
    paused = run(flow_with(), deployment(replicas=2, ready=2), None, failure=failure)
    assert paused.status["pause"]["reason"] == reason and paused.scale_to == 0
    back = run(flow_with(paused.status), deployment(replicas=0, ready=0), signals(), now=NOW + 30)
    assert "pause" not in back.status and back.scale_to == 2


def test_prometheus_down_pauses_nothing_and_holds_replicas() -> None:
    outage = SignalsFailure(ErrorClass.transient, "PrometheusUnavailable", "connection refused")
    body, memory = flow_with(), None
    seen = []
    for _ in range(3):  # fallback.afterFailures defaults to 3
        result = run(body, deployment(replicas=3, ready=3), None, failure=outage, memory=memory)
        body, memory = {**body, "status": result.status}, result.memory
        assert "pause" not in result.status
        assert result.scale_to is None
        metrics = condition(result.status, "MetricsAvailable")
        seen.append((metrics["status"], metrics["reason"]))
    # Regression: one failed pass flipped the condition (and posted a Warning) for every flow.
    assert seen == [("Unknown", "SignalsPending"), ("Unknown", "SignalsPending"), ("False", "PrometheusUnavailable")]


def test_alert_mode_reports_without_pausing() -> None:
    result = run(flow_with(onConfigurationError="Alert"), deployment(replicas=3, ready=3), signals(configuration_errors=1.0))
    assert "pause" not in result.status and result.scale_to != 0
    assert result.status["severity"] == "P1"
    healthy = condition(result.status, "Healthy")
    assert (healthy["status"], healthy["reason"]) == ("False", "ConsumerConfigurationError")


def test_manual_pause_from_git() -> None:
    result = run(flow_with(paused=True), deployment(replicas=3, ready=3), signals())
    assert result.scale_to == 0
    assert (result.status["phase"], result.status["severity"]) == ("Paused", "None")
    assert result.status["pause"]["reason"] == "Manual"
    unpaused = run(flow_with(result.status, generation=2), deployment(replicas=0, ready=0), signals(), now=NOW + 10)
    assert unpaused.scale_to == 3


def test_hitting_the_replica_cap_is_a_warning() -> None:
    result = run(flow_with(scaling={"maxReplicas": 2, "pollInterval": "10s"}), deployment(replicas=2, ready=2), signals(queue_depth=5000.0))
    limited = condition(result.status, "ScalingLimited")
    assert (limited["status"], limited["reason"]) == ("True", "AtMaxReplicas")
    assert ("Warning", "AtMaxReplicas") in [(e.type, e.reason) for e in result.events]


def test_unhealthy_condition_points_to_the_runbook() -> None:
    result = run(flow_with(runbookURL="https://runbooks.example.com/orders"), deployment(replicas=1, ready=1), signals(dead_letter_depth=4.0))
    healthy = condition(result.status, "Healthy")
    assert healthy["reason"] == "DeadLetters"
    assert healthy["message"].endswith("runbook: https://runbooks.example.com/orders")


# ------------------------------------------------------------------ a young flow's target not seen yet

CREATED = "2026-01-01T00:00:00Z"
CREATED_AT = 1767225600.0  # CREATED in Unix seconds


def young_flow(status: dict | None = None, **spec) -> dict:
    body = flow_with(status, **spec)
    body["metadata"]["creationTimestamp"] = CREATED
    return body


def test_a_young_flows_target_not_seen_yet_is_awaited_not_paused() -> None:
    """A flow applied with its Deployment may reach the operator first: no pause, no P1, no Event."""
    waiting = run(young_flow(), None, signals(), now=CREATED_AT + 4)
    assert "pause" not in waiting.status and waiting.scale_to is None and waiting.events == ()
    assert (waiting.status["phase"], waiting.status["severity"]) == ("Pending", "None")
    ready = condition(waiting.status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TargetPending")
    assert "Deployment ns/d not seen yet" in ready["message"]
    assert waiting.status["observedGeneration"] == 1  # `kubectl get` shows the flow was seen
    assert waiting.plan_again_in == pytest.approx(TARGET_GRACE_SECONDS - 4)

    # The Deployment arrives: planned as any flow, nothing to resume.
    found = run(young_flow(waiting.status), deployment(replicas=1, ready=1), signals(), now=CREATED_AT + 5)
    assert "pause" not in found.status and found.plan_again_in is None
    assert condition(found.status, "Ready")["reason"] == "TargetFound"
    assert found.status["phase"] != "Pending"


def test_a_target_still_missing_when_the_grace_ends_pauses_as_before() -> None:
    waiting = run(young_flow(), None, signals(), now=CREATED_AT + 29.9)
    assert waiting.status["phase"] == "Pending"
    missing = run(young_flow(waiting.status), None, signals(), now=CREATED_AT + TARGET_GRACE_SECONDS)
    assert missing.status["pause"]["reason"] == "TargetNotFound"
    assert condition(missing.status, "Ready")["reason"] == "TargetNotFound"
    assert [e.reason for e in missing.events] == ["TargetNotFound"]
    assert missing.plan_again_in is None


def test_the_grace_never_undoes_a_pause_and_never_delays_a_manual_one() -> None:
    paused = run(young_flow(), None, signals(), now=CREATED_AT + TARGET_GRACE_SECONDS)
    # A pause record there (however it came, whatever the flow's age) stands until its cause is gone:
    still = run(young_flow(paused.status), None, signals(), now=CREATED_AT + 1)
    assert still.status["pause"]["reason"] == "TargetNotFound"
    manual = run(young_flow(paused=True), None, signals(), now=CREATED_AT + 1)
    assert manual.status["pause"]["reason"] == "Manual"


def test_a_target_seen_once_and_deleted_is_missing_at_once_with_its_count_kept() -> None:
    running = run(young_flow(), deployment(replicas=3, ready=3), signals(queue_depth=250.0), now=CREATED_AT + 2)
    assert running.status["desiredReplicas"] == 3
    gone = run(young_flow(running.status), None, signals(), now=CREATED_AT + 3)
    assert gone.status["pause"]["reason"] == "TargetNotFound" and gone.status["pause"]["replicasBefore"] == 3


# `now` is the operator's wall clock: within a few decades of the flow's creation, far as that clock may be off.
@given(offset=st.one_of(st.floats(-1e9, 1e9), st.sampled_from([0.0, -29.999, 29.999, 30.0, -30.0, 1e9, -1e9])))
@settings(max_examples=200, deadline=None)
def test_a_missing_target_is_awaited_only_within_the_grace_either_side(offset: float) -> None:
    """A clock far from the API server's (either way) must not keep a missing target awaited."""
    result = run(young_flow(), None, signals(), now=CREATED_AT + offset)
    assert result.scale_to is None
    awaited = result.status["phase"] == "Pending"
    assert awaited == (abs(offset) < TARGET_GRACE_SECONDS)
    assert ("pause" in result.status) == (not awaited)
    if awaited:
        assert result.events == () and 0 < result.plan_again_in <= 2 * TARGET_GRACE_SECONDS
