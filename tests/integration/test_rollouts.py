"""Argo Rollouts as scale targets, against a real API server that serves the Rollout resource (its CRD,
no Argo controller) and a real Prometheus."""

from __future__ import annotations

import time

import pytest

from tests.support.cluster_fixtures import eventually
from tests.support.flows import POLL, SCRAPE, Flow, flow_manifest, set_depth
from tests.support.rollouts import RESOURCE, rollout_manifest, set_rollout_status

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

ROLLOUT_REF = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "consumer"}


@pytest.fixture
def rollout(cluster, rollout_crd, namespace) -> str:
    """Rollout `consumer` at 1 replica in the test's namespace."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=rollout_manifest("consumer", 1))
    return "consumer"


def rollout_managers(kubectl_json, namespace: str) -> list[dict]:
    return kubectl_json("get", RESOURCE, "consumer", "-n", namespace, "--show-managed-fields")["metadata"]["managedFields"]


def test_a_rollout_is_scaled_through_its_scale_subresource(
    cluster, rollout, run_operator, namespace, prometheus, fresh_exporter, unique, kubectl_json
) -> None:
    queue = f"{unique}-ro"
    set_depth(fresh_exporter, queue, 50)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=flow_manifest("consumer", queue, {"maxReplicas": 10}, scaleTargetRef=ROLLOUT_REF))
    flow = Flow(cluster, namespace, "consumer", kind=RESOURCE)
    prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{queue}"}} == 50')
    run_operator("-n", namespace, f"--prometheus-url={prometheus.url}", "--watch-rollouts")
    found = eventually(lambda: (c := flow.condition("Ready")).get("status") == "True" and c, timeout=20, what="Rollout found")
    assert (found["reason"], found["message"]) == ("TargetFound", f"Rollout {namespace}/consumer found")
    assert flow.replicas() == 1  # a backlog of 50 wants no more than the one it has

    scale_writes = cluster.write_requests("rollouts", "scale")
    set_depth(fresh_exporter, queue, 620)
    flow.wait_replicas(7, timeout=POLL + 2 * SCRAPE + 8)
    # Counted where the API server served it: the other test's "never written" relies on this counter.
    assert cluster.write_requests("rollouts", "scale") > scale_writes
    status = flow.status()
    assert status["desiredReplicas"] == 7 and "backlog 620" in status["lastScaleReason"]
    # The write went through /scale under Flowkeeper's name; the Rollout's own fields stay kubectl's.
    managers = rollout_managers(kubectl_json, namespace)
    scale = [m for m in managers if m["manager"] == "flowkeeper"]
    assert [m.get("subresource") for m in scale] == ["scale"], managers
    assert "f:replicas" in scale[0]["fieldsV1"]["f:spec"]
    assert kubectl_json("get", RESOURCE, "consumer", "-n", namespace)["spec"]["strategy"]["canary"]["steps"][0] == {"setWeight": 20}

    # No Argo controller runs: the status it would write reaches the flow through the Rollout watch.
    assert status.get("readyReplicas") == 0
    set_rollout_status(cluster, namespace, "consumer", replicas=7, ready=7)
    eventually(lambda: flow.status().get("readyReplicas") == 7, timeout=POLL + 10, what="the Rollout's readiness in the flow's status")
    assert flow.status()["replicas"] == 7


def test_without_watch_rollouts_a_rollout_target_is_reported_and_never_written(
    cluster, rollout, run_operator, namespace, prometheus, fresh_exporter, unique, kubectl_json
) -> None:
    # The Rollout exists and the backlog wants 7, but an operator that does not watch Rollouts cannot
    # see it: the flow says so (not "not found", not paused) and nothing is written.
    queue = f"{unique}-ro"
    set_depth(fresh_exporter, queue, 620)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=flow_manifest("consumer", queue, {"maxReplicas": 10}, scaleTargetRef=ROLLOUT_REF))
    flow = Flow(cluster, namespace, "consumer", kind=RESOURCE)
    prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{queue}"}} == 620')
    before = kubectl_json("get", RESOURCE, "consumer", "-n", namespace)["metadata"]["resourceVersion"]
    # Flowkeeper writes a Rollout only through /scale (others' cleanups delete Rollouts meanwhile);
    # the counter is cluster-wide, and this test's operator is the only one running.
    writes = cluster.write_requests("rollouts", "scale")
    run_operator("-n", namespace, f"--prometheus-url={prometheus.url}")

    ready = eventually(lambda: (c := flow.condition("Ready")).get("reason") == "TargetKindNotWatched" and c, timeout=20, what="reported")
    assert ready["status"] == "False" and "--watch-rollouts" in ready["message"]
    status = flow.status()
    assert status["phase"] == "Pending" and "pause" not in status and "desiredReplicas" not in status

    time.sleep(3 * POLL)  # passes with the backlog still there
    assert cluster.write_requests("rollouts", "scale") == writes
    rollout_now = kubectl_json("get", RESOURCE, "consumer", "-n", namespace, "--show-managed-fields")
    assert rollout_now["metadata"]["resourceVersion"] == before and rollout_now["spec"]["replicas"] == 1
    assert not [m for m in rollout_now["metadata"]["managedFields"] if m["manager"] == "flowkeeper"]


def test_a_rollout_and_a_deployment_of_the_same_name_are_two_targets(
    cluster, rollout, run_operator, namespace, prometheus, fresh_exporter, unique, kubectl_json
) -> None:
    # Two flows, one per kind, both named consumer: neither claims the other's target.
    cluster.kubectl("create", "deployment", "consumer", "-n", namespace, "--image=example/consumer:1", "--replicas=1")
    deployment_ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "consumer"}
    flows = {}
    for name, ref, depth in (("via-rollout", ROLLOUT_REF, 620), ("via-deployment", deployment_ref, 320)):
        queue = f"{unique}-{name}"
        set_depth(fresh_exporter, queue, depth)
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=flow_manifest(name, queue, {"maxReplicas": 10}, scaleTargetRef=ref))
        prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{queue}"}} == {depth}')
        flows[name] = Flow(cluster, namespace, name)
    run_operator("-n", namespace, f"--prometheus-url={prometheus.url}", "--watch-rollouts")

    via_rollout, via_deployment = flows["via-rollout"], flows["via-deployment"]
    eventually(lambda: via_rollout.replicas_of("consumer", RESOURCE) == 7, timeout=POLL + 2 * SCRAPE + 15, what="Rollout at 7")
    eventually(lambda: via_deployment.replicas_of("consumer", "deployment") == 4, timeout=POLL + 2 * SCRAPE + 15, what="Deployment at 4")
    for flow, kind in ((via_rollout, "Rollout"), (via_deployment, "Deployment")):
        ready = flow.condition("Ready")
        assert (ready["reason"], ready["message"]) == ("TargetFound", f"{kind} {namespace}/consumer found"), ready
    time.sleep(2 * POLL)  # each count stays where its own flow put it
    assert via_rollout.replicas_of("consumer", RESOURCE) == 7
    assert via_deployment.replicas_of("consumer", "deployment") == 4
    for resource in (RESOURCE, "deployment"):
        managers = kubectl_json("get", resource, "consumer", "-n", namespace, "--show-managed-fields")["metadata"]["managedFields"]
        assert any(m["manager"] == "flowkeeper" and m.get("subresource") == "scale" for m in managers), (resource, managers)
