"""The demo's story as a test, with the consumers as real pods on the real node: a real RabbitMQ
backlog drained by the consumer pods Flowkeeper scales; a wrong password in the consumers' Secret
(rolled out) that makes them report configuration errors, so the flow pauses with the backlog kept;
the right password rolled out, which resumes it; then a data bug that fills the dead-letter queue,
the fix, and a redrive that empties it in batches but for the orders that are bad whatever the
release (moved once, failed again, left there marked)."""

from __future__ import annotations

import ipaddress

import pika
import pytest

from examples.demo import orders
from examples.demo.run import Demo, Settings
from flowkeeper.domain.dead_letters import REDRIVE_HEADER
from flowkeeper.domain.pause import CONSUMER_CONFIGURATION_ERROR
from tests.support.cluster import LocalCluster
from tests.support.real_node import RealNode

pytestmark = [pytest.mark.cluster, pytest.mark.real_node, pytest.mark.images, pytest.mark.prometheus, pytest.mark.rabbitmq]

DRAIN_BOUND_S = 150  # 3000 orders, 8 consumer pods at 20/s: about 20 s of work, plus their start (about 30 s on 2 busy cores)
# The redrive's cause window (1 minute, the API's minimum) after the last data error, its blocked
# retries (15 s), 3 batches 2 s apart, and 10 s of verification.
REDRIVE_BOUND_S = 150


def dead_letters(parameters: pika.ConnectionParameters, queue: str) -> list[tuple[dict, bytes]]:
    """Everything in the queue, read and given back (the channel closes without acks)."""
    with pika.BlockingConnection(parameters) as connection:
        channel = connection.channel()
        found = []
        while (got := channel.basic_get(queue))[0] is not None:
            _, properties, body = got
            found.append((properties.headers or {}, body))
        return found


def series_instances(demo: Demo, promql: str) -> set[str]:
    """The `instance`s (scraped addresses) of the series a query returns."""
    return {r["metric"]["instance"] for r in demo.prometheus.query(promql)}


