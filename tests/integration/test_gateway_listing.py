"""LISTs in pages against the real API server: every object once, and one resourceVersion for the store."""

from __future__ import annotations

from kubernetes import config as k8s_config

from flowkeeper.adapters.kubernetes import KubernetesGateway


def test_a_listing_in_pages_holds_every_object_once_at_the_first_pages_version(cluster, namespace) -> None:
    names = [f"consumer-{i}" for i in range(7)]
    for name in names:
        cluster.kubectl("create", "deployment", name, "-n", namespace, "--image=example/consumer:1")
    gateway = KubernetesGateway(k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig_path)), list_page=3)

    listing = gateway.list_objects("deployments", (namespace,))

    listed = [item["metadata"]["name"] for item in listing.items]
    assert sorted(listed) == sorted(names)  # 3 + 3 + 1, none twice
    assert all(int(item["metadata"]["resourceVersion"]) <= int(listing.versions[namespace]) for item in listing.items)


def test_a_cluster_wide_listing_in_pages_reaches_past_the_first_page(cluster, namespace) -> None:
    for i in range(5):
        cluster.kubectl("create", "deployment", f"wide-{i}", "-n", namespace, "--image=example/consumer:1")
    gateway = KubernetesGateway(k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig_path)), list_page=2)

    listing = gateway.list_objects("deployments", ())

    mine = [item["metadata"]["name"] for item in listing.items if item["metadata"]["namespace"] == namespace]
    assert sorted(mine) == [f"wide-{i}" for i in range(5)]
    uids = [item["metadata"]["uid"] for item in listing.items]
    assert len(uids) == len(set(uids))
    assert listing.versions[None]


def test_a_listing_keeps_what_keep_makes_of_each_object_page_by_page(cluster, namespace) -> None:
    from flowkeeper.api.v1alpha1 import DEPLOYMENT
    from flowkeeper.domain.flow import TargetRecord, target_from_body

    for i in range(5):
        cluster.kubectl("create", "deployment", f"kept-{i}", "-n", namespace, "--image=example/consumer:1")
    gateway = KubernetesGateway(k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig_path)), list_page=2)
    pages_seen = []

    def keep(body):
        pages_seen.append(body["metadata"]["name"])
        return target_from_body(body, DEPLOYMENT)

    listing = gateway.list_objects("deployments", (namespace,), keep)

    assert all(isinstance(item, TargetRecord) for item in listing.items)
    assert sorted(item.name for item in listing.items) == sorted(pages_seen) == [f"kept-{i}" for i in range(5)]
    assert all(item.spec_replicas == 1 and item.namespace == namespace for item in listing.items)
