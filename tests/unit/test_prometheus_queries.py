"""The batched signals pass without a server: which queries a pass asks, how answers map to flows, and
how failures are classified. The same pass against a real Prometheus: tests/integration/
test_prometheus_signals.py."""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from flowkeeper.adapters.prometheus import FlowTarget, PrometheusSignals, signals_pass
from flowkeeper.adapters.prometheus.answers import QueryProblem, assemble, classify, index_result, read_answer, single_value
from flowkeeper.adapters.prometheus.promql import promql_duration
from flowkeeper.adapters.prometheus import queries
from flowkeeper.adapters.prometheus.queries import SLOW_SIGNAL_SECONDS, Presets, Query, Read, ReadsCache, flow_reads, plan_pass
from flowkeeper.adapters.prometheus.servers import ServerSettings
from flowkeeper.adapters.prometheus.slow_asks import SlowAsks
from flowkeeper.api.v1alpha1 import IntegrationFlowSpec, SecretKeyRef
from flowkeeper.domain.errors import ConfigurationError, ErrorClass

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics-convention.md"

SOURCES = {
    "rabbitmq": lambda i: {"broker": "rabbitmq", "vhost": f"v{i % 3}", "queue": f"q{i}", "deadLetterQueue": f"q{i}.dlq"},
    "kafka": lambda i: {"broker": "kafka", "topic": f"t{i}", "consumerGroup": f"g{i}", "deadLetterTopic": f"t{i}.dlt"},
    "prometheus": lambda i: {"broker": "prometheus"},
}


def flow(name: str, source: dict[str, Any], namespace: str = "shop", **spec: Any) -> FlowTarget:
    body = {"scaleTargetRef": {"name": f"{name}-consumer"}, "source": source, **spec}
    return FlowTarget(f"{namespace}/{name}", namespace, name, IntegrationFlowSpec.model_validate(body))


def flows_of(broker: str, count: int, **spec: Any) -> list[FlowTarget]:
    return [flow(f"{broker}-{i}", SOURCES[broker](i), **spec) for i in range(count)]


def kinds(flows: list[FlowTarget], rate_window: str = "1m") -> list[str]:
    return [q.kind for q in plan_pass(flows, Presets(rate_window)).queries]


# ------------------------------------------------------------------------------------ query planning


@pytest.mark.parametrize("broker", SOURCES)
def test_queries_per_pass_do_not_depend_on_the_number_of_flows(broker: str) -> None:
    assert len(kinds(flows_of(broker, 3))) == len(kinds(flows_of(broker, 300)))


def test_one_query_per_signal_kind_and_none_a_flow_does_not_need() -> None:
    assert kinds(flows_of("rabbitmq", 5)) == [
        "rabbitmq_depth",
        "throughput",
        "error_ratio",
        "configuration_errors",
        "latency",
        "last_success",
        "cpu_utilization",
        "memory_utilization",
        "rabbitmq_depth:growth[10m]",
        "throughput:baseline[1h]",
        "latency:baseline[1h]",
    ]
    assert len(kinds(flows_of("rabbitmq", 2) + flows_of("kafka", 2) + flows_of("prometheus", 2))) == 17


def test_kafka_dead_letter_query_only_when_a_flow_has_a_dead_letter_topic() -> None:
    without = flow("k", {"broker": "kafka", "topic": "t", "consumerGroup": "g"})
    assert "kafka_topic_messages" not in kinds([without])
    assert "kafka_topic_messages" in kinds([without, *flows_of("kafka", 1)])


def test_windows_cost_one_query_per_distinct_value() -> None:
    same = flows_of("rabbitmq", 2, health={"baselineWindow": "1h"}) + flows_of("rabbitmq", 2, health={"baselineWindow": "60m"})
    assert kinds(same) == kinds(flows_of("rabbitmq", 1))
    other = flows_of("rabbitmq", 1, health={"baselineWindow": "30m", "queueGrowthWindow": "5m"})
    added = set(kinds(same + other)) - set(kinds(same))
    assert added == {"throughput:baseline[30m]", "latency:baseline[30m]", "rabbitmq_depth:growth[5m]"}


def test_an_override_costs_one_query_and_replaces_the_preset_for_that_flow_only() -> None:
    plain = flows_of("rabbitmq", 3)
    custom = flow("custom", SOURCES["rabbitmq"](9), metrics={"errorRatio": "vector(0.5)"})
    plan = plan_pass([*plain, custom], Presets())
    assert len(plan.queries) == len(kinds(plain)) + 1
    assert [(r.query.promql, r.key) for r in plan.reads[custom.key] if r.signal == "error_ratio"] == [("vector(0.5)", ())]
    assert all(r.query.kind == "error_ratio" for r in plan.reads[plain[0].key] if r.signal == "error_ratio")


def test_derived_signals_follow_an_overridden_base() -> None:
    custom = flow("custom", SOURCES["prometheus"](0), metrics={"throughput": "sum(rate(x[1m]))", "queueDepth": "sum(q)"})
    reads = {r.signal: r for r in plan_pass([custom], Presets()).reads[custom.key]}
    assert reads["throughput_baseline"].query.requires == reads["throughput"].query
    assert "sum(rate(x[1m]))" in reads["throughput_baseline"].query.promql
    assert reads["queue_growing_seconds"].query.requires == reads["queue_depth"].query
    assert reads["latency_baseline"].query == Presets().baseline(Presets().latency(), 3600.0)  # not overridden


def test_identical_override_text_is_asked_once() -> None:
    both = [flow(n, SOURCES["rabbitmq"](i), metrics={"cpuUtilization": "vector(1)"}) for i, n in enumerate("ab")]
    assert kinds(both).count("override:cpu_utilization") == 1


