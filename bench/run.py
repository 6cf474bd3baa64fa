"""`make bench`: Flowkeeper at 100 and 1000 flows on the local control plane and one Prometheus.

For each N it creates N consumer Deployments and N RabbitMQ flows, runs the real operator, and writes
bench/results.json with, per N:
- prometheus_queries_per_pass   Prometheus queries of a full pass (the presets: independent of N)
- prometheus_queries_per_second all queries while idle, partial passes (flows made due by events) too
- pass_seconds                  median wall time of a full pass over the N flows
- pass_cpu_seconds              operator CPU (user+system) per full pass, idle flows
- api_writes_idle_pass          writes the API server counted (its own apiserver_request_total) per idle pass
- reaction_seconds p50 / p99    backlog step on one flow -> that Deployment's spec.replicas changed
- operator_rss_mb               resident memory of the operator after the run

    python -m bench.run [--sizes 100 1000] [--reactions 20] [--poll 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import time
from pathlib import Path

from tests.support.cluster import REPO, LocalCluster
from tests.support.exporter import MetricsExporter
from tests.support.operator import OperatorProcess
from tests.support.prometheus import LocalPrometheus

CRD = REPO / "crds" / "flowkeeper.io_integrationflows.yaml"
RESULTS = REPO / "bench" / "results.json"
IDLE_DEPTH = 50  # below queueDepthPerReplica (100): every flow wants its one replica
QUEUE_METRIC = "rabbitmq_queue_messages_ready"
MAX_REPLICAS = 20


def flow_name(i: int) -> str:
    return f"flow-{i:05d}"


def queue_name(namespace: str, name: str) -> str:
    """The RabbitMQ queue (and the exporter's `queue` label) of flow `name` in `namespace`."""
    return f"{namespace}-{name}"


def deployment(namespace: str, name: str) -> dict:
    """The consumer Deployment of one bench flow, at 1 replica."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "c", "image": "example/consumer:1"}]}}},
    }


def integration_flow(namespace: str, name: str, poll: int) -> dict:
    return {
        "apiVersion": "flowkeeper.io/v1alpha1", "kind": "IntegrationFlow",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"scaleTargetRef": {"name": name},
                 "source": {"broker": "rabbitmq", "vhost": "/", "queue": queue_name(namespace, name)},
                 "scaling": {"minReplicas": 1, "maxReplicas": MAX_REPLICAS, "pollInterval": f"{poll}s"}},
    }


def manifests(namespace: str, n: int, poll: int) -> list[dict]:
    items: list[dict] = []
    for i in range(n):
        items += [deployment(namespace, flow_name(i)), integration_flow(namespace, flow_name(i), poll)]
    return items


def apply_in_chunks(cluster: LocalCluster, items: list[dict], chunk: int = 200) -> None:
    for start in range(0, len(items), chunk):
        body = {"apiVersion": "v1", "kind": "List", "items": items[start:start + chunk]}
        cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(body), timeout=300)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of /proc/PID/status in MiB: VmRSS (resident now) or VmHWM (its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def full_passes(operator: OperatorProcess, n: int) -> list[dict]:
    """The operator's 'pass done' log lines that covered every flow."""
    passes = []
    for line in operator.log().splitlines():
        if '"pass done"' in line:
            entry = json.loads(line)
            if entry.get("flows") == n:
                passes.append(entry)
    return passes


def wait_settled(cluster: LocalCluster, namespace: str, n: int, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flows = json.loads(cluster.kubectl("get", "iflow", "-n", namespace, "-o", "json", timeout=120).stdout)["items"]
        done = sum(1 for f in flows if f.get("status", {}).get("desiredReplicas") == 1 and f["status"].get("readyReplicas") == 1)
        if done == n:
            return
        time.sleep(3)
    raise TimeoutError(f"{namespace}: flows not settled in {timeout}s")


def spec_replicas(cluster: LocalCluster, namespace: str, name: str) -> int:
    return int(cluster.kubectl("get", "deployment", name, "-n", namespace, "-o", "jsonpath={.spec.replicas}").stdout)


def start_operator(cluster: LocalCluster, prometheus: LocalPrometheus, namespace: str, name: str, log_level: str = "info") -> OperatorProcess:
    """The real operator, watching `namespace`, reading `prometheus` (debug: one line per pass)."""
    return OperatorProcess(
        cluster.env, cluster.workdir, "-n", namespace, f"--prometheus-url={prometheus.url}", "--rate-window=30s",
        f"--log-level={log_level}", name=name,
    ).start()


def set_idle(exporter: MetricsExporter, namespace: str, n: int) -> None:
    """Every flow's queue at IDLE_DEPTH: each wants its one replica."""
    for i in range(n):
        exporter.set(QUEUE_METRIC, {"vhost": "/", "queue": queue_name(namespace, flow_name(i))}, IDLE_DEPTH)


def measure(cluster: LocalCluster, prometheus: LocalPrometheus, exporter: MetricsExporter, n: int, args) -> dict:
    namespace = f"bench-{n}"
    cluster.kubectl("create", "namespace", namespace)
    set_idle(exporter, namespace, n)
    t0 = time.monotonic()
    apply_in_chunks(cluster, manifests(namespace, n, args.poll))
    print(f"[bench] N={n}: applied in {time.monotonic() - t0:.1f}s", flush=True)

    operator = start_operator(cluster, prometheus, namespace, f"operator-{n}", log_level="debug")
    try:
        pid = operator.process.popen.pid
        wait_settled(cluster, namespace, n)
        print(f"[bench] N={n}: settled {time.monotonic() - t0:.1f}s after apply", flush=True)
        time.sleep(2 * args.poll)  # let the last writes of settling land

        # Idle: nothing changes, so a pass must write nothing.
        passes_before = len(full_passes(operator, n))
        writes_before = cluster.write_requests("integrationflows") + cluster.write_requests("deployments", "scale")
        queries_before = operator.metric("flowkeeper_prometheus_queries_total")
        cpu_before = cpu_seconds(pid)
        time.sleep(args.idle_passes * args.poll + 0.5)
        cpu_used = cpu_seconds(pid) - cpu_before
        passes = full_passes(operator, n)[passes_before:]
        writes = cluster.write_requests("integrationflows") + cluster.write_requests("deployments", "scale") - writes_before
        queries = operator.metric("flowkeeper_prometheus_queries_total") - queries_before
        idle_passes = max(len(passes), 1)

        # Reaction: a backlog step on one flow at a time until its Deployment is scaled.
        reactions = []
        rng = random.Random(n)
        for k in range(args.reactions):
            name = flow_name((k * 37) % n)
            time.sleep(rng.uniform(0, args.poll))  # steps land anywhere in the poll cycle, as in life
            exporter.set(QUEUE_METRIC, {"vhost": "/", "queue": queue_name(namespace, name)}, 1000)
            started = time.monotonic()
            while spec_replicas(cluster, namespace, name) == 1:
                if time.monotonic() - started > 120:
                    raise TimeoutError(f"{name} not scaled within 120s")
                time.sleep(0.1)
            reactions.append(time.monotonic() - started)
        reactions.sort()
        result = {
            "flows": n,
            "poll_interval_seconds": args.poll,
            "scrape_interval_seconds": 1,
            "prometheus_queries_per_pass": statistics.median(p["queries"] for p in passes) if passes else None,
            "prometheus_queries_per_second": round(queries / (args.idle_passes * args.poll + 0.5), 2),
            "pass_seconds": round(statistics.median(p["seconds"] for p in passes), 4) if passes else None,
            "pass_cpu_seconds": round(cpu_used / idle_passes, 4),
            "api_writes_idle_pass": round(writes / idle_passes, 2),
            "idle_passes_measured": len(passes),
            "reaction_seconds": {
                "p50": round(statistics.median(reactions), 2),
                "p99": round(reactions[min(len(reactions) - 1, int(0.99 * len(reactions)))], 2),
                "samples": len(reactions),
            },
            "operator_rss_mb": round(rss_mb(pid), 1),
        }
        print(f"[bench] N={n}: {json.dumps(result)}", flush=True)
        return result
    finally:
        operator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--reactions", type=int, default=20, help="backlog steps timed per size")
    parser.add_argument("--poll", type=int, default=5, help="pollInterval of the bench flows, seconds")
    parser.add_argument("--idle-passes", type=int, default=4, help="idle poll intervals measured per size")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up as on Ctrl-C

    with MetricsExporter() as exporter, LocalPrometheus([exporter.target]) as prometheus, LocalCluster() as cluster:
        cluster.kubectl("apply", "-f", str(CRD))
        cluster.kubectl("wait", "--for=condition=Established", "crd/integrationflows.flowkeeper.io", "--timeout=60s")
        results = [measure(cluster, prometheus, exporter, n, args) for n in args.sizes]
    RESULTS.write_text(json.dumps({"generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results}, indent=2) + "\n")
    print(f"[bench] wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
