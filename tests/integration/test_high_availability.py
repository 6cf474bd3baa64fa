"""Two operator replicas against the real control plane: one acts, the other takes over when it dies,
and no scale is ever performed twice."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.cluster_fixtures import eventually
from tests.support.flows import POLL, Flow, flow_manifest, set_depth

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

LEASE_DURATION = 4  # seconds; production default is 15


def lease_holder(cluster, namespace: str) -> str | None:
    out = cluster.kubectl("get", "lease", "flowkeeper", "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout)["spec"].get("holderIdentity") if out.returncode == 0 else None


def deployment_generation(cluster, namespace: str, name: str) -> int:
    out = cluster.kubectl("get", "deployment", name, "-n", namespace, "-o", "jsonpath={.metadata.generation}")
    return int(out.stdout)


def test_one_replica_acts_the_other_takes_over_and_nothing_is_scaled_twice(
    cluster, namespace, run_operator, prometheus, fresh_exporter, unique
) -> None:
    queue = f"{unique}-ha"
    set_depth(fresh_exporter, queue, 50)
    cluster.kubectl("create", "deployment", "consumer", "-n", namespace, "--image=example/consumer:1", "--replicas=1")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=flow_manifest("consumer", queue, {"maxReplicas": 10}))
    flow = Flow(cluster, namespace, "consumer")
    prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{queue}"}} == 50')

    def replica(identity: str):
        return run_operator(
            "-n", namespace, f"--prometheus-url={prometheus.url}", f"--lease-namespace={namespace}",
            f"--identity={identity}", f"--lease-duration={LEASE_DURATION}", standalone=False,
        )

    first = replica("replica-a")
    eventually(lambda: lease_holder(cluster, namespace) == "replica-a", timeout=15, what="replica-a leads")
    second = replica("replica-b")
    eventually(lambda: flow.condition("MetricsAvailable").get("status") == "True", timeout=20, what="the leader read metrics")
    generation_at_start = deployment_generation(cluster, namespace, "consumer")

    set_depth(fresh_exporter, queue, 620)
    flow.wait_replicas(7, timeout=POLL + 8)
    time.sleep(2 * POLL)  # the standby has had time to act, were it going to
    assert (first.metric("flowkeeper_leader"), second.metric("flowkeeper_leader")) == (1, 0)
    assert second.metric("flowkeeper_kubernetes_writes_total") == 0, "the standby wrote to the cluster"
    assert (first.metric("flowkeeper_flows"), second.metric("flowkeeper_flows")) == (1, 0)  # flows counted once
    assert first.metric("flowkeeper_scale_actions_total") == 1
    assert lease_holder(cluster, namespace) == "replica-a"

    # The active replica dies without a word (SIGKILL): the standby waits out the lease and takes over.
    first.kill()
    killed = time.monotonic()
    eventually(lambda: lease_holder(cluster, namespace) == "replica-b", timeout=4 * LEASE_DURATION, interval=0.1, what="takeover")
    takeover = time.monotonic() - killed
    eventually(lambda: second.metric("flowkeeper_leader") == 1, timeout=5, interval=0.1, what="replica-b leading")
    print(f"takeover after SIGKILL: {takeover:.2f}s (lease duration {LEASE_DURATION}s)")
    assert LEASE_DURATION * 0.9 <= takeover <= LEASE_DURATION + 3

    # The new leader finds the flow already at 7 and leaves it: no second scale for the same backlog.
    time.sleep(3 * POLL)
    assert flow.replicas() == 7
    assert second.metric("flowkeeper_scale_actions_total") == 0

    # And it does act on what changes next.
    set_depth(fresh_exporter, queue, 900)
    flow.wait_replicas(9, timeout=POLL + 8)
    assert second.metric("flowkeeper_scale_actions_total") == 1
    # Every change of spec.replicas bumps the generation: two changes, one by each leader in turn.
    assert deployment_generation(cluster, namespace, "consumer") - generation_at_start == 2

    # A clean shutdown hands the lease back: a third replica takes over within a retry period or two.
    third = replica("replica-c")
    time.sleep(1)
    second.stop()
    stopped = time.monotonic()
    eventually(lambda: lease_holder(cluster, namespace) == "replica-c", timeout=LEASE_DURATION + 3, interval=0.1, what="handover")
    handover = time.monotonic() - stopped
    print(f"takeover after a clean stop: {handover:.2f}s")
    assert handover < LEASE_DURATION
    eventually(lambda: third.metric("flowkeeper_leader") == 1, timeout=5, interval=0.1, what="replica-c leading")
    assert flow.replicas() == 9
