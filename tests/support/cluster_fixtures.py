"""pytest fixtures for the real local control plane (one per test session) and per-test namespaces."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import REPO, LocalCluster
from tests.support.operator import OperatorProcess
from tests.support.real_node import RealNode
from tests.support.rollouts import CRD_NAME as ROLLOUT_CRD_NAME, ROLLOUT_CRD

CRD_FILE = REPO / "crds" / "flowkeeper.io_integrationflows.yaml"
REDRIVE_CRD_FILE = REPO / "crds" / "flowkeeper.io_deadletterredrives.yaml"


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster() as local:
        local.kubectl("apply", "-f", str(CRD_FILE), "-f", str(REDRIVE_CRD_FILE))
        local.kubectl(
            "wait", "--for=condition=Established", "crd/integrationflows.flowkeeper.io", "crd/deadletterredrives.flowkeeper.io", "--timeout=60s"
        )
        yield local


@pytest.fixture(scope="session")
def real_node_cluster() -> Iterator[LocalCluster]:
    """A control plane of its own with one real node beside kwok (LocalCluster(real_node=True)),
    started only when a test asks for it: the kwok-only `cluster` stays as it is for every other test."""
    if os.geteuid() != 0:
        pytest.skip("the real node makes a network namespace and cgroups: it needs root")
    with LocalCluster(real_node=True) as local:
        local.kubectl("apply", "-f", str(CRD_FILE), "-f", str(REDRIVE_CRD_FILE))
        local.kubectl(
            "wait", "--for=condition=Established", "crd/integrationflows.flowkeeper.io", "crd/deadletterredrives.flowkeeper.io", "--timeout=60s"
        )
        yield local


@pytest.fixture(scope="session")
def real_node(real_node_cluster: LocalCluster) -> RealNode:
    """The real node of `real_node_cluster` (kubelet, containerd, kube-proxy); import_image() puts a
    locally built image on it, pod_overrides() lets a pod spec run there."""
    assert real_node_cluster.real_node is not None
    return real_node_cluster.real_node


@pytest.fixture(scope="session")
def rollout_crd(cluster: LocalCluster) -> str:
    """The Argo Rollouts CRD, installed when a test first asks for it (never by `cluster`, which the
    other tests share) and then left alone for the session: no test changes or deletes it. `apply` is
    idempotent, so a cluster that already has it keeps it."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(ROLLOUT_CRD))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{ROLLOUT_CRD_NAME}", "--timeout=60s")
    return ROLLOUT_CRD_NAME


def _temporary_namespace(cluster: LocalCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    """A namespace of its own in `cluster`, deleted after the test."""
    yield from _temporary_namespace(cluster)


@pytest.fixture
def real_node_namespace(real_node_cluster: LocalCluster) -> Iterator[str]:
    """A namespace of its own in `real_node_cluster`, deleted after the test."""
    yield from _temporary_namespace(real_node_cluster)


@pytest.fixture
def kubectl_json(cluster: LocalCluster) -> Callable[..., Any]:
    def get(*args: str) -> Any:
        return json.loads(cluster.kubectl(*args, "-o", "json").stdout)

    return get


@pytest.fixture
def run_operator(cluster: LocalCluster, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def start(*args: str, standalone: bool = True, env: dict[str, str] | None = None) -> OperatorProcess:
        """`env` adds variables (e.g. OTEL_*) to the cluster's environment."""
        operator = OperatorProcess(
            {**cluster.env, **(env or {})}, tmp_path, *args, name=f"flowkeeper-{len(started)}", standalone=standalone
        ).start()
        started.append(operator)
        return operator

    yield start
    for operator in started:
        operator.stop()


def eventually(check: Callable[[], Any], timeout: float = 30, interval: float = 0.3, what: str = "condition") -> Any:
    """Retries `check` until it returns a truthy value; fails with the last value or error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (AssertionError, KeyError, IndexError, RuntimeError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s; last: {last!r}")
