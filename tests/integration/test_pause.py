"""Pausing flows on configuration errors and resuming them, against the real control plane, a real
Prometheus and the real operator."""

from __future__ import annotations

import time

import pytest

from tests.support.cluster_fixtures import eventually
from tests.support.flows import POLL, Flow, flow_manifest, set_depth

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]


def manifest(name: str, queue: str, **spec) -> str:
    # A long scale-down window keeps replicas where they are, so only pausing moves them.
    return flow_manifest(name, queue, {"maxReplicas": 10, "scaleDown": {"stabilizationWindow": "1h"}}, **spec)


@pytest.fixture
def paused_setup(cluster, namespace, fresh_exporter, prometheus, unique, run_operator):
    """A flow at 3 replicas with a backlog of 300, and a running operator."""

    def make(name: str = "consumer", **spec):
        queue = f"{unique}-{name}"
        set_depth(fresh_exporter, queue, 300)
        cluster.kubectl("create", "deployment", name, "-n", namespace, "--image=example/consumer:1", "--replicas=3")
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(name, queue, **spec))
        prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{queue}"}} == 300')
        # Overrides allowed: one test writes a broken one.
        operator = run_operator("-n", namespace, f"--prometheus-url={prometheus.url}", "--rate-window=5s", "--allow-metrics-overrides")
        flow = Flow(cluster, namespace, name)
        eventually(lambda: flow.condition("MetricsAvailable").get("status") == "True", timeout=20, what="metrics read")
        assert flow.replicas() == 3
        return flow, queue, operator

    return make


def config_errors(exporter, namespace: str, integration: str, per_second: float) -> None:
    labels = {"namespace": namespace, "integration": integration}  # namespace: as Kubernetes discovery sets it
    exporter.set_rate("flowkeeper_messages_processed_total", {**labels, "status": "error"}, per_second)
    exporter.set_rate("flowkeeper_errors_total", {**labels, "class": "configuration"}, per_second)


def stop_errors(exporter, namespace: str, integration: str) -> None:
    """Consumers at 0 report nothing: their series vanish."""
    labels = {"namespace": namespace, "integration": integration}
    exporter.remove("flowkeeper_messages_processed_total", {**labels, "status": "error"})
    exporter.remove("flowkeeper_errors_total", {**labels, "class": "configuration"})


def flowkeeper_events(kubectl_json, namespace: str, reason: str) -> list[dict]:
    items = kubectl_json("get", "events", "-n", namespace)["items"]
    return [e for e in items if e.get("source", {}).get("component") == "flowkeeper" and e["reason"] == reason]


def test_consumer_configuration_errors_pause_and_a_new_template_resumes(
    paused_setup, cluster, namespace, fresh_exporter, kubectl_json
) -> None:
    flow, queue, _ = paused_setup()
    config_errors(fresh_exporter, namespace, "consumer", 2.0)

    flow.wait_replicas(0, timeout=20)
    status = flow.status()
    assert status["pause"]["reason"] == "ConsumerConfigurationError"
    assert status["pause"]["replicasBefore"] == 3
    assert (status["phase"], status["severity"]) == ("Paused", "P1")
    assert flow.condition("Paused")["status"] == "True"
    assert status["signals"]["queueDepth"] == 300  # the backlog waits in the queue
    assert len(flowkeeper_events(kubectl_json, namespace, "ConsumerConfigurationError")) == 1

    stop_errors(fresh_exporter, namespace, "consumer")
    time.sleep(3 * POLL)
    assert flow.replicas() == 0  # errors stopping because nobody consumes is no fix

    cluster.kubectl("set", "image", f"deployment/{flow.name}", "-n", namespace, "consumer=example/consumer:2")
    flow.wait_replicas(3, timeout=20)
    assert "pause" not in flow.status()
    assert flow.condition("Paused")["status"] == "False"
    assert len(flowkeeper_events(kubectl_json, namespace, "Resumed")) == 1


def test_deleted_deployment_pauses_with_target_not_found_and_recovers(
    paused_setup, cluster, namespace, kubectl_json
) -> None:
    flow, _, _ = paused_setup()
    cluster.kubectl("delete", "deployment", flow.name, "-n", namespace)
    paused = eventually(lambda: flow.status().get("pause"), timeout=15, what="paused")
    assert paused["reason"] == "TargetNotFound" and paused["replicasBefore"] == 3
    assert flow.condition("Ready")["reason"] == "TargetNotFound"

    cluster.kubectl("create", "deployment", flow.name, "-n", namespace, "--image=example/consumer:1", "--replicas=1")
    flow.wait_replicas(3, timeout=20)
    eventually(lambda: "pause" not in flow.status(), timeout=10, what="resumed")
    assert flow.condition("Ready")["status"] == "True"


def test_bad_override_query_pauses_with_invalid_query(paused_setup, cluster, namespace) -> None:
    flow, queue, _ = paused_setup()
    broken = {"metrics": {"errorRatio": "sum(rate(flowkeeper_messages_processed_total[1m]"}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(flow.name, queue, **broken))
    flow.wait_replicas(0, timeout=20)
    pause = flow.status()["pause"]
    assert pause["reason"] == "InvalidQuery"
    assert "errorRatio" in pause["message"] or "error" in pause["message"].lower()

    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(flow.name, queue))  # the fix, from Git
    flow.wait_replicas(3, timeout=20)


def test_operator_restart_mid_pause_keeps_the_pause_and_restores_replicas(
    paused_setup, cluster, namespace, fresh_exporter, run_operator, prometheus
) -> None:
    flow, _, operator = paused_setup()
    config_errors(fresh_exporter, namespace, "consumer", 2.0)
    flow.wait_replicas(0, timeout=20)
    operator.stop()
    stop_errors(fresh_exporter, namespace, "consumer")

    run_operator("-n", namespace, f"--prometheus-url={prometheus.url}", "--rate-window=5s")
    time.sleep(3 * POLL)
    assert flow.replicas() == 0
    assert flow.status()["pause"]["replicasBefore"] == 3

    cluster.kubectl(
        "annotate", "iflow", flow.name, "-n", namespace, "flowkeeper.io/resume=after-fix", "--overwrite"
    )
    flow.wait_replicas(3, timeout=20)


def test_manual_pause_from_spec(paused_setup, cluster, namespace) -> None:
    flow, queue, _ = paused_setup()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(flow.name, queue, paused=True))
    flow.wait_replicas(0, timeout=15)
    status = flow.status()
    assert (status["phase"], status["severity"], status["pause"]["reason"]) == ("Paused", "None", "Manual")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(flow.name, queue, paused=False))
    flow.wait_replicas(3, timeout=15)


def test_missing_secret_pauses_and_its_creation_resumes(paused_setup, cluster, namespace, prometheus) -> None:
    flow, queue, _ = paused_setup()
    own_server = {"metrics": {"server": {"address": prometheus.url, "bearerTokenSecret": {"name": "prom-token", "key": "token"}}}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(flow.name, queue, **own_server))
    flow.wait_replicas(0, timeout=20)
    assert flow.status()["pause"]["reason"] == "SecretNotFound"

    cluster.kubectl("create", "secret", "generic", "prom-token", "-n", namespace, "--from-literal=token=t0ken")
    flow.wait_replicas(3, timeout=90)  # the adapter caches Secret reads for a minute
