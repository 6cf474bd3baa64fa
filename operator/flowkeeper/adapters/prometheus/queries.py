"""Which PromQL a pass asks, and which series of which answer each flow reads. Pure: builds strings,
talks to nobody."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from functools import cache, lru_cache

from flowkeeper.adapters.prometheus.convention import (
    BASELINE_STEPS,
    CONVENTION_KEY,
    DEAD_LETTER_DEPTH,
    ERRORS,
    GROWTH_STEPS,
    KAFKA_LAG,
    KAFKA_NEWEST_OFFSET,
    KAFKA_OLDEST_OFFSET,
    LAST_SUCCESS,
    OVERRIDABLE,
    PROCESSED,
    PROCESSING_SECONDS,
    QUEUE_DEPTH,
    RABBITMQ_DEPTH_NAMES,
)
from flowkeeper.adapters.prometheus.promql import Labels, as_labels, as_vector, embeddable, matchers, promql_duration, selector
from flowkeeper.api.durations import to_seconds
from flowkeeper.api.v1alpha1 import Broker, IntegrationFlowSpec

BY = ", ".join(CONVENTION_KEY)
# Signals over windows of minutes to hours (queue growth, baselines) move little between passes, and
# their subqueries are the heaviest a pass asks (at 10,000 flows the growth query alone took about 4 s
# of the 5 s poll interval): an answer serves the passes of a tenth of its window, at most this long.
SLOW_SIGNAL_SECONDS = 30.0


@dataclass(frozen=True)
class FlowTarget:
    """What the pass needs to know about one flow."""

    key: str  # opaque to the pass: the caller's name for the flow (results are keyed by it)
    namespace: str
    name: str
    spec: IntegrationFlowSpec


@dataclass(frozen=True)
class Query:
    """One PromQL query of a pass. Equal queries are asked once, whichever flows need them."""

    kind: str  # short name for logs and tests, e.g. "rabbitmq_depth", "throughput:baseline[1h]"
    promql: str
    by: tuple[str, ...] = ()  # labels naming a result series; () for a query that returns one number
    requires: Query | None = None  # asked only if this one worked: the base of a derived signal
    family: str = ""  # the `kind` label of the operator's query metrics (few values); "" -> kind
    # A derived query over a flow's own query, for when that one answered a scalar: subqueries and
    # comparisons need an instant vector, so the scalar is wrapped first.
    promql_over_scalar: str | None = None
    keep_for: float = 0.0  # seconds an answer may serve later passes (slow-moving signals only)

    def __post_init__(self) -> None:
        # Hashed once: a pass looks each flow's queries up in its answers (10,000 flows: 100,000
        # lookups), and the generated hash walks every field and the `requires` chain each time.
        object.__setattr__(self, "_hash", hash(tuple(getattr(self, f.name) for f in fields(self))))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined]

    @property
    def one_number(self) -> bool:
        return not self.by

    @property
    def metric_kind(self) -> str:
        return self.family or self.kind


@dataclass(frozen=True)
class Read:
    """One signal of one flow: the series with label values `key` in the answer to `query`."""

    signal: str  # a FlowSignals field
    query: Query
    key: tuple[str, ...] = ()
    base: str | None = None  # for a derived signal: the signal it is computed from


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
    """The batched queries, for a given rate window."""

    def __init__(self, rate_window: str = "1m") -> None:
        self.rate_s = to_seconds(rate_window)
        self.rate = promql_duration(self.rate_s)

    # --- backlog, per broker kind; `labels` (spec.source.metricLabels) pick one broker's series
    # when several brokers export the same queue names. Flows with equal labels share a query.

    @lru_cache(maxsize=256)  # noqa: B019 - bounded: label sets come and go
    def rabbitmq_depth(self, labels: Labels = ()) -> Query:
        # Ready + unacked in one selector, so a queue that lacks one of the two still has a depth.
        names = f'__name__=~"{RABBITMQ_DEPTH_NAMES}"'
        extra = f", {matchers(labels)}" if labels else ""
        return Query("rabbitmq_depth", f"sum by (vhost, queue) ({{{names}{extra}}})", ("vhost", "queue"))

    @lru_cache(maxsize=256)  # noqa: B019
    def kafka_lag(self, labels: Labels = ()) -> Query:
        return Query("kafka_lag", f"sum by (consumergroup, topic) ({selector(KAFKA_LAG, labels)})", ("consumergroup", "topic"))

    @lru_cache(maxsize=256)  # noqa: B019
    def kafka_topic_messages(self, labels: Labels = ()) -> Query:
        # A dead-letter topic usually has no consumer group, hence no lag: its depth is the messages it
        # retains (newest - oldest offset), which stay until retention removes them.
        retained = f"{selector(KAFKA_NEWEST_OFFSET, labels)} - {selector(KAFKA_OLDEST_OFFSET, labels)}"
        return Query("kafka_topic_messages", f"sum by (topic) ({retained})", ("topic",))

    @cache  # noqa: B019 - a few entries per instance, and instances live as long as the operator
    def convention_gauge(self, metric: str) -> Query:
        return Query(metric.removeprefix("flowkeeper_"), f"sum by ({BY}) ({metric})", CONVENTION_KEY)

    # --- processing, from the convention, for every broker kind

    def _rate(self, selector_: str) -> str:
        return f"sum by ({BY}) (rate({selector_}[{self.rate}]))"

    @cache  # noqa: B019
    def throughput(self) -> Query:
        return Query("throughput", self._rate(PROCESSED), CONVENTION_KEY)

    @cache  # noqa: B019
    def latency(self) -> Query:
        promql = f"{self._rate(PROCESSING_SECONDS + '_sum')} / {self._rate(PROCESSING_SECONDS + '_count')}"
        return Query("latency", promql, CONVENTION_KEY)

    @cache  # noqa: B019
    def error_ratio(self) -> Query:
        # Labelled counters appear at their first increment: an integration that processes messages
        # but has no status="error" series yet has an error ratio of 0 (`or ... * 0`), not "unknown".
        errors, total = self._rate(f'{PROCESSED}{{status="error"}}'), self._rate(PROCESSED)
        return Query("error_ratio", f"({errors} or {total} * 0) / {total}", CONVENTION_KEY)

    @cache  # noqa: B019
    def configuration_errors(self) -> Query:
        # Same reasoning: a consumer that reports processed messages and no configuration error has 0.
        config = self._rate(f'{ERRORS}{{class="configuration"}}')
        return Query("configuration_errors", f"{config} or {self._rate(PROCESSED)} * 0", CONVENTION_KEY)

    @cache  # noqa: B019
    def last_success(self) -> Query:
        return Query("last_success", f"max by ({BY}) ({LAST_SUCCESS})", CONVENTION_KEY)

    # --- consumer pods, per (namespace, workload kind, workload name)

    @cache  # noqa: B019
    def cpu_utilization(self) -> Query:
        usage = f'rate(container_cpu_usage_seconds_total{{container!="", container!="POD"}}[{self.rate}])'
        promql = utilization_promql(usage, 'kube_pod_container_resource_requests{resource="cpu"}')
        return Query("cpu_utilization", promql, WORKLOAD_KEY)

    @cache  # noqa: B019
    def memory_utilization(self) -> Query:
        usage = 'container_memory_working_set_bytes{container!="", container!="POD"}'
        promql = utilization_promql(usage, 'kube_pod_container_resource_limits{resource="memory"}')
        return Query("memory_utilization", promql, WORKLOAD_KEY)

    # --- a flow's own PromQL, and the signals derived from a preset or an override alike

    def override(self, signal: str, promql: str) -> Query:
        return Query(f"override:{signal}", promql.strip(), family="override")

    @staticmethod
    def _derived(kind: str, family: str, base: Query, window_s: float, build: Callable[[str], str]) -> Query:
        keep_for = min(SLOW_SIGNAL_SECONDS, window_s / 10)
        if not base.one_number:
            return Query(kind, build(base.promql), base.by, requires=base, family=family, keep_for=keep_for)
        # A flow's own text is embedded without its comments, and in a second spelling for a scalar.
        own = embeddable(base.promql)
        return Query(
            kind, build(own), requires=base, family=family, promql_over_scalar=build(as_vector(own)), keep_for=keep_for
        )

    @lru_cache(maxsize=1024)  # noqa: B019 - bounded: override texts come and go
    def baseline(self, base: Query, window_s: float) -> Query:
        """The base signal averaged over the trailing window. Averaging the signal itself (rather than
        a rate over the whole window) stays right for a flow younger than the window, and keeps the
        baseline comparable with the signal. NaN steps (no traffic: 0/0 latency) are left out."""
        window, step = promql_duration(window_s), promql_duration(_step(window_s, BASELINE_STEPS))
        return self._derived(
            f"{base.kind}:baseline[{window}]", "baseline", base, window_s, lambda q: f"avg_over_time((({q}) > -Inf)[{window}:{step}])"
        )

    @lru_cache(maxsize=1024)  # noqa: B019
    def growth(self, depth: Query, window_s: float) -> Query:
        """queue_growing_seconds from a depth query. Its slope is deriv() over a subquery of the depth,
        because deriv() cannot be applied to the two RabbitMQ metric names at once."""
        inner = promql_duration(_step(self.rate_s, 5))

        def build(q: str) -> str:
            return growth_promql(lambda r: f"deriv(({q})[{r}:{inner}])", window_s, self.rate_s)

        return self._derived(f"{depth.kind}:growth[{promql_duration(window_s)}]", "growth", depth, window_s, build)


# The labels naming one workload's pod series: its namespace, kind (Deployment, StatefulSet,
# Rollout) and name, as spec.scaleTargetRef names it.
WORKLOAD_KEY = ("namespace", "workload_kind", "workload")


def _owner_as_workload(selector_: str) -> str:
    """kube-state-metrics' owner_kind/owner_name as workload_kind/workload."""
    return f'label_replace(label_replace({selector_}, "workload_kind", "$1", "owner_kind", "(.+)"), "workload", "$1", "owner_name", "(.+)")'


