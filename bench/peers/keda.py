"""KEDA v2.21.0 run as processes beside a LocalCluster(aggregation=True), as a user would run it:

- its CRDs, its ServiceAccount and its own RBAC (ClusterRole keda-operator, the Role in its namespace,
  system:auth-delegator and the extension-apiserver-authentication reader) are KEDA's own manifests,
  read from the Go module cache (config/crd/bases, config/rbac, config/metrics-server,
  config/service_account); both processes run with a token of that ServiceAccount (TokenRequest),
  not as cluster admin;
- the operator (`keda`) runs on the host: it reaches the API server and Prometheus on 127.0.0.1 and
  serves its gRPC metrics service on the host end of the veth;
- the metrics adapter (`keda-adapter`) runs inside the bench's network namespace, listening on the
  inner address; a selector-less Service and an EndpointSlice with that address back the APIService
  v1beta1.external.metrics.k8s.io, so kube-controller-manager's HPA controller reads KEDA's external
  metrics through the aggregation layer, as in a cluster. The adapter reaches the API server through
  a TCP relay on the host end of the veth;
- the operator <-> adapter gRPC link is mutual TLS with a CA the bench makes (KEDA's cert rotation
  would do the same in a cluster; here the certificates are given, and the APIService's caBundle set).

    with KedaPeer(cluster) as keda:      # cluster = LocalCluster(aggregation=True), started
        keda.wait_ready()
        keda.operator.popen.pid, keda.adapter.popen.pid
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.cluster import BUILD_SCRIPT, REPO, LocalCluster
from tests.support.netns import NetNamespace, TcpRelay
from tests.support.processes import Process, free_port, stop_all, wait_until

NAMESPACE = "keda"
SERVICE_ACCOUNT = "keda-operator"
METRICS_SERVICE = "keda-metrics-apiserver"
APISERVICE = "v1beta1.external.metrics.k8s.io"
ADAPTER_PORT = 6443
NETNS_PREFIX = "fkpeer"  # names of the namespace and links the bench makes: fkpeer-<pid>, fkpeerh<pid>
VERSIONS = REPO / "tests" / "cluster" / "versions.env"


def keda_version() -> str:
    for line in VERSIONS.read_text().splitlines():
        if line.startswith("KEDA_VERSION="):
            return line.split("=", 1)[1].strip()
    raise RuntimeError(f"KEDA_VERSION missing from {VERSIONS}")


def keda_binaries() -> Path:
    """The folder with `keda` and `keda-adapter` (build-binaries.sh keda: built once, then cached)."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "keda"], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def keda_module() -> Path:
    """KEDA's module in the Go module cache (downloaded by the build), for its CRDs and RBAC."""
    mod = f"github.com/kedacore/keda/v2@{keda_version()}"
    out = subprocess.run(["go", "mod", "download", "-json", mod], check=True, stdout=subprocess.PIPE, text=True,
                         cwd=tempfile.gettempdir())  # outside any module: no go.sum to update
    return Path(json.loads(out.stdout)["Dir"])


def scaled_object(namespace: str, name: str, prometheus_url: str, query: str, *, per_replica: int, min_replicas: int,
                  max_replicas: int, poll: int) -> dict:
    """A ScaledObject for Deployment `name`: KEDA's Prometheus scaler on `query`, `per_replica` per
    replica (an AverageValue target on the HPA, as a Flowkeeper flow's queueDepthPerReplica)."""
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": name, "namespace": namespace},
        "spec": {"scaleTargetRef": {"name": name}, "pollingInterval": poll,
                 "minReplicaCount": min_replicas, "maxReplicaCount": max_replicas,
                 # activationThreshold is left at its default, 0: an idle depth of 50 is active, so with
                 # minReplicaCount 0 the Deployment holds its one replica as with Flowkeeper.
                 "triggers": [{"type": "prometheus", "metadata": {
                     "serverAddress": prometheus_url, "query": query, "threshold": str(per_replica)}}]},
    }


# ------------------------------------------------------------------------------------ certificates


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())


