"""The controller core against the real control plane, a real Prometheus and the real operator:
crashes between writes, claims, other writers of the replicas, standbys, outages, deletion."""

from __future__ import annotations

import os
import time

import pytest

from tests.integration.test_pause import config_errors, flowkeeper_events, manifest, stop_errors
from tests.support.cluster_fixtures import eventually
from tests.support.flows import POLL, Flow, flow_manifest, set_depth

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]


@pytest.fixture
def consumer(cluster, namespace, fresh_exporter, prometheus, unique):
    """A flow `consumer` at 3 replicas with a backlog of 300 (nothing to scale), no operator yet."""

    def make(name: str = "consumer", replicas: int = 3, depth: float = 300, scaling: dict | None = None, **spec) -> tuple[Flow, str]:
        queue = f"{unique}-{name}"
        set_depth(fresh_exporter, queue, depth)
        cluster.kubectl("create", "deployment", name, "-n", namespace, "--image=example/consumer:1", f"--replicas={replicas}")
        # The queue name is unique per test: as the integration label too, no other test's series match.
        spec.setdefault("source", {"broker": "rabbitmq", "vhost": "/", "queue": queue, "integration": queue})
        body = manifest(name, queue, **spec) if scaling is None else flow_manifest(name, queue, scaling, **spec)
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=body)
        prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{queue}"}} == {depth}')
        return Flow(cluster, namespace, name), queue

    return make


def operator_args(namespace: str, prometheus, *extra: str) -> list[str]:
    return ["-n", namespace, f"--prometheus-url={prometheus.url}", "--rate-window=5s", *extra]


def wait_dead(operator, timeout: float = 40) -> None:
    eventually(lambda: not operator.process.running, timeout=timeout, interval=0.2, what="the operator killed at its crash point")


@pytest.mark.parametrize("point", ["pause:status", "pause:scale", "pause:event"])
def test_a_kill_after_any_write_of_a_pause_loses_nothing(point, consumer, namespace, fresh_exporter, prometheus, run_operator, cluster) -> None:
    flow, queue = consumer()
    crashing = run_operator(*operator_args(namespace, prometheus), env={"FLOWKEEPER_CRASH_AFTER": point})
    eventually(lambda: flow.condition("MetricsAvailable").get("status") == "True", timeout=20, what="metrics read")
    config_errors(fresh_exporter, namespace, queue, 2.0)
    wait_dead(crashing)
    assert crashing.process.popen.returncode == -9  # really SIGKILLed at that point
    run_operator(*operator_args(namespace, prometheus))
    flow.wait_replicas(0, timeout=20)
    pause = flow.status()["pause"]
    assert (pause["reason"], pause["replicasBefore"]) == ("ConsumerConfigurationError", 3)
    stop_errors(fresh_exporter, namespace, queue)
    cluster.kubectl("set", "image", "deployment/consumer", "-n", namespace, "consumer=example/consumer:2")
    flow.wait_replicas(3, timeout=20)
    assert "pause" not in flow.status()


@pytest.mark.parametrize("point", ["resume:scale", "resume:status", "resume:event"])
def test_a_kill_after_any_write_of_a_resume_loses_nothing(point, consumer, namespace, fresh_exporter, prometheus, run_operator, cluster, kubectl_json) -> None:
    flow, queue = consumer()
    first = run_operator(*operator_args(namespace, prometheus))
    eventually(lambda: flow.condition("MetricsAvailable").get("status") == "True", timeout=20, what="metrics read")
    config_errors(fresh_exporter, namespace, queue, 2.0)
    flow.wait_replicas(0, timeout=20)
    first.stop()
    stop_errors(fresh_exporter, namespace, queue)
    crashing = run_operator(*operator_args(namespace, prometheus), env={"FLOWKEEPER_CRASH_AFTER": point})
    cluster.kubectl("set", "image", "deployment/consumer", "-n", namespace, "consumer=example/consumer:2")
    wait_dead(crashing)
    run_operator(*operator_args(namespace, prometheus))
    flow.wait_replicas(3, timeout=20)
    eventually(lambda: "pause" not in flow.status() and flow.condition("Paused").get("status") == "False", timeout=15, what="resumed")
    time.sleep(2 * POLL)
    assert flow.replicas() == 3