# Pods -> their workload, through kube-state-metrics' owner metrics: pod -> ReplicaSet -> Deployment or
# Rollout, and pod -> StatefulSet directly. Deriving the workload from the pod name
# (<deployment>-<hash>-<suffix>) would need no join, but it cannot tell a Deployment from a CronJob
# or a ReplicaSet of the same prefix; the owners can.
_REPLICASET_WORKLOAD = _owner_as_workload('kube_replicaset_owner{owner_kind=~"Deployment|Rollout"}')
_STATEFULSET_WORKLOAD = _owner_as_workload('kube_pod_owner{owner_kind="StatefulSet"}')
POD_WORKLOAD = (
    "max by (namespace, pod, workload_kind, workload) ("
    'max by (namespace, pod, replicaset) (label_replace(kube_pod_owner{owner_kind="ReplicaSet"}, "replicaset", "$1", "owner_name", "(.+)"))'
    " * on (namespace, replicaset) group_left (workload_kind, workload) "
    f"max by (namespace, replicaset, workload_kind, workload) ({_REPLICASET_WORKLOAD})"
    f" or {_STATEFULSET_WORKLOAD}"
    ")"
)


def utilization_promql(usage: str, capacity: str) -> str:
    """sum(usage) / sum(capacity) of a workload's pods, like the HPA: only containers that have both a
    usage and a request/limit count (a sidecar without requests does not inflate the ratio), and only
    pods that run (a Pending pod has requests and no usage). A fraction: 0.7 is 70 %."""
    usage_c = f"sum by (namespace, pod, container) ({usage})"
    capacity_c = f"max by (namespace, pod, container) ({capacity})"  # max: KSM may run in HA pairs
    by = ", ".join(WORKLOAD_KEY)

    def per_workload(per_container: str, present_in: str) -> str:
        per_pod = f"sum by (namespace, pod) ({per_container} and on (namespace, pod, container) {present_in})"
        return f"sum by ({by}) ({per_pod} * on (namespace, pod) group_left (workload_kind, workload) {POD_WORKLOAD})"

    return f"{per_workload(usage_c, capacity_c)} / {per_workload(capacity_c, usage_c)}"


