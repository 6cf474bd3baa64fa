"""The Flowkeeper metrics convention (docs/metrics-convention.md) as one consumer exports it. The
names come from the operator's own adapter, so the two cannot drift."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from examples.consumer.errors import ErrorClass
from flowkeeper.adapters.prometheus.convention import ERRORS, INTEGRATION, LAST_SUCCESS, NAMESPACE, PROCESSED, PROCESSING_SECONDS


class ConventionMetrics:
    """The convention's series of one integration, in `registry`. `namespace`, when given, labels the
    series as Prometheus' Kubernetes discovery would (for a scrape without it)."""

    def __init__(self, integration: str, namespace: str | None = None, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        names, values = ([NAMESPACE, INTEGRATION], [namespace, integration]) if namespace else ([INTEGRATION], [integration])
        # prometheus_client appends _total to counters itself.
        processed = Counter(PROCESSED.removesuffix("_total"), "Messages taken from the queue and finished, by outcome",
                            [*names, "status"], registry=self.registry)
        errors = Counter(ERRORS.removesuffix("_total"), "Failures by class", [*names, "class"], registry=self.registry)
        self._seconds = Histogram(PROCESSING_SECONDS, "Time to process one message", names, registry=self.registry).labels(*values)
        self._last_success = Gauge(LAST_SUCCESS, "Unix time of the last message processed successfully", names,
                                   registry=self.registry).labels(*values)
        # Every child exists from the start (at 0), so "no errors yet" reads as 0, not as no data.
        self._success = processed.labels(*values, "success")
        self._error = processed.labels(*values, "error")
        self._errors = {error_class: errors.labels(*values, error_class.value) for error_class in ErrorClass}

    def succeeded(self, seconds: float) -> None:
        self._success.inc()
        self._last_success.set(time.time())
        self._seconds.observe(seconds)

    def dead_lettered(self, error_class: ErrorClass, seconds: float) -> None:
        """A message finished with an error: status="error", plus its class."""
        self._error.inc()
        self._errors[error_class].inc()
        self._seconds.observe(seconds)

    def failed_attempt(self, error_class: ErrorClass) -> None:
        """A failure that is retried (a message put back, a connection refused): not "processed",
        since a retried message counts once, with its final status."""
        self._errors[error_class].inc()
