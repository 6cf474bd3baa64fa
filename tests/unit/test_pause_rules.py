"""Pause rules that broke in ordinary use (domain/pause.py through the planner)."""

from __future__ import annotations

from flowkeeper.domain.planner import RESUME_ANNOTATION
from tests.unit.test_planner_pause import NOW, condition, flow_with, run, signals
from tests.unit.test_store import deployment


def test_a_rollback_deployed_while_the_rate_window_still_shows_errors_resumes() -> None:
    # Regression: every pass re-recorded the current template as the pause's own, so a fix deployed
    # within the rate window (the usual rollback) left the flow at 0 consumers forever.
    paused = run(flow_with(), deployment(replicas=4, ready=4, image="broken"), signals(configuration_errors=0.5))
    assert paused.scale_to == 0
    fixed = deployment(replicas=0, ready=0, image="rollback")
    first = run(flow_with(paused.status), fixed, signals(configuration_errors=0.4), now=NOW + 20)  # window still counts
    assert "pause" not in first.status and first.scale_to == 4
    later = run(flow_with(first.status), deployment(replicas=4, ready=4, image="rollback"), signals(configuration_errors=0.3),
                memory=first.memory, now=NOW + 40)
    assert "pause" not in later.status and later.scale_to is None


def test_the_pause_record_is_not_rewritten_while_errors_are_still_counted() -> None:
    paused = run(flow_with(), deployment(replicas=4, ready=4, image="broken"), signals(configuration_errors=0.5))
    again = run(flow_with(paused.status), deployment(replicas=0, ready=0, image="broken"), signals(configuration_errors=0.5), now=NOW + 15)
    assert again.status["pause"] == paused.status["pause"]


def test_a_resume_request_made_while_errors_are_still_counted_resumes() -> None:
    paused = run(flow_with(), deployment(replicas=2, ready=2), signals(configuration_errors=1.0))
    asked = run(flow_with(paused.status, annotations={RESUME_ANNOTATION: "now"}), deployment(replicas=0, ready=0),
                signals(configuration_errors=1.0), now=NOW + 10)
    assert "pause" not in asked.status and asked.scale_to == 2


def test_replicas_before_are_never_taken_from_a_deployment_at_zero() -> None:
    # Regression: with a little watch lag the Deployment was seen at 0 and 0 was recorded as the
    # count to restore.
    paused = run(flow_with({"desiredReplicas": 3}), deployment(replicas=0, ready=0), signals(configuration_errors=0.5))
    assert paused.status["pause"]["replicasBefore"] == 3
    unknown = run(flow_with(), deployment(replicas=0, ready=0), signals(configuration_errors=0.5))
    assert "replicasBefore" not in unknown.status["pause"]


def test_a_pause_writes_its_record_before_it_scales_to_zero() -> None:
    paused = run(flow_with(), deployment(replicas=4, ready=4), signals(configuration_errors=0.5))
    assert paused.status_first and paused.scale_to == 0
    resumed = run(flow_with(paused.status, generation=2), deployment(replicas=0, ready=0), signals(), now=NOW + 30)
    assert not resumed.status_first and resumed.scale_to == 4


def test_backlog_and_dead_letters_are_still_recorded_while_paused() -> None:
    # Regression: status.signals froze at the moment of the pause.
    paused = run(flow_with(), deployment(replicas=4, ready=4), signals(configuration_errors=0.5, queue_depth=300.0))
    later = run(flow_with(paused.status), deployment(replicas=0, ready=0),
                signals(queue_depth=900.0, dead_letter_depth=7.0), now=NOW + 30)
    assert later.status["signals"]["queueDepth"] == 900.0 and later.status["signals"]["deadLetterDepth"] == 7.0
    assert condition(later.status, "Paused")["status"] == "True"


def test_a_policy_refusal_is_reported_and_never_pauses() -> None:
    from flowkeeper.domain.errors import ErrorClass
    from flowkeeper.domain.signals import SignalsFailure

    refused = SignalsFailure(ErrorClass.configuration, "MetricsServerNotAllowed", "spec.metrics.server.address is not allowed")
    body, memory = flow_with(), None
    for _ in range(3):
        result = run(body, deployment(replicas=2, ready=2), None, failure=refused, memory=memory)
        body, memory = {**body, "status": result.status}, result.memory
    assert "pause" not in result.status and result.scale_to is None
    assert condition(result.status, "MetricsAvailable")["reason"] == "MetricsServerNotAllowed"


def test_a_restart_right_after_a_resume_does_not_pause_the_fixed_flow_again() -> None:
    # Regression: the operator killed right after a resume came back without its memory of the
    # resume, took the errors still in the rate window for new ones and paused the fix as broken.
    paused = run(flow_with(), deployment(replicas=3, ready=3, image="broken"), signals(configuration_errors=0.5))
    resumed = run(flow_with(paused.status), deployment(replicas=0, ready=0, image="fixed"), signals(), now=NOW + 30)
    assert "pause" not in resumed.status
    restarted = run(flow_with(resumed.status), deployment(replicas=3, ready=3, image="fixed"),
                    signals(configuration_errors=0.4), now=NOW + 40)  # fresh memory, errors still in the window
    assert "pause" not in restarted.status and restarted.scale_to is None
    later = run(flow_with(resumed.status), deployment(replicas=3, ready=3, image="fixed"),
                signals(configuration_errors=0.4), now=NOW + 30 + 120)  # still erring after the grace: broken
    assert later.status["pause"]["reason"] == "ConsumerConfigurationError"


def test_a_new_flow_with_broken_consumers_pauses_at_once() -> None:
    # The resume grace is only for a flow that resumed, never for one that was simply created.
    fine = run(flow_with(), deployment(replicas=3, ready=3), signals())
    broken = run(flow_with(fine.status), deployment(replicas=3, ready=3), signals(configuration_errors=0.5), now=NOW + 10)
    assert broken.status["pause"]["reason"] == "ConsumerConfigurationError"
