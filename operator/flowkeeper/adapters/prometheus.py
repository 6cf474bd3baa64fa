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
page and the queries below from drifting apart.

Failures are classified, never raised: connection refused, timeouts and HTTP 5xx make every flow that
needed the query fail as transient (PrometheusUnavailable); a flow's own query refused by Prometheus
(HTTP 400 bad_data, 422 execution) is that flow's configuration problem (FlowSignals.invalid_queries)
and its other signals are still returned. An empty result or NaN is None, never 0.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, Protocol

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from flowkeeper.api.durations import to_seconds
from flowkeeper.api.v1alpha1 import Broker, IntegrationFlowSpec, PrometheusServer, SecretKeyRef
from flowkeeper.domain.errors import ErrorClass, FlowkeeperError
# SignalsFailure lives in the domain (the planner reads it); re-exported here as part of this API.
from flowkeeper.domain.signals import FlowSignals, SignalsFailure

log = logging.getLogger("flowkeeper.prometheus")

# ------------------------------------------------------------------------------------ public types


@dataclass(frozen=True)
class FlowTarget:
    """What the pass needs to know about one flow."""

    key: str  # "namespace/name"
    namespace: str
    name: str
    spec: IntegrationFlowSpec


@dataclass
class PassResult:
    signals: dict[str, FlowSignals]  # per key, for flows whose pass worked (single signals may be None)
    failures: dict[str, SignalsFailure]  # per key, when nothing could be read for that flow
    # (reasons: PrometheusUnavailable, PrometheusUnauthorized, PrometheusQueryFailed, SecretNotFound, ...)
    queries: int  # Prometheus HTTP queries made in this pass
    seconds: float


# ------------------------------------------------------------------------------ the metrics we read

# The metrics convention the consumers export (docs/metrics-convention.md).
PROCESSED = "flowkeeper_messages_processed_total"  # counter {integration, status="success"|"error"}
ERRORS = "flowkeeper_errors_total"  # counter {integration, class="configuration"|"data"|"code"|"transient"}
PROCESSING_SECONDS = "flowkeeper_processing_seconds"  # histogram or summary {integration}: _sum, _count
LAST_SUCCESS = "flowkeeper_last_success_timestamp_seconds"  # gauge {integration}
QUEUE_DEPTH = "flowkeeper_queue_depth"  # gauge {integration}, for broker: prometheus
DEAD_LETTER_DEPTH = "flowkeeper_dead_letter_depth"  # gauge {integration}, for broker: prometheus
INTEGRATION = "integration"

# rabbitmq_prometheus per-object metrics (/metrics/per-object or /metrics/detailed).
RABBITMQ_DEPTH_METRICS = '{__name__=~"rabbitmq_queue_messages_ready|rabbitmq_queue_messages_unacked"}'
# kafka_exporter.
KAFKA_LAG = "kafka_consumergroup_lag_sum"

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

# Resolution of the windows computed with subqueries: the queue-growth window is looked at in 10
# steps, a baseline window in 60.
GROWTH_STEPS = 10
BASELINE_STEPS = 60


# ---------------------------------------------------------------------------- queries (pure, no I/O)


@dataclass(frozen=True)
class Query:
    """One PromQL query of a pass. Equal queries are asked once, whichever flows need them."""

    kind: str  # short name for logs and docs, e.g. "rabbitmq_depth", "throughput_baseline[1h]"
    promql: str
    by: tuple[str, ...] = ()  # labels naming a result series; () for a flow's own query (one number)
    requires: Query | None = None  # asked only if this one worked: the base of a derived signal

    @property
    def is_override(self) -> bool:
        return not self.by


@dataclass(frozen=True)
class Read:
    """One signal of one flow: the series with label values `key` in the answer to `query`."""

    signal: str  # a FlowSignals field
    query: Query
    key: tuple[str, ...] = ()


def promql_duration(seconds: float) -> str:
    """3600 -> '1h', 90 -> '90s', 1.5 -> '1500ms': the shortest PromQL spelling, so equal windows
    written differently ('60m', '1h') make one query."""
    millis = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"


