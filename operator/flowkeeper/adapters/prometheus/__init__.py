"""Every flow's signals from Prometheus in one batched pass.

The cost of a pass depends on the number of signal KINDS, not on the number of flows: each preset
query is written without any flow's labels in it (`sum by (vhost, queue) (...)` over every queue),
so one answer serves every flow that needs that kind, and the flows pick their own series out of it.
Per-kind queries (instead of one giant query) keep failures apart: a slow CPU join cannot take the
queue depths down with it. What costs more:

- a window that varies per flow (health.baselineWindow, health.queueGrowthWindow): one query per
  DISTINCT value among the flows of the pass;
- broker label matchers (spec.source.metricLabels): one broker query per distinct label set;
- a flow's own PromQL (spec.metrics.*): one query per override; overriding throughput, latencySeconds
  or queueDepth also replaces the signal derived from it (its baseline, queueGrowingSeconds) with a
  subquery over the override, one more query (identical override text is asked once per pass);
- a flow's own Prometheus (spec.metrics.server): its flows are batched per distinct server.

The exact metric names and PromQL are documented in docs/metrics-convention.md; a unit test keeps that
page and the queries from drifting apart.

Failures are classified, never raised. Every query has a deadline for its whole answer, and the pass
one for all of them; a query that times out costs only its own signals (None, named in
FlowSignals.unread), a server that refuses connections fails every flow that needed it as transient.
Only a flow's own query text refused by Prometheus is that flow's configuration problem
(FlowSignals.invalid_queries). An empty result or NaN is None, never 0.

The package, by concern: `convention` (metric names), `promql` (PromQL text), `queries` (pure query
building), `answers` (answers -> signals, failures classified), `servers` (which servers, credentials),
`client` (HTTP with deadlines), `signals_pass` (the pass itself).
"""

from __future__ import annotations

from flowkeeper.adapters.prometheus.queries import FlowTarget
from flowkeeper.adapters.prometheus.signals_pass import PassResult, PrometheusSignals

# SignalsFailure lives in the domain (the planner reads it); re-exported here as part of this API.
from flowkeeper.domain.signals import SignalsFailure

__all__ = ["FlowTarget", "PassResult", "PrometheusSignals", "SignalsFailure"]
