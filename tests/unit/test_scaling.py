"""Scaling decisions, rule by rule (domain/scaling.py, pure)."""

from __future__ import annotations

import math

import pytest

from flowkeeper.api.v1alpha1 import ScalingSpec
from flowkeeper.domain.scaling import ScalingDecision, ScalingMemory, decide
from flowkeeper.domain.signals import FlowSignals

NOW = 100_000.0
POLL = 15.0


def scaling(**fields) -> ScalingSpec:
    """A spec written the way users write it (camelCase); windows default to 0s so one pass decides."""
    wire = {"scaleUp": {"stabilizationWindow": "0s"}, "scaleDown": {"stabilizationWindow": "0s"}, **fields}
    return ScalingSpec.model_validate(wire)


def signals(queue_depth: float | None = 0.0, *, at: float = NOW, **values) -> FlowSignals:
    return FlowSignals(observed_at=at, queue_depth=queue_depth, **values)


def run(
    spec: ScalingSpec,
    sig: FlowSignals | None,
    *,
    current: int = 4,
    ready: int | None = None,
    memory: ScalingMemory | None = None,
    now: float = NOW,
) -> ScalingDecision:
    return decide(
        spec,
        sig,
        current_replicas=current,
        ready_replicas=current if ready is None else ready,
        memory=memory or ScalingMemory(),
        now=now,
    )


def passes(spec: ScalingSpec, queue_depths: list[float | None], *, current: int) -> list[ScalingDecision]:
    """Run one pass per poll interval, applying each decision before the next, like the operator."""
    decisions, memory = [], ScalingMemory()
    for i, depth in enumerate(queue_depths):
        now = NOW + i * POLL
        decision = run(spec, None if depth is None else signals(depth, at=now), current=current, memory=memory, now=now)
        decisions.append(decision)
        memory, current = decision.memory, decision.desired_replicas
    return decisions


# ----------------------------------------------------------------------------------------- backlog


def test_backlog_above_target_scales_up_at_once_and_says_why() -> None:
    decision = run(scaling(), signals(620), current=4)
    assert decision.desired_replicas == 7
    assert decision.changed and decision.current_replicas == 4
    assert decision.reason == "backlog 620 > 4 replicas x 100"
    assert decision.metrics_available and not decision.fallback_active and decision.limited_by is None


def test_backlog_below_target_scales_down_without_windows() -> None:
    decision = run(scaling(), signals(120), current=4)
    assert decision.desired_replicas == 2
    assert decision.reason == "backlog 120 < 4 replicas x 100"


@pytest.mark.parametrize("depth", [361, 400, 440])
def test_backlog_within_tolerance_keeps_replicas(depth: float) -> None:
    decision = run(scaling(), signals(depth), current=4)
    assert decision.desired_replicas == 4 and not decision.changed
    assert "within 10% of 4 replicas" in decision.reason


def test_backlog_just_outside_tolerance_moves() -> None:
    assert run(scaling(), signals(441), current=4).desired_replicas == 5
    assert run(scaling(), signals(359), current=4).desired_replicas == 4  # ceil(3.59): outside, same count
    assert run(scaling(), signals(299), current=4).desired_replicas == 3


def test_tolerance_is_configurable() -> None:
    assert run(scaling(tolerance="0.5"), signals(580), current=4).desired_replicas == 4
    assert run(scaling(tolerance=0), signals(401), current=4).desired_replicas == 5


# ------------------------------------------------------------------------------------ drain within


def test_drain_within_asks_for_enough_consumers_to_empty_the_backlog_in_time() -> None:
    # 10 msg/s over 5 ready consumers = 2/s each; 1200 messages in 120 s need ceil(1200 / 240) = 5.
    spec = scaling(drainWithin="2m", queueDepthPerReplica=1000)
    decision = run(spec, signals(1200, throughput=10.0), current=5, ready=5)
    assert decision.desired_replicas == 5
    decision = run(spec, signals(2400, throughput=10.0), current=5, ready=5)
    assert decision.desired_replicas == 10
    assert decision.reason == "backlog 2400 > 5 replicas x 2/s x 2m"


