"""The Helm chart charts/flowkeeper, rendered and linted by the real helm: security settings, the
operator's arguments, least-privilege RBAC in both modes, the values schema, optional monitoring
objects, and the CRD copy."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.support.chart import CHART, HelmError, lint, render_chart
from tests.support.cluster import REPO

RELEASE, NAMESPACE = "flowkeeper", "flowkeeper-system"
CRD = "flowkeeper.io_integrationflows.yaml"

# What the operator may do where it serves flows, as (apiGroup, resource, verb).
FLOW_RULES = {
    *(("flowkeeper.io", "integrationflows", verb) for verb in ("get", "list", "watch")),
    *(("flowkeeper.io", "integrationflows/status", verb) for verb in ("get", "patch")),
    *(("flowkeeper.io", "deadletterredrives", verb) for verb in ("get", "list", "watch")),
    *(("flowkeeper.io", "deadletterredrives/status", verb) for verb in ("get", "patch")),
    *(("apps", resource, verb) for resource in ("deployments", "statefulsets") for verb in ("get", "list", "watch")),
    *(("apps", f"{resource}/scale", verb) for resource in ("deployments", "statefulsets") for verb in ("get", "patch")),
    *(("", "events", verb) for verb in ("create", "patch")),
}
SECRET_RULE = {("", "secrets", "get")}
# Only with argoRollouts.enabled: a Rollout watch needs the Argo Rollouts CRD.
ROLLOUT_RULES = {
    *(("argoproj.io", "rollouts", verb) for verb in ("get", "list", "watch")),
    *(("argoproj.io", "rollouts/scale", verb) for verb in ("get", "patch")),
}

# Value sets that every check of the whole chart (lint, no delete, no wildcard) runs on.
VARIANTS = {
    "defaults": (),
    "namespaced": ("watchNamespaces={team-a,team-b}", "rbac.secretNames={prom-token,other}"),
    "cluster-wide with secrets": ("rbac.secretNames={prom-token}",),
    "standalone": ("leaderElection.enabled=false", "replicaCount=1"),
    "argo rollouts": ("argoRollouts.enabled=true", "watchNamespaces={team-a}"),
    "monitoring": ("serviceMonitor.enabled=true", "serviceMonitor.labels.release=prometheus", "prometheusRule.enabled=true"),
    "credentials": (
        "prometheus.url=https://prometheus.monitoring:9090",
        "prometheus.bearerTokenSecret.name=prom-token",
        "prometheus.bearerTokenSecret.key=token",
        "prometheus.caSecret.name=prom-ca",
        "prometheus.caSecret.key=ca.crt",
    ),
    "scheduling": (
        "topologySpreadConstraints[0].maxSkew=1",
        "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
        "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
        "nodeSelector.pool=system",
        "priorityClassName=system-cluster-critical",
        "podAnnotations.team=platform",
        "extraArgs={--verbose}",
    ),
}


def render(*set_args: str, release: str = RELEASE, namespace: str = NAMESPACE, chart: Path = CHART) -> list[dict]:
    return render_chart(release, namespace, *set_args, chart=chart)


def refusal(*set_args: str) -> str:
    """helm's error for values the chart must refuse."""
    with pytest.raises(HelmError) as refused:
        render(*set_args)
    return refused.value.stderr