def test_each_flow_reads_its_own_series() -> None:
    rabbit = flow("r", {"broker": "rabbitmq", "vhost": "eu", "queue": "orders", "deadLetterQueue": "orders.dlq"}, namespace="shop")
    kafka = flow("k", {"broker": "kafka", "topic": "events", "consumerGroup": "wms", "deadLetterTopic": "events.dlt"})
    convention = flow("p", {"broker": "prometheus", "integration": "billing"})
    by_name = flow("by-name", {"broker": "prometheus"})
    plan = plan_pass([rabbit, kafka, convention, by_name], Presets())
    keys = {key: {r.signal: r.key for r in reads} for key, reads in plan.reads.items()}
    assert keys[rabbit.key]["queue_depth"] == ("eu", "orders")
    assert keys[rabbit.key]["dead_letter_depth"] == ("eu", "orders.dlq")
    assert keys[rabbit.key]["cpu_utilization"] == ("shop", "Deployment", "r-consumer")
    assert keys[kafka.key]["queue_depth"] == ("wms", "events")
    assert keys[kafka.key]["dead_letter_depth"] == ("events.dlt",)
    assert keys[convention.key]["throughput"] == ("shop", "billing")
    assert keys[by_name.key]["queue_depth"] == ("shop", "by-name")


def test_a_flows_reads_are_built_once_per_spec_and_follow_an_edit(monkeypatch) -> None:
    built = []
    monkeypatch.setattr(queries, "flow_reads", lambda f, p: built.append(f.name) or flow_reads(f, p))
    cache = ReadsCache(Presets("1m"))
    orders = flow("orders", {"broker": "rabbitmq", "vhost": "/", "queue": "orders"})
    first = cache.reads(orders)
    assert cache.reads(FlowTarget(orders.key, orders.namespace, orders.name, orders.spec)) is first
    assert built == ["orders"] and first == flow_reads(orders, Presets("1m"))
    # An edit is a new spec object: read anew, the old entry gone with the old spec.
    edited = flow("orders", {"broker": "rabbitmq", "vhost": "/", "queue": "orders-v2"})
    del orders, first
    again = cache.reads(edited)
    assert built == ["orders", "orders"] and ("/", "orders-v2") in {r.key for r in again}
    assert len(cache) == 1
    del edited, again
    assert len(cache) == 0


def test_one_spec_object_under_another_name_is_read_for_that_name() -> None:
    cache = ReadsCache(Presets("1m"))
    spec = IntegrationFlowSpec.model_validate({"scaleTargetRef": {"name": "consumer"}, "source": {"broker": "prometheus"}})
    a, b = FlowTarget("shop/a", "shop", "a", spec), FlowTarget("shop/b", "shop", "b", spec)
    assert cache.reads(a) == flow_reads(a, Presets("1m")) and cache.reads(b) == flow_reads(b, Presets("1m"))
    assert cache.reads(a) != cache.reads(b)


def test_rabbitmq_flow_without_dead_letter_queue_reads_no_dead_letter_depth() -> None:
    plain = flow("x", {"broker": "rabbitmq", "queue": "x"})
    assert "dead_letter_depth" not in {r.signal for r in plan_pass([plain], Presets()).reads[plain.key]}


@pytest.mark.parametrize(
    ("seconds", "text"), [(3600, "1h"), (5400, "90m"), (60, "1m"), (90, "90s"), (1.5, "1500ms"), (0.25, "250ms")]
)
def test_promql_durations(seconds: float, text: str) -> None:
    assert promql_duration(seconds) == text


# ----------------------------------------------------------------------- the docs show the real queries


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_docs_show_the_queries_flowkeeper_runs() -> None:
    presets = Presets("1m")
    documented = _squash(DOCS.read_text())
    every_kind = flows_of("rabbitmq", 1) + flows_of("kafka", 1) + flows_of("prometheus", 1)
    queries = {q.kind: q for q in plan_pass(every_kind, presets).queries}
    shown_verbatim = [q for kind, q in queries.items() if kind not in ("memory_utilization", "kafka_lag:growth[10m]", "queue_depth:growth[10m]")]
    missing = [q.kind for q in shown_verbatim if _squash(q.promql) not in documented]
    assert not missing, f"docs/metrics-convention.md does not show these queries as run: {missing}"

    # What the page says of the others in words.
    cpu, memory = queries["cpu_utilization"].promql, queries["memory_utilization"].promql
    assert memory == (
        cpu.replace(
            'rate(container_cpu_usage_seconds_total{container!="", container!="POD"}[1m])',
            'container_memory_working_set_bytes{container!="", container!="POD"}',
        ).replace('kube_pod_container_resource_requests{resource="cpu"}', 'kube_pod_container_resource_limits{resource="memory"}')
    )
    rabbit_growth = queries["rabbitmq_depth:growth[10m]"].promql
    for depth, growth in (("kafka_lag", "kafka_lag:growth[10m]"), ("queue_depth", "queue_depth:growth[10m]")):
        assert queries[growth].promql == rabbit_growth.replace(queries["rabbitmq_depth"].promql, queries[depth].promql)


# --------------------------------------------------------------------------------- answers -> signals


def series(value: str, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1700000000.0, value]}


