"""The operator's own observability, as an operations team consumes it: a real Prometheus scrapes its
/metrics, and every line of its log is JSON carrying the fields the docs promise
(docs/observability.md)."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest

from tests.support.cluster_fixtures import eventually
from tests.support.flows import Flow, flow_manifest, set_depth
from tests.support.otlp import OtlpReceiver, spans_posted
from tests.support.prometheus import LocalPrometheus

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

BACKLOG = 500  # 100 messages per replica by default: 1 -> 5 replicas


def value(result: list[dict[str, Any]]) -> float:
    return sum(float(series["value"][1]) for series in result)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line parsed as a JSON object; fails naming the first line that is not one."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"log line {number} is not JSON ({exc}): {line!r}") from None
        assert isinstance(record, dict), f"log line {number} is not a JSON object: {line!r}"
        records.append(record)
    return records


@pytest.fixture
def otlp_receiver():
    with OtlpReceiver() as receiver:
        yield receiver


def test_prometheus_scrapes_the_operator_metrics_and_its_logs_are_structured(
    cluster, namespace, prometheus, fresh_exporter, unique, run_operator, otlp_receiver
) -> None:
    # A flow with a backlog (scales 1 -> 5), and one whose Deployment does not exist (pauses, P1).
    queue = f"{unique}-orders"
    set_depth(fresh_exporter, queue, BACKLOG)
    cluster.kubectl("create", "deployment", "orders", "-n", namespace, "--image=example/consumer:1", "--replicas=1")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=flow_manifest("orders", queue, {"maxReplicas": 10}))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=flow_manifest("ghost", f"{unique}-ghost"))
    prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{queue}"}} == {BACKLOG}')

    operator = run_operator("-n", namespace, f"--prometheus-url={prometheus.url}", env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.url})
    orders, ghost = Flow(cluster, namespace, "orders"), Flow(cluster, namespace, "ghost")
    orders.wait_replicas(5, timeout=30)
    # a missing target counts 30 s after the flow's creation
    eventually(lambda: ghost.status().get("pause", {}).get("reason") == "TargetNotFound", timeout=60, what="ghost paused")

    # --- /metrics, through a real Prometheus scraping the operator every second
    with LocalPrometheus([f"127.0.0.1:{operator.metrics_port}"], scrape_interval="1s") as scraper:
        scraper.wait_for('up{job="exporter"} == 1')
        flows = scraper.wait_for(
            "flowkeeper_flows",
            lambda r: value(r) == 2 and any(s["metric"].get("phase") == "Paused" and s["metric"].get("severity") == "P1" for s in r),
        )
        for series in flows:
            assert {"phase", "severity"} <= series["metric"].keys(), series
        # 1 -> 5 replicas is one scale-up, whenever the Deployment's watch event reaches the store.
        try:
            scraper.wait_for('flowkeeper_scale_actions_total{direction="up"} >= 1')
        except TimeoutError:
            pytest.fail(f"no scale-up counted; scale actions: {scraper.query('flowkeeper_scale_actions_total')}")
        scraper.wait_for("flowkeeper_pass_duration_seconds_count > 0")
        scraper.wait_for("flowkeeper_pass_flows_count > 0")
        scraper.wait_for("flowkeeper_prometheus_queries_total > 0")
        writes = scraper.wait_for(
            "flowkeeper_kubernetes_writes_total > 0",
            lambda r: {"scale", "status", "event"} <= {s["metric"].get("kind") for s in r},
        )
        assert all(float(s["value"][1]) >= 1 for s in writes)

    # Error counters that have counted nothing yet are still declared (HELP and TYPE), so dashboards
    # and alerts on them find the series as soon as there is one.
    text = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()
    for name in ("flowkeeper_prometheus_errors_total", "flowkeeper_kubernetes_errors_total"):
        assert re.search(rf"^# HELP {name} \S", text, re.M), f"no HELP line for {name}"
        assert re.search(rf"^# TYPE {name} counter$", text, re.M), f"no TYPE line for {name}"
    assert re.search(r"^# TYPE flowkeeper_leader gauge$", text, re.M)

    # --- the log: stop the operator first, so no line is read half-written and its shutdown is included
    operator.stop()
    records = json_lines(operator.log())
    assert records, "the operator logged nothing"

    # A routine pass is not logged at INFO (it would be a line every few seconds); what a pass changed is.
    assert not [r for r in records if r.get("message") == "pass done"], "routine passes logged at INFO"

    scaled = [r for r in records if r.get("message") == "scaled" and r.get("flow") == "orders"]
    assert scaled, "no 'scaled' line for the orders flow"
    line = scaled[0]
    assert line.get("namespace") == namespace, line
    assert line.get("stage") == "scale", line
    assert re.fullmatch(r"[0-9a-f]{12}", str(line.get("pass_id"))), line
    assert line.get("replicas") == 5, line
    assert line.get("outcome") == "applied", line
    assert "backlog" in str(line.get("reason")), line

    events = [r for r in records if r.get("stage") == "event"]
    for record in events:
        for field in ("flow", "namespace", "reason", "outcome", "pass_id"):
            assert record.get(field) not in (None, ""), f"Event line without {field}: {record}"
        assert record["namespace"] == namespace, record
    reasons = {(r["flow"], r["reason"]) for r in events}
    assert ("orders", "Scaled") in reasons, reasons
    assert ("ghost", "TargetNotFound") in reasons, reasons

    # --- traces: the operator was given an OTLP endpoint; its shutdown flushed the last spans
    posted = [span for _, span in spans_posted(otlp_receiver)]
    passes_traced = {span.span_id: span for span in posted if span.name == "flowkeeper.pass"}
    assert passes_traced, f"no pass span among {sorted({s.name for s in posted})}"
    scale_spans = [
        span for span in posted
        if span.name == "flowkeeper.scale" and {a.key: a.value.string_value for a in span.attributes}.get("flowkeeper.flow") == "orders"
    ]
    assert scale_spans and scale_spans[0].parent_span_id in passes_traced, "the scale is not a child of a pass span"
    assert {"flowkeeper.read_signals", "flowkeeper.status", "flowkeeper.event"} <= {span.name for span in posted}