def _step(window_s: float, steps: int) -> float:
    return max(1.0, round(window_s / steps))


def growth_promql(slope: Callable[[str], str], window_s: float, rate_s: float) -> str:
    """For how many seconds the backlog has grown without a break, up to the window.

    `slope(range)` is PromQL for the backlog's growth rate per series. The window is looked at in
    GROWTH_STEPS steps of S seconds (each slope over max(S, rate window), so steps always hold enough
    samples). Three cases, joined with `or` so that each series takes the first that applies:
    not growing now -> 0; a step without growth inside the window -> seconds since that step;
    no such step -> the time it was seen growing, at most the window (i.e. "for the whole window").
    The answer is exact to one step."""
    step = _step(window_s, GROWTH_STEPS)
    g = slope(promql_duration(max(step, rate_s)))
    window, step_d = promql_duration(window_s), promql_duration(step)
    return (
        f"(({g}) <= 0) * 0"
        f" or time() - max_over_time((timestamp(({g}) <= 0))[{window}:{step_d}])"
        f" or clamp_max(count_over_time(({g})[{window}:{step_d}]) * {step:g}, {window_s:g})"
    )


class Presets:
    """The batched queries, for a given rate window. Pure: builds strings, talks to nobody."""

    def __init__(self, rate_window: str = "1m") -> None:
        self.rate_s = to_seconds(rate_window)
        self.rate = promql_duration(self.rate_s)

    # --- backlog, per broker kind

    @cache  # noqa: B019 - a few entries per instance, and instances live as long as the operator
    def rabbitmq_depth(self) -> Query:
        # Ready + unacked in one selector, so a queue that lacks one of the two still has a depth.
        return Query("rabbitmq_depth", f"sum by (vhost, queue) ({RABBITMQ_DEPTH_METRICS})", ("vhost", "queue"))

    @cache  # noqa: B019
    def kafka_lag(self) -> Query:
        return Query("kafka_lag", f"sum by (consumergroup, topic) ({KAFKA_LAG})", ("consumergroup", "topic"))

    @cache  # noqa: B019
    def kafka_topic_messages(self) -> Query:
        # A dead-letter topic usually has no consumer group, hence no lag: its depth is the messages it
        # retains (newest - oldest offset), which stay until retention removes them.
        return Query(
            "kafka_topic_messages",
            "sum by (topic) (kafka_topic_partition_current_offset - kafka_topic_partition_oldest_offset)",
            ("topic",),
        )

    @cache  # noqa: B019
    def convention_gauge(self, metric: str) -> Query:
        return Query(metric.removeprefix("flowkeeper_"), f"sum by ({INTEGRATION}) ({metric})", (INTEGRATION,))

    # --- processing, from the convention, for every broker kind

    def _rate(self, selector: str) -> str:
        return f"sum by ({INTEGRATION}) (rate({selector}[{self.rate}]))"

    @cache  # noqa: B019
    def throughput(self) -> Query:
        return Query("throughput", self._rate(PROCESSED), (INTEGRATION,))

    @cache  # noqa: B019
    def latency(self) -> Query:
        promql = f"{self._rate(PROCESSING_SECONDS + '_sum')} / {self._rate(PROCESSING_SECONDS + '_count')}"
        return Query("latency", promql, (INTEGRATION,))

    @cache  # noqa: B019
    def error_ratio(self) -> Query:
        # Labelled counters appear at their first increment: an integration that processes messages
        # but has no status="error" series yet has an error ratio of 0 (`or ... * 0`), not "unknown".
        errors, total = self._rate(f'{PROCESSED}{{status="error"}}'), self._rate(PROCESSED)
        return Query("error_ratio", f"({errors} or {total} * 0) / {total}", (INTEGRATION,))

    @cache  # noqa: B019
    def configuration_errors(self) -> Query:
        # Same reasoning: a consumer that reports processed messages and no configuration error has 0.
        config = self._rate(f'{ERRORS}{{class="configuration"}}')
        return Query("configuration_errors", f"{config} or {self._rate(PROCESSED)} * 0", (INTEGRATION,))

    @cache  # noqa: B019
    def last_success(self) -> Query:
        return Query("last_success", f"max by ({INTEGRATION}) ({LAST_SUCCESS})", (INTEGRATION,))

    # --- consumer pods, per (namespace, deployment)

    @cache  # noqa: B019
    def cpu_utilization(self) -> Query:
        usage = f'rate(container_cpu_usage_seconds_total{{container!="", container!="POD"}}[{self.rate}])'
        promql = utilization_promql(usage, 'kube_pod_container_resource_requests{resource="cpu"}')
        return Query("cpu_utilization", promql, ("namespace", "deployment"))

    @cache  # noqa: B019
    def memory_utilization(self) -> Query:
        usage = 'container_memory_working_set_bytes{container!="", container!="POD"}'
        promql = utilization_promql(usage, 'kube_pod_container_resource_limits{resource="memory"}')
        return Query("memory_utilization", promql, ("namespace", "deployment"))

    # --- a flow's own PromQL, and the signals derived from a preset or an override alike

    def override(self, signal: str, promql: str) -> Query:
        return Query(f"override:{signal}", promql.strip())

    @lru_cache(maxsize=1024)  # noqa: B019 - bounded: override texts come and go
    def baseline(self, base: Query, window_s: float) -> Query:
        """The base signal averaged over the trailing window. Averaging the signal itself (rather than
        a rate over the whole window) stays right for a flow younger than the window, and keeps the
        baseline comparable with the signal. NaN steps (no traffic: 0/0 latency) are left out."""
        window, step = promql_duration(window_s), promql_duration(_step(window_s, BASELINE_STEPS))
        return Query(f"{base.kind}:baseline[{window}]", f"avg_over_time((({base.promql}) > -Inf)[{window}:{step}])", base.by, requires=base)

    @lru_cache(maxsize=1024)  # noqa: B019
    def growth(self, depth: Query, window_s: float) -> Query:
        """queue_growing_seconds from a depth query. Its slope is deriv() over a subquery of the depth,
        because deriv() cannot be applied to the two RabbitMQ metric names at once."""
        inner = promql_duration(_step(self.rate_s, 5))
        promql = growth_promql(lambda r: f"deriv(({depth.promql})[{r}:{inner}])", window_s, self.rate_s)
        return Query(f"{depth.kind}:growth[{promql_duration(window_s)}]", promql, depth.by, requires=depth)


