"""The operator's API client keeps as many connections as its callers use at once."""

from __future__ import annotations

import yaml

from flowkeeper.adapters.kubernetes import load_client_config


def test_the_connection_pool_holds_every_concurrent_caller(tmp_path, monkeypatch) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "admin", "user": {"token": "t"}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
    }))
    from kubernetes.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))  # read from KUBECONFIG at import
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    client = load_client_config(connections=24)

    assert client.configuration.connection_pool_maxsize == 24
    assert client.configuration.host == "https://127.0.0.1:6443"
    assert client.rest_client.pool_manager.connection_pool_kw["maxsize"] == 24
