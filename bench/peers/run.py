"""`make bench-peers`: Flowkeeper and KEDA side by side at N flows, one after the other on one local
control plane (aggregation layer on) and one Prometheus scraping every second.

For each N and each system it makes a namespace with N consumer Deployments (bench.run's manifests)
at 1 replica, every queue at depth 50 (below 100 per replica: each flow wants its one replica), then:
- flowkeeper: N IntegrationFlows (pollInterval 5 s, minReplicas 1, maxReplicas 20) and the real
  operator watching that namespace;
- keda-*: KEDA v2.21.0 (KedaPeer: its own least-privilege identity) and N ScaledObjects, Prometheus
  scaler on the same series (threshold 100, pollingInterval 5 s, maxReplicaCount 20), with
  minReplicaCount 0 (KEDA's default) or 1, and KEDA's default API rate limit or a raised one.
Once every flow is served (its status written / its HPA has read the metric) it measures:
- idle (the same window for every system): Prometheus queries per minute (Prometheus's own
  prometheus_http_requests_total, /api/v1/query*), API requests and writes per minute (the API
  server's apiserver_request_total, all clients: net = minus the baseline, the same control plane
  with the Deployments and no autoscaler), CPU seconds (user+system, /proc) and RSS of the system's
  processes, and of kube-apiserver, kube-controller-manager and Prometheus;
- reaction: backlog steps (depth 50 -> 1000) on single flows, a random 0-2x pollInterval apart
  (so anywhere in the poll and HPA cycles), each timed until that Deployment's spec.replicas changes;
- burst: a step on a fraction of the flows at once, until all their Deployments have scaled.
Then it removes the system and the namespace before the next. Writes bench/peers.json (figures,
KEDA / Flowkeeper ratios) and docs/bench.png.

    python -m bench.peers.run [--sizes 100 1000] [--systems flowkeeper keda-min0 ...] [--reactions 20]
Needs root (KEDA's adapter runs in a network namespace the run makes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.peers import figures
from bench.peers.keda import KedaPeer, keda_binaries, keda_version, scaled_object
from bench.peers.watch import DeploymentWatch, FlowStatusWatch
from bench.run import (CRD, IDLE_DEPTH, MAX_REPLICAS, QUEUE_METRIC, apply_in_chunks, cpu_seconds, deployment, flow_name,
                       integration_flow, queue_name, rss_mb, set_idle, settled, start_operator)
from tests.support.cluster import REPO, WRITE_VERBS, LocalCluster
from tests.support.exporter import MetricsExporter
from tests.support.prometheus import LocalPrometheus, find_tool

OUT = REPO / "bench" / "peers.json"
CHART = REPO / "docs" / "bench.png"
PER_REPLICA = 100  # queueDepthPerReplica's default; the ScaledObjects' threshold
STEP_DEPTH = 1000
KEDA_DEFAULT_QPS, KEDA_DEFAULT_BURST = 20, 30  # KEDA 2.21's --kube-api-qps / --kube-api-burst defaults
SYSTEMS = ("flowkeeper", "keda-min0", "keda-min1", "keda-min0-raised", "keda-min1-raised")


@dataclass(frozen=True)
class System:
    key: str
    min_replicas: int = 1
    qps: float | None = None  # None: KEDA's default
    burst: int | None = None

    @property
    def is_keda(self) -> bool:
        return self.key.startswith("keda")

    def label(self) -> str:
        if not self.is_keda:
            return "Flowkeeper (pollInterval 5s, minReplicas 1)"
        limit = f"raised API limit (qps {self.qps:g} / burst {self.burst})" if self.qps else \
            f"default API limit (qps {KEDA_DEFAULT_QPS} / burst {KEDA_DEFAULT_BURST})"
        return f"KEDA {keda_version()}, minReplicaCount {self.min_replicas}, {limit}"


def system(key: str, raised_qps: float, raised_burst: int) -> System:
    if key == "flowkeeper":
        return System(key)
    raised = key.endswith("-raised")
    return System(key, min_replicas=int(key.split("-")[1][3:]), qps=raised_qps if raised else None,
                  burst=raised_burst if raised else None)


# ------------------------------------------------------------------------------------ measurement


class Bench:
    """One control plane, one exporter, one Prometheus; measure() runs one system at one N."""

    def __init__(self, cluster: LocalCluster, prometheus: LocalPrometheus, exporter: MetricsExporter, args: argparse.Namespace) -> None:
        self.cluster, self.prometheus, self.exporter, self.args = cluster, prometheus, exporter, args
        self.baselines: dict[int, dict] = {}

    def log(self, text: str) -> None:
        print(f"[bench-peers] {time.strftime('%H:%M:%S')} {text}", flush=True)

    def control_plane_pids(self) -> dict[str, int]:
        pids = {p.name: p.popen.pid for p in self.cluster.processes if p.name in ("kube-apiserver", "kube-controller-manager")}
        pids["prometheus"] = self.prometheus.process.popen.pid
        return pids

    def prometheus_queries(self) -> int:
        return figures.prometheus_queries(urllib.request.urlopen(f"{self.prometheus.url}/metrics", timeout=10).read().decode())

    def idle_window(self, pids: dict[str, int]) -> dict:
        """What the API server, Prometheus and the processes did over --idle-seconds of nothing changing."""
        plane = self.control_plane_pids()
        queries, requests = self.prometheus_queries(), self.cluster.request_counts()
        cpu = {name: cpu_seconds(pid) for name, pid in {**pids, **plane}.items()}
        started = time.monotonic()
        time.sleep(self.args.idle_seconds)
        seconds = time.monotonic() - started
        queries = self.prometheus_queries() - queries
        delta = figures.request_delta(requests, self.cluster.request_counts())
        used = {name: round(cpu_seconds(pid) - cpu[name], 2) for name, pid in {**pids, **plane}.items()}
        result = {
            "seconds": round(seconds, 1),
            "prometheus_queries_per_minute": figures.per_minute(queries, seconds),
            **figures.request_summary(delta, seconds, WRITE_VERBS),
            "cpu_seconds": {name: used[name] for name in pids},
            "cpu_seconds_total": round(sum(used[name] for name in pids), 2),
            "control_plane_cpu_seconds": {name: used[name] for name in plane},
            "rss_mb": {name: round(rss_mb(pid), 1) for name, pid in pids.items()},
            "peak_rss_mb": {name: round(rss_mb(pid, "VmHWM"), 1) for name, pid in pids.items()},
        }
        result["rss_mb_total"] = round(sum(result["rss_mb"].values()), 1)
        return result

    def with_net(self, idle: dict, n: int) -> dict:
        base = self.baselines.get(n)
        if base:
            idle["api_requests_per_minute_net"] = round(idle["api_requests_per_minute"] - base["api_requests_per_minute"], 1)
            idle["api_writes_per_minute_net"] = round(idle["api_writes_per_minute"] - base["api_writes_per_minute"], 1)
        return idle

    # -- one system at one N
    def measure(self, n: int, sut: System) -> dict:
        namespace = f"peers-{n}-{sut.key}"
        result: dict = {"system": sut.key, "label": sut.label(), "flows": n}
        t0 = time.monotonic()
        self.cluster.kubectl("create", "namespace", namespace)
        set_idle(self.exporter, namespace, n)
        try:
            apply_in_chunks(self.cluster, [deployment(namespace, flow_name(i)) for i in range(n)])
            self.cluster.kubectl("wait", "--for=condition=Available", "deployment", "--all", "-n", namespace,
                                 "--timeout=900s", timeout=960)
            self.log(f"N={n} {sut.key}: {n} Deployments available in {time.monotonic() - t0:.0f}s")
            if n not in self.baselines:
                self.baselines[n] = self.idle_window({})
                self.log(f"N={n} baseline (no autoscaler): {json.dumps(self.baselines[n])}")
            if sut.is_keda:
                self.run_keda(namespace, n, sut, result)
            else:
                self.run_flowkeeper(namespace, n, result)
        except Exception as exc:  # noqa: BLE001 - recorded, and the next system still runs
            result["failed"] = f"{type(exc).__name__}: {exc}"[:2000]
            self.log(f"N={n} {sut.key}: FAILED {result['failed'][:500]}")
        finally:
            t = time.monotonic()
            self.remove_namespace(namespace, n)
            result["teardown_seconds"] = round(time.monotonic() - t, 1)
        result["phase_seconds"] = round(time.monotonic() - t0, 1)
        self.log(f"N={n} {sut.key}: {json.dumps(result)}")
        return result

    def run_flowkeeper(self, namespace: str, n: int, result: dict) -> None:
        operator = start_operator(self.cluster, self.prometheus, namespace, f"flowkeeper-{n}")
        try:
            with FlowStatusWatch(self.cluster, namespace) as flows:
                t = time.monotonic()
                apply_in_chunks(self.cluster, [integration_flow(namespace, flow_name(i), self.args.poll) for i in range(n)])
                result["settle_seconds"] = round(flows.wait_all(n, settled, "settled at 1 ready replica", timeout=self.args.settle_timeout) - t, 1)
            self.log(f"N={n} flowkeeper: settled in {result['settle_seconds']}s")
            self.measure_running(namespace, n, {"flowkeeper": operator.process.popen.pid}, result)
        finally:
            operator.stop()
            strip_finalizers(self.cluster, namespace, "integrationflows.flowkeeper.io")

    def run_keda(self, namespace: str, n: int, sut: System, result: dict) -> None:
        keda = KedaPeer(self.cluster, kube_api_qps=sut.qps, kube_api_burst=sut.burst).start()
        try:
            result["keda_ready_seconds"] = round(keda.wait_ready(), 1)
            throttled = throttle_lines(keda)
            t = time.monotonic()
            query = lambda name: f'sum({QUEUE_METRIC}{{vhost="/",queue="{queue_name(namespace, name)}"}})'  # noqa: E731
            apply_in_chunks(self.cluster, [
                scaled_object(namespace, flow_name(i), self.prometheus.url, query(flow_name(i)), per_replica=PER_REPLICA,
                              min_replicas=sut.min_replicas, max_replicas=MAX_REPLICAS, poll=self.args.poll)
                for i in range(n)])
            result["settle_seconds"] = round(self.wait_hpas(namespace, n, t, keda), 1)
            self.log(f"N={n} {sut.key}: every HPA read its metric {result['settle_seconds']}s after apply")
            pids = {"keda-operator": keda.operator.popen.pid, "keda-adapter": keda.adapter.popen.pid}
            self.measure_running(namespace, n, pids, result)
        finally:
            result["keda_throttling_log_lines"] = throttle_lines(keda) - throttled if keda.operator else None
            for process in (keda.operator, keda.adapter):
                if process is not None and not process.running:
                    result[f"{process.name}_exited"] = process.log_tail(3)
            keda.uninstall_apiservice()
            keda.close()
            strip_finalizers(self.cluster, namespace, "scaledobjects.keda.sh")

    def wait_hpas(self, namespace: str, n: int, since: float, keda: KedaPeer) -> float:
        """Until N HPAs exist and each has read its external metric once; seconds since `since`.
        Fails at once when a KEDA process has exited (nothing restarts it here, unlike a kubelet)."""
        deadline = since + self.args.settle_timeout
        ready = 0
        while time.monotonic() < deadline:
            for process in (keda.operator, keda.adapter):
                if not process.running:
                    raise RuntimeError(f"{process.name} exited {time.monotonic() - since:.0f}s after the ScaledObjects were "
                                       f"applied, {ready} of {n} HPAs served; its last lines:\n{process.log_tail(4)}")
            out = self.cluster.kubectl("get", "hpa", "-n", namespace, "-o",
                                       'jsonpath={range .items[*]}{.metadata.name} {.status.currentMetrics[0].external.current.averageValue}{"\\n"}{end}',
                                       timeout=120).stdout
            ready = sum(1 for line in out.splitlines() if len(line.split()) == 2)
            if ready == n:
                return time.monotonic() - since
            time.sleep(3)
        raise TimeoutError(f"{ready} of {n} HPAs had read their metric {self.args.settle_timeout}s after the ScaledObjects were applied")

    def measure_running(self, namespace: str, n: int, pids: dict[str, int], result: dict) -> None:
        time.sleep(2 * self.args.poll)  # the last writes of settling land
        result["idle"] = self.with_net(self.idle_window(pids), n)
        self.log(f"N={n} {result['system']}: idle {json.dumps(result['idle'])}")
        rng = random.Random(n)
        names = [flow_name(i) for i in rng.sample(range(n), n)]
        reacting, bursting = names[:self.args.reactions], names[self.args.reactions:][:max(1, round(n * self.args.burst_fraction))]
        with DeploymentWatch(self.cluster, namespace) as watch:
            result["reaction_seconds"] = self.reactions(watch, namespace, reacting, rng)
            self.log(f"N={n} {result['system']}: reaction {json.dumps(result['reaction_seconds'])}")
            if bursting:
                result["burst"] = self.burst(watch, namespace, bursting)

    def step(self, namespace: str, name: str) -> float:
        self.exporter.set(QUEUE_METRIC, {"vhost": "/", "queue": queue_name(namespace, name)}, STEP_DEPTH)
        return time.monotonic()

    def reactions(self, watch: DeploymentWatch, namespace: str, names: list[str], rng: random.Random) -> dict:
        started = {}
        for name in names:
            time.sleep(rng.uniform(0, 2 * self.args.poll))
            started[name] = self.step(namespace, name)
        times = watch.wait_scaled(started, self.args.step_timeout)
        done = [s for s in times.values() if s is not None]
        return {"p50": figures.percentile(done, 50), "p99": figures.percentile(done, 99) if len(done) == len(times) else None,
                "max": max(done, default=None), "samples": len(done), "timed_out": len(times) - len(done),
                "all": sorted(done)}

    def burst(self, watch: DeploymentWatch, namespace: str, names: list[str]) -> dict:
        now = {name: self.step(namespace, name) for name in names}
        started = dict.fromkeys(now, max(now.values()))  # one step: timed from the last series set
        times = watch.wait_scaled(started, self.args.burst_timeout)
        done = [s for s in times.values() if s is not None]
        return {"flows": len(names), "seconds": max(done) if len(done) == len(names) else None,
                "p50": figures.percentile(done, 50), "scaled": len(done)}

    def remove_namespace(self, namespace: str, n: int) -> None:
        self.cluster.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=900s", timeout=960, check=False)
        for i in range(n):
            self.exporter.remove(QUEUE_METRIC, {"vhost": "/", "queue": queue_name(namespace, flow_name(i))})


def strip_finalizers(cluster: LocalCluster, namespace: str, resource: str) -> None:
    """Clears the finalizers of `resource` in the namespace (its controller is stopped: nobody else
    would), in one `kubectl replace` of the list, so that deleting the namespace completes."""
    items = json.loads(cluster.kubectl("get", resource, "-n", namespace, "-o", "json", timeout=120).stdout)["items"]
    held = [item for item in items if item["metadata"].get("finalizers")]
    for item in held:
        item["metadata"]["finalizers"] = []
    if held:
        cluster.kubectl("replace", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": held}), timeout=300)


def throttle_lines(keda: KedaPeer) -> int:
    """Lines of KEDA's operator log that report client-side throttling (its API rate limit)."""
    if keda.operator is None or not keda.operator.log_path.exists():
        return 0
    return sum(1 for line in keda.operator.log_path.read_text(errors="replace").splitlines()
               if "client-side throttling" in line or "rate limiter" in line)


