"""Health findings, severities and their wording (domain/health.py, pure)."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowkeeper.api.v1alpha1 import Condition, HealthSpec, Severity
from flowkeeper.domain.errors import ErrorClass
from flowkeeper.domain.health import RULES, Finding, HealthAssessment, assess
from flowkeeper.domain.signals import FlowSignals

NOW = 50_000.0
DEFAULTS = HealthSpec()


def judge(
    spec: HealthSpec = DEFAULTS, *, ready: int = 3, desired: int = 3, limited: bool = False, **values
) -> HealthAssessment:
    signals = FlowSignals(observed_at=NOW, **values)
    return assess(spec, signals, ready_replicas=ready, desired_replicas=desired, scaling_limited=limited, now=NOW)


def only(assessment: HealthAssessment) -> Finding:
    assert len(assessment.findings) == 1, assessment.findings
    return assessment.findings[0]


def test_a_quiet_flow_is_healthy() -> None:
    health = judge(
        queue_depth=10, throughput=5, throughput_baseline=5, error_ratio=0.0, dead_letter_depth=0, last_success_timestamp=NOW - 1
    )
    assert health.healthy and health.severity == Severity.none and health.findings == ()
    assert health.reason == "Healthy"
    assert health.message == "all signals within thresholds"


def test_unknown_signals_give_no_findings() -> None:
    assert judge(ready=0).healthy  # every signal None, even with no ready consumer
    assert assess(DEFAULTS, None, ready_replicas=0, desired_replicas=3, scaling_limited=True, now=NOW).healthy
    assert judge(queue_depth=math.nan, ready=0).healthy  # NaN is unknown, not zero


# ---------------------------------------------------------------------------------------------- P1


def test_no_ready_consumers_while_work_waits_is_p1() -> None:
    finding = only(judge(queue_depth=40, ready=0, desired=2))
    assert (finding.signal, finding.severity, finding.error_class) == ("NoReadyConsumers", Severity.p1, ErrorClass.capacity)
    assert finding.message == "0 of 2 consumers ready while 40 messages wait"


@pytest.mark.parametrize(("queue_depth", "desired"), [(0, 2), (40, 0)])
def test_no_ready_consumers_is_fine_without_work_or_when_scaled_to_zero(queue_depth: float, desired: int) -> None:
    assert judge(queue_depth=queue_depth, ready=0, desired=desired).healthy


def test_heartbeat_lost_while_work_waits_is_p1() -> None:
    finding = only(judge(queue_depth=7, last_success_timestamp=NOW - 301))
    assert (finding.signal, finding.severity) == ("HeartbeatLost", Severity.p1)
    assert finding.message == "last message processed 301s ago > 5m while 7 messages wait"


def test_heartbeat_within_the_window_or_without_work_is_fine() -> None:
    assert judge(queue_depth=7, last_success_timestamp=NOW - 300).healthy
    assert judge(queue_depth=0, last_success_timestamp=NOW - 3600).healthy
    assert judge(spec=HealthSpec(heartbeat_window="2h"), queue_depth=7, last_success_timestamp=NOW - 3600).healthy


def test_consumer_configuration_errors_are_p1_of_class_configuration() -> None:
    finding = only(judge(configuration_errors=0.25))
    assert (finding.signal, finding.severity, finding.error_class) == (
        "ConsumerConfigurationError",
        Severity.p1,
        ErrorClass.configuration,
    )
    assert finding.message == "consumers report 0.25 configuration errors/s > 0"
    assert judge(configuration_errors=0.0).healthy


# ---------------------------------------------------------------------------------------------- P2


def test_error_ratio_above_threshold_is_p2_code() -> None:
    finding = only(judge(error_ratio=0.032))
    assert (finding.signal, finding.severity, finding.error_class) == ("ErrorRatioHigh", Severity.p2, ErrorClass.code)
    assert finding.message == "error ratio 3.2% > 1.0%"
    assert judge(error_ratio=0.01).healthy  # at the threshold is not above it
    assert judge(spec=HealthSpec(error_ratio="0.05"), error_ratio=0.032).healthy


def test_latency_above_factor_times_baseline_is_p2() -> None:
    finding = only(judge(latency_seconds=2.4, latency_baseline=1.0))
    assert (finding.signal, finding.severity) == ("LatencyHigh", Severity.p2)
    assert finding.message == "latency 2.4s > 2 x baseline 1s"
    assert judge(latency_seconds=2.0, latency_baseline=1.0).healthy
    assert judge(latency_seconds=2.4, latency_baseline=0.0).healthy  # no baseline yet
    assert judge(latency_seconds=2.4, latency_baseline=None).healthy


def test_throughput_above_its_baseline_is_draining_not_a_fault() -> None:
    assert judge(queue_depth=100, throughput=16.0, throughput_baseline=10.0).healthy


@pytest.mark.parametrize("throughput", [4.0])
def test_throughput_below_its_baseline_with_work_waiting_is_p2(throughput: float) -> None:
    finding = only(judge(queue_depth=100, throughput=throughput, throughput_baseline=10.0))
    assert (finding.signal, finding.severity) == ("ThroughputOffBaseline", Severity.p2)
    assert finding.message == f"throughput {throughput:g}/s is 60% below baseline 10/s > 30%"


def test_throughput_needs_work_and_a_baseline() -> None:
    assert judge(queue_depth=0, throughput=1.0, throughput_baseline=10.0).healthy  # little input, not a fault
    assert judge(queue_depth=None, throughput=1.0, throughput_baseline=10.0).healthy
    assert judge(queue_depth=100, throughput=1.0, throughput_baseline=0.0).healthy
    assert judge(queue_depth=100, throughput=7.0, throughput_baseline=10.0).healthy  # exactly 30 %


def test_queue_growing_for_the_window_is_p2() -> None:
    finding = only(judge(queue_growing_seconds=600))
    assert (finding.signal, finding.severity, finding.error_class) == ("QueueGrowing", Severity.p2, ErrorClass.capacity)
    assert finding.message == "backlog growing for 600s >= 10m"
    assert judge(queue_growing_seconds=599).healthy


def test_scaling_limited_while_the_queue_grows_is_p2() -> None:
    finding = only(judge(limited=True, queue_growing_seconds=45))
    assert (finding.signal, finding.severity, finding.error_class) == ("ScalingLimited", Severity.p2, ErrorClass.capacity)
    assert finding.message == "at the replica limit while the backlog grew for 45s"
    assert judge(limited=True, queue_growing_seconds=0).healthy  # at the cap and keeping up
    assert judge(limited=True, queue_growing_seconds=None).healthy
    assert judge(limited=False, queue_growing_seconds=45).healthy


def test_cpu_and_memory_above_their_percent_thresholds_are_p2() -> None:
    cpu = only(judge(cpu_utilization=0.92))
    assert (cpu.signal, cpu.severity, cpu.message) == ("CpuHigh", Severity.p2, "cpu 92% > 80%")
    memory = only(judge(memory_utilization=0.9))
    assert (memory.signal, memory.message) == ("MemoryHigh", "memory 90% > 85%")
    assert judge(cpu_utilization=0.8, memory_utilization=0.85).healthy  # at the threshold is not above it
    assert judge(spec=HealthSpec(cpu_utilization=7), cpu_utilization=0.07).healthy  # 0.07 * 100 > 7 in floats
    assert judge(spec=HealthSpec(cpu_utilization=95), cpu_utilization=0.92).healthy


# ---------------------------------------------------------------------------------------------- P3


def test_any_dead_letter_is_p3_data() -> None:
    finding = only(judge(dead_letter_depth=3))
    assert (finding.signal, finding.severity, finding.error_class) == ("DeadLetters", Severity.p3, ErrorClass.data)
    assert finding.message == "3 messages in the dead-letter queue > 0"
    assert judge(dead_letter_depth=0).healthy


# ------------------------------------------------------------------------------------ combination


def test_findings_are_listed_worst_first_the_reason_is_the_worst_and_the_message_has_all() -> None:
    health = judge(dead_letter_depth=2, error_ratio=0.05, queue_depth=10, ready=0, desired=1)
    assert health.severity == Severity.p1
    assert [f.signal for f in health.findings] == ["NoReadyConsumers", "ErrorRatioHigh", "DeadLetters"]
    assert health.reason == "NoReadyConsumers"
    assert health.message == (
        "0 of 1 consumers ready while 10 messages wait; error ratio 5.0% > 1.0%; 2 messages in the dead-letter queue > 0"
    )
    assert not health.healthy


def test_rules_are_listed_worst_first() -> None:
    order = [Severity.none, Severity.p4, Severity.p3, Severity.p2, Severity.p1]
    ranks = [order.index(rule.severity) for rule in RULES]
    assert ranks == sorted(ranks, reverse=True)


def test_reason_fits_the_condition_reason_pattern() -> None:
    everything = judge(
        queue_depth=10, ready=0, desired=1, limited=True, configuration_errors=1, last_success_timestamp=0,
        error_ratio=1, queue_growing_seconds=10_000, throughput=1, throughput_baseline=100,
        latency_seconds=100, latency_baseline=1, cpu_utilization=2, memory_utilization=2, dead_letter_depth=1,
    )  # fmt: skip
    assert len(everything.findings) == len(RULES)
    assert everything.reason == "ConsumerConfigurationError"
    assert all(finding.message in everything.message for finding in everything.findings)


# The pattern the CRD puts on status.conditions[].reason (metav1.Condition's own).
CONDITION_REASON = next(m.pattern for m in Condition.model_fields["reason"].metadata if hasattr(m, "pattern"))


def test_every_rule_names_a_camel_case_reason() -> None:
    for rule in RULES:
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", rule.signal), rule.signal


@settings(max_examples=300, deadline=None)
@given(chosen=st.sets(st.sampled_from(RULES)), messages=st.lists(st.text(max_size=40), min_size=len(RULES), max_size=len(RULES)))
def test_reason_of_any_combination_is_one_word_without_separators(chosen: set, messages: list[str]) -> None:
    # Findings as assess() lists them: in the order of RULES, which is worst first.
    findings = tuple(
        Finding(rule.signal, rule.severity, rule.error_class, message)
        for rule, message in zip(RULES, messages, strict=True)
        if rule in chosen
    )
    health = HealthAssessment(findings[0].severity if findings else Severity.none, findings)
    assert health.reason == (findings[0].signal if findings else "Healthy")
    assert re.fullmatch(CONDITION_REASON, health.reason)
    assert "," not in health.reason and ":" not in health.reason  # one reason, not a list
    assert health.message.count("; ") >= len(findings) - 1
    for finding in findings:
        assert finding.message in health.message


optional = st.none() | st.floats(0, 1e6)


@settings(max_examples=250, deadline=None)
@given(
    values=st.fixed_dictionaries(
        {
            name: optional
            for name in (
                "queue_depth", "dead_letter_depth", "throughput", "throughput_baseline", "error_ratio",
                "configuration_errors", "latency_seconds", "latency_baseline", "last_success_timestamp",
                "queue_growing_seconds", "cpu_utilization", "memory_utilization",
            )
        }
    ),  # fmt: skip
    ready=st.integers(0, 5),
    desired=st.integers(0, 5),
    limited=st.booleans(),
)
def test_severity_is_the_worst_finding_and_findings_are_sorted(
    values: dict, ready: int, desired: int, limited: bool
) -> None:
    health = judge(ready=ready, desired=desired, limited=limited, **values)
    order = [Severity.none, Severity.p4, Severity.p3, Severity.p2, Severity.p1]
    ranks = [order.index(f.severity) for f in health.findings]
    assert ranks == sorted(ranks, reverse=True)
    assert order.index(health.severity) == max(ranks, default=0)
    assert health.healthy == (health.severity == Severity.none)
    assert len({f.signal for f in health.findings}) == len(health.findings)
    assert health.reason == (health.findings[0].signal if health.findings else "Healthy")
    assert re.fullmatch(CONDITION_REASON, health.reason) and "," not in health.reason
    # Unknown signals never produce findings: with everything None only the replica facts remain.
    if all(v is None for v in values.values()):
        assert health.healthy


def test_no_ready_consumers_waits_out_the_grace_period() -> None:
    signals = FlowSignals(observed_at=NOW, queue_depth=10)
    spec = HealthSpec(not_ready_grace="1m")
    starting = assess(spec, signals, ready_replicas=0, desired_replicas=2, scaling_limited=False, now=NOW, not_ready_since=NOW - 30)
    assert starting.healthy
    stuck = assess(spec, signals, ready_replicas=0, desired_replicas=2, scaling_limited=False, now=NOW, not_ready_since=NOW - 61)
    assert stuck.reason == "NoReadyConsumers"


@settings(max_examples=200, deadline=None)
@given(
    windows=st.lists(st.sampled_from(["0s", "0ms", "0.000001ms", "1000000000h", "9" * 31 + "h"]), min_size=4, max_size=4),
    since=st.none() | st.floats(0, NOW),
    last=st.none() | st.floats(0, NOW),
    growing=st.none() | st.floats(0, 1e9),
)
def test_durations_the_model_refuses_never_raise(windows: list[str], since: float | None, last: float | None, growing: float | None) -> None:
    # A spec built without validation (the model refuses these: tests/unit/test_api_bounds.py).
    spec = DEFAULTS.model_copy(update=dict(zip(("heartbeat_window", "not_ready_grace", "queue_growth_window", "baseline_window"), windows, strict=True)))
    signals = FlowSignals(observed_at=NOW, queue_depth=5, last_success_timestamp=last, queue_growing_seconds=growing)
    health = assess(spec, signals, ready_replicas=0, desired_replicas=1, scaling_limited=False, now=NOW, not_ready_since=since)
    assert re.fullmatch(CONDITION_REASON, health.reason)
