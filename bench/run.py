"""`make bench`: Flowkeeper at N flows (100 and 1000 by default; `--sizes 10000` for the large run) on
the local control plane and one Prometheus scraping every second.

For each N it starts the real operator, applies N consumer Deployments and N RabbitMQ flows, and
writes bench/results.json with, per N:
- apply_seconds / status_seconds  applying the manifests / from the apply's start until every flow has
                                  a status (observedGeneration), as a watch of the flows saw it;
                                  status_after_apply_seconds: the same from the apply's end;
                                  settled_seconds: until each has its one replica ready
- prometheus_queries_per_pass     Prometheus queries of a full pass (the presets: independent of N)
- prometheus_queries_per_second   all queries while idle, partial passes (flows made due by events) too
- pass_seconds / pass_cpu_seconds median wall time of a full idle pass / operator CPU (user+system) per
                                  idle pass
- api_writes_idle_pass            writes the API server counted (its own apiserver_request_total) per idle pass
- reaction_seconds                a backlog step on one flow, at a random point of the poll cycle, until
                                  its Deployment's spec.replicas changes (seen by a watch): p50, p99, max;
                                  reactions_not_scaled_within_120s: the flows that were not (the run goes on)
- burst                           a backlog step on --burst flows at once: how many were scaled, and when
                                  the last one was
- outage                          Prometheus stopped for --outage seconds and started again: Deployments
                                  scaled down meanwhile (must be 0) and Events the API server took
- operator_rss_mb / _peak_rss_mb  resident memory of the operator at the end / its peak (VmHWM)

The operator's log of each size is copied to <tmp>/flowkeeper-bench-logs/operator-N.log.

    python -m bench.run [--sizes 100 1000] [--reactions 50] [--burst 1000] [--poll 5] [--operator-arg=--write-qps=200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.peers.watch import DeploymentWatch, FlowStatusWatch
from tests.support.cluster import REPO, LocalCluster
from tests.support.exporter import MetricsExporter
from tests.support.operator import OperatorProcess
from tests.support.processes import wait_until
from tests.support.prometheus import LocalPrometheus

CRD = REPO / "crds" / "flowkeeper.io_integrationflows.yaml"
REDRIVE_CRD = REPO / "crds" / "flowkeeper.io_deadletterredrives.yaml"
RESULTS = REPO / "bench" / "results.json"
IDLE_DEPTH = 50  # below queueDepthPerReplica (100): every flow wants its one replica
BURST_DEPTH = 250  # 3 replicas each: a step every burst flow answers, without thousands of pods more
QUEUE_METRIC = "rabbitmq_queue_messages_ready"
# The operator's log of each size is copied here (the cluster's folder goes with the cluster).
LOGS = Path(tempfile.gettempdir()) / "flowkeeper-bench-logs"
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


def apply_in_chunks(cluster: LocalCluster, items: list[dict], chunk: int = 200, parallel: int = 6) -> None:
    """Applies `items` as Lists of `chunk`, `parallel` kubectl processes at once: one kubectl applies
    its objects one by one, so 20,000 objects in series took 26 minutes."""
    def apply(start: int) -> None:
        body = {"apiVersion": "v1", "kind": "List", "items": items[start:start + chunk]}
        cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(body), timeout=600)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(apply, range(0, len(items), chunk)))  # list(): the first failure raises here


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


def has_status(state: tuple[str, str, str]) -> bool:
    return state[0] != ""  # observedGeneration


def settled(state: tuple[str, str, str]) -> bool:
    """The flow wants its one replica and has it ready."""
    return state[1:] == ("1", "1")


# The environment the operator's image sets for its process (operator/Dockerfile), so the bench
# measures the memory users get.
IMAGE_ENV = {"MALLOC_ARENA_MAX": "2"}


def start_operator(
    cluster: LocalCluster, prometheus: LocalPrometheus, namespace: str, name: str, log_level: str = "info", extra: tuple[str, ...] = ()
) -> OperatorProcess:
    """The real operator, watching `namespace`, reading `prometheus` (debug: one line per pass)."""
    return OperatorProcess(
        {**cluster.env, **IMAGE_ENV}, cluster.workdir, "-n", namespace, f"--prometheus-url={prometheus.url}", "--rate-window=30s",
        f"--log-level={log_level}", *extra, name=name,
    ).start()


def set_idle(exporter: MetricsExporter, namespace: str, n: int) -> None:
    """Every flow's queue at IDLE_DEPTH: each wants its one replica."""
    for i in range(n):
        exporter.set(QUEUE_METRIC, {"vhost": "/", "queue": queue_name(namespace, flow_name(i))}, IDLE_DEPTH)


def set_depth(exporter: MetricsExporter, namespace: str, name: str, depth: float) -> None:
    exporter.set(QUEUE_METRIC, {"vhost": "/", "queue": queue_name(namespace, name)}, depth)


