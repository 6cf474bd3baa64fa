"""examples/consumer/Dockerfile built for real (buildah, FROM the Debian base built here, every RUN
step executed), and the consumer run from the image's own files as its unprivileged user against
the real RabbitMQ: it consumes, dead-letters, serves /metrics, and stops on SIGTERM with exit 0.
The image's root filesystem is entered with chroot in the host's network namespace (the broker
listens on the host's loopback); as a pod on a real node it runs under the kubelet."""

from __future__ import annotations

import shutil
import signal
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples.demo import orders
from tests.support.cluster_fixtures import eventually
from tests.support.consumer_image import consumer_image
from tests.support.images import Image
from tests.support.oci import image_config, image_rootfs
from tests.support.processes import Process, free_port
from tests.support.rabbitmq import LocalRabbitMQ, declare_queue, depth, publish

# A cold build (Debian base, then the wheel's dependencies from PyPI) takes a few minutes.
pytestmark = [pytest.mark.images, pytest.mark.rabbitmq, pytest.mark.timeout(1800)]

USER = (65532, 65532)


@pytest.fixture(scope="module")
def image() -> Image:
    return consumer_image()


@pytest.fixture(scope="module")
def rootfs(image: Image) -> Iterator[Path]:
    with image_rootfs(image) as path:
        yield path


def test_the_image_runs_the_consumer_as_an_unprivileged_user(image: Image) -> None:
    config = image_config(image)
    assert config["User"] == f"{USER[0]}:{USER[1]}"
    assert config["Entrypoint"] == ["/opt/venv/bin/python", "-m", "examples.consumer"]
    assert "8000/tcp" in config["ExposedPorts"]


def test_the_image_consumes_dead_letters_and_stops_on_sigterm(image: Image, rootfs: Path, tmp_path: Path) -> None:
    config = image_config(image)
    bodies = [orders.order(n) for n in range(40)]
    rejected = sum(1 for body in bodies if orders.release_1_1(body) is not None)
    with LocalRabbitMQ() as broker:
        queue = f"q-{uuid.uuid4().hex[:8]}"
        declare_queue(broker.parameters, queue, dead_letter_queue=f"{queue}.dlq")
        publish(broker.parameters, queue, len(bodies), body=lambda n: bodies[n])
        port = free_port()
        env = dict(variable.split("=", 1) for variable in config["Env"])
        env.update({
            "CONSUMER_INTEGRATION": "orders", "CONSUMER_METRICS_ADDRESS": "127.0.0.1", "CONSUMER_METRICS_PORT": str(port),
            "CONSUMER_BROKER_HOST": "127.0.0.1", "CONSUMER_BROKER_PORT": str(broker.amqp_port),
            "CONSUMER_BROKER_USERNAME": "guest", "CONSUMER_BROKER_PASSWORD": "guest",
            "CONSUMER_QUEUE": queue, "CONSUMER_DEAD_LETTER_QUEUE": f"{queue}.dlq",
            "CONSUMER_CHECK": "examples.demo.orders:release_1_1",
        })
        # Only the image's environment: nothing of the host's Python reaches the program.
        argv = [shutil.which("env"), "-i", *(f"{k}={v}" for k, v in env.items()),
                shutil.which("chroot"), f"--userspec={USER[0]}:{USER[1]}", str(rootfs), *config["Entrypoint"]]
        consumer = Process(f"consumer-image-{uuid.uuid4().hex[:6]}", argv, tmp_path)
        consumer.start()
        try:
            def processed() -> dict[str, float]:
                try:
                    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                except OSError:  # not serving yet
                    return {}
                return {s.labels["status"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
                        if s.name == "flowkeeper_messages_processed_total"}

            eventually(lambda: processed() == {"success": len(bodies) - rejected, "error": rejected}, timeout=60,
                       what=f"the orders handled:\n{consumer.log_tail()}")
            assert depth(broker.parameters, queue) == 0 and depth(broker.parameters, f"{queue}.dlq") == rejected
            assert consumer.popen is not None
            uids = next(line for line in Path(f"/proc/{consumer.popen.pid}/status").read_text().splitlines() if line.startswith("Uid:"))
            assert uids.split()[1:] == [str(USER[0])] * 4, "runs as the image's user"
            consumer.popen.send_signal(signal.SIGTERM)
            assert consumer.popen.wait(20) == 0, consumer.log_tail()
        finally:
            consumer.stop()
