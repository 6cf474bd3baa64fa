"""The metric names Flowkeeper reads: the convention consumers export (docs/metrics-convention.md),
and the series of the broker exporters it has presets for."""

from __future__ import annotations

# The metrics convention the consumers export. Every series carries `namespace` (the consumer pod's,
# as Prometheus' Kubernetes service discovery sets it) and `integration`: a flow reads the series of
# its own namespace only, so flows of the same name in two namespaces never see each other's.
PROCESSED = "flowkeeper_messages_processed_total"  # counter {status="success"|"error"}
ERRORS = "flowkeeper_errors_total"  # counter {class="configuration"|"data"|"code"|"transient"}
PROCESSING_SECONDS = "flowkeeper_processing_seconds"  # histogram or summary: _sum, _count
LAST_SUCCESS = "flowkeeper_last_success_timestamp_seconds"  # gauge
QUEUE_DEPTH = "flowkeeper_queue_depth"  # gauge, for broker: prometheus
DEAD_LETTER_DEPTH = "flowkeeper_dead_letter_depth"  # gauge, for broker: prometheus
INTEGRATION = "integration"
NAMESPACE = "namespace"
CONVENTION_KEY = (NAMESPACE, INTEGRATION)  # the labels naming one flow's convention series

# rabbitmq_prometheus per-object metrics (/metrics/per-object or /metrics/detailed).
RABBITMQ_DEPTH_NAMES = "rabbitmq_queue_messages_ready|rabbitmq_queue_messages_unacked"
# kafka_exporter.
KAFKA_LAG = "kafka_consumergroup_lag_sum"
KAFKA_NEWEST_OFFSET = "kafka_topic_partition_current_offset"
KAFKA_OLDEST_OFFSET = "kafka_topic_partition_oldest_offset"

# Signals a flow may replace with its own PromQL (spec.metrics.*). Signals derived from one of them
# (baselines, queue_growing_seconds) follow it: a baseline is never compared with a throughput
# measured some other way.
OVERRIDABLE = (
    "queue_depth",
    "dead_letter_depth",
    "throughput",
    "error_ratio",
    "configuration_errors",
    "latency_seconds",
    "last_success_timestamp",
    "cpu_utilization",
)

# Overrides users write in percent (spec.metrics.cpuUtilization: 70 for 70 %), as every CPU figure
# they read or write; FlowSignals carries fractions (the presets' answer), so these are divided by 100.
PERCENT_OVERRIDES = frozenset({"cpu_utilization"})

# Resolution of the windows computed with subqueries: the queue-growth window is looked at in 10
# steps, a baseline window in 60.
GROWTH_STEPS = 10
BASELINE_STEPS = 60