def vector(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resultType": "vector", "result": list(items)}


def test_index_result_keys_series_by_labels_and_drops_nan() -> None:
    result = vector(series("3", vhost="/", queue="a"), series("NaN", vhost="/", queue="b"), series("+Inf", vhost="/", queue="c"))
    assert index_result(result, ("vhost", "queue")) == {("/", "a"): 3.0}


def test_single_value_of_a_flows_own_query() -> None:
    assert single_value(vector()) is None
    assert single_value(vector(series("2.5", job="x"))) == 2.5
    assert single_value({"resultType": "scalar", "result": [1700000000.0, "4"]}) == 4.0
    with pytest.raises(QueryProblem) as raised:
        single_value(vector(series("1", a="1"), series("2", a="2")))
    assert raised.value.kind == QueryProblem.INVALID and "sum(" in raised.value.message
    with pytest.raises(QueryProblem) as raised:
        single_value({"resultType": "matrix", "result": []})
    assert raised.value.kind == QueryProblem.INVALID and "one number" in raised.value.message


@pytest.mark.parametrize(
    ("exc", "kind", "connection"),
    [
        (ConnectionRefusedError(111, "Connection refused"), QueryProblem.UNAVAILABLE, True),
        (ConnectionResetError(104, "Connection reset by peer"), QueryProblem.UNAVAILABLE, True),
        (TimeoutError("timed out"), QueryProblem.TIMEOUT, False),
        (ValueError("Expecting value: line 1 column 1"), QueryProblem.FAILED, False),
    ],
)
def test_transport_failures_are_classified(exc: Exception, kind: str, connection: bool) -> None:
    problem = classify(exc)
    assert (problem.kind, problem.connection) == (kind, connection)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (503, b'{"status":"error","errorType":"unavailable","error":"shutting down"}', QueryProblem.UNAVAILABLE),
        (503, b'{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}', QueryProblem.TIMEOUT),
        (502, b"<html>bad gateway</html>", QueryProblem.UNAVAILABLE),
        (429, b"slow down", QueryProblem.UNAVAILABLE),
        (400, b'{"status":"error","errorType":"bad_data","error":"parse error: unexpected end"}', QueryProblem.INVALID),
        (422, b'{"status":"error","errorType":"execution","error":"many-to-many matching"}', QueryProblem.INVALID),
        (401, b"Unauthorized", QueryProblem.UNAUTHORIZED),
        (404, b"404 page not found", QueryProblem.FAILED),
        (200, b"<html>not prometheus</html>", QueryProblem.FAILED),
    ],
)
def test_error_answers_are_classified(status: int, body: bytes, kind: str) -> None:
    with pytest.raises(QueryProblem) as raised:
        read_answer(status, body)
    assert raised.value.kind == kind


def test_a_bad_data_message_is_kept_for_the_user() -> None:
    with pytest.raises(QueryProblem) as raised:
        read_answer(400, b'{"status":"error","errorType":"bad_data","error":"1:5: parse error: unclosed"}')
    assert raised.value.message == "1:5: parse error: unclosed"


DEPTH = Query("depth", "d", ("queue",))
OWN = Query("override:throughput", "t")
DERIVED = Query("override:throughput:baseline", "b", requires=OWN)

READS = [Read("queue_depth", DEPTH, ("a",)), Read("throughput", OWN), Read("throughput_baseline", DERIVED, base="throughput")]


def test_assemble_picks_the_flows_series_and_leaves_the_absent_ones_none() -> None:
    signals = assemble(READS, {DEPTH: {("b",): 7.0}, OWN: vector(series("3")), DERIVED: vector()}, now=10.0)
    assert signals.queue_depth is None  # the queue has no series: unknown, not 0
    assert signals.throughput == 3.0 and signals.throughput_baseline is None and signals.observed_at == 10.0


def test_a_cpu_override_answers_percent_and_the_signal_is_a_fraction() -> None:
    # Users write CPU in percent everywhere (spec.metrics.cpuUtilization: 70 = 70 %); FlowSignals carries fractions.
    own_cpu = Query("override:cpu_utilization", "c")
    preset_cpu = Query("cpu_utilization", "p", ("namespace", "workload_kind", "workload"))
    own = assemble([Read("cpu_utilization", own_cpu)], {own_cpu: vector(series("70"))}, now=0)
    preset = assemble([Read("cpu_utilization", preset_cpu, ("shop", "StatefulSet", "s"))], {preset_cpu: {("shop", "StatefulSet", "s"): 0.7}}, now=0)
    assert own.cpu_utilization == pytest.approx(0.7) and preset.cpu_utilization == 0.7
    assert assemble([Read("cpu_utilization", own_cpu)], {own_cpu: vector()}, now=0).cpu_utilization is None


def test_an_invalid_override_is_the_flows_problem_and_keeps_its_other_signals() -> None:
    problem = QueryProblem(QueryProblem.INVALID, "parse error")
    signals = assemble(READS, {DEPTH: {("a",): 7.0}, OWN: problem, DERIVED: None}, now=0)
    assert signals.queue_depth == 7.0
    assert signals.invalid_queries == {"throughput": "parse error"}
    assert signals.unread == {"throughput_baseline": "the baseline of spec.metrics.throughput not computed: spec.metrics.throughput has no value"}


@pytest.mark.parametrize("kind", [QueryProblem.INVALID, QueryProblem.TIMEOUT, QueryProblem.FAILED])
def test_a_failed_derived_query_is_never_an_invalid_query(kind: str) -> None:
    # Only the text the user wrote may pause the flow; the baseline we build around it may not.
    signals = assemble(READS, {DEPTH: {("a",): 7.0}, OWN: vector(series("3")), DERIVED: QueryProblem(kind, "1:20: parse error")}, now=0)
    assert signals.invalid_queries == {} and signals.throughput == 3.0 and signals.throughput_baseline is None
    assert signals.unread == {"throughput_baseline": "the baseline of spec.metrics.throughput: 1:20: parse error"}


def test_a_timed_out_query_leaves_its_signal_unknown_and_says_why() -> None:
    late = QueryProblem(QueryProblem.TIMEOUT, "Prometheus did not answer in time: timed out")
    signals = assemble(READS, {DEPTH: late, OWN: vector(series("3")), DERIVED: vector()}, now=0)
    assert signals.queue_depth is None and signals.throughput == 3.0
    assert signals.unread == {"queue_depth": "queue depth: Prometheus did not answer in time: timed out"}


def test_a_flow_fails_only_when_none_of_its_queries_got_an_answer() -> None:
    down = QueryProblem(QueryProblem.UNAVAILABLE, "refused")
    failure = assemble(READS, {DEPTH: down, OWN: down, DERIVED: None}, now=0)
    assert (failure.error_class, failure.reason) == (ErrorClass.transient, "PrometheusUnavailable")
    partly = assemble(READS, {DEPTH: down, OWN: vector(series("1")), DERIVED: vector()}, now=0)
    assert partly.throughput == 1.0 and partly.queue_depth is None


