"""A real, local Kubernetes control plane: etcd, kube-apiserver (RBAC on), kube-controller-manager,
kube-scheduler and kwok with one fake node, all on 127.0.0.1 with free ports.

Deployments really get ReplicaSets and Pods that become Ready on the kwok node; only the kubelet is
simulated. Used by the pytest session fixture, by `make cluster` and by `make demo`:

    python -m tests.support.cluster up     # foreground; prints the export KUBECONFIG=... line
    python -m tests.support.cluster up --real-node   # also one real node (root; tests/support/real_node.py)
    python -m tests.support.cluster down   # stops the one `up` started
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.support.processes import Process, free_port, stop_all, wait_until

if TYPE_CHECKING:
    from tests.support.real_node import RealNode

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tests" / "cluster" / "build-binaries.sh"
VERSIONS = REPO / "tests" / "cluster" / "versions.env"
NEEDED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl")
NODE_NAME = "kwok-node-0"


def binaries() -> Path:
    """The folder with the control-plane binaries: KUBEBUILDER_ASSETS when it has them (the envtest
    convention), else the version-keyed cache that build-binaries.sh fills (building on first use)."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and all((Path(assets) / b).exists() for b in ("etcd", "kube-apiserver")):
        return Path(assets)
    return build_cache()


def build_cache(*targets: str) -> Path:
    """Runs build-binaries.sh (a no-op once built) and returns the cache folder it printed."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), *(targets or ("etcd", "kwok", "k8s"))], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def k8s_version() -> str:
    """K8S_VERSION of versions.env (the version the binaries and the kubernetes module are of)."""
    return re.search(r"^K8S_VERSION=(\S+)", VERSIONS.read_text(), re.M).group(1)  # type: ignore[union-attr]


def find_binary(name: str, preferred: Path) -> str:
    """A binary from `preferred`, or the build cache for the ones KUBEBUILDER_ASSETS lacks (kwok, ...)."""
    if (preferred / name).exists():
        return str(preferred / name)
    return str(build_cache() / name)


# ---------------------------------------------------------------------------------------- credentials


def _key_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())


def _cert(subject: x509.Name, key, issuer: x509.Name, issuer_key, *, ca: bool, sans: list | None = None, client: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if not ca:
        usage = x509.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def write_credentials(pki: Path) -> None:
    """A CA, the apiserver's serving cert, a service-account key pair and an admin client cert."""
    import ipaddress

    pki.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("flowkeeper-test-ca")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.DNSName("kubernetes.default.svc"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]
    server = _cert(_name("kube-apiserver"), server_key, ca_name, ca_key, ca=False, sans=sans)
    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin = _cert(_name("flowkeeper-admin", "system:masters"), admin_key, ca_name, ca_key, ca=False, client=True)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    pem = serialization.Encoding.PEM
    (pki / "ca.crt").write_bytes(ca.public_bytes(pem))
    (pki / "ca.key").write_bytes(_key_pem(ca_key))
    (pki / "apiserver.crt").write_bytes(server.public_bytes(pem))
    (pki / "apiserver.key").write_bytes(_key_pem(server_key))
    (pki / "admin.crt").write_bytes(admin.public_bytes(pem))
    (pki / "admin.key").write_bytes(_key_pem(admin_key))
    (pki / "sa.key").write_bytes(_key_pem(sa_key))
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def issue_client_cert(pki: Path, stem: Path, cn: str, org: str | None = None) -> tuple[Path, Path]:
    """A client certificate of the cluster CA (pki/ca.crt, pki/ca.key) for user `cn` in group `org`,
    written to <stem>.crt and <stem>.key."""
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(_name(cn, org), key, ca.subject, ca_key, ca=False, client=True)
    crt_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_key_pem(key))
    key_path.chmod(0o600)
    return crt_path, key_path


