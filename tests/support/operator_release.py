"""The chart installed with the real helm on a cluster with a real node: the operator image built here
(imported into the node's containerd, `imagePullPolicy: Never`), its pods on the real node, and the
ways in and out of the node's network that such a release needs.

    with OperatorRelease(cluster, node, "fk", namespace, helm_home) as release:
        release.install(operator_image(), prometheus_url=relay_url, watch=["team-a"], values={...})
        release.pods(), release.lease_holder(), release.wait_ready(2)
        release.upgrade(image)                  # --reuse-values, the new image's tag
    # leaving the block uninstalls the release (if still installed)

    relay = relay_to_pods(node, prometheus.port)     # pods reach a host service at relay.url
    with PodDiscovery(cluster, namespace) as discovery:     # Prometheus' HTTP discovery of the pods
        add_scrape_jobs(prometheus, [discovery.scrape_job("flowkeeper-operator")])

Pods reach the host only at the host end of the node's veth pair (the host's own services listen on
127.0.0.1), so a host service is offered there by a relay. The host reaches pods directly: the node's
pod network is routed through the pair, so a Prometheus on the host scrapes pod addresses, found
through the API server as a cluster's Prometheus finds them.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.support.chart import CHART, helm
from tests.support.cluster_fixtures import eventually
from tests.support.images import Image
from tests.support.netns import TcpRelay
from tests.support.prometheus import LocalPrometheus
from tests.support.real_node import RealNode

POD_READY_TIMEOUT = 180  # the kubelet, image and a Python start on a loaded 2-core machine


class Relay:
    """A host service (127.0.0.1:port) offered to the node's pods on the host end of the veth pair."""

    def __init__(self, node: RealNode, port: int) -> None:
        self._relay = TcpRelay(node.netns.host_ip, ("127.0.0.1", port)).start()
        self.url = f"http://{node.netns.host_ip}:{self._relay.port}"

    def close(self) -> None:
        self._relay.close()


def relay_to_pods(node: RealNode, port: int) -> Relay:
    return Relay(node, port)


# ------------------------------------------------------------------------------------- Prometheus


class AdminReader:
    """GETs from the cluster's API server with its admin credentials, without a kubectl process
    (cheap enough to poll several times a second)."""

    def __init__(self, cluster: Any) -> None:
        self.server = cluster.server
        self._context = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
        self._context.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.server}{path}", context=self._context, timeout=10) as response:
            return json.load(response)


class PodDiscovery:
    """Prometheus' HTTP service discovery for the pods of one namespace: answers each refresh with
    the address of every container port named `port_name` of the pods that have an IP, as the API
    server lists them at that moment (labels `pod` and `namespace`). The Debian Prometheus has no
    Kubernetes discovery built in; this one asks the same API, with the cluster's admin credentials.

        with PodDiscovery(cluster, namespace) as discovery:
            add_scrape_jobs(prometheus, [discovery.scrape_job("flowkeeper-operator")])
    """

    def __init__(self, cluster: Any, namespace: str, port_name: str = "metrics") -> None:
        self.namespace, self.port_name = namespace, port_name
        self._api = AdminReader(cluster)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="pod-discovery", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/targets"

    def scrape_job(self, job: str) -> dict:
        return {"job_name": job, "http_sd_configs": [{"url": self.url, "refresh_interval": "1s"}]}

    def targets(self) -> list[dict]:
        pods = self._api.get(f"/api/v1/namespaces/{self.namespace}/pods")["items"]
        return [
            {"targets": [f"{pod['status']['podIP']}:{port['containerPort']}"],
             "labels": {"pod": pod["metadata"]["name"], "namespace": self.namespace}}
            for pod in pods if pod.get("status", {}).get("podIP")
            for container in pod["spec"]["containers"] for port in container.get("ports", [])
            if port.get("name") == self.port_name
        ]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        discovery = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                try:
                    body, status = json.dumps(discovery.targets()).encode(), 200
                except OSError as error:  # the API server unreachable: Prometheus keeps its last targets
                    body, status = str(error).encode(), 503
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def __enter__(self) -> PodDiscovery:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def add_scrape_jobs(prometheus: LocalPrometheus, jobs: list[dict]) -> None:
    """Adds `jobs` to a running LocalPrometheus' configuration (JSON, which is YAML) and reloads it."""
    config = json.loads(prometheus.config_file.read_text())
    names = {job["job_name"] for job in jobs}
    config["scrape_configs"] = [j for j in config["scrape_configs"] if j["job_name"] not in names] + jobs
    prometheus.config_file.write_text(json.dumps(config, indent=2))
    prometheus.check_config()
    urllib.request.urlopen(urllib.request.Request(f"{prometheus.url}/-/reload", method="POST"), timeout=10).close()


