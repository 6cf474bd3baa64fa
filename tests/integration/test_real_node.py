"""The real node beside kwok: it registers with its taint, ordinary pods stay on kwok, a pod that
tolerates and selects it runs real containers (logs, exec, a ServiceAccount token that works against
the API server through the `kubernetes` Service), its kubelet refuses anonymous callers, and nothing
is left behind by a stop, or by a SIGKILL once the next start has run."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import REPO, LocalCluster
from tests.support.cluster_fixtures import eventually
from tests.support.images import base_image
from tests.support.node_config import TAINT_KEY
from tests.support.real_node import NODE_NAME, RealNode, pause_image

pytestmark = [pytest.mark.cluster, pytest.mark.real_node]

# Asks the API server who it is, with the mounted token, through the `kubernetes` Service; prints the
# answer as one JSON line, then stays up for `kubectl exec`.
WHOAMI = """
import json, os, ssl, time, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
url = "https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews" % (
    os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode()
request = urllib.request.Request(url, data=body, method="POST", headers={
    "Authorization": "Bearer " + open(sa + "/token").read(), "Content-Type": "application/json"})
context = ssl.create_default_context(cafile=sa + "/ca.crt")
review = json.load(urllib.request.urlopen(request, context=context, timeout=20))
print(json.dumps({"whoami": review["status"]["userInfo"]["username"], "server": url}), flush=True)
while True:
    time.sleep(3600)
"""


def pod_manifest(name: str, namespace: str, image: str, command: list[str] | None = None, *, on_real_node: bool = True) -> dict:
    container = {"name": "main", "image": image, "imagePullPolicy": "Never"}
    if command:
        container["command"] = command
    spec = {"containers": [container], "terminationGracePeriodSeconds": 0}
    if on_real_node:
        spec.update(RealNode.pod_overrides())
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def get(cluster: LocalCluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def test_node_registers_ready_with_its_taint_label_and_veth_address(real_node_cluster: LocalCluster, real_node: RealNode) -> None:
    node = get(real_node_cluster, "node", NODE_NAME)
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
    assert {"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"} in node["spec"]["taints"]
    assert node["metadata"]["labels"]["flowkeeper.io/real-node"] == "true"
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == real_node.node_ip
    # An address of the veth pair the run made: inside its private pool, on no other interface.
    assert ipaddress.ip_address(real_node.node_ip) in ipaddress.ip_network("10.213.0.0/16")
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.36.3"


def test_ordinary_pods_stay_on_kwok(real_node_cluster: LocalCluster, real_node_namespace: str) -> None:
    real_node_cluster.kubectl("create", "deployment", "ordinary", "-n", real_node_namespace, "--image=example/none:1", "--replicas=4")
    eventually(lambda: get(real_node_cluster, "deployment", "ordinary", "-n", real_node_namespace)["status"].get("readyReplicas") == 4,
               timeout=60, what="4 ready kwok replicas")
    pods = get(real_node_cluster, "pods", "-n", real_node_namespace)["items"]
    assert {p["spec"]["nodeName"] for p in pods} == {"kwok-node-0"}
    # The taint is what keeps them off: a pod that selects the real node without tolerating it
    # is not scheduled, and the scheduler says why.
    intruder = pod_manifest("intruder", real_node_namespace, "example/none:1", on_real_node=False)
    intruder["spec"]["nodeSelector"] = {"kubernetes.io/hostname": NODE_NAME}
    real_node_cluster.kubectl("apply", "-f", "-", input=json.dumps(intruder))

    def unschedulable() -> bool:
        pod = get(real_node_cluster, "pod", "intruder", "-n", real_node_namespace)
        conditions = {c["type"]: c for c in pod["status"].get("conditions", [])}
        return conditions.get("PodScheduled", {}).get("reason") == "Unschedulable" and "untolerated taint" in conditions["PodScheduled"]["message"]

    eventually(unschedulable, timeout=30, what="intruder Unschedulable because of the taint")
    assert not get(real_node_cluster, "pod", "intruder", "-n", real_node_namespace)["spec"].get("nodeName")


def test_a_pod_runs_for_real_with_logs_exec_and_a_working_token(real_node_cluster: LocalCluster, real_node: RealNode,
                                                                 real_node_namespace: str) -> None:
    image = base_image()
    real_node.import_image(image.archive)
    manifest = pod_manifest("whoami", real_node_namespace, image.name, ["python3", "-c", WHOAMI])
    real_node_cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    eventually(lambda: get(real_node_cluster, "pod", "whoami", "-n", real_node_namespace)["status"].get("phase") == "Running",
               timeout=90, what="pod Running")
    pod = get(real_node_cluster, "pod", "whoami", "-n", real_node_namespace)
    assert pod["spec"]["nodeName"] == NODE_NAME
    assert pod["status"]["hostIP"] == real_node.node_ip
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(real_node.pod_cidr)

    def logged() -> dict | None:
        lines = real_node_cluster.kubectl("logs", "whoami", "-n", real_node_namespace).stdout.splitlines()
        return json.loads(lines[0]) if lines else None

    answer = eventually(logged, timeout=60, what="the pod's answer in kubectl logs")
    assert answer["whoami"] == f"system:serviceaccount:{real_node_namespace}:default"
    assert answer["server"].startswith("https://10.0.0.1:443/")  # the `kubernetes` Service, through kube-proxy

    mounted = real_node_cluster.kubectl(
        "exec", "whoami", "-n", real_node_namespace, "--", "cat", "/var/run/secrets/kubernetes.io/serviceaccount/namespace").stdout
    assert mounted == real_node_namespace
    # The container really runs on this machine, in the node's cgroup root.
    cgroup = real_node_cluster.kubectl("exec", "whoami", "-n", real_node_namespace, "--", "cat", "/proc/self/cgroup").stdout
    assert f"/{real_node.run.cgroup}/kubepods/" in cgroup


def test_the_kubelet_refuses_anonymous_requests(real_node_cluster: LocalCluster, real_node: RealNode) -> None:
    url = f"https://{real_node.node_ip}:10250/pods"
    anonymous = ssl.create_default_context()
    anonymous.check_hostname, anonymous.verify_mode = False, ssl.CERT_NONE  # its serving cert is self-signed
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, context=anonymous, timeout=10)
    assert refused.value.code == 401
    admin = ssl.create_default_context()
    admin.check_hostname, admin.verify_mode = False, ssl.CERT_NONE
    admin.load_cert_chain(str(real_node_cluster.pki / "admin.crt"), str(real_node_cluster.pki / "admin.key"))
    with urllib.request.urlopen(url, context=admin, timeout=10) as response:
        assert json.load(response)["kind"] == "PodList"


def test_kube_proxy_chains_live_in_the_real_node_namespace_only(real_node: RealNode) -> None:
    inside = subprocess.run(real_node.wrap(["iptables-save", "-t", "nat"]), capture_output=True, text=True, check=True).stdout
    assert ":KUBE-SERVICES" in inside and "10.0.0.1/32" in inside
    host = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
    assert real_node.pod_cidr not in host and f"{real_node.netns.host_ip}:" not in host


# ------------------------------------------------------------------------- leaving nothing behind


def sandbox_ids(state: Path) -> list[str]:
    """The pod sandboxes containerd's CRI plugin made for the node of the cluster in `state`."""
    sandboxes = state / "node" / "containerd" / "root" / "io.containerd.grpc.v1.cri" / "sandboxes"
    return [p.name for p in sandboxes.iterdir()] if sandboxes.is_dir() else []


def leftovers(pid: int, state: Path, sandboxes: list[str]) -> dict[str, list[str]]:
    """What a node run of process `pid` with its cluster in `state` and pod `sandboxes` could leave,
    as found on the machine: processes, mounts, network namespace and link, cgroups, CNI cache
    entries (its network's and the loopback's of each sandbox), log links, containerd's sockets."""
    sockets = Path(tempfile.gettempdir()) / f"fknode-{pid}"  # containerd's, named in its shims' command lines
    processes = [line for line in subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout.splitlines()
                 if (str(state) in line or str(sockets) in line) and "tests.support.cluster" not in line]
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(state) in line.split()[4]]
    namespaces = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split() if n == f"fknode-{pid}"]
    links = [link for link in [f"fknodeh{pid}"] if subprocess.run(["ip", "link", "show", link], capture_output=True).returncode == 0]
    cgroups = [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/flowkeeper-node-{pid}")]
    cni = [str(p) for p in Path("/var/lib/cni/results").glob("*")
           if p.name.startswith(f"fknode-{pid}-") or any(i in p.name for i in sandboxes)]
    log_links = [str(p) for p in Path("/var/log/containers").glob("*") if p.is_symlink() and str(state) in os.readlink(p)]
    found = {"processes": processes, "mounts": mounts, "netns": namespaces, "links": links, "cgroups": cgroups,
             "cni": cni, "log_links": log_links,
             "sockets": [str(sockets)] if sockets.exists() else []}
    return {k: v for k, v in found.items() if v}


def start_cluster_up(state: Path, tmp_path: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    """`python -m tests.support.cluster up --real-node` (what `make cluster REAL_NODE=1` runs)."""
    ready = tmp_path / f"ready-{state.name}"
    env = {**os.environ, "FLOWKEEPER_CLUSTER_DIR": str(state), "PYTHONPATH": f"{REPO / 'operator'}:{REPO}"}
    log = open(tmp_path / f"up-{state.name}.log", "wb")  # noqa: SIM115 - the child writes it
    up = subprocess.Popen([sys.executable, "-m", "tests.support.cluster", "up", "--real-node", "--detach-ready-file", str(ready)],
                          cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while not ready.exists():
        if up.poll() is not None or time.monotonic() > deadline:
            up.kill()
            raise AssertionError((tmp_path / f"up-{state.name}.log").read_text()[-4000:])
        time.sleep(0.3)
    return up, {**env, "KUBECONFIG": ready.read_text()}


def run_pause_pod(env: dict[str, str], kubectl: str) -> None:
    """A pod on the real node (its sandbox and a container of the pause image): shims, containers,
    mounts, CNI state, log links for the clean-up to remove."""
    manifest = pod_manifest("sleeper", "default", pause_image().name, ["/pause"])
    # Until the ServiceAccount controller has made `default`'s ServiceAccount, admission refuses the pod.
    eventually(lambda: subprocess.run([kubectl, "apply", "-f", "-"], input=json.dumps(manifest), text=True, env=env,
                                      capture_output=True).returncode == 0, timeout=30, what="the pod created")
    subprocess.run([kubectl, "wait", "--for=condition=Ready", "pod/sleeper", "--timeout=90s"], env=env, check=True, capture_output=True)


def kubectl_binary() -> str:
    from tests.support.cluster import binaries

    return str(binaries() / "kubectl")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder for the clusters' state with a short path: the kubelet's Unix sockets live under it
    and a socket path has at most 107 bytes (pytest-xdist's tmp_path is too deep)."""
    folder = Path(tempfile.mkdtemp(prefix="fkrn-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_down_leaves_nothing_behind(tmp_path: Path, short_dir: Path, real_node: RealNode) -> None:
    # `real_node` only makes sure the binaries and the pause image exist before the clock starts.
    state = short_dir / "state"
    up, env = start_cluster_up(state, tmp_path)
    try:
        run_pause_pod(env, kubectl_binary())
        sandboxes = sandbox_ids(state)
        assert sandboxes
        made = leftovers(up.pid, state, sandboxes)
        assert {"processes", "mounts", "netns", "links", "cgroups", "cni", "log_links", "sockets"} <= made.keys(), made
    finally:
        down = subprocess.run([sys.executable, "-m", "tests.support.cluster", "down"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        up.wait(60)
    assert down.returncode == 0, down.stdout + down.stderr
    assert leftovers(up.pid, state, sandboxes) == {}
    assert not state.exists()


def test_a_start_clears_what_a_killed_run_left(tmp_path: Path, short_dir: Path, real_node: RealNode) -> None:
    killed_state, next_state = short_dir / "killed", short_dir / "next"
    up, env = start_cluster_up(killed_state, tmp_path)
    run_pause_pod(env, kubectl_binary())
    sandboxes = sandbox_ids(killed_state)
    os.kill(up.pid, signal.SIGKILL)
    up.wait(30)
    # The kubelet, containerd and the control plane die with it; the shims and containers do not,
    # nor the namespace, mounts and cgroups.
    left = eventually(lambda: (found := leftovers(up.pid, killed_state, sandboxes)) and "kubelet" not in str(found.get("processes")) and found,
                      timeout=30, what="the kubelet gone with its parent")
    assert {"processes", "mounts", "netns", "cgroups", "cni"} <= left.keys(), left
    assert any("containerd-shim" in p for p in left["processes"]), left["processes"]

    second, second_env = start_cluster_up(next_state, tmp_path)
    try:
        assert leftovers(up.pid, killed_state, sandboxes) == {}
        run_pause_pod(second_env, kubectl_binary())  # and the new node works
        second_sandboxes = sandbox_ids(next_state)
    finally:
        subprocess.run([sys.executable, "-m", "tests.support.cluster", "down"], cwd=REPO, env=second_env, capture_output=True, timeout=120)
        second.wait(60)
    assert leftovers(second.pid, next_state, second_sandboxes) == {}
