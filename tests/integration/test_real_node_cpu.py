"""CPU and memory from the real sources: a consumer pod on the real node burns CPU; the kubelet's
cAdvisor endpoint (https, a ServiceAccount token, authorised by the API server) and kube-state-metrics
(its owners, requests and limits) are scraped by a real Prometheus that also evaluates the chart's
rules. The operator's CPU query for the Deployment (the real adapter) and its health judgement move,
and so does the alert FlowkeeperConsumerCpuHigh (pending: its `for:` is 15 minutes), while memory
stays within its thresholds."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowkeeper.adapters.prometheus import FlowTarget, PrometheusSignals
from flowkeeper.api.v1alpha1 import IntegrationFlowSpec
from flowkeeper.domain.health import assess
from flowkeeper.domain.signals import FlowSignals
from tests.support.cadvisor import JOB as CADVISOR_JOB, cadvisor_scrape_job, scraper_token
from tests.support.cluster import LocalCluster
from tests.support.cluster_fixtures import eventually
from tests.support.images import base_image
from tests.support.kube_state_metrics import JOB as KSM_JOB, KubeStateMetrics
from tests.support.prometheus import LocalPrometheus
from tests.support.real_node import RealNode

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus, pytest.mark.real_node]

ALERT_RULES = Path(__file__).resolve().parents[2] / "charts" / "flowkeeper" / "files" / "alerts.yaml"
NAME = "burner"
PORT = 8080
# cAdvisor refreshes a container's counters every 10 s (the kubelet's housekeeping interval): a rate
# needs two of them inside the window.
RATE_WINDOW = "30s"
BURN_SECONDS = 150  # bounded: the pod stops burning by itself

# A consumer that exports the convention's throughput counter (the alerts judge only workloads whose
# pods do) and burns one core on GET /burn?seconds=N, capped by its CPU limit.
CONSUMER = f"""
import http.server, threading, time, urllib.parse
until = [0.0]
def burn():
    while True:
        if time.monotonic() >= until[0]:
            time.sleep(0.1)
threading.Thread(target=burn, daemon=True).start()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path == "/burn":
            until[0] = time.monotonic() + float(urllib.parse.parse_qs(url.query)["seconds"][0])
            body = b"burning\\n"
        elif url.path == "/metrics":
            body = b'flowkeeper_messages_processed_total{{integration="{NAME}",status="success"}} 1\\n'
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("", {PORT}), Handler).serve_forever()
"""


def kubelet_serving_ca(node: RealNode) -> Path:
    """The kubelet's self-signed serving certificate with its CA (the file it wrote at start)."""
    assert node.layout is not None
    return node.layout.kubelet_root / "pki" / "kubelet.crt"


@pytest.fixture(scope="module")
def node_prometheus(real_node_cluster: LocalCluster, real_node: RealNode, tmp_path_factory) -> Iterator[LocalPrometheus]:
    """A Prometheus of the real-node cluster: kube-state-metrics, the kubelet's cAdvisor endpoint
    (verified against the kubelet's own CA, under the name its certificate holds), the chart's rules."""
    token = scraper_token(real_node_cluster, tmp_path_factory.mktemp("scraper"))
    cadvisor = cadvisor_scrape_job(real_node.node_ip, real_node.name, token_file=token, ca_file=kubelet_serving_ca(real_node),
                                   server_name=real_node.name)
    with KubeStateMetrics(real_node_cluster) as ksm, LocalPrometheus([], rule_files=[ALERT_RULES]) as prometheus:
        prometheus.add_scrape_job(ksm.scrape_job())
        prometheus.add_scrape_job(cadvisor)
        prometheus.wait_for(f'up{{job="{KSM_JOB}"}} == 1 and on () up{{job="{CADVISOR_JOB}"}} == 1', timeout=60)
        yield prometheus


def deployment(image: str) -> dict[str, Any]:
    container = {
        "name": NAME, "image": image, "imagePullPolicy": "Never", "command": ["python3", "-c", CONSUMER],
        "ports": [{"containerPort": PORT, "name": "metrics"}],
        # Burstable: usage is judged against the request, the limit caps the burn. A small request:
        # on a loaded machine the burn gets far less than its limit, and still reads high.
        "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"cpu": "200m", "memory": "64Mi"}},
    }
    labels = {"app": NAME}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": NAME},
        "spec": {
            "replicas": 1, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": [container], "terminationGracePeriodSeconds": 0, **RealNode.pod_overrides()}},
        },
    }