# Pods -> their Deployment, through kube-state-metrics' owner metrics (pod -> ReplicaSet -> Deployment).
# Deriving the Deployment from the pod name (<deployment>-<hash>-<suffix>) would need no join, but it
# cannot tell a Deployment from a CronJob or a ReplicaSet of the same prefix; the owners can.
POD_DEPLOYMENT = (
    "max by (namespace, pod, deployment) ("
    'max by (namespace, pod, replicaset) (label_replace(kube_pod_owner{owner_kind="ReplicaSet"}, "replicaset", "$1", "owner_name", "(.+)"))'
    " * on (namespace, replicaset) group_left (deployment) "
    'max by (namespace, replicaset, deployment) (label_replace(kube_replicaset_owner{owner_kind="Deployment"}, "deployment", "$1", "owner_name", "(.+)"))'
    ")"
)


def utilization_promql(usage: str, capacity: str) -> str:
    """sum(usage) / sum(capacity) of a Deployment's pods, like the HPA: only containers that have both a
    usage and a request/limit count (a sidecar without requests does not inflate the ratio), and only
    pods that run (a Pending pod has requests and no usage)."""
    usage_c = f"sum by (namespace, pod, container) ({usage})"
    capacity_c = f"max by (namespace, pod, container) ({capacity})"  # max: KSM may run in HA pairs

    def per_deployment(per_container: str, present_in: str) -> str:
        per_pod = f"sum by (namespace, pod) ({per_container} and on (namespace, pod, container) {present_in})"
        return f"sum by (namespace, deployment) ({per_pod} * on (namespace, pod) group_left (deployment) {POD_DEPLOYMENT})"

    return f"{per_deployment(usage_c, capacity_c)} / {per_deployment(capacity_c, usage_c)}"


