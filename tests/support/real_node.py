"""One real node beside kwok: containerd, kubelet and kube-proxy in a network namespace of their own,
for a running LocalCluster(real_node=True). Pods that tolerate its taint and select it run real
containers (images imported with import_image, `imagePullPolicy: Never`: there is no registry).

    node = cluster.real_node                 # started by LocalCluster(real_node=True)
    node.name, node.node_ip, node.pod_cidr   # "real-node-0", the inner end of the veth, e.g. 10.214.0.0/24
    node.import_image(image.archive)         # a docker-archive (tests/support/images.py)
    node.pod_overrides()                     # tolerations + nodeSelector for a pod spec

The network (nothing leaves the machine): the namespace fknode-<pid> is joined to the host by a veth
pair with private addresses; the node's IP is its inner end; the pod network (a CNI bridge inside the
namespace) is routed from the host through the pair. kubelet and kube-proxy reach the API server
(which listens on 127.0.0.1) through a relay on the host end of the pair, and the `kubernetes`
Service's endpoints point there, so in-cluster clients in pods reach it at 10.0.0.1:443.

Credentials: the kubelet is system:node:<name> (Node authoriser), kube-proxy system:kube-proxy, both
by client certificates of the cluster CA; the kubelet serves with a self-signed certificate, accepts
the cluster CA's client certificates and the API server's token reviews, never anonymous requests,
and asks the API server to authorise every request (Webhook).

Nothing is left behind: stop() and, for a killed run, the next start clear what node_cleanup lists.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from tests.support import images, node_cleanup
from tests.support.cache import cache_root
from tests.support.netns import NetNamespace, TcpRelay, remove_stale
from tests.support.node_cleanup import NodeRun
from tests.support.node_config import (
    LABEL,
    TAINT_KEY,
    NodeLayout,
    client_kubeconfig,
    cni_config,
    containerd_config,
    kube_proxy_config,
    kubelet_args,
    kubelet_config,
    kubernetes_endpoints,
    socket_path_problem,
)
from tests.support.processes import Process, stop_all, wait_until

if TYPE_CHECKING:
    from tests.support.cluster import LocalCluster

NETNS_PREFIX = "fknode"
POD_POOL = ipaddress.ip_network("10.214.0.0/16")  # private; a free /24 of it per node
NODE_NAME = "real-node-0"
K8S_MODULE = "k8s.io/kubernetes"


# ------------------------------------------------------------------------------------ pause image


def pause_binary() -> Path:
    """Kubernetes' own pause.c (from the kubernetes module the binaries are built from), compiled
    statically, cached by the source's digest."""
    from tests.support.cluster import k8s_version

    modcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    source = Path(modcache) / f"{K8S_MODULE}@{k8s_version()}" / "build" / "pause" / "linux" / "pause.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    binary = cache_root() / "pause" / digest / "pause"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        partial = binary.with_name("pause.partial")
        subprocess.run(["gcc", "-Os", "-static", "-Wall", f"-DVERSION={k8s_version()}", "-o", str(partial), str(source)],
                       check=True, capture_output=True, text=True)
        subprocess.run(["strip", str(partial)], check=True)
        partial.rename(binary)
    return binary


def pause_image() -> images.Image:
    return images.scratch_image("pause", {"/pause": pause_binary()}, entrypoint=["/pause"])


# ----------------------------------------------------------------------------------------- cgroups


def make_cgroup(name: str) -> None:
    """The kubelet's cgroup root, in every v1 hierarchy (the kubelet refuses a root that is missing in
    one); cpuset needs its cpus and mems before a child can hold a process."""
    for hierarchy in sorted(node_cleanup.CGROUP_FS.iterdir()):
        if not hierarchy.is_dir() or hierarchy.name == "unified":
            continue
        folder = hierarchy / name
        folder.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":
            for setting in ("cpuset.cpus", "cpuset.mems"):
                (folder / setting).write_text((hierarchy / setting).read_text())


# ------------------------------------------------------------------------------------------- node


