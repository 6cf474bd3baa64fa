"""Simulated consumers of one integration flow, for tests on the kwok-only cluster (the end-to-end
test and the demo run the real consumer as pods on the real node: tests/support/consumer_pods.py).

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

Each thread runs the real consumer's loop and message handling (examples/consumer, which runs as
pods on a real node) and exports the Flowkeeper metrics convention (docs/metrics-convention.md; the
names come from the operator's own adapter, so the two cannot drift), labelled integration=<name>
(and namespace=<namespace> when given). What differs is only what decides a message's fate: the
pool's switches (configuration_error, data_bug, dead_letter_fraction) instead of real settings.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pika
from kubernetes import client, config
from prometheus_client import start_http_server

from examples.consumer.errors import ConfigurationError, ErrorClass
from examples.consumer.handling import MessageHandler, Outcome, Result, Work
from examples.consumer.loop import Backoff, ConsumeLoop, Session
from examples.consumer.metrics import ConventionMetrics
from flowkeeper.domain.dead_letters import REDRIVE_HEADER

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
        self.dead_letter_fraction = dead_letter_fraction
        self.configuration_error = configuration_error  # the switch: read by every consumer, per message
        self.poll_interval = poll_interval
        # With a dead-letter queue, a failed message is published there by the consumer itself, with
        # the convention's headers (x-flowkeeper-error-class, x-flowkeeper-error), then acked; without
        # one it is rejected to the queue's dead-letter exchange. `data_bug(body)` returns the reason
        # a message fails (a data error), or None: switch it at any time (a bug deployed, then fixed).
        self.data_bug = data_bug
        self.handled: collections.Counter[bytes] = collections.Counter()  # bodies acked, by times (duplicates show)
        self.redriven_seen = 0  # messages carrying a redrive's mark that came by
        self._replicas = replicas
        self._metrics = ConventionMetrics(integration, namespace)
        # The real consumer's handling (examples/consumer): the threads differ from its pods only in
        # what decides a message's fate (the switches above) and in how many of them run.
        self._handler = MessageHandler(self._metrics, work=Work(seconds=1 / rate_per_replica), check=self._check,
                                       dead_letter_queue=dead_letter_queue, on_result=self._count)
        self._lock = threading.Lock()
        self._workers: list[_Consumer] = []
        self._leaving: list[_Consumer] = []
        self._finished = 0  # messages acked or dead-lettered, which decides the next dead letter
        self._consumed = self._dead_lettered = self._configuration_errors = 0
        self._stopping = threading.Event()
        self._follower: threading.Thread | None = None
        self._server = None

    @property
    def seconds_per_message(self) -> float:
        """The work of one message (1 / rate_per_replica); may be changed at any time."""
        return self._handler.work.seconds

    @seconds_per_message.setter
    def seconds_per_message(self, seconds: float) -> None:
        self._handler.work = Work(seconds=seconds)

    @property
    def dead_letter_queue(self) -> str | None:
        return self._handler.dead_letter_queue

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

    def _check(self, body: bytes) -> str | None:
        """The fate the switches decide: a configuration error (the message goes back to the queue),
        a data error (its reason: a dead letter), or None (handled)."""
        if self.configuration_error:
            # Nothing can be delivered with a wrong configuration: the backlog is kept for the fix.
            raise ConfigurationError("the consumers' configuration is broken")
        bug = self.data_bug
        reason = bug(body) if bug is not None else None
        with self._lock:
            self._finished += 1
            # Exactly the fraction asked, spread evenly: the n-th message is a dead letter when the
            # whole number of dead letters due grows at n.
            if reason is None and int(self._finished * self.dead_letter_fraction) > int((self._finished - 1) * self.dead_letter_fraction):
                reason = "invalid order"
        return reason

    def _count(self, body: bytes, headers: dict, result: Result) -> None:
        with self._lock:
            if result.outcome is Outcome.REQUEUED:
                if result.error_class is ErrorClass.CONFIGURATION:
                    self._configuration_errors += 1
                return
            if REDRIVE_HEADER in headers:
                self.redriven_seen += 1
            if result.outcome is Outcome.DEAD_LETTERED:
                self._dead_lettered += 1
            else:
                self._consumed += 1
                self.handled[body] += 1


class _Consumer(threading.Thread):
    """One simulated replica: the real consumer's loop (its own connection: pika connections are not
    thread-safe), one message in hand at a time (prefetch 1), so a replica's rate is the rate asked
    for. A failure (the broker restarts, a message put back) is retried a second later."""

    def __init__(self, pool: ConsumerPool, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._leaving = threading.Event()
        session = Session(pool.parameters, pool.queue, pool._handler, prefetch=1)
        self._loop = ConsumeLoop(lambda: session, pool._metrics, self._leaving, Backoff(1.0, 1.0), name=name)

    def leave(self) -> None:
        """Finishes the message in hand, then disconnects."""
        self._leaving.set()

    def run(self) -> None:
        self._loop.run()
