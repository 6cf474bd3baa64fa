"""The real kube-state-metrics against the real API server, scraped by the real Prometheus: it runs
with the least privilege of its upstream manifest, and its owner series, joined as
docs/metrics-convention.md and docs/alerts.md describe (the recording rule
`flowkeeper:pod_workload:owner` and the operator's own join), map the real pods of a Deployment, a
StatefulSet and a Rollout to their workload, and nothing else. The CPU and memory signals then read
the pods' real requests and limits; the usage series stand for the kubelet's cAdvisor here (kwok pods
run nothing).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowkeeper.adapters.prometheus import FlowTarget, PassResult, PrometheusSignals
from flowkeeper.adapters.prometheus.queries import POD_WORKLOAD
from flowkeeper.api.v1alpha1 import IntegrationFlowSpec
from tests.support.cluster_fixtures import eventually
from tests.support.flows import container, deployment_manifest, statefulset_manifest
from tests.support.kube_state_metrics import DEFAULT_COLLECTORS, NAME, NAMESPACE, cluster_role_rules
from tests.support.rollouts import RESOURCE, rollout_manifest, rollout_replicaset_manifest

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

ROOT = Path(__file__).resolve().parents[2]
ALERT_RULES = ROOT / "charts" / "flowkeeper" / "files" / "alerts.yaml"
KSM_VERSION = dict(
    line.split("=", 1) for line in (ROOT / "tests" / "cluster" / "versions.env").read_text().splitlines() if "=" in line and not line.startswith("#")
)["KSM_VERSION"]
RATE_WINDOW = "5s"
approx = lambda value: pytest.approx(value, rel=0.15)  # noqa: E731 - rates measured over a few scrapes


def _recorded(name: str) -> str:
    """The expression of a recording rule of the chart's rule file."""
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return next(rule["expr"] for group in groups for rule in group["rules"] if rule.get("record") == name)


def _upstream_cluster_role() -> dict[str, Any]:
    """examples/standard/cluster-role.yaml of the kube-state-metrics module that was built."""
    modcache = subprocess.run(["go", "env", "GOMODCACHE"], check=True, capture_output=True, text=True).stdout.strip()
    path = Path(modcache) / f"k8s.io/kube-state-metrics/v2@{KSM_VERSION}" / "examples" / "standard" / "cluster-role.yaml"
    return yaml.safe_load(path.read_text())


def _pods(kubectl_json, namespace: str) -> list[dict[str, Any]]:
    return kubectl_json("get", "pods", "-n", namespace)["items"]


def _controller(obj: dict[str, Any]) -> dict[str, Any] | None:
    return next((ref for ref in obj["metadata"].get("ownerReferences", []) if ref.get("controller")), None)


def workloads_from_the_api(kubectl_json, namespace: str) -> dict[str, tuple[str, str]]:
    """pod -> (workload kind, workload) read from the objects' ownerReferences, the truth the
    Prometheus join must reproduce: ReplicaSet -> its Deployment or Rollout, StatefulSet itself."""
    replicasets = {rs["metadata"]["name"]: rs for rs in kubectl_json("get", "replicasets", "-n", namespace)["items"]}
    out = {}
    for pod in _pods(kubectl_json, namespace):
        owner = _controller(pod)
        if owner and owner["kind"] == "ReplicaSet":
            owner = _controller(replicasets[owner["name"]])
        if owner and owner["kind"] in ("Deployment", "StatefulSet", "Rollout"):
            out[pod["metadata"]["name"]] = (owner["kind"], owner["name"])
    return out


def joined(prometheus, promql: str, namespace: str) -> dict[str, tuple[str, str]]:
    result = prometheus.query(promql)
    return {r["metric"]["pod"]: (r["metric"]["workload_kind"], r["metric"]["workload"]) for r in result if r["metric"]["namespace"] == namespace}


def wait_pods(kubectl_json, namespace: str, count: int) -> list[dict[str, Any]]:
    return eventually(
        lambda: len(pods := [p for p in _pods(kubectl_json, namespace) if p["status"].get("phase") == "Running"]) == count and pods,
        timeout=60, what=f"{count} running pods in {namespace}",
    )


def apply(cluster, namespace: str, manifest: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)


