"""`make demo`: Flowkeeper doing its job on this machine, with nothing to set up.

It starts a local control plane, RabbitMQ, Prometheus and the operator, applies the demo flow
(examples/demo/flow.yaml), and tells a story you can watch:
1. a burst of orders lands in the queue, faster than one consumer can handle;
   Flowkeeper scales the consumers out, the backlog drains, a few orders go to the dead-letter queue;
   after the scale-down window it is back to one consumer;
2. a broken configuration is deployed: the consumers fail every message; Flowkeeper pauses the flow
   (consumers to 0, the backlog waits in the queue); the fix is deployed and the flow resumes and drains;
3. a consumer release with a data bug is deployed: it dead-letters the orders with a delivery time;
   the flow's status shows the dead letters by class and reason; the fix is deployed, and a
   DeadLetterRedrive moves the bug's dead letters back to the queue in batches once no data error was
   counted for its cause window; the few orders that are bad whatever the release fail again and
   stay in the dead-letter queue, marked, not redriven again.
At the end: a summary, and a PNG chart of backlog, dead letters and replicas over time (demo-output/).

The consumers are real pods: the example consumer (examples/consumer, its image built here) on the
local cluster's real node, a kubelet and containerd in a network namespace of their own (the demo
needs root for it). They take the orders from RabbitMQ, and Prometheus scrapes each pod's /metrics.
The releases are the consumer's CONSUMER_CHECK (examples/demo/orders.py); the broken configuration
is a wrong password in the consumers' credentials Secret, and the fix is the right one and a
rollout. Ctrl-C at any point stops everything the demo started.

    python -m examples.demo.run [--burst 6000] [--rate 20] [--no-pause] [--no-redrive] [--out demo-output]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from kubernetes import client, config

from examples.demo import orders
from examples.demo.chart import write_chart
from examples.demo.producer import Producer
from examples.demo.timeline import Timeline, summarize
from examples.demo.view import LiveView, format_summary
from flowkeeper.adapters.prometheus.convention import PROCESSED
from tests.support.cluster import REPO, LocalCluster
from tests.support.consumer_pods import ConsumerPods
from tests.support.operator import OperatorProcess
from tests.support.prometheus import LocalPrometheus
from tests.support.rabbitmq import LocalRabbitMQ, declare_queue, depth

FLOW_FILE = REPO / "examples" / "demo" / "flow.yaml"
NAMESPACE = "shop"
BROKER_SECRET = "broker-credentials"  # the flow's spec.source.connection reads the broker's user and password here
CONSUMER_SECRET = "order-consumer-broker"  # the consumers' own: the one the broken configuration breaks
BROKER_USER = BROKER_PASSWORD = "guest"  # RabbitMQ's guest: loopback only (the pods come through a relay on the host)
WRONG_PASSWORD = "guest-2024"
RELEASE_CHECKS = {"1.0": "release_1_0", "1.1": "release_1_1", "1.2": "release_1_2"}  # examples/demo/orders.py
REDRIVE_NAME = "after-the-date-fix"
REDRIVE_TERMINAL = ("Succeeded", "Stopped", "Failed")


def _flow_spec() -> tuple[dict, dict]:
    deployment, flow = yaml.safe_load_all(FLOW_FILE.read_text())
    return deployment, flow


@dataclass
class Settings:
    burst: int = 6000  # orders published at once
    rate_per_replica: float = 20.0  # orders one consumer handles per second
    # Orders without a customerId, rejected by every release: below the 1 % error-ratio threshold,
    # dead letters (P3), not P2.
    dead_letter_fraction: float = 0.005
    with_pause: bool = True
    with_redrive: bool = True
    bug_orders: int = 1200  # published while the data bug is deployed; one in 4 has a delivery time
    impossible_date_every: int = 100  # of those, every n-th has a date that does not exist: still bad after the fix
    redrive_batch: int = 50
    redrive_interval: str = "2s"
    cause_window: str = "1m"  # the API's minimum
    verify_for: str = "10s"
    out: Path = REPO / "demo-output"
    drain_timeout: float = 300.0
    redrive_timeout: float = 300.0  # the cause window, then the batches and the verification


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
        self.deployment, self.flow = deployment, flow
        self.timeline = Timeline()
        self.orders_published = 0  # orders are numbered across the story: every body is different
        self.bug_orders: range = range(0)  # the numbers of the orders published while the data bug ran
        self.redrive_applied = False
        self._redrive_seen: tuple = ()  # (phase, reason, moved) last told in the live view
        self.pods_shown: str | None = None  # `kubectl get pods -o wide` at the peak
        self.pause_reason: str | None = None

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
        say("starting the local control plane and its real node (the first run builds them: about 15 minutes)...", flush=True)
        self.cluster = self._given_cluster or self._stack.enter_context(LocalCluster(real_node=True))
        if self.cluster.real_node is None:
            raise ValueError("the demo's consumers run on the cluster's real node: LocalCluster(real_node=True)")
        if self._given_cluster is None:
            self.cluster.kubectl("apply", "-f", str(REPO / "crds"))
            self.cluster.kubectl("wait", "--for=condition=Established", "crd/integrationflows.flowkeeper.io",
                                 "crd/deadletterredrives.flowkeeper.io", "--timeout=60s")
        say("starting RabbitMQ...", flush=True)
        self.broker = self._stack.enter_context(LocalRabbitMQ())
        declare_queue(self.broker.parameters, self.queue, dead_letter_queue=self.dead_letter_queue)

        say("starting Prometheus, building the consumer image (the first run: a few minutes)...", flush=True)
        self.prometheus = self._stack.enter_context(LocalPrometheus([self.broker.prometheus_scrape_target]))
        self.pods = self._stack.enter_context(ConsumerPods(
            self.cluster.real_node, self.broker, self.prometheus, namespace=self.namespace, integration=self.flow_name,
            selector=",".join(f"{k}={v}" for k, v in self.deployment["spec"]["selector"]["matchLabels"].items()),
            static_targets=[self.broker.prometheus_scrape_target],
        ))
        self.cluster.kubectl("create", "namespace", self.namespace, check=False)
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(self.pods.secret(CONSUMER_SECRET, BROKER_USER, BROKER_PASSWORD)))
        # The consumers dead-letter by themselves, with the convention's headers (class and reason),
        # the orders their release rejects (examples/demo/orders.py).
        self.pods.configure(self.deployment, queue=self.queue, dead_letter_queue=self.dead_letter_queue,
                            credentials_secret=CONSUMER_SECRET, check=self.release_check("1.0"),
                            seconds_per_message=1 / self.settings.rate_per_replica)
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(self.deployment))
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(self.flow))
        self._connect_flow_to_the_broker()
        say("starting the operator...", flush=True)
        self.operator = OperatorProcess(
            self.cluster.env, self.cluster.workdir,
            "-n", self.namespace, f"--prometheus-url={self.prometheus.url}", "--rate-window=10s",
            "--dead-letter-review-interval=5", f"--allowed-broker=127.0.0.1:{self.broker.amqp_port}",
            name="flowkeeper-demo",
        )
        self._stack.callback(self.operator.stop)
        self.operator.start()
        api = config.new_client_from_config(config_file=str(self.cluster.kubeconfig_path))
        self._custom, self._apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
        self.view = LiveView()
        self._stack.callback(self.view.close)
        self.timeline = Timeline()  # the story's clock starts now, not with the builds and start-ups

    def _connect_flow_to_the_broker(self) -> None:
        """The broker's address is known only now (a free port): the flow gets its
        spec.source.connection, and the Secret with the broker's user, here rather than in flow.yaml."""
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(self.pods.secret(BROKER_SECRET, BROKER_USER, BROKER_PASSWORD)))
        connection = {
            "address": f"amqp://127.0.0.1:{self.broker.amqp_port}",
            "usernameSecret": {"name": BROKER_SECRET, "key": "username"},
            "passwordSecret": {"name": BROKER_SECRET, "key": "password"},
        }
        self.cluster.kubectl("patch", "iflow", self.flow_name, "-n", self.namespace, "--type=merge",
                             "-p", json.dumps({"spec": {"source": {"connection": connection}}}))

    # --- observing

    def flow_status(self) -> dict:
        body = self._custom.get_namespaced_custom_object(
            "flowkeeper.io", "v1alpha1", self.namespace, "integrationflows", self.flow_name
        )
        return body.get("status") or {}

    def redrive_status(self) -> dict:
        body = self._custom.get_namespaced_custom_object(
            "flowkeeper.io", "v1alpha1", self.namespace, "deadletterredrives", REDRIVE_NAME
        )
        return body.get("status") or {}

    def dead_letters(self) -> int | None:
        """Messages in the dead-letter queue, ready or delivered and not acked yet: Flowkeeper's review
        reads them without acking (they go back when it is done), and a passive declare (`depth`)
        would not count them meanwhile. From the management API, whose statistics lag by up to a
        second; None when it does not answer."""
        try:
            return self.broker.queue_stats(self.dead_letter_queue).get("messages")
        except (OSError, ValueError):
            return None

    def ready_replicas(self) -> int:
        return self._apps.read_namespaced_deployment(self.deployment_name, self.namespace).status.ready_replicas or 0

    def sample(self, dead_letters: int | None = None) -> None:
        """`dead_letters`: an exact count to record instead of the management API's."""
        status = self.flow_status()
        deployment = self._apps.read_namespaced_deployment(self.deployment_name, self.namespace)
        redrive = self.redrive_status() if self.redrive_applied else None
        sample = self.timeline.record(
            backlog=depth(self.broker.parameters, self.queue),
            dead_letters=self.dead_letters() if dead_letters is None else dead_letters,
            desired=status.get("desiredReplicas"),
            ready=deployment.status.ready_replicas or 0,
            phase=status.get("phase"),
            severity=status.get("severity"),
            redrive=None if redrive is None else (redrive.get("phase") or "Pending"),
        )
        self.view.update(sample)
        if self.pods_shown is None and sample.ready == self.max_replicas:
            self.show_pods()  # the consumers at their peak, on the real node
        if redrive:
            self._tell_redrive(redrive)

    def _tell_redrive(self, status: dict) -> None:
        """The redrive's story, from its status: a line in the live view when its phase or reason
        changes or a batch moved; a mark on the chart when it starts moving and when it is done."""
        phase = status.get("phase")
        reason = next((c.get("reason") for c in status.get("conditions") or [] if c.get("type") == "Progressing"), None)
        seen = (phase, reason, status.get("moved"))
        if not phase or seen == self._redrive_seen:
            return
        before = self._redrive_seen[0] if self._redrive_seen else None
        self._redrive_seen = seen
        s = self.settings
        if phase in REDRIVE_TERMINAL:
            self.story("redrive done", f"redrive {phase}: {status.get('moved', 0)} moved, {status.get('refailed', 0)} failed again "
                                       "(left in the dead-letter queue, marked, not redriven again)")
            return
        if phase in ("Running", "Verifying") and before in (None, "Pending", "Blocked"):
            self.story("redrive", f"the cause is fixed (no data error for {s.cause_window}): the redrive moves batches "
                                  f"of {s.redrive_batch} every {s.redrive_interval}")
        self.view.event(f"[{self.timeline.now():6.1f}s] redrive {phase} ({reason}): {status.get('message', '')}")

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

    @staticmethod
    def release_check(version: str) -> str:
        """The consumer's CONSUMER_CHECK for release `version`: the checks of examples/demo/orders.py."""
        return f"{orders.__name__}:{RELEASE_CHECKS[version]}"

    def deploy_release(self, version: str) -> None:
        """Rolls out consumer release `version`: its check in the pod template, so a real rollout."""
        self.cluster.kubectl("set", "env", f"deployment/{self.deployment_name}", "-c", "consumer",
                             f"CONSUMER_CHECK={self.release_check(version)}", "-n", self.namespace)
        self.wait_for_rollout()

    def wait_for_rollout(self) -> None:
        """Until the pods of the earlier templates are gone: the orders published next meet only
        the new release (what the story's figures count on)."""
        self.watch_until(lambda: self.pods.rolled_out(self.deployment_name), 120, "the rollout")

    def set_configuration_error(self, broken: bool) -> None:
        """Writes a wrong (or the right) password into the consumers' credentials Secret, then rolls
        the consumers out (`kubectl rollout restart`: a new pod template), as a person would: the
        consumers read the password from an environment variable, so only new pods see it."""
        password = WRONG_PASSWORD if broken else BROKER_PASSWORD
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(self.pods.secret(CONSUMER_SECRET, BROKER_USER, password)))
        self.cluster.kubectl("rollout", "restart", f"deployment/{self.deployment_name}", "-n", self.namespace)
        if broken:
            self.wait_for_rollout()  # the fix is rolled out while paused (0 replicas): the resume brings its pods

    def show_pods(self) -> str:
        """`kubectl get pods -o wide` of the consumers, in the live view and in the outputs (pods.txt)."""
        shown = self.cluster.kubectl("get", "pods", "-n", self.namespace, "-l", self.pods.selector, "-o", "wide").stdout
        self.pods_shown = shown
        self.view.event(f"[{self.timeline.now():6.1f}s] kubectl get pods -n {self.namespace} -o wide\n{shown.rstrip()}")
        return shown

    # --- the story

    def run(self) -> dict:
        s = self.settings
        self.watch_until(lambda: self.flow_status().get("phase") in ("Running", "Degraded"), 60, "the flow is watched")
        self.story("burst", f"publishing a burst of {s.burst} orders; one consumer handles {s.rate_per_replica:g}/s")
        producer = self._producer(s.burst)
        producer.start()
        self.watch_until(lambda: not producer.is_alive(), 120, "the burst published")
        published = self._published(producer)
        self.watch_until(self._drained, s.drain_timeout, "the backlog drained")
        self.story("drained", "backlog drained")

        minimum = self.min_replicas
        self.watch_until(lambda: self.flow_status().get("desiredReplicas") == minimum, 60, "the scale-down")
        self.story("scaled down", f"queue empty for the scale-down window: back to {minimum} consumer(s)")

        if s.with_pause:
            self.story("bad config", "deploying a broken consumer configuration (a wrong password in its Secret), then 2000 more orders")
            self.set_configuration_error(True)
            more = self._producer(2000)
            more.run()  # in this thread: the story goes on once they are in the queue
            published += self._published(more)
            self.watch_until(lambda: self.flow_status().get("phase") == "Paused", 60, "the flow paused")
            reason = self.pause_reason = self.flow_status().get("pause", {}).get("reason")
            self.story("paused", f"paused ({reason}): consumers stopped, the backlog waits in the queue")
            self.watch_until(lambda: self.timeline.now() - self.timeline.marks[-1].t > 10, 30, "a look at the pause")
            self.story("fix", "deploying the fix (the right password, and a rollout)")
            self.set_configuration_error(False)
            self.watch_until(lambda: self.flow_status().get("phase") != "Paused", 60, "the flow resumed")
            self.story("resumed", "resumed with the replicas it had before the pause; autoscaling goes on")
            self.watch_until(self._drained, s.drain_timeout, "the backlog drained again")
            self.story("drained", "backlog drained")

        redrive: dict = {}
        if s.with_redrive:
            published, redrive = self._data_bug_and_redrive(published)

        # What the dead-letter queue holds at the end: a redriven order that went through is consumed.
        dead_lettered = self._dead_letters_at_the_end()
        done = self._what_the_consumers_did()
        self.sample(dead_letters=dead_lettered)  # the chart ends on the exact count
        summary = summarize(
            self.timeline,
            published=published,
            consumed=done["consumed"],
            dead_lettered=dead_lettered,
            queued=depth(self.broker.parameters, self.queue),
        )
        summary.update(redrive)
        summary.update(done)
        summary["consumer_pods"] = len(self.pods.seen)
        summary["consumer_nodes"] = sorted(set(self.pods.seen.values()))
        return summary

    def _dead_letters_at_the_end(self) -> int:
        """The dead letters, exactly. The story is over: the operator is stopped first, since its
        reviews hold dead letters unacknowledged for a moment (they come back when it is gone), and a
        passive declare then counts every one, without the management API's lag."""
        self.operator.stop()
        return depth(self.broker.parameters, self.dead_letter_queue)

    def _what_the_consumers_did(self) -> dict:
        """What the consumer pods did, by their own counts and the broker's. The pods' counters, as
        Prometheus scraped them at their pod IPs, the last value of each pod (most pods are gone by
        now; each stopped idle, after its last count was scraped): orders handled, and orders
        dead-lettered. And the broker's acknowledgements on the queue: one per message finished, by
        the long-lived consumer channels. (The broker's publish counts are not used: the statistics
        of a channel closed within a collection interval, such as the producer's, can be lost.)
        Read once the figures no longer change."""
        def read() -> dict:
            def reported(status: str) -> int:
                found = self.prometheus.query(
                    f'sum(max_over_time({PROCESSED}{{namespace="{self.namespace}",status="{status}"}}[1h]))')
                return round(float(found[0]["value"][1])) if found else 0

            return {"consumed": reported("success"), "consumer_dead_letters": reported("error"),
                    "queue_acks": (self.broker.queue_stats(self.queue).get("message_stats") or {}).get("ack", 0)}

        last, deadline = read(), time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(2.5)
            now = read()
            if now == last:
                break
            last = now
        return last

    def _data_bug_and_redrive(self, published: int) -> tuple[int, dict]:
        """The third part: a data bug, the review, the fix, and the redrive. Returns the orders
        published so far and the summary's dead-letter figures."""
        s = self.settings
        minimum = self.min_replicas
        self.watch_until(lambda: self.flow_status().get("desiredReplicas") == minimum, 60, "the scale-down")
        self.story("data bug", f"deploying consumer 1.1 (a data bug: it rejects delivery dates with a time), then {s.bug_orders} more orders")
        self.deploy_release("1.1")
        self.bug_orders = range(self.orders_published, self.orders_published + s.bug_orders)
        buggy = self._producer(s.bug_orders)
        buggy.run()
        published += self._published(buggy)
        self.watch_until(self._drained, s.drain_timeout, "the orders handled by the buggy release")
        self.watch_until(lambda: (self.flow_status().get("deadLetters") or {}).get("examined") == self.dead_letters(), 60,
                         "the dead letters reviewed")
        review = self.flow_status()["deadLetters"]
        by_class = dict(review.get("byClass") or {})
        by_reason = {r["reason"]: r["count"] for r in review.get("byReason") or []}
        self.view.event(f"[{self.timeline.now():6.1f}s] the flow's status.deadLetters: {review['depth']} dead letters, "
                        f"by class: {_counts(by_class)}; by reason: {_counts(by_reason)}")

        self.story("fix", "deploying consumer 1.2, the fix; applying a DeadLetterRedrive for the bug's dead letters")
        self.deploy_release("1.2")
        self.apply_redrive()
        self.redrive_applied = True  # from now on every sample reads it, and tells its story (_tell_redrive)
        self.watch_until(lambda: self._redrive_seen and self._redrive_seen[0] in REDRIVE_TERMINAL, s.redrive_timeout,
                         "the redrive finished")
        status = self.redrive_status()
        self.watch_until(self._drained, s.drain_timeout, "the redriven orders handled")
        return published, {
            "dead_lettered_by_class": by_class,
            "dead_lettered_by_reason": by_reason,
            "redriven": status.get("moved", 0),
            "refailed": status.get("refailed", 0),
            "redrive_phase": status.get("phase"),
        }

    def redrive_manifest(self) -> dict:
        s = self.settings
        return {
            "apiVersion": "flowkeeper.io/v1alpha1", "kind": "DeadLetterRedrive", "metadata": {"name": REDRIVE_NAME},
            "spec": {
                "flowRef": {"name": self.flow_name},
                "classes": ["data"], "reasons": [orders.INVALID_DATE],  # the bug's, not the orders without a customer
                "batchSize": s.redrive_batch, "interval": s.redrive_interval,
                "causeWindow": s.cause_window, "verifyFor": s.verify_for,
            },
        }

    def apply_redrive(self) -> None:
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(self.redrive_manifest()))

    def _producer(self, count: int) -> Producer:
        """A producer of the next `count` orders of the story."""
        producer = Producer(self.broker.parameters, self.queue, count, first=self.orders_published, body=self.order_body)
        self.orders_published += count
        return producer

    @staticmethod
    def _published(producer: Producer) -> int:
        if producer.error is not None:
            raise RuntimeError(f"publishing failed: {producer.error!r}")
        return producer.published

    def order_body(self, number: int) -> bytes:
        """The body of order `number` as the story published it."""
        every = round(1 / self.settings.dead_letter_fraction) if self.settings.dead_letter_fraction else 0
        impossible = self.settings.impossible_date_every if number in self.bug_orders else 0
        return orders.order(number, without_customer_every=every, impossible_date_every=impossible)

    def _drained(self) -> bool:
        return depth(self.broker.parameters, self.queue) == 0 and self.ready_replicas() > 0 and (
            self.flow_status().get("phase") not in ("Paused", None)
        )

    def write_outputs(self, summary: dict) -> Path:
        out = self.settings.out
        out.mkdir(parents=True, exist_ok=True)
        chart = write_chart(self.timeline, out / "demo.png", max_replicas=self.max_replicas)
        self.timeline.write_json(out / "timeline.json")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.pods_shown:
            (out / "pods.txt").write_text(self.pods_shown)
        return chart


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.demo.run", description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=Settings.burst, help="orders published at once")
    parser.add_argument("--rate", type=float, default=Settings.rate_per_replica, help="orders per second per consumer")
    parser.add_argument("--no-pause", action="store_true", help="skip the configuration-error part")
    parser.add_argument("--no-redrive", action="store_true", help="skip the data-bug and redrive part")
    parser.add_argument("--out", type=Path, default=Settings.out, help="where the chart and summary go")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("make demo runs its consumers as real pods on a real node (a kubelet and containerd in a network "
              "namespace of their own, with cgroups): it needs root. Run it as root (sudo make demo).", file=sys.stderr)
        return 2
    # SIGTERM cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = Settings(burst=args.burst, rate_per_replica=args.rate, with_pause=not args.no_pause,
                        with_redrive=not args.no_redrive, out=args.out)
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


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {n}" for key, n in counts.items()) or "none"


if __name__ == "__main__":
    sys.exit(main())