def test_drain_uses_ready_consumers_for_the_rate_per_consumer() -> None:
    # 10 msg/s from 2 ready of 5: 5/s each; 2400 in 120 s need 4.
    decision = run(scaling(drainWithin="2m", queueDepthPerReplica=1000), signals(2400, throughput=10.0), current=5, ready=2)
    assert decision.desired_replicas == 4


@pytest.mark.parametrize(("throughput", "ready"), [(None, 5), (0.0, 5), (10.0, 0)])
def test_drain_target_is_skipped_without_a_measured_rate(throughput: float | None, ready: int) -> None:
    # Unknown or zero throughput must not read as "infinitely slow": the backlog target alone decides.
    decision = run(scaling(drainWithin="2m"), signals(700, throughput=throughput), current=5, ready=ready)
    assert decision.desired_replicas == 7
    assert decision.reason.startswith("backlog 700 > 5 replicas x 100")


# --------------------------------------------------------------------------------------------- CPU


def test_cpu_uses_the_hpa_formula() -> None:
    # ceil(4 * 0.91 / 0.70) = ceil(5.2) = 6
    decision = run(scaling(cpuUtilization=70), signals(400, cpu_utilization=0.91), current=4)
    assert decision.desired_replicas == 6
    assert decision.reason == "cpu 91% > target 70%"


def test_cpu_within_tolerance_and_unknown_cpu_change_nothing() -> None:
    assert run(scaling(cpuUtilization=70), signals(400, cpu_utilization=0.75), current=4).desired_replicas == 4
    assert run(scaling(cpuUtilization=70), signals(400, cpu_utilization=None), current=4).desired_replicas == 4


def test_cpu_is_not_used_at_zero_replicas() -> None:
    decision = run(scaling(cpuUtilization=70, minReplicas=0), signals(0, cpu_utilization=5.0), current=0)
    assert decision.desired_replicas == 0


def test_the_largest_target_wins_and_names_itself() -> None:
    spec = scaling(cpuUtilization=50, drainWithin="30s", queueDepthPerReplica=500, maxReplicas=20)
    backlog = run(spec, signals(4500, cpu_utilization=0.5, throughput=400.0), current=4)
    assert backlog.desired_replicas == 9 and backlog.reason == "backlog 4500 > 4 replicas x 500"
    cpu = run(spec, signals(500, cpu_utilization=1.0, throughput=400.0), current=4)
    assert cpu.desired_replicas == 8 and cpu.reason == "cpu 100% > target 50%"
    # 40/s over 4 ready = 10/s each; in 30 s one consumer drains 300: 4500 need 15.
    drain = run(spec, signals(4500, cpu_utilization=0.5, throughput=40.0), current=4)
    assert drain.desired_replicas == 15 and drain.reason == "backlog 4500 > 4 replicas x 10/s x 30s"


# ---------------------------------------------------------------------------------------- limits


def test_max_replicas_caps_and_reports_the_limit() -> None:
    decision = run(scaling(maxReplicas=6), signals(2000), current=4)
    assert decision.desired_replicas == 6
    assert decision.limited_by == "maxReplicas"
    assert decision.reason == "backlog 2000 > 4 replicas x 100; capped at maxReplicas 6"


def test_partitions_cap_below_max_replicas() -> None:
    decision = run(scaling(maxReplicas=20, partitions=12), signals(5000), current=4)
    assert decision.desired_replicas == 12
    assert decision.limited_by == "partitions"


def test_partitions_win_over_min_replicas() -> None:
    decision = run(scaling(minReplicas=5, maxReplicas=10, partitions=3), signals(0), current=4)
    assert decision.desired_replicas == 3


def test_no_limit_reported_when_the_load_fits() -> None:
    decision = run(scaling(maxReplicas=6), signals(600), current=6)
    assert decision.desired_replicas == 6 and decision.limited_by is None


def test_min_replicas_is_a_floor() -> None:
    decision = run(scaling(minReplicas=2), signals(0), current=4)
    assert decision.desired_replicas == 2
    assert "minReplicas 2" in decision.reason


def test_a_current_count_above_a_lowered_max_comes_down_to_it() -> None:
    assert run(scaling(maxReplicas=5), signals(900), current=9).desired_replicas == 5


