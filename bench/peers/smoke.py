"""`python -m bench.peers.smoke`: KEDA end to end on the local control plane, once, timed.

One Deployment at 1 replica, one ScaledObject with KEDA's Prometheus scaler on the series the bench's
MetricsExporter serves (the queue depth, 100 per replica, as a Flowkeeper flow's
queueDepthPerReplica), Prometheus scraping every second. Then a backlog step (depth 50 -> 1000): the
HPA that KEDA made (kube-controller-manager's, reading external.metrics.k8s.io from KEDA's adapter
through the aggregation layer) scales the Deployment 1 -> N. Prints what it measured as JSON:

- build_seconds            build-binaries.sh keda (0-ish once cached)
- cluster_start_seconds    LocalCluster(aggregation=True) until the kwok node is Ready
- keda_ready_seconds       processes started -> APIService Available and the group served
- keda_sockets             KEDA's TCP sockets at the end (only 127.0.0.1 and the namespace's pair)
- hpa_first_metric_seconds ScaledObject applied -> the HPA has read the external metric once
- reaction_seconds         backlog step -> Deployment spec.replicas > 1 (first scale-up); the step
                           lands a random 0-15 s after the HPA's first read (its sync period is 15 s)
- replicas_after_first_step, seconds_to_max_replicas (the HPA's default scale-up policy caps steps)
- total_seconds            the whole run, tear-down included

    python -m bench.peers.smoke [--min-replicas 1] [--poll 5] [--out FILE]
Needs root (it makes a network namespace); everything it makes is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import signal
import sys
import time
from pathlib import Path

from bench.peers.keda import KedaPeer, keda_binaries, scaled_object
from bench.run import cpu_seconds, deployment, rss_mb
from tests.support.cluster import LocalCluster
from tests.support.exporter import MetricsExporter
from tests.support.prometheus import LocalPrometheus

QUEUE_METRIC = "rabbitmq_queue_messages_ready"
NAMESPACE = "smoke"
NAME = "consumer"
PER_REPLICA = 100
IDLE_DEPTH = 50
STEP_DEPTH = 1000
MAX_REPLICAS = 20
HPA_SYNC_SECONDS = 15  # kube-controller-manager's --horizontal-pod-autoscaler-sync-period default


def objects(prometheus_url: str, queue: str, min_replicas: int, poll: int) -> list[dict]:
    return [
        deployment(NAMESPACE, NAME),
        scaled_object(NAMESPACE, NAME, prometheus_url, f'sum({QUEUE_METRIC}{{vhost="/",queue="{queue}"}})',
                      per_replica=PER_REPLICA, min_replicas=min_replicas, max_replicas=MAX_REPLICAS, poll=poll),
    ]


def _json(cluster: LocalCluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def wait(check, timeout: float, what: str, poll: float = 0.1) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except Exception:  # noqa: BLE001 - not there yet
            pass
        time.sleep(poll)
    raise TimeoutError(f"{what} not within {timeout:.0f}s")


def run(args: argparse.Namespace) -> dict:
    t0 = time.monotonic()
    keda_binaries()
    result: dict = {"build_seconds": round(time.monotonic() - t0, 1)}
    queue = f"{NAMESPACE}-{NAME}"
    with MetricsExporter() as exporter, LocalPrometheus([exporter.target]) as prometheus:
        exporter.set(QUEUE_METRIC, {"vhost": "/", "queue": queue}, IDLE_DEPTH)
        t = time.monotonic()
        with LocalCluster(workdir=args.workdir, aggregation=True) as cluster:
            result["cluster_start_seconds"] = round(time.monotonic() - t, 1)
            print(f"[smoke] cluster up in {result['cluster_start_seconds']}s ({cluster.workdir})", flush=True)
            with KedaPeer(cluster, log_level=args.log_level) as keda, _tails_on_failure(keda):
                result["keda_ready_seconds"] = round(keda.wait_ready(), 1)
                result["netns"] = {"name": keda.netns.name, "host": keda.netns.host_ip, "adapter": keda.netns.inner_ip}
                print(f"[smoke] KEDA ready in {result['keda_ready_seconds']}s (adapter at {keda.netns.inner_ip})", flush=True)

                cluster.kubectl("create", "namespace", NAMESPACE)
                t = time.monotonic()
                cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(
                    {"apiVersion": "v1", "kind": "List", "items": objects(prometheus.url, queue, args.min_replicas, args.poll)}))
                hpa_name = f"keda-hpa-{NAME}"

                def hpa_has_metric() -> bool:
                    hpa = _json(cluster, "hpa", hpa_name, "-n", NAMESPACE)
                    return any(m.get("external", {}).get("current") for m in hpa.get("status", {}).get("currentMetrics") or [])

                wait(hpa_has_metric, 300, "the HPA's first external metric", poll=0.25)
                result["hpa_first_metric_seconds"] = round(time.monotonic() - t, 1)
                print(f"[smoke] HPA read KEDA's metric {result['hpa_first_metric_seconds']}s after apply", flush=True)
                replicas = lambda: int(_json(cluster, "deployment", NAME, "-n", NAMESPACE)["spec"]["replicas"])  # noqa: E731
                if replicas() != 1:
                    raise RuntimeError(f"the Deployment moved before the step: {replicas()} replicas")

                # The HPA syncs every 15 s and the step would otherwise land just after the sync that
                # first read the metric (the worst case): land it anywhere in the cycle, as in life.
                phase = random.Random(args.seed).uniform(0, HPA_SYNC_SECONDS)
                time.sleep(phase)
                result["step_delay_after_first_read_seconds"] = round(phase, 2)
                exporter.set(QUEUE_METRIC, {"vhost": "/", "queue": queue}, STEP_DEPTH)
                step = time.monotonic()
                wait(lambda: replicas() > 1, 180, "the first scale-up")
                result["reaction_seconds"] = round(time.monotonic() - step, 2)
                result["replicas_after_first_step"] = replicas()
                want = min(MAX_REPLICAS, math.ceil(STEP_DEPTH / PER_REPLICA))
                wait(lambda: replicas() >= want, 300, f"{want} replicas")
                result["seconds_to_max_replicas"] = round(time.monotonic() - step, 2)
                result["replicas_final"] = replicas()
                hpa = _json(cluster, "hpa", hpa_name, "-n", NAMESPACE)
                result["hpa_desired_replicas"] = hpa["status"].get("desiredReplicas")
                rescales = [e for e in _json(cluster, "events", "-n", NAMESPACE)["items"]
                            if e.get("reason") == "SuccessfulRescale" and e["involvedObject"].get("name") == hpa_name]
                result["hpa_rescale_events"] = [e.get("message") for e in rescales]
                result["keda_sockets"] = keda.sockets()
                result["keda_cpu_seconds"] = {p.name: round(cpu_seconds(p.popen.pid), 2) for p in (keda.operator, keda.adapter)}
                result["keda_rss_mb"] = {p.name: round(rss_mb(p.popen.pid), 1) for p in (keda.operator, keda.adapter)}
                netns_name = keda.netns.name
            result["netns_removed"] = not Path(f"/run/netns/{netns_name}").exists()
    result["total_seconds"] = round(time.monotonic() - t0, 1)
    result.update({"keda_version": "v2.21.0", "min_replica_count": args.min_replicas, "polling_interval": args.poll,
                   "queue_depth_per_replica": PER_REPLICA, "step": [IDLE_DEPTH, STEP_DEPTH], "scrape_interval_seconds": 1})
    return result


@contextlib.contextmanager
def _tails_on_failure(keda: KedaPeer):
    try:
        yield
    except BaseException:
        for p in (keda.operator, keda.adapter):
            if p is not None:
                print(f"--- {p.name} (last lines)\n{p.log_tail(25)}", file=sys.stderr, flush=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-replicas", type=int, default=1, help="the ScaledObject's minReplicaCount")
    parser.add_argument("--poll", type=int, default=5, help="the ScaledObject's pollingInterval, seconds")
    parser.add_argument("--seed", type=int, default=None, help="seed of the step's delay within the HPA's sync cycle")
    parser.add_argument("--log-level", default="info", help="KEDA's --zap-log-level")
    parser.add_argument("--out", type=Path, help="also write the result here (JSON)")
    parser.add_argument("--workdir", type=Path, help="keep the cluster's and KEDA's folder (logs) here instead of a temp one")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # tear down as on Ctrl-C
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