def test_backlog_drains_a_pause_keeps_the_backlog_and_a_redrive_empties_the_dead_letters(
    real_node_cluster: LocalCluster, real_node: RealNode, real_node_namespace: str, tmp_path
) -> None:
    # 400 orders under the data bug: 100 with a delivery time, 4 with a date that does not exist.
    settings = Settings(burst=3000, rate_per_replica=20, dead_letter_fraction=0.01, bug_orders=400, impossible_date_every=100,
                        out=tmp_path, drain_timeout=DRAIN_BOUND_S, redrive_timeout=REDRIVE_BOUND_S)
    with Demo(settings, cluster=real_node_cluster, namespace=real_node_namespace) as demo:
        summary = demo.run()
        chart = demo.write_outputs(summary)
        samples, marks = demo.timeline.samples, demo.timeline.marks
        max_replicas = demo.max_replicas
        demo.operator.stop()  # its reviews read the dead letters (and give them back): not while we count them
        left = dead_letters(demo.broker.parameters, demo.dead_letter_queue)
        bodies = [demo.order_body(n) for n in range(demo.orders_published)]
        # What the consumer pods themselves reported, scraped at their pod IPs (the pods are gone:
        # max_over_time reads what was scraped while they ran).
        window = f"[{int(demo.timeline.now()) + 60}s]"
        succeeded = series_instances(demo, f'max_over_time(flowkeeper_messages_processed_total{{status="success"}}{window}) > 0')
        misconfigured = series_instances(demo, f'max_over_time(flowkeeper_errors_total{{class="configuration"}}{window}) > 0')
        pods_shown, pause_reason = demo.pods_shown, demo.pause_reason
        bug_victims = [demo.order_body(n) for n in demo.bug_orders if orders.release_1_1(demo.order_body(n)) == orders.INVALID_DATE]

    # Nothing lost: every order was handled, or is in the dead-letter queue, or still queued.
    assert summary["lost"] == 0, summary
    assert summary["published"] == len(bodies) == summary["consumed"] + summary["dead_lettered"] + summary["queued"]
    assert summary["queued"] == 0
    still_bad = {body for body in bodies if orders.still_bad(body)}
    assert len(still_bad) == 54 + 4  # 1 % of the 5400 orders without a customerId, and 4 impossible dates
    assert summary["dead_lettered"] == len(left) == len(still_bad)
    assert {body for _, body in left} == still_bad, "the dead-letter queue holds exactly the orders bad whatever the release"
    # `consumed` is what the consumer pods counted. Every message that entered the queue (published,
    # or redriven) was finished once: handled or dead-lettered by a pod, acked at the broker. An
    # order handled twice would count twice here (and make `lost` above negative).
    assert summary["queue_acks"] == summary["consumed"] + summary["consumer_dead_letters"] == summary["published"] + summary["redriven"], summary
    assert summary["consumer_dead_letters"] - summary["redriven"] == summary["dead_lettered"], summary

    # Real pods did it: scheduled on the real node only, scraped at their pod IPs.
    assert summary["consumer_nodes"] == [real_node.name], summary
    assert summary["consumer_pods"] > max_replicas, summary  # the scale-out, then the rollouts' new pods
    pod_network = ipaddress.ip_network(real_node.pod_cidr)
    assert len(succeeded) >= max_replicas, succeeded
    assert all(ipaddress.ip_address(instance.rsplit(":", 1)[0]) in pod_network for instance in succeeded | misconfigured)
    assert misconfigured, "the pods with the wrong password reported configuration errors"
    assert not misconfigured & succeeded, "a pod with the wrong password never handled an order"
    assert pods_shown is not None and pods_shown.count(f" {real_node.name} ") == max_replicas, pods_shown

    # The redrive: the bug's dead letters moved; the impossible dates failed again and stay, marked.
    impossible = {body for body in bug_victims if orders.still_bad(body)}
    assert len(bug_victims) == 104 and len(impossible) == 4
    assert summary["redrive_phase"] == "Succeeded", summary
    assert summary["redriven"] == len(bug_victims)
    assert summary["refailed"] == len(impossible)
    assert {body for headers, body in left if headers.get(REDRIVE_HEADER)} == impossible, "re-failed: marked, not looped"
    # What the flow's review showed before the fix: the bug's victims, and the orders without a customer.
    assert summary["dead_lettered_by_reason"] == {orders.INVALID_DATE: 104, orders.CUSTOMER_MISSING: 54}, summary
    assert summary["dead_lettered_by_class"] == {"data": 158}

    # The scaling and the pause, as before.
    assert summary["time_to_first_scale_up_s"] is not None and summary["time_to_first_scale_up_s"] < 15
    assert summary["peak_desired_replicas"] == max_replicas
    assert all((s.desired or 0) <= max_replicas and (s.ready or 0) <= max_replicas for s in samples)
    assert pause_reason == CONSUMER_CONFIGURATION_ERROR
    paused = [s for s in samples if s.phase == "Paused"]
    assert len(paused) >= 5, "the pause was observed"
    backlogs = [s.backlog for s in paused if s.backlog is not None]
    assert backlogs == sorted(backlogs), "while paused the backlog only waits (or grows), never drains"
    assert all(s.ready == 0 for s in paused[1:])  # consumers stopped
    assert samples[-1].backlog == 0 and samples[-1].phase != "Paused"

    # What the chart shows: the dead letters peak after the bug and fall to the still-bad during the redrive.
    labels = [m.label for m in marks]
    assert labels.index("data bug") < labels.index("redrive") < labels.index("redrive done")
    started = next(m.t for m in marks if m.label == "redrive")
    assert max(s.dead_letters or 0 for s in samples if s.t <= started) == 158
    assert [s.redrive for s in samples if s.redrive in ("Running", "Verifying")], "the redrive was seen running"
    assert samples[-1].dead_letters == len(still_bad)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
