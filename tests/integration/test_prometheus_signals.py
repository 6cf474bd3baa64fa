"""The batched signals pass against a real Prometheus scraping a controllable exporter (every second).

Each test names its queues, integrations and namespaces after `unique`, because series of earlier
tests stay visible in the rate windows for a while.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from flowkeeper.adapters.prometheus import FlowTarget, PassResult, PrometheusSignals
from flowkeeper.api.v1alpha1 import IntegrationFlowSpec, SecretKeyRef
from flowkeeper.domain.errors import ConfigurationError, ErrorClass
from flowkeeper.observability import metrics
from tests.support.exporter import MetricsExporter
from tests.support.processes import free_port
from tests.support.prometheus import LocalPrometheus
from tests.support.slow_prometheus import SlowPrometheus

pytestmark = pytest.mark.prometheus

RATE_WINDOW = "5s"  # a few scrapes at 1s; production uses 1m
approx = lambda value: pytest.approx(value, rel=0.15)  # noqa: E731 - rates measured over a few scrapes


def flow(name: str, source: dict[str, Any], namespace: str = "shop", **spec: Any) -> FlowTarget:
    target = {"name": spec.pop("target", f"{name}-consumer"), **spec.pop("target_kind", {})}
    body = {"scaleTargetRef": target, "source": source, **spec}
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
    reader = PrometheusSignals(prometheus.url, rate_window=RATE_WINDOW, timeout=5, allow_overrides=True, keep_answers=False)
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
    e.set("flowkeeper_queue_depth", {"namespace": "shop", "integration": f"{u}-billing"}, 12)
    e.set("flowkeeper_dead_letter_depth", {"namespace": "shop", "integration": f"{u}-billing"}, 1)
    e.set("flowkeeper_queue_depth", {"namespace": "shop", "integration": f"{u}-shipping"}, 34)
    # billing: two pods, 8 successes and 2 errors per second in all; half a configuration error.
    for pod, success, error in (("p1", 5, 1), ("p2", 3, 1)):
        e.set_rate("flowkeeper_messages_processed_total", {"namespace": "shop", "integration": billing[0], "pod": pod, "status": "success"}, success)
        e.set_rate("flowkeeper_messages_processed_total", {"namespace": "shop", "integration": billing[0], "pod": pod, "status": "error"}, error)
    e.set_rate("flowkeeper_errors_total", {"namespace": "shop", "integration": billing[0], "class": "configuration"}, 0.5)
    e.set_rate("flowkeeper_processing_seconds_sum", {"namespace": "shop", "integration": billing[0]}, 5)
    e.set_rate("flowkeeper_processing_seconds_count", {"namespace": "shop", "integration": billing[0]}, 10)
    e.set("flowkeeper_last_success_timestamp_seconds", {"namespace": "shop", "integration": billing[0], "pod": "p1"}, 1_700_000_000)
    e.set("flowkeeper_last_success_timestamp_seconds", {"namespace": "shop", "integration": billing[0], "pod": "p2"}, 1_700_000_050)
    # shipping: no error series at all, only data-class errors: ratio 0 and no configuration errors.
    e.set_rate("flowkeeper_messages_processed_total", {"namespace": "shop", "integration": shipping[0], "status": "success"}, 4)
    e.set_rate("flowkeeper_errors_total", {"namespace": "shop", "integration": shipping[0], "class": "data"}, 1)
    e.set_rate("flowkeeper_processing_seconds_sum", {"namespace": "shop", "integration": shipping[0]}, 1)
    e.set_rate("flowkeeper_processing_seconds_count", {"namespace": "shop", "integration": shipping[0]}, 4)
    e.set_rate("flowkeeper_messages_processed_total", {"namespace": "shop", "integration": rabbit[0], "status": "success"}, 2)

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

    signals = PrometheusSignals(prometheus.url, rate_window=RATE_WINDOW, secret_reader=read_secret, allowed_servers=[server["address"]], keep_answers=False)
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


# ----------------------------------------------------------------- namespaces and broker label sets


def test_convention_signals_never_leak_across_namespaces(signals, fresh_exporter: MetricsExporter, unique: str) -> None:
    # The same flow name in two namespaces: the dev consumers' configuration errors are dev's only.
    name = f"{unique}-orders"
    flows = [flow(name, {"broker": "prometheus"}, namespace=ns) for ns in ("shop-dev", "shop-prod")]
    for namespace, config_errors in (("shop-dev", 0.5), ("shop-prod", 0.0)):
        labels = {"namespace": namespace, "integration": name}
        fresh_exporter.set_rate("flowkeeper_messages_processed_total", {**labels, "status": "success"}, 2)
        fresh_exporter.set_rate("flowkeeper_errors_total", {**labels, "class": "configuration"}, config_errors)
        fresh_exporter.set("flowkeeper_queue_depth", labels, 10 if namespace == "shop-dev" else 3)

    def check(result: PassResult) -> None:
        dev, prod = result.signals[f"shop-dev/{name}"], result.signals[f"shop-prod/{name}"]
        assert (dev.configuration_errors, prod.configuration_errors) == (approx(0.5), 0)
        assert (dev.queue_depth, prod.queue_depth) == (10, 3)
        assert (dev.throughput, prod.throughput) == (approx(2), approx(2))

    collect_until(signals, flows, check)


def test_metric_labels_pick_one_brokers_queue(signals, fresh_exporter: MetricsExporter, unique: str) -> None:
    queue = f"{unique}-orders"
    odd = 'p"r\\od\nx'  # quote, backslash, newline: escaped on both sides, read back exactly
    for instance, ready in (("rabbitmq-prod:15692", 40), ("rabbitmq-staging:15692", 7), (odd, 100)):
        fresh_exporter.set("rabbitmq_queue_messages_ready", {"vhost": "/", "queue": queue, "instance": instance}, ready)
    for cluster, lag in (("prod", 5), ("staging", 50)):
        fresh_exporter.set("kafka_consumergroup_lag_sum", {"consumergroup": "g", "topic": queue, "cluster": cluster}, lag)
    rabbit = lambda name, labels: flow(name, {"broker": "rabbitmq", "queue": queue, "metricLabels": labels})  # noqa: E731
    flows = [
        rabbit("prod", {"instance": "rabbitmq-prod:15692"}),
        rabbit("prod-too", {"instance": "rabbitmq-prod:15692"}),
        rabbit("staging", {"instance": "rabbitmq-staging:15692"}),
        rabbit("odd", {"instance": odd}),
        flow("all", {"broker": "rabbitmq", "queue": queue}),
        flow("kafka-prod", {"broker": "kafka", "topic": queue, "consumerGroup": "g", "metricLabels": {"cluster": "prod"}}),
    ]

    def check(result: PassResult) -> None:
        depths = {key.split("/")[1]: s.queue_depth for key, s in result.signals.items()}
        assert depths == {"prod": 40, "prod-too": 40, "staging": 7, "odd": 100, "all": 147, "kafka-prod": 5}

    result = collect_until(signals, flows, check)
    assert not result.failures
    plain = signals.collect([flows[4], flows[5]]).queries
    assert result.queries == plain + 3 * 2  # per further label set: its depth query and that one's growth


# ------------------------------------------------------------------------------ overrides embedded


def test_overrides_with_a_comment_or_a_scalar_keep_their_derived_signals(signals, fresh_exporter: MetricsExporter, unique: str) -> None:
    u = unique
    fresh_exporter.set_rate("flowkeeper_messages_processed_total", {"namespace": "shop", "integration": f"{u}-c", "pod": "a"}, 4)
    fresh_exporter.set(f"{u}_depth", {"path": "/a#b"}, 9)
    window = {"baselineWindow": "10s", "queueGrowthWindow": "6s"}
    overrides = {
        "commented": {
            "throughput": f'sum(rate(flowkeeper_messages_processed_total{{integration="{u}-c"}}[5s])) # every pod',
            "queueDepth": f'sum({u}_depth{{path="/a#b"}})  # "#" in a string is no comment',
        },
        "scalar": {"throughput": "42", "queueDepth": f"scalar(sum({u}_depth))"},
        "vector": {"throughput": "vector(3)", "latencySeconds": "scalar(vector(0.5)) # seconds"},
    }
    flows = [flow(name, {"broker": "prometheus"}, metrics=metrics, health=window) for name, metrics in overrides.items()]

    def check(result: PassResult) -> None:
        got = {k.split("/")[1]: (s.throughput, s.throughput_baseline, s.queue_depth, s.queue_growing_seconds) for k, s in result.signals.items()}
        assert got == {
            "commented": (approx(4), approx(4), 9, 0),
            "scalar": (42, 42, 9, 0),
            "vector": (3, 3, None, None),
        }
        assert result.signals["shop/vector"].latency_baseline == 0.5

    result = collect_until(signals, flows, check)
    assert not result.failures
    assert {k: (s.invalid_queries, s.unread) for k, s in result.signals.items() if s.invalid_queries or s.unread} == {}


def test_a_failing_derived_query_never_pauses_the_flow(signals, fresh_exporter: MetricsExporter, unique: str) -> None:
    # A range vector is a query Prometheus answers, but not one number: the user's mistake. The
    # baseline built around it is refused by Prometheus: that must not count as the user's.
    odd = flow("odd", {"broker": "prometheus"}, metrics={"throughput": "flowkeeper_messages_processed_total[5m]"})
    got = signals.collect([odd]).signals[odd.key]
    assert list(got.invalid_queries) == ["throughput"] and "matrix" in got.invalid_queries["throughput"]
    assert got.throughput is None and got.throughput_baseline is None
    assert got.unread["throughput_baseline"].startswith("the baseline of spec.metrics.throughput: ")
    assert all("override" not in text and "throughput_baseline" not in text for text in [*got.unread.values(), *got.invalid_queries.values()])


# ------------------------------------------------------------------------------------ slow answers


def metric(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_trickling_answer_costs_only_its_own_signal(prometheus: LocalPrometheus, fresh_exporter: MetricsExporter, unique: str) -> None:
    fresh_exporter.set("rabbitmq_queue_messages_ready", {"vhost": "/", "queue": f"{unique}-q0"}, 6)
    prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{unique}-q0"}}')
    flows = broker_flows("rabbitmq", 3, unique)
    timeouts = metric("flowkeeper_prometheus_query_errors_total", kind="cpu_utilization", problem="timeout")
    with SlowPrometheus(prometheus.url) as slow:
        slow.slow_down("container_cpu_usage_seconds_total", trickle=2.0)  # the CPU join: a byte every 2 s
        reader = PrometheusSignals(slow.url, rate_window=RATE_WINDOW, timeout=1.5)
        try:
            result = reader.collect(flows)
        finally:
            reader.close()
    assert result.queries == 11  # every other query was still asked
    assert result.seconds < 1.5 + 3  # the CPU query's whole answer had 1.5 s; the other ten are quick
    assert not result.failures
    got = result.signals[flows[0].key]
    assert got.queue_depth == 6 and got.cpu_utilization is None
    assert got.unread["cpu_utilization"].startswith("cpu utilization: Prometheus did not answer in time")
    assert metric("flowkeeper_prometheus_query_errors_total", kind="cpu_utilization", problem="timeout") == timeouts + 1
    # Prometheus is told to give up before the client does: 1.5 s for the pass's own queries, the
    # slow signals' keep time (30 s) for those asked in their own threads.
    def sent(a) -> float:
        timeout = a.params["timeout"]
        return float(timeout.removesuffix("ms")) / 1000 if timeout.endswith("ms") else float(timeout.removesuffix("s"))

    slow_ones = [sent(a) for a in slow.asked if "deriv(" in a.query or "avg_over_time(" in a.query]
    pass_ones = [sent(a) for a in slow.asked if not ("deriv(" in a.query or "avg_over_time(" in a.query)]
    assert pass_ones and all(0 < timeout < 1.5 for timeout in pass_ones)
    assert slow_ones and all(1.5 < timeout < 30 for timeout in slow_ones)


def test_a_slow_signal_slower_than_the_query_timeout_is_answered_without_holding_passes(prometheus: LocalPrometheus, fresh_exporter: MetricsExporter, unique: str) -> None:
    # At 10,000 flows the growth subquery took Prometheus longer than the query timeout: asked inside
    # the pass it timed out on every pass. Asked in its own thread, it has its keep time to answer.
    growth = {"queueGrowthWindow": "60s"}  # kept 6 s: its ask has max(1 s timeout, 6 s)
    e = fresh_exporter
    e.set_rate("rabbitmq_queue_messages_ready", {"vhost": "/", "queue": f"{unique}-g"}, 3, start=10)
    prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{unique}-g"}}')
    flows = [flow("g", {"broker": "rabbitmq", "queue": f"{unique}-g"}, health=growth)]
    with SlowPrometheus(prometheus.url) as slow:
        slow.slow_down("deriv(", delay=3.0)  # the growth subquery: 3 s, past the 1 s timeout
        reader = PrometheusSignals(slow.url, rate_window=RATE_WINDOW, timeout=1.0)
        try:
            first = reader.collect(flows)  # no answer yet: waited the query timeout, then went on
            assert "queue_growing_seconds" in first.signals["shop/g"].unanswered
            assert first.signals["shop/g"].queue_depth is not None
            time.sleep(3.0)
            second = reader.collect(flows)  # the answer that came in meanwhile
            assert "queue_growing_seconds" not in second.signals["shop/g"].unanswered
            time.sleep(4.0)  # past its keep time: asked again, the last answer serving meanwhile
            third = reader.collect(flows)
            running = list(reader._slow_asks._asked.values())
            assert running and not running[0].done.is_set()  # not waited for
            assert "queue_growing_seconds" not in third.signals["shop/g"].unanswered
            assert third.queries == second.queries + 1
        finally:
            reader.close()


def test_the_pass_has_a_deadline_and_says_what_it_did_not_ask(prometheus: LocalPrometheus, fresh_exporter: MetricsExporter, unique: str) -> None:
    fresh_exporter.set("rabbitmq_queue_messages_ready", {"vhost": "/", "queue": f"{unique}-q0"}, 6)
    prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{unique}-q0"}}')
    flows = broker_flows("rabbitmq", 2, unique)
    with SlowPrometheus(prometheus.url) as slow:
        slow.slow_down("", delay=0.8)  # every answer late, none too late
        reader = PrometheusSignals(slow.url, rate_window=RATE_WINDOW, timeout=1.5, pass_timeout=2.0)
        try:
            result = reader.collect(flows)
        finally:
            reader.close()
    assert result.seconds < 2.0 + 0.5 and 2 <= result.queries <= 3
    got = result.signals[flows[0].key]
    assert got.queue_depth == 6  # asked first
    not_asked = {name for name, why in got.unread.items() if "the signals pass reached its deadline (2s)" in why}
    assert {"cpu_utilization", "memory_utilization", "latency_seconds"} <= not_asked
    assert got.unread["latency_baseline"] == "the baseline of latency seconds not computed: latency seconds has no value"
    assert all(getattr(got, name) is None for name in got.unread)


# ------------------------------------------------------------------------------------ credentials


def test_a_rotated_token_file_is_used_on_the_next_pass(prometheus: LocalPrometheus, fresh_exporter, unique: str, tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    flows = broker_flows("rabbitmq", 1, unique)
    with SlowPrometheus(prometheus.url) as guarded:
        guarded.authorization = "Bearer first-token"
        reader = PrometheusSignals(guarded.url, rate_window=RATE_WINDOW, bearer_token_file=str(token))
        try:
            assert not reader.collect(flows).failures
            # The kubelet swaps a projected token's file; the old token is refused from then on.
            rotated = tmp_path / "token.new"
            rotated.write_text("second-token\n")
            rotated.replace(token)
            guarded.authorization = "Bearer second-token"
            after = reader.collect(flows)
        finally:
            reader.close()
    assert not after.failures
    assert guarded.asked[-1].authorization == "Bearer second-token"


def test_credentials_never_reach_logs_or_messages(prometheus: LocalPrometheus, fresh_exporter, unique: str, caplog, tmp_path) -> None:
    secrets = {"token": "s3cr3t-flow-t0ken", "password": "pa55-w0rd-x", "userinfo": "url-pa55w0rd"}
    token = tmp_path / "token"
    token.write_text("operator-t0ken-x")
    closed = free_port()
    with SlowPrometheus(prometheus.url) as guarded:
        guarded.authorization = "Bearer nobody-has-this"  # every request refused: messages and warnings
        refused_url = guarded.url.replace("://", f"://alice:{secrets['userinfo']}@")
        servers = {
            "refused-bearer": {"address": refused_url, "bearerTokenSecret": {"name": "prom", "key": "token"}},
            "refused-basic": {"address": guarded.url, "basicAuth": {
                "usernameSecret": {"name": "prom-basic", "key": "username"}, "passwordSecret": {"name": "prom-basic", "key": "password"},
            }},
            "unreachable": {"address": f"http://bob:{secrets['userinfo']}@127.0.0.1:{closed}"},
            "not-allowed": {"address": f"https://carol:{secrets['userinfo']}@elsewhere.example:9090"},
        }
        flows = [flow(name, {"broker": "rabbitmq", "queue": f"{unique}-q"}, metrics={"server": server}) for name, server in servers.items()]
        flows.append(flow("default", {"broker": "rabbitmq", "queue": f"{unique}-q"}))

        def read_secret(namespace: str, ref: SecretKeyRef) -> str:
            return {"token": secrets["token"], "username": "alice", "password": secrets["password"]}[ref.key]

        reader = PrometheusSignals(
            guarded.url, bearer_token_file=str(token), secret_reader=read_secret,
            allowed_servers=[guarded.url, f"http://127.0.0.1:{closed}"],
        )
        caplog.set_level(logging.DEBUG, logger="flowkeeper")
        try:
            result = reader.collect(flows)
        finally:
            reader.close()
    assert {k.split("/")[1]: f.reason for k, f in result.failures.items()} == {
        "refused-bearer": "PrometheusUnauthorized",
        "refused-basic": "PrometheusUnauthorized",
        "unreachable": "PrometheusUnavailable",
        "not-allowed": "MetricsServerNotAllowed",
        "default": "PrometheusUnauthorized",
    }
    assert any(a.authorization == f"Bearer {secrets['token']}" for a in guarded.asked)  # the secrets were used...
    texts = [caplog.text, *(str(r.__dict__) for r in caplog.records), *(f.message for f in result.failures.values())]
    for secret in [*secrets.values(), "operator-t0ken-x"]:
        assert not any(secret in text for text in texts), secret  # ...and never written anywhere
