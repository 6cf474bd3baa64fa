"""The chart's RBAC against the real RBAC-enabled apiserver: `helm template` output is applied, and the
operator runs with the chart's ServiceAccount identity (a TokenRequest token, as a Pod gets one) and
the chart's own container arguments. Everything Flowkeeper does works; anything else is refused."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from pathlib import Path

import pytest
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.config import new_client_from_config

from tests.support.chart import render_chart
from tests.support.cluster_fixtures import eventually
from tests.support.flows import Flow, flow_manifest, set_depth
from tests.support.operator import OperatorProcess
from tests.support.processes import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

RELEASE = "flowkeeper"


@pytest.fixture
def namespaces(cluster):
    """A release namespace, a watched one and one the operator must keep out of."""
    suffix = uuid.uuid4().hex[:6]
    names = {role: f"{role}-{suffix}" for role in ("release", "team", "other")}
    for name in names.values():
        cluster.kubectl("create", "namespace", name)
    yield names
    for name in names.values():
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def install(cluster):
    """Applies the rendered chart (the CRD is already installed, as `helm install` does from crds/);
    cluster-scoped objects are deleted afterwards, namespaced ones go with their namespace."""
    applied: list[dict] = []

    def apply(release_namespace: str, *set_args: str) -> list[dict]:
        documents = render_chart(RELEASE, release_namespace, *set_args)
        for document in documents:
            if document["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
                document["metadata"].setdefault("namespace", release_namespace)  # what `helm install -n` does
        cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": documents}))
        applied.extend(documents)
        return documents

    yield apply
    for document in applied:
        if document["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            cluster.kubectl("delete", document["kind"], document["metadata"]["name"], "--ignore-not-found", check=False)


def operator_arguments(documents: list[dict], release_namespace: str) -> list[str]:
    """The container arguments of the chart's Deployment, as the kubelet would expand them; the ports
    are moved to free ones so several operators can run on one machine."""
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    values = {"POD_NAMESPACE": release_namespace, "POD_NAME": f"{RELEASE}-0"}
    args = [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], arg) for arg in container["args"]]
    assert args[0] == "run"
    assert any(a.startswith("--lease-namespace=") for a in args), args
    args = [a for a in args[1:] if not a.startswith("--metrics-port=")]  # OperatorProcess picks a free one
    return [re.sub(r"^--liveness=http://0\.0\.0\.0:\d+", f"--liveness=http://127.0.0.1:{free_port()}", a) for a in args]


def refused(cluster, env, *args: str) -> bool:
    result = cluster.kubectl(*args, env=env, check=False)
    return result.returncode != 0 and "forbidden" in result.stderr.lower()


def allowed(cluster, env, *args: str) -> bool:
    return cluster.kubectl("auth", "can-i", *args, env=env, check=False).stdout.strip() == "yes"


def assert_exact_verbs(cluster, env, namespace: str) -> None:
    """The verbs the operator calls where it serves flows are granted, and their neighbours are not:
    patch but not update, core Events but not events.k8s.io."""
    for verb, resource, *sub in [
        ("patch", "integrationflows.flowkeeper.io", "--subresource=status"),
        ("get", "integrationflows.flowkeeper.io", "--subresource=status"),
        ("patch", "deployments.apps", "--subresource=scale"),
        ("get", "deployments.apps", "--subresource=scale"),
        ("watch", "statefulsets.apps"),
        ("patch", "statefulsets.apps", "--subresource=scale"),
        ("get", "statefulsets.apps", "--subresource=scale"),
        ("create", "events"),
        ("patch", "events"),
    ]:
        assert allowed(cluster, env, verb, resource, *sub, "-n", namespace), (verb, resource)
    for verb, resource, *sub in [
        ("update", "integrationflows.flowkeeper.io", "--subresource=status"),
        ("update", "deployments.apps", "--subresource=scale"),
        ("update", "statefulsets.apps", "--subresource=scale"),
        ("patch", "statefulsets.apps"),
        # Rollouts only with argoRollouts.enabled (their CRD may be missing).
        ("list", "rollouts.argoproj.io"),
        ("patch", "rollouts.argoproj.io", "--subresource=scale"),
        ("create", "events.events.k8s.io"),
        ("patch", "events.events.k8s.io"),
        ("delete", "events"),
    ]:
        assert not allowed(cluster, env, verb, resource, *sub, "-n", namespace), (verb, resource)


def test_namespaced_install_can_do_its_job_and_nothing_else(
    cluster, install, namespaces, prometheus, fresh_exporter, unique, tmp_path: Path
) -> None:
    release, team, other = namespaces["release"], namespaces["team"], namespaces["other"]
    documents = install(
        release, f"watchNamespaces={{{team}}}", "rbac.secretNames={prom-token}", "leaderElection.leaseDuration=5"
    )
    assert not [d for d in documents if d["kind"].startswith("Cluster")], "a namespaced install grants nothing cluster-wide"
    env = cluster.env_for_service_account(release, RELEASE)

    # The flows: one scaled from the operator's Prometheus, one reading its own server with a granted
    # Secret, one whose Deployment is missing (paused), one whose Secret was not granted.
    queue = f"{unique}-rbac"
    set_depth(fresh_exporter, queue, 620)
    prometheus.wait_for(f'rabbitmq_queue_messages_ready{{queue="{queue}"}} == 620')
    for name in ("consumer", "with-secret", "ungranted-secret"):
        cluster.kubectl("create", "deployment", name, "-n", team, "--image=example/consumer:1", "--replicas=1")
    cluster.kubectl("create", "secret", "generic", "prom-token", "-n", team, "--from-literal=token=t0ken")
    cluster.kubectl("create", "secret", "generic", "other-token", "-n", team, "--from-literal=token=t0ken")
    server = lambda secret: {"metrics": {"server": {"address": prometheus.url, "bearerTokenSecret": {"name": secret, "key": "token"}}}}  # noqa: E731
    manifests = [
        flow_manifest("consumer", queue, {"maxReplicas": 10}),
        flow_manifest("with-secret", queue, {"maxReplicas": 10}, **server("prom-token")),
        flow_manifest("ungranted-secret", queue, {"maxReplicas": 10}, **server("other-token")),
        flow_manifest("no-deployment", queue, {"maxReplicas": 10}, scaleTargetRef={"name": "missing"}),
    ]
    for manifest in manifests:
        cluster.kubectl("apply", "-n", team, "-f", "-", input=manifest)

    args = operator_arguments(documents, release)
    with OperatorProcess(env, tmp_path, *args, f"--prometheus-url={prometheus.url}", standalone=False) as operator:
        flows = {name: Flow(cluster, team, name) for name in ("consumer", "with-secret", "ungranted-secret", "no-deployment")}
        flows["consumer"].wait_replicas(7, timeout=30)  # list/watch, read metrics, patch /scale
        flows["with-secret"].wait_replicas(7, timeout=30)  # and the granted Secret was read
        eventually(lambda: flows["consumer"].condition("Ready").get("status"), what="status written")
        eventually(lambda: flows["no-deployment"].status().get("pause", {}).get("reason") == "TargetNotFound", timeout=60, what="pause")  # after the 30 s grace
        ungranted = eventually(lambda: flows["ungranted-secret"].status().get("pause"), what="the flow with an ungranted Secret")
        print("flow with an ungranted Secret:", ungranted)
        assert ungranted["reason"] == "SecretForbidden" and "forbidden" in ungranted["message"].lower()
        assert flows["ungranted-secret"].replicas() == 0
        events = json.loads(cluster.kubectl("get", "events", "-n", team, "-o", "json").stdout)["items"]
        scaled = next(e for e in events if e["reason"] == "Scaled" and e["involvedObject"]["name"] == "consumer")
        # Events are patched to count repeats, the way the operator's client does it (no get first).
        core = CoreV1Api(new_client_from_config(config_file=env["KUBECONFIG"]))
        patched = core.patch_namespaced_event(scaled["metadata"]["name"], team, {"count": (scaled.get("count") or 1) + 1})
        assert patched.count == (scaled.get("count") or 1) + 1
        with pytest.raises(ApiException) as elsewhere:
            core.patch_namespaced_event(scaled["metadata"]["name"], other, {"count": 1})
        assert elsewhere.value.status == 403
        lease = json.loads(cluster.kubectl("get", "lease", RELEASE, "-n", release, "-o", "json").stdout)
        assert lease["spec"]["holderIdentity"] == f"{RELEASE}-0"
        assert operator.metric("flowkeeper_leader") == 1
        # The chart's liveness probe answers, and includes the loop's own heartbeat.
        liveness = next(a for a in args if a.startswith("--liveness=")).removeprefix("--liveness=")
        probe = json.loads(urllib.request.urlopen(liveness, timeout=5).read())
        assert 0 <= probe["loop"] < 5, probe
        messages = [json.loads(line)["message"] for line in operator.log().splitlines() if line.startswith("{")]
        refusals = [m for m in messages if "forbidden" in m.lower()]
        assert refusals and all("other-token" in m for m in refusals), refusals  # nothing else was refused

    # ... and no more: Secrets it was not granted, deleting or creating workloads, editing flows' specs,
    # any other namespace, anything cluster-wide.
    assert allowed(cluster, env, "get", "secret/prom-token", "-n", team)
    assert refused(cluster, env, "get", "secret", "other-token", "-n", team)
    assert refused(cluster, env, "get", "secrets", "-n", team)
    assert refused(cluster, env, "delete", "deployment", "consumer", "-n", team)
    assert refused(cluster, env, "create", "deployment", "intruder", "-n", team, "--image=x")
    assert refused(cluster, env, "delete", "integrationflow", "consumer", "-n", team)
    assert refused(cluster, env, "patch", "integrationflow", "consumer", "-n", team, "--type=merge", "-p", '{"spec":{"paused":true}}')
    assert refused(cluster, env, "get", "integrationflows", "-n", other)
    assert refused(cluster, env, "get", "deployments", "-n", other)
    assert refused(cluster, env, "scale", "deployment", "consumer", "-n", other, "--replicas=2")
    assert refused(cluster, env, "get", "integrationflows", "-A")
    assert refused(cluster, env, "get", "pods", "-n", team)
    assert not allowed(cluster, env, "create", "events", "-n", other)
    assert not allowed(cluster, env, "patch", "events", "-n", other)
    assert not allowed(cluster, env, "create", "events", "-n", release)  # no flows there, no Events
    assert not allowed(cluster, env, "delete", "lease", RELEASE, "-n", release)
    assert not allowed(cluster, env, "update", "lease/someone-else", "-n", release)
    assert allowed(cluster, env, "update", f"lease/{RELEASE}", "-n", release)
    assert allowed(cluster, env, "create", "leases", "-n", release)
    assert_exact_verbs(cluster, env, team)


def test_cluster_wide_install_reads_every_namespace_and_still_deletes_nothing(cluster, install, namespaces) -> None:
    release, team = namespaces["release"], namespaces["team"]
    documents = install(release)
    kinds = {d["kind"] for d in documents}
    assert {"ClusterRole", "ClusterRoleBinding", "ServiceAccount", "Deployment", "Service"} <= kinds
    cluster.kubectl("create", "deployment", "consumer", "-n", team, "--image=example/consumer:1", "--replicas=1")
    env = cluster.env_for_service_account(release, RELEASE)

    assert cluster.kubectl("get", "integrationflows", "-A", env=env).returncode == 0
    assert cluster.kubectl("get", "deployments", "-A", env=env).returncode == 0
    assert cluster.kubectl("scale", "deployment", "consumer", "-n", team, "--replicas=2", env=env).returncode == 0
    assert not allowed(cluster, env, "patch", "integrationflows.flowkeeper.io", "-n", team)
    assert_exact_verbs(cluster, env, team)
    assert refused(cluster, env, "get", "secrets", "-n", team)  # no Secret names given, no Secrets at all
    assert refused(cluster, env, "delete", "deployment", "consumer", "-n", team)
    assert refused(cluster, env, "patch", "deployment", "consumer", "-n", team, "--type=merge", "-p", '{"spec":{"paused":true}}')
    assert refused(cluster, env, "get", "pods", "-A")
    assert refused(cluster, env, "get", "nodes")
    assert refused(cluster, env, "get", "leases", "-n", team)  # its lease lives in its own namespace only


@pytest.mark.rabbitmq
def test_dead_letters_are_reached_only_with_the_broker_secrets_that_were_granted(
    cluster, install, namespaces, prometheus, fresh_exporter, tmp_path: Path
) -> None:
    """Both ways: a broker Secret named in rbac.secretNames is read (the review and a redrive work), one
    that is not is refused, and the flow and the redrive say so instead of failing silently."""
    from tests.support.rabbitmq import LocalRabbitMQ, declare_queue

    release, team = namespaces["release"], namespaces["team"]
    documents = install(release, f"watchNamespaces={{{team}}}", "rbac.secretNames={broker-creds}", "leaderElection.leaseDuration=5")
    env = cluster.env_for_service_account(release, RELEASE)
    for verb, sub in [("watch", ()), ("patch", ("--subresource=status",))]:
        assert allowed(cluster, env, verb, "deadletterredrives.flowkeeper.io", *sub, "-n", team)
    for verb in ("create", "update", "delete"):
        assert not allowed(cluster, env, verb, "deadletterredrives.flowkeeper.io", "-n", team)
    with LocalRabbitMQ() as broker:
        for secret in ("broker-creds", "other-creds"):
            cluster.kubectl("create", "secret", "generic", secret, "-n", team, "--from-literal=user=guest", "--from-literal=password=guest")
        for name, secret in (("granted", "broker-creds"), ("ungranted", "other-creds")):
            declare_queue(broker.parameters, name, dead_letter_queue=f"{name}.dlq")
            cluster.kubectl("create", "deployment", name, "-n", team, "--image=example/consumer:1", "--replicas=1")
            connection = {"address": f"amqp://127.0.0.1:{broker.amqp_port}",
                          "usernameSecret": {"name": secret, "key": "user"}, "passwordSecret": {"name": secret, "key": "password"}}
            source = {"broker": "rabbitmq", "vhost": "/", "queue": name, "deadLetterQueue": f"{name}.dlq", "connection": connection}
            cluster.kubectl("apply", "-n", team, "-f", "-", input=flow_manifest(name, name, source=source))
        redrive = {"apiVersion": "flowkeeper.io/v1alpha1", "kind": "DeadLetterRedrive", "metadata": {"name": "with-other-creds"},
                   "spec": {"flowRef": {"name": "granted"}, "classes": ["transient"],
                            "credentials": {"usernameSecret": {"name": "other-creds", "key": "user"},
                                            "passwordSecret": {"name": "other-creds", "key": "password"}}}}
        cluster.kubectl("apply", "-n", team, "-f", "-", input=json.dumps(redrive))
        # The consumers count messages and no error: the redrive's cause check passes, the broker step comes next.
        fresh_exporter.set("flowkeeper_messages_processed_total", {"namespace": team, "integration": "granted", "status": "success"}, 5)
        prometheus.wait_for(f'flowkeeper_messages_processed_total{{namespace="{team}"}}')
        args = operator_arguments(documents, release)
        with OperatorProcess(env, tmp_path, *args, f"--prometheus-url={prometheus.url}", "--dead-letter-review-interval=5",
                             f"--allowed-broker=127.0.0.1:{broker.amqp_port}", standalone=False):
            granted, ungranted = Flow(cluster, team, "granted"), Flow(cluster, team, "ungranted")
            review = eventually(lambda: granted.status().get("deadLetters"), timeout=60, what="the granted flow's review")
            assert review["depth"] == 0 and "error" not in review
            failed = eventually(lambda: (ungranted.status().get("deadLetters") or {}).get("error"), timeout=60, what="the ungranted review")
            assert failed.startswith("SecretForbidden") and "other-creds" in failed
            blocked = eventually(
                lambda: (lambda s: s if s.get("phase") == "Blocked" and "Secret" in s.get("message", "") else None)(
                    json.loads(cluster.kubectl("get", "dlr", "with-other-creds", "-n", team, "-o", "json").stdout).get("status") or {}),
                timeout=60, what="the redrive with ungranted credentials blocked")
            assert "SecretForbidden" in json.dumps(blocked["conditions"])
    assert refused(cluster, env, "get", "secret", "other-creds", "-n", team)
