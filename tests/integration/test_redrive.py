"""Dead letters reviewed and redriven by the real operator: the control plane, RabbitMQ, Prometheus,
consumers that dead-letter with the convention's headers, and SIGKILLs between the redrive's writes."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pika
import pytest

from flowkeeper.domain.dead_letters import ERROR_CLASS_HEADER, ERROR_HEADER, REDRIVE_HEADER
from tests.support.cluster_fixtures import eventually
from tests.support.consumers import ConsumerPool, DeploymentReader
from tests.support.prometheus import LocalPrometheus
from tests.support.rabbitmq import LocalRabbitMQ, declare_queue, depth, publish

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus, pytest.mark.rabbitmq]


def bad(body: bytes) -> str | None:
    """The consumers' data bug, once fixed: orders marked "still-bad" fail for good."""
    return "customerId missing" if b"still-bad" in body else None


def buggy(body: bytes) -> str | None:
    """Before the fix: every third order fails too."""
    return bad(body) or ("bad date format" if int(body.rsplit(b"-", 1)[-1]) % 3 == 0 else None)


@dataclass
class Setup:
    cluster: object
    namespace: str
    broker: LocalRabbitMQ
    pool: ConsumerPool
    prometheus: LocalPrometheus
    operator: object
    queue: str
    dlq: str
    operator_args: tuple[str, ...] = ()

    def kubectl_json(self, *args: str) -> dict:
        return json.loads(self.cluster.kubectl(*args, "-n", self.namespace, "-o", "json").stdout)

    def flow_status(self) -> dict:
        return self.kubectl_json("get", "iflow", "orders").get("status") or {}

    def redrive(self, name: str, **spec) -> None:
        body = {"apiVersion": "flowkeeper.io/v1alpha1", "kind": "DeadLetterRedrive", "metadata": {"name": name},
                "spec": {"flowRef": {"name": "orders"}, "interval": "0s", "causeWindow": "1m", "verifyFor": "3s", **spec}}
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(body))

    def redrive_status(self, name: str) -> dict:
        return self.kubectl_json("get", "dlr", name).get("status") or {}

    def wait_phase(self, name: str, phases: tuple[str, ...], timeout: float, reason: str | None = None) -> dict:
        def there() -> bool:
            status = self.redrive_status(name)
            reasons = {c.get("reason") for c in status.get("conditions") or []}
            return status.get("phase") in phases and (reason is None or reason in reasons)

        eventually(there, timeout=timeout, what=f"redrive {name} in {phases} {reason or ''}")
        return self.redrive_status(name)

    def dead_letters(self, n: int, *, error_class: str, reason: str, prefix: str) -> None:
        """Dead letters put there by an earlier consumer, with the convention's headers."""
        with pika.BlockingConnection(self.broker.parameters) as connection:
            channel = connection.channel()
            channel.confirm_delivery()
            for i in range(n):
                headers = {ERROR_CLASS_HEADER: error_class, ERROR_HEADER: reason}
                channel.basic_publish("", self.dlq, f"{prefix}-{i}".encode(), pika.BasicProperties(headers=headers, delivery_mode=2))

    def drain_dlq(self) -> list[tuple[dict, bytes]]:
        with pika.BlockingConnection(self.broker.parameters) as connection:
            channel = connection.channel()
            out = []
            while True:
                method, properties, body = channel.basic_get(self.dlq, auto_ack=True)
                if method is None:
                    return out
                out.append((properties.headers or {}, body))


