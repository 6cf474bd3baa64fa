"""A backlog query Prometheus did not answer (timed out, or not asked by the pass's deadline) is
Prometheus' trouble: said with its reason like a failed read, never as an impossible value, and one
operator-wide incident when it hits every flow, not a Warning per flow."""

from __future__ import annotations

import asyncio

import pytest

from flowkeeper.adapters.prometheus import PassResult
from flowkeeper.adapters.prometheus.answers import QueryProblem, assemble
from flowkeeper.controller.loop import FlowController
from flowkeeper.controller.store import ClusterStore
from flowkeeper.domain.planner import FlowMemory, Inputs, plan
from flowkeeper.domain.scaling import ScalingMemory
from flowkeeper.domain.signals import FlowSignals
from tests.unit.test_loop_debounce import Flows
from tests.unit.test_planner_pause import NOW, condition, flow_with, signals
from flowkeeper.adapters.prometheus.queries import Query, Read
from tests.unit.test_prometheus_queries import DEPTH, DERIVED, OWN, READS, series, vector
from flowkeeper.domain.flow import flow_from_body, target_from_body
from flowkeeper.api.v1alpha1 import DEPLOYMENT
from tests.unit.test_store import deployment


@pytest.mark.parametrize(
    ("kind", "reason"),
    [(QueryProblem.TIMEOUT, "PrometheusTimeout"), (QueryProblem.NOT_ASKED, "PrometheusPassTimeout"), (QueryProblem.UNAVAILABLE, "PrometheusUnavailable")],
)
def test_the_reason_the_backlog_query_got_no_answer_is_kept(kind: str, reason: str) -> None:
    read = assemble(READS, {DEPTH: QueryProblem(kind, "late"), OWN: vector(series("3")), DERIVED: vector()}, now=0)
    assert isinstance(read, FlowSignals) and read.queue_depth is None and read.throughput == 3.0
    assert read.backlog_unanswered == reason


def test_an_answered_backlog_or_an_impossible_one_has_no_such_reason() -> None:
    assert assemble(READS, {DEPTH: {("a",): 7.0}, OWN: vector(), DERIVED: vector()}, now=0).backlog_unanswered is None
    assert assemble(READS, {DEPTH: {("a",): -7.0}, OWN: vector(), DERIVED: vector()}, now=0).backlog_unanswered is None
    timed_out_other = assemble(READS, {DEPTH: {("a",): 7.0}, OWN: QueryProblem(QueryProblem.TIMEOUT, "late"), DERIVED: None}, now=0)
    assert timed_out_other.backlog_unanswered is None


def _plan(sig: FlowSignals, *, failures: int, outage: bool):
    return plan(
        Inputs(
            flow=flow_from_body(flow_with()),
            target=target_from_body(deployment(replicas=3, ready=3), DEPLOYMENT),
            signals=sig,
            metrics_enabled=True,
            memory=FlowMemory(scaling=ScalingMemory(metrics_failures=failures)),
            outage=outage,
        ),
        now=NOW,
    )


def test_an_unanswered_backlog_holds_replicas_and_names_prometheus_not_the_value() -> None:
    late = signals(queue_depth=None, backlog_unanswered="PrometheusTimeout", unread={"queue_depth": "queue depth: Prometheus did not answer in time"})
    first = _plan(late, failures=0, outage=False)
    assert first.scale_to is None and condition(first.status, "MetricsAvailable")["reason"] == "SignalsPending"
    lasting = _plan(late, failures=10, outage=False)
    metrics = condition(lasting.status, "MetricsAvailable")
    assert lasting.scale_to is None
    assert (metrics["status"], metrics["reason"]) == ("False", "PrometheusTimeout")
    assert "did not answer in time" in metrics["message"]
    assert [e.reason for e in lasting.events if e.type == "Warning"] == ["PrometheusTimeout"]
    # The same for every flow: told once on the operator, not on each flow.
    assert [e for e in _plan(late, failures=10, outage=True).events if e.type == "Warning"] == []


class BacklogTimesOut:
    def collect(self, targets):
        late = FlowSignals(observed_at=0.0, throughput=1.0, backlog_unanswered="PrometheusPassTimeout",
                           unread={"queue_depth": "queue depth: not asked: the signals pass reached its deadline (15s)"})
        return PassResult({t.key: late for t in targets}, {}, 1, 0.0)


def test_a_backlog_query_unanswered_for_every_flow_is_one_outage() -> None:
    controller = FlowController(ClusterStore(), Flows(), BacklogTimesOut(), operator_ref={"kind": "Pod", "namespace": "ops", "name": "fk-0", "uid": "u"})

    async def scenario() -> None:
        controller.store.seed(*await controller._list())
        await controller.run_pass(controller.store.take_due(controller.monotonic()))

    asyncio.run(scenario())
    assert controller.prometheus_down


RATE = Query("throughput", "r", ("queue",))
BASELINE = Query("throughput:baseline[1h]", "b", ("queue",), requires=RATE, family="baseline", keep_for=30.0)
BATCHED = [Read("queue_depth", DEPTH, ("a",)), Read("throughput", RATE, ("a",)), Read("throughput_baseline", BASELINE, ("a",), base="throughput")]