def _sign(cn: str, key, issuer: x509.Name, issuer_key, *, ca: bool, dns: list[str] = (), ips: list[str] = ()) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "KEDAORG")])
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer if not ca else subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_keda_certs(root: Path, operator_ip: str, adapter_ip: str) -> bytes:
    """ca.crt, tls.crt, tls.key in root/operator and root/adapter (the layout KEDA's --cert-dir reads);
    returns the CA (PEM) for the APIService's caBundle."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _sign("KEDA", ca_key, None, ca_key, ca=True)
    pem = serialization.Encoding.PEM
    svc = lambda name: [name, f"{name}.{NAMESPACE}", f"{name}.{NAMESPACE}.svc", f"{name}.{NAMESPACE}.svc.cluster.local"]  # noqa: E731
    for folder, name, ip in (("operator", "keda-operator", operator_ip), ("adapter", METRICS_SERVICE, adapter_ip)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _sign(name, key, ca.subject, ca_key, ca=False, dns=svc(name), ips=[ip])
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        (d / "ca.crt").write_bytes(ca.public_bytes(pem))
        (d / "tls.crt").write_bytes(cert.public_bytes(pem))
        (d / "tls.key").write_bytes(_pem_key(key))
        os.chmod(d / "tls.key", 0o600)
    return ca.public_bytes(pem)


# ------------------------------------------------------------------------------------------- peer


class KedaPeer:
    """KEDA's operator and metrics adapter for one LocalCluster(aggregation=True). close() (also on
    a failed start) stops both, the relay, and removes the network namespace and its veth pair."""

    def __init__(self, cluster: LocalCluster, *, kube_api_qps: float | None = None, kube_api_burst: int | None = None,
                 log_level: str = "info") -> None:
        if not getattr(cluster, "aggregation", False):
            raise ValueError("KEDA's metrics adapter needs the aggregation layer: LocalCluster(aggregation=True)")
        self.cluster = cluster
        self.kube_api_qps, self.kube_api_burst = kube_api_qps, kube_api_burst
        self.log_level = log_level
        self.workdir = cluster.workdir / "keda"
        self.logs = cluster.logs
        self.netns = NetNamespace(NETNS_PREFIX)
        self.relay: TcpRelay | None = None
        self.operator: Process | None = None
        self.adapter: Process | None = None
        self.operator_metrics_port = free_port()
        self.adapter_metrics_port = 8080  # inside the namespace: its own port space

    # -- set-up
    def start(self) -> KedaPeer:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        bin_dir = keda_binaries()
        module = keda_module()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.netns.start()
        ns = self.netns
        self.relay = TcpRelay(ns.host_ip, ("127.0.0.1", self.cluster.api_port)).start()
        ca_pem = write_keda_certs(self.workdir / "certs", ns.host_ip, ns.inner_ip)
        (self.workdir / "custom-ca").mkdir(exist_ok=True)  # --ca-dir: no extra CAs for scalers

        self._install(module, ca_pem)
        token = self.cluster.kubectl("create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE, "--duration=24h").stdout.strip()
        operator_kc = self._kubeconfig("operator", self.cluster.server, token)
        adapter_kc = self._kubeconfig("adapter", f"https://{ns.host_ip}:{self.relay.port}", token, tls_server_name="localhost")
        env = {"POD_NAMESPACE": NAMESPACE, "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE, "WATCH_NAMESPACE": ""}
        limits = [*([f"--kube-api-qps={self.kube_api_qps}"] if self.kube_api_qps is not None else []),
                  *([f"--kube-api-burst={self.kube_api_burst}"] if self.kube_api_burst is not None else [])]
        self.grpc_port = free_port()
        self.started_at = time.monotonic()
        self.operator = Process("keda-operator", [
            str(bin_dir / "keda"), "--leader-elect", f"--zap-log-level={self.log_level}", "--zap-encoder=json",
            "--zap-time-encoding=rfc3339", "--enable-cert-rotation=false",
            f"--cert-dir={self.workdir / 'certs' / 'operator'}", f"--ca-dir={self.workdir / 'custom-ca'}",
            f"--metrics-bind-address=127.0.0.1:{self.operator_metrics_port}",
            f"--health-probe-bind-address=127.0.0.1:{free_port()}",
            f"--metrics-service-bind-address={ns.host_ip}:{self.grpc_port}",
            *limits,
        ], self.logs, env={**env, "KUBECONFIG": str(operator_kc)}).start()
        certs = self.workdir / "certs" / "adapter"
        self.adapter = Process("keda-adapter", ns.wrap([
            str(bin_dir / "keda-adapter"), f"--secure-port={ADAPTER_PORT}", f"--bind-address={ns.inner_ip}",
            f"--zap-log-level={self.log_level}", "--zap-encoder=json",
            f"--client-ca-file={certs / 'ca.crt'}", f"--tls-cert-file={certs / 'tls.crt'}",
            f"--tls-private-key-file={certs / 'tls.key'}", f"--cert-dir={certs}",
            f"--lister-kubeconfig={adapter_kc}", f"--authentication-kubeconfig={adapter_kc}",
            f"--authorization-kubeconfig={adapter_kc}",
            f"--metrics-service-address={ns.host_ip}:{self.grpc_port}",
            f"--port={self.adapter_metrics_port}",
            *limits,
        ]), self.logs, env={**env, "KUBECONFIG": str(adapter_kc)}).start()

    def _kubeconfig(self, who: str, server: str, token: str, tls_server_name: str | None = None) -> Path:
        cluster_entry = {"server": server, "certificate-authority": str(self.cluster.pki / "ca.crt")}
        if tls_server_name:
            cluster_entry["tls-server-name"] = tls_server_name
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": cluster_entry}],
            "users": [{"name": f"{NAMESPACE}-{SERVICE_ACCOUNT}", "user": {"token": token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": f"{NAMESPACE}-{SERVICE_ACCOUNT}"}}],
            "current-context": "local",
        }
        path = self.workdir / f"kubeconfig-{who}"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def _install(self, module: Path, ca_pem: bytes) -> None:
        """KEDA's CRDs and RBAC as it ships them, then the Service, EndpointSlice and APIService that
        point the aggregation layer at the adapter's address in the namespace."""
        kubectl = self.cluster.kubectl
        # Idempotent: a bench starts KEDA several times in one cluster (different flags).
        kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
        # A KEDA stopped earlier in this cluster may hold the leader lease until it expires.
        kubectl("delete", "lease", "--all", "-n", NAMESPACE, "--ignore-not-found")
        # scaledjobs' CRD is too large for the last-applied annotation: server-side apply.
        kubectl("apply", "--server-side", "-f", str(module / "config" / "crd" / "bases"), timeout=120)
        for f in ("service_account/service_account.yaml", "rbac/role.yaml", "rbac/role_binding.yaml",
                  "metrics-server/role.yaml", "metrics-server/role_binding.yaml"):
            kubectl("apply", "--server-side", "-f", str(module / "config" / f))
        ns = self.netns
        objects = [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE},
             "spec": {"ports": [{"name": "https", "port": 443, "targetPort": ADAPTER_PORT, "protocol": "TCP"}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": f"{METRICS_SERVICE}-netns", "namespace": NAMESPACE,
                          "labels": {"kubernetes.io/service-name": METRICS_SERVICE,
                                     "endpointslice.kubernetes.io/managed-by": "flowkeeper-bench"}},
             "addressType": "IPv4",
             "endpoints": [{"addresses": [ns.inner_ip], "conditions": {"ready": True}}],
             "ports": [{"name": "https", "port": ADAPTER_PORT, "protocol": "TCP"}]},
            {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": APISERVICE},
             "spec": {"service": {"name": METRICS_SERVICE, "namespace": NAMESPACE, "port": 443},
                      "group": "external.metrics.k8s.io", "version": "v1beta1",
                      "groupPriorityMinimum": 100, "versionPriority": 100,
                      "caBundle": base64.b64encode(ca_pem).decode()}},
        ]
        kubectl("apply", "--server-side", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
        kubectl("wait", "--for=condition=Established", "crd/scaledobjects.keda.sh", "--timeout=60s")

    # -- readiness
    def _apiservice_available(self) -> bool:
        svc = json.loads(self.cluster.kubectl("get", "apiservice", APISERVICE, "-o", "json").stdout)
        return any(c["type"] == "Available" and c["status"] == "True" for c in svc.get("status", {}).get("conditions", []))

    def wait_ready(self, timeout: float = 180) -> float:
        """Until the APIService is Available and external.metrics.k8s.io answers; returns the seconds
        since both processes were started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in (self.operator, self.adapter):
                if p is not None and not p.running:
                    raise RuntimeError(f"{p.name} exited:\n{p.log_tail(40)}")
            try:
                if self._apiservice_available() and self.cluster.kubectl(
                        "get", "--raw", "/apis/external.metrics.k8s.io/v1beta1", check=False).returncode == 0:
                    return time.monotonic() - self.started_at
            except Exception:  # noqa: BLE001 - not there yet
                pass
            time.sleep(0.5)
        svc = self.cluster.kubectl("get", "apiservice", APISERVICE, "-o", "yaml", check=False).stdout
        raise TimeoutError(f"{APISERVICE} not available within {timeout:.0f}s:\n{svc}\n--- adapter:\n"
                           f"{self.adapter.log_tail(40) if self.adapter else ''}")

    def operator_metric(self, name: str) -> float:
        """Sum of a metric on the operator's Prometheus endpoint (127.0.0.1)."""
        import urllib.request
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.operator_metrics_port}/metrics", timeout=5).read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def sockets(self) -> dict[str, list[str]]:
        """TCP sockets of KEDA's processes (`ss`, host and namespace): 'listen ADDR' and 'LOCAL -> PEER',
        to show that only 127.0.0.1 and the namespace's two addresses are used."""
        out: dict[str, list[str]] = {}
        for process, wrap in ((self.operator, lambda a: a), (self.adapter, self.netns.wrap)):
            if process is None or not process.running:
                continue
            pid = process.popen.pid
            text = subprocess.run(wrap(["ss", "-tanpH"]), capture_output=True, text=True).stdout
            rows = set()
            for line in text.splitlines():
                if f"pid={pid}," not in line:
                    continue
                state, _, _, local, peer = line.split()[:5]
                rows.add(f"listen {local}" if state == "LISTEN" else f"{local} -> {peer}")
            out[process.name] = sorted(rows)
        return out

    # -- tear-down
    def uninstall_apiservice(self) -> None:
        """Deletes the APIService: left behind with no adapter it would be unavailable, and the
        namespace controller stops deleting namespaces while an aggregated group fails discovery."""
        self.cluster.kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found", check=False)

    def close(self) -> None:
        stop_all([p for p in (self.adapter, self.operator) if p is not None])
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        self.netns.close()

    def __enter__(self) -> KedaPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["KedaPeer", "keda_binaries", "keda_module", "keda_version", "wait_until"]