# ---------------------------------------------------------------------------------- stabilization


def test_default_scale_down_window_waits_five_minutes_of_lower_load() -> None:
    spec = ScalingSpec()  # scaleDown 5m, scaleUp 0s
    decisions = passes(spec, [100.0] * 22, current=6)
    counts = [d.desired_replicas for d in decisions]
    assert counts[:20] == [6] * 20  # 20 passes x 15 s = 300 s
    assert counts[20] == 1
    assert "scale-down window 5m keeps 6" in decisions[0].reason


def test_scale_down_goes_to_the_highest_recommendation_in_the_window() -> None:
    spec = scaling(scaleDown={"stabilizationWindow": "1m"})
    memory = ScalingMemory(recommendations=((NOW - 90, 9), (NOW - 45, 5), (NOW - 15, 3)))
    decision = run(spec, signals(100), current=8, memory=memory)
    assert decision.desired_replicas == 5  # the 9 is older than 1m


def test_scale_up_goes_to_the_lowest_recommendation_in_its_window() -> None:
    spec = scaling(scaleUp={"stabilizationWindow": "1m"})
    memory = ScalingMemory(recommendations=((NOW - 90, 2), (NOW - 30, 6), (NOW - 15, 8)))
    decision = run(spec, signals(1000), current=4, memory=memory)
    assert decision.desired_replicas == 6
    assert "scale-up window 1m keeps 6" in decision.reason


def test_a_restarted_operator_does_not_scale_down_before_a_full_window() -> None:
    # Fresh memory at any moment: the current count counts as recommended now.
    first = run(ScalingSpec(), signals(0), current=8)
    assert first.desired_replicas == 8
    later = run(ScalingSpec(), signals(0, at=NOW + 299), current=8, memory=first.memory, now=NOW + 299)
    assert later.desired_replicas == 8
    done = run(ScalingSpec(), signals(0, at=NOW + 300), current=8, memory=later.memory, now=NOW + 300)
    assert done.desired_replicas == 1


def test_a_fresh_memory_does_not_delay_scale_up_with_a_zero_window() -> None:
    assert run(ScalingSpec(), signals(900), current=2).desired_replicas == 9


def test_memory_is_pruned_to_the_longest_window_but_keeps_the_newest() -> None:
    spec = scaling(scaleDown={"stabilizationWindow": "1m"})
    old = ScalingMemory(recommendations=tuple((NOW - age, 5) for age in (300, 120, 59, 15)))
    decision = run(spec, signals(500), current=5, memory=old)
    assert decision.memory.recommendations == ((NOW - 59, 5), (NOW - 15, 5), (NOW, 5))
    # A poll interval longer than every window: only the newest entry survives, and scale-down works.
    slow = scaling(pollInterval="10m", scaleDown={"stabilizationWindow": "1m"})
    first = run(slow, signals(100), current=5)
    assert first.desired_replicas == 5
    assert len(first.memory.recommendations) == 2
    second = run(slow, signals(100), current=5, memory=first.memory, now=NOW + 600)
    assert second.desired_replicas == 1
    assert second.memory.recommendations == ((NOW + 600, 1),)


# ----------------------------------------------------------------------------------------- steps


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ({"maxReplicasPerStep": 2}, 6),
        ({"maxPercentPerStep": 50}, 6),
        ({"maxReplicasPerStep": 1, "maxPercentPerStep": 100}, 8),  # the larger allowed change wins
        ({"maxReplicasPerStep": 5, "maxPercentPerStep": 25}, 9),
        ({}, 15),
    ],
)
def test_scale_up_step_limits(rules: dict, expected: int) -> None:
    decision = run(scaling(maxReplicas=20, scaleUp={"stabilizationWindow": "0s", **rules}), signals(1500), current=4)
    assert decision.desired_replicas == expected
    if expected != 15:
        assert f"step limit +{expected - 4}" in decision.reason


def test_scale_down_step_limits() -> None:
    spec = scaling(scaleDown={"stabilizationWindow": "0s", "maxReplicasPerStep": 2})
    assert run(spec, signals(100), current=8).desired_replicas == 6
    percent = scaling(scaleDown={"stabilizationWindow": "0s", "maxPercentPerStep": 10})
    assert run(percent, signals(100), current=8).desired_replicas == 7  # 10 % of 8, rounded up


