"""The demo's and the end-to-end test's real parts: a RabbitMQ broker, and simulated consumers that
follow a Deployment and export the metrics convention."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster_fixtures import eventually
from tests.support.consumers import CONFIGURATION_ERROR_ANNOTATION, ConsumerPool, DeploymentReader
from tests.support.prometheus import LocalPrometheus
from tests.support.rabbitmq import LocalRabbitMQ, depth, publish

pytestmark = pytest.mark.rabbitmq


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line), from ps."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        pid, ppid, args = (line.split(None, 2) + [""])[:3]
        table[int(pid)] = (int(ppid), args)
    return table


def _descendants(root: int, table: dict[int, tuple[int, str]]) -> set[int]:
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(child for child, (parent, _) in table.items() if parent == pid)
    return found


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_broker_starts_and_stops_leaving_no_process() -> None:
    started = time.monotonic()
    rabbitmq = LocalRabbitMQ().start()
    try:
        startup = time.monotonic() - started
        assert rabbitmq.ctl("ping", tool="rabbitmq-diagnostics").stdout.strip() == "Ping succeeded"
        table = _processes()
        assert rabbitmq.broker.popen and rabbitmq.epmd.popen
        ours = _descendants(rabbitmq.broker.popen.pid, table) | _descendants(rabbitmq.epmd.popen.pid, table)
        assert any("beam.smp" in table[pid][1] for pid in ours)
        ports = [rabbitmq.amqp_port, rabbitmq.dist_port, rabbitmq.epmd_port, rabbitmq.management_port, rabbitmq.prometheus_port]
        assert all(_listening(port) for port in ports)

        stopping = time.monotonic()
        rabbitmq.stop()
        print(f"rabbitmq started in {startup:.1f}s, stopped cleanly in {time.monotonic() - stopping:.1f}s")
        left = set(_processes()) & ours
        assert not left, f"still running after stop(): {[(pid, table[pid][1][:80]) for pid in left]}"
        assert not any(rabbitmq.node_name in args for _, args in _processes().values())
        assert not any(_listening(port) for port in ports)
    finally:
        rabbitmq.close()
    assert not rabbitmq.workdir.exists()


def test_a_pool_drains_the_queue_and_no_message_is_lost(broker: LocalRabbitMQ, queue: str) -> None:
    published = publish(broker.parameters, queue, 300)
    assert depth(broker.parameters, queue) == 300
    with ConsumerPool(broker.parameters, queue, "drain", rate_per_replica=50, dead_letter_fraction=0.1, replicas=3) as pool:
        started = time.monotonic()
        # 3 replicas x 50/s: 2 s of work; the bound leaves room for a loaded machine.
        eventually(lambda: sum((pool.counts.consumed, pool.counts.dead_lettered)) == published, timeout=30, what="drained")
        print(f"300 messages drained by 3 x 50/s in {time.monotonic() - started:.1f}s")
        assert pool.replicas == 3
    counts = pool.counts
    assert (counts.consumed, counts.dead_lettered, counts.configuration_errors) == (270, 30, 0)
    assert depth(broker.parameters, f"{queue}.dlq") == 30  # rejected messages are dead letters, not gone
    assert published == counts.consumed + counts.dead_lettered + depth(broker.parameters, queue)


def test_a_configuration_error_keeps_the_backlog_until_it_is_fixed(broker: LocalRabbitMQ, queue: str) -> None:
    publish(broker.parameters, queue, 40)
    with ConsumerPool(broker.parameters, queue, "broken", rate_per_replica=20, configuration_error=True, replicas=2) as pool:
        eventually(lambda: pool.counts.configuration_errors >= 10, timeout=15, what="configuration errors")
        assert (pool.counts.consumed, pool.counts.dead_lettered) == (0, 0)
        # Failed messages go back to the queue (at most one per replica is in a consumer's hands).
        assert depth(broker.parameters, queue) >= 40 - 2

        pool.configuration_error = False  # the fix is deployed
        eventually(lambda: pool.counts.consumed == 40, timeout=15, what="drained after the fix")
    assert depth(broker.parameters, queue) == 0 and depth(broker.parameters, f"{queue}.dlq") == 0


def test_the_consumers_export_the_metrics_convention(broker: LocalRabbitMQ, queue: str) -> None:
    publish(broker.parameters, queue, 20)
    with ConsumerPool(broker.parameters, queue, "orders", rate_per_replica=100, dead_letter_fraction=0.25, replicas=1) as pool:
        eventually(lambda: depth(broker.parameters, f"{queue}.dlq") == 5 and pool.counts.consumed == 15, timeout=15, what="drained")
        text = urllib.request.urlopen(pool.metrics_url, timeout=5).read().decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    integration = ("integration", "orders")
    assert samples[("flowkeeper_messages_processed_total", (integration, ("status", "success")))] == 15
    assert samples[("flowkeeper_messages_processed_total", (integration, ("status", "error")))] == 5
    assert samples[("flowkeeper_errors_total", (("class", "data"), integration))] == 5
    assert samples[("flowkeeper_errors_total", (("class", "configuration"), integration))] == 0  # there from the start
    assert samples[("flowkeeper_processing_seconds_count", (integration,))] == 20
    assert 20 * 0.01 <= samples[("flowkeeper_processing_seconds_sum", (integration,))] < 20 * 0.01 + 2
    assert time.time() - samples[("flowkeeper_last_success_timestamp_seconds", (integration,))] < 30


@pytest.mark.prometheus
def test_prometheus_reads_the_queue_depth_from_the_broker(broker: LocalRabbitMQ, queue: str) -> None:
    publish(broker.parameters, queue, 25)
    direct = urllib.request.urlopen(broker.prometheus_url, timeout=5).read().decode()
    eventually(lambda: f'rabbitmq_queue_messages_ready{{vhost="/",queue="{queue}"}} 25' in
               urllib.request.urlopen(broker.prometheus_url, timeout=5).read().decode(),
               timeout=10, what="per-queue series")  # statistics are refreshed every second
    assert "rabbitmq_queue_messages_ready{" in direct  # per object, not aggregated away
    with LocalPrometheus(targets=[broker.prometheus_scrape_target]) as prometheus:
        # The operator's own depth query (ready + unacked, by vhost and queue).
        result = prometheus.wait_for(
            f'sum by (vhost, queue) ({{__name__=~"rabbitmq_queue_messages_ready|rabbitmq_queue_messages_unacked", queue="{queue}"}})',
            lambda r: r and r[0]["value"][1] == "25",
        )
    assert result[0]["metric"] == {"vhost": "/", "queue": queue}


@pytest.mark.cluster
def test_the_pool_follows_the_ready_replicas_of_the_deployment(cluster, namespace, broker: LocalRabbitMQ, queue: str) -> None:
    cluster.kubectl("create", "deployment", "consumer", "-n", namespace, "--image=example/consumer:1", "--replicas=1")
    reader = DeploymentReader(cluster.kubeconfig_path, namespace, "consumer")
    with ConsumerPool(broker.parameters, queue, "follow", replicas=reader, poll_interval=0.3) as pool:
        eventually(lambda: pool.replicas == 1, timeout=30, what="1 consumer")

        cluster.kubectl("scale", "deployment", "consumer", "-n", namespace, "--replicas=3")
        started = time.monotonic()
        eventually(lambda: pool.replicas == 3, timeout=30, what="3 consumers")
        print(f"pool followed a scale-up to 3 in {time.monotonic() - started:.1f}s")

        patch = {"spec": {"template": {"metadata": {"annotations": {CONFIGURATION_ERROR_ANNOTATION: "true"}}}}}
        cluster.kubectl("patch", "deployment", "consumer", "-n", namespace, "-p", json.dumps(patch))
        eventually(lambda: pool.configuration_error, timeout=10, what="the configuration error deployed")

        cluster.kubectl("scale", "deployment", "consumer", "-n", namespace, "--replicas=0")
        eventually(lambda: pool.replicas == 0, timeout=30, what="no consumer")
        cluster.kubectl("scale", "deployment", "consumer", "-n", namespace, "--replicas=2")
        eventually(lambda: pool.replicas == 2, timeout=30, what="2 consumers")
        cluster.kubectl("delete", "deployment", "consumer", "-n", namespace)
        eventually(lambda: pool.replicas == 0, timeout=30, what="no consumer without a Deployment")