def test_refused_credentials_pause_a_flow_only_when_they_are_the_flows_own() -> None:
    refused = QueryProblem(QueryProblem.UNAUTHORIZED, "401")
    answers = {DEPTH: refused, OWN: refused, DERIVED: None}
    assert assemble(READS, answers, now=0, from_flow_server=True).error_class == ErrorClass.configuration
    assert assemble(READS, answers, now=0, from_flow_server=False).error_class == ErrorClass.transient


# ------------------------------------------------------------------------ the pass, with a fake client


def _slow(promql: str) -> bool:
    return "deriv(" in promql or "avg_over_time(" in promql  # the growth and baseline subqueries


class FakeServers:
    """What the fake clients of one test answer: every query an empty vector, or raises what the test
    says; slow queries (growth, baselines) may fail on their own, or wait until `release` is set.
    Every query any client asked, the pass's or a slow ask's, is in `asked` by server address."""

    def __init__(self, raises: Exception | None = None) -> None:
        self.raises = raises
        self.slow_raises: Exception | None = None
        self.release = threading.Event()
        self.release.set()
        self.asked: dict[str, list[str]] = {}
        self.deadlines: list[float] = []
        self.slow_clients: list[FakeClient] = []  # made by slow asks, in their own threads
        self.slow_client_fails: Exception | None = None  # making a slow ask's client raises this
        self.delay = 0.0  # seconds every other query takes

    def answer(self, url: str, promql: str, deadline: float) -> dict[str, Any]:
        self.asked.setdefault(url, []).append(promql)
        if _slow(promql):
            self.deadlines.append(deadline)
            if not self.release.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("the fake server held the answer past its deadline")
            if self.slow_raises is not None:
                raise self.slow_raises
        else:
            time.sleep(self.delay)
        if self.raises is not None:
            raise self.raises
        return vector()


class FakeClient:
    def __init__(self, settings: ServerSettings, servers: FakeServers) -> None:
        self.settings = settings
        self.servers = servers
        self.closed = False

    @property
    def asked(self) -> list[str]:
        return self.servers.asked.setdefault(self.settings.url, [])

    def query(self, promql: str, *, at: float, deadline: float) -> dict[str, Any]:
        return self.servers.answer(self.settings.url, promql, deadline)

    def close(self) -> None:
        self.closed = True


OTHER = "https://other:9090"


def signals_with(raises: Exception | None = None, secrets: dict[tuple[str, str, str], str] | None = None, **options: Any):
    """A pass on fake servers: (signals, the clients the pass made for itself). `signals.servers` are
    the fakes; slow asks' clients are in `signals.servers.slow_clients`."""
    servers = FakeServers(raises)
    clients: list[FakeClient] = []
    secret_reads: list[tuple[str, str]] = []

    def factory(settings: ServerSettings) -> FakeClient:
        client = FakeClient(settings, servers)
        on_pass_thread = threading.current_thread() is threading.main_thread()
        if not on_pass_thread and servers.slow_client_fails is not None:
            raise servers.slow_client_fails
        (clients if on_pass_thread else servers.slow_clients).append(client)
        return client

    def read_secret(namespace: str, ref: SecretKeyRef) -> str:
        secret_reads.append((namespace, ref.name))
        try:
            return (secrets or {})[(namespace, ref.name, ref.key)]
        except KeyError:
            raise ConfigurationError(f"Secret {namespace}/{ref.name}: not found", reason="NotFound") from None

    options = {"allowed_servers": [OTHER], "allow_overrides": True, **options}
    signals = PrometheusSignals("http://prometheus:9090", client_factory=factory, secret_reader=read_secret, clock=lambda: 5.0, **options)
    signals.secret_reads = secret_reads
    signals.servers = servers
    return signals, clients


def settle(signals: PrometheusSignals) -> None:
    """Waits until every slow ask on its way has its answer (a fake answers at once unless held)."""
    for asked in list(signals._slow_asks._asked.values()):
        assert asked.done.wait(10), "a slow ask did not end"


def test_an_unreachable_server_is_asked_once_per_pass_and_nothing_raises() -> None:
    signals, clients = signals_with(raises=ConnectionRefusedError(111, "Connection refused"))
    result = signals.collect(flows_of("rabbitmq", 4))
    assert result.queries == 1 and len(clients[0].asked) == 1
    assert {(f.error_class, f.reason) for f in result.failures.values()} == {(ErrorClass.transient, "PrometheusUnavailable")}
    assert len(result.failures) == 4 and not result.signals


def test_any_exception_from_the_client_is_classified() -> None:
    signals, _ = signals_with(raises=RuntimeError("boom"))
    result = signals.collect(flows_of("kafka", 2))
    assert {f.reason for f in result.failures.values()} == {"PrometheusQueryFailed"}


def test_empty_answers_give_unknown_signals_not_zeros() -> None:
    signals, _ = signals_with()
    result = signals.collect(flows_of("prometheus", 2))
    assert not result.failures
    one = result.signals["shop/prometheus-0"]
    assert one.queue_depth is None and one.throughput is None and one.observed_at == 5.0


def test_basic_auth_reads_each_credential_from_its_own_secret_key() -> None:
    auth = {"usernameSecret": {"name": "prom-user", "key": "login"}, "passwordSecret": {"name": "prom-pass", "key": "secret"}}
    own = flow("own", SOURCES["rabbitmq"](0), namespace="a", metrics={"server": {"address": OTHER, "basicAuth": auth}})
    signals, clients = signals_with(secrets={("a", "prom-user", "login"): "alice", ("a", "prom-pass", "secret"): "pa55word"})
    result = signals.collect([own])
    assert not result.failures
    assert clients[0].settings.auth == ("alice", "pa55word")
    assert sorted(signals.secret_reads) == [("a", "prom-pass"), ("a", "prom-user")]