def overrides_of(spec: IntegrationFlowSpec) -> dict[str, str]:
    """The flow's own PromQL per signal (spec.metrics.*), blank ones left out."""
    return {signal: promql for signal in OVERRIDABLE if (promql := getattr(spec.metrics, signal)) and promql.strip()}


def flow_reads(flow: FlowTarget, presets: Presets) -> list[Read]:
    """Every signal this flow needs, and where to find it: the broker's presets, the convention, the
    consumer pods; the flow's overrides replace presets; derived signals follow their base."""
    spec, source = flow.spec, flow.spec.source
    integration = (flow.namespace, source.integration or flow.name)
    broker_labels = as_labels(source.metric_labels)
    sources: dict[str, tuple[Query, tuple[str, ...]]] = {}  # signal -> (query, key)

    if source.broker == Broker.rabbitmq:
        depth = presets.rabbitmq_depth(broker_labels)
        sources["queue_depth"] = (depth, (source.vhost, source.queue or ""))
        if source.dead_letter_queue:
            sources["dead_letter_depth"] = (depth, (source.vhost, source.dead_letter_queue))
    elif source.broker == Broker.kafka:
        sources["queue_depth"] = (presets.kafka_lag(broker_labels), (source.consumer_group or "", source.topic or ""))
        if source.dead_letter_topic:
            sources["dead_letter_depth"] = (presets.kafka_topic_messages(broker_labels), (source.dead_letter_topic,))
    else:
        sources["queue_depth"] = (presets.convention_gauge(QUEUE_DEPTH), integration)
        sources["dead_letter_depth"] = (presets.convention_gauge(DEAD_LETTER_DEPTH), integration)
    sources["throughput"] = (presets.throughput(), integration)
    sources["error_ratio"] = (presets.error_ratio(), integration)
    sources["configuration_errors"] = (presets.configuration_errors(), integration)
    sources["latency_seconds"] = (presets.latency(), integration)
    sources["last_success_timestamp"] = (presets.last_success(), integration)
    pods = (flow.namespace, spec.scale_target_ref.kind, spec.scale_target_ref.name)
    sources["cpu_utilization"] = (presets.cpu_utilization(), pods)
    sources["memory_utilization"] = (presets.memory_utilization(), pods)

    for signal, promql in overrides_of(spec).items():
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
        reads.append(Read(signal, build(query), key, base=base))
    return reads