def test_a_percent_step_still_moves_a_flow_off_zero() -> None:
    up = {"stabilizationWindow": "0s", "maxPercentPerStep": 100}
    assert run(scaling(minReplicas=0, scaleUp=up), signals(500), current=0).desired_replicas == 1
    assert run(scaling(minReplicas=2, scaleUp=up), signals(500), current=0).desired_replicas == 2


# ---------------------------------------------------------------------------------- scale to zero


def test_at_zero_the_backlog_must_exceed_activation() -> None:
    spec = scaling(minReplicas=0, activationQueueDepth=5)
    stay = run(spec, signals(5), current=0)
    assert stay.desired_replicas == 0
    assert "activation 5 not reached" in stay.reason
    go = run(spec, signals(6), current=0)
    assert go.desired_replicas == 1
    assert run(spec, signals(350), current=0).desired_replicas == 4


def test_activation_is_not_held_by_a_scale_up_window() -> None:
    spec = scaling(minReplicas=0, scaleUp={"stabilizationWindow": "1m"})
    memory = ScalingMemory(recommendations=((NOW - 15, 0),))
    assert run(spec, signals(350), current=0, memory=memory).desired_replicas == 1


def test_going_to_zero_waits_for_idle_after() -> None:
    spec = scaling(minReplicas=0, idleAfter="1m")
    busy = run(spec, signals(0, throughput=0.0), current=2, memory=ScalingMemory(last_active_at=NOW - 59))
    assert busy.desired_replicas == 1
    assert "idle 59s < idleAfter 1m" in busy.reason
    idle = run(spec, signals(0, throughput=0.0), current=2, memory=ScalingMemory(last_active_at=NOW - 60))
    assert idle.desired_replicas == 0
    assert idle.memory.last_active_at == NOW - 60


@pytest.mark.parametrize("work", [signals(1), signals(0, throughput=0.5)])
def test_any_work_restarts_the_idle_clock(work: FlowSignals) -> None:
    spec = scaling(minReplicas=0, idleAfter="1m")
    decision = run(spec, work, current=1, memory=ScalingMemory(last_active_at=NOW - 3600))
    assert decision.desired_replicas == 1
    assert decision.memory.last_active_at == NOW


def test_unknown_throughput_with_an_empty_queue_counts_as_idle() -> None:
    spec = scaling(minReplicas=0, idleAfter="1m")
    decision = run(spec, signals(0, throughput=None), current=1, memory=ScalingMemory(last_active_at=NOW - 61))
    assert decision.desired_replicas == 0


def test_a_restarted_operator_starts_the_idle_clock_now() -> None:
    spec = scaling(minReplicas=0, idleAfter="1m")
    decision = run(spec, signals(0), current=1)
    assert decision.desired_replicas == 1
    assert decision.memory.last_active_at == NOW


def test_going_to_zero_follows_scale_down_window_and_steps() -> None:
    # Unlike KEDA (#6844), N -> 0 is not a jump: the window and the step limit still apply.
    spec = scaling(minReplicas=0, idleAfter="1m", scaleDown={"stabilizationWindow": "30s", "maxReplicasPerStep": 2})
    memory, current, counts = ScalingMemory(last_active_at=NOW - 3600), 5, []
    for i in range(6):
        now = NOW + i * POLL
        decision = run(spec, signals(0, at=now), current=current, memory=memory, now=now)
        memory, current = decision.memory, decision.desired_replicas
        counts.append(current)
    assert counts == [5, 5, 3, 1, 0, 0]


def test_min_replicas_one_never_goes_to_zero() -> None:
    long_idle = ScalingMemory(last_active_at=NOW - 3600)
    decision = run(scaling(minReplicas=1, idleAfter="1m"), signals(0), current=3, memory=long_idle)
    assert decision.desired_replicas == 1


# -------------------------------------------------------------------------------- missing metrics