def test_flows_with_their_own_server_are_batched_per_server() -> None:
    server = {"address": OTHER, "bearerTokenSecret": {"name": "prom", "key": "token"}}
    secrets = {("a", "prom", "token"): "s3cret\n", ("b", "prom", "token"): "s3cret"}
    own = [flow(f"own-{ns}-{i}", SOURCES["rabbitmq"](i), namespace=ns, metrics={"server": server}) for ns in "ab" for i in range(3)]
    signals, clients = signals_with(secrets=secrets)
    result = signals.collect(flows_of("rabbitmq", 3) + own)
    assert not result.failures
    assert [c.settings.url for c in clients] == ["http://prometheus:9090", "https://other:9090"]
    assert dict(clients[1].settings.headers) == {"Authorization": "Bearer s3cret"}  # same token: one batch
    assert result.queries == 2 * len(kinds(flows_of("rabbitmq", 1)))


def test_a_missing_secret_fails_that_flow_as_configuration() -> None:
    server = {"address": OTHER, "basicAuth": {"usernameSecret": {"name": "missing", "key": "user"}, "passwordSecret": {"name": "missing", "key": "pass"}}}
    broken = flow("broken", SOURCES["rabbitmq"](0), metrics={"server": server})
    signals, clients = signals_with()
    result = signals.collect([broken, *flows_of("rabbitmq", 1)])
    assert result.failures[broken.key].error_class == ErrorClass.configuration
    assert result.failures[broken.key].reason == "SecretNotFound"
    assert "shop/rabbitmq-0" in result.signals and len(clients) == 1


def test_clients_of_servers_no_flow_uses_any_more_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signals_pass, "IDLE_CLIENT_SECONDS", 0.0)
    signals, clients = signals_with()
    signals.collect([flow("own", SOURCES["rabbitmq"](0), metrics={"server": {"address": OTHER}})])
    signals.collect(flows_of("rabbitmq", 1))
    assert [s.url for s in signals._clients] == ["http://prometheus:9090"]


def test_secrets_are_read_once_per_cache_period() -> None:
    server = {"address": OTHER, "bearerTokenSecret": {"name": "prom", "key": "token"}}
    reads: list[str] = []

    def read_secret(namespace: str, ref: SecretKeyRef) -> str:
        reads.append(ref.name)
        return "token"

    signals = PrometheusSignals(
        "http://p:9090", client_factory=FakeClient, secret_reader=read_secret, allowed_servers=[OTHER]
    )
    own = [flow(f"own-{i}", SOURCES["rabbitmq"](i), metrics={"server": server}) for i in range(5)]
    signals.collect(own)
    signals.collect(own)
    assert reads == ["prom"]


# ------------------------------------------------------------------ namespaces and broker label sets


def test_convention_series_are_matched_by_namespace_and_integration() -> None:
    dev, prod = flow("orders", SOURCES["prometheus"](0), namespace="shop-dev"), flow("orders", SOURCES["prometheus"](0), namespace="shop-prod")
    plan = plan_pass([dev, prod], Presets())
    assert len(plan.queries) == len(kinds([dev]))  # still one batched query per kind
    keys = {key: {r.signal: r.key for r in reads} for key, reads in plan.reads.items()}
    assert keys[dev.key]["configuration_errors"] == ("shop-dev", "orders")
    assert keys[prod.key]["configuration_errors"] == ("shop-prod", "orders")
    assert all(q.by == ("namespace", "integration") for q in plan.queries if "flowkeeper_" in q.promql)


def test_metric_labels_cost_one_broker_query_per_distinct_label_set() -> None:
    prod = {"metricLabels": {"instance": "rabbitmq-prod:15692"}}
    rabbit = lambda i, labels: flow(f"r{i}", {**SOURCES["rabbitmq"](i), **labels})  # noqa: E731
    same = [rabbit(i, prod) for i in range(3)]
    plan = plan_pass([*same, rabbit(9, {"metricLabels": {"instance": "rabbitmq-staging:15692"}}), rabbit(8, {})], Presets())
    depths = [q.promql for q in plan.queries if q.kind == "rabbitmq_depth"]
    assert depths == [
        'sum by (vhost, queue) ({__name__=~"rabbitmq_queue_messages_ready|rabbitmq_queue_messages_unacked", instance="rabbitmq-prod:15692"})',
        'sum by (vhost, queue) ({__name__=~"rabbitmq_queue_messages_ready|rabbitmq_queue_messages_unacked", instance="rabbitmq-staging:15692"})',
        'sum by (vhost, queue) ({__name__=~"rabbitmq_queue_messages_ready|rabbitmq_queue_messages_unacked"})',
    ]
    assert len([q for q in plan.queries if q.kind == "throughput"]) == 1  # the convention is not broker-labelled


def test_metric_labels_reach_every_kafka_query_escaped() -> None:
    labels = {"cluster": 'prod "eu"\\1', "az": "b"}
    kafka = flow("k", {**SOURCES["kafka"](0), "metricLabels": labels})
    queries = {q.kind: q.promql for q in plan_pass([kafka], Presets()).queries}
    matchers = 'az="b", cluster="prod \\"eu\\"\\\\1"'
    assert queries["kafka_lag"] == f"sum by (consumergroup, topic) (kafka_consumergroup_lag_sum{{{matchers}}})"
    assert queries["kafka_topic_messages"] == (
        f"sum by (topic) (kafka_topic_partition_current_offset{{{matchers}}} - kafka_topic_partition_oldest_offset{{{matchers}}})"
    )
    assert matchers in queries["kafka_lag:growth[10m]"]


def test_a_bad_label_name_fails_that_flow_naming_the_field() -> None:
    good = flow("x", SOURCES["rabbitmq"](0))
    # What the CRD refuses, reaching the operator anyway (model_copy does not validate).
    source = good.spec.source.model_copy(update={"metric_labels": {"rabbit-cluster": "prod"}})
    bad = replace(good, spec=good.spec.model_copy(update={"source": source}))
    signals, clients = signals_with()
    result = signals.collect([bad, *flows_of("rabbitmq", 1)])
    assert (result.failures[bad.key].reason, result.failures[bad.key].error_class) == ("InvalidSpec", ErrorClass.configuration)
    assert "spec.source.metricLabels" in result.failures[bad.key].message and "shop/rabbitmq-0" in result.signals


