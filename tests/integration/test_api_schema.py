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
  scaleTargetRef: {target}
  source: {source}
  scaling: {scaling}
  health: {health}
"""


def manifest(
    name: str = "f", source: str = "{broker: rabbitmq, queue: orders}", scaling: str = "{}", health: str = "{}", target: str = "{name: consumer}"
) -> str:
    return VALID.format(name=name, source=source, scaling=scaling, health=health, target=target)


def scaling(**fields) -> str:
    return manifest(scaling=json.dumps(fields))


def health(**fields) -> str:
    return manifest(health=json.dumps(fields))


def test_examples_apply_and_show_in_kubectl_get(cluster, namespace) -> None:
    applied = cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples"))
    assert "integrationflow.flowkeeper.io/order-to-warehouse created" in applied.stdout
    table = cluster.kubectl("get", "iflow", "-n", namespace).stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "SEVERITY", "REPLICAS", "DESIRED", "BACKLOG", "DLQ", "TARGET-NAME", "AGE"]
    assert "order-to-warehouse" in table and "invoice-to-ledger" in table and "order-consumer" in table
    wide = cluster.kubectl("get", "integrationflows", "-n", namespace, "-o", "wide").stdout
    assert wide.splitlines()[0].split()[-6:] == ["TARGET-KIND", "TARGET-NAME", "SOURCE-SYSTEM", "TARGET-SYSTEM", "OWNER", "AGE"]
    assert "ERP" in wide and "WMS" in wide and "Deployment" in wide


def test_demo_flow_applies(cluster, namespace) -> None:
    applied = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(REPO / "examples" / "demo" / "flow.yaml"))
    assert "integrationflow.flowkeeper.io/order-to-warehouse created (server dry run)" in applied.stdout


def test_api_server_fills_in_defaults(cluster, namespace, kubectl_json) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest())
    spec = kubectl_json("get", "iflow", "f", "-n", namespace)["spec"]
    assert spec["scaling"]["maxReplicas"] == 10
    assert spec["scaling"]["scaleDown"]["stabilizationWindow"] == "5m"
    assert spec["health"]["errorRatio"] == "0.01"  # a quantity, defaulted as a string
    assert spec["scaling"]["tolerance"] == "0.1" and spec["health"]["latencyFactor"] == "2"
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "consumer"}
    assert spec["onConfigurationError"] == "Pause"


def test_quantities_are_taken_as_kubernetes_writes_them(cluster, namespace, kubectl_json) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        scaling=json.dumps({"tolerance": "0.05"}), health=json.dumps({"errorRatio": "50m", "latencyFactor": 1, "throughputDeviation": "10"})
    ))  # fmt: skip
    spec = kubectl_json("get", "iflow", "f", "-n", namespace)["spec"]
    assert (spec["scaling"]["tolerance"], spec["health"]["errorRatio"], spec["health"]["latencyFactor"]) == ("0.05", "50m", 1)


def test_statefulsets_and_rollouts_are_scale_targets(cluster, namespace, kubectl_json) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(name="sts", target="{kind: StatefulSet, name: db-consumer}"))
    rollout = "{apiVersion: argoproj.io/v1alpha1, kind: Rollout, name: canary-consumer}"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(name="rollout", target=rollout))
    assert kubectl_json("get", "iflow", "sts", "-n", namespace)["spec"]["scaleTargetRef"]["apiVersion"] == "apps/v1"


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
        "spec.scaleTargetRef",
        id="missing-scale-target",
    ),
]


_TARGET_KINDS = "spec.scaleTargetRef must be a Deployment or StatefulSet (apps/v1) or Rollout (argoproj.io/v1alpha1)"

# Out of bounds: each refusal must say which field and what it accepts. Durations go through CEL
# (messages of our own), numbers through the schema's minimum/maximum (the API server's wording).
OUT_OF_BOUNDS = [
    (scaling(pollInterval="0s"), "spec.scaling.pollInterval must be at least 1s"),
    (scaling(pollInterval="0ms"), "spec.scaling.pollInterval must be at least 1s"),
    (scaling(pollInterval="999ms"), "spec.scaling.pollInterval must be at least 1s"),
    (scaling(pollInterval="0.0000001s"), "spec.scaling.pollInterval must be at least 1s"),
    (scaling(pollInterval="61m"), "spec.scaling.pollInterval must be at most 1h"),
    # Beyond what a Go duration holds: still refused with the field's own message.
    (scaling(pollInterval="9999999999h"), "spec.scaling.pollInterval must be at most 1h"),
    # Malformed: only the pattern speaks, not the bounds' rules.
    (scaling(pollInterval="soon"), "spec.scaling.pollInterval in body should match"),
    (scaling(scaleUp={"stabilizationWindow": "2h"}), "spec.scaling.scaleUp.stabilizationWindow must be at most 1h"),
    (scaling(scaleDown={"stabilizationWindow": "1h0m1s"}), "spec.scaling.scaleDown.stabilizationWindow must be at most 1h"),
    (scaling(idleAfter="25h"), "spec.scaling.idleAfter must be at most 24h"),
    (scaling(drainWithin="0s"), "spec.scaling.drainWithin must be at least 1s"),
    (scaling(drainWithin="48h"), "spec.scaling.drainWithin must be at most 24h"),
    (health(heartbeatWindow="0s"), "spec.health.heartbeatWindow must be at least 1s"),
    (health(heartbeatWindow="24h1ms"), "spec.health.heartbeatWindow must be at most 24h"),
    (health(notReadyGrace="0s"), "spec.health.notReadyGrace must be at least 1s"),
    (health(notReadyGrace="100h"), "spec.health.notReadyGrace must be at most 24h"),
    (health(queueGrowthWindow="1s"), "spec.health.queueGrowthWindow must be at least 5s"),
    (health(queueGrowthWindow="169h"), "spec.health.queueGrowthWindow must be at most 168h"),
    (health(baselineWindow="4s"), "spec.health.baselineWindow must be at least 5s"),
    (health(baselineWindow="10000h"), "spec.health.baselineWindow must be at most 168h"),
    (scaling(queueDepthPerReplica=0), "spec.scaling.queueDepthPerReplica in body should be greater than or equal to 1"),
    (scaling(queueDepthPerReplica=10**9 + 1), "spec.scaling.queueDepthPerReplica in body should be less than or equal to 1000000000"),
    (scaling(activationQueueDepth=-1), "spec.scaling.activationQueueDepth in body should be greater than or equal to 0"),
    (scaling(activationQueueDepth=2**31 - 1), "spec.scaling.activationQueueDepth in body should be less than or equal to 1000000000"),
    (scaling(fallback={"replicas": 11}), "spec.scaling.fallback.replicas must be less than or equal to spec.scaling.maxReplicas"),
    (scaling(maxReplicas=10001), "spec.scaling.maxReplicas in body should be less than or equal to 10000"),
    (scaling(scaleUp={"maxReplicasPerStep": 10001}), "spec.scaling.scaleUp.maxReplicasPerStep in body should be less than or equal to 10000"),
    (scaling(cpuUtilization=101), "spec.scaling.cpuUtilization in body should be less than or equal to 100"),
    # Quantities: bounds through CEL quantity comparisons, text through the Quantity pattern.
    (scaling(tolerance="1.5"), "spec.scaling.tolerance must be at most 1"),
    (scaling(tolerance="1001m"), "spec.scaling.tolerance must be at most 1"),
    (scaling(tolerance="-0.1"), "spec.scaling.tolerance must be at least 0"),
    (scaling(tolerance=2), "spec.scaling.tolerance must be at most 1"),
    (health(errorRatio="abc"), "spec.health.errorRatio in body should match"),
    (health(errorRatio="1.01"), "spec.health.errorRatio must be at most 1"),
    (health(throughputDeviation="11"), "spec.health.throughputDeviation must be at most 10"),
    (health(latencyFactor="999m"), "spec.health.latencyFactor must be at least 1"),
    (health(latencyFactor=1001), "spec.health.latencyFactor must be at most 1000"),
    # Only the kinds Flowkeeper scales, each with its own API version.
    (manifest(target="{kind: DaemonSet, name: x}"), _TARGET_KINDS),
    (manifest(target="{apiVersion: argoproj.io/v1alpha1, kind: Deployment, name: x}"), _TARGET_KINDS),
    (manifest(target="{apiVersion: apps/v1, kind: Rollout, name: x}"), _TARGET_KINDS),
]


@pytest.mark.parametrize(("body", "message"), OUT_OF_BOUNDS, ids=[m for _, m in OUT_OF_BOUNDS])
def test_out_of_bounds_values_are_refused_naming_the_field(cluster, namespace, body: str, message: str) -> None:
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=body, check=False)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr
    assert result.stderr.count("Invalid value") == 1, result.stderr  # one error, the right one
    assert cluster.kubectl("get", "iflow", "-n", namespace, "-o", "name").stdout == ""


def test_integers_beyond_int32_are_refused(cluster, namespace) -> None:
    # The schema says int32 (the API conventions); the API server checks the format as well as the bound.
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=scaling(activationQueueDepth=2**62), check=False)
    assert result.returncode != 0 and "format int32 in spec.scaling.activationQueueDepth" in result.stderr, result.stderr


def test_bounds_are_inclusive(cluster, namespace, kubectl_json) -> None:
    lowest = manifest(
        name="lowest",
        scaling=json.dumps({"pollInterval": "1s", "idleAfter": "0s", "drainWithin": "1000ms", "queueDepthPerReplica": 1,
                            "minReplicas": 0, "maxReplicas": 1, "tolerance": 0, "fallback": {"replicas": 0},
                            "scaleUp": {"stabilizationWindow": "0s"}, "scaleDown": {"stabilizationWindow": "0ms"}}),
        health=json.dumps({"heartbeatWindow": "1s", "notReadyGrace": "1s", "queueGrowthWindow": "5s", "baselineWindow": "5s"}),
    )  # fmt: skip
    highest = manifest(
        name="highest",
        scaling=json.dumps({"pollInterval": "1h", "idleAfter": "24h", "drainWithin": "23h60m", "queueDepthPerReplica": 10**9,
                            "activationQueueDepth": 10**9, "minReplicas": 10000, "maxReplicas": 10000, "tolerance": 1,
                            "fallback": {"replicas": 10000}, "scaleUp": {"stabilizationWindow": "60m"},
                            "scaleDown": {"stabilizationWindow": "3600s"}}),
        health=json.dumps({"heartbeatWindow": "24h", "notReadyGrace": "1440m", "queueGrowthWindow": "168h", "baselineWindow": "7h9000m"}),
    )  # fmt: skip
    for body in (lowest, highest):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=body)
    assert kubectl_json("get", "iflow", "highest", "-n", namespace)["spec"]["health"]["baselineWindow"] == "7h9000m"


@pytest.mark.parametrize(("body", "field"), INVALID)
def test_invalid_manifests_are_refused_naming_the_field(cluster, namespace, body: str, field: str) -> None:
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=body, check=False)
    assert result.returncode != 0, result.stdout
    assert field in result.stderr, result.stderr
    assert cluster.kubectl("get", "iflow", "-n", namespace, "-o", "name").stdout == ""
