"""Values that cannot be true are unknown, never a reason to scale down; one flow's absurd number never
stops the pass for the others."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from flowkeeper.domain.planner import Inputs, plan, plan_failure
from flowkeeper.domain.signals import FlowSignals
from tests.unit.test_planner_pause import NOW, condition, flow_with, run, signals
from tests.unit.test_store import deployment

NUMERIC = [
    "queue_depth", "dead_letter_depth", "throughput", "throughput_baseline", "error_ratio", "configuration_errors",
    "latency_seconds", "latency_baseline", "last_success_timestamp", "queue_growing_seconds", "cpu_utilization",
    "memory_utilization",
]


def test_a_negative_queue_depth_holds_replicas_and_says_which_signal() -> None:
    # Regression: a depth of -1 from a broken exporter scaled a flow at 3 replicas to 1.
    result = run(flow_with(), deployment(replicas=3, ready=3), signals(queue_depth=-1.0))
    assert result.scale_to is None
    metrics = condition(result.status, "MetricsAvailable")
    assert (metrics["status"], metrics["reason"]) == ("False", "ImpossibleValue")
    assert "queueDepth" in metrics["message"] and "negative" in metrics["message"]


def test_an_absurd_cpu_reading_neither_raises_nor_scales() -> None:
    # Regression: an override returning 1e307 CPU raised in planning and aborted the pass.
    result = run(flow_with(scaling={"cpuUtilization": 70}), deployment(replicas=3, ready=3), signals(queue_depth=300.0, cpu_utilization=1e307))
    assert result.scale_to is None
    metrics = condition(result.status, "MetricsAvailable")
    assert (metrics["status"], metrics["reason"]) == ("True", "SomeSignalsUnread")
    assert "cpuUtilization" in metrics["message"]


@given(
    signal=st.sampled_from(NUMERIC),
    value=st.one_of(st.floats(max_value=-1e-12), st.floats(min_value=1e13), st.just(math.nan), st.just(-math.inf), st.just(math.inf)),
)
def test_impossible_values_of_any_signal_are_unknown(signal: str, value: float) -> None:
    read = FlowSignals(observed_at=NOW, **{signal: value})
    assert getattr(read, signal) is None
    if math.isfinite(value):
        assert signal in read.unread


@given(depth=st.floats(allow_nan=True, allow_infinity=True), cpu=st.floats(allow_nan=True, allow_infinity=True),
       current=st.integers(min_value=0, max_value=10_000))
def test_no_value_ever_scales_a_flow_below_its_count_without_a_backlog(depth: float, cpu: float, current: int) -> None:
    result = run(flow_with(scaling={"cpuUtilization": 70, "maxReplicas": 10_000}), deployment(replicas=current, ready=current),
                 signals(queue_depth=depth, cpu_utilization=cpu))
    if not (math.isfinite(depth) and 0 <= depth <= 1e12):
        assert result.scale_to is None or result.scale_to >= current


def test_a_flow_whose_planning_raises_gets_a_condition_that_says_why() -> None:
    from flowkeeper.domain.flow import flow_from_body

    inputs = Inputs(flow=flow_from_body(flow_with()), target=None)
    failed = plan_failure(inputs, OverflowError("cannot convert float infinity to integer"), now=NOW)
    ready = condition(failed.status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PlanFailed")
    assert "OverflowError" in ready["message"] and failed.scale_to is None
    assert [e.reason for e in failed.events] == ["PlanFailed"]
    assert plan(inputs, now=NOW).status  # the same flow plans fine otherwise