@pytest.mark.parametrize(
    ("sig", "why"),
    [
        (None, "metrics missing"),
        (signals(None, throughput=5.0), "backlog signal missing"),
        (signals(math.nan), "backlog signal missing"),
        (signals(0, at=NOW - 3 * POLL - 1), "metrics stale (46s old)"),
    ],
)
def test_unusable_metrics_hold_and_count_the_failure(sig: FlowSignals | None, why: str) -> None:
    decision = run(scaling(), sig, current=4, memory=ScalingMemory(metrics_failures=1))
    assert decision.desired_replicas == 4
    assert not decision.metrics_available and not decision.fallback_active
    assert decision.memory.metrics_failures == 2
    assert decision.reason == f"holding 4: {why} (2 of 3 failures)"
    assert decision.limited_by is None


def test_signals_exactly_three_polls_old_are_still_usable() -> None:
    decision = run(scaling(), signals(900, at=NOW - 3 * POLL), current=4)
    assert decision.metrics_available and decision.desired_replicas == 9


def test_fallback_applies_after_the_failures_and_never_lowers() -> None:
    spec = scaling(fallback={"afterFailures": 3, "replicas": 6})
    decisions = passes(spec, [None, None, None, None], current=2)
    assert [d.desired_replicas for d in decisions] == [2, 2, 6, 6]
    assert [d.fallback_active for d in decisions] == [False, False, True, True]
    assert decisions[2].reason == "fallback to 6: metrics missing (3 failures in a row)"
    above = run(spec, None, current=9, memory=ScalingMemory(metrics_failures=5))
    assert above.desired_replicas == 9


def test_fallback_applies_at_zero_replicas() -> None:
    # KEDA #7239: fallback is skipped at 0, so a scaled-to-zero flow stays down while blind.
    spec = scaling(minReplicas=0, fallback={"afterFailures": 2, "replicas": 2})
    assert [d.desired_replicas for d in passes(spec, [None, None], current=0)] == [0, 2]


def test_fallback_respects_max_and_partitions() -> None:
    spec = scaling(maxReplicas=10, partitions=4, fallback={"afterFailures": 1, "replicas": 8})
    assert run(spec, None, current=1).desired_replicas == 4


def test_without_fallback_replicas_the_flow_holds_and_says_so() -> None:
    decision = run(scaling(), None, current=3, memory=ScalingMemory(metrics_failures=7))
    assert decision.desired_replicas == 3 and decision.fallback_active
    assert decision.reason == "holding 3: metrics missing (8 failures in a row)"


def test_a_usable_pass_resets_the_failure_count_and_ends_the_fallback() -> None:
    spec = scaling(fallback={"afterFailures": 2, "replicas": 5})
    decisions = passes(spec, [None, None, 900.0, None], current=2)
    assert [d.memory.metrics_failures for d in decisions] == [1, 2, 0, 1]
    assert [d.fallback_active for d in decisions] == [False, True, False, False]


def test_recovery_from_fallback_does_not_flap() -> None:
    # KEDA #4249: fallback 1 <-> 5. Here the fallback count is remembered, so going back down waits
    # a full scale-down window after metrics return.
    spec = ScalingSpec(fallback={"afterFailures": 1, "replicas": 5})
    decisions = passes(spec, [None, 50.0, 50.0, None, 50.0] + [50.0] * 20, current=1)
    counts = [d.desired_replicas for d in decisions]
    assert counts[:5] == [5] * 5
    assert counts[-1] == 1 and sorted(counts, reverse=True) == counts  # down once, never back up


def test_a_metrics_outage_does_not_count_as_idle_time() -> None:
    spec = scaling(minReplicas=0, idleAfter="1m")
    blind = run(spec, None, current=1, memory=ScalingMemory(last_active_at=NOW - 3600))
    assert blind.memory.last_active_at == NOW
    back = run(spec, signals(0, at=NOW + 15), current=1, memory=blind.memory, now=NOW + 15)
    assert back.desired_replicas == 1


def test_while_blind_only_the_declared_bounds_may_lower_the_count() -> None:
    # A maxReplicas lowered in Git is not a guess about load: it applies even without metrics.
    assert run(scaling(maxReplicas=5), None, current=9).desired_replicas == 5
    assert run(scaling(minReplicas=2), None, current=0).desired_replicas == 2