@pytest.fixture
def setup(cluster, namespace, broker, tmp_path, run_operator) -> Iterator[callable]:
    stack = contextlib.ExitStack()

    def make(data_bug=None, operator_env: dict | None = None, operator_args: tuple[str, ...] = ()) -> Setup:
        name = f"q-{uuid.uuid4().hex[:6]}"
        dlq = f"{name}.dlq"
        declare_queue(broker.parameters, name, dead_letter_queue=dlq)
        cluster.kubectl("create", "secret", "generic", "broker", "-n", namespace, "--from-literal=user=guest", "--from-literal=password=guest")
        cluster.kubectl("create", "deployment", "orders", "-n", namespace, "--image=example/consumer:1", "--replicas=1")
        flow = {
            "apiVersion": "flowkeeper.io/v1alpha1", "kind": "IntegrationFlow", "metadata": {"name": "orders"},
            "spec": {
                "scaleTargetRef": {"name": "orders"},
                "source": {"broker": "rabbitmq", "queue": name, "deadLetterQueue": dlq, "integration": "orders",
                           "connection": {"address": f"amqp://127.0.0.1:{broker.amqp_port}",
                                          "usernameSecret": {"name": "broker", "key": "user"},
                                          "passwordSecret": {"name": "broker", "key": "password"}}},
                "scaling": {"pollInterval": "2s", "minReplicas": 1, "maxReplicas": 4, "queueDepthPerReplica": 20},
            },
        }
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(flow))
        pool = stack.enter_context(ConsumerPool(
            broker.parameters, name, "orders", rate_per_replica=50, dead_letter_queue=dlq, data_bug=data_bug,
            replicas=DeploymentReader(cluster.kubeconfig_path, namespace, "orders"), namespace=namespace,
        ))
        prometheus = stack.enter_context(LocalPrometheus([broker.prometheus_scrape_target, pool.metrics_target]).start())
        args = ("-n", namespace, f"--prometheus-url={prometheus.url}", "--rate-window=10s", "--dead-letter-review-interval=5",
                f"--allowed-broker=127.0.0.1:{broker.amqp_port}", *operator_args)
        operator = run_operator(*args, env=operator_env)
        return Setup(cluster, namespace, broker, pool, prometheus, operator, name, dlq, args)

    yield make
    stack.close()


def test_the_review_shows_the_dead_letters_by_class_and_reason_without_consuming_them(setup) -> None:
    s = setup(data_bug=buggy)
    publish(s.broker.parameters, s.queue, 30, body=lambda n: b"order-%d" % n)
    eventually(lambda: depth(s.broker.parameters, s.queue) == 0 and depth(s.broker.parameters, s.dlq) == 10, timeout=60, what="orders handled")
    eventually(lambda: (s.flow_status().get("deadLetters") or {}).get("examined") == 10, timeout=60, what="the review in the status")
    review = s.flow_status()["deadLetters"]
    assert review["depth"] == 10 and review["byClass"] == {"data": 10}
    assert review["byReason"] == [{"reason": "bad date format", "count": 10}]
    assert review["samples"] == ["bad date format"] and review["oldest"] <= review["newest"]
    assert depth(s.broker.parameters, s.dlq) == 10, "reviews consume nothing"
    described = s.cluster.kubectl("describe", "iflow", "orders", "-n", s.namespace).stdout
    print(described)
    assert "Dead Letters" in described and "bad date format" in described


def test_a_redrive_waits_for_the_fix_then_moves_in_batches_and_leaves_the_still_bad(setup) -> None:
    s = setup(data_bug=buggy)
    publish(s.broker.parameters, s.queue, 45, body=lambda n: b"order-%d" % n)
    eventually(lambda: depth(s.broker.parameters, s.dlq) == 15, timeout=60, what="15 orders dead-lettered")
    s.dead_letters(2, error_class="data", reason="customerId missing", prefix="still-bad")
    # The bug is still deployed and keeps failing new orders (Prometheus sees them): the redrive must not start.
    s.prometheus.wait_for(f'flowkeeper_errors_total{{namespace="{s.namespace}", class="data"}} >= 15')
    publish(s.broker.parameters, s.queue, 3, body=lambda n: b"order-%d" % (300 + n * 3))
    s.prometheus.wait_for(f'flowkeeper_errors_total{{namespace="{s.namespace}", class="data"}} >= 18')
    s.redrive("after-fix", batchSize=10)
    blocked = s.wait_phase("after-fix", ("Blocked",), timeout=45, reason="CauseStillFiring")
    assert blocked["moved"] == 0 and "fix the cause first" in blocked["message"]
    assert depth(s.broker.parameters, s.dlq) == 20  # 17, and the 3 new orders the bug failed: nothing moved

    s.pool.data_bug = bad  # the fix is deployed
    status = s.wait_phase("after-fix", ("Succeeded", "Stopped", "Failed"), timeout=150)
    assert status["phase"] == "Succeeded", status
    assert (status["moved"], status["refailed"], status["remaining"]) == (20, 2, 0)
    assert status["cutoff"]["depth"] == 20
    eventually(lambda: not any(h.get("x-flowkeeper-cutoff") for h, _ in peek(s)), timeout=30, what="the marker removed")
    left = s.drain_dlq()
    assert sorted(body for _, body in left) == [b"still-bad-0", b"still-bad-1"], "only the still-bad stay, and no marker"
    assert all(h.get(REDRIVE_HEADER) for h, _ in left), "marked: recognised as re-failed, not redriven again"
    handled = s.pool.handled
    assert all(count == 1 for count in handled.values()), "nothing redriven twice"
    assert {b"order-%d" % n for n in range(0, 45, 3)} <= set(handled), "every fixed order consumed"
    events = s.kubectl_json("get", "events", "--field-selector", "involvedObject.kind=DeadLetterRedrive")["items"]
    assert {"CauseStillFiring", "Verifying", "Succeeded"} <= {e["reason"] for e in events}


