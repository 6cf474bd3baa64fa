"""The example consumer (examples/consumer) as real pods on the real node, for a Deployment that
Flowkeeper scales: the image imported into the node, the broker and Prometheus wired to the pods.

    with ConsumerPods(node, broker, prometheus, namespace="shop", integration="order-to-warehouse") as pods:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(pods.secret("order-consumer-broker", "guest", "guest")))
        pods.configure(deployment, queue="orders", dead_letter_queue="orders.dlq",
                       credentials_secret="order-consumer-broker", check="examples.demo.orders:release_1_0",
                       seconds_per_message=0.05)       # a Deployment manifest, changed in place
        cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment))
        pods.seen                                      # every pod seen: name -> node

- The broker listens on 127.0.0.1 only; the pods reach it through a relay on the host end of the
  node's veth (`broker_host`, `broker_port`). RabbitMQ sees the relay's loopback connection, so its
  loopback-only `guest` user works.
- Prometheus scrapes every consumer pod at <pod IP>:8000 (the pod network is routed from the host
  through the veth): a thread keeps its static targets equal to the pods' addresses, the pods that
  are terminating included, so a pod's last counts are scraped while it finishes.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Sequence

from tests.support.consumer_image import consumer_image
from tests.support.netns import TcpRelay
from tests.support.prometheus import LocalPrometheus
from tests.support.rabbitmq import LocalRabbitMQ
from tests.support.real_node import RealNode

METRICS_PORT = 8000
CONTAINER = "consumer"


class ConsumerPods:
    def __init__(self, node: RealNode, broker: LocalRabbitMQ, prometheus: LocalPrometheus, *, namespace: str, integration: str,
                 selector: str = "app=order-consumer", static_targets: Sequence[str] = ()) -> None:
        self.node, self.broker, self.prometheus = node, broker, prometheus
        self.namespace, self.integration, self.selector = namespace, integration, selector
        self.static_targets = list(static_targets)
        self.image = consumer_image()
        self.relay: TcpRelay | None = None
        self.targets: list[str] = []
        self.seen: dict[str, str] = {}  # every consumer pod seen scheduled: its name -> its node
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow_pods, name="consumer-pod-targets", daemon=True)

    # -- lifecycle
    def start(self) -> ConsumerPods:
        self.node.import_image(self.image.archive)
        self.relay = TcpRelay(self.node.netns.host_ip, ("127.0.0.1", self.broker.amqp_port)).start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        if self.relay is not None:
            self.relay.close()
            self.relay = None

    def __enter__(self) -> ConsumerPods:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses the pods use
    @property
    def broker_host(self) -> str:
        return self.node.netns.host_ip

    @property
    def broker_port(self) -> int:
        assert self.relay is not None, "start() first"
        return self.relay.port

    # -- manifests
    def secret(self, name: str, username: str, password: str) -> dict:
        data = {"username": username, "password": password}
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": self.namespace},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}

    def configure(self, deployment: dict, *, queue: str, dead_letter_queue: str, credentials_secret: str, check: str,
                  seconds_per_message: float, backoff_max_seconds: float = 5) -> dict:
        """Makes the container `consumer` of a Deployment manifest (changed in place, and returned)
        this consumer, on the real node, with the broker's user and password from
        `credentials_secret`. The backoff stays short so that a wrong configuration is counted
        often enough for a short rate window (the operator's --rate-window)."""
        def secret_ref(key: str) -> dict:
            return {"valueFrom": {"secretKeyRef": {"name": credentials_secret, "key": key}}}

        env = {
            "CONSUMER_INTEGRATION": {"value": self.integration},
            "CONSUMER_METRICS_NAMESPACE": {"value": self.namespace},  # a static scrape has no discovery to set it
            "CONSUMER_BACKOFF_MAX_SECONDS": {"value": f"{backoff_max_seconds:g}"},
            "CONSUMER_BROKER_HOST": {"value": self.broker_host},
            "CONSUMER_BROKER_PORT": {"value": str(self.broker_port)},
            "CONSUMER_BROKER_USERNAME": secret_ref("username"),
            "CONSUMER_BROKER_PASSWORD": secret_ref("password"),
            "CONSUMER_QUEUE": {"value": queue},
            "CONSUMER_DEAD_LETTER_QUEUE": {"value": dead_letter_queue},
            "CONSUMER_SECONDS_PER_MESSAGE": {"value": f"{seconds_per_message:g}"},
            "CONSUMER_CHECK": {"value": check},
        }
        pod = deployment["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == CONTAINER)
        container.update({
            "image": self.image.name, "imagePullPolicy": "Never",
            "env": [{"name": name, **value} for name, value in env.items()],
            "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
            # Ready once the program runs (it serves /metrics before it connects): a rollout then
            # waits for a started consumer, and the ready replicas are pods that work.
            "readinessProbe": {"httpGet": {"path": "/metrics", "port": METRICS_PORT}, "periodSeconds": 2, "timeoutSeconds": 2},
            "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
        })
        pod.update(self.node.pod_overrides(), terminationGracePeriodSeconds=10)
        return deployment

    # -- rollouts
    def _get(self, *args: str) -> dict:
        return json.loads(self.node.cluster.kubectl("get", *args, "-n", self.namespace, "-o", "json").stdout)

    def rolled_out(self, deployment: str) -> bool:
        """Every consumer pod there is, terminating ones included, is of the Deployment's current
        pod template: from now on no pod of an earlier template takes a message."""
        found = self._get("deployment", deployment)
        revision = found["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision")
        if found["status"].get("observedGeneration") != found["metadata"]["generation"] or revision is None:
            return False
        current = {rs["metadata"]["labels"].get("pod-template-hash") for rs in self._get("replicasets", "-l", self.selector)["items"]
                   if rs["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision") == revision}
        pods = self._get("pods", "-l", self.selector)["items"]
        return len(pods) == found["spec"]["replicas"] and all(
            p["metadata"]["labels"].get("pod-template-hash") in current and p["status"].get("phase") == "Running" for p in pods)

    # -- Prometheus targets
    def pod_addresses(self) -> list[str]:
        pods = self._get("pods", "-l", self.selector)
        self.seen.update({p["metadata"]["name"]: p["spec"]["nodeName"] for p in pods["items"] if p["spec"].get("nodeName")})
        return sorted({f"{p['status']['podIP']}:{METRICS_PORT}" for p in pods["items"] if p["status"].get("podIP")})

    def _follow_pods(self) -> None:
        while not self._stop.wait(0.5):
            try:
                found = self.pod_addresses()
                if found != self.targets:
                    self.prometheus.set_targets([*self.static_targets, *found])
                    self.targets = found
            except (OSError, RuntimeError, ValueError):
                continue  # the API server or Prometheus busy for a moment: the next round retries
