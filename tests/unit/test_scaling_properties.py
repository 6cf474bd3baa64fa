"""Properties of the scaling decision that must hold for every spec, signal and memory (hypothesis)."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowkeeper.api.quantities import to_text
from flowkeeper.api.v1alpha1 import ScalingSpec
from flowkeeper.domain.scaling import ScalingDecision, ScalingMemory, decide
from flowkeeper.domain.signals import FlowSignals

NOW = 1_000_000.0
PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

windows = st.sampled_from(["0s", "15s", "1m", "5m"])
optional_count = st.none() | st.integers(1, 10)
optional_percent = st.none() | st.integers(1, 200)


@st.composite
def specs(draw: st.DrawFn) -> ScalingSpec:
    max_replicas = draw(st.integers(1, 40))
    return ScalingSpec(
        min_replicas=draw(st.integers(0, max_replicas)),
        max_replicas=max_replicas,
        partitions=draw(st.none() | st.integers(1, 50)),
        queue_depth_per_replica=draw(st.integers(1, 500)),
        activation_queue_depth=draw(st.integers(0, 50)),
        drain_within=draw(st.none() | st.sampled_from(["30s", "2m"])),
        cpu_utilization=draw(st.none() | st.integers(10, 100)),
        # A quantity, as users write it: plain decimals and milli-units, at the extremes too.
        tolerance=draw(st.floats(0, 0.5).map(to_text) | st.sampled_from(["0", "1m", "50m", "500m"])),
        poll_interval=draw(st.sampled_from(["15s", "30s"])),
        idle_after=draw(st.sampled_from(["0s", "1m", "5m"])),
        scale_up={
            "stabilization_window": draw(windows),
            "max_replicas_per_step": draw(optional_count),
            "max_percent_per_step": draw(optional_percent),
        },
        scale_down={
            "stabilization_window": draw(windows),
            "max_replicas_per_step": draw(optional_count),
            "max_percent_per_step": draw(optional_percent),
        },
        fallback={"after_failures": draw(st.integers(1, 5)), "replicas": draw(st.none() | st.integers(0, max_replicas))},
    )


memories = st.builds(
    ScalingMemory,
    recommendations=st.lists(st.tuples(st.floats(0, 900), st.integers(0, 50)), max_size=12).map(
        lambda entries: tuple(sorted((NOW - age, replicas) for age, replicas in entries))
    ),
    metrics_failures=st.integers(0, 6),
    last_active_at=st.none() | st.floats(0, 1200).map(lambda age: NOW - age),
)
rates = st.none() | st.floats(0, 1000)
fractions = st.none() | st.floats(0, 3)


def fresh_signals(queue_depth: st.SearchStrategy[float | None]) -> st.SearchStrategy[FlowSignals]:
    return st.builds(
        FlowSignals,
        observed_at=st.floats(0, 30).map(lambda age: NOW - age),  # fresh for every poll interval drawn
        queue_depth=queue_depth,
        throughput=rates,
        cpu_utilization=fractions,
    )


backlogs = st.floats(0, 100_000)
signals = fresh_signals(backlogs)
currents = st.integers(0, 60)


def run(
    spec: ScalingSpec, sig: FlowSignals | None, current: int, memory: ScalingMemory, ready: int | None = None
) -> ScalingDecision:
    ready = current if ready is None else ready
    return decide(spec, sig, current_replicas=current, ready_replicas=ready, memory=memory, now=NOW)


def cap(spec: ScalingSpec) -> int:
    return min(spec.max_replicas, spec.partitions or spec.max_replicas)


def floor(spec: ScalingSpec) -> int:
    return min(spec.min_replicas, cap(spec))


@PROPERTY
@given(spec=specs(), sig=st.none() | signals, current=currents, memory=memories, ready=st.integers(0, 60))
def test_desired_is_always_within_bounds_and_partitions(
    spec: ScalingSpec, sig: FlowSignals | None, current: int, memory: ScalingMemory, ready: int
) -> None:
    decision = run(spec, sig, current, memory, ready)
    assert floor(spec) <= decision.desired_replicas <= cap(spec)
    if spec.partitions is not None:
        assert decision.desired_replicas <= spec.partitions
    assert decision.changed == (decision.desired_replicas != current)


@PROPERTY
@given(spec=specs(), data=st.data(), memory=memories)
def test_noise_inside_the_tolerance_never_changes_replicas(
    spec: ScalingSpec, data: st.DataObject, memory: ScalingMemory
) -> None:
    current = data.draw(st.integers(max(1, floor(spec)), cap(spec)))
    noise = st.floats(-spec.tolerance, spec.tolerance)
    queue_depth = current * spec.queue_depth_per_replica * (1 + data.draw(noise))
    cpu = None if spec.cpu_utilization is None else spec.cpu_utilization / 100 * (1 + data.draw(noise))
    sig = FlowSignals(observed_at=NOW, queue_depth=queue_depth, cpu_utilization=cpu, throughput=None)
    decision = run(spec, sig, current, memory)
    assert decision.desired_replicas == current, decision.reason


@PROPERTY
@given(spec=specs(), sig=signals, more=st.floats(0, 100_000), current=currents, memory=memories, ready=st.integers(0, 60))
def test_more_backlog_never_gives_fewer_replicas(
    spec: ScalingSpec, sig: FlowSignals, more: float, current: int, memory: ScalingMemory, ready: int
) -> None:
    assert sig.queue_depth is not None
    less = run(spec, sig, current, memory, ready)
    bigger = run(spec, replace(sig, queue_depth=sig.queue_depth + more), current, memory, ready)
    assert bigger.desired_replicas >= less.desired_replicas


def test_a_drain_rate_that_overflows_asks_for_the_cap_not_for_nothing() -> None:
    # Found by the property above: with a near-zero rate, backlog / capacity overflows to inf for
    # the larger backlog; dropping that target gave the larger backlog fewer replicas.
    spec = ScalingSpec(minReplicas=0, maxReplicas=2, queueDepthPerReplica=1, drainWithin="30s")
    tiny = FlowSignals(observed_at=NOW, queue_depth=1e-308, throughput=2.2250738585e-313)
    less = run(spec, tiny, 0, ScalingMemory(), 1)
    bigger = run(spec, replace(tiny, queue_depth=1.0), 0, ScalingMemory(), 1)
    assert less.desired_replicas == bigger.desired_replicas == 2


unusable = st.one_of(
    st.none(),
    fresh_signals(st.none()),
    fresh_signals(st.just(math.nan)),
    fresh_signals(backlogs).map(lambda s: replace(s, observed_at=NOW - 91)),  # > 3 polls of 30 s
)


@PROPERTY
@given(spec=specs(), sig=unusable, current=currents, memory=memories)
def test_missing_nan_or_stale_signals_never_lower_replicas(
    spec: ScalingSpec, sig: FlowSignals | None, current: int, memory: ScalingMemory
) -> None:
    decision = run(spec, sig, current, memory)
    # Only the bounds the user declared may lower a count while the flow is blind.
    assert decision.desired_replicas >= min(current, cap(spec))
    assert not decision.metrics_available
    assert decision.memory.metrics_failures == memory.metrics_failures + 1
    assert decision.limited_by is None


@PROPERTY
@given(spec=specs(), current=currents, memory=memories)
def test_fallback_never_lowers_and_applies_once_failures_reach_the_threshold(
    spec: ScalingSpec, current: int, memory: ScalingMemory
) -> None:
    decision = run(spec, None, current, memory)
    reached = memory.metrics_failures + 1 >= spec.fallback.after_failures
    assert decision.fallback_active == reached
    assert decision.desired_replicas >= min(current, cap(spec))
    if reached and spec.fallback.replicas is not None:
        assert decision.desired_replicas == max(floor(spec), min(cap(spec), max(current, spec.fallback.replicas)))
    else:
        assert decision.desired_replicas == max(floor(spec), min(cap(spec), current))


@PROPERTY
@given(spec=specs(), sig=signals, current=currents)
def test_a_fresh_memory_never_scales_down_inside_a_scale_down_window(
    spec: ScalingSpec, sig: FlowSignals, current: int
) -> None:
    decision = run(spec, sig, current, ScalingMemory())
    if spec.scale_down.stabilization_window != "0s":
        assert decision.desired_replicas >= min(current, cap(spec))


@PROPERTY
@given(spec=specs(), sig=signals, current=st.integers(1, 60), memory=memories)
def test_a_flow_with_work_waiting_never_goes_to_zero(
    spec: ScalingSpec, sig: FlowSignals, current: int, memory: ScalingMemory
) -> None:
    assert sig.queue_depth is not None
    busy = replace(sig, queue_depth=sig.queue_depth + 1)
    assert run(spec, busy, current, memory).desired_replicas >= 1


@PROPERTY
@given(spec=specs(), sig=st.none() | signals, current=currents, memory=memories)
def test_memory_stays_bounded_to_the_longest_window(
    spec: ScalingSpec, sig: FlowSignals | None, current: int, memory: ScalingMemory
) -> None:
    decision = run(spec, sig, current, memory)
    entries = decision.memory.recommendations
    assert entries[-1][0] == NOW
    horizon = max(_seconds(spec.scale_up.stabilization_window), _seconds(spec.scale_down.stabilization_window))
    assert all(NOW - at < horizon for at, _ in entries[:-1])
    if decision.metrics_available:
        assert decision.memory.metrics_failures == 0


def _seconds(window: str) -> float:
    return {"0s": 0.0, "15s": 15.0, "1m": 60.0, "5m": 300.0}[window]


# Durations the model refuses (tests/unit/test_api_bounds.py) and a spec built without validation
# still carries: the decision must stay within bounds, never raise.
extreme_durations = st.sampled_from(["0s", "0ms", "0.000001ms", "1ms", "1000000000h", "9" * 31 + "h"])
extreme_rates = st.none() | st.sampled_from([0.0, 5e-324, 1e-300, 1e300]) | st.floats(0, 1e308)


@PROPERTY
@given(
    spec=specs(),
    durations=st.fixed_dictionaries({name: extreme_durations for name in ("poll", "idle", "drain", "up", "down")}),
    queue_depth=st.sampled_from([0.0, 1.0, 1e300]) | backlogs,
    throughput=extreme_rates,
    current=currents,
    memory=memories,
    ready=st.integers(0, 60),
)
def test_extreme_durations_and_rates_never_raise(
    spec: ScalingSpec, durations: dict, queue_depth: float, throughput: float | None, current: int, memory: ScalingMemory, ready: int
) -> None:
    unchecked = spec.model_copy(
        update={
            "poll_interval": durations["poll"],
            "idle_after": durations["idle"],
            "drain_within": durations["drain"],
            "scale_up": spec.scale_up.model_copy(update={"stabilization_window": durations["up"]}),
            "scale_down": spec.scale_down.model_copy(update={"stabilization_window": durations["down"]}),
        }
    )
    sig = FlowSignals(observed_at=NOW, queue_depth=queue_depth, throughput=throughput)
    decision = run(unchecked, sig, current, memory, ready)
    assert floor(spec) <= decision.desired_replicas <= cap(spec)


unusable_or_not = st.none() | signals | fresh_signals(st.none() | st.just(math.nan))


@PROPERTY
@given(spec=specs(), sig=unusable_or_not, current=currents, memory=memories, ready=st.integers(0, 60))
def test_a_reused_reading_decides_alike_but_is_no_new_observation(
    spec: ScalingSpec, sig: FlowSignals | None, current: int, memory: ScalingMemory, ready: int
) -> None:
    """The last pass's signals planned again after a watch event: same replicas, but no failure counted
    towards the fallback, no recommendation added to the windows, no activity seen for idleAfter."""
    fresh = decide(spec, sig, current_replicas=current, ready_replicas=ready, memory=memory, now=NOW)
    reused = decide(spec, sig, current_replicas=current, ready_replicas=ready, memory=memory, now=NOW, fresh=False)
    assert reused.desired_replicas == fresh.desired_replicas or not fresh.metrics_available
    assert reused.metrics_available == fresh.metrics_available
    if memory.recommendations:
        assert reused.memory.recommendations == memory.recommendations
    if fresh.metrics_available:
        assert reused.memory.metrics_failures == 0
        if memory.last_active_at is not None:
            assert reused.memory.last_active_at == memory.last_active_at
    else:
        assert fresh.memory.metrics_failures == memory.metrics_failures + 1
        assert reused.memory.metrics_failures == max(1, memory.metrics_failures)