# ------------------------------------------------------------------------- overrides embedded safely


@pytest.mark.parametrize("override", ["sum(x) # the total", "42", "scalar(sum(x))"])
def test_derived_queries_embed_an_override_without_its_comment_and_wrap_a_scalar(override: str) -> None:
    custom = flow("c", SOURCES["prometheus"](0), metrics={"throughput": override})
    reads = {r.signal: r for r in plan_pass([custom], Presets()).reads[custom.key]}
    baseline = reads["throughput_baseline"].query
    assert reads["throughput"].query.promql == override  # the user's own text is sent as written
    assert "#" not in baseline.promql and "#" not in baseline.promql_over_scalar
    body = override.split("#")[0].strip()
    assert baseline.promql == f"avg_over_time(((\n{body}\n) > -Inf)[1h:1m])"
    assert baseline.promql_over_scalar == f"avg_over_time(((vector(\n{body}\n)) > -Inf)[1h:1m])"
    assert baseline.metric_kind == "baseline" and reads["throughput"].query.metric_kind == "override"


# ----------------------------------------------------------------------------------- tenant safety


def test_a_server_that_is_not_allowed_fails_the_flow_before_any_secret_or_request() -> None:
    server = {"address": "https://user:pa55@elsewhere:9090", "bearerTokenSecret": {"name": "prom", "key": "token"}}
    foreign = flow("foreign", SOURCES["rabbitmq"](0), metrics={"server": server})
    signals, clients = signals_with(secrets={("shop", "prom", "token"): "t0ken"})
    result = signals.collect([foreign])
    failure = result.failures[foreign.key]
    assert (failure.error_class, failure.reason) == (ErrorClass.configuration, "MetricsServerNotAllowed")
    assert "spec.metrics.server.address" in failure.message and "--allowed-prometheus-server" in failure.message
    assert "pa55" not in failure.message
    assert signals.secret_reads == [] and clients == [] and result.queries == 0


def test_overrides_need_the_operator_to_allow_them() -> None:
    custom = flow("custom", SOURCES["rabbitmq"](0), metrics={"errorRatio": "vector(0.5)", "queueDepth": "sum(q)"})
    signals, clients = signals_with(allow_overrides=False)
    result = signals.collect([custom, *flows_of("rabbitmq", 1)])
    failure = result.failures[custom.key]
    assert (failure.error_class, failure.reason) == (ErrorClass.configuration, "MetricsOverridesNotAllowed")
    assert "spec.metrics.queueDepth, spec.metrics.errorRatio" in failure.message and "--allow-metrics-overrides" in failure.message
    assert "error_ratio" not in failure.message
    assert not any("vector(0.5)" in q for c in clients for q in c.asked) and "shop/rabbitmq-0" in result.signals


def test_the_operators_own_server_needs_no_allow_list_entry() -> None:
    own = flow("own", SOURCES["rabbitmq"](0), metrics={"server": {"address": "http://PROMETHEUS:80/../prometheus:9090/"}})
    same = flow("same", SOURCES["rabbitmq"](1), metrics={"server": {"address": "http://prometheus:9090/"}})
    signals, _ = signals_with(allowed_servers=[])
    result = signals.collect([own, same])
    assert result.failures[own.key].reason == "MetricsServerNotAllowed" and same.key in result.signals


def test_the_operator_options_reach_the_pass() -> None:
    from flowkeeper.config import OperatorConfig

    config = OperatorConfig(
        prometheus_url="http://p:9090", prometheus_timeout=2.0, allowed_prometheus_servers=("https://q:9090",), allow_metrics_overrides=True
    )
    signals = PrometheusSignals.from_config(config)
    assert (signals.timeout, signals.pass_timeout, signals.allow_overrides) == (2.0, 6.0, True)
    assert signals.allowed.allows("https://q:9090") and not signals.allowed.allows("https://r:9090")


def test_a_prometheus_resource_limit_is_no_fault_of_the_query() -> None:
    # Regression: "too many samples" (Prometheus' --query.max-samples) was taken for an invalid query,
    # and the flow that asked it was paused.
    body = b'{"status":"error","errorType":"execution","error":"query processing would load too many samples into memory in query execution"}'
    with pytest.raises(QueryProblem) as raised:
        read_answer(422, body)
    assert raised.value.kind == QueryProblem.UNAVAILABLE
    with pytest.raises(QueryProblem) as wrong:
        read_answer(422, b'{"status":"error","errorType":"execution","error":"vector cannot contain metrics with the same labelset"}')
    assert wrong.value.kind == QueryProblem.INVALID


class Monotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_slow_signals_are_asked_once_per_slow_interval_and_the_others_every_pass() -> None:
    clock = Monotonic()
    signals, clients = signals_with(monotonic=clock)
    flows = flows_of("rabbitmq", 3)
    first = signals.collect(flows)
    asked = clients[0].asked
    slow = [q for q in asked if _slow(q)]
    assert slow and first.queries == len(asked)
    clock.now += SLOW_SIGNAL_SECONDS - 1
    second = signals.collect(flows)
    assert second.queries == first.queries - len(slow)
    assert [q for q in asked[first.queries:] if _slow(q)] == []
    clock.now += 1
    third = signals.collect(flows)
    assert third.queries == first.queries  # the kept answers are too old now: asked again
    assert not signals._kept or all(kept.until - clock.now <= SLOW_SIGNAL_SECONDS for kept in signals._kept.values())


def _one_keep_time_after_answers(**options: Any):
    """A pass that has answers for its slow queries, one keep time on: (clock, signals, servers, flows)."""
    clock = Monotonic()
    signals, _ = signals_with(monotonic=clock, **options)
    flows = flows_of("rabbitmq", 2)
    signals.collect(flows)
    clock.now += SLOW_SIGNAL_SECONDS
    return clock, signals, signals.servers, flows


