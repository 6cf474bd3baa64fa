"""The install, upgrade and uninstall commands of docs/operations.md, run with the real helm against
the local control plane."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.support.chart import CHART
from tests.support.chart import helm as run_helm
from tests.support.flows import flow_manifest

pytestmark = [pytest.mark.cluster]


def test_install_upgrade_uninstall_as_documented(cluster, tmp_path: Path) -> None:
    namespace = f"flowkeeper-system-{uuid.uuid4().hex[:6]}"
    env = {**cluster.env, **{f"HELM_{kind}_HOME": str(tmp_path / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}}

    def helm(*args: str) -> str:
        return run_helm(*args, env=env)

    def deployment() -> dict:
        return json.loads(cluster.kubectl("get", "deployment", "flowkeeper", "-n", namespace, "-o", "json").stdout)

    notes = helm(
        "install", "flowkeeper", str(CHART), "-n", namespace, "--create-namespace",
        "--set", "image.repository=example/flowkeeper", "--set", "prometheus.url=http://prometheus-operated.monitoring:9090",
    )
    try:
        assert "kubectl -n" in notes and "lease" in notes.lower()  # NOTES.txt says how to see who leads
        assert deployment()["spec"]["replicas"] == 2
        args = deployment()["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--lease-name=flowkeeper" in args
        cluster.kubectl("get", "clusterrole", "flowkeeper")
        cluster.kubectl("create", "deployment", "orders", "-n", namespace, "--image=example/consumer:1")
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=flow_manifest("orders", "orders"))

        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
        helm("upgrade", "flowkeeper", str(CHART), "-n", namespace, "--reuse-values", "--set", "replicaCount=3")
        assert deployment()["spec"]["replicas"] == 3
        assert "prometheus-operated" in json.dumps(deployment()["spec"]["template"]["spec"]["containers"][0])
    finally:
        helm("uninstall", "flowkeeper", "-n", namespace)

    assert cluster.kubectl("get", "deployment", "flowkeeper", "-n", namespace, check=False).returncode != 0
    assert cluster.kubectl("get", "clusterrole", "flowkeeper", check=False).returncode != 0
    # The flows and the CRD stay: uninstalling the operator must not delete anyone's integrations.
    cluster.kubectl("get", "crd", "integrationflows.flowkeeper.io")
    cluster.kubectl("get", "integrationflow", "orders", "-n", namespace)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")
