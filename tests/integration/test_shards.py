"""Shards (--selector): each operator serves only the flows whose labels match, a relabelled flow
changes hands without being taken for deleted, and the matcher agrees with the API server's own
label selectors. Against the real control plane and Prometheus."""

from __future__ import annotations

import json
import time

import pytest

from flowkeeper.domain.selector import parse
from tests.support.flows import POLL, SCRAPE, Flow, flow_manifest, set_depth

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]


def labelled_flow(cluster, namespace, exporter, unique, name: str, labels: dict[str, str], backlog: float = 50) -> tuple[Flow, str]:
    queue = f"{unique}-{name}"
    set_depth(exporter, queue, backlog)
    cluster.kubectl("create", "deployment", name, "-n", namespace, "--image=example/consumer:1", "--replicas=1")
    manifest = json.loads(flow_manifest(name, queue, {"maxReplicas": 10}))
    manifest["metadata"]["labels"] = labels
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    return Flow(cluster, namespace, name), queue


def scaled_flows(operator) -> set[str]:
    return {json.loads(line).get("flow") for line in operator.log().splitlines() if '"scaled"' in line}


def test_two_shards_serve_their_own_flows_and_a_relabelled_flow_changes_hands(
    cluster, namespace, fresh_exporter, prometheus, unique, run_operator, kubectl_json
) -> None:
    a, queue_a = labelled_flow(cluster, namespace, fresh_exporter, unique, "orders", {"shard": "a"})
    b, queue_b = labelled_flow(cluster, namespace, fresh_exporter, unique, "invoices", {"shard": "b"})
    nobody, queue_n = labelled_flow(cluster, namespace, fresh_exporter, unique, "unsharded", {})
    prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{queue_b}"}} == 50')
    shard_a = run_operator("-n", namespace, f"--prometheus-url={prometheus.url}", "--selector", "shard=a")
    shard_b = run_operator("-n", namespace, f"--prometheus-url={prometheus.url}", "--selector=shard in (b)")

    set_depth(fresh_exporter, queue_a, 620)
    set_depth(fresh_exporter, queue_b, 320)
    set_depth(fresh_exporter, queue_n, 820)
    a.wait_replicas(7, timeout=POLL + 2 * SCRAPE + 8)
    b.wait_replicas(4, timeout=POLL + 2 * SCRAPE + 8)
    assert scaled_flows(shard_a) == {"orders"} and scaled_flows(shard_b) == {"invoices"}
    time.sleep(POLL + 2 * SCRAPE)
    assert nobody.replicas() == 1 and "observedGeneration" not in nobody.status()  # no shard serves it

    # Relabelled from b to a: a takes it, b lets it go (neither says it was deleted).
    cluster.kubectl("label", "iflow", "invoices", "-n", namespace, "shard=a", "--overwrite")
    set_depth(fresh_exporter, queue_b, 920)
    b.wait_replicas(10, timeout=POLL + 2 * SCRAPE + 8)
    assert "invoices" in scaled_flows(shard_a)
    assert scaled_flows(shard_b) == {"invoices"}  # from before the relabel only
    events = kubectl_json("get", "events", "-n", namespace)["items"]
    assert not [e for e in events if e["reason"] == "PausedFlowDeleted"]
    assert b.status()["desiredReplicas"] == 10


def test_the_selector_matches_what_the_api_server_selects(cluster, namespace, kubectl_json) -> None:
    labelled = {
        "none": {},
        "a": {"shard": "a"},
        "b": {"shard": "b", "team": "pay"},
        "c": {"shard": "c", "team": "ship", "example.com/tier": "gold"},
        "empty": {"shard": ""},
    }
    for name, labels in labelled.items():
        manifest = json.loads(flow_manifest(name, f"q-{name}"))
        manifest["metadata"]["labels"] = labels
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    selectors = [
        "shard=a", "shard==b", "shard!=a", "shard", "!shard", "shard in (a, c)", "shard notin (a,c)", "team,shard!=c",
        "example.com/tier=gold", "example.com/tier!=gold", "shard=", "shard in (a,b),team notin (ship)", " shard = a ",
    ]
    for text in selectors:
        served = kubectl_json("get", "iflow", "-n", namespace, "-l", text)["items"]
        by_server = {item["metadata"]["name"] for item in served}
        ours = {name for name, labels in labelled.items() if parse(text).matches(labels)}
        assert ours == by_server, text