def cpu_alerts(prometheus: LocalPrometheus, namespace: str, alertname: str) -> list[dict[str, Any]]:
    return [a for a in prometheus.alerts() if a["labels"]["alertname"] == alertname and a["labels"].get("namespace") == namespace]


def test_a_busy_consumer_moves_the_cpu_signal_its_health_and_the_alert(
    real_node_cluster: LocalCluster, real_node: RealNode, node_prometheus: LocalPrometheus, real_node_namespace: str
) -> None:
    cluster, prometheus, ns = real_node_cluster, node_prometheus, real_node_namespace
    image = base_image()
    real_node.import_image(image.archive)
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(deployment(image.name)))
    cluster.kubectl("rollout", "status", f"deployment/{NAME}", "-n", ns, "--timeout=120s")
    pod = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", f"app={NAME}", "-o", "json").stdout)["items"][0]
    assert pod["spec"]["nodeName"] == real_node.name
    pod_name, pod_ip = pod["metadata"]["name"], pod["status"]["podIP"]
    # The pod's own metrics, with the target labels Kubernetes service discovery gives a pod.
    prometheus.add_scrape_job({"job_name": "consumers", "static_configs": [
        {"targets": [f"{pod_ip}:{PORT}"], "labels": {"namespace": ns, "pod": pod_name}}]})

    spec = IntegrationFlowSpec.model_validate({"scaleTargetRef": {"name": NAME}, "source": {"broker": "rabbitmq", "queue": "orders"}})
    flow = FlowTarget(f"{ns}/{NAME}", ns, NAME, spec)
    reader = PrometheusSignals(prometheus.url, rate_window=RATE_WINDOW, timeout=10)

    def signals() -> FlowSignals:
        result = reader.collect([flow])
        assert not result.failures, result.failures
        return result.signals[flow.key]

    def findings(s: FlowSignals) -> list[str]:
        judged = assess(spec.health, s, ready_replicas=1, desired_replicas=1, scaling_limited=False, now=time.time())
        return [f.signal for f in judged.findings]

    try:
        # Idle: known, low, nothing found. The series are cAdvisor's own, labelled by the kubelet.
        idle = eventually(lambda: (s := signals()).cpu_utilization is not None and s.memory_utilization is not None and s,
                          timeout=90, what="CPU and memory of the idle consumer")
        assert idle.cpu_utilization < 0.5 and 0 < idle.memory_utilization < 0.85, idle
        assert findings(idle) == []
        series = prometheus.query(f'container_cpu_usage_seconds_total{{namespace="{ns}", pod="{pod_name}", container="{NAME}"}}')
        assert series and series[0]["metric"]["job"] == CADVISOR_JOB, series

        with urllib.request.urlopen(f"http://{pod_ip}:{PORT}/burn?seconds={BURN_SECONDS}", timeout=10) as response:
            assert response.status == 200
        busy = eventually(lambda: (s := signals()).cpu_utilization is not None and s.cpu_utilization > 0.8 and s,
                          timeout=90, what="the CPU signal above 80 % of the request")
        assert findings(busy) == ["CpuHigh"], busy
        # Capped by the limit: 200m of a 20m request is at most 1000 % (a little above: the rate's
        # extrapolation over cAdvisor's ten-second steps).
        assert busy.cpu_utilization < 12, busy

        pending = eventually(lambda: cpu_alerts(prometheus, ns, "FlowkeeperConsumerCpuHigh"), timeout=60,
                             what="FlowkeeperConsumerCpuHigh pending")
        assert [(a["state"], a["labels"]["workload_kind"], a["labels"]["workload"]) for a in pending] == [("pending", "Deployment", NAME)]
        assert cpu_alerts(prometheus, ns, "FlowkeeperConsumerMemoryHigh") == []
        owner = prometheus.query(f'flowkeeper:pod_workload:owner{{namespace="{ns}"}}')
        assert [(r["metric"]["pod"], r["metric"]["workload_kind"], r["metric"]["workload"]) for r in owner] == [(pod_name, "Deployment", NAME)]
    finally:
        reader.close()
        prometheus.remove_scrape_job("consumers")