def make_rollout(cluster, kubectl_json, namespace: str, name: str, replicas: int, containers: list[dict[str, Any]]) -> None:
    """A Rollout and the ReplicaSet Argo's controller would give it (no Argo controller runs here)."""
    apply(cluster, namespace, rollout_manifest(name, replicas, containers))
    apply(cluster, namespace, rollout_replicaset_manifest(kubectl_json("get", RESOURCE, name, "-n", namespace), "6b8c5f"))


# ------------------------------------------------------------------------------------ how it runs


def test_it_runs_with_the_least_privilege_of_its_upstream_manifest(cluster, namespace, kube_state_metrics) -> None:
    upstream = _upstream_cluster_role()["rules"]
    for rule in cluster_role_rules(DEFAULT_COLLECTORS):
        granted = [u for u in upstream if set(rule["apiGroups"]) <= set(u["apiGroups"]) and set(rule["resources"]) <= set(u["resources"])]
        assert granted and all(set(u["verbs"]) == set(rule["verbs"]) for u in granted), rule

    account = f"system:serviceaccount:{NAMESPACE}:{NAME}"
    can = lambda *what: cluster.kubectl("auth", "can-i", *what, f"--as={account}", check=False).stdout.strip()  # noqa: E731
    assert [can("watch", "pods", "-A"), can("list", "replicasets.apps", "-A"), can("list", "statefulsets.apps", "-A")] == ["yes"] * 3
    # Nothing it does not export, and no reads of single objects or writes.
    assert [can("list", "secrets", "-A"), can("get", "pods", "-A"), can("delete", "pods", "-A"), can("list", "nodes")] == ["no"] * 4

    # It exports what it can list (a family without objects is left out altogether).
    apply(cluster, namespace, deployment_manifest("worker", 1, [container(cpu_request="100m", memory_limit="64Mi")]))
    families = ("kube_pod_owner", "kube_replicaset_owner", "kube_deployment_spec_replicas", "kube_pod_container_resource_requests",
                "kube_pod_container_resource_limits")

    def exported() -> list[str]:
        lines = kube_state_metrics.metrics().splitlines()
        return [f for f in families if any(line.startswith(f + "{") and f'namespace="{namespace}"' in line for line in lines)]

    eventually(lambda: exported() == list(families), what="the series of the Deployment, its ReplicaSet and pod")
    assert "forbidden" not in kube_state_metrics.process.log_tail(200).lower()


# ------------------------------------------------------------------------------------ the join


