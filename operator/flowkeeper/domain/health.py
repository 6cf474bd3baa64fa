"""How healthy a flow is: pure code, no I/O, the clock is an argument (docs/health.md).

Each rule below reads the signals of one pass and, when its threshold is crossed, yields a finding
with a severity (the SLA tier), an error class (which decides the response) and a message with the
value and the threshold. A signal that is unknown (None) yields no finding: missing metrics are
reported by the caller (MetricsAvailable), never guessed here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flowkeeper.api.durations import to_seconds
from flowkeeper.api.v1alpha1 import HealthSpec, Severity
from flowkeeper.domain.errors import ErrorClass
from flowkeeper.domain.signals import FlowSignals

@dataclass(frozen=True)
class Finding:
    signal: str  # CamelCase reason word, e.g. ErrorRatioHigh
    severity: Severity
    error_class: ErrorClass
    message: str  # value and threshold, e.g. "error ratio 3.2% > 1.0%"


@dataclass(frozen=True)
class HealthAssessment:
    severity: Severity  # the worst finding, Severity.none when healthy
    findings: tuple[Finding, ...]  # worst first

    @property
    def healthy(self) -> bool:
        return not self.findings

    @property
    def reason(self) -> str:
        """One CamelCase word, as condition and Event reasons must be: the worst finding's."""
        return self.findings[0].signal if self.findings else "Healthy"

    @property
    def message(self) -> str:
        """Every finding, worst first."""
        return "; ".join(f.message for f in self.findings) if self.findings else "all signals within thresholds"


@dataclass(frozen=True)
class _Pass:
    """What one rule may look at."""

    spec: HealthSpec
    signals: FlowSignals
    ready_replicas: int
    desired_replicas: int
    scaling_limited: bool
    now: float
    not_ready_since: float | None  # since when no consumer is ready; None: unknown, judged as long ago

    @property
    def waiting(self) -> float | None:
        """Messages waiting, when there are any; None when the backlog is unknown or empty."""
        depth = self.signals.queue_depth
        return depth if depth is not None and depth > 0 else None


# ------------------------------------------------------------------------------------------ rules
# Each returns the finding's message when the flow breaks the rule, else None.


def _configuration_errors(p: _Pass) -> str | None:
    rate = p.signals.configuration_errors
    return f"consumers report {rate:.3g} configuration errors/s > 0" if rate is not None and rate > 0 else None


def _no_ready_consumers(p: _Pass) -> str | None:
    if p.waiting is None or p.ready_replicas > 0 or p.desired_replicas == 0:
        return None
    # Pods starting or rolling out are not an outage: only a lasting absence is.
    if p.not_ready_since is not None and p.now - p.not_ready_since < to_seconds(p.spec.not_ready_grace):
        return None
    return f"0 of {p.desired_replicas} consumers ready while {p.waiting:.0f} messages wait"


def _heartbeat_lost(p: _Pass) -> str | None:
    last, window = p.signals.last_success_timestamp, to_seconds(p.spec.heartbeat_window)
    if p.waiting is None or last is None or p.now - last <= window:
        return None
    return f"last message processed {p.now - last:.0f}s ago > {p.spec.heartbeat_window} while {p.waiting:.0f} messages wait"


def _error_ratio(p: _Pass) -> str | None:
    ratio, limit = p.signals.error_ratio, p.spec.error_ratio
    return f"error ratio {ratio:.1%} > {limit:.1%}" if ratio is not None and ratio > limit else None


def _scaling_limited(p: _Pass) -> str | None:
    growing = p.signals.queue_growing_seconds
    if not p.scaling_limited or growing is None or growing <= 0:
        return None
    return f"at the replica limit while the backlog grew for {growing:.0f}s"


def _queue_growing(p: _Pass) -> str | None:
    growing, window = p.signals.queue_growing_seconds, to_seconds(p.spec.queue_growth_window)
    if growing is None or growing < window:
        return None
    return f"backlog growing for {growing:.0f}s >= {p.spec.queue_growth_window}"