def test_two_flows_on_one_deployment_do_not_fight(cluster, namespace, fresh_exporter, prometheus, unique, run_operator, kubectl_json) -> None:
    # Regression: two flows naming one Deployment undid each other hundreds of times in seconds.
    for name, depth in (("first", 500), ("second", 100)):
        set_depth(fresh_exporter, f"{unique}-{name}", depth)
    cluster.kubectl("create", "deployment", "shared", "-n", namespace, "--image=example/consumer:1", "--replicas=1")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=flow_manifest("first", f"{unique}-first", scaleTargetRef={"name": "shared"}))
    time.sleep(1.1)  # creation timestamps have a resolution of one second: "first" is older
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=flow_manifest("second", f"{unique}-second", {"scaleDown": {"stabilizationWindow": "0s"}}, scaleTargetRef={"name": "shared"}))
    prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{unique}-second"}} == 100')
    run_operator(*operator_args(namespace, prometheus))
    owner, other = Flow(cluster, namespace, "first"), Flow(cluster, namespace, "second")
    eventually(lambda: owner.replicas_of("shared") == 5, timeout=20, what="the oldest claim scales the Deployment")
    generation = int(cluster.kubectl("get", "deployment", "shared", "-n", namespace, "-o", "jsonpath={.metadata.generation}").stdout)
    time.sleep(4 * POLL)
    assert int(cluster.kubectl("get", "deployment", "shared", "-n", namespace, "-o", "jsonpath={.metadata.generation}").stdout) == generation
    ready = other.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TargetClaimed") and f"{namespace}/first" in ready["message"]
    assert len(flowkeeper_events(kubectl_json, namespace, "TargetClaimed")) == 1
    cluster.kubectl("delete", "iflow", "first", "-n", namespace)
    eventually(lambda: other.condition("Ready").get("status") == "True", timeout=20, what="the other flow owns it now")
    eventually(lambda: owner.replicas_of("shared") == 1, timeout=20, what="scaled by the new owner")


def test_another_writer_of_the_replicas_is_reported_and_corrected_once_after_the_hold_off(
    consumer, namespace, prometheus, run_operator, cluster, kubectl_json
) -> None:
    # Regression: `kubectl scale` (an HPA, Argo CD self-heal) was reverted at once, forever.
    flow, _ = consumer(scaling={"scaleDown": {"stabilizationWindow": "0s"}})
    run_operator(*operator_args(namespace, prometheus, "--conflict-hold-off=8"))
    eventually(lambda: flow.status().get("desiredReplicas") == 3, timeout=20, what="first pass")
    cluster.kubectl("scale", "deployment/consumer", "-n", namespace, "--replicas=7")
    conflict = eventually(lambda: flow.condition("ScalingConflict") if flow.condition("ScalingConflict").get("status") == "True" else None,
                          timeout=15, what="the conflict reported")
    assert conflict["reason"] == "ForeignWriter" and "kubectl" in conflict["message"]
    time.sleep(4)
    assert flow.replicas() == 7  # left alone during the hold-off
    flow.wait_replicas(3, timeout=20)  # then corrected, once
    assert len(flowkeeper_events(kubectl_json, namespace, "ForeignWriter")) == 1


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_standby_sleeps(consumer, namespace, prometheus, run_operator, cluster) -> None:
    # Regression: standbys derived their wait from due flows they never take, and spun at 100 % CPU.
    flow, _ = consumer()

    def replica(identity: str):
        return run_operator(*operator_args(namespace, prometheus, f"--lease-namespace={namespace}", f"--identity={identity}",
                                           "--lease-duration=4"), standalone=False)

    leader = replica("a")
    eventually(lambda: flow.condition("MetricsAvailable").get("status") == "True", timeout=20, what="the leader acts")
    standby = replica("b")
    pid = standby.process.popen.pid
    # Its start-up (imports, kopf's first listings) may run late on a loaded machine: a standby that
    # sleeps has a quiet 10 s window soon after; one that spins never has.
    windows = []
    for _ in range(4):
        before = cpu_seconds(pid)
        time.sleep(10)
        windows.append(round(cpu_seconds(pid) - before, 2))
        if windows[-1] < 1.0:
            break
    assert windows[-1] < 1.0, f"the standby used {windows} s of CPU in successive 10 s windows"
    assert leader.process.running