def _slow_ones_failing_with(exc: Exception, **options: Any):
    """The same, its slow queries now failing with `exc`."""
    clock, signals, servers, flows = _one_keep_time_after_answers(**options)
    servers.slow_raises = exc
    return clock, signals, servers, flows


def slow_asked(servers: FakeServers) -> int:
    return len([q for asked in servers.asked.values() for q in asked if _slow(q)])


def growth_unanswered(result) -> bool:
    return all("queue_growing_seconds" in s.unanswered for s in result.signals.values())


def test_a_slow_signal_that_timed_out_waits_out_its_keep_time_before_it_is_asked_again() -> None:
    # At 10,000 flows the growth subquery timed out on every pass, each time costing the pass its
    # whole timeout.
    clock, signals, servers, flows = _slow_ones_failing_with(TimeoutError("late"))
    late = signals.collect(flows)
    assert not growth_unanswered(late)  # the last answer serves while it is asked again
    settle(signals)
    timed_out = slow_asked(servers)
    servers.slow_raises = None
    clock.now += 1
    signals.collect(flows)  # takes the time-out
    clock.now += SLOW_SIGNAL_SECONDS - 2
    still = signals.collect(flows)
    assert slow_asked(servers) == timed_out  # not asked again yet
    assert growth_unanswered(still)  # and unanswered meanwhile
    clock.now += 1
    again = signals.collect(flows)
    assert slow_asked(servers) > timed_out and not growth_unanswered(again)


def test_a_slow_signal_that_failed_otherwise_is_asked_again_on_the_next_pass(caplog) -> None:
    clock, signals, servers, flows = _slow_ones_failing_with(QueryProblem(QueryProblem.UNAVAILABLE, "HTTP 503"))
    caplog.set_level(logging.WARNING, logger="flowkeeper.prometheus")
    late = signals.collect(flows)
    settle(signals)
    servers.slow_raises = None
    clock.now += 1
    before = slow_asked(servers)
    next_pass = signals.collect(flows)
    assert slow_asked(servers) > before
    assert not growth_unanswered(late) and not growth_unanswered(next_pass)  # the last answer served meanwhile
    failed = [r for r in caplog.records if "growth" in r.getMessage() and "HTTP 503" in r.getMessage()]
    assert failed and all(r.threadName == threading.main_thread().name for r in failed)  # logged by the pass


# --- slow queries asked in threads of their own: the pass does not wait for them


def _held_after_one_answer(**options: Any):
    """The same, its slow queries now held by the server until `servers.release` is set."""
    clock, signals, servers, flows = _one_keep_time_after_answers(**options)
    servers.release.clear()
    return clock, signals, servers, flows


def test_a_pass_does_not_wait_for_a_slow_query_while_its_last_answer_serves() -> None:
    clock, signals, servers, flows = _held_after_one_answer(timeout=30.0)
    result = signals.collect(flows)  # would wait out the 30 s timeout if it waited for the held growth
    running = list(signals._slow_asks._asked.values())
    assert running and not any(asked.done.is_set() for asked in running)
    assert not growth_unanswered(result) and result.queries == len(kinds(flows))  # the slow ones sent, not awaited
    servers.release.set()
    settle(signals)
    clock.now += 1
    signals.collect(flows)  # takes the new answers: kept one keep time from when they were asked
    assert all(kept.until == clock.now - 1 + SLOW_SIGNAL_SECONDS for kept in signals._kept.values())
    assert all(client.closed for client in servers.slow_clients)


def test_a_last_answer_serves_at_most_one_more_keep_time_while_the_next_is_on_its_way() -> None:
    clock, signals, servers, flows = _held_after_one_answer(timeout=30.0)
    signals.collect(flows)
    asked = slow_asked(servers)
    clock.now += SLOW_SIGNAL_SECONDS - 1
    assert not growth_unanswered(signals.collect(flows))
    clock.now += 1
    late = signals.collect(flows)  # two keep times after the answer: too old to serve
    assert growth_unanswered(late) and slow_asked(servers) == asked  # and not asked twice
    servers.release.set()
    settle(signals)
    clock.now += 1
    assert not growth_unanswered(signals.collect(flows))


def test_a_first_slow_ask_waits_at_most_the_query_timeout_then_answers_a_later_pass() -> None:
    clock = Monotonic()
    signals, _ = signals_with(monotonic=clock, timeout=0.05)
    signals.servers.release.clear()
    flows = flows_of("rabbitmq", 2)
    first = signals.collect(flows)
    assert growth_unanswered(first) and first.failures == {}  # the other signals were read
    asked = slow_asked(signals.servers)
    assert all(deadline - time.monotonic() > 20 for deadline in signals.servers.deadlines)  # its own, longer timeout
    clock.now += 5
    assert growth_unanswered(signals.collect(flows)) and slow_asked(signals.servers) == asked
    signals.servers.release.set()
    settle(signals)
    clock.now += 5
    assert not growth_unanswered(signals.collect(flows)) and slow_asked(signals.servers) == asked


def test_a_slow_ask_whose_client_cannot_be_made_ends_and_is_asked_again() -> None:
    clock, signals, servers, flows = _one_keep_time_after_answers()
    servers.slow_client_fails = FileNotFoundError(2, "No such file or directory: the CA file")
    signals.collect(flows)
    settle(signals)  # it ended (an ask left undone would hold its query for good)
    servers.slow_client_fails = None
    before = slow_asked(servers)
    clock.now += 1
    result = signals.collect(flows)  # takes the failure, asks again
    settle(signals)
    assert slow_asked(servers) > before and not growth_unanswered(result)
    assert signals._slow_asks._asked == {} or all(a.done.is_set() for a in signals._slow_asks._asked.values())


