"""Every flow's signals from Prometheus in one batched pass.

The cost of a pass depends on the number of signal KINDS, not on the number of flows: each preset
query is written without any flow's labels in it (`sum by (vhost, queue) (...)` over every queue),
so one answer serves every flow that needs that kind, and the flows pick their own series out of it.
Per-kind queries (instead of one giant query) keep failures apart: a slow CPU join cannot take the
queue depths down with it. What costs more:

- a window that varies per flow (health.baselineWindow, health.queueGrowthWindow): one query per
  DISTINCT value among the flows of the pass;
- a flow's own PromQL (spec.metrics.*): one query per override; overriding throughput, latencySeconds
  or queueDepth also replaces the signal derived from it (its baseline, queueGrowingSeconds) with a
  subquery over the override, one more query (identical override text is asked once per pass);
- a flow's own Prometheus (spec.metrics.server): its flows are batched per distinct server.

The exact metric names and PromQL are documented in docs/metrics-convention.md; a unit test keeps that
page and the queries from drifting apart.

The package, by concern: `convention` (metric names), `queries` (pure query building), `answers`
(answers -> signals, failures classified), `servers` (how to reach a Prometheus, credentials),
`signals_pass` (the pass itself).

Failures are classified, never raised: connection refused, timeouts and HTTP 5xx make every flow that
needed the query fail as transient (PrometheusUnavailable); a flow's own query refused by Prometheus
(HTTP 400 bad_data, 422 execution) is that flow's configuration problem (FlowSignals.invalid_queries)
and its other signals are still returned. An empty result or NaN is None, never 0.
"""

from flowkeeper.adapters.prometheus.queries import FlowTarget
from flowkeeper.adapters.prometheus.signals_pass import PassResult, PrometheusSignals
# SignalsFailure lives in the domain (the planner reads it); re-exported here as part of this API.
from flowkeeper.domain.signals import SignalsFailure

__all__ = ["FlowTarget", "PassResult", "PrometheusSignals", "SignalsFailure"]