class RealNode:
    def __init__(self, cluster: LocalCluster, name: str = NODE_NAME) -> None:
        self.cluster = cluster
        self.name = name
        self.root = cluster.workdir / "node"
        self.logs = cluster.logs
        self.netns = NetNamespace(NETNS_PREFIX)
        self.relay: TcpRelay | None = None
        self.processes: list[Process] = []
        pid = os.getpid()
        self.socket_dir = Path(tempfile.gettempdir()) / f"{NETNS_PREFIX}-{pid}"
        self.run = NodeRun(
            pid=pid, root=str(self.root), socket_dir=str(self.socket_dir), netns_prefix=NETNS_PREFIX,
            cgroup=f"flowkeeper-node-{pid}", cni_network=f"{NETNS_PREFIX}-{pid}",
            containerd_socket=str(self.socket_dir / "containerd.sock"), pod_logs=str(self.root / "pod-logs"),
        )
        self.layout: NodeLayout | None = None
        self.timings: dict[str, float] = {}

    # -- what tests use
    @property
    def node_ip(self) -> str:
        return self.netns.inner_ip

    @property
    def pod_cidr(self) -> str:
        return str(self.netns.routed)

    @staticmethod
    def pod_overrides() -> dict:
        """What a pod spec needs to run here: tolerate the taint, select the node's label."""
        return {
            "tolerations": [{"key": TAINT_KEY, "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
            "nodeSelector": dict(LABEL),
        }

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run in the node's network namespace (`ip`, `iptables-save`, `curl` as the node sees it)."""
        return self.netns.wrap(argv)

    def ctr(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run(["ctr", "--address", self.run.containerd_socket, "-n", "k8s.io", *args],
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result.stdout

    def import_image(self, archive: Path) -> None:
        """Imports a docker-archive into the node's containerd (the name comes from its RepoTags)."""
        self.ctr("images", "import", str(archive))

    # -- lifecycle
    def start(self) -> RealNode:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from tests.support.cluster import build_cache, issue_client_cert

        problem = socket_path_problem(self.root, self.socket_dir)
        if problem is not None:  # before anything is made
            raise RuntimeError(problem)
        began = time.monotonic()
        node_cleanup.clear_stale()
        remove_stale(NETNS_PREFIX)  # a namespace whose run was killed before it was recorded
        bin_dir = build_cache("node")
        pause = pause_image()
        self.timings["binaries_and_pause_image"] = time.monotonic() - began

        began = time.monotonic()
        self.run.save()  # before anything is made: a kill from here on is cleared by the next start
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self.netns.start(route_pool=POD_POOL, route_prefixlen=24)
        make_cgroup(self.run.cgroup)
        subprocess.run(self.wrap(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]), check=True)
        api_port = self.cluster.api_port
        self.relay = TcpRelay(self.netns.host_ip, ("127.0.0.1", api_port), port=api_port).start()
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": kubernetes_endpoints(self.netns.host_ip, api_port)}))

        self.layout = layout = NodeLayout(
            root=self.root, socket_dir=self.socket_dir, name=self.name, network=self.run.cni_network, node_ip=self.netns.inner_ip,
            pod_cidr=self.pod_cidr, service_cidr="10.0.0.0/24", cgroup_root=f"/{self.run.cgroup}", pause_image=pause.name,
        )
        pki = self.root / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        server = f"https://{self.netns.host_ip}:{api_port}"
        ca = self.cluster.pki / "ca.crt"
        kubeconfigs = {}
        for who, cn, org in (("kubelet", f"system:node:{self.name}", "system:nodes"), ("kube-proxy", "system:kube-proxy", None)):
            cert, key = issue_client_cert(self.cluster.pki, pki / who, cn, org)
            kubeconfigs[who] = pki / f"{who}.kubeconfig"
            kubeconfigs[who].write_text(yaml.safe_dump(client_kubeconfig(server, ca, cert, key, tls_server_name="localhost")))

        for folder in (layout.cni_conf_dir, layout.kubelet_root, layout.pod_logs, layout.containerd_state):
            folder.mkdir(parents=True, exist_ok=True)
        (layout.cni_conf_dir / "10-flowkeeper.conflist").write_text(json.dumps(cni_config(layout), indent=2))
        containerd_toml = self.root / "containerd.toml"
        containerd_toml.write_text(containerd_config(layout))
        kubelet_yaml = self.root / "kubelet.yaml"
        kubelet_yaml.write_text(yaml.safe_dump(kubelet_config(layout, ca)))
        proxy_yaml = self.root / "kube-proxy.yaml"
        proxy_yaml.write_text(yaml.safe_dump(kube_proxy_config(layout, kubeconfigs["kube-proxy"])))

        self.timings["namespace_cgroups_credentials_configs"] = time.monotonic() - began
        began = time.monotonic()
        containerd = self._run("containerd", ["containerd", f"--config={containerd_toml}"])
        wait_until(lambda: bool(self.ctr("version", timeout=5)), 60, "containerd", containerd)
        self.import_image(pause.archive)
        self.timings["containerd_ready_and_pause_imported"] = time.monotonic() - began

        began = time.monotonic()
        kubelet = self._run("kubelet", [str(bin_dir / "kubelet"), *kubelet_args(layout, kubelet_yaml, kubeconfigs["kubelet"])])
        self._run("kube-proxy", [str(bin_dir / "kube-proxy"), f"--config={proxy_yaml}"])
        wait_until(self.ready, 120, f"node {self.name}", kubelet)
        self.timings["kubelet_to_node_ready"] = time.monotonic() - began

    def _run(self, name: str, argv: list[str]) -> Process:
        process = Process(name, self.wrap(argv), self.logs).start()
        self.processes.append(process)
        return process

    def node(self) -> dict:
        return json.loads(self.cluster.kubectl("get", "node", self.name, "-o", "json").stdout)

    def ready(self) -> bool:
        conditions = self.node()["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def stop(self) -> None:
        """Stops kubelet and kube-proxy, then containerd, then clears everything the run made."""
        stop_all([p for p in reversed(self.processes) if p.name != "containerd"])
        stop_all([p for p in self.processes if p.name == "containerd"])
        self.processes.clear()
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        node_cleanup.clear(self.run)
        self.netns.close()

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
