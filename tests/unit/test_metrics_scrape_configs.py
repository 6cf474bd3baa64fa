"""The scrape configurations of the resource signals' sources (a kubelet's cAdvisor endpoint,
kube-state-metrics) and the RBAC they run with: their shape, and promtool's verdict on a
prometheus.yml made of them. Scraping them for real: tests/integration/test_kube_state_metrics.py
and test_real_node_cpu.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.cadvisor import METRICS_PATH, cadvisor_scrape_job, scraper_rbac_manifests
from tests.support.kube_state_metrics import COLLECTOR_RESOURCES, DEFAULT_COLLECTORS, cluster_role_rules
from tests.support.prometheus import prometheus_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def credentials(tmp_path: Path) -> dict[str, Path]:
    files = {name: tmp_path / name for name in ("token", "ca.crt", "client.crt", "client.key")}
    for path in files.values():
        path.write_text("placeholder\n")  # promtool checks that the files exist
    return files


def test_cadvisor_job_with_a_bearer_token_and_a_verified_kubelet(credentials) -> None:
    job = cadvisor_scrape_job("10.213.0.2", "real-node-0", token_file=credentials["token"], ca_file=credentials["ca.crt"],
                              server_name="real-node-0")
    assert job == {
        "job_name": "kubelet-cadvisor",
        "scheme": "https",
        "metrics_path": "/metrics/cadvisor",
        "honor_labels": True,
        "authorization": {"type": "Bearer", "credentials_file": str(credentials["token"])},
        "tls_config": {"ca_file": str(credentials["ca.crt"]), "server_name": "real-node-0"},
        "static_configs": [{"targets": ["10.213.0.2:10250"], "labels": {"node": "real-node-0", "metrics_path": METRICS_PATH}}],
    }


def test_cadvisor_job_with_a_client_certificate_and_a_self_signed_kubelet(credentials) -> None:
    job = cadvisor_scrape_job("fd00::2", "n", client_cert=(credentials["client.crt"], credentials["client.key"]), port=10260)
    assert "authorization" not in job
    assert job["tls_config"] == {"insecure_skip_verify": True, "cert_file": str(credentials["client.crt"]),
                                 "key_file": str(credentials["client.key"])}
    assert job["static_configs"][0]["targets"] == ["[fd00::2]:10260"]


@pytest.mark.parametrize("given", [{}, {"both": True}])
def test_cadvisor_job_needs_exactly_one_credential(credentials, given) -> None:
    both = {"token_file": credentials["token"], "client_cert": (credentials["client.crt"], credentials["client.key"])} if given else {}
    with pytest.raises(ValueError, match="exactly one"):
        cadvisor_scrape_job("10.0.0.2", "n", **both)


def test_promtool_accepts_the_generated_config(tmp_path: Path, credentials) -> None:
    promtool = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").is_file() else None)
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: the prometheus package)")
    jobs = [
        cadvisor_scrape_job("10.213.0.2", "real-node-0", token_file=credentials["token"], ca_file=credentials["ca.crt"], server_name="x"),
        cadvisor_scrape_job("10.213.0.3", "other", client_cert=(credentials["client.crt"], credentials["client.key"]), job_name="other"),
        {"job_name": "kube-state-metrics", "honor_labels": True, "static_configs": [{"targets": ["127.0.0.1:8080"]}]},
    ]
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config(["127.0.0.1:9"], "1s", jobs, [ROOT / "charts" / "flowkeeper" / "files" / "alerts.yaml"]))
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_the_scraper_may_read_kubelet_metrics_and_nothing_else() -> None:
    role, binding = scraper_rbac_manifests()
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}]


def test_kube_state_metrics_lists_and_watches_only_its_collectors() -> None:
    assert cluster_role_rules(DEFAULT_COLLECTORS) == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "replicasets", "statefulsets"], "verbs": ["list", "watch"]},
    ]
    everything = cluster_role_rules(list(COLLECTOR_RESOURCES))
    assert sorted(r for rule in everything for r in rule["resources"]) == sorted(r for _, r in COLLECTOR_RESOURCES.values())


def test_the_pinned_kube_state_metrics_is_built_on_the_cluster_minor() -> None:
    versions = dict(line.split("=", 1) for line in (ROOT / "tests/cluster/versions.env").read_text().splitlines()
                    if "=" in line and not line.startswith("#"))
    k8s_minor = versions["K8S_VERSION"].split(".")[1]
    assert versions["KSM_CLIENT_GO_VERSION"].split(".")[1] == k8s_minor
    wrapper = (ROOT / "tests/cluster/go/ksm/go.mod").read_text()
    assert f"k8s.io/kube-state-metrics/v2 {versions['KSM_VERSION']}" in wrapper
    assert f"k8s.io/client-go {versions['KSM_CLIENT_GO_VERSION']}" in wrapper