def real_node_flags(pki: Path) -> list[str]:
    """kube-apiserver flags of a cluster with a real node: a client certificate for the kubelet
    (logs, exec, metrics through the API server) and the node's InternalIP before its hostname
    (which nothing here resolves)."""
    cert, key = issue_client_cert(pki, pki / "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
    return [
        f"--kubelet-client-certificate={cert}", f"--kubelet-client-key={key}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
    ]


FRONT_PROXY_CLIENT = "front-proxy-client"


def write_front_proxy_credentials(pki: Path) -> None:
    """The aggregation layer's own CA and the client cert kube-apiserver presents to an extension
    API server when it proxies a request (the request-header identity, as kubeadm's front-proxy)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("flowkeeper-front-proxy-ca")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert(_name(FRONT_PROXY_CLIENT), client_key, ca_name, ca_key, ca=False, client=True)
    pem = serialization.Encoding.PEM
    (pki / "front-proxy-ca.crt").write_bytes(ca.public_bytes(pem))
    (pki / "front-proxy-client.crt").write_bytes(client.public_bytes(pem))
    (pki / "front-proxy-client.key").write_bytes(_key_pem(client_key))


def aggregation_flags(pki: Path) -> list[str]:
    """kube-apiserver flags of the aggregation layer; endpoints (not cluster IPs) are dialled, as
    there is no kube-proxy here."""
    return [
        f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
        "--enable-aggregator-routing=true",
    ]


def kubeconfig(server: str, pki: Path, *, user: str = "admin", token: str | None = None) -> dict:
    credentials = {"token": token} if token else {
        "client-certificate": str(pki / "admin.crt"),
        "client-key": str(pki / "admin.key"),
    }
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "flowkeeper-local", "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "flowkeeper-local", "context": {"cluster": "flowkeeper-local", "user": user}}],
        "current-context": "flowkeeper-local",
    }


# ----------------------------------------------------------------------------- the API server's metrics

WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def request_counts(metrics_text: str) -> dict[tuple[str, str, str, str], int]:
    """apiserver_request_total of a /metrics text, summed per (verb, group, resource, subresource)."""
    counts: dict[tuple[str, str, str, str], int] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, value = line.rsplit(" ", 1)
        labels = dict(_LABEL.findall(labels_text))
        key = (labels.get("verb", ""), labels.get("group", ""), labels.get("resource", ""), labels.get("subresource", ""))
        counts[key] = counts.get(key, 0) + int(float(value))
    return counts


# ---------------------------------------------------------------------------------------- the cluster


class LocalCluster:
    """The control plane in one folder; `start()` blocks until a Pod could become Ready.

    aggregation=True (off by default) also turns on the API aggregation layer (a front-proxy CA and
    client cert, the request-header flags, aggregator routing to endpoints), so an APIService can
    route a group such as external.metrics.k8s.io to an extension API server.

    real_node=True (off by default: it needs root and costs a few seconds) also starts one real node
    (tests/support/real_node.py, `self.real_node`) and turns on ServiceAccount admission, which the
    kwok-only cluster leaves off: there every pod would get a token volume and wait for its
    namespace's default ServiceAccount, work the kwok pods have no use for."""

    def __init__(
        self, workdir: Path | None = None, bin_dir: Path | None = None, *, aggregation: bool = False, real_node: bool = False
    ) -> None:
        self.aggregation = aggregation
        self.with_real_node = real_node
        self.real_node: RealNode | None = None
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="flowkeeper-cluster-"))
        self.bin_dir = bin_dir or binaries()
        self.pki = self.workdir / "pki"
        self.logs = self.workdir / "logs"
        self.kubeconfig_path = self.workdir / "kubeconfig"
        self.processes: list[Process] = []
        self.api_port = free_port()
        self.server = f"https://127.0.0.1:{self.api_port}"

    # -- helpers
    def _bin(self, name: str) -> str:
        return find_binary(name, self.bin_dir)

    def _run(self, name: str, argv: list[str]) -> Process:
        process = Process(name, argv, self.logs).start()
        self.processes.append(process)
        return process

    @property
    def env(self) -> dict[str, str]:
        """Environment for a child (kubectl, the operator) that should talk to this cluster."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig_path)}

    def service_account_token(self, namespace: str, name: str, duration: str = "1h") -> str:
        """A token of ServiceAccount namespace/name from the TokenRequest API, as the kubelet mounts one."""
        return self.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}").stdout.strip()

    def env_for_service_account(self, namespace: str, name: str, duration: str = "1h") -> dict[str, str]:
        """Environment whose kubeconfig carries a token of ServiceAccount namespace/name, issued by
        the TokenRequest API like the kubelet mounts one into a Pod: requests run with its RBAC.
        A process that outlives `duration` (a session-wide one) asks for a longer one."""
        token = self.service_account_token(namespace, name, duration)
        path = self.workdir / f"kubeconfig-{namespace}-{name}"
        path.write_text(yaml.safe_dump(kubeconfig(self.server, self.pki, user=f"{namespace}-{name}", token=token)))
        return {**os.environ, "KUBECONFIG": str(path)}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self._bin("kubectl"), *args], input=input, text=True, capture_output=True, env=env or self.env, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def _get(self, path: str, *, cert: bool = True) -> bytes:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        if cert:
            context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        with urllib.request.urlopen(self.server + path, context=context, timeout=5) as response:
            return response.read()

    def request_counts(self) -> dict[tuple[str, str, str, str], int]:
        """The API server's own apiserver_request_total, summed per (verb, group, resource,
        subresource) over its other labels (code, scope, component, ...)."""
        return request_counts(self._get("/metrics").decode())

    def write_requests(self, resource: str, subresource: str | None = None) -> int:
        """Write requests (create, update, patch, delete) the API server has served for `resource`
        (only `subresource` when given), from its own apiserver_request_total metric."""
        return sum(
            count for (verb, _, res, sub), count in self.request_counts().items()
            if res == resource and (subresource is None or sub == subresource) and verb in WRITE_VERBS
        )

    # -- lifecycle
    def start(self) -> LocalCluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        write_credentials(self.pki)
        pki = self.pki
        if self.aggregation:
            write_front_proxy_credentials(pki)

        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd = self._run("etcd", [
            self._bin("etcd"), "--name=default", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync=true", "--log-level=warn", "--listen-metrics-urls=",
        ])
        wait_until(lambda: b"true" in urllib.request.urlopen(etcd_url + "/health", timeout=2).read(), 60, "etcd", etcd)

        apiserver = self._run("kube-apiserver", [
            self._bin("kube-apiserver"), f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1",
            f"--secure-port={self.api_port}", f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true",
            *([] if self.with_real_node else ["--disable-admission-plugins=ServiceAccount"]),
            "--endpoint-reconciler-type=none",
            f"--token-auth-file={self._token_file()}",
            "--advertise-address=127.0.0.1",
            *(aggregation_flags(pki) if self.aggregation else []),
            *(real_node_flags(pki) if self.with_real_node else []),
        ])
        wait_until(lambda: self._get("/readyz") == b"ok", 120, "kube-apiserver", apiserver)

        self.kubeconfig_path.write_text(yaml.safe_dump(kubeconfig(self.server, pki)))
        kc = str(self.kubeconfig_path)
        self._run("kube-controller-manager", [
            self._bin("kube-controller-manager"), f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}", "--leader-elect=false", "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}", f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}", "--use-service-account-credentials=false",
            # kwok is the kubelet here; under load its node heartbeats come late, and the node
            # lifecycle controller would then mark every pod NotReady for good. Node health is not
            # what these tests are about: give the node an hour of grace.
            "--node-monitor-grace-period=1h",
            "--concurrent-deployment-syncs=10", "--concurrent-replicaset-syncs=10",
            "--kube-api-qps=200", "--kube-api-burst=400",
        ])
        self._run("kube-scheduler", [
            self._bin("kube-scheduler"), f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}", "--leader-elect=false", "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}", "--kube-api-qps=200", "--kube-api-burst=400",
        ])
        stages = Path(self._bin("kwok")).parent / "kwok-stages.yaml"
        self._run("kwok", [
            self._bin("kwok"), f"--kubeconfig={kc}", f"--config={stages}",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--server-address=127.0.0.1:{free_port()}",
        ])
        self._create_node()
        wait_until(self._node_ready, 120, "the kwok node")
        if self.with_real_node:
            from tests.support.real_node import RealNode

            self.real_node = RealNode(self)
            self.real_node.start()

    def _token_file(self) -> Path:
        """Static tokens for identities the tests use besides the admin (e.g. a non-admin for RBAC)."""
        path = self.pki / "tokens.csv"
        self.tokens = {"developer": "developer-token-" + os.urandom(8).hex()}
        path.write_text("".join(f"{token},{user},{user}\n" for user, token in self.tokens.items()))
        return path

    def _create_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"},
            },
            "status": {
                "capacity": {"cpu": "1000", "memory": "4Ti", "pods": "20000"},
                "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": "20000"},
            },
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(node))

    def _node_ready(self) -> bool:
        node = json.loads(self.kubectl("get", "node", NODE_NAME, "-o", "json").stdout)
        return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))

    @property
    def all_processes(self) -> list[Process]:
        """The control plane's programs and the real node's."""
        return [*self.processes, *(self.real_node.processes if self.real_node else [])]

    def stop(self) -> None:
        if self.real_node is not None:
            self.real_node.stop()
            self.real_node = None
        stop_all(list(reversed(self.processes)))
        self.processes.clear()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------ `make cluster` / down


def _state_dir() -> Path:
    return Path(os.environ.get("FLOWKEEPER_CLUSTER_DIR", Path(tempfile.gettempdir()) / "flowkeeper-cluster"))


def _up(args: argparse.Namespace) -> int:
    state = _state_dir()
    pid_file = state / "supervisor.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), 0)
            print(f"already running; export KUBECONFIG={state / 'kubeconfig'}")
            return 0
        except (ProcessLookupError, ValueError):
            pass
    from tests.support.node_cleanup import clear_stale

    if os.geteuid() == 0:  # only root makes real nodes
        clear_stale()  # a killed `up --real-node` may have left mounts in the folder removed next
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    cluster = LocalCluster(workdir=state, real_node=args.real_node)
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            cluster.stop()
            shutil.rmtree(state, ignore_errors=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    atexit.register(cluster.stop)
    cluster.start()
    pid_file.write_text(str(os.getpid()))
    print(f"export KUBECONFIG={cluster.kubeconfig_path}", flush=True)
    if args.detach_ready_file:
        Path(args.detach_ready_file).write_text(str(cluster.kubeconfig_path))
    while True:  # supervise: a control-plane process that dies is reported, not silently ignored
        for process in cluster.all_processes:
            if not process.running:
                print(f"{process.name} died:\n{process.log_tail()}", file=sys.stderr, flush=True)
                _stop()
        time.sleep(2)


def _down(_: argparse.Namespace) -> int:
    pid_file = _state_dir() / "supervisor.pid"
    if not pid_file.exists():
        print("no local cluster running")
        return 0
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        shutil.rmtree(_state_dir(), ignore_errors=True)
        return 0
    # The supervisor removes its folder as its last step (its pid may linger as a zombie).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not pid_file.exists():
            print("local cluster stopped")
            return 0
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local control plane and supervise it (foreground)")
    up.add_argument("--detach-ready-file", help="write the kubeconfig path here once ready")
    up.add_argument("--real-node", action="store_true", help="also start one real node (kubelet, containerd; needs root)")
    up.set_defaults(run=_up)
    sub.add_parser("down", help="stop the control plane `up` started").set_defaults(run=_down)
    sub.add_parser("build", help="build or locate the binaries, print their folder").set_defaults(
        run=lambda _: print(binaries()) or 0
    )
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
