"""kube-state-metrics for the tests, run as a cluster runs it: its own ServiceAccount, bound to a
ClusterRole that lists and watches only what its collectors export (the rules of its upstream
manifest, cut to those collectors), a token of that ServiceAccount as its only credential, and its
metrics on 127.0.0.1 and a free port for the real Prometheus to scrape (`scrape_job()`).

    with KubeStateMetrics(cluster) as ksm:
        prometheus.add_scrape_job(ksm.scrape_job())
        prometheus.wait_for('kube_pod_owner{namespace="shop"}')

The binary comes from build-binaries.sh (`ksm`, part of `all`), built from its Go module.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.cluster import BUILD_SCRIPT, LocalCluster
from tests.support.processes import Process, free_port, wait_until

NAMESPACE = "kube-system"  # where upstream's manifests put it
NAME = "kube-state-metrics"
JOB = "kube-state-metrics"

# A collector (a value of --resources) and the API group and resource it lists and watches, as
# upstream's ClusterRole grants them.
COLLECTOR_RESOURCES: dict[str, tuple[str, str]] = {
    "pods": ("", "pods"),
    "replicasets": ("apps", "replicasets"),
    "deployments": ("apps", "deployments"),
    "statefulsets": ("apps", "statefulsets"),
    "daemonsets": ("apps", "daemonsets"),
    "jobs": ("batch", "jobs"),
    "cronjobs": ("batch", "cronjobs"),
    "namespaces": ("", "namespaces"),
    "nodes": ("", "nodes"),
}
# What the pods-to-workload join and the CPU and memory queries read: kube_pod_owner and the pods'
# requests and limits (pods), kube_replicaset_owner (replicasets); the workloads' own series too.
DEFAULT_COLLECTORS = ("pods", "replicasets", "deployments", "statefulsets")


def binary() -> Path:
    """kube-state-metrics from the build cache (built on first use)."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "ksm"], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1]) / "kube-state-metrics"


def cluster_role_rules(collectors: Sequence[str]) -> list[dict[str, Any]]:
    """list and watch of each collector's resource, one rule per API group (upstream's layout)."""
    by_group: dict[str, list[str]] = {}
    for collector in collectors:
        group, resource = COLLECTOR_RESOURCES[collector]
        by_group.setdefault(group, []).append(resource)
    return [
        {"apiGroups": [group], "resources": sorted(resources), "verbs": ["list", "watch"]}
        for group, resources in sorted(by_group.items())
    ]


def rbac_manifests(collectors: Sequence[str], namespace: str = NAMESPACE, name: str = NAME) -> list[dict[str, Any]]:
    """The ServiceAccount, ClusterRole and ClusterRoleBinding it runs with."""
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": cluster_role_rules(collectors),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


class KubeStateMetrics:
    """One kube-state-metrics process against `cluster`; start() returns once it answers /livez
    (its liveness probe: the API server reachable with its token) and /readyz (it has metrics)."""

    def __init__(
        self, cluster: LocalCluster, collectors: Sequence[str] = DEFAULT_COLLECTORS, *, token_duration: str = "24h"
    ) -> None:
        unknown = set(collectors) - COLLECTOR_RESOURCES.keys()
        if unknown:
            raise ValueError(f"no RBAC known for collectors {sorted(unknown)}")
        self.cluster = cluster
        self.collectors = tuple(collectors)
        self.token_duration = token_duration  # a token in a kubeconfig is not refreshed: outlive the session
        self.port, self.telemetry_port = free_port(), free_port()
        self.process: Process | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def scrape_job(self, job_name: str = JOB) -> dict[str, Any]:
        """A static scrape config for it. honor_labels keeps its `namespace`, `pod`, ... labels
        (they describe the objects, not the target), as kube-prometheus' ServiceMonitor does."""
        return {"job_name": job_name, "honor_labels": True, "static_configs": [{"targets": [self.target]}]}

    def start(self) -> KubeStateMetrics:
        manifests = rbac_manifests(self.collectors)
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))
        env = self.cluster.env_for_service_account(NAMESPACE, NAME, duration=self.token_duration)
        self.process = Process(
            "kube-state-metrics",
            [
                str(binary()),
                f"--kubeconfig={env['KUBECONFIG']}",
                "--host=127.0.0.1", f"--port={self.port}",
                "--telemetry-host=127.0.0.1", f"--telemetry-port={self.telemetry_port}",
                f"--resources={','.join(self.collectors)}",
            ],
            self.cluster.logs,
        ).start()
        try:
            wait_until(self._ready, 60, "kube-state-metrics", self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        return self._status(self.port, "/livez") == 200 and self._status(self.telemetry_port, "/readyz") == 200

    @staticmethod
    def _status(port: int, path: str) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status

    def metrics(self) -> str:
        """Its /metrics text, as Prometheus reads it."""
        with urllib.request.urlopen(f"http://{self.target}/metrics", timeout=10) as response:
            return response.read().decode()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def __enter__(self) -> KubeStateMetrics:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
