"""The RabbitMQ dead-letter adapter against a real broker: a review consumes nothing, a redrive moves
only what was there at its start, only what it selects, marks what it moves, and loses nothing when
its process is killed mid-batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pika
import pytest

from flowkeeper.adapters.brokers.rabbitmq import RabbitMQDeadLetters
from flowkeeper.domain.dead_letters import (
    ATTEMPT_HEADER,
    ERROR_CLASS_HEADER,
    ERROR_HEADER,
    REDRIVE_HEADER,
    BrokerAddress,
    Cutoff,
    CutoffLost,
    Selection,
)
from flowkeeper.domain.errors import ConfigurationError, TransientError
from tests.support.rabbitmq import LocalRabbitMQ, declare_queue, depth

pytestmark = pytest.mark.rabbitmq

SOON = 30.0


@pytest.fixture
def queues(broker: LocalRabbitMQ) -> tuple[str, str]:
    name = f"q-{uuid.uuid4().hex[:8]}"
    declare_queue(broker.parameters, name, dead_letter_queue=f"{name}.dlq")
    return name, f"{name}.dlq"


def address(broker: LocalRabbitMQ, **overrides) -> BrokerAddress:
    return BrokerAddress(**{"broker": "rabbitmq", "address": f"amqp://127.0.0.1:{broker.amqp_port}", "username": "guest", "password": "guest", **overrides})


def dead_letter(broker: LocalRabbitMQ, queue: str, n: int, *, error_class: str | None = "data", reason: str | None = None, extra: dict | None = None) -> None:
    """Publishes n dead letters the way a consumer of the convention does: to the dead-letter queue,
    with its class and reason in the headers."""
    with pika.BlockingConnection(broker.parameters) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        for i in range(n):
            headers = dict(extra or {})
            if error_class is not None:
                headers[ERROR_CLASS_HEADER] = error_class
            headers[ERROR_HEADER] = reason or f"missing field {i % 3}"
            channel.basic_publish("", queue, b"order-%d" % i, pika.BasicProperties(headers=headers, delivery_mode=2, message_id=f"m{i}", timestamp=int(time.time())))


def drain(broker: LocalRabbitMQ, queue: str) -> list[tuple[dict, bytes]]:
    """Everything in `queue`, consumed for good: (headers, body)."""
    out = []
    with pika.BlockingConnection(broker.parameters) as connection:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((properties.headers or {}, body))


def soon() -> float:
    return time.monotonic() + SOON


def test_a_review_counts_by_class_and_reason_and_consumes_nothing(broker, queues) -> None:
    _, dlq = queues
    dead_letter(broker, dlq, 6, error_class="data")
    dead_letter(broker, dlq, 2, error_class="configuration", reason="401 from the ledger")
    dead_letter(broker, dlq, 1, error_class=None, reason="no class")
    adapter = RabbitMQDeadLetters(address(broker))

    first = adapter.review(dlq, limit=1000, deadline=soon())
    second = adapter.review(dlq, limit=1000, deadline=soon())

    assert (first.depth, first.examined, first.complete) == (9, 9, True)
    assert dict(first.by_class) == {"data": 6, "configuration": 2, "unclassified": 1}
    assert first.by_reason["401 from the ledger"] == 2 and first.by_reason["missing field 0"] == 2
    assert len(first.samples) == 3 and first.oldest is not None and first.newest >= first.oldest
    assert dict(second.by_class) == dict(first.by_class), "the second review sees the same: nothing was consumed"
    assert depth(broker.parameters, dlq) == 9


def test_a_review_is_of_the_letters_counted_at_its_start(broker, queues) -> None:
    # A letter dead-lettered between the count and the read made a status say "examined 10" of a
    # depth of 9.
    _, dlq = queues
    dead_letter(broker, dlq, 3)

    class LetterArrivingMidReview(RabbitMQDeadLetters):
        @staticmethod
        def _read(channel, queue, limit, deadline):
            dead_letter(broker, dlq, 1, reason="late")
            yield from RabbitMQDeadLetters._read(channel, queue, limit, deadline)

    review = LetterArrivingMidReview(address(broker)).review(dlq, limit=1000, deadline=soon())
    assert (review.depth, review.examined, review.complete) == (3, 3, True) and "late" not in review.by_reason
    assert RabbitMQDeadLetters(address(broker)).review(dlq, limit=1000, deadline=soon()).examined == 4
    assert depth(broker.parameters, dlq) == 4


def test_a_review_reads_a_bounded_number_and_gives_back_everything(broker, queues) -> None:
    _, dlq = queues
    dead_letter(broker, dlq, 3000)
    started = time.monotonic()
    review = RabbitMQDeadLetters(address(broker)).review(dlq, limit=500, deadline=soon())
    assert (review.depth, review.examined, review.complete) == (3000, 500, False)
    assert time.monotonic() - started < SOON
    assert depth(broker.parameters, dlq) == 3000


def test_a_review_killed_midway_loses_nothing(broker, queues) -> None:
    _, dlq = queues
    dead_letter(broker, dlq, 2000)
    child = subprocess.Popen([sys.executable, "-c", _REVIEW_FOREVER, str(broker.amqp_port), dlq], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "holding"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + SOON
    while depth(broker.parameters, dlq) != 2000 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert depth(broker.parameters, dlq) == 2000


# A review that holds every message unacknowledged and never finishes (a SIGKILL ends it).
_REVIEW_FOREVER = """
import sys, time
from flowkeeper.adapters.brokers import rabbitmq
from flowkeeper.domain.dead_letters import BrokerAddress
original = rabbitmq.RabbitMQDeadLetters._read
def holding(channel, queue, limit, deadline):
    for n, item in enumerate(original(channel, queue, limit, deadline), 1):
        yield item
        if n == 1000:
            print("holding", flush=True)
            time.sleep(3600)
