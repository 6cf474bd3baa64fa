"""The real node's configuration files, rendered from its paths and addresses (pure: no I/O).

containerd (CRI), the CNI network, kubelet and kube-proxy each get a file of their own; every path
they write to is under the node's folder (containerd's sockets under a short folder of their own),
so removing those (after unmounting what is mounted in them) removes their state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TAINT_KEY = "flowkeeper.io/real-node"
LABEL = {"flowkeeper.io/real-node": "true"}
CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
KUBELET_PORT = 10250


def containerd_root(node_root: Path) -> Path:
    return node_root / "containerd" / "root"


def kubelet_root(node_root: Path) -> Path:
    return node_root / "kubelet"


def cri_sandboxes(node_root: Path) -> Path:
    """Where containerd's CRI plugin keeps a folder per pod sandbox (named by the sandbox's id)."""
    return containerd_root(node_root) / "io.containerd.grpc.v1.cri" / "sandboxes"


@dataclass(frozen=True)
class NodeLayout:
    """Where one node keeps everything, and the names and addresses it was given."""

    root: Path  # the node's folder
    socket_dir: Path  # containerd's sockets: a short path (socket_path_problem)
    name: str  # the Node's name
    network: str  # the CNI network's name (unique per run: the CNI result cache is machine-wide)
    node_ip: str  # the inner end of the veth pair
    pod_cidr: str
    service_cidr: str
    cgroup_root: str  # "/<name>": the kubelet's cgroup root in every hierarchy
    pause_image: str

    @property
    def containerd_socket(self) -> Path:
        return self.socket_dir / "containerd.sock"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def kubelet_root(self) -> Path:
        return kubelet_root(self.root)

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"


# Linux's sun_path holds 108 bytes with the closing NUL: a longer socket path fails to bind with
# "invalid argument", far from its cause.
MAX_SOCKET_PATH = 107
# The deepest sockets the node makes: containerd's (ttrpc beside grpc) and the kubelet's own.
_SOCKETS = ("containerd.sock.ttrpc",)
_KUBELET_SOCKETS = ("device-plugins/kubelet.sock", "pod-resources/kubelet.sock")


def socket_path_problem(node_root: Path, socket_dir: Path) -> str | None:
    """Why the node's Unix sockets would not bind with these folders, or None."""
    paths = [socket_dir / name for name in _SOCKETS] + [kubelet_root(node_root) / name for name in _KUBELET_SOCKETS]
    too_long = [p for p in paths if len(str(p).encode()) > MAX_SOCKET_PATH]
    if not too_long:
        return None
    longest = max(too_long, key=lambda p: len(str(p).encode()))
    return (
        f"the real node's Unix sockets would not bind: {longest} is {len(str(longest).encode())} bytes, "
        f"a socket path has at most {MAX_SOCKET_PATH}; give the cluster a shorter folder (FLOWKEEPER_CLUSTER_DIR, or TMPDIR)"
    )


def _toml(value: object) -> str:
    # A JSON string or boolean is also a TOML basic string or boolean.
    return json.dumps(value)


def containerd_config(layout: NodeLayout) -> str:
    """containerd 1.6 (config version 2): its own root, state and socket; CRI with the local pause
    image, the CNI bridge, runc through cgroupfs. restrict_oom_score_adj: the pause container asks
    for a lower oom_score_adj than a process without CAP_SYS_RESOURCE may set, and runc fails."""
    c = layout.root / "containerd"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = {_toml(str(containerd_root(layout.root)))}
state = {_toml(str(layout.containerd_state))}
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = {_toml(str(layout.containerd_socket))}

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {_toml(str(c / "opt"))}

[{cri}]
  sandbox_image = {_toml(layout.pause_image)}
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.cni]
  bin_dir = {_toml(str(CNI_BIN_DIR))}
  conf_dir = {_toml(str(layout.cni_conf_dir))}
  max_conf_num = 1

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = {_toml(str(c / "runc"))}
"""


def cni_config(layout: NodeLayout) -> dict:
    """A bridge with the pod network (pods reach the rest through the node, masqueraded) and
    host-local addresses kept in the node's folder."""
    return {
        "cniVersion": "1.0.0",
        "name": layout.network,
        "plugins": [{
            "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
            "ipam": {
                "type": "host-local", "ranges": [[{"subnet": layout.pod_cidr}]], "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(layout.root / "cni" / "ipam"),
            },
        }],
    }


def kubelet_config(layout: NodeLayout, client_ca: Path) -> dict:
    """KubeletConfiguration: no anonymous access (x509 clients of the cluster CA and bearer tokens
    checked by the API server; Webhook authorisation), the taint that keeps ordinary pods off, and
    thresholds that do not evict or collect the locally built images on a well-filled disk."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # kubelet >= 1.35 refuses cgroup v1 without it
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": layout.cgroup_root,
        "cgroupsPerQOS": True,
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "address": layout.node_ip,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True, "cacheTTL": "10s"},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "Webhook", "webhook": {"cacheAuthorizedTTL": "10s", "cacheUnauthorizedTTL": "5s"}},
        "registerNode": True,
        "registerWithTaints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
        "podLogsDir": str(layout.pod_logs),
        "resolvConf": "",  # no cluster DNS: pods get no resolver, and so no path out of the machine
        "failSwapOn": False,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100,  # images are imported, never pulled: never collect them
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
        "shutdownGracePeriod": "0s",
    }


def kubelet_args(layout: NodeLayout, config: Path, kubeconfig: Path) -> list[str]:
    labels = ",".join(f"{k}={v}" for k, v in LABEL.items())
    return [
        f"--config={config}", f"--kubeconfig={kubeconfig}", f"--root-dir={layout.kubelet_root}",
        f"--cert-dir={layout.kubelet_root / 'pki'}", f"--hostname-override={layout.name}",
        f"--node-ip={layout.node_ip}", f"--node-labels={labels}", "--v=1",
        # cAdvisor's containerd plugin looks for the default socket: without this flag the kubelet's
        # /metrics/cadvisor has pod cgroups only, no series per container (deprecated, still served).
        f"--containerd={layout.containerd_socket}",
    ]


def kube_proxy_config(layout: NodeLayout, kubeconfig: Path) -> dict:
    """KubeProxyConfiguration in iptables mode, inside the node's namespace; conntrack limits are
    left alone (they are machine-wide)."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": layout.name,
        "bindAddress": layout.node_ip,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "clusterCIDR": layout.pod_cidr,
        "detectLocalMode": "ClusterCIDR",
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def client_kubeconfig(server: str, ca: Path, cert: Path, key: Path, *, tls_server_name: str | None = None) -> dict:
    """A kubeconfig of a client certificate; `tls_server_name` when `server`'s address is not one the
    API server's certificate names (the relay on the veth)."""
    cluster = {"server": server, "certificate-authority": str(ca)}
    if tls_server_name:
        cluster["tls-server-name"] = tls_server_name
    return {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "node", "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "node"}}],
        "current-context": "local",
    }


def kubernetes_endpoints(address: str, port: int) -> list[dict]:
    """The `kubernetes` Service's Endpoints and EndpointSlice, pointing at `address:port` (the relay
    to the API server on the host end of the veth): what kube-proxy routes 10.0.0.1:443 to. The API
    server leaves them alone (--endpoint-reconciler-type=none)."""
    port_entry = {"name": "https", "port": port, "protocol": "TCP"}
    return [
        {"apiVersion": "v1", "kind": "Endpoints",
         "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
         "subsets": [{"addresses": [{"ip": address}], "ports": [port_entry]}]},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
         "ports": [port_entry]},
    ]
