"""What one metrics pass knows about one flow. Produced by the Prometheus adapter, read by the pure
scaling and health code. A signal that could not be read (no series, NaN, query failed) is None:
None means "unknown", never zero."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from flowkeeper.domain.errors import ErrorClass


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
    cpu_utilization: float | None = None  # consumer CPU, fraction of requests (0.7 = 70 %)
    memory_utilization: float | None = None  # consumer memory, fraction of limits
    # Signals whose query failed in a way that is the flow's fault (bad override query): name -> message.
    invalid_queries: dict[str, str] = field(default_factory=dict)
    # Signals that have no value this pass although they were asked for, and why (a query that timed
    # out, a value that cannot be true): FlowSignals field name -> reason for people.
    unread: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # NaN and infinities from Prometheus mean "no value": normalise them once, here.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                object.__setattr__(self, f.name, None)

    @property
    def has_backlog_signal(self) -> bool:
        return self.queue_depth is not None


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