rabbitmq.RabbitMQDeadLetters._read = staticmethod(holding)
address = BrokerAddress("rabbitmq", f"amqp://127.0.0.1:{sys.argv[1]}", username="guest", password="guest")
rabbitmq.RabbitMQDeadLetters(address).review(sys.argv[2], limit=5000, deadline=time.monotonic() + 3600)
"""


def test_a_redrive_moves_only_what_was_there_at_its_start_in_batches(broker, queues) -> None:
    flow_queue, dlq = queues
    adapter = RabbitMQDeadLetters(address(broker))
    dead_letter(broker, dlq, 25)
    cutoff = adapter.begin(dlq, redrive_uid="r1")
    dead_letter(broker, dlq, 5, reason="arrived later")  # after the start: not moved
    assert cutoff.depth == 25

    results = []
    while not results or not results[-1].reached_cutoff:
        results.append(adapter.move(dlq, flow_queue, redrive_uid="r1", cutoff=cutoff, selection=Selection(), batch=10, dry_run=False, scan_limit=1000, deadline=soon()))
        assert len(results) < 10
    assert [r.moved for r in results] == [10, 10, 5]
    assert [r.remaining for r in results] == [15, 5, 0]
    adapter.finish(dlq, redrive_uid="r1", cutoff=cutoff)

    moved = drain(broker, flow_queue)
    assert len(moved) == 25 and len({body for _, body in moved}) == 25
    assert all(h[REDRIVE_HEADER] in ("r1", b"r1") and h[ATTEMPT_HEADER] == 1 for h, _ in moved)
    left = drain(broker, dlq)
    assert [h[ERROR_HEADER] for h, _ in left] == [b"arrived later"] * 5 or [h[ERROR_HEADER] for h, _ in left] == ["arrived later"] * 5


def test_a_redrive_takes_only_the_selected_and_never_what_it_moved_before(broker, queues) -> None:
    flow_queue, dlq = queues
    adapter = RabbitMQDeadLetters(address(broker))
    dead_letter(broker, dlq, 4, error_class="data", reason="bad date")
    dead_letter(broker, dlq, 3, error_class="configuration", reason="401")
    dead_letter(broker, dlq, 2, error_class="data", reason="bad date", extra={REDRIVE_HEADER: "an-earlier-redrive", ATTEMPT_HEADER: 1})
    cutoff = adapter.begin(dlq, redrive_uid="r2")

    dry = adapter.move(dlq, flow_queue, redrive_uid="r2", cutoff=Cutoff("", 9), selection=Selection(frozenset({"data"})), batch=100, dry_run=True, scan_limit=1000, deadline=soon())
    assert (dry.moved, dry.would_move) == (0, 4)
    assert depth(broker.parameters, flow_queue) == 0

    result = adapter.move(dlq, flow_queue, redrive_uid="r2", cutoff=cutoff, selection=Selection(frozenset({"data"}), frozenset({"bad date"})), batch=100, dry_run=False, scan_limit=1000, deadline=soon())
    assert (result.moved, result.remaining, result.reached_cutoff) == (4, 0, True)
    adapter.finish(dlq, redrive_uid="r2", cutoff=cutoff)
    review = adapter.review(dlq, limit=100, deadline=soon())
    assert dict(review.by_class) == {"configuration": 3, "data": 2}, "the unselected and the moved-before stay"
    assert review.redriven["an-earlier-redrive"] == 2 and not review.markers


def test_what_fails_again_after_a_redrive_is_counted_and_left_alone(broker, queues) -> None:
    flow_queue, dlq = queues
    adapter = RabbitMQDeadLetters(address(broker))
    dead_letter(broker, dlq, 10)
    cutoff = adapter.begin(dlq, redrive_uid="r3")
    first = adapter.move(dlq, flow_queue, redrive_uid="r3", cutoff=cutoff, selection=Selection(), batch=6, dry_run=False, scan_limit=1000, deadline=soon())
    # The consumer fails 2 of the moved messages again: back to the dead letters, headers kept.
    with pika.BlockingConnection(broker.parameters) as connection:
        channel = connection.channel()
        for _ in range(2):
            method, properties, body = channel.basic_get(flow_queue)
            channel.basic_publish("", dlq, body, properties)
            channel.basic_ack(method.delivery_tag)
    second = adapter.move(dlq, flow_queue, redrive_uid="r3", cutoff=cutoff, selection=Selection(), batch=6, dry_run=False, scan_limit=1000, deadline=soon())
    assert (first.moved, second.moved, second.refailed, second.reached_cutoff) == (6, 4, 2, True)
    again = adapter.move(dlq, flow_queue, redrive_uid="r3", cutoff=cutoff, selection=Selection(), batch=6, dry_run=False, scan_limit=1000, deadline=soon())
    assert (again.moved, again.refailed) == (0, 2), "re-failed messages are not moved again"


def test_a_redrive_whose_marker_is_gone_stops(broker, queues) -> None:
    flow_queue, dlq = queues
    adapter = RabbitMQDeadLetters(address(broker))
    dead_letter(broker, dlq, 3)
    cutoff = adapter.begin(dlq, redrive_uid="r4")
    drain(broker, dlq)  # someone purges the queue
    dead_letter(broker, dlq, 3, reason="new")
    with pytest.raises(CutoffLost):
        adapter.move(dlq, flow_queue, redrive_uid="r4", cutoff=cutoff, selection=Selection(), batch=10, dry_run=False, scan_limit=1000, deadline=soon())
    assert depth(broker.parameters, dlq) == 3 and depth(broker.parameters, flow_queue) == 0


def test_a_kill_mid_batch_loses_nothing_and_duplicates_at_most_one(broker, queues) -> None:
    flow_queue, dlq = queues
    dead_letter(broker, dlq, 50)
    adapter = RabbitMQDeadLetters(address(broker))
    cutoff = adapter.begin(dlq, redrive_uid="r5")
    child = subprocess.Popen([sys.executable, "-c", _KILLED_AFTER_PUBLISH, str(broker.amqp_port), dlq, flow_queue], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "published"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    time.sleep(1.0)  # the broker notices the closed connection and returns the unacknowledged
    for _ in range(10):
        if adapter.move(dlq, flow_queue, redrive_uid="r5", cutoff=cutoff, selection=Selection(), batch=20, dry_run=False, scan_limit=1000, deadline=soon()).reached_cutoff:
            break
    else:
        raise AssertionError("the cutoff was never reached")
    adapter.finish(dlq, redrive_uid="r5", cutoff=cutoff)
    bodies = [body for _, body in drain(broker, flow_queue)]
    assert set(bodies) == {b"order-%d" % i for i in range(50)}, "nothing lost"
    assert len(bodies) - len(set(bodies)) <= 1, "at most the message in flight twice"
    assert depth(broker.parameters, dlq) == 0


# Moves a batch of 20, killed right after the 8th publish was confirmed and before its ack.
_KILLED_AFTER_PUBLISH = """
import sys, time
from pika.adapters.blocking_connection import BlockingChannel
from flowkeeper.adapters.brokers.rabbitmq import RabbitMQDeadLetters
from flowkeeper.domain.dead_letters import BrokerAddress, Cutoff, Selection
publish, published = BlockingChannel.basic_publish, [0]
def counting(self, *args, **kwargs):
    publish(self, *args, **kwargs)
    published[0] += 1
    if published[0] == 8:
        print("published", flush=True)
        time.sleep(3600)