class ReadsCache:
    """flow_reads() once per spec: a flow's reads depend only on its namespace, name and spec, and the
    store keeps a flow's spec object until its generation changes. An entry goes with its spec object
    (a weak reference), so deleted and edited flows leave nothing behind."""

    def __init__(self, presets: Presets) -> None:
        self.presets = presets
        self._entries: dict[int, tuple[weakref.ref, str, str, list[Read]]] = {}

    def reads(self, flow: FlowTarget) -> list[Read]:
        key = id(flow.spec)
        entry = self._entries.get(key)
        if entry is not None:
            spec, namespace, name, built = entry
            if spec() is flow.spec and (namespace, name) == (flow.namespace, flow.name):
                return built
        built = flow_reads(flow, self.presets)
        # The callback runs as the spec is freed, before its id can be another object's.
        gone = weakref.ref(flow.spec, lambda _, key=key, entries=self._entries: entries.pop(key, None))
        self._entries[key] = (gone, flow.namespace, flow.name, built)
        return built

    def __len__(self) -> int:
        return len(self._entries)


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
    return sorted(queries, key=lambda q: q.one_number)  # stable: keeps `requires` first


def error_rate_promql(namespace: str, integration: str, classes: Iterable[str], window_s: float) -> str:
    """Errors per second of the given classes that one flow's consumers counted over the window;
    0 (not "no data") for consumers that report processed messages and no such error."""
    labels = {"namespace": namespace, "integration": integration}
    window = promql_duration(window_s)
    by_class = f'{selector(ERRORS, as_labels(labels))[:-1]}, class=~"{"|".join(sorted(classes))}"}}'
    return f"sum(rate({by_class}[{window}])) or sum(rate({selector(PROCESSED, as_labels(labels))}[{window}])) * 0"