def only(documents: list[dict], kind: str) -> dict:
    found = [d for d in documents if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


def container(documents: list[dict]) -> dict:
    (operator,) = only(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    return operator


def grants(role: dict) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def roles(documents: list[dict]) -> list[dict]:
    return [d for d in documents if d["kind"] in ("Role", "ClusterRole")]


def flow_role(documents: list[dict], namespace: str) -> dict:
    """The Role with the flow rules in `namespace` (not the release namespace's leader-election one)."""
    (role,) = [r for r in roles(documents) if r["metadata"].get("namespace") == namespace and "leader-election" not in r["metadata"]["name"]]
    return role


# ------------------------------------------------------------------------------------------ the chart


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_strict_passes(variant: str) -> None:
    lint(*VARIANTS[variant])


def test_chart_metadata_follows_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert (chart["apiVersion"], chart["name"], chart["version"]) == ("v2", "flowkeeper", "0.1.0")
    assert chart["appVersion"] == project["version"]
    assert chart["kubeVersion"] == ">=1.27.0-0"
    deployment = only(render(), "Deployment")
    assert container([deployment])["image"] == f"flowkeeper:{project['version']}"  # tag defaults to appVersion


@pytest.mark.parametrize("kind", ["IntegrationFlow", "DeadLetterRedrive"])
def test_crd_is_the_generated_one_byte_for_byte(kind: str) -> None:
    name = f"flowkeeper.io_{kind.lower()}s.yaml"
    chart_crd = (CHART / "crds" / name).read_bytes()
    assert chart_crd == (REPO / "crds" / name).read_bytes(), "run `make crds`"
    generated = subprocess.run([str(REPO / ".venv" / "bin" / "flowkeeper"), "crd", "--kind", kind], capture_output=True, check=True).stdout
    assert chart_crd == generated, "run `make crds`"


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_delete_no_wildcards_anywhere(variant: str) -> None:
    documents = render(*VARIANTS[variant])
    assert roles(documents)
    for role in roles(documents):
        for rule in role["rules"]:
            assert "delete" not in rule["verbs"] and "deletecollection" not in rule["verbs"], role["metadata"]["name"]
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], role["metadata"]["name"]
            assert "escalate" not in rule["verbs"] and "bind" not in rule["verbs"] and "impersonate" not in rule["verbs"]
            if "secrets" in rule["resources"]:
                assert rule["verbs"] == ["get"] and rule["resourceNames"], "Secrets only by name, never list/watch"


# ------------------------------------------------------------------------------------- the Deployment


def test_deployment_is_locked_down() -> None:
    documents = render()
    deployment = only(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["fsGroup"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == RELEASE and pod["automountServiceAccountToken"] is True

    operator = container(documents)
    security = operator["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    # the read-only root's only writable place
    assert {"name": "tmp", "mountPath": "/tmp"} in operator["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert operator["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    assert {(p["name"], p["containerPort"]) for p in operator["ports"]} == {("metrics", 8080), ("health", 8081)}
    for probe in ("livenessProbe", "readinessProbe"):
        assert operator[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_deployment_spreads_replicas_and_keeps_one_through_drains() -> None:
    documents = render()
    pod = only(documents, "Deployment")["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == only(documents, "Deployment")["spec"]["selector"]["matchLabels"]
    assert only(documents, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert only(documents, "Deployment")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert not [d for d in render("replicaCount=1") if d["kind"] == "PodDisruptionBudget"]


def test_arguments_elect_a_leader_over_a_lease() -> None:
    operator = container(render())
    assert operator["args"] == [
        "run",
        "--log-format=json",
        "--metrics-port=8080",
        "--liveness=http://0.0.0.0:8081/healthz",
        "--loop-stall-seconds=180",
        f"--lease-name={RELEASE}",
        "--lease-namespace=$(POD_NAMESPACE)",
        "--identity=$(POD_NAME)",
        "--lease-duration=15",
        "--rate-window=1m",
        "--dead-letter-review-interval=60",
        "--dead-letter-review-limit=10000",
    ]
    env = {e["name"]: e for e in operator["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert "FLOWKEEPER_PROMETHEUS_URL" not in env


def test_the_loop_stall_limit_reaches_the_operator_and_is_bounded() -> None:
    assert "--loop-stall-seconds=20" in container(render("loopStallSeconds=20"))["args"]
    assert "loopStallSeconds" in refusal("loopStallSeconds=2")


def test_lease_is_named_after_the_release() -> None:
    args = container(render("leaderElection.leaseDuration=5", release="ops"))["args"]
    assert "--lease-name=ops-flowkeeper" in args and "--lease-duration=5" in args


def test_standalone_needs_a_single_replica() -> None:
    error = refusal("leaderElection.enabled=false", "replicaCount=2")
    assert "leaderElection.enabled=false" in error and "replicaCount" in error

    documents = render("leaderElection.enabled=false", "replicaCount=1")
    args = container(documents)["args"]
    assert "--standalone" in args
    assert not [a for a in args if a.startswith(("--lease-", "--identity"))]
    assert only(documents, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}  # never two acting at once


def test_prometheus_and_its_credentials_come_from_existing_secrets() -> None:
    documents = render(*VARIANTS["credentials"])
    operator = container(documents)
    env = {e["name"]: e for e in operator["env"]}
    assert env["FLOWKEEPER_PROMETHEUS_URL"]["value"] == "https://prometheus.monitoring:9090"
    mounts = {m["name"]: m for m in operator["volumeMounts"]}
    volumes = {v["name"]: v for v in only(documents, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    for volume, secret, key, flag in (
        ("prometheus-token", "prom-token", "token", "--prometheus-bearer-token-file"),
        ("prometheus-ca", "prom-ca", "ca.crt", "--prometheus-ca-file"),
    ):
        assert volumes[volume]["secret"]["secretName"] == secret
        (item,) = volumes[volume]["secret"]["items"]
        assert item["key"] == key
        assert mounts[volume]["readOnly"] is True
        assert f"{flag}={mounts[volume]['mountPath']}/{item['path']}" in operator["args"]


def test_tenant_safety_options_are_off_unless_set() -> None:
    args = container(render())["args"]
    assert not [a for a in args if a.startswith(("--allowed-prometheus-server", "--allow-metrics-overrides"))]
    args = container(render("prometheus.allowedServers={https://a.monitoring:9090,http://b/prometheus}", "prometheus.allowMetricsOverrides=true"))["args"]
    assert [a for a in args if a.startswith("--allow")] == [
        "--allowed-prometheus-server=https://a.monitoring:9090",
        "--allowed-prometheus-server=http://b/prometheus",
        "--allow-metrics-overrides",
    ]


def test_dead_letter_options_reach_the_operator() -> None:
    args = container(render())["args"]
    assert "--dead-letter-review-interval=60" in args and "--dead-letter-review-limit=10000" in args
    assert not [a for a in args if a.startswith("--allowed-broker")]
    args = container(render("deadLetters.allowedBrokers={rabbitmq.messaging:5672,kafka-0:9092}", "deadLetters.reviewInterval=30"))["args"]
    assert [a for a in args if a.startswith("--allowed-broker")] == ["--allowed-broker=rabbitmq.messaging:5672", "--allowed-broker=kafka-0:9092"]
    assert "--dead-letter-review-interval=30" in args


def test_a_shard_serves_the_flows_its_selector_selects_under_its_own_lease() -> None:
    assert not [a for a in container(render())["args"] if a.startswith("--selector")]
    shard_a = container(render("flowSelector=shard=a", release="shard-a"))["args"]
    shard_b = container(render("flowSelector=shard=b", release="shard-b"))["args"]
    assert "--selector=shard=a" in shard_a and "--selector=shard=b" in shard_b
    assert "--lease-name=shard-a-flowkeeper" in shard_a and "--lease-name=shard-b-flowkeeper" in shard_b


def test_argo_rollouts_are_watched_and_granted_only_when_enabled() -> None:
    assert "--watch-rollouts" not in container(render())["args"]
    assert not grants(only(render(), "ClusterRole")) & ROLLOUT_RULES
    documents = render("argoRollouts.enabled=true")
    assert "--watch-rollouts" in container(documents)["args"]
    assert grants(only(documents, "ClusterRole")) == FLOW_RULES | ROLLOUT_RULES
    namespaced = render("argoRollouts.enabled=true", "watchNamespaces={team-a}")
    assert grants(flow_role(namespaced, "team-a")) == FLOW_RULES | ROLLOUT_RULES


def test_extra_arguments_and_scheduling_values_reach_the_pod() -> None:
    documents = render(*VARIANTS["scheduling"])
    pod = only(documents, "Deployment")["spec"]["template"]
    assert container(documents)["args"][-1] == "--verbose"
    assert pod["metadata"]["annotations"] == {"team": "platform"}
    assert pod["spec"]["nodeSelector"] == {"pool": "system"}
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    (spread,) = pod["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["labelSelector"]["matchLabels"] == only(documents, "Deployment")["spec"]["selector"]["matchLabels"]


def test_metrics_service_selects_the_operator() -> None:
    documents = render()
    service = only(documents, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["spec"]["selector"] == only(documents, "Deployment")["spec"]["selector"]["matchLabels"]


# ------------------------------------------------------------------------------------------------ RBAC


def test_cluster_wide_rbac_is_exactly_what_the_operator_needs() -> None:
    documents = render()
    cluster_role = only(documents, "ClusterRole")
    assert grants(cluster_role) == FLOW_RULES
    assert not any("resourceNames" in rule for rule in cluster_role["rules"])
    binding = only(documents, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": RELEASE}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    assert only(documents, "ServiceAccount")["metadata"]["name"] == RELEASE
    # no flow Role in any namespace: only the release namespace's leader election
    assert [r["metadata"]["name"] for r in roles(documents) if r["kind"] == "Role"] == [f"{RELEASE}-leader-election"]


def test_leader_election_is_limited_to_its_own_lease() -> None:
    documents = render()
    (role,) = [r for r in roles(documents) if r["metadata"]["name"] == f"{RELEASE}-leader-election"]
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == NAMESPACE
    named = [rule for rule in role["rules"] if rule.get("resourceNames")]
    assert named == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [RELEASE], "verbs": ["get", "update"]}]
    assert grants(role) == {
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "update"),
        ("coordination.k8s.io", "leases", "create"),
    }
    (binding,) = [d for d in documents if d["kind"] == "RoleBinding" and d["metadata"]["name"] == role["metadata"]["name"]]
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]


def test_namespaced_install_grants_nothing_cluster_wide() -> None:
    documents = render("watchNamespaces={team-a,team-b}")
    assert not [d for d in documents if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for namespace in ("team-a", "team-b"):
        role = flow_role(documents, namespace)
        assert role["kind"] == "Role" and grants(role) == FLOW_RULES
        (binding,) = [d for d in documents if d["kind"] == "RoleBinding" and d["metadata"]["namespace"] == namespace]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    args = container(documents)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--lease-namespace=$(POD_NAMESPACE)" in args  # the Lease stays in the release namespace


def test_secrets_are_readable_only_by_name() -> None:
    assert not [r for r in roles(render()) if ("", "secrets", "get") in grants(r)]

    cluster_role = only(render("rbac.secretNames={prom-token,team-token}"), "ClusterRole")
    assert grants(cluster_role) == FLOW_RULES | SECRET_RULE
    (secret_rule,) = [rule for rule in cluster_role["rules"] if "secrets" in rule["resources"]]
    assert secret_rule == {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["prom-token", "team-token"], "verbs": ["get"]}

    documents = render("watchNamespaces={team-a}", "rbac.secretNames={prom-token}")
    assert grants(flow_role(documents, "team-a")) == FLOW_RULES | SECRET_RULE


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    documents = render("rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=ops")
    assert not [d for d in documents if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ServiceAccount")]
    assert only(documents, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


# ------------------------------------------------------------------------------------------ the schema


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("replicaCout=2", "replicaCout"),
        ("replicaCount=two", "replicaCount"),
        ("replicaCount=0", "replicaCount"),
        ("watchNamespaces={Team_A}", "watchNamespaces"),
        ("leaderElection.leaseDuration=1", "leaseDuration"),
        ("leaderElection.leaseDuration=301", "leaseDuration"),
        ("prometheus.url=prometheus:9090", "url"),
        ("rbac.secretNames=prom-token", "secretNames"),
        ("prometheus.allowedServers={prometheus:9090}", "allowedServers"),
        ("prometheus.allowedServers={https://p:9090?x=1}", "allowedServers"),
        ("prometheus.allowMetricsOverrides=yes", "allowMetricsOverrides"),
        ("rbac.sekretNames={prom-token}", "sekretNames"),
        ("deadLetters.reviewInterval=1", "reviewInterval"),
        ("deadLetters.allowedBrokers={amqp://rabbit:5672}", "allowedBrokers"),
        ("image.tag=2", "tag"),
        ("resources=big", "resources"),
    ],
)
def test_schema_refuses_typos_and_wrong_types(value: str, field: str) -> None:
    error = refusal(value)
    assert "schema" in error and field in error, error


# ----------------------------------------------------------------------------------------- monitoring


def test_monitoring_objects_are_off_by_default() -> None:
    kinds = {d["kind"] for d in render()}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}


def test_service_monitor_scrapes_the_metrics_port() -> None:
    documents = render("serviceMonitor.enabled=true", "serviceMonitor.labels.release=prometheus", "serviceMonitor.interval=15s")
    monitor = only(documents, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"] == only(documents, "Service")["spec"]["selector"]
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]


def test_prometheus_rule_carries_the_alert_file(tmp_path: Path) -> None:
    rule = only(render("prometheusRule.enabled=true", "prometheusRule.labels.release=prometheus"), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert isinstance(rule["spec"]["groups"], list)
    alerts = CHART / "files" / "alerts.yaml"
    if alerts.exists():
        assert rule["spec"] == {"groups": yaml.safe_load(alerts.read_text())["groups"]}

    # A copy of the chart, without the file and with a known one.
    chart = tmp_path / "flowkeeper"
    shutil.copytree(CHART, chart)
    shutil.rmtree(chart / "files", ignore_errors=True)
    assert only(render("prometheusRule.enabled=true", chart=chart), "PrometheusRule")["spec"] == {"groups": []}
    (chart / "files").mkdir()
    groups = [{"name": "flowkeeper", "rules": [{
        "alert": "FlowkeeperDown",
        "expr": 'absent(up{job="flowkeeper"} == 1)',
        "for": "5m",
        "labels": {"severity": "critical"},
        "annotations": {"summary": "Flowkeeper {{ $labels.instance }} is down", "runbook": "line one\nline two\n"},
    }]}]
    (chart / "files" / "alerts.yaml").write_text("# a plain rule file\n" + yaml.safe_dump({"groups": groups}))
    assert only(render("prometheusRule.enabled=true", chart=chart), "PrometheusRule")["spec"] == {"groups": groups}


# ------------------------------------------------------------------------------------------- the notes


def test_notes_say_how_to_see_the_leader_and_the_flows(tmp_path: Path) -> None:
    # helm template does not print NOTES.txt: a copy of the chart renders it into a ConfigMap.
    chart = tmp_path / "flowkeeper"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes.tpl").write_text('{{- define "test.notes" -}}\n' + notes + "\n{{- end }}\n")
    (chart / "templates" / "notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: {{ include "test.notes" . | quote }}\n'
    )

    def rendered(*set_args: str) -> str:
        return only(render("--show-only=templates/notes.yaml", *set_args, release="ops", chart=chart), "ConfigMap")["data"]["notes"]

    text = rendered()
    assert f"kubectl -n {NAMESPACE} get lease ops-flowkeeper" in text
    assert "kubectl get integrationflows -A" in text
    assert "examples/" in text
    assert "--standalone" in rendered("leaderElection.enabled=false", "replicaCount=1")
