"""The batched signals pass against a real Prometheus scraping a controllable exporter (every second).

Each test names its queues, integrations and namespaces after `unique`, because series of earlier
tests stay visible in the rate windows for a while.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from flowkeeper.adapters.prometheus import FlowTarget, PassResult, PrometheusSignals
from flowkeeper.api.v1alpha1 import IntegrationFlowSpec, SecretKeyRef
from flowkeeper.domain.errors import ConfigurationError, ErrorClass
from tests.support.exporter import MetricsExporter
from tests.support.prometheus import LocalPrometheus

pytestmark = pytest.mark.prometheus

RATE_WINDOW = "5s"  # a few scrapes at 1s; production uses 1m
approx = lambda value: pytest.approx(value, rel=0.15)  # noqa: E731 - rates measured over a few scrapes


def flow(name: str, source: dict[str, Any], namespace: str = "shop", **spec: Any) -> FlowTarget:
    body = {"consumer": {"deployment": spec.pop("deployment", f"{name}-consumer")}, "source": source, **spec}
    return FlowTarget(f"{namespace}/{name}", namespace, name, IntegrationFlowSpec.model_validate(body))


def collect_until(signals: PrometheusSignals, flows: list[FlowTarget], check: Callable[[PassResult], None], timeout: float = 30) -> PassResult:
    """Passes until `check` stops raising AssertionError/KeyError: new series take a scrape or two,
    rates a window."""
    deadline = time.monotonic() + timeout
    while True:
        result = signals.collect(flows)
        try:
            check(result)
            return result
        except (AssertionError, KeyError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


@pytest.fixture
def signals(prometheus: LocalPrometheus) -> PrometheusSignals:
    reader = PrometheusSignals(prometheus.url, rate_window=RATE_WINDOW, timeout=5)
    yield reader
    reader.close()


def rabbitmq_flows(u: str) -> list[FlowTarget]:
    return [
        flow("orders", {"broker": "rabbitmq", "vhost": "/", "queue": f"{u}-orders", "deadLetterQueue": f"{u}-orders.dlq"}),
        # Same queue name in another vhost: a flow that ignored the vhost would read 42.
        flow("orders-eu", {"broker": "rabbitmq", "vhost": "eu", "queue": f"{u}-orders"}),
        flow("invoices", {"broker": "rabbitmq", "vhost": "/", "queue": f"{u}-invoices", "deadLetterQueue": f"{u}-invoices.dlq"}),
    ]


def test_rabbitmq_depths_reach_the_right_flows(signals, fresh_exporter: MetricsExporter, unique: str) -> None:
    u, e = unique, fresh_exporter
    e.set("rabbitmq_queue_messages_ready", {"vhost": "/", "queue": f"{u}-orders"}, 40)
    e.set("rabbitmq_queue_messages_unacked", {"vhost": "/", "queue": f"{u}-orders"}, 2)
    e.set("rabbitmq_queue_messages_ready", {"vhost": "/", "queue": f"{u}-orders.dlq"}, 3)
    e.set("rabbitmq_queue_messages_ready", {"vhost": "eu", "queue": f"{u}-orders"}, 7)  # no unacked series
    e.set("rabbitmq_queue_messages_ready", {"vhost": "/", "queue": f"{u}-invoices"}, 0)
    e.set("rabbitmq_queue_messages_unacked", {"vhost": "/", "queue": f"{u}-invoices"}, 5)
    e.set("rabbitmq_queue_messages_ready", {"vhost": "/", "queue": f"{u}-invoices.dlq"}, 0)

    def check(result: PassResult) -> None:
        depths = {k: (s.queue_depth, s.dead_letter_depth) for k, s in result.signals.items()}
        assert depths == {"shop/orders": (42, 3), "shop/orders-eu": (7, None), "shop/invoices": (5, 0)}

    result = collect_until(signals, rabbitmq_flows(u), check)
    assert not result.failures


def test_kafka_lag_and_dead_letter_topic_reach_the_right_flows(signals, fresh_exporter: MetricsExporter, unique: str) -> None:
    u, e = unique, fresh_exporter
    flows = [
        flow("a", {"broker": "kafka", "topic": f"{u}-t1", "consumerGroup": f"{u}-g1", "deadLetterTopic": f"{u}-t1.dlt"}),
        flow("b", {"broker": "kafka", "topic": f"{u}-t1", "consumerGroup": f"{u}-g2"}),  # same topic, other group
        flow("c", {"broker": "kafka", "topic": f"{u}-t2", "consumerGroup": f"{u}-g1"}),  # same group, other topic
    ]
    e.set("kafka_consumergroup_lag_sum", {"consumergroup": f"{u}-g1", "topic": f"{u}-t1"}, 10)
    e.set("kafka_consumergroup_lag_sum", {"consumergroup": f"{u}-g2", "topic": f"{u}-t1"}, 20)
    e.set("kafka_consumergroup_lag_sum", {"consumergroup": f"{u}-g1", "topic": f"{u}-t2"}, 30)
    for partition, (newest, oldest) in enumerate([(100, 90), (50, 48)]):
        labels = {"topic": f"{u}-t1.dlt", "partition": str(partition)}
        e.set("kafka_topic_partition_current_offset", labels, newest)
        e.set("kafka_topic_partition_oldest_offset", labels, oldest)

    def check(result: PassResult) -> None:
        depths = {k: (s.queue_depth, s.dead_letter_depth) for k, s in result.signals.items()}
        assert depths == {"shop/a": (10, 12), "shop/b": (20, None), "shop/c": (30, None)}

    collect_until(signals, flows, check)


def test_convention_signals_reach_the_right_flows(signals, fresh_exporter: MetricsExporter, unique: str) -> None:
    u, e = unique, fresh_exporter
    flows = [
        flow("billing", {"broker": "prometheus", "integration": f"{u}-billing"}, health={"baselineWindow": "10s"}),
        flow(f"{u}-shipping", {"broker": "prometheus"}, health={"baselineWindow": "10s"}),  # keyed by its name
        # A RabbitMQ flow reads its processing signals from the same convention.
        flow("rabbit", {"broker": "rabbitmq", "queue": f"{u}-q", "integration": f"{u}-rabbit"}, health={"baselineWindow": "10s"}),
    ]
    billing, shipping, rabbit = (f"{u}-billing",), (f"{u}-shipping",), (f"{u}-rabbit",)
    e.set("flowkeeper_queue_depth", {"integration": f"{u}-billing"}, 12)
    e.set("flowkeeper_dead_letter_depth", {"integration": f"{u}-billing"}, 1)
    e.set("flowkeeper_queue_depth", {"integration": f"{u}-shipping"}, 34)
    # billing: two pods, 8 successes and 2 errors per second in all; half a configuration error.
    for pod, success, error in (("p1", 5, 1), ("p2", 3, 1)):
        e.set_rate("flowkeeper_messages_processed_total", {"integration": billing[0], "pod": pod, "status": "success"}, success)
        e.set_rate("flowkeeper_messages_processed_total", {"integration": billing[0], "pod": pod, "status": "error"}, error)
    e.set_rate("flowkeeper_errors_total", {"integration": billing[0], "class": "configuration"}, 0.5)
    e.set_rate("flowkeeper_processing_seconds_sum", {"integration": billing[0]}, 5)
    e.set_rate("flowkeeper_processing_seconds_count", {"integration": billing[0]}, 10)
    e.set("flowkeeper_last_success_timestamp_seconds", {"integration": billing[0], "pod": "p1"}, 1_700_000_000)
    e.set("flowkeeper_last_success_timestamp_seconds", {"integration": billing[0], "pod": "p2"}, 1_700_000_050)
    # shipping: no error series at all, only data-class errors: ratio 0 and no configuration errors.
    e.set_rate("flowkeeper_messages_processed_total", {"integration": shipping[0], "status": "success"}, 4)
    e.set_rate("flowkeeper_errors_total", {"integration": shipping[0], "class": "data"}, 1)
    e.set_rate("flowkeeper_processing_seconds_sum", {"integration": shipping[0]}, 1)
    e.set_rate("flowkeeper_processing_seconds_count", {"integration": shipping[0]}, 4)
    e.set_rate("flowkeeper_messages_processed_total", {"integration": rabbit[0], "status": "success"}, 2)

    def check(result: PassResult) -> None:
        b, s, r = (result.signals[f"shop/{n}"] for n in ("billing", f"{u}-shipping", "rabbit"))
        assert (b.queue_depth, b.dead_letter_depth, s.queue_depth, s.dead_letter_depth) == (12, 1, 34, None)
        assert (b.throughput, s.throughput, r.throughput) == (approx(10), approx(4), approx(2))
        assert (b.error_ratio, s.error_ratio, r.error_ratio) == (approx(0.2), 0, 0)
        assert (b.configuration_errors, s.configuration_errors) == (approx(0.5), 0)
        assert (b.latency_seconds, s.latency_seconds, r.latency_seconds) == (approx(0.5), approx(0.25), None)
        assert (b.last_success_timestamp, s.last_success_timestamp) == (1_700_000_050, None)
        assert (b.throughput_baseline, b.latency_baseline, s.throughput_baseline) == (approx(10), approx(0.5), approx(4))
        assert r.queue_depth is None  # RabbitMQ depth comes from RabbitMQ, which has no such queue here

    collect_until(signals, flows, check)


def test_queue_growth_over_the_window(signals, fresh_exporter: MetricsExporter, unique: str) -> None:
    u, e = unique, fresh_exporter
    growth = {"queueGrowthWindow": "6s"}
    flows = [flow(n, {"broker": "rabbitmq", "queue": f"{u}-{n}"}, health=growth) for n in ("growing", "flat")]
    e.set_rate("rabbitmq_queue_messages_ready", {"vhost": "/", "queue": f"{u}-growing"}, 3, start=10)
    e.set("rabbitmq_queue_messages_ready", {"vhost": "/", "queue": f"{u}-flat"}, 50)

    def check(result: PassResult) -> None:
        assert result.signals["shop/growing"].queue_growing_seconds == 6  # grew for the whole window
        assert result.signals["shop/flat"].queue_growing_seconds == 0

    collect_until(signals, flows, check)


def test_cpu_and_memory_per_deployment(signals, fresh_exporter: MetricsExporter, unique: str) -> None:
    u, e = unique, fresh_exporter
    one, two = f"{u}-one", f"{u}-two"
    # (namespace, deployment, pod, container, cpu cores used, cpu request, memory used, memory limit)
    containers = [
        (one, "worker", "worker-5d9f-a", "app", 0.2, 0.5, 100, 400),
        (one, "worker", "worker-5d9f-a", "sidecar", 0.1, None, 50, None),  # no request: not counted
        (one, "worker", "worker-5d9f-b", "app", 0.3, 0.5, 200, 400),
        (one, "api", "api-77c4-a", "app", 0.1, 0.25, 64, 256),
        (two, "worker", "worker-81ab-a", "app", 0.9, 1.0, 512, 1024),  # same Deployment name, other namespace
    ]
    for namespace, deployment, pod, container, cpu, request, memory, limit in containers:
        replicaset = pod.rsplit("-", 1)[0]
        labels = {"namespace": namespace, "pod": pod, "container": container}
        e.set_rate("container_cpu_usage_seconds_total", labels, cpu)
        e.set("container_memory_working_set_bytes", labels, memory)
        if request is not None:
            e.set("kube_pod_container_resource_requests", {**labels, "resource": "cpu", "unit": "core"}, request)
            e.set("kube_pod_container_resource_limits", {**labels, "resource": "memory", "unit": "byte"}, limit)
        e.set("kube_pod_owner", {"namespace": namespace, "pod": pod, "owner_kind": "ReplicaSet", "owner_name": replicaset, "owner_is_controller": "true"}, 1)
        e.set("kube_replicaset_owner", {"namespace": namespace, "replicaset": replicaset, "owner_kind": "Deployment", "owner_name": deployment}, 1)
    # A Pending pod: requests, no usage yet. It must not dilute the ratio.
    e.set("kube_pod_container_resource_requests", {"namespace": one, "pod": "worker-5d9f-c", "container": "app", "resource": "cpu"}, 0.5)
    e.set("kube_pod_owner", {"namespace": one, "pod": "worker-5d9f-c", "owner_kind": "ReplicaSet", "owner_name": "worker-5d9f"}, 1)

    flows = [
        flow("f1", {"broker": "rabbitmq", "queue": "q"}, namespace=one, deployment="worker"),
        flow("f2", {"broker": "rabbitmq", "queue": "q"}, namespace=two, deployment="worker"),
        flow("f3", {"broker": "rabbitmq", "queue": "q"}, namespace=one, deployment="api"),
    ]

    def check(result: PassResult) -> None:
        usage = {k: (s.cpu_utilization, s.memory_utilization) for k, s in result.signals.items()}
        assert usage == {
            f"{one}/f1": (approx(0.5), 0.375),
            f"{two}/f2": (approx(0.9), 0.5),
            f"{one}/f3": (approx(0.4), 0.25),
        }

    collect_until(signals, flows, check)


# ---------------------------------------------------------------------------------------- the cost


def broker_flows(broker: str, count: int, u: str) -> list[FlowTarget]:
    source = {
        "rabbitmq": lambda i: {"broker": "rabbitmq", "queue": f"{u}-q{i}", "deadLetterQueue": f"{u}-q{i}.dlq"},
        "kafka": lambda i: {"broker": "kafka", "topic": f"{u}-t{i}", "consumerGroup": "g", "deadLetterTopic": f"{u}-t{i}.dlt"},
        "prometheus": lambda i: {"broker": "prometheus"},
    }[broker]
    return [flow(f"{broker}-{i}", source(i)) for i in range(count)]


@pytest.mark.parametrize(("broker", "expected"), [("rabbitmq", 11), ("kafka", 12), ("prometheus", 12)])
def test_queries_per_pass_depend_on_signal_kinds_not_on_flows(signals, fresh_exporter, unique: str, broker: str, expected: int) -> None:
    few = signals.collect(broker_flows(broker, 3, unique))
    many = signals.collect(broker_flows(broker, 30, unique))
    assert not few.failures and not many.failures and len(many.signals) == 30
    assert few.queries == many.queries == expected


def test_an_override_costs_exactly_one_more_query(signals, fresh_exporter, unique: str) -> None:
    plain = broker_flows("rabbitmq", 3, unique)
    custom = flow("custom", {"broker": "rabbitmq", "queue": f"{unique}-custom"}, metrics={"errorRatio": "vector(0.25)"})
    before = signals.collect(plain)
    after = signals.collect([*plain, custom])
    assert after.queries == before.queries + 1
    assert after.signals[custom.key].error_ratio == 0.25


def test_a_bad_override_is_an_invalid_query_of_that_flow_only(signals, fresh_exporter: MetricsExporter, unique: str) -> None:
    fresh_exporter.set("rabbitmq_queue_messages_ready", {"vhost": "/", "queue": f"{unique}-bad"}, 9)
    bad = flow("bad", {"broker": "rabbitmq", "queue": f"{unique}-bad"}, metrics={"throughput": "sum(rate(flowkeeper_messages_processed_total[1m]"})
    good = flow("good", {"broker": "rabbitmq", "queue": f"{unique}-good"})

    def check(result: PassResult) -> None:
        assert result.signals[bad.key].queue_depth == 9  # the rest of its signals still come back

    result = collect_until(signals, [bad, good], check)
    assert not result.failures
    invalid = result.signals[bad.key].invalid_queries
    assert list(invalid) == ["throughput"] and "parse error" in invalid["throughput"]
    assert result.signals[bad.key].throughput is None and result.signals[bad.key].throughput_baseline is None
    assert result.signals[good.key].invalid_queries == {}


def test_an_empty_result_is_unknown_not_zero(signals, fresh_exporter, unique: str) -> None:
    nothing = flow("nothing", {"broker": "rabbitmq", "queue": f"{unique}-never-declared", "deadLetterQueue": f"{unique}-dlq"})
    result = signals.collect([nothing])
    assert not result.failures
    got = result.signals[nothing.key]
    unknown = ("queue_depth", "dead_letter_depth", "throughput", "throughput_baseline", "error_ratio", "configuration_errors",
               "latency_seconds", "latency_baseline", "last_success_timestamp", "queue_growing_seconds", "cpu_utilization", "memory_utilization")
    assert {name: getattr(got, name) for name in unknown} == dict.fromkeys(unknown)


# ------------------------------------------------------------------------------ other servers, outages


def test_flows_with_their_own_server_are_batched_per_server(prometheus: LocalPrometheus, fresh_exporter, unique: str) -> None:
    # The same Prometheus under another address stands for another server.
    server = {"address": f"http://localhost:{prometheus.port}", "bearerTokenSecret": {"name": "prometheus", "key": "token"}}
    fresh_exporter.set("rabbitmq_queue_messages_ready", {"vhost": "/", "queue": f"{unique}-own"}, 5)
    own = [flow(f"own-{i}", {"broker": "rabbitmq", "queue": f"{unique}-own"}, namespace=ns, metrics={"server": server}) for i, ns in enumerate(["a", "b"])]
    lost = flow("lost", {"broker": "rabbitmq", "queue": "x"}, namespace="c", metrics={"server": server})

    def read_secret(namespace: str, ref: SecretKeyRef) -> str:
        if namespace == "c":
            raise ConfigurationError(f"Secret {namespace}/{ref.name}: not found", reason="NotFound")
        return "token-of-the-flow"

    def check(result: PassResult) -> None:
        assert result.signals["a/own-0"].queue_depth == result.signals["b/own-1"].queue_depth == 5

    signals = PrometheusSignals(prometheus.url, rate_window=RATE_WINDOW, secret_reader=read_secret)
    try:
        default_only = signals.collect(broker_flows("rabbitmq", 2, unique)).queries
        result = collect_until(signals, [*broker_flows("rabbitmq", 2, unique), *own, lost], check)
    finally:
        signals.close()
    assert result.queries == 2 * default_only  # one batch per server, whatever the number of flows
    assert (result.failures["c/lost"].error_class, result.failures["c/lost"].reason) == (ErrorClass.configuration, "SecretNotFound")


def test_prometheus_down_fails_every_flow_as_transient_without_raising(prometheus: LocalPrometheus, signals, fresh_exporter, unique: str) -> None:
    flows = [*rabbitmq_flows(unique), *broker_flows("kafka", 2, unique), *broker_flows("prometheus", 2, unique)]
    prometheus.stop()
    try:
        result = signals.collect(flows)
    finally:
        prometheus.start()
    assert not result.signals and set(result.failures) == {f.key for f in flows}
    assert {(f.error_class, f.reason) for f in result.failures.values()} == {(ErrorClass.transient, "PrometheusUnavailable")}
    assert result.queries == 1  # the rest of the pass was not sent to a server that is not there
    assert not signals.collect(flows).failures  # back on the same port