@pytest.mark.parametrize("kind", [QueryProblem.TIMEOUT, QueryProblem.NOT_ASKED, QueryProblem.UNAVAILABLE])
def test_another_signal_prometheus_did_not_answer_is_marked_so_with_what_derives_from_it(kind: str) -> None:
    read = assemble(BATCHED, {DEPTH: {("a",): 7.0}, RATE: QueryProblem(kind, "late"), BASELINE: None}, now=0)
    assert isinstance(read, FlowSignals) and read.queue_depth == 7.0
    assert read.unanswered == {"throughput", "throughput_baseline"} == set(read.unread)
    # A flow's own query, or the flow's own server, unanswered: that is the flow's news.
    own = assemble(READS, {DEPTH: {("a",): 7.0}, OWN: QueryProblem(kind, "late"), DERIVED: None}, now=0)
    assert own.unanswered == frozenset() and "throughput" in own.unread
    on_its_server = assemble(BATCHED, {DEPTH: {("a",): 7.0}, RATE: QueryProblem(kind, "late"), BASELINE: None}, now=0, from_flow_server=True)
    assert on_its_server.unanswered == frozenset()


def test_a_derived_value_never_outlives_its_base() -> None:
    # A baseline answer kept from an earlier pass, while the rate itself has no value now.
    read = assemble(BATCHED, {DEPTH: {("a",): 7.0}, RATE: {}, BASELINE: {("a",): 4.0}}, now=0)
    assert read.throughput is None and read.throughput_baseline is None
    both = assemble(BATCHED, {DEPTH: {("a",): 7.0}, RATE: {("a",): 3.0}, BASELINE: {("a",): 4.0}}, now=0)
    assert (both.throughput, both.throughput_baseline) == (3.0, 4.0)


def test_a_refused_query_or_an_impossible_value_is_not_unanswered() -> None:
    refused = assemble(READS, {DEPTH: {("a",): 7.0}, OWN: vector(series("1")), DERIVED: QueryProblem(QueryProblem.FAILED, "bad")}, now=0)
    assert set(refused.unread) == {"throughput_baseline"} and refused.unanswered == frozenset()
    impossible = signals(queue_depth=7.0, cpu_utilization=-1.0)
    assert "cpu_utilization" in impossible.unread and impossible.unanswered == frozenset()


def _metrics_condition(sig: FlowSignals, previous: dict | None = None):
    body = flow_with(status={"conditions": [previous]} if previous else None)
    made = plan(
        Inputs(flow=flow_from_body(body), target=target_from_body(deployment(replicas=1, ready=1), DEPLOYMENT), signals=sig,
               metrics_enabled=True),
        now=NOW,
    )
    return condition(made.status, "MetricsAvailable"), [e.reason for e in made.events]


def test_a_signal_prometheus_did_not_answer_does_not_flip_the_flows_condition() -> None:
    """Regression: at 10,000 flows the queue-growth query timed out every other pass, and each flip of
    SignalsRead <-> SomeSignalsUnread rewrote all 10,000 statuses (the writes starved new flows)."""
    late = signals(queue_depth=50.0, unread={"queue_growing_seconds": "queue growth: Prometheus did not answer in time"},
                   unanswered=frozenset({"queue_growing_seconds"}))
    read = {"type": "MetricsAvailable", "status": "True", "reason": "SignalsRead", "message": "the flow's signals were read",
            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}
    metrics, events = _metrics_condition(late, read)
    assert (metrics["reason"], metrics["message"]) == ("SignalsRead", "the flow's signals were read") and events == []
    # A signal the flow itself cannot give (an impossible value) is still named.
    own = signals(queue_depth=50.0, cpu_utilization=-1.0, unread={"queue_growing_seconds": "late"}, unanswered=frozenset({"queue_growing_seconds"}))
    metrics, _ = _metrics_condition(own, read)
    assert metrics["reason"] == "SomeSignalsUnread" and "cpuUtilization" in metrics["message"] and "queueGrowingSeconds" not in metrics["message"]


def test_a_new_flows_first_reading_posts_no_event() -> None:
    pending = {"type": "MetricsAvailable", "status": "Unknown", "reason": "SignalsPending", "message": "the flow's backlog has not been read yet",
               "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}
    metrics, events = _metrics_condition(signals(queue_depth=50.0), pending)
    assert metrics["reason"] == "SignalsRead" and "SignalsRead" not in events


def test_healthy_again_after_unknown_signals_posts_no_event_but_bad_news_does() -> None:
    """Regression: after a 60 s Prometheus outage each of 100 flows posted a Normal "Healthy" Event."""
    unknown = {"type": "Healthy", "status": "Unknown", "reason": "SignalsUnknown", "message": "the flow's signals could not be read",
               "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}

    def healthy_after(sig: FlowSignals):
        made = plan(
            Inputs(flow=flow_from_body(flow_with(status={"conditions": [unknown]})),
                   target=target_from_body(deployment(replicas=1, ready=1), DEPLOYMENT), signals=sig, metrics_enabled=True),
            now=NOW,
        )
        return condition(made.status, "Healthy"), [(e.type, e.reason) for e in made.events]

    healthy, events = healthy_after(signals(queue_depth=50.0))
    assert healthy["status"] == "True" and ("Normal", "Healthy") not in events
    unhealthy, events = healthy_after(signals(queue_depth=50.0, error_ratio=0.5))
    assert unhealthy["status"] == "False" and ("Warning", "ErrorRatioHigh") in events


def test_one_problem_answering_every_flow_keeps_no_trace_of_them() -> None:
    # Regression: assemble raised the pass's one QueryProblem for each flow, and each raise added a
    # traceback entry holding that flow's frame: 10,000 frames per pass, more while a time-out is kept.
    problem = QueryProblem(QueryProblem.TIMEOUT, "late")
    for _ in range(100):
        read = assemble(READS, {DEPTH: problem, OWN: vector(series("3")), DERIVED: vector()}, now=0)
        assert read.backlog_unanswered == "PrometheusTimeout"
    assert problem.__traceback__ is None
