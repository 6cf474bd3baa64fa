"""The operator's own Prometheus metrics (served on /metrics by `flowkeeper run`)."""

from __future__ import annotations

import threading
import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

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


class FlowGauges:
    """The per-flow live values (status.signals restates them only on meaningful moves or every
    minute): flowkeeper_flow_desired_replicas and flowkeeper_flow_queue_depth, by namespace and flow.
    A flow that is gone, or a backlog that could not be read, has no series rather than a stale or
    zero one.

    The values are kept as one tuple per flow and turned into series when /metrics is scraped: a
    labelled prometheus_client Gauge would hold an object, a lock and a dict per flow and series
    (about 25 MB at 10,000 flows). The loop's thread writes them; the scrape's thread copies them
    under the lock."""

    _SERIES = (
        ("flowkeeper_flow_desired_replicas", "The replica count each flow's last plan wants."),
        ("flowkeeper_flow_queue_depth", "Each flow's backlog as its last pass read it."),
    )

    def __init__(self) -> None:
        self._shown: dict[str, tuple[str, str, float | None, float | None]] = {}  # flow UID -> namespace, flow, values
        self._lock = threading.Lock()
        _FLOW_GAUGES.add(self)

    def show(self, uid: str, namespace: str, flow: str, desired: float | None, depth: float | None) -> None:
        shown = (namespace, flow, desired, depth)
        if self._shown.get(uid) != shown:
            with self._lock:
                self._shown[uid] = shown

    def forget(self, live: set[str] | None = None) -> None:
        """Removes the series of every flow not in `live` (all of them when None)."""
        gone = [uid for uid in self._shown if live is None or uid not in live]
        if gone:
            with self._lock:
                for uid in gone:
                    del self._shown[uid]

    def shown(self) -> list[tuple[str, str, float | None, float | None]]:
        with self._lock:
            return list(self._shown.values())


class _FlowSeries:
    """Collects the series of every FlowGauges (the operator has one; tests make several)."""

    def collect(self) -> list[GaugeMetricFamily]:
        families = self.describe()
        for gauges in list(_FLOW_GAUGES):
            for namespace, flow, *values in gauges.shown():
                for family, value in zip(families, values):
                    if value is not None:
                        family.add_metric([namespace, flow], float(value))
        return families

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(name, help_text, labels=["namespace", "flow"]) for name, help_text in FlowGauges._SERIES]


_FLOW_GAUGES: weakref.WeakSet[FlowGauges] = weakref.WeakSet()
REGISTRY.register(_FlowSeries())


def serve(port: int, address: str = "0.0.0.0") -> None:
    start_http_server(port, addr=address, registry=REGISTRY)


def record_flow_phases(counts: dict[tuple[str, str], int]) -> None:
    """Replaces the flows-by-phase gauge with the counts of the last passes."""
    FLOWS.clear()
    for (phase, severity), count in counts.items():
        FLOWS.labels(phase=phase, severity=severity).set(count)