def test_a_redrive_stops_by_itself_when_too_many_fail_again(setup) -> None:
    s = setup(data_bug=bad)
    # Messages a code defect sent to the dead letters; the "fix" did not fix most of them.
    s.dead_letters(12, error_class="code", reason="NullPointerException", prefix="still-bad")
    s.dead_letters(3, error_class="code", reason="NullPointerException", prefix="order-ok")
    s.redrive("too-early", batchSize=5, interval="2s", classes=["code"], maxRefailureRatio="0.2")
    status = s.wait_phase("too-early", ("Stopped", "Succeeded", "Failed"), timeout=90)
    assert status["phase"] == "Stopped" and "RefailureRatioExceeded" in json.dumps(status["conditions"])
    assert status["refailed"] > 0.2 * status["moved"] and status["moved"] < 15
    eventually(lambda: all(not h.get("x-flowkeeper-cutoff") for h, _ in peek(s)), timeout=30, what="the marker removed")
    assert depth(s.broker.parameters, s.dlq) + len(s.pool.handled) == 15, "nothing lost"


def peek(s: Setup) -> list[tuple[dict, bytes]]:
    """The dead letters, read and given back (a channel closed without acks)."""
    with pika.BlockingConnection(s.broker.parameters) as connection:
        channel = connection.channel()
        out = []
        for _ in range(depth(s.broker.parameters, s.dlq)):
            method, properties, body = channel.basic_get(s.dlq)
            if method is None:
                break
            out.append((properties.headers or {}, body))
        return out


def test_a_redrive_waits_while_its_flow_is_paused(setup) -> None:
    s = setup(data_bug=bad)
    s.cluster.kubectl("patch", "iflow", "orders", "-n", s.namespace, "--type=merge", "-p", '{"spec":{"paused":true}}')
    eventually(lambda: s.flow_status().get("phase") == "Paused", timeout=30, what="the flow paused")
    s.dead_letters(3, error_class="transient", reason="timeout", prefix="order")
    s.redrive("while-paused", classes=["transient"])
    s.wait_phase("while-paused", ("Blocked",), timeout=30, reason="FlowPaused")
    assert depth(s.broker.parameters, s.dlq) == 3
    s.cluster.kubectl("patch", "iflow", "orders", "-n", s.namespace, "--type=merge", "-p", '{"spec":{"paused":false}}')
    assert s.wait_phase("while-paused", ("Succeeded", "Stopped", "Failed"), timeout=60)["phase"] == "Succeeded"
    eventually(lambda: depth(s.broker.parameters, s.dlq) == 0, timeout=30, what="the dead letters and the marker gone")


@pytest.mark.parametrize("crash_after", ["redrive:begin", "redrive:move"])
def test_a_kill_between_the_redrives_writes_loses_nothing(setup, run_operator, crash_after) -> None:
    s = setup(data_bug=bad, operator_env={"FLOWKEEPER_CRASH_AFTER": crash_after})
    s.dead_letters(12, error_class="transient", reason="timeout", prefix="order")
    s.redrive("killed", batchSize=5, classes=["transient"])
    eventually(lambda: s.operator.process.popen.poll() is not None, timeout=60, what="the operator killed at " + crash_after)
    restarted = run_operator(*s.operator_args)
    status = s.wait_phase("killed", ("Succeeded", "Stopped", "Failed"), timeout=90)
    assert status["phase"] == "Succeeded", status
    eventually(lambda: depth(s.broker.parameters, s.dlq) == 0, timeout=30, what="no marker left behind")
    handled = s.pool.handled
    assert {b"order-%d" % i for i in range(12)} == set(handled), "nothing lost"
    assert sum(handled.values()) - len(handled) <= 1, "at most the message between its confirm and its ack twice"
    assert restarted.process.popen.poll() is None