def replicas_now(cluster: LocalCluster, namespace: str) -> dict[str, int]:
    out = cluster.kubectl("get", "deployments", "-n", namespace, "--chunk-size=500", "-o",
                          'jsonpath={range .items[*]}{.metadata.name} {.spec.replicas}{"\\n"}{end}', timeout=300).stdout
    return {name: int(replicas) for name, replicas in (line.split() for line in out.splitlines() if line)}


# The operator's /metrics carries two series per flow; at 10,000 flows, right after a burst, one
# answer took more than 5 s.
METRICS_TIMEOUT = 60.0


def writes_settled(operator: OperatorProcess, quiet: float, timeout: float = 300) -> None:
    """Waits until the operator has written nothing (its own flowkeeper_kubernetes_writes_total) for
    `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = operator.metric("flowkeeper_kubernetes_writes_total", timeout=METRICS_TIMEOUT), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(1)
        now = operator.metric("flowkeeper_kubernetes_writes_total", timeout=METRICS_TIMEOUT)
        if now != last:
            last, since = now, time.monotonic()


def seconds_summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
        "max": round(ordered[-1], 2),
        "samples": len(ordered),
    }


def measure(cluster: LocalCluster, prometheus: LocalPrometheus, exporter: MetricsExporter, n: int, args) -> dict:
    namespace = f"bench-{n}"
    cluster.kubectl("create", "namespace", namespace)
    set_idle(exporter, namespace, n)
    operator = start_operator(cluster, prometheus, namespace, f"operator-{n}", log_level="debug", extra=tuple(args.operator_arg))
    watch = DeploymentWatch(cluster, namespace).start()
    try:
        pid = operator.process.popen.pid
        # Apply with the operator running, as a user would: how long until every flow has a status.
        # The flows' statuses are timed by a watch: listing 10,000 flows every few seconds would load
        # the API server the operator writes to (and a listing took 30 s there).
        with FlowStatusWatch(cluster, namespace) as flows:
            t0 = time.monotonic()
            apply_in_chunks(cluster, manifests(namespace, n, args.poll))
            applied = time.monotonic() - t0
            status_at = flows.wait_all(n, has_status, "has a status")
            print(f"[bench] N={n}: applied in {applied:.1f}s, every flow had a status {status_at - t0:.1f}s after the apply began", flush=True)
            settled_at = flows.wait_all(n, settled, "settled at 1 ready replica")
            print(f"[bench] N={n}: settled {settled_at - t0:.1f}s after the apply began", flush=True)
        time.sleep(2 * args.poll)  # let the last writes of settling land

        # Idle: nothing changes, so a pass must write nothing.
        passes_before = len(full_passes(operator, n))
        writes_before = cluster.write_requests("integrationflows") + cluster.write_requests("deployments", "scale")
        queries_before = operator.metric("flowkeeper_prometheus_queries_total", timeout=METRICS_TIMEOUT)
        cpu_before = cpu_seconds(pid)
        time.sleep(args.idle_passes * args.poll + 0.5)
        cpu_used = cpu_seconds(pid) - cpu_before
        passes = full_passes(operator, n)[passes_before:]
        writes = cluster.write_requests("integrationflows") + cluster.write_requests("deployments", "scale") - writes_before
        queries = operator.metric("flowkeeper_prometheus_queries_total", timeout=METRICS_TIMEOUT) - queries_before
        idle_passes = max(len(passes), 1)

        # Reaction: a backlog step on one flow at a time until its Deployment's spec.replicas changes.
        rng = random.Random(n)
        reacting = [flow_name((k * 37) % n) for k in range(min(args.reactions, n))]
        reactions, not_scaled = [], []
        for name in reacting:
            time.sleep(rng.uniform(0, args.poll))  # steps land anywhere in the poll cycle, as in life
            set_depth(exporter, namespace, name, 1000)
            started = time.monotonic()
            scaled = watch.wait_scaled({name: started}, timeout=120)[name]
            if scaled is None:  # a finding, not the end of the run: the other figures still count
                print(f"[bench] N={n}: {name} not scaled within 120s of its backlog step", flush=True)
                not_scaled.append(name)
            else:
                reactions.append(scaled)

        # Burst: a backlog step on many flows at once, until every one of their Deployments is scaled.
        bursting = [flow_name(i) for i in range(n) if flow_name(i) not in set(reacting)][: args.burst]
        for name in bursting:
            set_depth(exporter, namespace, name, BURST_DEPTH)
        burst_started = time.monotonic()
        burst = watch.wait_scaled({name: burst_started for name in bursting}, timeout=args.poll + 120)
        burst_done = [s for s in burst.values() if s is not None]
        print(f"[bench] N={n}: burst of {len(bursting)}: {len(burst_done)} scaled, the last after {max(burst_done, default=0):.1f}s", flush=True)
        # The burst's status writes and Events (written after every scale) land before the outage begins.
        writes_settled(operator, quiet=2 * args.poll)

        # Outage: Prometheus gone for args.outage seconds, then back. Nothing may be scaled down, and
        # the operator tells it once, not once per flow.
        before = replicas_now(cluster, namespace)
        events_before = cluster.write_requests("events")
        own_events_before = operator.metric("flowkeeper_kubernetes_writes_total", timeout=METRICS_TIMEOUT, kind="event")
        outage_started = time.monotonic()
        prometheus.stop()
        time.sleep(args.outage)
        prometheus.start()
        wait_until(lambda: operator.metric("flowkeeper_prometheus_up", timeout=METRICS_TIMEOUT) == 1, timeout=120, what="the operator reading Prometheus again")
        time.sleep(3 * args.poll)
        after = replicas_now(cluster, namespace)
        lowered = sorted(name for name, replicas in after.items() if replicas < before.get(name, 0))
        lowered_meanwhile = sorted(watch.scaled_down_after(outage_started))
        events = cluster.write_requests("events") - events_before
        own_events = operator.metric("flowkeeper_kubernetes_writes_total", timeout=METRICS_TIMEOUT, kind="event") - own_events_before

        result = {
            "flows": n,
            "poll_interval_seconds": args.poll,
            "scrape_interval_seconds": 1,
            "operator_args": list(args.operator_arg),
            "apply_seconds": round(applied, 1),
            "status_seconds": round(status_at - t0, 1),
            "status_after_apply_seconds": round(status_at - t0 - applied, 1),
            "settled_seconds": round(settled_at - t0, 1),
            "prometheus_queries_per_pass": statistics.median(p["queries"] for p in passes) if passes else None,
            "prometheus_queries_per_second": round(queries / (args.idle_passes * args.poll + 0.5), 2),
            "pass_seconds": round(statistics.median(p["seconds"] for p in passes), 4) if passes else None,
            "pass_cpu_seconds": round(cpu_used / idle_passes, 4),
            "api_writes_idle_pass": round(writes / idle_passes, 2),
            "idle_passes_measured": len(passes),
            "reaction_seconds": seconds_summary(reactions) if reactions else None,
            "reactions_not_scaled_within_120s": not_scaled,
            "burst": {"flows": len(bursting), "scaled": len(burst_done), "seconds": round(max(burst_done, default=float("nan")), 2)},
            # events: every client's Event writes the API server took (kube-controller-manager's too,
            # e.g. for the burst's pods); operator_events: the operator's own (its /metrics).
            "outage": {"seconds": args.outage, "scaled_down": len(set(lowered) | set(lowered_meanwhile)), "events": events,
                       "operator_events": own_events},
            "deployment_watch_relists": watch.restarts,  # >0: some scale times are upper bounds (bench/peers/watch.py)
            "operator_rss_mb": round(rss_mb(pid), 1),
            "operator_peak_rss_mb": round(rss_mb(pid, "VmHWM"), 1),
        }
        print(f"[bench] N={n}: {json.dumps(result)}", flush=True)
        return result
    finally:
        watch.stop()
        operator.stop()
        LOGS.mkdir(exist_ok=True)
        if operator.process.log_path.exists():
            shutil.copy(operator.process.log_path, LOGS / f"operator-{n}.log")
            print(f"[bench] N={n}: the operator's log is in {LOGS / f'operator-{n}.log'}", flush=True)


def merged_results(path: Path, measured: list[dict]) -> dict:
    """The results file with the sizes just measured replaced (a run of --sizes 10000 keeps the
    figures of 100 and 1000 from an earlier run); each entry says when it was measured."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        kept = [r for r in json.loads(path.read_text()).get("results", []) if r.get("flows") not in {m["flows"] for m in measured}]
    except (OSError, ValueError):
        kept = []
    fresh = [{**m, "measured": stamp} for m in measured]
    return {"generated": stamp, "results": sorted(kept + fresh, key=lambda r: r["flows"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--reactions", type=int, default=50, help="backlog steps timed per size")
    parser.add_argument("--poll", type=int, default=5, help="pollInterval of the bench flows, seconds")
    parser.add_argument("--idle-passes", type=int, default=4, help="idle poll intervals measured per size")
    parser.add_argument("--burst", type=int, default=1000, help="flows given a backlog step at once (at most N less the reaction flows)")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds Prometheus is stopped")
    parser.add_argument("--operator-arg", action="append", default=[], help="an extra `flowkeeper run` option (repeatable)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up as on Ctrl-C

    with MetricsExporter() as exporter, LocalPrometheus([exporter.target]) as prometheus, LocalCluster() as cluster:
        cluster.kubectl("apply", "-f", str(CRD), "-f", str(REDRIVE_CRD))  # the operator lists both
        cluster.kubectl("wait", "--for=condition=Established", "crd/integrationflows.flowkeeper.io",
                        "crd/deadletterredrives.flowkeeper.io", "--timeout=60s")
        results = [measure(cluster, prometheus, exporter, n, args) for n in args.sizes]
    RESULTS.write_text(json.dumps(merged_results(RESULTS, results), indent=2) + "\n")
    print(f"[bench] wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
