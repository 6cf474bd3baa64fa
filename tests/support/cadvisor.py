"""Prometheus scraping a real kubelet's cAdvisor endpoint as in a cluster: https on the node's
address and the kubelet port, path /metrics/cadvisor, with credentials the kubelet checks through the
API server (a ServiceAccount's bearer token, via TokenReview, or a client certificate of the cluster
CA) and authorises through it too (Webhook: `get` on `nodes/metrics`, the subresource the kubelet
asks about for /metrics/*). The kubelet answers 401 without credentials and 403 without that grant.

    token = scraper_token(cluster, workdir)                  # ServiceAccount monitoring/prometheus
    prometheus.add_scrape_job(cadvisor_scrape_job(node.node_ip, node.name, token_file=token,
                                                  ca_file=node_ca, server_name=node.name))
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.cluster import LocalCluster

KUBELET_PORT = 10250
METRICS_PATH = "/metrics/cadvisor"
JOB = "kubelet-cadvisor"
SCRAPER_NAMESPACE = "monitoring"
SCRAPER_NAME = "prometheus"


def scraper_account_manifests(namespace: str = SCRAPER_NAMESPACE, name: str = SCRAPER_NAME) -> list[dict[str, Any]]:
    """The namespace and ServiceAccount Prometheus runs as."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
    ]


def scraper_rbac_manifests(namespace: str = SCRAPER_NAMESPACE, name: str = SCRAPER_NAME) -> list[dict[str, Any]]:
    """What the kubelet's Webhook authoriser asks for /metrics/cadvisor, and nothing more: get of
    nodes/metrics (kube-prometheus' Prometheus role grants the same for the kubelet's endpoints)."""
    role = f"{namespace}-{name}-kubelet-metrics"
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": role},
            "rules": [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


def _apply(cluster: LocalCluster, manifests: list[dict[str, Any]]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))


def scraper_token(cluster: LocalCluster, folder: Path, *, grant: bool = True, duration: str = "24h") -> Path:
    """A token file of Prometheus' ServiceAccount (made if missing); `grant` also binds it to what
    the kubelet asks for. Prometheus rereads the file at every scrape."""
    _apply(cluster, scraper_account_manifests())
    if grant:
        _apply(cluster, scraper_rbac_manifests())
    path = folder / f"{SCRAPER_NAMESPACE}-{SCRAPER_NAME}.token"
    path.write_text(cluster.service_account_token(SCRAPER_NAMESPACE, SCRAPER_NAME, duration))
    path.chmod(0o600)
    return path


def _host_port(address: str, port: int) -> str:
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]:{port}"
    except ValueError:  # a host name
        pass
    return f"{address}:{port}"


def cadvisor_scrape_job(
    node_address: str,
    node_name: str,
    *,
    token_file: Path | None = None,
    client_cert: tuple[Path, Path] | None = None,
    ca_file: Path | None = None,
    server_name: str | None = None,
    port: int = KUBELET_PORT,
    job_name: str = JOB,
) -> dict[str, Any]:
    """The scrape config of one kubelet's cAdvisor endpoint.

    Credentials: exactly one of `token_file` (a bearer token) or `client_cert` (certificate and key
    files). `ca_file` verifies the kubelet's serving certificate (`server_name`: the name it holds);
    without it the certificate is not verified, as kube-prometheus does for kubelets that serve a
    self-signed one. honor_labels keeps cAdvisor's own `namespace`, `pod` and `container`; the
    target's labels name the node and the path, as kube-prometheus' relabelling does."""
    if (token_file is None) == (client_cert is None):
        raise ValueError("give exactly one of token_file or client_cert")
    tls: dict[str, Any] = {"ca_file": str(ca_file)} if ca_file else {"insecure_skip_verify": True}
    if ca_file and server_name:
        tls["server_name"] = server_name
    job: dict[str, Any] = {
        "job_name": job_name,
        "scheme": "https",
        "metrics_path": METRICS_PATH,
        "honor_labels": True,
        "tls_config": tls,
        "static_configs": [{"targets": [_host_port(node_address, port)], "labels": {"node": node_name, "metrics_path": METRICS_PATH}}],
    }
    if token_file is not None:
        job["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
    else:
        cert, key = client_cert  # type: ignore[misc]
        tls.update(cert_file=str(cert), key_file=str(key))
    return job
