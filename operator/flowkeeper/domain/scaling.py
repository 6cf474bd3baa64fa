"""How many consumers a flow gets: pure code, no I/O, the clock is an argument (docs/scaling.md).

One pass, in order:
1. unusable metrics (no signals, no backlog, stale) -> hold, count the failure, fallback after N;
2. targets (backlog, drain time, CPU) -> each a replica count, tolerance applied; the largest wins;
3. clamp to [minReplicas, min(maxReplicas, partitions)];
4. stabilization over the remembered recommendations, like the HPA's behavior windows;
5. step limits per pass and direction;
6. scale-to-zero rules (activation, idleAfter), then the bounds once more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from flowkeeper.api.durations import to_seconds
from flowkeeper.api.v1alpha1 import ScalingSpec, StepRules
from flowkeeper.domain.signals import FlowSignals

# A snapshot older than this many poll intervals describes the past, not the queue: KEDA #3065 scaled
# flows to their minimum at peak on data that was no longer there.
STALE_AFTER_POLLS = 3

# 440 / 400 - 1 is 0.10000000000000009 in floating point: a ratio on the tolerance's edge is inside.
_ROUNDING = 1e-9

Recommendations = tuple[tuple[float, int], ...]


@dataclass(frozen=True)
class ScalingMemory:
    """Per-flow state carried between passes, kept by the caller in memory."""

    recommendations: Recommendations = ()  # (time, recommended replicas), pruned to the longest window
    metrics_failures: int = 0  # passes in a row without a usable backlog signal
    last_active_at: float | None = None  # last time work was seen (backlog > 0 or throughput > 0), for idleAfter


@dataclass(frozen=True)
class Steady:
    """A decision that the same signals give again at any later time: the count stays, and every
    recommendation remembered is that count, so no window can move it. Only the memory moves on."""

    replicas: int
    working: bool  # work was seen (backlog or throughput above 0): the idle clock restarts each pass

    def memory(self, before: ScalingMemory, now: float) -> ScalingMemory:
        """The memory the same decision leaves at `now`. One recommendation stands for all: each
        window asks only whether the count was recommended within it, and the newest answers that."""
        return ScalingMemory(((now, self.replicas),), 0, now if self.working else before.last_active_at)


@dataclass(frozen=True)
class ScalingDecision:
    desired_replicas: int
    current_replicas: int
    reason: str  # for people, e.g. "backlog 620 > 4 replicas x 100"
    limited_by: str | None  # "maxReplicas" or "partitions" when the load wants more than that cap
    metrics_available: bool
    fallback_active: bool  # afterFailures reached: at fallback.replicas when set, else holding
    memory: ScalingMemory
    steady: Steady | None = None  # set when the same fresh signals would decide the same later on

    @property
    def changed(self) -> bool:
        return self.desired_replicas != self.current_replicas


def decide(
    spec: ScalingSpec,
    signals: FlowSignals | None,
    *,
    current_replicas: int,
    ready_replicas: int,
    memory: ScalingMemory,
    now: float,
    fresh: bool = True,
) -> ScalingDecision:
    """`fresh=False`: the signals were already judged by an earlier pass (a reading reused after a
    watch event): the decision is the same function of them, but they count as no new observation."""
    bounds = _Bounds.of(spec)
    if not memory.recommendations:
        # Restart safety: a fresh memory behaves as if the current count had been recommended just now,
        # so a restarted operator waits a full scale-down window before removing consumers.
        memory = replace(memory, recommendations=((now, current_replicas),))
    problem = _unusable(spec, signals, now)
    if problem is not None:
        return _hold(spec, bounds, problem, current_replicas, memory, now, fresh)
    assert signals is not None and signals.queue_depth is not None  # _unusable checked both
    return _scale(spec, bounds, signals, signals.queue_depth, current_replicas, ready_replicas, memory, now, fresh)


@dataclass(frozen=True)
class _Bounds:
    low: int
    high: int
    cap_name: str  # the field that sets `high`

    @classmethod
    def of(cls, spec: ScalingSpec) -> _Bounds:
        # Partitions win over minReplicas too: more consumers than partitions break ordering or sit idle.
        if spec.partitions is not None and spec.partitions < spec.max_replicas:
            high, cap_name = spec.partitions, "partitions"
        else:
            high, cap_name = spec.max_replicas, "maxReplicas"
        return cls(low=min(spec.min_replicas, high), high=high, cap_name=cap_name)

    def clamp(self, replicas: int) -> int:
        return max(self.low, min(self.high, replicas))


# ------------------------------------------------------------------------------------ missing metrics


def _unusable(spec: ScalingSpec, signals: FlowSignals | None, now: float) -> str | None:
    """Why this pass cannot scale the flow, or None when it can."""
    if signals is None:
        return "metrics missing"
    if signals.queue_depth is None:  # also NaN: FlowSignals normalises it to None
        return "backlog signal missing"
    age = now - signals.observed_at
    if too_old(spec, age):
        return f"metrics stale ({age:.0f}s old)"
    return None


def too_old(spec: ScalingSpec, age: float) -> bool:
    """Whether a reading of `age` seconds describes the past rather than the queue."""
    return age > STALE_AFTER_POLLS * to_seconds(spec.poll_interval)


def _hold(
    spec: ScalingSpec, bounds: _Bounds, problem: str, current: int, memory: ScalingMemory, now: float, fresh: bool
) -> ScalingDecision:
    """Without a backlog nothing goes down (KEDA #3065 read an empty result as 0). After afterFailures
    passes in a row the fallback may raise the count, also from zero (KEDA #7239 skips it there).
    Only the bounds, which the user declared, may lower it."""
    failures = memory.metrics_failures + 1 if fresh else max(1, memory.metrics_failures)
    after = spec.fallback.after_failures
    fallback_active = failures >= after
    if fallback_active and spec.fallback.replicas is not None:
        desired = bounds.clamp(max(current, spec.fallback.replicas))
        reason = f"fallback to {desired}: {problem} ({failures} failures in a row)"
    else:
        desired = bounds.clamp(current)
        count = f"{failures} failures in a row" if fallback_active else f"{failures} of {after} failures"
        reason = f"holding {desired}: {problem} ({count})"
    return ScalingDecision(
        desired_replicas=desired,
        current_replicas=current,
        reason=reason,
        limited_by=None,
        metrics_available=False,
        fallback_active=fallback_active,
        memory=ScalingMemory(
            # The held count counts as a recommendation: when metrics return, going down from a fallback
            # count waits a full scale-down window, so fallback and recovery do not flap (KEDA #4249).
            recommendations=_remember(spec, memory.recommendations, now, desired) if fresh else memory.recommendations,
            metrics_failures=failures,
            # Unknown is not idle: a metrics outage never counts towards idleAfter.
            last_active_at=now,
        ),
    )


# ------------------------------------------------------------------------------------------- scaling


@dataclass(frozen=True)
class _Target:
    needed: float  # replicas the signal asks for, before rounding and tolerance
    replicas: int  # after rounding and tolerance
    describe: str  # e.g. "backlog 620 > 4 replicas x 100"


def _scale(
    spec: ScalingSpec,
    bounds: _Bounds,
    signals: FlowSignals,
    queue_depth: float,
    current: int,
    ready: int,
    memory: ScalingMemory,
    now: float,
    fresh: bool,
) -> ScalingDecision:
    targets = _targets(spec, signals, queue_depth, current, ready)
    driver = max(targets, key=lambda target: target.replicas)  # on a tie the first listed: backlog
    notes: list[str] = []

    # Judged on the load itself (before tolerance): "the backlog wants more than the cap allows".
    limited_by = bounds.cap_name if math.ceil(max(t.needed for t in targets)) > bounds.high else None
    if limited_by:
        notes.append(f"capped at {bounds.cap_name} {bounds.high}")
    recommended = bounds.clamp(driver.replicas)
    if driver.replicas < bounds.low:
        notes.append(f"minReplicas {bounds.low}")

    stabilized = _stabilize(spec, memory.recommendations, recommended, current, now)
    if stabilized != recommended:
        rules, direction = (spec.scale_down, "down") if recommended < stabilized else (spec.scale_up, "up")
        notes.append(f"scale-{direction} window {rules.stabilization_window} keeps {stabilized}")

    stepped = _limit_step(spec.scale_up if stabilized > current else spec.scale_down, current, stabilized)
    if stepped != stabilized:
        notes.append(f"step limit {stepped - current:+d}")

    working = fresh and (queue_depth > 0 or (signals.throughput or 0) > 0)
    # A restarted operator has not seen the flow idle yet: its idle time starts now.
    last_active_at = now if working or memory.last_active_at is None else memory.last_active_at
    desired, zero_note = _zero_rules(spec, queue_depth, current, stepped, idle_for=now - last_active_at)
    if zero_note:
        notes.append(zero_note)
    final = bounds.clamp(desired)
    if final != desired:
        notes.append(f"bounds {bounds.low}..{bounds.high}")

    remembered = _remember(spec, memory.recommendations, now, recommended) if fresh else memory.recommendations
    # Time enters only through the windows (all agree on the count here) and idleAfter (which never
    # moves a count that stays above 0, and is not asked at 0).
    steady = fresh and final == current and all(replicas == current for _, replicas in remembered)
    return ScalingDecision(
        desired_replicas=final,
        current_replicas=current,
        reason="; ".join([driver.describe, *notes]),
        limited_by=limited_by,
        metrics_available=True,
        fallback_active=False,
        memory=ScalingMemory(recommendations=remembered, metrics_failures=0, last_active_at=last_active_at),
        steady=Steady(current, working) if steady else None,
    )


def _targets(spec: ScalingSpec, signals: FlowSignals, queue_depth: float, current: int, ready: int) -> list[_Target]:
    """One target per known signal: an unknown signal skips its target, it never reads as zero."""
    candidates = (
        _backlog_target(spec, queue_depth, current),
        _drain_target(spec, queue_depth, signals.throughput, current, ready),
        _cpu_target(spec, signals.cpu_utilization, current),
    )
    return [target for target in candidates if target is not None]


def _backlog_target(spec: ScalingSpec, queue_depth: float, current: int) -> _Target:
    per_replica = spec.queue_depth_per_replica
    reference = f"{current} replicas x {per_replica}"
    return _fit(spec, queue_depth / per_replica, current, f"backlog {_num(queue_depth)}", reference)


MAX_TARGET = 1e9  # a replica count no spec allows; saturates overflowing targets


def _drain_target(
    spec: ScalingSpec, queue_depth: float, throughput: float | None, current: int, ready: int
) -> _Target | None:
    if spec.drain_within is None or throughput is None or throughput <= 0 or ready <= 0:
        return None
    seconds = to_seconds(spec.drain_within)
    if seconds <= 0:  # "drainWithin: 0s" asks for nothing measurable
        return None
    each = throughput / ready  # measured on ready consumers: starting ones process nothing yet
    capacity = each * seconds  # messages one consumer drains in time
    if queue_depth <= 0:
        needed = 0.0
    else:
        # A rate so small that the division overflows asks for as many as allowed (the cap applies),
        # the same answer a slightly larger rate gives: more backlog never asks for fewer.
        needed = min(queue_depth / capacity if capacity > 0 else math.inf, MAX_TARGET)
    reference = f"{current} replicas x {each:.3g}/s x {spec.drain_within}"
    return _fit(spec, needed, current, f"backlog {_num(queue_depth)}", reference)


def _cpu_target(spec: ScalingSpec, cpu: float | None, current: int) -> _Target | None:
    # The HPA formula scales the current count: at zero replicas CPU has nothing to say.
    if spec.cpu_utilization is None or cpu is None or current == 0:
        return None
    needed = current * cpu / (spec.cpu_utilization / 100)
    return _fit(spec, needed, current, f"cpu {cpu:.0%}", f"target {spec.cpu_utilization}%")


def _fit(spec: ScalingSpec, needed: float, current: int, measured: str, reference: str) -> _Target:
    """Round a target up; like the HPA, a ratio within the tolerance of 1.0 keeps the current count,
    so signal noise never moves replicas."""
    if current > 0 and abs(needed / current - 1) <= spec.tolerance + _ROUNDING:
        return _Target(needed, current, f"{measured} within {spec.tolerance:.0%} of {reference}")
    comparison = ">" if needed > current else "<" if needed < current else "="
    return _Target(needed, math.ceil(needed), f"{measured} {comparison} {reference}")


def _stabilize(spec: ScalingSpec, remembered: Recommendations, recommended: int, current: int, now: float) -> int:
    """Like the HPA: go up only as far as every recommendation in the scale-up window agrees (their
    minimum), down only as far as every one in the scale-down window agrees (their maximum)."""
    up = min([recommended, *_within(remembered, now, spec.scale_up)])
    down = max([recommended, *_within(remembered, now, spec.scale_down)])
    return min(max(current, up), down)  # up <= recommended <= down: current clamped to [up, down]


def _within(remembered: Recommendations, now: float, rules: StepRules) -> list[int]:
    # Strictly inside the window: a 0s window holds nothing but the new recommendation.
    window = to_seconds(rules.stabilization_window)
    return [replicas for at, replicas in remembered if now - at < window]


def _remember(spec: ScalingSpec, remembered: Recommendations, now: float, replicas: int) -> Recommendations:
    horizon = max(to_seconds(spec.scale_up.stabilization_window), to_seconds(spec.scale_down.stabilization_window))
    # The newest entry is always kept, so the memory never becomes empty and is not seeded again with
    # the current count (that would block every scale-down when the poll interval exceeds the window).
    return (*((at, r) for at, r in remembered if now - at < horizon), (now, replicas))


def _limit_step(rules: StepRules, current: int, target: int) -> int:
    """At most max(maxReplicasPerStep, maxPercentPerStep of current) per pass, like the HPA's
    selectPolicy Max. A percentage of zero replicas is zero: activation and minReplicas, applied
    after the steps, still move a flow off zero."""
    limits = []
    if rules.max_replicas_per_step is not None:
        limits.append(rules.max_replicas_per_step)
    if rules.max_percent_per_step is not None:
        limits.append(math.ceil(current * rules.max_percent_per_step / 100))
    if not limits:
        return target
    step = max(limits)
    return min(target, current + step) if target > current else max(target, current - step)


def _zero_rules(
    spec: ScalingSpec, queue_depth: float, current: int, desired: int, *, idle_for: float
) -> tuple[int, str | None]:
    """With minReplicas 0: activationQueueDepth decides 0 -> 1 (at once, not held by the scale-up
    window); idleAfter decides when 0 is allowed. N -> 0 has passed the scale-down window and step
    limits above, unlike KEDA, whose cooldown skips them (#6844)."""
    if spec.min_replicas > 0:
        return desired, None
    if current == 0:
        if queue_depth > spec.activation_queue_depth:
            return max(desired, 1), None
        return 0, (f"activation {spec.activation_queue_depth} not reached" if desired > 0 else None)
    if idle_for >= to_seconds(spec.idle_after):
        return desired, (f"idle {idle_for:.0f}s" if desired == 0 else None)
    if desired == 0:
        return 1, f"idle {idle_for:.0f}s < idleAfter {spec.idle_after}"
    return desired, None


def _num(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:.3g}"