def query_range(prometheus: LocalPrometheus, promql: str, start: float, end: float, step: float = 1.0) -> list[dict]:
    """A range query's result (matrix): [{"metric": {...}, "values": [[t, "v"], ...]}, ...]."""
    params = urllib.parse.urlencode({"query": promql, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/query_range?{params}", timeout=30) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"range query {promql!r} failed: {body}")
    return body["data"]["result"]


class LeaseTimeline:
    """Watches a Lease from a thread (a GET every `interval` seconds) and keeps each change of its
    holder or renewTime with the wall time it was seen: who led when, and since when.

        with LeaseTimeline(cluster, namespace, "flowkeeper") as timeline:
            ...
            timeline.first(lambda holder, renewed: holder != old, after=t0)   # (seen at, holder, renewTime)
    """

    def __init__(self, cluster: Any, namespace: str, name: str, interval: float = 0.2) -> None:
        self._api = AdminReader(cluster)
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self.interval = interval
        self.seen: list[tuple[float, str | None, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name=f"lease-{name}", daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                spec = self._api.get(self._path)["spec"]
            except OSError:
                continue
            entry = (time.time(), spec.get("holderIdentity"), spec.get("renewTime"))
            if not self.seen or self.seen[-1][1:] != entry[1:]:
                self.seen.append(entry)

    def first(self, predicate: Callable[[str | None, str | None], bool], after: float) -> tuple[float, str | None, str | None] | None:
        return next((e for e in self.seen if e[0] >= after and predicate(e[1], e[2])), None)

    def holders(self, after: float = 0.0) -> list[str | None]:
        """The holders seen since `after`, in order, each once per term."""
        found: list[str | None] = []
        for at, holder, _ in self.seen:
            if at >= after and (not found or found[-1] != holder):
                found.append(holder)
        return found

    def __enter__(self) -> LeaseTimeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def writes_by_step(series: list[dict], step: float = 1.0) -> dict[float, set[str]]:
    """From a range query of each pod's write counter: at each step, the pods whose counter moved. A
    gap in a series is its target down (a container restarting), and a counter below its last value
    a new process: either way the process after it counts from 0."""
    writers: dict[float, set[str]] = {}
    for one in series:
        previous_at, previous = None, 0.0
        for at, value in ((float(t), float(v)) for t, v in one["values"]):
            restarted = previous_at is not None and (at - previous_at > 2 * step or value < previous)
            if previous_at is not None and (value > previous or (restarted and value > 0)):
                writers.setdefault(at, set()).add(one["metric"]["pod"])
            previous_at, previous = at, value
    return writers



def concurrent_leaders(series: list[dict], step: float = 1.0, grace_steps: int = 2) -> list[tuple[float, set[str]]]:
    """From a range query of `flowkeeper_leader == 1` per pod: the steps at which two pods or more
    claimed to lead and went on claiming for `grace_steps` more steps. A replica that hands the
    Lease back and exits at once is never scraped with its final 0: its last 1 lasts until
    Prometheus marks the series stale (within a scrape), overlapping its successor's first 1s;
    that ending series is not a second leader, one that goes on claiming is."""
    claims = {one["metric"]["pod"]: {float(t) for t, _ in one["values"]} for one in series}
    steps = sorted(set().union(*claims.values())) if claims else []
    found = []
    for at in steps:
        lasting = {pod for pod, times in claims.items()
                   if all(round(at + k * step, 3) in {round(t, 3) for t in times} for k in range(grace_steps + 1))}
        if len(lasting) > 1:
            found.append((at, lasting))
    return found


# ---------------------------------------------------------------------------------------- release


def real_node_values(node: RealNode, image: Image) -> dict:
    """Chart values that run the operator from `image` on the real node: the chart's documented
    image, nodeSelector and tolerations values, nothing else."""
    overrides = node.pod_overrides()
    return {
        "image": {"repository": image.repository, "tag": image.tag, "pullPolicy": "Never"},
        "nodeSelector": overrides["nodeSelector"],
        "tolerations": overrides["tolerations"],
    }


class OperatorRelease:
    def __init__(self, cluster: Any, node: RealNode, name: str, namespace: str, helm_home: Path) -> None:
        self.cluster, self.node, self.name, self.namespace = cluster, node, name, namespace
        self.helm_home = helm_home
        self.installed = False
        # helm's own cache and configuration in the test's folder, its kubeconfig the cluster's
        self.env = {**cluster.env, **{f"HELM_{kind}_HOME": str(helm_home / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}}

    @property
    def fullname(self) -> str:
        """The chart's object names: the release name, plus "-flowkeeper" unless it holds it."""
        return self.name if "flowkeeper" in self.name else f"{self.name}-flowkeeper"

    def helm(self, *args: str, timeout: float = 300) -> str:
        return helm(*args, env=self.env, timeout=timeout)

    def _values_file(self, values: dict) -> Path:
        self.helm_home.mkdir(parents=True, exist_ok=True)
        path = self.helm_home / f"values-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    def install(self, image: Image, values: dict) -> str:
        """`helm install` with the real node's values for `image` merged under `values`; returns the
        notes. The image is imported into the node's containerd first."""
        self.node.import_image(image.archive)
        merged = _merge(real_node_values(self.node, image), values)
        notes = self.helm("install", self.name, str(CHART), "-n", self.namespace, "--create-namespace",
                          "--values", str(self._values_file(merged)))
        self.installed = True
        return notes

    def upgrade(self, image: Image, *set_args: str) -> str:
        """`helm upgrade --reuse-values` to `image` (imported first), with more `--set key=value`."""
        self.node.import_image(image.archive)
        sets = [a for arg in (f"image.tag={image.tag}", f"image.repository={image.repository}", *set_args) for a in ("--set", arg)]
        return self.helm("upgrade", self.name, str(CHART), "-n", self.namespace, "--reuse-values", *sets)

    def uninstall(self) -> None:
        self.helm("uninstall", self.name, "-n", self.namespace, "--wait", "--timeout=120s")
        self.installed = False

    # -- what the tests look at
    def get(self, *args: str) -> dict:
        return json.loads(self.cluster.kubectl("get", *args, "-n", self.namespace, "-o", "json").stdout)

    def pods(self) -> list[dict]:
        """The release's pods that are not being deleted."""
        listed = self.get("pods", "-l", f"app.kubernetes.io/instance={self.name}")["items"]
        return [p for p in listed if not p["metadata"].get("deletionTimestamp")]

    def pod(self, name: str) -> dict:
        return self.get("pod", name)

    def ready_pods(self) -> list[dict]:
        return [p for p in self.pods() if is_ready(p)]

    def wait_ready(self, count: int, timeout: float = POD_READY_TIMEOUT) -> list[dict]:
        """Waits until exactly `count` pods of the release exist and all are Ready; returns them."""
        def ready() -> list[dict] | None:
            pods = self.pods()
            return pods if len(pods) == count and all(is_ready(p) for p in pods) else None

        return eventually(ready, timeout=timeout, interval=1, what=f"{count} ready operator pods")

    def lease_holder(self) -> str | None:
        out = self.cluster.kubectl("get", "lease", self.fullname, "-n", self.namespace, "-o", "json", check=False)
        return json.loads(out.stdout)["spec"].get("holderIdentity") if out.returncode == 0 else None

    def __enter__(self) -> OperatorRelease:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            self.helm("uninstall", self.name, "-n", self.namespace, "--wait", "--timeout=120s")
            self.installed = False


def is_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def container_status(pod: dict, name: str = "operator") -> dict:
    return next((s for s in pod.get("status", {}).get("containerStatuses", []) if s["name"] == name), {})


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged
