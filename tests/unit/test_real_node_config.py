"""The real node's pure helpers: configuration rendering, mount and shim parsing, subnet picking."""

from __future__ import annotations

import hashlib
import ipaddress
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import netns
from tests.support.node_cleanup import mounts_under, sandbox_id_of_result, shim_arguments, shim_socket
from tests.support.node_config import (
    NodeLayout,
    cni_config,
    containerd_config,
    kube_proxy_config,
    kubelet_args,
    kubelet_config,
    kubernetes_endpoints,
    socket_path_problem,
)

LAYOUT = NodeLayout(
    root=Path("/work dir/node"), socket_dir=Path("/tmp/fknode-42"), name="real-node-0", network="fknode-42",
    node_ip="10.213.0.2", pod_cidr="10.214.0.0/24", service_cidr="10.0.0.0/24", cgroup_root="/flowkeeper-node-42",
    pause_image="localhost/pause:abc",
)


def test_containerd_config_is_toml_with_the_settings_the_machine_needs() -> None:
    config = tomllib.loads(containerd_config(LAYOUT))
    assert config["version"] == 2
    assert config["root"].startswith("/work dir/node/") and config["state"].startswith("/work dir/node/")
    assert config["grpc"]["address"] == "/tmp/fknode-42/containerd.sock"
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True  # no CAP_SYS_RESOURCE: runc fails otherwise
    assert cri["netns_mounts_under_state_dir"] is True  # pod namespaces under the node's folder
    assert cri["sandbox_image"] == "localhost/pause:abc"
    assert cri["cni"]["conf_dir"] == "/work dir/node/cni/net.d" and cri["cni"]["bin_dir"] == "/usr/lib/cni"
    options = cri["containerd"]["runtimes"]["runc"]["options"]
    assert options["SystemdCgroup"] is False and options["Root"].startswith("/work dir/node/")
    assert "io.containerd.runtime.v1.linux" not in config["disabled_plugins"]  # the CRI plugin needs it in 1.6


