"""The IntegrationFlow API as users meet it through kubectl, against the real API server."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.support.cluster import REPO

pytestmark = pytest.mark.cluster

VALID = """
apiVersion: flowkeeper.io/v1alpha1
kind: IntegrationFlow
metadata: {{name: {name}}}
spec:
  consumer: {{deployment: consumer}}
  source: {source}
  scaling: {scaling}
"""


def manifest(name: str = "f", source: str = "{broker: rabbitmq, queue: orders}", scaling: str = "{}") -> str:
    return VALID.format(name=name, source=source, scaling=scaling)


def test_examples_apply_and_show_in_kubectl_get(cluster, namespace) -> None:
    applied = cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples"))
    assert "integrationflow.flowkeeper.io/order-to-warehouse created" in applied.stdout
    table = cluster.kubectl("get", "iflow", "-n", namespace).stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "SEVERITY", "REPLICAS", "DESIRED", "BACKLOG", "DLQ", "AGE"]
    assert "order-to-warehouse" in table and "invoice-to-ledger" in table
    wide = cluster.kubectl("get", "integrationflows", "-n", namespace, "-o", "wide").stdout
    assert wide.splitlines()[0].split()[-4:] == ["SOURCE", "TARGET", "OWNER", "AGE"]
    assert "ERP" in wide and "WMS" in wide


def test_api_server_fills_in_defaults(cluster, namespace, kubectl_json) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest())
    spec = kubectl_json("get", "iflow", "f", "-n", namespace)["spec"]
    assert spec["scaling"]["maxReplicas"] == 10
    assert spec["scaling"]["scaleDown"]["stabilizationWindow"] == "5m"
    assert spec["health"]["errorRatio"] == 0.01
    assert spec["onConfigurationError"] == "Pause"


def test_metric_labels_are_kept_as_written(cluster, namespace, kubectl_json) -> None:
    labels = {"instance": "rabbitmq-prod:15692", "_cluster": 'prod "eu"'}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(source=f"{{broker: rabbitmq, queue: q, metricLabels: {json.dumps(labels)}}}"))
    assert kubectl_json("get", "iflow", "f", "-n", namespace)["spec"]["source"]["metricLabels"] == labels


def test_kubectl_explain_teaches_the_fields(cluster) -> None:
    out = cluster.kubectl("explain", "integrationflow.spec.scaling").stdout
    assert "How many consumers the flow gets" in out
    assert "queueDepthPerReplica" in out and "Backlog one consumer should carry" in out
    deeper = cluster.kubectl("explain", "iflow.spec.scaling.fallback.afterFailures").stdout
    assert "Failed passes in a row" in deeper


INVALID = [
    pytest.param(manifest(scaling="{minReplicas: 5, maxReplicas: 2}"), "spec.scaling.minReplicas", id="min-above-max"),
    pytest.param(manifest(scaling="{queueDepthPerReplica: -10}"), "spec.scaling.queueDepthPerReplica", id="negative-target"),
    pytest.param(manifest(source="{broker: sqs, queue: q}"), "spec.source.broker", id="unknown-broker"),
    pytest.param(manifest(source="{broker: rabbitmq}"), "spec.source.queue", id="rabbitmq-without-queue"),
    pytest.param(manifest(source="{broker: kafka, topic: t}"), "spec.source.consumerGroup", id="kafka-without-group"),
    pytest.param(manifest(scaling="{maxReplicas: ten}"), "spec.scaling.maxReplicas", id="wrong-type"),
    pytest.param(manifest(scaling="{pollInterval: soon}"), "spec.scaling.pollInterval", id="bad-duration"),
    pytest.param(manifest(scaling="{maxReplica: 3}"), "maxReplica", id="unknown-field"),
    pytest.param(manifest(source="{broker: rabbitmq, queue: q, metricLabels: {rabbit-cluster: prod}}"), "spec.source.metricLabels", id="bad-label-name"),
    pytest.param(
        manifest(source="{broker: rabbitmq, queue: q, metricLabels: {%s}}" % ", ".join(f"l{i}: v" for i in range(11))),
        "spec.source.metricLabels",
        id="too-many-labels",
    ),
    pytest.param(
        textwrap.dedent("""
        apiVersion: flowkeeper.io/v1alpha1
        kind: IntegrationFlow
        metadata: {name: f}
        spec:
          source: {broker: rabbitmq, queue: q}
        """),
        "spec.consumer",
        id="missing-consumer",
    ),
]


@pytest.mark.parametrize(("body", "field"), INVALID)
def test_invalid_manifests_are_refused_naming_the_field(cluster, namespace, body: str, field: str) -> None:
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=body, check=False)
    assert result.returncode != 0, result.stdout
    assert field in result.stderr, result.stderr
    assert cluster.kubectl("get", "iflow", "-n", namespace, "-o", "name").stdout == ""
