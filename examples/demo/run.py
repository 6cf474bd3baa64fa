"""`make demo`: Flowkeeper doing its job on this machine, with nothing to set up.

It starts a local control plane, RabbitMQ, Prometheus and the operator, applies the demo flow
(examples/demo/flow.yaml), and tells a story you can watch:
1. a burst of orders lands in the queue, faster than one consumer can handle;
   Flowkeeper scales the consumers out, the backlog drains, a few orders go to the dead-letter queue;
   after the scale-down window it is back to one consumer;
2. a broken configuration is deployed: the consumers fail every message; Flowkeeper pauses the flow
   (consumers to 0, the backlog waits in the queue); the fix is deployed and the flow resumes and drains.
At the end: a summary, and a PNG chart of backlog and replicas over time (demo-output/).

Consumers are simulated by threads (kwok's pods run no containers) that follow the Deployment's ready
replicas. Ctrl-C at any point stops everything the demo started.

    python -m examples.demo.run [--burst 6000] [--rate 20] [--no-pause] [--out demo-output]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from kubernetes import client, config

from examples.demo.chart import write_chart
from examples.demo.producer import Producer
from examples.demo.timeline import Timeline, summarize
from examples.demo.view import LiveView, format_summary
from tests.support.cluster import REPO, LocalCluster
from tests.support.consumers import CONFIGURATION_ERROR_ANNOTATION, ConsumerPool, DeploymentReader
from tests.support.operator import OperatorProcess
from tests.support.prometheus import LocalPrometheus
from tests.support.rabbitmq import LocalRabbitMQ, declare_queue, depth

FLOW_FILE = REPO / "examples" / "demo" / "flow.yaml"
NAMESPACE = "shop"


def _flow_spec() -> tuple[dict, dict]:
    deployment, flow = yaml.safe_load_all(FLOW_FILE.read_text())
    return deployment, flow


@dataclass
class Settings:
    burst: int = 6000  # orders published at once
    rate_per_replica: float = 20.0  # orders one consumer handles per second
    dead_letter_fraction: float = 0.005  # below the 1 % error-ratio threshold: dead letters (P3), not P2
    with_pause: bool = True
    out: Path = REPO / "demo-output"
    drain_timeout: float = 300.0


class Demo:
    """Everything the story needs, running; stopped again on exit (also on Ctrl-C)."""

    def __init__(self, settings: Settings, cluster: LocalCluster | None = None, namespace: str = NAMESPACE) -> None:
        self.settings = settings
        self.namespace = namespace
        self._given_cluster = cluster
        self._stack = contextlib.ExitStack()
        deployment, flow = _flow_spec()
        self.deployment_name = deployment["metadata"]["name"]
        self.flow_name = flow["metadata"]["name"]
        self.queue = flow["spec"]["source"]["queue"]
        self.dead_letter_queue = flow["spec"]["source"]["deadLetterQueue"]
        self.max_replicas = flow["spec"]["scaling"]["maxReplicas"]
        self.min_replicas = flow["spec"]["scaling"]["minReplicas"]
        self.timeline = Timeline()

    # --- setting up

    def __enter__(self) -> Demo:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        say = print
        say("starting the local control plane (the first run builds it: about 11 minutes)...", flush=True)
        self.cluster = self._given_cluster or self._stack.enter_context(LocalCluster())
        if self._given_cluster is None:
            self.cluster.kubectl("apply", "-f", str(REPO / "crds"))
            self.cluster.kubectl("wait", "--for=condition=Established", "crd/integrationflows.flowkeeper.io")
        say("starting RabbitMQ...", flush=True)
        self.broker = self._stack.enter_context(LocalRabbitMQ())
        declare_queue(self.broker.parameters, self.queue, dead_letter_queue=self.dead_letter_queue)

        self.cluster.kubectl("create", "namespace", self.namespace, check=False)
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", str(FLOW_FILE))
        self.pool = self._stack.enter_context(ConsumerPool(
            self.broker.parameters, self.queue, self.flow_name,
            rate_per_replica=self.settings.rate_per_replica,
            dead_letter_fraction=self.settings.dead_letter_fraction,
            replicas=DeploymentReader(self.cluster.kubeconfig_path, self.namespace, self.deployment_name),
            namespace=self.namespace,  # as Kubernetes discovery would label the consumer pods' series
        ))
        say("starting Prometheus and the operator...", flush=True)
        self.prometheus = self._stack.enter_context(
            LocalPrometheus([self.broker.prometheus_scrape_target, self.pool.metrics_target])
        )
        self.operator = OperatorProcess(
            self.cluster.env, self.cluster.workdir,
            "-n", self.namespace, f"--prometheus-url={self.prometheus.url}", "--rate-window=10s",
            name="flowkeeper-demo",
        )
        self._stack.callback(self.operator.stop)
        self.operator.start()
        api = config.new_client_from_config(config_file=str(self.cluster.kubeconfig_path))
        self._custom, self._apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
        self.view = LiveView()
        self._stack.callback(self.view.close)

    # --- observing

    def flow_status(self) -> dict:
        body = self._custom.get_namespaced_custom_object(
            "flowkeeper.io", "v1alpha1", self.namespace, "integrationflows", self.flow_name
        )
        return body.get("status") or {}

    def sample(self) -> None:
        status = self.flow_status()
        deployment = self._apps.read_namespaced_deployment(self.deployment_name, self.namespace)
        sample = self.timeline.record(
            backlog=depth(self.broker.parameters, self.queue),
            dead_letters=depth(self.broker.parameters, self.dead_letter_queue),
            desired=status.get("desiredReplicas"),
            ready=deployment.status.ready_replicas or 0,
            phase=status.get("phase"),
            severity=status.get("severity"),
        )
        self.view.update(sample)

    def watch_until(self, done: Callable[[], bool], timeout: float, what: str) -> float:
        """Samples once a second until `done()`; returns the seconds it took."""
        started = time.monotonic()
        while not done():
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{what}: not within {timeout:.0f}s")
            self.sample()
            time.sleep(1.0)
        self.sample()
        return time.monotonic() - started

    def story(self, mark: str, text: str) -> None:
        """A moment of the story: a short mark on the chart, a sentence in the live view."""
        self.timeline.mark(mark)
        self.view.event(f"[{self.timeline.now():6.1f}s] {text}")

    def set_configuration_error(self, broken: bool) -> None:
        """Deploys a broken (or the fixed) consumer configuration: a new pod template, like a real rollout."""
        patch = {"spec": {"template": {"metadata": {"annotations": {CONFIGURATION_ERROR_ANNOTATION: str(broken).lower()}}}}}
        self.cluster.kubectl("patch", "deployment", self.deployment_name, "-n", self.namespace, "--type=merge",
                             "-p", json.dumps(patch))

    # --- the story

    def run(self) -> dict:
        s = self.settings
        self.watch_until(lambda: self.flow_status().get("phase") in ("Running", "Degraded"), 60, "the flow is watched")
        self.story("burst", f"publishing a burst of {s.burst} orders; one consumer handles {s.rate_per_replica:g}/s")
        producer = Producer(self.broker.parameters, self.queue, s.burst)
        producer.start()
        self.watch_until(lambda: not producer.is_alive(), 120, "the burst published")
        published = self._published(producer)
        self.watch_until(self._drained, s.drain_timeout, "the backlog drained")
        self.story("drained", "backlog drained")

        minimum = self.min_replicas
        self.watch_until(lambda: self.flow_status().get("desiredReplicas") == minimum, 60, "the scale-down")
        self.story("scaled down", f"queue empty for the scale-down window: back to {minimum} consumer(s)")

        if s.with_pause:
            self.story("bad config", "deploying a broken consumer configuration, then 2000 more orders")
            self.set_configuration_error(True)
            more = Producer(self.broker.parameters, self.queue, 2000)
            more.run()  # in this thread: the story goes on once they are in the queue
            published += self._published(more)
            self.watch_until(lambda: self.flow_status().get("phase") == "Paused", 60, "the flow paused")
            reason = self.flow_status().get("pause", {}).get("reason")
            self.story("paused", f"paused ({reason}): consumers stopped, the backlog waits in the queue")
            self.watch_until(lambda: self.timeline.now() - self.timeline.marks[-1].t > 10, 30, "a look at the pause")
            self.story("fix", "deploying the fix")
            self.set_configuration_error(False)
            self.watch_until(lambda: self.flow_status().get("phase") != "Paused", 60, "the flow resumed")
            self.story("resumed", "resumed with the replicas it had before the pause; autoscaling goes on")
            self.watch_until(self._drained, s.drain_timeout, "the backlog drained again")
            self.story("drained", "backlog drained")

        counts = self.pool.counts
        summary = summarize(
            self.timeline,
            published=published,
            consumed=counts.consumed,
            dead_lettered=counts.dead_lettered,
            queued=depth(self.broker.parameters, self.queue),
        )
        return summary

    @staticmethod
    def _published(producer: Producer) -> int:
        if producer.error is not None:
            raise RuntimeError(f"publishing failed: {producer.error!r}")
        return producer.published

    def _drained(self) -> bool:
        return depth(self.broker.parameters, self.queue) == 0 and self.pool.replicas > 0 and (
            self.flow_status().get("phase") not in ("Paused", None)
        )

    def write_outputs(self, summary: dict) -> Path:
        out = self.settings.out
        out.mkdir(parents=True, exist_ok=True)
        chart = write_chart(self.timeline, out / "demo.png", max_replicas=self.max_replicas)
        self.timeline.write_json(out / "timeline.json")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return chart


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.demo.run", description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=Settings.burst, help="orders published at once")
    parser.add_argument("--rate", type=float, default=Settings.rate_per_replica, help="orders per second per consumer")
    parser.add_argument("--no-pause", action="store_true", help="skip the configuration-error part")
    parser.add_argument("--out", type=Path, default=Settings.out, help="where the chart and summary go")
    args = parser.parse_args(argv)
    # SIGTERM cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = Settings(burst=args.burst, rate_per_replica=args.rate, with_pause=not args.no_pause, out=args.out)
    try:
        with Demo(settings) as demo:
            summary = demo.run()
            chart = demo.write_outputs(summary)
        print()
        print(format_summary(summary))
        print(f"chart: {chart}")
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started is stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
