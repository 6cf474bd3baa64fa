"""The test bed itself: Deployments get Pods that become Ready on the kwok node."""

from __future__ import annotations

import pytest

from tests.support.cluster_fixtures import eventually

pytestmark = pytest.mark.cluster


def test_deployment_pods_become_ready_and_follow_kubectl_scale(cluster, namespace, kubectl_json) -> None:
    cluster.kubectl("create", "deployment", "consumer", "-n", namespace, "--image=example/consumer:1", "--replicas=2")

    def ready(n: int):
        return lambda: kubectl_json("get", "deployment", "consumer", "-n", namespace)["status"].get("readyReplicas", 0) == n

    eventually(ready(2), timeout=60, what="2 ready replicas")
    pods = kubectl_json("get", "pods", "-n", namespace)["items"]
    assert {p["spec"]["nodeName"] for p in pods} == {"kwok-node-0"}
    assert all(p["status"]["phase"] == "Running" for p in pods)

    cluster.kubectl("scale", "deployment", "consumer", "-n", namespace, "--replicas=5")
    eventually(ready(5), timeout=60, what="5 ready replicas")
    cluster.kubectl("scale", "deployment", "consumer", "-n", namespace, "--replicas=1")
    eventually(ready(1), timeout=60, what="1 ready replica")
    eventually(lambda: len(kubectl_json("get", "pods", "-n", namespace)["items"]) == 1, timeout=60, what="pods removed")


def test_server_reports_the_pinned_version(cluster) -> None:
    assert "v1.36.3" in cluster.kubectl("version").stdout