def _throughput_off_baseline(p: _Pass) -> str | None:
    # Without work waiting, low throughput only means little input: not a fault.
    rate, baseline = p.signals.throughput, p.signals.throughput_baseline
    if p.waiting is None or rate is None or baseline is None or baseline <= 0:
        return None
    # Only a drop is a fault: above the baseline while a backlog waits is scaled-out consumers draining.
    deviation = (baseline - rate) / baseline
    if deviation <= p.spec.throughput_deviation:
        return None
    return f"throughput {rate:.3g}/s is {deviation:.0%} below baseline {baseline:.3g}/s > {p.spec.throughput_deviation:.0%}"


def _latency(p: _Pass) -> str | None:
    latency, baseline, factor = p.signals.latency_seconds, p.signals.latency_baseline, p.spec.latency_factor
    if latency is None or baseline is None or baseline <= 0 or latency <= factor * baseline:
        return None
    return f"latency {latency:.3g}s > {factor:g} x baseline {baseline:.3g}s"


def _utilization(label: str, name: str) -> Callable[[_Pass], str | None]:
    """CPU or memory: a fraction read from Prometheus against a percent threshold of the same name."""

    def rule(p: _Pass) -> str | None:
        value, percent = getattr(p.signals, name), getattr(p.spec, name)
        # Compared as fractions: 0.07 * 100 is 7.000000000000001 in floating point.
        return f"{label} {value:.0%} > {percent}%" if value is not None and value > percent / 100 else None

    return rule


def _dead_letters(p: _Pass) -> str | None:
    depth = p.signals.dead_letter_depth
    return f"{depth:.0f} messages in the dead-letter queue > 0" if depth is not None and depth > 0 else None


@dataclass(frozen=True)
class _Rule:
    signal: str
    severity: Severity
    error_class: ErrorClass
    check: Callable[[_Pass], str | None]


# Listed worst first (a test keeps it so); within a severity the likelier root cause first, since the
# first finding is the Healthy condition's reason.
RULES: tuple[_Rule, ...] = (
    # The caller pauses or alerts on it (onConfigurationError); here it only marks the flow down.
    _Rule("ConsumerConfigurationError", Severity.p1, ErrorClass.configuration, _configuration_errors),
    _Rule("NoReadyConsumers", Severity.p1, ErrorClass.capacity, _no_ready_consumers),
    # Nothing delivered for a whole window while work waits: a stuck consumer or target system.
    _Rule("HeartbeatLost", Severity.p1, ErrorClass.code, _heartbeat_lost),
    _Rule("ErrorRatioHigh", Severity.p2, ErrorClass.code, _error_ratio),
    _Rule("ScalingLimited", Severity.p2, ErrorClass.capacity, _scaling_limited),
    _Rule("QueueGrowing", Severity.p2, ErrorClass.capacity, _queue_growing),
    _Rule("ThroughputOffBaseline", Severity.p2, ErrorClass.capacity, _throughput_off_baseline),
    _Rule("LatencyHigh", Severity.p2, ErrorClass.capacity, _latency),
    _Rule("CpuHigh", Severity.p2, ErrorClass.capacity, _utilization("cpu", "cpu_utilization")),
    _Rule("MemoryHigh", Severity.p2, ErrorClass.capacity, _utilization("memory", "memory_utilization")),
    # Data problem: more consumers would only fill the dead-letter queue faster.
    _Rule("DeadLetters", Severity.p3, ErrorClass.data, _dead_letters),
)


def judged_alike_later(signals: FlowSignals, *, not_ready_since: float | None) -> bool:
    """Whether the same signals get the same findings at any later time. Two rules read the clock:
    NoReadyConsumers counts since when none is ready, HeartbeatLost ages the last success while work
    waits; each is time-free when its clock is not running."""
    waiting = signals.queue_depth is not None and signals.queue_depth > 0
    return not_ready_since is None and not (waiting and signals.last_success_timestamp is not None)


def assess(
    spec: HealthSpec,
    signals: FlowSignals | None,
    *,
    ready_replicas: int,
    desired_replicas: int,
    scaling_limited: bool,
    now: float,
    not_ready_since: float | None = None,
) -> HealthAssessment:
    if signals is None:
        return HealthAssessment(Severity.none, ())
    facts = _Pass(spec, signals, ready_replicas, desired_replicas, scaling_limited, now, not_ready_since)
    findings = tuple(
        Finding(rule.signal, rule.severity, rule.error_class, message)
        for rule in RULES  # listed worst first, so the findings are too
        if (message := rule.check(facts)) is not None
    )
    return HealthAssessment(findings[0].severity if findings else Severity.none, findings)