BlockingChannel.basic_publish = counting
address = BrokerAddress("rabbitmq", f"amqp://127.0.0.1:{sys.argv[1]}", username="guest", password="guest")
RabbitMQDeadLetters(address).move(sys.argv[2], sys.argv[3], redrive_uid="r5", cutoff=Cutoff("r5", 50), selection=Selection(),
                                  batch=20, dry_run=False, scan_limit=1000, deadline=time.monotonic() + 3600)
"""


def test_broker_trouble_is_classified(broker, queues) -> None:
    _, dlq = queues
    with pytest.raises(ConfigurationError) as refused:
        RabbitMQDeadLetters(address(broker, password="wrong")).review(dlq, limit=10, deadline=soon())
    assert refused.value.reason == "BrokerUnauthorized" and "wrong" not in str(refused.value)
    with pytest.raises(ConfigurationError) as missing:
        RabbitMQDeadLetters(address(broker)).review("no-such-queue", limit=10, deadline=soon())
    assert missing.value.reason == "QueueNotFound"
    with socket_nobody_listens() as port, pytest.raises(TransientError) as down:
        RabbitMQDeadLetters(address(broker, address=f"amqp://127.0.0.1:{port}"), timeout=2).review(dlq, limit=10, deadline=soon())
    assert down.value.reason == "BrokerUnavailable"


class socket_nobody_listens:
    """A loopback port with nothing listening on it."""

    def __enter__(self) -> int:
        import socket

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        return self._socket.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self._socket.close()


def test_a_quorum_dead_letter_queue_is_refused_before_its_delivery_limit_can_drop_anything(broker) -> None:
    name = f"q-{uuid.uuid4().hex[:8]}.dlq"
    with pika.BlockingConnection(broker.parameters) as connection:
        connection.channel().queue_declare(name, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 3})
    dead_letter(broker, name, 5)
    adapter = RabbitMQDeadLetters(address(broker))
    with pytest.raises(ConfigurationError) as refused:
        # The first message read carries x-delivery-count (a quorum queue's): the review stops at once.
        adapter.review(name, limit=100, deadline=soon())
    assert refused.value.reason == "QuorumQueueNotSupported"
    assert depth(broker.parameters, name) == 5, "no message reached the delivery limit (the controller looks no more)"


def test_a_batch_behind_more_unselected_letters_than_it_may_look_at_says_so(broker, queues) -> None:
    flow_queue, dlq = queues
    dead_letter(broker, dlq, 50, error_class="configuration")
    adapter = RabbitMQDeadLetters(address(broker))
    cutoff = adapter.begin(dlq, redrive_uid="r6")
    with pytest.raises(ConfigurationError) as stuck:
        adapter.move(dlq, flow_queue, redrive_uid="r6", cutoff=cutoff, selection=Selection(frozenset({"data"})), batch=10,
                     dry_run=False, scan_limit=20, deadline=soon())
    assert stuck.value.reason == "ScanLimitReached"
    done = adapter.move(dlq, flow_queue, redrive_uid="r6", cutoff=cutoff, selection=Selection(frozenset({"data"})), batch=10,
                        dry_run=False, scan_limit=100, deadline=soon())
    assert (done.moved, done.reached_cutoff) == (0, True), "with a wider look the cutoff is found: nothing to move"
    assert depth(broker.parameters, dlq) == 51