def flow_reads(flow: FlowTarget, presets: Presets) -> list[Read]:
    """Every signal this flow needs, and where to find it: the broker's presets, the convention, the
    consumer pods; the flow's overrides replace presets; derived signals follow their base."""
    spec, source = flow.spec, flow.spec.source
    integration = (source.integration or flow.name,)
    sources: dict[str, tuple[Query, tuple[str, ...]]] = {}  # signal -> (query, key)

    if source.broker == Broker.rabbitmq:
        sources["queue_depth"] = (presets.rabbitmq_depth(), (source.vhost, source.queue or ""))
        if source.dead_letter_queue:
            sources["dead_letter_depth"] = (presets.rabbitmq_depth(), (source.vhost, source.dead_letter_queue))
    elif source.broker == Broker.kafka:
        sources["queue_depth"] = (presets.kafka_lag(), (source.consumer_group or "", source.topic or ""))
        if source.dead_letter_topic:
            sources["dead_letter_depth"] = (presets.kafka_topic_messages(), (source.dead_letter_topic,))
    else:
        sources["queue_depth"] = (presets.convention_gauge(QUEUE_DEPTH), integration)
        sources["dead_letter_depth"] = (presets.convention_gauge(DEAD_LETTER_DEPTH), integration)
    sources["throughput"] = (presets.throughput(), integration)
    sources["error_ratio"] = (presets.error_ratio(), integration)
    sources["configuration_errors"] = (presets.configuration_errors(), integration)
    sources["latency_seconds"] = (presets.latency(), integration)
    sources["last_success_timestamp"] = (presets.last_success(), integration)
    pods = (flow.namespace, spec.consumer.deployment)
    sources["cpu_utilization"] = (presets.cpu_utilization(), pods)
    sources["memory_utilization"] = (presets.memory_utilization(), pods)

    for signal in OVERRIDABLE:
        promql = getattr(spec.metrics, signal)
        if promql and promql.strip():
            sources[signal] = (presets.override(signal, promql), ())

    growth_s = to_seconds(spec.health.queue_growth_window)
    baseline_s = to_seconds(spec.health.baseline_window)
    derived = {
        "queue_growing_seconds": ("queue_depth", lambda q: presets.growth(q, growth_s)),
        "throughput_baseline": ("throughput", lambda q: presets.baseline(q, baseline_s)),
        "latency_baseline": ("latency_seconds", lambda q: presets.baseline(q, baseline_s)),
    }
    reads = [Read(signal, query, key) for signal, (query, key) in sources.items()]
    for signal, (base, build) in derived.items():
        query, key = sources[base]
        reads.append(Read(signal, build(query), key))
    return reads


@dataclass
class PassPlan:
    queries: list[Query]  # each once, a query's `requires` before it
    reads: dict[str, list[Read]]  # per flow key


def plan_pass(flows: Iterable[FlowTarget], presets: Presets) -> PassPlan:
    reads = {flow.key: flow_reads(flow, presets) for flow in flows}
    return PassPlan(queries_of(reads.values()), reads)


def queries_of(reads_per_flow: Iterable[list[Read]]) -> list[Query]:
    """Each query once, a query's `requires` before it; batched presets before flows' own queries,
    so that an outage is noticed on a query every flow shares."""
    queries: dict[Query, None] = {}  # an ordered set
    for reads in reads_per_flow:
        for read in reads:
            if read.query.requires is not None:
                queries.setdefault(read.query.requires, None)
            queries.setdefault(read.query, None)
    return sorted(queries, key=lambda q: q.is_override)  # stable: keeps `requires` first


# -------------------------------------------------------------------------- results and their errors


