"""The operator's own Prometheus metrics (served on /metrics by `flowkeeper run`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

FLOWS = Gauge("flowkeeper_flows", "Flows by phase and severity.", ["phase", "severity"], registry=REGISTRY)
SCALE_ACTIONS = Counter(
    "flowkeeper_scale_actions_total", "Replica changes made, by direction.", ["direction"], registry=REGISTRY
)
PASS_SECONDS = Histogram(
    "flowkeeper_pass_duration_seconds",
    "Duration of one pass over the due flows.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
PASS_FLOWS = Histogram(
    "flowkeeper_pass_flows", "Flows handled in one pass.", buckets=(1, 10, 100, 1000, 10000), registry=REGISTRY
)
PROMETHEUS_QUERIES = Counter(
    "flowkeeper_prometheus_queries_total", "Queries sent to Prometheus.", registry=REGISTRY
)
PROMETHEUS_ERRORS = Counter(
    "flowkeeper_prometheus_errors_total", "Failed signal reads, by error class and reason.", ["error_class", "reason"], registry=REGISTRY
)
# Per query kind (a preset such as rabbitmq_depth or cpu_utilization, or override, baseline, growth):
# few values, never a flow's name or its PromQL.
PROMETHEUS_QUERY_SECONDS = Histogram(
    "flowkeeper_prometheus_query_duration_seconds",
    "Duration of one Prometheus query, answered or not, by query kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
PROMETHEUS_QUERY_ERRORS = Counter(
    "flowkeeper_prometheus_query_errors_total",
    "Prometheus queries without a usable answer, by query kind and problem "
    "(unavailable, timeout, not_asked, invalid, unauthorized, failed).",
    ["kind", "problem"],
    registry=REGISTRY,
)
DEAD_LETTER_REVIEWS = Counter(
    "flowkeeper_dead_letter_reviews_total", "Reviews of flows' dead letters, by outcome (done, failed).", ["outcome"], registry=REGISTRY
)
DEAD_LETTER_REVIEW_SECONDS = Histogram(
    "flowkeeper_dead_letter_review_seconds", "Time one review of a flow's dead letters took.", registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEAD_LETTERS_MOVED = Counter("flowkeeper_dead_letters_moved_total", "Dead letters redriven to their flow's queue.", registry=REGISTRY)
API_WRITES = Counter("flowkeeper_kubernetes_writes_total", "Writes to the Kubernetes API, by kind.", ["kind"], registry=REGISTRY)
API_ERRORS = Counter(
    "flowkeeper_kubernetes_errors_total", "Failed Kubernetes API calls, by error class and reason.", ["error_class", "reason"], registry=REGISTRY
)
PROMETHEUS_UP = Gauge(
    "flowkeeper_prometheus_up", "0 while the operator's own Prometheus cannot be read for any flow, else 1.", registry=REGISTRY
)
LEADER = Gauge(
    "flowkeeper_leader", "1 on the replica that holds the lease and acts, 0 on standbys.", registry=REGISTRY
)


FLOW_DESIRED_REPLICAS = Gauge(
    "flowkeeper_flow_desired_replicas", "The replica count each flow's last plan wants.", ["namespace", "flow"], registry=REGISTRY
)
FLOW_QUEUE_DEPTH = Gauge(
    "flowkeeper_flow_queue_depth", "Each flow's backlog as its last pass read it.", ["namespace", "flow"], registry=REGISTRY
)


class FlowGauges:
    """The per-flow live values (status.signals restates them only on meaningful moves or every
    minute). A series is set only when its value changed and removed when it has none: a flow that
    is gone, or a backlog that could not be read, has no series rather than a stale or zero one."""

    _GAUGES = (FLOW_DESIRED_REPLICAS, FLOW_QUEUE_DEPTH)

    def __init__(self) -> None:
        self._shown: dict[str, tuple[tuple[str, str], tuple[float | None, ...]]] = {}  # flow UID -> labels, values

    def show(self, uid: str, namespace: str, flow: str, *values: float | None) -> None:
        labels = (namespace, flow)
        before = self._shown.get(uid)
        if before is not None and before == (labels, values):
            return
        if before is not None and before[0] != labels:
            self._remove(before[0])  # a UID's name never changes; kept exact all the same
            before = None
        for gauge, value, old in zip(self._GAUGES, values, before[1] if before else (None,) * len(values)):
            if value is None:
                if old is not None:
                    _remove_series(gauge, labels)
            elif value != old:
                gauge.labels(*labels).set(value)
        self._shown[uid] = (labels, values)

    def forget(self, live: set[str] | None = None) -> None:
        """Removes the series of every flow not in `live` (all of them when None)."""
        for uid in [u for u in self._shown if live is None or u not in live]:
            self._remove(self._shown.pop(uid)[0])

    def _remove(self, labels: tuple[str, str]) -> None:
        for gauge in self._GAUGES:
            _remove_series(gauge, labels)


def _remove_series(gauge: Gauge, labels: tuple[str, str]) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:
        pass  # never set


def serve(port: int, address: str = "0.0.0.0") -> None:
    start_http_server(port, addr=address, registry=REGISTRY)


def record_flow_phases(counts: dict[tuple[str, str], int]) -> None:
    """Replaces the flows-by-phase gauge with the counts of the last passes."""
    FLOWS.clear()
    for (phase, severity), count in counts.items():
        FLOWS.labels(phase=phase, severity=severity).set(count)
