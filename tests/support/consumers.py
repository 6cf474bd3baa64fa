"""Simulated consumers of one integration flow, for the end-to-end test and the demo.

kwok's pods run no containers, so the consumers a Deployment stands for are threads here: the pool
keeps as many running as the Deployment has ready replicas (read from the API), and each one takes
messages from a real RabbitMQ queue at a fixed rate, like a pod of a real flow would:

    pool = ConsumerPool(broker.parameters, "orders", "order-to-warehouse", rate_per_replica=20,
                        dead_letter_fraction=0.02,
                        replicas=DeploymentReader(cluster.kubeconfig_path, "shop", "order-consumer"))
    with pool:                  # follows the Deployment; serves /metrics at pool.metrics_target
        ...
        pool.configuration_error = True   # every message now fails and stays in the queue
    pool.counts                 # consumed, dead-lettered: for "no message lost"

Each consumer exports the Flowkeeper metrics convention (docs/metrics-convention.md; the names come
from the operator's own adapter, so the two cannot drift), labelled integration=<name> (and namespace=<namespace> when given).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pika
import pika.exceptions
from kubernetes import client, config
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from flowkeeper.domain.dead_letters import ERROR_CLASS_HEADER, ERROR_HEADER, REDRIVE_HEADER
from flowkeeper.adapters.prometheus.convention import ERRORS, INTEGRATION, LAST_SUCCESS, NAMESPACE, PROCESSED, PROCESSING_SECONDS

log = logging.getLogger(__name__)

# On the Deployment's pod template: "true" makes the simulated consumers fail every message with a
# configuration error, "false" fixes them. Changing it rolls the Deployment out, like deploying a bad
# (or fixed) configuration for real would.
CONFIGURATION_ERROR_ANNOTATION = "demo.flowkeeper.io/configuration-error"


@dataclass(frozen=True)
class DeploymentState:
    ready_replicas: int
    configuration_error: bool | None  # from the annotation; None: not set, the pool's switch decides


class DeploymentReader:
    """Reads a Deployment's ready replicas and its simulated configuration from the API server.
    A Deployment that does not exist has no ready replicas."""

    def __init__(self, kubeconfig: str | Path, namespace: str, name: str) -> None:
        self.namespace, self.name = namespace, name
        self._apps = client.AppsV1Api(config.new_client_from_config(config_file=str(kubeconfig)))

    def __call__(self) -> DeploymentState:
        try:
            deployment = self._apps.read_namespaced_deployment(self.name, self.namespace, _request_timeout=5)
        except client.ApiException as error:
            if error.status == 404:
                return DeploymentState(0, None)
            raise
        annotations = (deployment.spec.template.metadata and deployment.spec.template.metadata.annotations) or {}
        flag = annotations.get(CONFIGURATION_ERROR_ANNOTATION)
        return DeploymentState(deployment.status.ready_replicas or 0, None if flag is None else flag == "true")


@dataclass(frozen=True)
class Counts:
    consumed: int  # acked: delivered to the target system
    dead_lettered: int  # rejected without requeue: now in the dead-letter queue
    configuration_errors: int  # failed attempts, each message put back in the queue


class _Metrics:
    """The convention's series, in a registry of this pool's own (several pools in one process).
    `namespace`, when given, stands for the label Prometheus' Kubernetes discovery puts on the series of
    consumer pods (these consumers are threads, scraped without it)."""

    def __init__(self, integration: str, namespace: str | None = None) -> None:
        self.registry = CollectorRegistry()
        names, values = ([NAMESPACE, INTEGRATION], [namespace, integration]) if namespace else ([INTEGRATION], [integration])
        # prometheus_client appends _total to counters itself.
        processed = Counter(PROCESSED.removesuffix("_total"), "Messages taken from the queue and finished, by outcome",
                            [*names, "status"], registry=self.registry)
        errors = Counter(ERRORS.removesuffix("_total"), "Processing errors by class", [*names, "class"], registry=self.registry)
        self.seconds = Histogram(PROCESSING_SECONDS, "Time to process one message", names,
                                 registry=self.registry).labels(*values)
        self.last_success = Gauge(LAST_SUCCESS, "Unix time of the last message processed successfully", names,
                                  registry=self.registry).labels(*values)
        # Every child exists from the start (at 0), so "no errors yet" reads as 0, not as no data.
        self.success = processed.labels(*values, "success")
        self.error = processed.labels(*values, "error")
        self.configuration_errors = errors.labels(*values, "configuration")
        self.data_errors = errors.labels(*values, "data")


class ConsumerPool:
    """Consumer threads of one flow. `replicas` is a fixed number, or a callable the pool polls every
    `poll_interval` seconds (a DeploymentReader, or anything returning an int or a DeploymentState)."""

    def __init__(
        self,
        parameters: pika.ConnectionParameters,
        queue: str,
        integration: str,
        *,
        rate_per_replica: float = 10.0,
        dead_letter_fraction: float = 0.0,
        configuration_error: bool = False,
        replicas: int | Callable[[], int | DeploymentState] = 1,
        poll_interval: float = 1.0,
        namespace: str | None = None,
        dead_letter_queue: str | None = None,
        data_bug: Callable[[bytes], str | None] | None = None,
    ) -> None:
        if rate_per_replica <= 0 or not 0 <= dead_letter_fraction <= 1:
            raise ValueError("rate_per_replica must be > 0 and dead_letter_fraction within [0, 1]")
        self.parameters, self.queue, self.integration = parameters, queue, integration
        self.seconds_per_message = 1 / rate_per_replica
        self.dead_letter_fraction = dead_letter_fraction
        self.configuration_error = configuration_error  # the switch: read by every consumer, per message
        self.poll_interval = poll_interval
        # With a dead-letter queue, a failed message is published there by the consumer itself, with
        # the convention's headers (x-flowkeeper-error-class, x-flowkeeper-error), then acked; without
        # one it is rejected to the queue's dead-letter exchange. `data_bug(body)` returns the reason
        # a message fails (a data error), or None: switch it at any time (a bug deployed, then fixed).
        self.dead_letter_queue = dead_letter_queue
        self.data_bug = data_bug
        self.handled: collections.Counter[bytes] = collections.Counter()  # bodies acked, by times (duplicates show)
        self.redriven_seen = 0  # messages carrying a redrive's mark that came by
        self._replicas = replicas
        self._metrics = _Metrics(integration, namespace)
        self._lock = threading.Lock()
        self._workers: list[_Consumer] = []
        self._leaving: list[_Consumer] = []
        self._finished = 0  # messages acked or dead-lettered, which decides the next dead letter
        self._consumed = self._dead_lettered = self._configuration_errors = 0
        self._stopping = threading.Event()
        self._follower: threading.Thread | None = None
        self._server = None

    # --- lifecycle

    def start(self) -> ConsumerPool:
        self._server, _ = start_http_server(0, addr="127.0.0.1", registry=self._metrics.registry)
        if callable(self._replicas):
            self._follower = threading.Thread(target=self._follow, name=f"follow-{self.integration}", daemon=True)
            self._follower.start()
        else:
            self.scale(self._replicas)
        return self

    def stop(self) -> None:
        """Stops every consumer (a message in hand goes back to the queue) and the metrics server."""
        self._stopping.set()
        if self._follower is not None:
            self._follower.join(timeout=10)
        self.scale(0)
        for worker in self._leaving:
            worker.join(timeout=10)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ConsumerPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- size

    @property
    def replicas(self) -> int:
        """Consumers running now."""
        with self._lock:
            return len(self._workers)

    def scale(self, replicas: int) -> None:
        with self._lock:
            while len(self._workers) < replicas:
                worker = _Consumer(self, name=f"consumer-{self.integration}-{len(self._workers)}")
                self._workers.append(worker)
                worker.start()
            while len(self._workers) > replicas:
                worker = self._workers.pop()  # the newest go first, like a ReplicaSet scaling down
                worker.leave()
                self._leaving.append(worker)
            self._leaving = [worker for worker in self._leaving if worker.is_alive()]

    def _follow(self) -> None:
        while not self._stopping.is_set():
            try:
                state = self._replicas()
            except Exception as error:  # noqa: BLE001 - API not reachable: keep the consumers as they are
                log.debug("cannot read the replicas of %s: %s", self.integration, error)
            else:
                if isinstance(state, DeploymentState):
                    if state.configuration_error is not None:
                        self.configuration_error = state.configuration_error
                    state = state.ready_replicas
                if not self._stopping.is_set():
                    self.scale(state)
            self._stopping.wait(self.poll_interval)

    # --- what the consumers did

    @property
    def counts(self) -> Counts:
        with self._lock:
            return Counts(self._consumed, self._dead_lettered, self._configuration_errors)

    @property
    def metrics_target(self) -> str:
        """host:port of /metrics, as a Prometheus static target."""
        if self._server is None:
            raise RuntimeError("the pool is not started")
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.metrics_target}/metrics"

    def _handle(self, channel: pika.adapters.blocking_connection.BlockingChannel, delivery_tag: int,
                properties: pika.BasicProperties | None = None, body: bytes = b"") -> None:
        """One message: the work takes seconds_per_message, then ack, dead-letter, or put back."""
        started = time.monotonic()
        time.sleep(self.seconds_per_message)
        if self.configuration_error:
            # Nothing can be delivered with a wrong configuration: the message goes back to the queue
            # (no message lost, the backlog kept for when it is fixed). Not "processed": a retried
            # message counts once, with its final status (the convention).
            channel.basic_nack(delivery_tag, requeue=True)
            self._metrics.configuration_errors.inc()
            with self._lock:
                self._configuration_errors += 1
            return
        headers = dict((properties.headers if properties else None) or {})
        bug = self.data_bug
        reason = bug(body) if bug is not None else None
        with self._lock:
            self._finished += 1
            if REDRIVE_HEADER in headers:
                self.redriven_seen += 1
            # Exactly the fraction asked, spread evenly: the n-th message is a dead letter when the
            # whole number of dead letters due grows at n.
            if reason is None and int(self._finished * self.dead_letter_fraction) > int((self._finished - 1) * self.dead_letter_fraction):
                reason = "invalid order"
        if reason is not None:
            if self.dead_letter_queue:
                headers.update({ERROR_CLASS_HEADER: "data", ERROR_HEADER: reason})
                channel.basic_publish("", self.dead_letter_queue, body, pika.BasicProperties(
                    headers=headers, delivery_mode=2, timestamp=int(time.time()), message_id=properties.message_id if properties else None))
                channel.basic_ack(delivery_tag)
            else:
                channel.basic_reject(delivery_tag, requeue=False)  # to the dead-letter queue
            self._metrics.error.inc()
            self._metrics.data_errors.inc()
        else:
            channel.basic_ack(delivery_tag)
            self._metrics.success.inc()
            self._metrics.last_success.set(time.time())
        self._metrics.seconds.observe(time.monotonic() - started)
        with self._lock:
            if reason is not None:
                self._dead_lettered += 1
            else:
                self._consumed += 1
                self.handled[body] += 1


class _Consumer(threading.Thread):
    """One simulated replica: its own connection (pika connections are not thread-safe), one message
    in hand at a time (prefetch 1), so a replica's rate is the rate asked for."""

    def __init__(self, pool: ConsumerPool, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.pool = pool
        self._leaving = threading.Event()

    def leave(self) -> None:
        """Finishes the message in hand, then disconnects."""
        self._leaving.set()

    def run(self) -> None:
        while not self._leaving.is_set():
            try:
                self._consume()
            except pika.exceptions.AMQPError as error:  # the broker restarts or is gone: try again
                log.debug("%s: %r; reconnecting", self.name, error)
                self._leaving.wait(1.0)

    def _consume(self) -> None:
        with pika.BlockingConnection(self.pool.parameters) as connection:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=1)
            if self.pool.dead_letter_queue:
                channel.confirm_delivery()  # a dead letter is published with a confirm before its original is acked
            # The timeout wakes the loop up on an idle queue, to notice leave().
            for method, properties, body in channel.consume(self.pool.queue, inactivity_timeout=0.2):
                if self._leaving.is_set():
                    break  # a message delivered now goes back to the queue when the connection closes
                if method is not None:
                    self.pool._handle(channel, method.delivery_tag, properties, body)
            with contextlib.suppress(pika.exceptions.AMQPError):
                channel.cancel()