class QueryProblem(Exception):
    """A query that gave no usable answer, already classified."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # one of the constants below
        self.message = message

    UNAVAILABLE = "unavailable"  # connection refused, timeout, 5xx, 429: Prometheus cannot answer now
    INVALID = "invalid"  # Prometheus refused the query itself (400 bad_data, 422 execution, many series)
    UNAUTHORIZED = "unauthorized"  # 401, 403
    FAILED = "failed"  # anything else (404 from a wrong address, not Prometheus's JSON, ...)


# Transport failures: refused, reset, timed out, or the answer cut off mid-way.
_UNREACHABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
_STATUS_MESSAGE = re.compile(r"HTTP Status Code (\d+) \((.*)\)\Z", re.S)


def classify(exc: Exception) -> QueryProblem:
    """prometheus-api-client raises requests' exceptions for transport errors, and for any non-200 a
    PrometheusApiClientException whose only payload is the text 'HTTP Status Code <n> (<body repr>)':
    the status and Prometheus's errorType are read back from that text."""
    if isinstance(exc, QueryProblem):
        return exc
    if isinstance(exc, _UNREACHABLE):
        return QueryProblem(QueryProblem.UNAVAILABLE, f"Prometheus not reachable: {_short(exc)}")
    if isinstance(exc, PrometheusApiClientException):
        match = _STATUS_MESSAGE.match(str(exc))
        if match:
            status = int(match.group(1))
            error_type, error = _error_body(match.group(2))
            text = f"HTTP {status}" + (f" {error_type}: {error}" if error else "")
            if status >= 500 or status in (408, 429):
                return QueryProblem(QueryProblem.UNAVAILABLE, f"Prometheus unavailable: {text}")
            if status in (400, 422) and error_type in ("bad_data", "execution"):
                return QueryProblem(QueryProblem.INVALID, error or text)
            if status in (401, 403):
                return QueryProblem(QueryProblem.UNAUTHORIZED, f"Prometheus refused the credentials: {text}")
            return QueryProblem(QueryProblem.FAILED, f"Prometheus query failed: {text}")
    # requests.JSONDecodeError, KeyError on a body that is not Prometheus's, ...
    return QueryProblem(QueryProblem.FAILED, f"Prometheus query failed: {_short(exc)}")


def _error_body(body_repr: str) -> tuple[str, str]:
    try:
        body = json.loads(ast.literal_eval(body_repr))
        return str(body.get("errorType", "")), str(body.get("error", ""))
    except (ValueError, SyntaxError, TypeError, AttributeError):
        return "", ""