def test_a_pass_past_its_deadline_serves_a_last_answer_that_still_may_and_sends_nothing() -> None:
    clock, signals, servers, flows = _one_keep_time_after_answers()
    servers.delay = 0.05
    signals.pass_timeout = 0.04  # the depth query, asked first, takes the pass past its deadline
    result = signals.collect(flows)
    assert result.queries == 1 and slow_asked(servers) == 3  # no slow query sent again
    assert not growth_unanswered(result)
    assert all("not asked" in s.unread["throughput"] for s in result.signals.values())


def test_slow_queries_beyond_what_a_server_may_have_on_their_way_are_asked_by_the_pass() -> None:
    signals, clients = signals_with(timeout=0.05)
    signals._slow_asks = SlowAsks(signals._client_factory, per_server=1)
    signals.servers.release.clear()  # the first slow ask stays on its way
    signals.collect(flows_of("rabbitmq", 2))
    assert slow_asked(signals.servers) == 3 and len(signals.servers.slow_clients) == 1  # two by the pass's client
    assert len(clients) == 1
    signals.servers.release.set()


def test_a_slow_signal_is_kept_for_a_tenth_of_its_window_at_most_the_slow_interval() -> None:
    presets = Presets("1m")
    depth = Query("depth", "d", ("queue",))
    assert presets.growth(depth, 600.0).keep_for == SLOW_SIGNAL_SECONDS
    assert presets.growth(depth, 6.0).keep_for == pytest.approx(0.6)
    assert presets.baseline(depth, 3600.0).keep_for == SLOW_SIGNAL_SECONDS
    assert depth.keep_for == 0.0  # the backlog and every other signal: asked every pass


def test_no_answer_is_kept_when_the_pass_keeps_none() -> None:
    signals, clients = signals_with(keep_answers=False)
    flows = flows_of("rabbitmq", 2)
    assert signals.collect(flows).queries == signals.collect(flows).queries
    assert signals._kept == {}


def test_equal_queries_hash_alike_and_a_field_of_difference_tells_them_apart() -> None:
    base = Query("depth", "d", ("queue",))
    derived = Query("depth:growth", "g", ("queue",), requires=base, family="growth", keep_for=30.0)
    assert hash(derived) == hash(Query("depth:growth", "g", ("queue",), requires=Query("depth", "d", ("queue",)), family="growth", keep_for=30.0))
    answers = {derived: 1}
    for other in (Query("depth:growth", "g", ("queue",), requires=Query("depth", "d2", ("queue",)), family="growth", keep_for=30.0),
                  Query("depth:growth", "g", ("queue",), requires=base, family="growth", keep_for=10.0)):
        assert other != derived and other not in answers


def test_a_warning_that_holds_is_logged_once_a_minute_with_how_often_it_held(caplog) -> None:
    from flowkeeper.adapters.prometheus.signals_pass import REPEAT_LOG_SECONDS

    clock = Monotonic()
    signals, _ = signals_with(raises=ConnectionRefusedError(111, "Connection refused"), monotonic=clock)
    flows = flows_of("rabbitmq", 3)
    caplog.set_level(logging.WARNING, logger="flowkeeper.prometheus")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records]

    signals.collect(flows)
    first = warnings()
    assert any("signals of 3 flows not read: PrometheusUnavailable" == m for m in first)
    assert any(m.startswith("query rabbitmq_depth failed: Prometheus not reachable") for m in first)
    for _ in range(20):  # an outage: pass after pass, within the minute
        clock.now += 2
        signals.collect(flows[:2])  # a smaller pass (the back-off): the same news
    assert warnings() == first
    clock.now += REPEAT_LOG_SECONDS
    signals.collect(flows)
    later = warnings()[len(first):]
    assert "signals of 3 flows not read: PrometheusUnavailable (and 20 times more in the 100s since it was last logged)" in later
    assert any(m.startswith("query rabbitmq_depth failed") and "(and 20 times more" in m for m in later)


def test_a_time_out_cut_short_by_the_pass_deadline_is_not_kept() -> None:
    # A slow signal that had only what was left of the pass is asked again on the next pass.
    _, signals, _, flows = _slow_ones_failing_with(TimeoutError("late"), timeout=5.0, pass_timeout=5.0)
    signals._slow_asks = SlowAsks(signals._client_factory, per_server=0)  # every query asked by the pass
    signals.collect(flows)  # pass deadline = the query timeout: no query has its whole timeout
    assert not any(isinstance(kept.answer, QueryProblem) for kept in signals._kept.values())


def test_a_kept_time_out_carries_no_traceback() -> None:
    clock, signals, _, flows = _slow_ones_failing_with(QueryProblem(QueryProblem.TIMEOUT, "Prometheus gave up"))
    signals.collect(flows)
    settle(signals)
    clock.now += 1
    signals.collect(flows)
    kept = [k.answer for k in signals._kept.values() if isinstance(k.answer, QueryProblem)]
    assert kept and all(problem.__traceback__ is None for problem in kept)


def test_a_slow_signal_timing_out_again_and_again_is_asked_ever_less_often_until_it_answers() -> None:
    from flowkeeper.adapters.prometheus.signals_pass import TIMED_OUT_KEEPS

    clock, signals, servers, flows = _slow_ones_failing_with(TimeoutError("late"))
    asked_at = []
    for _ in range(160):  # a pass every 5 s
        before = slow_asked(servers)
        signals.collect(flows)
        settle(signals)
        if slow_asked(servers) > before:
            asked_at.append(clock.now)
        clock.now += 5
    gaps = [b - a for a, b in zip(asked_at, asked_at[1:])]
    keep = SLOW_SIGNAL_SECONDS
    assert TIMED_OUT_KEEPS == 8 and gaps[:5] == [keep, 2 * keep, 4 * keep, 8 * keep, 8 * keep], gaps
    servers.slow_raises = None  # it answers again: kept as an answer, asked again after one keep time
    clock.now += SLOW_SIGNAL_SECONDS * TIMED_OUT_KEEPS
    signals.collect(flows)
    settle(signals)
    before = slow_asked(servers)
    clock.now += SLOW_SIGNAL_SECONDS
    signals.collect(flows)
    assert slow_asked(servers) > before
