"""The real consumer (examples/consumer) as a program, against a real RabbitMQ: it drains a queue
and its metrics say so; a wrong configuration is counted as configuration errors, with /metrics
served and the backlog kept, until it is fixed; bad messages go to the dead-letter queue with the
convention's headers; SIGTERM loses nothing; its CPU burn setting burns CPU."""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples.demo import orders
from flowkeeper.domain.dead_letters import ERROR_CLASS_HEADER, ERROR_HEADER
from tests.support.cluster import REPO
from tests.support.cluster_fixtures import eventually
from tests.support.consumer_checks import RECORD_FILE
from tests.support.processes import Process, free_port
from tests.support.rabbitmq import LocalRabbitMQ, declare_queue, depth, publish

pytestmark = pytest.mark.rabbitmq

INTEGRATION = "orders"


class Consumer:
    """`python -m examples.consumer` in a process of its own, configured as a pod would be."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.metrics_port = free_port()
        self.env = {"PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO)]), "CONSUMER_INTEGRATION": INTEGRATION,
                    "CONSUMER_METRICS_ADDRESS": "127.0.0.1", "CONSUMER_METRICS_PORT": str(self.metrics_port),
                    "CONSUMER_BACKOFF_INITIAL_SECONDS": "0.2", "CONSUMER_BACKOFF_MAX_SECONDS": "1", **env}
        self.process = Process(f"consumer-{uuid.uuid4().hex[:6]}", [sys.executable, "-m", "examples.consumer"], workdir, self.env)

    def start(self) -> Consumer:
        self.process.start()
        eventually(lambda: self.metrics() is not None, timeout=30, what=f"/metrics of the consumer:\n{self.process.log_tail()}")
        return self

    @property
    def pid(self) -> int:
        assert self.process.popen is not None
        return self.process.popen.pid

    def metrics(self) -> dict[tuple[str, tuple], float] | None:
        """The samples /metrics serves now, by (name, sorted labels); None when it does not answer."""
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        except OSError:
            return None
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}

    def processed(self, status: str) -> float:
        return (self.metrics() or {}).get(("flowkeeper_messages_processed_total", (("integration", INTEGRATION), ("status", status))), 0)

    def errors(self, error_class: str) -> float:
        return (self.metrics() or {}).get(("flowkeeper_errors_total", (("class", error_class), ("integration", INTEGRATION))), 0)

    def cpu_seconds(self) -> float:
        """User and system CPU time of the process so far, from /proc (fields 14 and 15, in ticks)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM, as the kubelet sends it; returns the exit code."""
        popen = self.process.popen
        assert popen is not None
        popen.send_signal(signal.SIGTERM)
        code = popen.wait(timeout)
        self.process.popen = None
        return code

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture
def consumer(broker: LocalRabbitMQ, tmp_path: Path) -> Iterator[Callable[..., Consumer]]:
    """consumer(queue, **settings): a started consumer of `queue` on the broker; settings are
    CONSUMER_* variables without the prefix (PREFETCH="5"), or files (PASSWORD_FILE=path)."""
    started: list[Consumer] = []

    def start(queue: str, **settings: str) -> Consumer:
        env = {"CONSUMER_BROKER_HOST": "127.0.0.1", "CONSUMER_BROKER_PORT": str(broker.amqp_port),
               "CONSUMER_BROKER_USERNAME": "guest", "CONSUMER_BROKER_PASSWORD": "guest", "CONSUMER_QUEUE": queue}
        for name, value in settings.items():
            if name.endswith("_FILE"):
                env.pop(f"CONSUMER_{name.removesuffix('_FILE')}", None)  # a file in place of the variable
            env[f"CONSUMER_{name}"] = value
        process = Consumer(tmp_path, env)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


def messages(parameters: pika.ConnectionParameters, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    """Everything in the queue, read and given back (the channel closes without acks)."""
    with pika.BlockingConnection(parameters) as connection:
        channel = connection.channel()
        found = []
        while (got := channel.basic_get(queue))[0] is not None:
            found.append((got[1], got[2]))
        return found


def test_it_drains_a_queue_and_its_metrics_say_so(broker: LocalRabbitMQ, queue: str, consumer) -> None:
    published = publish(broker.parameters, queue, 300)
    started = time.time()
    running = consumer(queue, SECONDS_PER_MESSAGE="0.001", PREFETCH="20")
    eventually(lambda: running.processed("success") == published, timeout=60, what="300 messages processed")
    assert depth(broker.parameters, queue) == 0 and depth(broker.parameters, f"{queue}.dlq") == 0
    samples = running.metrics()
    labels = (("integration", INTEGRATION),)
    assert samples[("flowkeeper_messages_processed_total", (*labels, ("status", "error")))] == 0
    assert all(running.errors(error_class) == 0 for error_class in ("configuration", "data", "code", "transient"))
    assert samples[("flowkeeper_processing_seconds_count", labels)] == published
    assert published * 0.001 <= samples[("flowkeeper_processing_seconds_sum", labels)] < published * 0.001 + 10
    assert started <= samples[("flowkeeper_last_success_timestamp_seconds", labels)] <= time.time()
    assert running.terminate() == 0


# Each broken setting, as a mounted file, and the fix written into the same file.
WRONG_SETTINGS = {
    "bad password": ("BROKER_PASSWORD_FILE", "not-the-password", "guest"),
    "unknown virtual host": ("BROKER_VHOST_FILE", "no-such-vhost", "/"),
    "missing queue": ("QUEUE_FILE", "no-such-queue", None),  # None: the test's queue
    "missing dead-letter queue": ("DEAD_LETTER_QUEUE_FILE", "no-such-dlq", None),  # the queue's .dlq
    "invalid setting": ("PREFETCH_FILE", "ten", "10"),
}


@pytest.mark.parametrize("case", WRONG_SETTINGS)
def test_a_wrong_setting_is_a_configuration_error_until_its_mounted_file_is_fixed(
    broker: LocalRabbitMQ, queue: str, consumer, tmp_path: Path, case: str,
) -> None:
    setting, wrong, right = WRONG_SETTINGS[case]
    if right is None:
        right = queue if setting == "QUEUE_FILE" else f"{queue}.dlq"
    published = publish(broker.parameters, queue, 50)
    mounted = tmp_path / setting.lower()
    mounted.write_text(wrong + "\n")
    settings = {setting: str(mounted)}
    if setting != "DEAD_LETTER_QUEUE_FILE":
        settings["DEAD_LETTER_QUEUE"] = f"{queue}.dlq"
    running = consumer(queue, **settings)

    eventually(lambda: running.errors("configuration") >= 3, timeout=30, what="configuration errors counted")
    assert running.process.running, "a wrong configuration does not stop the consumer"
    assert running.processed("success") == running.processed("error") == 0
    assert running.errors("transient") == running.errors("data") == running.errors("code") == 0
    assert depth(broker.parameters, queue) == published, "the backlog waits in the queue"

    mounted.write_text(right + "\n")  # the Secret or ConfigMap is fixed; the kubelet rewrites the file
    eventually(lambda: running.processed("success") == published, timeout=30, what="drained after the fix")
    assert depth(broker.parameters, queue) == 0
    errors_after_fix = running.errors("configuration")
    time.sleep(1.5)  # longer than the backoff: a retry would have counted again
    assert running.errors("configuration") == errors_after_fix
    assert running.terminate() == 0


def test_a_queue_deleted_under_the_consumer_is_a_configuration_error_until_it_is_back(broker: LocalRabbitMQ, consumer) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    declare_queue(broker.parameters, queue)
    running = consumer(queue)
    publish(broker.parameters, queue, 10)
    eventually(lambda: running.processed("success") == 10, timeout=30, what="consuming")
    with pika.BlockingConnection(broker.parameters) as connection:
        connection.channel().queue_delete(queue)  # the broker cancels the subscription
    eventually(lambda: running.errors("configuration") >= 2, timeout=30, what="configuration errors counted")
    assert running.process.running and running.processed("success") == 10

    declare_queue(broker.parameters, queue)
    publish(broker.parameters, queue, 10)
    eventually(lambda: running.processed("success") == 20, timeout=30, what="consuming again")


def test_bad_credentials_from_the_environment_are_fixed_by_a_restart(broker: LocalRabbitMQ, queue: str, consumer) -> None:
    """A password from an environment variable (secretKeyRef) is read once: a new pod fixes it."""
    published = publish(broker.parameters, queue, 20)
    broken = consumer(queue, BROKER_PASSWORD="not-the-password")
    eventually(lambda: broken.errors("configuration") >= 2, timeout=30, what="configuration errors counted")
    assert depth(broker.parameters, queue) == published
    stopping = time.monotonic()
    assert broken.terminate() == 0
    assert time.monotonic() - stopping < 5, "SIGTERM ends the backoff at once"

    fixed = consumer(queue)
    eventually(lambda: fixed.processed("success") == published, timeout=30, what="drained by the new pod")
    assert fixed.errors("configuration") == 0


def test_bad_messages_go_to_the_dead_letter_queue_with_the_convention_headers(broker: LocalRabbitMQ, queue: str, consumer) -> None:
    # The demo's consumer release 1.1 with its data bug: orders with a delivery time are rejected.
    bodies = [orders.order(n) for n in range(40)]
    rejected = {body for body in bodies if orders.release_1_1(body) is not None}
    assert len(rejected) == 10
    malformed, unexpected = b"not json", b"[1, 2]"  # data (cannot be parsed) and code (the check fails on it)
    with pika.BlockingConnection(broker.parameters) as connection:
        channel = connection.channel()
        for number, body in enumerate([*bodies, malformed, unexpected]):
            properties = pika.BasicProperties(delivery_mode=2, headers={"x-trace": f"t-{number}"}, message_id=f"m-{number}")
            channel.basic_publish("", queue, body, properties)
    running = consumer(queue, DEAD_LETTER_QUEUE=f"{queue}.dlq", CHECK="examples.demo.orders:release_1_1")
    eventually(lambda: running.processed("success") + running.processed("error") == 42, timeout=60, what="42 messages handled")

    dead = {body: properties for properties, body in messages(broker.parameters, f"{queue}.dlq")}
    assert set(dead) == rejected | {malformed, unexpected}
    assert depth(broker.parameters, queue) == 0
    for body, properties in dead.items():
        number = [*bodies, malformed, unexpected].index(body)
        assert properties.headers["x-trace"] == f"t-{number}" and properties.message_id == f"m-{number}", "its own headers kept"
        assert abs(properties.timestamp - time.time()) < 120
    assert {dead[body].headers[ERROR_HEADER] for body in rejected} == {orders.INVALID_DATE}
    assert {dead[body].headers[ERROR_CLASS_HEADER] for body in rejected} == {"data"}
    assert dead[malformed].headers[ERROR_CLASS_HEADER] == "data"
    assert dead[malformed].headers[ERROR_HEADER].startswith("JSONDecodeError")
    assert dead[unexpected].headers[ERROR_CLASS_HEADER] == "code"
    assert dead[unexpected].headers[ERROR_HEADER].startswith("AttributeError")
    assert (running.processed("success"), running.processed("error")) == (30, 12)
    assert (running.errors("data"), running.errors("code"), running.errors("configuration")) == (11, 1, 0)


def test_without_a_dead_letter_queue_a_bad_message_is_rejected_to_the_dead_letter_exchange(
    broker: LocalRabbitMQ, queue: str, consumer,
) -> None:
    publish(broker.parameters, queue, 4, body=lambda n: b"bad %d" % n if n % 2 else b"good %d" % n)
    running = consumer(queue, CHECK="tests.support.consumer_checks:record", **{RECORD_FILE.removeprefix("CONSUMER_"): os.devnull})
    eventually(lambda: running.processed("error") == 2 and running.processed("success") == 2, timeout=30, what="4 messages handled")
    dead = messages(broker.parameters, f"{queue}.dlq")
    assert sorted(body for _, body in dead) == [b"bad 1", b"bad 3"]
    assert all(properties.headers["x-death"][0]["reason"] == "rejected" for properties, _ in dead)


def test_sigterm_mid_stream_loses_nothing(broker: LocalRabbitMQ, queue: str, consumer, tmp_path: Path) -> None:
    record = tmp_path / "handled"
    record.touch()
    # One message in 10 is bad (a dead letter); 20 in hand at a time (the prefetch).
    published = publish(broker.parameters, queue, 600, body=lambda n: b"bad %d" % n if n % 10 == 0 else b"good %d" % n)
    running = consumer(queue, SECONDS_PER_MESSAGE="0.01", PREFETCH="20", DEAD_LETTER_QUEUE=f"{queue}.dlq",
                       CHECK="tests.support.consumer_checks:record", **{RECORD_FILE.removeprefix("CONSUMER_"): str(record)})
    eventually(lambda: running.processed("success") >= 100, timeout=60, what="100 messages handled")
    assert running.terminate() == 0

    handled = record.read_bytes().splitlines()
    queued = [body for _, body in messages(broker.parameters, queue)]
    dead = [body for _, body in messages(broker.parameters, f"{queue}.dlq")]
    print(f"SIGTERM after {len(handled)} handled, {len(dead)} dead-lettered; {len(queued)} still queued")
    assert queued, "stopped mid-stream"
    assert len(handled) + len(dead) + len(queued) == published, "every message exactly once"
    assert set(handled) | set(dead) | set(queued) == {b"bad %d" % n if n % 10 == 0 else b"good %d" % n for n in range(published)}
    assert all(body.startswith(b"bad") for body in dead)


def test_the_cpu_setting_burns_cpu(broker: LocalRabbitMQ, queue: str, consumer) -> None:
    count, cpu_per_message = 100, 0.02
    baseline_queue = f"{queue}-baseline"
    declare_queue(broker.parameters, baseline_queue)
    publish(broker.parameters, baseline_queue, count)
    publish(broker.parameters, queue, count)
    idle = consumer(baseline_queue, PREFETCH="20")
    burning = consumer(queue, PREFETCH="20", CPU_SECONDS_PER_MESSAGE=str(cpu_per_message))
    eventually(lambda: idle.processed("success") == count and burning.processed("success") == count, timeout=90, what="both drained")
    without, with_burn = idle.cpu_seconds(), burning.cpu_seconds()
    print(f"CPU for {count} messages: {without:.2f}s without burning, {with_burn:.2f}s burning {cpu_per_message}s each")
    # Each message burned its CPU time for sure; beyond the start-up both pay, the difference shows it.
    assert with_burn >= count * cpu_per_message and with_burn - without >= 0.75 * count * cpu_per_message
    reported = burning.metrics()[("process_cpu_seconds_total", ())]
    assert reported >= count * cpu_per_message, "the process' own metrics show it too"