def _short(exc: Exception) -> str:
    # requests nests the urllib3 cause in long reprs; the last part names what happened.
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def index_result(result: Any, by: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """Series of a batched query by their label values. NaN and missing values are left out: absent
    means unknown, and FlowSignals turns it into None."""
    indexed: dict[tuple[str, ...], float] = {}
    for series in result or ():
        value = _number(series.get("value", (None, None))[1])
        if value is not None:
            labels = series.get("metric", {})
            indexed[tuple(labels.get(name, "") for name in by)] = value
    return indexed


def single_value(result: Any) -> float | None:
    """The one number a flow's own query must return; no series -> None; several -> its mistake."""
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        return _number(result[1])  # a scalar: [time, "value"]
    series = list(result or ())
    if len(series) > 1:
        raise QueryProblem(
            QueryProblem.INVALID, f"the query returned {len(series)} series, it must return one number (wrap it in sum(...))"
        )
    return _number(series[0].get("value", (None, None))[1]) if series else None


# ------------------------------------------------------------------------------- servers and secrets

SecretReader = Callable[[str, SecretKeyRef], str]


@dataclass(frozen=True)
class ServerSettings:
    """How to reach one Prometheus. Flows whose settings are equal share one batch."""

    url: str
    headers: tuple[tuple[str, str], ...] = ()
    auth: tuple[str, str] | None = None
    verify: str | bool = True  # a CA bundle path, or default verification
    from_flow: bool = False  # credentials came from the flow's Secrets: a refusal is the flow's problem

    def __repr__(self) -> str:  # never log credentials
        return f"ServerSettings({self.url!r})"


class QueryClient(Protocol):
    def custom_query(self, query: str, params: dict | None = None) -> Any: ...


def _default_client(settings: ServerSettings, timeout: float) -> QueryClient:
    session = requests.Session()
    session.verify = settings.verify
    # No retries inside a pass: a failed query is retried by the next pass, and the fallback logic
    # needs to hear about failures quickly. 5xx come back as responses, classified above.
    return PrometheusConnect(
        url=settings.url.rstrip("/"),
        headers=dict(settings.headers) or None,
        auth=settings.auth,
        session=session,
        timeout=timeout,
        retry=Retry(total=0, raise_on_status=False),
    )


# The Kubernetes adapter's reasons, said of a Secret.
_SECRET_REASONS = {"NotFound": "SecretNotFound", "Forbidden": "SecretForbidden"}


class _SecretProblem(Exception):
    def __init__(self, failure: SignalsFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


# --------------------------------------------------------------------------------------- the pass

SECRET_CACHE_SECONDS = 60.0  # how long a Secret read for a flow's own server is reused
IDLE_CLIENT_SECONDS = 600.0  # a flow's own server unused this long has its HTTP session closed


def _close(client: QueryClient) -> None:
    getattr(client, "close", lambda: None)()



class PrometheusSignals:
    """The batched signals pass. `collect()` is synchronous (the operator runs it in a thread) and one
    pass runs at a time; it never raises."""

    def __init__(
        self,
        url: str,
        *,
        headers: dict | None = None,
        ca_file: str | None = None,
        timeout: float = 5.0,
        rate_window: str = "1m",
        clock: Callable[[], float] = time.time,
        secret_reader: SecretReader | None = None,
        client_factory: Callable[[ServerSettings, float], QueryClient] = _default_client,
    ) -> None:
        self.default_server = ServerSettings(url=url, headers=tuple(sorted((headers or {}).items())), verify=ca_file or True)
        self.timeout = timeout
        self.presets = Presets(rate_window)
        self.clock = clock
        self.secret_reader = secret_reader
        self._client_factory = client_factory
        self._clients: dict[ServerSettings, QueryClient] = {}
        self._client_used: dict[ServerSettings, float] = {}
        self._secrets: dict[tuple[str, str, str], tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._ca_dir: str | None = None
        self._finalizer: weakref.finalize | None = None

    def close(self) -> None:
        """Closes the HTTP sessions and removes the CA files written for flows' own servers."""
        for client in self._clients.values():
            _close(client)
        self._clients.clear()
        self._client_used.clear()
        if self._finalizer is not None:
            self._finalizer()

    def collect(self, flows: Sequence[FlowTarget]) -> PassResult:
        started = time.monotonic()
        with self._lock:
            now = self.clock()
            result = PassResult(signals={}, failures={}, queries=0, seconds=0.0)
            groups: dict[ServerSettings, list[FlowTarget]] = {}
            for flow in flows:
                try:
                    groups.setdefault(self._server_of(flow), []).append(flow)
                except _SecretProblem as problem:
                    result.failures[flow.key] = problem.failure
                except Exception as exc:  # noqa: BLE001 - e.g. the CA file cannot be written
                    result.failures[flow.key] = SignalsFailure(ErrorClass.transient, "PrometheusClientError", str(exc))
            for settings, members in groups.items():
                try:
                    self._collect_group(settings, members, now, result)
                except Exception as exc:  # noqa: BLE001 - a bug here must cost one pass, not the operator's loop
                    log.exception("signals pass failed", extra={"server": settings.url})
                    for flow in members:
                        if flow.key not in result.signals:
                            result.failures.setdefault(flow.key, SignalsFailure(ErrorClass.transient, "PrometheusClientError", str(exc)))
            self._forget_idle_clients()
            self._forget_expired_secrets()
        result.seconds = time.monotonic() - started
        log.debug(
            "signals pass",
            extra={"flows": len(flows), "failed": len(result.failures), "queries": result.queries, "seconds": round(result.seconds, 3)},
        )
        return result

    # --- one server

    def _collect_group(self, settings: ServerSettings, flows: list[FlowTarget], now: float, result: PassResult) -> None:
        reads: dict[str, list[Read]] = {}
        for flow in flows:
            try:
                reads[flow.key] = flow_reads(flow, self.presets)
            except Exception as exc:  # noqa: BLE001 - a spec the CRD should have refused must not stop the pass
                result.failures[flow.key] = SignalsFailure(ErrorClass.configuration, "InvalidSpec", f"cannot build its queries: {exc}")
        answers, asked = self._ask(settings, queries_of(reads.values()), now)
        result.queries += asked
        failed: dict[str, int] = {}
        for key, flow_reads_ in reads.items():
            outcome = assemble(flow_reads_, answers, now, from_flow_server=settings.from_flow)
            if isinstance(outcome, SignalsFailure):
                result.failures[key] = outcome
                failed[outcome.reason] = failed.get(outcome.reason, 0) + 1
            else:
                result.signals[key] = outcome
        for reason, count in failed.items():  # one line per cause, not one per flow: an outage hits them all
            log.warning("signals of %d flows not read: %s", count, reason, extra={"server": settings.url, "reason": reason})

    def _ask(self, settings: ServerSettings, queries: list[Query], now: float) -> tuple[dict[Query, Any], int]:
        """Runs the queries; each answer is a result or a QueryProblem. Once the server cannot be
        reached, the remaining queries are not sent: each would wait for the same timeout."""
        client = self._client(settings)
        params = {"time": f"{now:.3f}", "timeout": promql_duration(self.timeout)}  # one instant per pass
        answers: dict[Query, Any] = {}
        asked = 0
        unreachable: QueryProblem | None = None
        for query in queries:
            if unreachable is not None:
                answers[query] = unreachable
                continue
            if query.requires is not None and isinstance(answers.get(query.requires), QueryProblem):
                answers[query] = None  # its base failed and says why; nothing more to learn here
                continue
            asked += 1
            try:
                result = client.custom_query(query.promql, params=params)
                # A batched answer is indexed once here, then looked up by every flow that reads it.
                answers[query] = result if query.is_override else index_result(result, query.by)
            except Exception as exc:  # noqa: BLE001 - every failure is classified, none escapes the pass
                problem = classify(exc)
                answers[query] = problem
                if isinstance(exc, _UNREACHABLE):
                    unreachable = problem
                if not query.is_override:
                    log.warning("query %s failed: %s", query.kind, problem.message, extra={"server": settings.url})
        return answers, asked

    def _client(self, settings: ServerSettings) -> QueryClient:
        if settings not in self._clients:
            self._clients[settings] = self._client_factory(settings, self.timeout)
        self._client_used[settings] = time.monotonic()
        return self._clients[settings]

    def _forget_idle_clients(self) -> None:
        # A server no flow has used for a while (spec changed, flow deleted) should not keep a session
        # open. Not "unused in this pass": a pass may serve only the flows that are due.
        idle_since = time.monotonic() - IDLE_CLIENT_SECONDS
        for settings in [s for s, used in self._client_used.items() if used < idle_since and s != self.default_server]:
            del self._client_used[settings]
            _close(self._clients.pop(settings))

    def _forget_expired_secrets(self) -> None:
        if self._secrets:
            now = time.monotonic()
            self._secrets = {key: entry for key, entry in self._secrets.items() if entry[0] > now}

    # --- a flow's own server

    def _server_of(self, flow: FlowTarget) -> ServerSettings:
        server: PrometheusServer | None = flow.spec.metrics.server
        if server is None:
            return self.default_server
        headers: dict[str, str] = {}
        auth = None
        verify: str | bool = True
        if server.bearer_token_secret is not None:
            headers["Authorization"] = f"Bearer {self._secret(flow, server.bearer_token_secret).strip()}"
        if server.basic_auth_secret is not None:
            auth = (
                self._secret(flow, SecretKeyRef(name=server.basic_auth_secret, key="username")),
                self._secret(flow, SecretKeyRef(name=server.basic_auth_secret, key="password")),
            )
        if server.ca_secret is not None:
            verify = self._ca_file(self._secret(flow, server.ca_secret))
        return ServerSettings(server.address, tuple(sorted(headers.items())), auth, verify, from_flow=True)

    def _secret(self, flow: FlowTarget, ref: SecretKeyRef) -> str:
        where = f"Secret {flow.namespace}/{ref.name} key {ref.key!r}"
        if self.secret_reader is None:
            raise _SecretProblem(SignalsFailure(ErrorClass.transient, "SecretsUnavailable", f"{where}: the operator reads no Secrets"))
        cache_key = (flow.namespace, ref.name, ref.key)
        cached = self._secrets.get(cache_key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            value = self.secret_reader(flow.namespace, ref)
            # Cached for a while: a GET per flow and pass would throttle the API server at scale.
            self._secrets[cache_key] = (time.monotonic() + SECRET_CACHE_SECONDS, value)
            return value
        except FlowkeeperError as exc:
            if exc.error_class == ErrorClass.configuration:
                # NotFound / Forbidden / a missing key: the flow points at a Secret it cannot use.
                reason = exc.reason if exc.reason.startswith("Secret") else _SECRET_REASONS.get(exc.reason, "SecretNotFound")
                raise _SecretProblem(SignalsFailure(ErrorClass.configuration, reason, f"{where}: {exc}")) from exc
            raise _SecretProblem(SignalsFailure(exc.error_class, exc.reason, f"{where}: {exc}")) from exc
        except LookupError as exc:
            raise _SecretProblem(SignalsFailure(ErrorClass.configuration, "SecretNotFound", f"{where}: not found")) from exc
        except Exception as exc:  # noqa: BLE001 - an API hiccup is not the flow's fault
            raise _SecretProblem(SignalsFailure(ErrorClass.transient, "SecretUnreadable", f"{where}: {exc}")) from exc

    def _ca_file(self, pem: str) -> str:
        """requests verifies against a file: each distinct CA is written once, removed on close()."""
        if self._ca_dir is None:
            self._ca_dir = tempfile.mkdtemp(prefix="flowkeeper-ca-")
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._ca_dir, True)
        path = f"{self._ca_dir}/{hashlib.sha256(pem.encode()).hexdigest()[:16]}.pem"
        try:
            with open(path, "x") as out:
                out.write(pem)
        except FileExistsError:
            pass
        return path


# ------------------------------------------------------------------------------- answers -> signals

_UNAVAILABLE_REASONS = {
    QueryProblem.UNAVAILABLE: "PrometheusUnavailable",
    QueryProblem.UNAUTHORIZED: "PrometheusUnauthorized",
    QueryProblem.FAILED: "PrometheusQueryFailed",
    QueryProblem.INVALID: "PrometheusQueryFailed",  # a preset refused: our bug, not the flow's
}


def assemble(reads: list[Read], answers: Mapping[Query, Any], now: float, *, from_flow_server: bool = False) -> FlowSignals | SignalsFailure:
    """One flow's signals from the pass's answers (per query: a batched answer indexed by
    index_result, a flow's own raw result, a QueryProblem, or None when skipped). The flow fails only
    when none of its queries got an answer; otherwise unanswered signals are None, and its own refused
    queries are invalid_queries."""
    values: dict[str, float | None] = {}
    invalid: dict[str, str] = {}
    problems: list[QueryProblem] = []
    for read in reads:
        answer = answers.get(read.query)
        try:
            if isinstance(answer, QueryProblem):
                raise answer
            if answer is None and read.query.requires is not None:
                continue  # skipped: its base override failed
            values[read.signal] = single_value(answer) if read.query.is_override else answer.get(read.key)
        except QueryProblem as problem:
            if read.query.is_override and problem.kind == QueryProblem.INVALID:
                invalid[read.signal] = problem.message
            else:
                problems.append(problem)
    if problems and not values and not invalid:
        return _failure(problems[0], from_flow_server)
    return FlowSignals(observed_at=now, invalid_queries=invalid, **values)


def _failure(problem: QueryProblem, from_flow_server: bool) -> SignalsFailure:
    # Refused credentials are the flow's configuration only when the flow chose them; for the
    # operator's own Prometheus it is the operator's problem, and pausing every flow would be wrong.
    configuration = problem.kind == QueryProblem.UNAUTHORIZED and from_flow_server
    return SignalsFailure(
        ErrorClass.configuration if configuration else ErrorClass.transient,
        _UNAVAILABLE_REASONS[problem.kind],
        problem.message,
    )
