"""Each health signal, driven through a real Prometheus, moves the flow to its severity, Healthy
reason and phase, posts one Event for the transition, and goes back when it clears. Windows are set
short per flow (spec.health), which tests the mechanism; the defaults are the same code."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.support.cluster_fixtures import eventually
from tests.support.flows import Flow, container, deployment_manifest, flow_manifest, set_depth

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

NAME = "consumer"


@dataclass(frozen=True)
class Case:
    reason: str
    severity: str
    phase: str
    drive: Callable  # (exporter, queue, namespace, pod) -> None
    clear: Callable
    health: dict | None = None
    history_s: float = 0  # seconds of normal signals before the drive, for baselines


def _convention(namespace: str, **labels: str) -> dict[str, str]:
    # The labels Prometheus' Kubernetes discovery gives the consumer pods' series, and the convention's.
    return {"namespace": namespace, "integration": NAME, **labels}


def _processed(e, namespace: str, success: float, error: float = 0.0) -> None:
    e.set_rate("flowkeeper_messages_processed_total", _convention(namespace, status="success"), success)
    if error:
        e.set_rate("flowkeeper_messages_processed_total", _convention(namespace, status="error"), error)
    else:
        e.remove("flowkeeper_messages_processed_total", _convention(namespace, status="error"))


# CPU and memory: the pod's owners, requests (cpu 1) and limits (memory 1000 bytes) come from the real
# kube-state-metrics; the usage series stand for cAdvisor (kwok pods run nothing).
def _cpu(e, namespace: str, pod: str, used: float) -> None:
    e.set_rate("container_cpu_usage_seconds_total", {"namespace": namespace, "pod": pod, "container": "consumer"}, used)


def _memory(e, namespace: str, pod: str, used_bytes: float) -> None:
    e.set("container_memory_working_set_bytes", {"namespace": namespace, "pod": pod, "container": "consumer"}, used_bytes)


def _latency(e, namespace: str, seconds: float) -> None:
    e.set_rate("flowkeeper_processing_seconds_count", _convention(namespace), 10)
    e.set_rate("flowkeeper_processing_seconds_sum", _convention(namespace), 10 * seconds)


def _no_ready_consumers(cluster, namespace: str, stuck: bool) -> None:
    """Pods that cannot be scheduled (a node selector nothing matches), replacing the ready one."""
    selector = {"nowhere": "true"} if stuck else None
    patch = {"spec": {"strategy": {"type": "Recreate", "rollingUpdate": None}, "template": {"spec": {"nodeSelector": selector}}}}
    cluster.kubectl("patch", "deployment", NAME, "-n", namespace, "--type=merge", "-p", json.dumps(patch))


def _dead_letters(e, queue: str, n: float) -> None:
    e.set("rabbitmq_queue_messages_ready", {"vhost": "/", "queue": f"{queue}.dlq"}, n)


CASES = [
    Case("ErrorRatioHigh", "P2", "Degraded",
         drive=lambda e, q, ns, pod: _processed(e, ns, 9, 1), clear=lambda e, q, ns, pod: _processed(e, ns, 10)),
    Case("DeadLetters", "P3", "Degraded",
         drive=lambda e, q, ns, pod: _dead_letters(e, q, 3), clear=lambda e, q, ns, pod: _dead_letters(e, q, 0)),
    Case("HeartbeatLost", "P1", "Down",
         drive=lambda e, q, ns, pod: e.set("flowkeeper_last_success_timestamp_seconds", _convention(ns), time.time() - 600),
         clear=lambda e, q, ns, pod: e.set("flowkeeper_last_success_timestamp_seconds", _convention(ns), time.time() + 3600)),
    Case("QueueGrowing", "P2", "Degraded",
         drive=lambda e, q, ns, pod: e.set_rate("rabbitmq_queue_messages_ready", {"vhost": "/", "queue": q}, 2, start=50),
         clear=lambda e, q, ns, pod: set_depth(e, q, 50), health={"queueGrowthWindow": "6s"}),
    Case("CpuHigh", "P2", "Degraded",
         drive=lambda e, q, ns, pod: _cpu(e, ns, pod, 0.95), clear=lambda e, q, ns, pod: _cpu(e, ns, pod, 0.2)),
    Case("MemoryHigh", "P2", "Degraded",
         drive=lambda e, q, ns, pod: _memory(e, ns, pod, 950), clear=lambda e, q, ns, pod: _memory(e, ns, pod, 300)),
    Case("ThroughputOffBaseline", "P2", "Degraded",
         drive=lambda e, q, ns, pod: _processed(e, ns, 2), clear=lambda e, q, ns, pod: _processed(e, ns, 10),
         health={"baselineWindow": "20s"}, history_s=22),
    Case("LatencyHigh", "P2", "Degraded",
         drive=lambda e, q, ns, pod: _latency(e, ns, 0.5), clear=lambda e, q, ns, pod: _latency(e, ns, 0.1),
         health={"baselineWindow": "20s"}, history_s=22),
]

NO_READY = Case("NoReadyConsumers", "P1", "Down", drive=None, clear=None, health={"notReadyGrace": "4s"})


def flowkeeper_events(kubectl_json, namespace: str, reason_part: str) -> list[dict]:
    items = kubectl_json("get", "events", "-n", namespace)["items"]
    return [e for e in items if e.get("source", {}).get("component") == "flowkeeper" and reason_part in e["reason"]]


@pytest.mark.parametrize("case", [*CASES, NO_READY], ids=[c.reason for c in [*CASES, NO_READY]])
def test_signal_moves_the_flow_and_back(
    case: Case, cluster, namespace, prometheus, kube_state_metrics, fresh_exporter, unique, run_operator, kubectl_json
) -> None:
    if case is NO_READY:  # driven through the Deployment, not Prometheus
        case = Case(case.reason, case.severity, case.phase,
                    drive=lambda e, q, ns, pod: _no_ready_consumers(cluster, ns, True),
                    clear=lambda e, q, ns, pod: _no_ready_consumers(cluster, ns, False), health=case.health)
    queue = f"{unique}-orders"
    set_depth(fresh_exporter, queue, 50)
    _dead_letters(fresh_exporter, queue, 0)
    _processed(fresh_exporter, namespace, 10)
    _latency(fresh_exporter, namespace, 0.1)
    fresh_exporter.set("flowkeeper_last_success_timestamp_seconds", _convention(namespace), time.time() + 3600)
    manifest = deployment_manifest(NAME, 1, [container(cpu_request="1", memory_limit="1000")])
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    cluster.kubectl("rollout", "status", f"deployment/{NAME}", "-n", namespace, "--timeout=60s")
    pod = kubectl_json("get", "pods", "-n", namespace, "-l", f"app={NAME}")["items"][0]["metadata"]["name"]
    source = {"broker": "rabbitmq", "vhost": "/", "queue": queue, "deadLetterQueue": f"{queue}.dlq", "integration": NAME}
    manifest = flow_manifest(NAME, queue, {"queueDepthPerReplica": 100000}, source=source, health=case.health or {})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{queue}"}} == 50')
    run_operator("-n", namespace, f"--prometheus-url={prometheus.url}", "--rate-window=5s")
    flow = Flow(cluster, namespace, NAME)
    eventually(lambda: flow.condition("Healthy").get("status") == "True", timeout=40, what="healthy at first")
    time.sleep(case.history_s)

    case.drive(fresh_exporter, queue, namespace, pod)
    unhealthy = eventually(
        lambda: (c := flow.condition("Healthy")).get("status") == "False" and case.reason in c["reason"] and c,
        timeout=40, what=f"Healthy=False {case.reason}",
    )
    status = flow.status()
    assert (status["severity"], status["phase"]) == (case.severity, case.phase), (status, unhealthy)
    time.sleep(6)  # three more passes: still one Event for this transition
    assert len(flowkeeper_events(kubectl_json, namespace, case.reason)) == 1

    case.clear(fresh_exporter, queue, namespace, pod)
    eventually(lambda: flow.condition("Healthy").get("status") == "True", timeout=40, what="healthy again")
    status = flow.status()
    assert (status["severity"], status["phase"]) == ("None", "Running")
