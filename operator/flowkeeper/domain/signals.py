"""What one metrics pass knows about one flow. Produced by the Prometheus adapter, read by the pure
scaling and health code. A signal that could not be read (no series, NaN, query failed) is None:
None means "unknown", never zero."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, fields

from flowkeeper.domain.errors import ErrorClass


# The largest value each kind of signal can really take; above it the number is a broken exporter or
# query, not a measurement. Generous: the point is to refuse nonsense, not to judge load.
_LIMITS = {
    "queue_depth": 1e12,  # messages
    "dead_letter_depth": 1e12,
    "throughput": 1e9,  # messages per second
    "throughput_baseline": 1e9,
    "error_ratio": 1.0 + 1e-9,  # a ratio of counts (rounding may overshoot 1 by a hair)
    "configuration_errors": 1e9,  # per second
    "latency_seconds": 1e7,  # about four months per message
    "latency_baseline": 1e7,
    "queue_growing_seconds": 1e9,
    "cpu_utilization": 1000.0,  # fraction of requests: 100000 %
    "memory_utilization": 1000.0,  # fraction of limits
    "last_success_timestamp": 1e11,  # unix seconds, year 5138
}


def impossible(signal: str, value: float) -> str | None:
    """Why `value` cannot be a real reading of `signal`, or None when it can."""
    if not math.isfinite(value):
        return "no value"
    if value < 0:
        return f"{value:.6g} is negative"
    limit = _LIMITS.get(signal)
    if limit is not None and value > limit:
        return f"{value:.6g} is impossibly large"
    return None


@dataclass(frozen=True)
class FlowSignals:
    observed_at: float  # unix seconds when the pass read them
    queue_depth: float | None = None  # messages waiting (ready, plus unacked for RabbitMQ)
    dead_letter_depth: float | None = None  # messages in the dead-letter queue
    throughput: float | None = None  # messages processed per second, all consumers together
    throughput_baseline: float | None = None  # the same over the trailing baseline window
    error_ratio: float | None = None  # failed / processed, 0..1
    configuration_errors: float | None = None  # rate of errors the consumers classify as configuration
    latency_seconds: float | None = None  # processing latency per message
    latency_baseline: float | None = None  # the same over the trailing baseline window
    last_success_timestamp: float | None = None  # unix seconds of the last processed message
    queue_growing_seconds: float | None = None  # how long the backlog has grown without a break
    # Fractions inside the operator (0.7 = 70 %), as the presets' PromQL answers; users read and write
    # percent (spec, status.signals, spec.metrics.cpuUtilization): converted at those edges.
    cpu_utilization: float | None = None  # consumer CPU, fraction of requests
    memory_utilization: float | None = None  # consumer memory, fraction of limits
    # Signals whose query failed in a way that is the flow's fault (bad override query): name -> message.
    invalid_queries: dict[str, str] = field(default_factory=dict)
    # Signals that have no value this pass although they were asked for, and why (a query that timed
    # out, a value that cannot be true): FlowSignals field name -> reason for people.
    unread: dict[str, str] = field(default_factory=dict)
    # Why the backlog itself has no value when its query got no answer (PrometheusTimeout,
    # PrometheusPassTimeout, ...): Prometheus' trouble, not the flow's, and one incident when it hits
    # every flow (controller/loop.py), not a Warning per flow.
    backlog_unanswered: str | None = None
    # The signals of `unread` whose query Prometheus did not answer (it was down, timed out, or the
    # pass ran out of time): its trouble, counted and logged for the operator, not news of the flow.
    unanswered: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # NaN and infinities from Prometheus mean "no value"; a value that cannot be true (a negative
        # depth from a broken exporter, 1e307 CPU from a bad override) is no value either, and is
        # named in `unread` so that MetricsAvailable says which signal and why. Normalised once, here.
        unread = dict(self.unread)
        for name in _READINGS:
            value = getattr(self, name)
            if value is None:
                continue
            why = impossible(name, float(value))
            if why is not None:
                object.__setattr__(self, name, None)
                if why != "no value":
                    unread[name] = why
        object.__setattr__(self, "unread", unread)

    def reads_like(self, other: FlowSignals) -> bool:
        """The same values, unread signals and failures, whenever each was read (NaN never compares:
        it is normalised to None above)."""
        return _compared(self) == _compared(other)

    def observed_on(self, clock_reading: float) -> FlowSignals:
        """The same readings stamped on another clock: no second normalisation (they were checked)."""
        moved = object.__new__(FlowSignals)
        moved.__dict__.update(self.__dict__, observed_at=clock_reading)
        return moved


# The fields that hold a reading (a number or None), named once: __post_init__ runs for every flow
# of every pass.
_READINGS = tuple(
    f.name for f in fields(FlowSignals) if f.name not in ("observed_at", "invalid_queries", "unread", "backlog_unanswered", "unanswered")
)
_compared = operator.attrgetter(*(f.name for f in fields(FlowSignals) if f.name != "observed_at"))



# The spec field a user writes to override each signal: messages name it, never the internal name.
OVERRIDE_FIELDS = {
    "queue_depth": "spec.metrics.queueDepth",
    "dead_letter_depth": "spec.metrics.deadLetterDepth",
    "throughput": "spec.metrics.throughput",
    "error_ratio": "spec.metrics.errorRatio",
    "configuration_errors": "spec.metrics.configurationErrors",
    "latency_seconds": "spec.metrics.latencySeconds",
    "last_success_timestamp": "spec.metrics.lastSuccessTimestamp",
    "cpu_utilization": "spec.metrics.cpuUtilization",
}

# Configuration failures that the operator's own policy causes (a Prometheus server or overrides the
# operator does not allow): reported on the flow, replicas held, never a reason to pause it.
NOT_PAUSING = frozenset({"MetricsServerNotAllowed", "MetricsOverridesNotAllowed"})


@dataclass(frozen=True)
class SignalsFailure:
    """Nothing could be read for a flow in this pass, and why."""

    error_class: ErrorClass
    reason: str  # CamelCase: PrometheusUnavailable, SecretNotFound, ...
    message: str
