"""Pause and resume on configuration errors (pure planner)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from flowkeeper.domain.errors import ErrorClass
from flowkeeper.api.v1alpha1 import DEPLOYMENT
from flowkeeper.domain.flow import flow_from_body, target_from_body
from flowkeeper.domain.planner import RESUME_ANNOTATION, FlowMemory, Inputs, plan
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