def test_a_prometheus_outage_is_one_incident_not_one_per_flow(cluster, namespace, fresh_exporter, prometheus, unique, run_operator, kubectl_json) -> None:
    # Regression: an outage posted a Warning and a status write for every flow, and again on recovery.
    names = [f"f{i}" for i in range(4)]
    for name in names:
        set_depth(fresh_exporter, f"{unique}-{name}", 100)
        cluster.kubectl("create", "deployment", name, "-n", namespace, "--image=example/consumer:1", "--replicas=1")
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(name, f"{unique}-{name}"))
    env = {"POD_NAME": "flowkeeper-test", "POD_NAMESPACE": namespace}
    operator = run_operator(*operator_args(namespace, prometheus), env=env)
    flows = [Flow(cluster, namespace, n) for n in names]
    eventually(lambda: all(f.condition("MetricsAvailable").get("status") == "True" for f in flows), timeout=30, what="metrics read")
    prometheus.stop()
    try:
        eventually(lambda: all(f.condition("MetricsAvailable").get("status") == "False" for f in flows), timeout=60, what="conditions flipped")
        assert operator.metric("flowkeeper_prometheus_up") == 0
    finally:
        prometheus.start()
        prometheus.wait_for('up{job="exporter"} == 1')
    eventually(lambda: all(f.condition("MetricsAvailable").get("status") == "True" for f in flows), timeout=90, what="recovered")
    assert all(f.replicas() == 1 for f in flows)
    events = kubectl_json("get", "events", "-n", namespace)["items"]
    on_flows = [e for e in events if e["involvedObject"]["kind"] == "IntegrationFlow" and e["reason"] in ("PrometheusUnavailable", "SignalsRead")]
    assert on_flows == []
    on_operator = sorted(e["reason"] for e in events if e["involvedObject"]["kind"] == "Pod" and e["involvedObject"]["name"] == "flowkeeper-test")
    assert on_operator == ["PrometheusAvailable", "PrometheusUnavailable"]


def test_deleting_a_paused_flow_says_so_on_its_deployment(consumer, namespace, fresh_exporter, prometheus, run_operator, cluster, kubectl_json) -> None:
    flow, queue = consumer()
    run_operator(*operator_args(namespace, prometheus))
    eventually(lambda: flow.condition("MetricsAvailable").get("status") == "True", timeout=20, what="metrics read")
    config_errors(fresh_exporter, namespace, queue, 2.0)
    flow.wait_replicas(0, timeout=20)
    cluster.kubectl("delete", "iflow", "consumer", "-n", namespace)

    def warning():
        items = kubectl_json("get", "events", "-n", namespace)["items"]
        return [e for e in items if e["reason"] == "PausedFlowDeleted" and e["involvedObject"]["kind"] == "Deployment"]

    event = eventually(warning, timeout=20, what="a Warning on the Deployment")[0]
    assert "--replicas=3" in event["message"] and event["type"] == "Warning"
    time.sleep(2 * POLL)
    assert flow.replicas() == 0  # left at 0: its configuration is still broken


def test_an_impossible_backlog_holds_one_flow_while_the_others_scale(cluster, namespace, fresh_exporter, prometheus, unique, run_operator) -> None:
    # Regression: a depth of -1 scaled a flow at 3 replicas to 1.
    set_depth(fresh_exporter, f"{unique}-broken", -1)
    set_depth(fresh_exporter, f"{unique}-fine", 500)
    for name in ("broken", "fine"):
        cluster.kubectl("create", "deployment", name, "-n", namespace, "--image=example/consumer:1", "--replicas=3")
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=flow_manifest(name, f"{unique}-{name}", {"scaleDown": {"stabilizationWindow": "0s"}}))
    prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{unique}-broken"}} == -1')
    run_operator(*operator_args(namespace, prometheus))
    broken, fine = Flow(cluster, namespace, "broken"), Flow(cluster, namespace, "fine")
    fine.wait_replicas(5, timeout=20)
    metrics = eventually(lambda: broken.condition("MetricsAvailable") if broken.condition("MetricsAvailable").get("reason") == "ImpossibleValue" else None,
                         timeout=20, what="the broken signal named")
    assert metrics["status"] == "False" and "queueDepth" in metrics["message"]
    time.sleep(3 * POLL)
    assert broken.replicas() == 3