def test_reviewing_100000_dead_letters_is_bounded_and_holds_up_no_other_flow(setup, cluster, namespace) -> None:
    s = setup(data_bug=bad, operator_args=("--dead-letter-review-limit=20000",))
    publish(s.broker.parameters, s.dlq, 100_000, body=lambda n: b"dead-%d" % n)
    # Another flow of the same operator gets a backlog while the big review runs.
    other = f"{s.queue}-other"
    declare_queue(s.broker.parameters, other)
    cluster.kubectl("create", "deployment", "other", "-n", namespace, "--image=example/consumer:1", "--replicas=1")
    manifest = {"apiVersion": "flowkeeper.io/v1alpha1", "kind": "IntegrationFlow", "metadata": {"name": "other"},
                "spec": {"scaleTargetRef": {"name": "other"}, "source": {"broker": "rabbitmq", "queue": other},
                         "scaling": {"pollInterval": "2s", "maxReplicas": 5, "queueDepthPerReplica": 20}}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    eventually(lambda: s.operator.metric("flowkeeper_dead_letter_reviews_total") >= 1, timeout=60, what="a first review")
    publish(s.broker.parameters, other, 200)
    started = time.monotonic()
    eventually(lambda: s.kubectl_json("get", "deployment", "other")["spec"]["replicas"] == 5, timeout=30, what="the other flow scaled")
    reaction = time.monotonic() - started
    review = eventually(lambda: (lambda r: r if r.get("depth") == 100_000 else None)(s.flow_status().get("deadLetters") or {}),
                        timeout=120, what="the big review in the status")
    assert review["examined"] == 20_000, "a review reads at most its limit"
    s.operator.stop()  # a review in flight holds messages unacknowledged: once it is gone, all are back
    eventually(lambda: depth(s.broker.parameters, s.dlq) == 100_000, timeout=30, what="every dead letter back: nothing consumed")
    print(f"reaction of another flow during a review of 100000 dead letters: {reaction:.1f}s")
    assert reaction < 20


def test_a_deleted_redrive_takes_its_marker_along_even_when_the_operator_missed_the_deletion(setup, run_operator) -> None:
    s = setup(data_bug=bad)
    s.dead_letters(30, error_class="transient", reason="timeout", prefix="order")
    s.redrive("slow", batchSize=1, interval="1h", classes=["transient"])
    s.wait_phase("slow", ("Running",), timeout=60, reason="Moving")
    eventually(lambda: s.redrive_status("slow").get("moved") == 1, timeout=30, what="one message moved")
    assert any(h.get("x-flowkeeper-cutoff") for h, _ in peek(s)), "the marker is in the dead letters"
    s.cluster.kubectl("delete", "dlr", "slow", "-n", s.namespace)
    eventually(lambda: not any(h.get("x-flowkeeper-cutoff") for h, _ in peek(s)), timeout=30, what="the marker removed on delete")

    s.redrive("orphaned", batchSize=1, interval="1h", classes=["transient"])
    eventually(lambda: s.redrive_status("orphaned").get("moved") == 1, timeout=60, what="the second redrive moving")
    s.operator.stop()
    s.cluster.kubectl("delete", "dlr", "orphaned", "-n", s.namespace)
    run_operator(*s.operator_args)
    eventually(lambda: not any(h.get("x-flowkeeper-cutoff") for h, _ in peek(s)), timeout=60, what="the orphaned marker removed by a review")
    assert depth(s.broker.parameters, s.dlq) == 28, "only the markers went: 30 dead letters, 2 moved"


def test_a_running_redrive_caps_the_flows_scale_up(setup) -> None:
    s = setup(data_bug=bad)
    s.pool.seconds_per_message = 1 / 2  # slow consumers: the redriven backlog asks for more of them
    s.dead_letters(300, error_class="transient", reason="timeout", prefix="order")
    # 15 batches 2 s apart: moving lasts about 30 s, far longer than scaling up takes.
    s.redrive("capped", batchSize=20, interval="2s", classes=["transient"], maxReplicas=2)
    s.wait_phase("capped", ("Running",), timeout=60, reason="Moving")
    seen = []
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and s.redrive_status("capped").get("phase") == "Running":
        seen.append(s.kubectl_json("get", "deployment", "orders")["spec"]["replicas"])
        time.sleep(1)
    assert seen and depth(s.broker.parameters, s.queue) > 40, "the backlog asks for the flow's maxReplicas (4)"
    assert max(seen) == 2, f"scaled up to the redrive's cap and no further: {seen}"