def test_real_pods_map_to_their_workload(cluster, namespace, kube_state_metrics, prometheus, rollout_crd, kubectl_json) -> None:
    apply(cluster, namespace, deployment_manifest("worker", 2))
    apply(cluster, namespace, statefulset_manifest("worker", 2))  # the same name, another kind
    make_rollout(cluster, kubectl_json, namespace, "canary", 1, [container()])
    # Pods of no workload: a ReplicaSet of its own and a bare pod.
    loose = json.loads(deployment_manifest("loose", 1))
    apply(cluster, namespace, json.dumps({**loose, "kind": "ReplicaSet"}))
    apply(cluster, namespace, json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"}, "spec": {"containers": [container()]}}))
    wait_pods(kubectl_json, namespace, 7)

    expected = workloads_from_the_api(kubectl_json, namespace)
    assert sorted(expected.values()) == [("Deployment", "worker")] * 2 + [("Rollout", "canary")] + [("StatefulSet", "worker")] * 2
    recorded = _recorded("flowkeeper:pod_workload:owner")
    prometheus.wait_for(recorded, lambda _: joined(prometheus, recorded, namespace) == expected, timeout=30)
    assert joined(prometheus, POD_WORKLOAD, namespace) == expected  # the operator's join: the same pods

    # After a rolling update the new ReplicaSet's pods are the Deployment's, and the old ones are gone.
    apply(cluster, namespace, deployment_manifest("worker", 2, [container(cpu_request="100m")]))
    cluster.kubectl("rollout", "status", "deployment/worker", "-n", namespace, "--timeout=60s")
    eventually(lambda: len(workloads_from_the_api(kubectl_json, namespace)) == 5, timeout=30, what="old pods gone")
    expected = workloads_from_the_api(kubectl_json, namespace)
    prometheus.wait_for(recorded, lambda _: joined(prometheus, recorded, namespace) == expected, timeout=30)


def flow(namespace: str, name: str, target: dict[str, str]) -> FlowTarget:
    spec = IntegrationFlowSpec.model_validate({"scaleTargetRef": target, "source": {"broker": "rabbitmq", "queue": "q"}})
    return FlowTarget(f"{namespace}/{name}", namespace, name, spec)


def test_cpu_and_memory_per_workload_read_the_real_requests_and_limits(
    cluster, namespace, kube_state_metrics, prometheus, fresh_exporter, rollout_crd, kubectl_json
) -> None:
    other = f"{namespace}-b"
    cluster.kubectl("create", "namespace", other)
    try:
        app = container("app", cpu_request="500m", memory_limit="400")
        apply(cluster, namespace, deployment_manifest("worker", 3, [app, container("sidecar")]))  # the sidecar: no request
        apply(cluster, namespace, deployment_manifest("api", 1, [container("app", cpu_request="250m", memory_limit="256")]))
        apply(cluster, namespace, statefulset_manifest("worker", 2, [container("app", cpu_request="1", memory_limit="1000")]))
        make_rollout(cluster, kubectl_json, namespace, "canary", 1, [container("app", cpu_request="500m", memory_limit="512")])
        apply(cluster, other, deployment_manifest("worker", 1, [container("app", cpu_request="1", memory_limit="1024")]))
        pods = {p["metadata"]["name"]: p for p in wait_pods(kubectl_json, namespace, 7)}
        others = wait_pods(kubectl_json, other, 1)
        workload = workloads_from_the_api(kubectl_json, namespace)

        # What cAdvisor would report: (cores used, bytes in use) per container, by workload; the
        # third pod of Deployment `worker` has no usage yet (not started), so its requests do not count.
        usage = {
            ("Deployment", "worker"): [{"app": (0.2, 100), "sidecar": (0.1, 50)}, {"app": (0.3, 200), "sidecar": (0.1, 50)}],
            ("Deployment", "api"): [{"app": (0.1, 64)}],
            ("StatefulSet", "worker"): [{"app": (0.6, 300)}, {"app": (0.2, 100)}],
            ("Rollout", "canary"): [{"app": (0.15, 128)}],
        }
        e = fresh_exporter
        for key, per_pod in usage.items():
            for pod, containers in zip(sorted(p for p, w in workload.items() if w == key), per_pod):
                for name, (cpu, memory) in containers.items():
                    labels = {"namespace": namespace, "pod": pod, "container": name}
                    e.set_rate("container_cpu_usage_seconds_total", labels, cpu)
                    e.set("container_memory_working_set_bytes", labels, memory)
        labels = {"namespace": other, "pod": others[0]["metadata"]["name"], "container": "app"}
        e.set_rate("container_cpu_usage_seconds_total", labels, 0.9)
        e.set("container_memory_working_set_bytes", labels, 512)
        assert len(pods) == 7

        flows = [
            flow(namespace, "f1", {"name": "worker"}),
            flow(other, "f2", {"name": "worker"}),
            flow(namespace, "f3", {"name": "api"}),
            flow(namespace, "f4", {"name": "worker", "kind": "StatefulSet"}),
            flow(namespace, "f5", {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "canary"}),
        ]
        reader = PrometheusSignals(prometheus.url, rate_window=RATE_WINDOW, timeout=5)
        try:
            def usage_of(result: PassResult) -> dict[str, tuple[float | None, float | None]]:
                return {k: (s.cpu_utilization, s.memory_utilization) for k, s in result.signals.items()}

            want = {
                f"{namespace}/f1": (approx(0.5), 0.375),  # (0.2 + 0.3) / (0.5 + 0.5); (100 + 200) / (400 + 400)
                f"{other}/f2": (approx(0.9), 0.5),
                f"{namespace}/f3": (approx(0.4), 0.25),
                f"{namespace}/f4": (approx(0.4), 0.2),
                f"{namespace}/f5": (approx(0.3), 0.25),
            }
            def check() -> bool:
                got = usage_of(reader.collect(flows))
                assert got == want, got
                return True

            eventually(check, timeout=40, what="CPU and memory per workload")
        finally:
            reader.close()
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)