# ------------------------------------------------------------------------------------ the report


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:"))
    return {"cores": os.cpu_count(), "cpu": model, "memory_gib": round(mem / 2**20, 1), "kernel": platform.release(),
            "python": platform.python_version()}


def versions(cluster: LocalCluster) -> dict:
    server = json.loads(cluster.kubectl("version", "-o", "json").stdout).get("serverVersion", {}).get("gitVersion")
    prom = subprocess.run([find_tool("prometheus"), "--version"], capture_output=True, text=True)
    return {"keda": keda_version(), "kubernetes": server, "prometheus": (prom.stdout or prom.stderr).split("\n")[0]}


def settings(args: argparse.Namespace) -> dict:
    return {"poll_interval_seconds": args.poll, "scrape_interval_seconds": 1, "queue_depth_per_replica": PER_REPLICA,
            "idle_depth": IDLE_DEPTH, "step_depth": STEP_DEPTH, "max_replicas": MAX_REPLICAS,
            "idle_seconds": args.idle_seconds, "reactions": args.reactions, "burst_fraction": args.burst_fraction,
            "hpa_sync_seconds": 15, "keda_raised_api_limit": {"qps": args.raised_qps, "burst": args.raised_burst}}


def write_report(path: Path, doc: dict, results: dict[int, dict]) -> None:
    doc["sizes"] = {str(n): {"baseline": by.pop("baseline", None), "systems": by} for n, by in results.items()}
    doc["ratios_keda_to_flowkeeper"] = {str(n): figures.ratios(by) for n, by in results.items()}
    path.write_text(json.dumps(doc, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--reactions", type=int, default=20, help="single-flow backlog steps timed per system and size")
    parser.add_argument("--burst-fraction", type=float, default=0.1, help="share of the flows stepped at once")
    parser.add_argument("--poll", type=int, default=5, help="Flowkeeper's pollInterval and KEDA's pollingInterval, seconds")
    parser.add_argument("--idle-seconds", type=float, default=60, help="the idle window measured per system and size")
    parser.add_argument("--settle-timeout", type=float, default=600, help="seconds for every flow to be served")
    parser.add_argument("--step-timeout", type=float, default=300, help="seconds a backlog step may wait for its scale-up")
    parser.add_argument("--burst-timeout", type=float, default=600)
    parser.add_argument("--raised-qps", type=float, default=200, help="KEDA's --kube-api-qps in the *-raised runs")
    parser.add_argument("--raised-burst", type=int, default=300, help="KEDA's --kube-api-burst in the *-raised runs")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--chart", type=Path, default=CHART)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up as on Ctrl-C
    started = time.monotonic()
    systems = [system(key, args.raised_qps, args.raised_burst) for key in args.systems]
    if any(s.is_keda for s in systems):
        keda_binaries()  # build (once) before the clock of any measurement starts

    results: dict[int, dict] = {}
    doc = {"generated": None, "command": " ".join(["make bench-peers", *(argv if argv is not None else sys.argv[1:])]),
           "machine": machine(), "settings": settings(args)}
    with MetricsExporter() as exporter, LocalPrometheus([exporter.target]) as prometheus, \
            LocalCluster(aggregation=True) as cluster:
        doc["versions"] = versions(cluster)
        cluster.kubectl("apply", "-f", str(CRD))
        cluster.kubectl("wait", "--for=condition=Established", "crd/integrationflows.flowkeeper.io", "--timeout=60s")
        bench = Bench(cluster, prometheus, exporter, args)
        for n in args.sizes:
            for s in systems:
                results.setdefault(n, {})[s.key] = bench.measure(n, s)
                results[n]["baseline"] = bench.baselines.get(n)
                doc["generated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                doc["wall_seconds"] = round(time.monotonic() - started, 1)
                # After every system: a run stopped early leaves what it measured.
                write_report(args.out, dict(doc), {k: dict(v) for k, v in results.items()})
    from bench.peers.chart import draw
    draw(json.loads(args.out.read_text()), args.chart)
    bench.log(f"wrote {args.out} and {args.chart} in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
