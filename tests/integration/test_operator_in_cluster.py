"""The operator as users run it: `helm install` of charts/flowkeeper with the image built here, its two
replicas as Pods on the real node (kubelet, containerd), with the chart's ServiceAccount and
least-privilege RBAC, in-cluster configuration, security context and probes; a real Prometheus on the
host that it reads signals from (through a relay on the node's veth pair) and that scrapes its
/metrics from the pods' addresses. Then leadership when the leader's container is killed and when its
pod is force-deleted, an upgrade to a changed image, and `helm uninstall`.

The tests of this module run in order on one release (each leaves it as the next expects)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.support.cluster import LocalCluster
from tests.support.cluster_fixtures import eventually
from tests.support.exporter import MetricsExporter
from tests.support.flows import Flow, flow_manifest, set_depth
from tests.support.images import REVISION_LABEL, operator_image
from tests.support.operator_release import (
    POD_READY_TIMEOUT,
    LeaseTimeline,
    OperatorRelease,
    add_scrape_jobs,
    container_status,
    is_ready,
    PodDiscovery,
    concurrent_leaders,
    query_range,
    writes_by_step,
    relay_to_pods,
)
from tests.support.prometheus import LocalPrometheus
from tests.support.real_node import NODE_NAME, RealNode

pytestmark = [pytest.mark.cluster, pytest.mark.real_node, pytest.mark.images, pytest.mark.prometheus]

RELEASE = "flowkeeper"
JOB = "flowkeeper-operator"
PER_REPLICA = 100  # messages per replica of the flows' default scaling (ceil(depth / 100))
LEASE_DURATION = 15  # the chart's default leaderElection.leaseDuration


@dataclass
class Setup:
    cluster: LocalCluster
    node: RealNode
    release: OperatorRelease
    prometheus: LocalPrometheus
    exporter: MetricsExporter
    flows_namespace: str
    queue: str
    flow: Flow
    prometheus_url: str  # as the pods reach it: the relay on the node's veth pair

    def kubectl(self, *args: str, **kwargs):
        return self.cluster.kubectl(*args, **kwargs)

    def scale_to(self, replicas: int) -> None:
        """Sets the queue's depth so that the flow wants `replicas`."""
        set_depth(self.exporter, self.queue, replicas * PER_REPLICA - PER_REPLICA // 2)


@pytest.fixture(scope="module")
def setup(real_node_cluster: LocalCluster, real_node: RealNode, exporter: MetricsExporter,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    suffix = uuid.uuid4().hex[:6]
    operator_namespace, flows_namespace, queue = f"fk-system-{suffix}", f"fk-flows-{suffix}", f"q{suffix}"
    real_node_cluster.kubectl("create", "namespace", flows_namespace)
    prometheus = LocalPrometheus(targets=[exporter.target])
    with prometheus.start(), PodDiscovery(real_node_cluster, operator_namespace) as discovery:
        add_scrape_jobs(prometheus, [discovery.scrape_job(JOB)])
        relay = relay_to_pods(real_node, prometheus.port)
        release = OperatorRelease(real_node_cluster, real_node, RELEASE, operator_namespace, tmp_path_factory.mktemp("helm"))
        try:
            with release:
                yield Setup(real_node_cluster, real_node, release, prometheus, exporter, flows_namespace, queue,
                            Flow(real_node_cluster, flows_namespace, "orders"), relay.url)
        finally:
            relay.close()
            for namespace in (flows_namespace, operator_namespace):
                real_node_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def service_account_can(setup: Setup, verb: str, resource: str, namespace: str | None, subresource: str = "") -> bool:
    account = f"system:serviceaccount:{setup.release.namespace}:{setup.release.fullname}"
    where = ["-n", namespace] if namespace else ["--all-namespaces"]
    extra = [f"--subresource={subresource}"] if subresource else []
    answer = setup.kubectl("auth", "can-i", verb, resource, *extra, *where, f"--as={account}", check=False).stdout.strip()
    return answer == "yes"


def test_helm_install_runs_the_operator_on_the_real_node_as_the_chart_says(setup: Setup) -> None:
    image = operator_image()
    # Everything but the image, its placement and the flows' namespace are the chart's defaults.
    notes = setup.release.install(image, {
        "prometheus": {"url": setup.prometheus_url}, "watchNamespaces": [setup.flows_namespace],
    })
    assert "lease" in notes.lower()
    pods = setup.release.wait_ready(2)
    for pod in pods:
        assert pod["spec"]["nodeName"] == NODE_NAME
        assert pod["spec"]["serviceAccountName"] == setup.release.fullname
        status = container_status(pod)
        assert status["image"] == image.name and status["restartCount"] == 0
        # the kubelet runs it as the chart's security context says: user 65532, read-only root
        name = pod["metadata"]["name"]
        exec_ = ["exec", name, "-n", setup.release.namespace, "-c", "operator", "--"]
        assert setup.kubectl(*exec_, "id", "-u").stdout.strip() == "65532"
        refused = setup.kubectl(*exec_, "touch", "/opt/venv/x", check=False)
        assert refused.returncode != 0 and "Read-only file system" in refused.stderr
        # in-cluster configuration: the `kubernetes` Service and the token the kubelet mounted, no kubeconfig
        env = setup.kubectl(*exec_, "env").stdout
        assert "KUBERNETES_SERVICE_HOST=10.0.0.1" in env and "KUBECONFIG" not in env
        token = setup.kubectl(*exec_, "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token").stdout
        assert token.count(".") == 2  # a JWT
    # Least privilege, as the API server sees the ServiceAccount: flows and scaling in the watched
    # namespace, nothing in another, no Secrets listed anywhere.
    assert service_account_can(setup, "patch", "deployments.apps", setup.flows_namespace, "scale")
    assert not service_account_can(setup, "patch", "deployments.apps", setup.flows_namespace)  # only their scale
    assert service_account_can(setup, "patch", "integrationflows.flowkeeper.io", setup.flows_namespace, "status")
    assert not service_account_can(setup, "patch", "deployments.apps", "default", "scale")
    assert not service_account_can(setup, "list", "secrets", setup.flows_namespace)
    assert not service_account_can(setup, "get", "integrationflows.flowkeeper.io", None)



def test_it_serves_a_flow_from_a_real_signal_and_prometheus_scrapes_it_from_the_pods(setup: Setup) -> None:
    setup.kubectl("create", "deployment", "orders", "-n", setup.flows_namespace, "--image=example/consumer:1", "--replicas=1")
    setup.scale_to(3)
    setup.prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{setup.queue}"}}')
    setup.kubectl("apply", "-n", setup.flows_namespace, "-f", "-", input=flow_manifest("orders", setup.queue, {"maxReplicas": 10}))
    eventually(lambda: setup.flow.condition("MetricsAvailable").get("status") == "True", timeout=90, interval=1,
               what="the operator in the pod read the flow's signals and wrote its status")
    setup.flow.wait_replicas(3, timeout=60)

    # Prometheus found both pods through the API server and scrapes them at their pod addresses.
    pods = {p["metadata"]["name"]: p["status"]["podIP"] for p in setup.release.pods()}
    up = setup.prometheus.wait_for(f'up{{job="{JOB}"}} == 1', lambda r: len(r) == 2, timeout=60)
    assert {(s["metric"]["pod"], s["metric"]["instance"]) for s in up} == {(name, f"{ip}:8080") for name, ip in pods.items()}
    leader = setup.release.lease_holder()
    gauges = setup.prometheus.wait_for(f'flowkeeper_leader{{job="{JOB}"}}', lambda r: len(r) == 2, timeout=30)
    assert {s["metric"]["pod"]: s["value"][1] for s in gauges} == {name: "1" if name == leader else "0" for name in pods}
    scaled = setup.prometheus.wait_for(f'flowkeeper_kubernetes_writes_total{{job="{JOB}",kind="scale"}}', timeout=30)
    assert {s["metric"]["pod"] for s in scaled if float(s["value"][1]) > 0} == {leader}
    # The kubelet has been probing all along: both Ready, liveness never failed (no restart).
    assert all(is_ready(p) and container_status(p)["restartCount"] == 0 for p in setup.release.pods())


@dataclass
class Takeover:
    how: str
    old_leader: str
    new_leader: str
    lease_taken: float | None  # seconds from the disruption to another holder in the Lease (None: the same name)
    first_write: float  # seconds from the disruption to the scale the new signal asks for

    def __str__(self) -> str:
        lease = f"lease to {self.new_leader} after {self.lease_taken:.1f}s, " if self.lease_taken is not None else \
            f"lease kept by {self.new_leader} (its restarted container), "
        return f"{self.how}: {lease}first write after {self.first_write:.1f}s"


def disrupt(setup: Setup, timeline: LeaseTimeline, how: str, act: Callable[[str, dict], None], replicas: int) -> Takeover:
    """Disrupts the leader with `act(pod name, pod)`, then asks for `replicas` at once: the first write
    that follows can only come from whoever leads next."""
    old = setup.release.lease_holder()
    pod = setup.release.pod(old)
    began = time.time()
    act(old, pod)
    setup.scale_to(replicas)
    setup.flow.wait_replicas(replicas, timeout=4 * LEASE_DURATION + 60)
    written = time.time()
    changed = timeline.first(lambda holder, _: holder not in (old, None), after=began)
    new = changed[1] if changed else setup.release.lease_holder()
    return Takeover(how, old, new, changed[0] - began if changed else None, written - began)


def kill_container(setup: Setup) -> Callable[[str, dict], None]:
    def act(_: str, pod: dict) -> None:
        container = container_status(pod)["containerID"].removeprefix("containerd://")
        setup.node.ctr("tasks", "kill", "--signal", "SIGKILL", container)
    return act


def force_delete(setup: Setup) -> Callable[[str, dict], None]:
    def act(name: str, _: dict) -> None:
        setup.kubectl("delete", "pod", name, "-n", setup.release.namespace, "--grace-period=0", "--force")
    return act


def assert_one_leader_and_writer(setup: Setup, since: float, writers_at_least: int) -> None:
    """Prometheus' scrapes of the operator pods since `since`: at no step two replicas leading (for
    longer than a stale series lasts, see concurrent_leaders), nor two pods' write counters moving;
    at least `writers_at_least` pods wrote (the check saw them)."""
    time.sleep(3)  # the last scrapes
    until = time.time()
    claims = query_range(setup.prometheus, f'flowkeeper_leader{{job="{JOB}"}} == 1', since, until)
    assert claims, "no replica reported leading"
    assert not concurrent_leaders(claims), concurrent_leaders(claims)
    # A pod that has not written yet has no write series: 0 for it while it is scraped (`up`), so its
    # first writes count as a move.
    writes = query_range(setup.prometheus, f'sum by (pod) (flowkeeper_kubernetes_writes_total{{job="{JOB}"}})'
                                           f' or sum by (pod) (0 * up{{job="{JOB}"}})', since, until)
    by_step = writes_by_step(writes)
    assert len(set().union(*by_step.values())) >= writers_at_least, f"fewer pods wrote than expected: {by_step}"
    assert all(len(pods) == 1 for pods in by_step.values()), {at: pods for at, pods in by_step.items() if len(pods) > 1}


@pytest.mark.timeout(900)
def test_leadership_when_the_leader_container_is_killed_and_when_its_pod_is_force_deleted(setup: Setup) -> None:
    """Two replicas on the real node. Killing the leader's container (SIGKILL through the node's
    containerd): the kubelet restarts it, and since a replica's identity is its pod's name, the
    restarted container finds the Lease its own and goes on, unless the standby took it first (once
    the lease expired); the test prints which. Force-deleting the leader's pod (--grace-period=0
    --force): the API object goes at once, the kubelet still stops the container with SIGTERM, the
    replica hands the Lease back, and the standby (another name) takes it.
    Throughout, Prometheus' scrapes of every pod must never show two replicas leading, or two pods'
    write counters moving in the same second, and both pods must have written in the window (the
    check saw a takeover)."""
    ha_began = time.time()
    takeovers = []
    with LeaseTimeline(setup.cluster, setup.release.namespace, setup.release.fullname) as timeline:
        killed_pod = setup.release.lease_holder()
        takeovers.append(disrupt(setup, timeline, "leader container SIGKILL", kill_container(setup), 5))
        restarted = eventually(lambda: (p := setup.release.pod(killed_pod)) and is_ready(p) and p, timeout=POD_READY_TIMEOUT,
                               interval=1, what="the killed container restarted and Ready")
        assert container_status(restarted)["restartCount"] == 1
        assert container_status(restarted)["lastState"]["terminated"]["exitCode"] == 137  # SIGKILL
        setup.release.wait_ready(2)

        takeovers.append(disrupt(setup, timeline, "leader pod force-deleted", force_delete(setup), 7))
        assert takeovers[-1].lease_taken is not None, "the force-deleted pod's name still holds the lease"
        assert takeovers[-1].new_leader != takeovers[-1].old_leader
        setup.release.wait_ready(2)
        print("lease holders:", timeline.holders(after=ha_began))
    for takeover in takeovers:
        print(takeover)
        assert takeover.first_write < 2 * LEASE_DURATION + 30

    assert_one_leader_and_writer(setup, since=ha_began, writers_at_least=2)


@pytest.mark.timeout(900)
def test_helm_upgrade_to_a_changed_image_rolls_out_on_the_node_and_leadership_moves(setup: Setup) -> None:
    changed = operator_image(revision="upgrade")
    began = time.time()
    old_pods = {p["metadata"]["name"] for p in setup.release.pods()}
    old_leader = setup.release.lease_holder()
    setup.release.upgrade(changed)
    setup.kubectl("rollout", "status", f"deployment/{setup.release.fullname}", "-n", setup.release.namespace, "--timeout=400s",
                  timeout=420)
    pods = setup.release.wait_ready(2)
    assert not old_pods & {p["metadata"]["name"] for p in pods}
    for pod in pods:
        status = container_status(pod)
        assert pod["spec"]["nodeName"] == NODE_NAME and status["image"] == changed.name and status["restartCount"] == 0
        assert status["imageID"].endswith(changed.id.removeprefix("sha256:")), status["imageID"]
    # The image the node runs is the changed one: its configuration carries the revision label.
    config = json.loads(setup.node.ctr("content", "get", changed.id))
    assert config["config"]["Labels"][REVISION_LABEL] == "upgrade"
    leader = eventually(lambda: (h := setup.release.lease_holder()) in {p["metadata"]["name"] for p in pods} and h,
                        timeout=2 * LEASE_DURATION + 30, what="a new pod leading")
    assert leader != old_leader
    setup.scale_to(9)  # and the flow is served by the new leader (up: scaling down waits out a window)
    setup.flow.wait_replicas(9, timeout=60)
    assert_one_leader_and_writer(setup, since=began, writers_at_least=1)


def test_helm_uninstall_removes_the_release_and_keeps_crds_and_flows(setup: Setup) -> None:
    release = setup.release
    uninstalled = time.monotonic()
    release.uninstall()
    selector = f"app.kubernetes.io/instance={release.name}"
    # helm deletes the Deployment; its pods stop within their grace period (30 s) after
    eventually(lambda: not setup.kubectl("get", "pods", "-n", release.namespace, "-l", selector, "-o", "name").stdout.strip(),
               timeout=120, interval=1, what="the operator pods gone")
    print(f"operator pods gone {time.monotonic() - uninstalled:.1f}s after helm uninstall began")
    for kinds, where in (("all,serviceaccounts,roles,rolebindings,configmaps,poddisruptionbudgets", ["-n", release.namespace]),
                         ("roles,rolebindings", ["-n", setup.flows_namespace]), ("clusterroles,clusterrolebindings", [])):
        left = json.loads(setup.kubectl("get", kinds, *where, "-l", selector, "-o", "json").stdout)["items"]
        assert not left, [f"{o['kind']}/{o['metadata']['name']}" for o in left]
    assert release.helm("list", "-n", release.namespace, "--all", "-q").strip() == ""
    secrets = json.loads(setup.kubectl("get", "secrets", "-n", release.namespace, "-o", "json").stdout)["items"]
    assert not [s for s in secrets if s["metadata"]["name"].startswith("sh.helm.release")]
    # The Lease is the operator's own object, not the release's: it stays (helm removes the replicas'
    # ServiceAccount and RBAC while they stop, so they may not get to hand it back).
    setup.kubectl("get", "lease", release.fullname, "-n", release.namespace)
    # The CRDs and the flows stay: uninstalling the operator must not delete anyone's integrations.
    setup.kubectl("get", "crd", "integrationflows.flowkeeper.io", "deadletterredrives.flowkeeper.io")
    setup.kubectl("get", "integrationflow", "orders", "-n", setup.flows_namespace)
    assert setup.flow.replicas() == 9  # and what it scaled stays as it was
