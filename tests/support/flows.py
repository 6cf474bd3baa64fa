"""Helpers for tests that run flows end to end: manifests, and a handle on one flow and its scale target."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.support.cluster_fixtures import eventually
from tests.support.exporter import MetricsExporter

POLL = 2  # pollInterval of test flows, seconds; the test Prometheus scrapes every second
SCRAPE = 1


def flow_manifest(name: str, queue: str, scaling: dict[str, Any] | None = None, **spec: Any) -> str:
    """A RabbitMQ flow consuming `queue` with Deployment `name` (scaleTargetRef's defaults); `spec` adds
    or replaces fields."""
    return json.dumps({
        "apiVersion": "flowkeeper.io/v1alpha1",
        "kind": "IntegrationFlow",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"name": name},
            "source": {"broker": "rabbitmq", "vhost": "/", "queue": queue, "integration": name},
            "scaling": {"pollInterval": f"{POLL}s", **(scaling or {})},
            **spec,
        },
    })


def set_depth(exporter: MetricsExporter, queue: str, value: float) -> None:
    exporter.set("rabbitmq_queue_messages_ready", {"vhost": "/", "queue": queue}, value)


def container(name: str = "consumer", *, cpu_request: str | None = None, memory_limit: str | None = None) -> dict[str, Any]:
    """A container of a kwok pod (the image is never pulled), with a CPU request and a memory limit
    when given (the API defaults the memory request to the limit)."""
    resources: dict[str, dict[str, str]] = {}
    if cpu_request:
        resources["requests"] = {"cpu": cpu_request}
    if memory_limit:
        resources["limits"] = {"memory": memory_limit}
    return {"name": name, "image": "example/consumer:1", **({"resources": resources} if resources else {})}


def _pod_template(name: str, containers: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": name}}, "spec": {"containers": containers or [container()]}}


def deployment_manifest(name: str, replicas: int, containers: list[dict[str, Any]] | None = None) -> str:
    """A Deployment whose pods kwok runs (one container `consumer` unless given)."""
    return json.dumps({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": _pod_template(name, containers)},
    })


def statefulset_manifest(name: str, replicas: int, containers: list[dict[str, Any]] | None = None) -> str:
    """A StatefulSet whose pods kwok runs; Parallel so that scaling does not wait pod by pod."""
    return json.dumps({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": _pod_template(name, containers),
        },
    })


class Flow:
    def __init__(self, cluster, namespace: str, name: str, kind: str = "deployment") -> None:
        self.cluster, self.namespace, self.name, self.kind = cluster, namespace, name, kind

    def replicas(self) -> int:
        return self.replicas_of(self.name, self.kind)

    def replicas_of(self, target: str, kind: str = "deployment") -> int:
        out = self.cluster.kubectl("get", kind, target, "-n", self.namespace, "-o", "jsonpath={.spec.replicas}")
        return int(out.stdout)

    def status(self) -> dict:
        body = self.cluster.kubectl("get", "iflow", self.name, "-n", self.namespace, "-o", "json").stdout
        return json.loads(body).get("status", {})

    def condition(self, type_: str) -> dict:
        return next((c for c in self.status().get("conditions", []) if c["type"] == type_), {})

    def wait_replicas(self, n: int, timeout: float) -> float:
        started = time.monotonic()
        eventually(lambda: self.replicas() == n, timeout=timeout, interval=0.1, what=f"{self.name} at {n} replicas")
        return time.monotonic() - started
