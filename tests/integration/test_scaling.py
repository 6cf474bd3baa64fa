"""Scaling consumer Deployments and StatefulSets from a real Prometheus, against the real control plane."""

from __future__ import annotations

import time

import pytest

from tests.support.cluster_fixtures import eventually
from tests.support.flows import POLL, SCRAPE, Flow, flow_manifest, set_depth, statefulset_manifest
from tests.support.prometheus import LocalPrometheus

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

@pytest.fixture
def make_flow(cluster, namespace, fresh_exporter, unique):
    def make(scaling: dict, *, replicas: int = 1, backlog: float = 0, name: str = "consumer") -> tuple[Flow, str]:
        queue = f"{unique}-{name}"
        set_depth(fresh_exporter, queue, backlog)
        cluster.kubectl("create", "deployment", name, "-n", namespace, "--image=example/consumer:1", f"--replicas={replicas}")
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=flow_manifest(name, queue, scaling))
        return Flow(cluster, namespace, name), queue

    return make


def test_backlog_step_scales_up_within_a_poll_and_down_after_the_window(
    make_flow, run_operator, namespace, prometheus, fresh_exporter
) -> None:
    flow, queue = make_flow({"maxReplicas": 10, "scaleDown": {"stabilizationWindow": "12s"}}, backlog=50)
    prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{queue}"}} == 50')
    run_operator("-n", namespace, f"--prometheus-url={prometheus.url}")
    eventually(lambda: flow.condition("MetricsAvailable").get("status") == "True", timeout=20, what="metrics read")
    assert flow.replicas() == 1

    set_depth(fresh_exporter, queue, 620)
    reaction = flow.wait_replicas(7, timeout=POLL + 2 * SCRAPE + 4)
    status = flow.status()
    assert status["desiredReplicas"] == 7
    assert "backlog 620" in status["lastScaleReason"]
    assert status["signals"]["queueDepth"] == 620
    print(f"scale-up reaction {reaction:.2f}s")

    set_depth(fresh_exporter, queue, 0)
    cleared = time.monotonic()
    time.sleep(8)  # well inside the 12 s scale-down window
    assert flow.replicas() == 7
    flow.wait_replicas(1, timeout=12 + 2 * POLL + 6)
    assert time.monotonic() - cleared >= 12


def test_a_statefulset_is_scaled_through_its_scale_subresource(
    cluster, run_operator, namespace, prometheus, fresh_exporter, unique, kubectl_json
) -> None:
    # A Deployment of the same name stands next to it: targets are told apart by kind.
    queue = f"{unique}-sts"
    set_depth(fresh_exporter, queue, 50)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=statefulset_manifest("consumer", 1))
    cluster.kubectl("create", "deployment", "consumer", "-n", namespace, "--image=example/consumer:1", "--replicas=2")
    target = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "consumer"}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=flow_manifest("consumer", queue, {"maxReplicas": 10}, scaleTargetRef=target))
    flow = Flow(cluster, namespace, "consumer", kind="statefulset")
    prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{queue}"}} == 50')
    run_operator("-n", namespace, f"--prometheus-url={prometheus.url}")
    eventually(lambda: flow.condition("Ready").get("status") == "True", timeout=20, what="StatefulSet found")
    assert "StatefulSet" in flow.condition("Ready")["message"]

    set_depth(fresh_exporter, queue, 620)
    flow.wait_replicas(7, timeout=POLL + 2 * SCRAPE + 8)
    # kwok runs the pods: the StatefulSet's readiness reaches the flow's status.
    eventually(lambda: flow.status().get("readyReplicas") == 7, timeout=30, what="7 ready StatefulSet pods in the status")
    assert flow.replicas_of("consumer", "deployment") == 2  # the same-named Deployment is not the target
    managers = kubectl_json("get", "statefulset", "consumer", "-n", namespace, "--show-managed-fields")["metadata"]["managedFields"]
    assert any(m["manager"] == "flowkeeper" and m.get("subresource") == "scale" for m in managers)


def test_prometheus_outage_holds_replicas_applies_fallback_and_recovers(
    cluster, make_flow, run_operator, namespace, exporter, fresh_exporter
) -> None:
    # Its own Prometheus, so stopping it does not disturb other tests.
    with LocalPrometheus([exporter.target]) as own:
        flow, queue = make_flow({"fallback": {"afterFailures": 3, "replicas": 4}}, replicas=2, backlog=200)
        own.wait_for(f'rabbitmq_queue_messages_ready{{queue="{queue}"}} == 200')
        run_operator("-n", namespace, f"--prometheus-url={own.url}")
        eventually(lambda: flow.condition("MetricsAvailable").get("status") == "True", timeout=20, what="metrics read")
        assert flow.replicas() == 2

        own.stop()
        unavailable = eventually(
            lambda: (c := flow.condition("MetricsAvailable")).get("status") == "False" and c, timeout=15, what="MetricsAvailable=False"
        )
        assert unavailable["reason"] == "PrometheusUnavailable"
        assert flow.replicas() in (2, 4)  # held, or already at the fallback: never lower
        flow.wait_replicas(4, timeout=3 * POLL + 10)
        assert "pause" not in flow.status()  # an outage is transient: nothing is paused

        own.start()
        eventually(lambda: flow.condition("MetricsAvailable").get("status") == "True", timeout=30, what="recovery")
        assert flow.replicas() >= 2


def test_partitions_cap_the_consumers(make_flow, run_operator, namespace, prometheus, fresh_exporter) -> None:
    flow, queue = make_flow({"maxReplicas": 20, "partitions": 3}, backlog=5000)
    prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{queue}"}} == 5000')
    run_operator("-n", namespace, f"--prometheus-url={prometheus.url}")
    flow.wait_replicas(3, timeout=20)
    limited = eventually(lambda: (c := flow.condition("ScalingLimited")).get("status") == "True" and c, timeout=10, what="ScalingLimited")
    assert limited["reason"] == "AtPartitions"
    time.sleep(3 * POLL)
    assert flow.replicas() == 3


def test_missing_metrics_never_scale_down(make_flow, run_operator, namespace, prometheus, fresh_exporter) -> None:
    flow, queue = make_flow({"minReplicas": 1, "scaleDown": {"stabilizationWindow": "0s"}}, replicas=5, backlog=500)
    prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{queue}"}} == 500')
    run_operator("-n", namespace, f"--prometheus-url={prometheus.url}")
    eventually(lambda: flow.condition("MetricsAvailable").get("status") == "True", timeout=20, what="metrics read")
    fresh_exporter.remove("rabbitmq_queue_messages_ready", {"vhost": "/", "queue": queue})  # the series vanishes
    eventually(lambda: flow.condition("MetricsAvailable").get("status") == "False", timeout=20, what="signal missing")
    time.sleep(3 * POLL)
    assert flow.replicas() == 5