def test_cni_config_bridges_the_pod_network_with_masquerade_and_state_in_the_node_folder() -> None:
    config = cni_config(LAYOUT)
    assert config["name"] == "fknode-42"
    bridge = config["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["ipMasq"] is True and bridge["isGateway"] is True
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.214.0.0/24"}]]
    assert bridge["ipam"]["dataDir"].startswith("/work dir/node/")


def test_kubelet_config_is_not_anonymous_and_registers_tainted() -> None:
    config = kubelet_config(LAYOUT, Path("/pki/ca.crt"))
    assert config["failCgroupV1"] is False and config["cgroupDriver"] == "cgroupfs"
    assert config["cgroupRoot"] == "/flowkeeper-node-42"
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authentication"]["x509"]["clientCAFile"] == "/pki/ca.crt"
    assert config["authentication"]["webhook"]["enabled"] is True
    assert config["authorization"]["mode"] == "Webhook"
    assert config["registerWithTaints"] == [{"key": "flowkeeper.io/real-node", "value": "true", "effect": "NoSchedule"}]
    assert config["address"] == "10.213.0.2" and config["readOnlyPort"] == 0
    assert config["containerRuntimeEndpoint"] == "unix:///tmp/fknode-42/containerd.sock"
    assert config["imageGCHighThresholdPercent"] == 100  # imported images are never collected
    args = kubelet_args(LAYOUT, Path("/c.yaml"), Path("/k.kubeconfig"))
    assert "--node-ip=10.213.0.2" in args and "--hostname-override=real-node-0" in args
    assert "--node-labels=flowkeeper.io/real-node=true" in args
    assert any(a.startswith("--root-dir=/work dir/node/") for a in args)
    assert "--containerd=/tmp/fknode-42/containerd.sock" in args  # cAdvisor's per-container series


def test_kube_proxy_config_uses_iptables_and_leaves_machine_wide_conntrack_alone() -> None:
    config = kube_proxy_config(LAYOUT, Path("/kp.kubeconfig"))
    assert config["mode"] == "iptables" and config["clusterCIDR"] == "10.214.0.0/24"
    assert config["conntrack"]["maxPerCore"] == 0 and config["conntrack"]["min"] == 0
    assert config["hostnameOverride"] == "real-node-0"


def test_kubernetes_endpoints_point_at_the_relay_and_are_not_mirrored() -> None:
    endpoints, slice_ = kubernetes_endpoints("10.213.0.1", 6443)
    assert endpoints["subsets"] == [{"addresses": [{"ip": "10.213.0.1"}], "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}]
    assert endpoints["metadata"]["labels"]["endpointslice.kubernetes.io/skip-mirror"] == "true"
    assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == "kubernetes"
    assert slice_["endpoints"][0]["addresses"] == ["10.213.0.1"] and slice_["ports"][0]["port"] == 6443


MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
100 22 0:50 / /work\\040dir/node/kubelet rw shared:2 - ext4 /dev/vda rw
101 100 0:51 / /work\\040dir/node/kubelet/pods/u/volumes/kubernetes.io~projected/token rw - tmpfs tmpfs rw
102 22 0:52 / /work\\040dir/node-other rw - tmpfs tmpfs rw
103 22 0:53 / /work\\040dir/node/containerd/state/run/k8s.io/abc/rootfs rw - overlay overlay rw
"""


def test_mounts_under_lists_the_folder_and_below_deepest_first_and_unescapes() -> None:
    points = mounts_under(MOUNTINFO, "/work dir/node")
    assert set(points) == {
        "/work dir/node/kubelet",
        "/work dir/node/kubelet/pods/u/volumes/kubernetes.io~projected/token",
        "/work dir/node/containerd/state/run/k8s.io/abc/rootfs",
    }
    assert points.index("/work dir/node/kubelet/pods/u/volumes/kubernetes.io~projected/token") < points.index("/work dir/node/kubelet")


@given(st.lists(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=5).map("/".join), max_size=8))
def test_mounts_under_orders_children_before_parents(paths: list[str]) -> None:
    text = "".join(f"1 1 0:1 / /r/{p} rw - tmpfs t rw\n" for p in paths)
    points = mounts_under(text, "/r")
    for i, parent in enumerate(points):
        assert not any(child.startswith(parent.rstrip("/") + "/") for child in points[i + 1:] if child != parent)


def test_shim_arguments_and_socket() -> None:
    argv = ["/usr/bin/containerd-shim-runc-v2", "-namespace", "k8s.io", "-id", "abc", "-address", "/tmp/fknode-42/containerd.sock"]
    assert shim_arguments(argv) == ("/tmp/fknode-42/containerd.sock", "k8s.io", "abc")
    assert shim_arguments(["/usr/bin/containerd", "-address", "x"]) is None
    assert shim_arguments(["/usr/bin/containerd-shim-runc-v2", "-id", "abc"]) is None
    expected = hashlib.sha256(b"/tmp/fknode-42/containerd.sock/k8s.io/abc").hexdigest()
    assert shim_socket("/tmp/fknode-42/containerd.sock", "k8s.io", "abc") == Path("/run/containerd/s") / expected


def test_names_are_per_prefix_and_pid_and_fit_a_link_name() -> None:
    assert netns.names("fknode", 4194304) == ("fknode-4194304", "fknodeh4194304", "fknoden4194304")
    assert all(len(n) <= 15 for n in netns.names("fkpeer1", 4194304)[1:])
    with pytest.raises(ValueError):
        netns.names("toolongprefix", 1)


@given(st.lists(st.integers(0, 255), max_size=20))
def test_free_subnet_is_in_the_pool_and_overlaps_nothing_used(used_octets: list[int]) -> None:
    pool = ipaddress.ip_network("10.214.0.0/16")
    used = [ipaddress.ip_network(f"10.214.{o}.0/24") for o in used_octets] + [ipaddress.ip_network("192.0.2.0/24")]
    subnet = netns.free_subnet(pool, 24, used)
    assert subnet.subnet_of(pool) and subnet.prefixlen == 24
    assert not any(subnet.overlaps(u) for u in used)


def test_free_subnet_fails_when_the_pool_is_full() -> None:
    with pytest.raises(RuntimeError):
        netns.free_subnet(ipaddress.ip_network("10.214.0.0/23"), 24, [ipaddress.ip_network("10.214.0.0/23")])


def test_sandbox_id_of_a_cni_cache_file_name() -> None:
    assert sandbox_id_of_result("fknode-42-abc123-eth0", "fknode-42") == "abc123"
    assert sandbox_id_of_result("fknode-420-abc123-eth0", "fknode-42") is None
    assert sandbox_id_of_result("cni-loopback-abc123-lo", "fknode-42") is None


def test_a_node_folder_too_deep_for_unix_sockets_is_refused_naming_the_limit() -> None:
    assert socket_path_problem(Path("/tmp/fk/node"), Path("/tmp/fknode-42")) is None
    deep = Path("/") / ("d" * 90) / "node"  # the kubelet's sockets lie 35 bytes below the node's folder
    problem = socket_path_problem(deep, Path("/tmp/fknode-42"))
    assert problem is not None and "at most 107" in problem and "device-plugins/kubelet.sock" in problem and "FLOWKEEPER_CLUSTER_DIR" in problem
    assert "containerd.sock.ttrpc" in (socket_path_problem(Path("/tmp/fk/node"), Path("/") / ("s" * 90)) or "")
    # 107 bytes fits, 108 does not.
    edge = Path("/" + "e" * (107 - len("/node/kubelet/device-plugins/kubelet.sock") - 1)) / "node"
    assert len(str(edge / "kubelet/device-plugins/kubelet.sock")) == 107 and socket_path_problem(edge, Path("/tmp/s")) is None
    assert socket_path_problem(Path(str(edge).replace("/e", "/ee", 1)), Path("/tmp/s")) is not None
