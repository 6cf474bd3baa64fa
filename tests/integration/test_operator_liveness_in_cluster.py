"""The chart's liveness probe, probed for real by the kubelet, restarts an operator whose loop is stuck.

How the loop gets stuck, with no test-only code in the operator: its Prometheus (a SlowPrometheus in
front of the real one, reached through a relay on the node's veth pair) holds every answer back for
90 s, and the release allows a query 60 s (`extraArgs: [--prometheus-timeout=60]`), so the first pass
of the loop cannot end for a minute. The release lowers the stall limit to 10 s with the chart's
`loopStallSeconds` (the operator's --loop-stall-seconds) and probes every 5 s, failing after 2: /healthz
fails once the pass has run 10 s, the kubelet kills the container and starts a new one. Prometheus is
then answered at once again, and the new container serves its flow, Ready, without another restart.

Readiness and liveness passing normally (Ready, no restarts) are checked by test_operator_in_cluster.py.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.support.cluster import LocalCluster
from tests.support.cluster_fixtures import eventually
from tests.support.exporter import MetricsExporter
from tests.support.flows import Flow, flow_manifest, set_depth
from tests.support.images import operator_image
from tests.support.operator_release import POD_READY_TIMEOUT, OperatorRelease, container_status, is_ready, relay_to_pods
from tests.support.prometheus import LocalPrometheus
from tests.support.real_node import RealNode
from tests.support.slow_prometheus import SlowPrometheus

pytestmark = [pytest.mark.cluster, pytest.mark.real_node, pytest.mark.images, pytest.mark.prometheus]

STALL_LIMIT = 10  # loopStallSeconds of the release
HELD_BACK = 90  # seconds the slow Prometheus holds each answer
QUERY_TIMEOUT = 60  # --prometheus-timeout of the release: a query may take this long


@pytest.fixture
def slow_prometheus(prometheus: LocalPrometheus) -> Iterator[SlowPrometheus]:
    with SlowPrometheus(prometheus.url) as slow:
        yield slow


def events_of(cluster: LocalCluster, namespace: str, pod: str) -> list[dict]:
    listed = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={pod}", "-o", "json")
    return json.loads(listed.stdout)["items"]


@pytest.mark.timeout(900)
def test_a_stuck_loop_fails_liveness_and_the_kubelet_restarts_the_container(
    real_node_cluster: LocalCluster, real_node: RealNode, exporter: MetricsExporter, slow_prometheus: SlowPrometheus,
    tmp_path, unique: str,
) -> None:
    suffix = uuid.uuid4().hex[:6]
    namespace, flows = f"fk-live-{suffix}", f"fk-live-flows-{suffix}"
    real_node_cluster.kubectl("create", "namespace", flows)
    real_node_cluster.kubectl("create", "deployment", "orders", "-n", flows, "--image=example/consumer:1", "--replicas=1")
    set_depth(exporter, unique, 250)
    real_node_cluster.kubectl("apply", "-n", flows, "-f", "-", input=flow_manifest("orders", unique, {"maxReplicas": 10}))
    flow = Flow(real_node_cluster, flows, "orders")
    slow_prometheus.slow_down("", delay=HELD_BACK)
    relay = relay_to_pods(real_node, int(slow_prometheus.url.rpartition(":")[2]))
    release = OperatorRelease(real_node_cluster, real_node, "fk-live", namespace, tmp_path / "helm")
    try:
        with release:
            release.install(operator_image(), {
                "replicaCount": 1, "watchNamespaces": [flows], "prometheus": {"url": relay.url},
                "loopStallSeconds": STALL_LIMIT, "extraArgs": [f"--prometheus-timeout={QUERY_TIMEOUT}"],
                "livenessProbe": {"initialDelaySeconds": 5, "periodSeconds": 5, "failureThreshold": 2},
            })
            (pod,) = eventually(lambda: release.pods() or None, timeout=60, what="the operator pod")
            name = pod["metadata"]["name"]
            started = eventually(lambda: container_status(release.pod(name)).get("state", {}).get("running"),
                                 timeout=POD_READY_TIMEOUT, interval=0.5, what="the operator container running")

            def killing_for_liveness() -> dict | None:
                return next((e for e in events_of(real_node_cluster, namespace, name)
                             if e["reason"] == "Killing" and "liveness" in e["message"]), None)

            killing = eventually(killing_for_liveness, timeout=QUERY_TIMEOUT + 60, interval=1, what="the kubelet killing for liveness")
            slow_prometheus.rules.clear()  # the next container's Prometheus answers at once
            killed_at = time.time()
            # The probe's own reason, in the log of the container being killed (kopf logs the failure).
            logs = real_node_cluster.kubectl("logs", name, "-n", namespace, "-c", "operator").stdout
            assert "the controller loop has not come round for" in logs, logs[-3000:]
            unhealthy = [e for e in events_of(real_node_cluster, namespace, name) if e["reason"] == "Unhealthy"]
            assert any(e["message"].startswith("Liveness probe failed: HTTP probe failed with statuscode: 500") for e in unhealthy), unhealthy
            # It was killed while its first pass still waited for Prometheus: stuck, not dead.
            assert any(a.query for a in slow_prometheus.asked), "the operator never asked Prometheus"
            assert flow.condition("MetricsAvailable").get("status") != "True"
            print(f"killed for liveness {killing.get('lastTimestamp') or killing.get('eventTime')} (container started {started['startedAt']})")

            restarted = eventually(lambda: (p := release.pod(name)) and container_status(p).get("restartCount", 0) >= 1 and is_ready(p) and p,
                                   timeout=POD_READY_TIMEOUT, interval=1, what="the container restarted and Ready")
            eventually(lambda: flow.condition("MetricsAvailable").get("status") == "True", timeout=90, interval=1,
                       what="the new container served the flow")
            flow.wait_replicas(3, timeout=60)
            # and it stays alive: no restart more over two stall limits and more
            time.sleep(max(0.0, killed_at + 3 * STALL_LIMIT - time.time()))
            assert container_status(release.pod(name))["restartCount"] == container_status(restarted)["restartCount"]
    finally:
        relay.close()
        for ns in (flows, namespace):
            real_node_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
