"""The operator records Ready on each flow from its consumer Deployment, and is silent when idle."""

from __future__ import annotations

import time
import urllib.request

import pytest

from flowkeeper.domain.conditions import parse_rfc3339
from tests.support.cluster_fixtures import eventually

pytestmark = pytest.mark.cluster

FLOW = """
apiVersion: flowkeeper.io/v1alpha1
kind: IntegrationFlow
metadata: {name: orders}
spec:
  scaleTargetRef: {name: order-consumer}
  source: {broker: rabbitmq, queue: orders}
"""


def ready_condition(kubectl_json, namespace: str) -> dict | None:
    status = kubectl_json("get", "iflow", "orders", "-n", namespace).get("status", {})
    return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)


def test_ready_follows_the_consumer_deployment(cluster, namespace, kubectl_json, run_operator) -> None:
    operator = run_operator("-n", namespace)
    hourly = FLOW.replace("queue: orders}", "queue: orders}\n  scaling: {pollInterval: 1h}")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=hourly)

    # A young flow's target may be a watch event behind (applied together): awaited, not paused.
    awaited = eventually(lambda: ready_condition(kubectl_json, namespace), what="a Ready condition")
    assert (awaited["status"], awaited["reason"]) == ("False", "TargetPending")
    assert "order-consumer" in awaited["message"]
    status = kubectl_json("get", "iflow", "orders", "-n", namespace)["status"]
    assert status["observedGeneration"] == 1 and status["phase"] == "Pending" and "pause" not in status
    assert not [e for e in kubectl_json("get", "events", "-n", namespace)["items"] if e["involvedObject"]["kind"] == "IntegrationFlow"]

    # 30 s after its creation it counts as missing, at once: not at its next poll, an hour on.
    missing = eventually(
        lambda: (c := ready_condition(kubectl_json, namespace)) and c["reason"] == "TargetNotFound" and c, timeout=45, what="TargetNotFound"
    )
    assert missing["status"] == "False" and "order-consumer" in missing["message"]
    assert missing["observedGeneration"] == 1
    status = kubectl_json("get", "iflow", "orders", "-n", namespace)["status"]
    assert status["observedGeneration"] == 1 and status["phase"] == "Paused"
    assert status["pause"]["reason"] == "TargetNotFound"
    created = parse_rfc3339(kubectl_json("get", "iflow", "orders", "-n", namespace)["metadata"]["creationTimestamp"])
    assert 29 <= parse_rfc3339(status["pause"]["since"]) - created <= 40  # one-second timestamps

    events = eventually(
        lambda: [e for e in kubectl_json("get", "events", "-n", namespace)["items"] if e["reason"] == "TargetNotFound"],
        what="a TargetNotFound Event",
    )
    assert events[0]["type"] == "Warning"
    assert events[0]["involvedObject"]["kind"] == "IntegrationFlow"

    cluster.kubectl("create", "deployment", "order-consumer", "-n", namespace, "--image=example/consumer:1")
    found = eventually(
        lambda: (c := ready_condition(kubectl_json, namespace)) and c["status"] == "True" and c,
        timeout=15,
        what="Ready=True after the Deployment appears",
    )
    assert found["reason"] == "TargetFound"
    assert "pause" not in kubectl_json("get", "iflow", "orders", "-n", namespace)["status"]
    eventually(
        lambda: kubectl_json("get", "iflow", "orders", "-n", namespace)["status"].get("readyReplicas") == 1,
        timeout=60,
        what="readyReplicas recorded",
    )

    own_metrics = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()
    assert 'flowkeeper_kubernetes_writes_total{kind="event"} 3.0' in own_metrics  # paused, resumed, found
    assert "flowkeeper_pass_duration_seconds_count" in own_metrics


def test_an_idle_operator_makes_no_writes(cluster, namespace, kubectl_json, run_operator) -> None:
    cluster.kubectl("create", "deployment", "order-consumer", "-n", namespace, "--image=example/consumer:1")
    fast = FLOW.replace("queue: orders}", "queue: orders}\n  scaling: {pollInterval: 1s}")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=fast)
    run_operator("-n", namespace)
    eventually(
        lambda: kubectl_json("get", "iflow", "orders", "-n", namespace).get("status", {}).get("readyReplicas") == 1,
        timeout=60,
        what="the flow settled",
    )
    time.sleep(2)  # let the last status write land

    def operator_writes() -> dict[str, int]:
        # What the operator writes: flow status and Deployment /scale (kube-controller-manager
        # keeps writing Deployment status on its own).
        return {
            "status": cluster.write_requests("integrationflows", "status"),
            "scale": cluster.write_requests("deployments", "scale"),
        }

    before = operator_writes()
    time.sleep(6)  # six poll intervals of this flow
    assert operator_writes() == before
    assert not [e for e in kubectl_json("get", "events", "-n", namespace)["items"] if e["source"].get("component") == "flowkeeper" and e["reason"] != "TargetFound"]
