"""The pure helpers of the side-by-side bench (bench.peers): percentiles, counters read from
/metrics text, ratios, the ScaledObject manifest, the system variants, the flow watch's timing."""

from __future__ import annotations

import threading

from bench.peers import figures
from bench.peers.chart import series, table
from bench.peers.keda import scaled_object
from bench.peers.run import System, system
from bench.peers.watch import FlowStatusWatch
from bench.run import has_status, settled
from tests.support.cluster import WRITE_VERBS, request_counts


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]  # 20 samples, shuffled order does not matter
    assert figures.percentile(reversed(values), 50) == 10.0
    assert figures.percentile(values, 99) == 20.0
    assert figures.percentile(values, 100) == 20.0
    assert figures.percentile([3.0], 99) == 3.0
    assert figures.percentile([], 50) is None


def test_per_minute() -> None:
    assert figures.per_minute(30, 60) == 30.0
    assert figures.per_minute(11, 20.0) == 33.0


PROMETHEUS_METRICS = """\
# HELP prometheus_http_requests_total Counter of HTTP requests.
# TYPE prometheus_http_requests_total counter
prometheus_http_requests_total{code="200",handler="/-/ready"} 40
prometheus_http_requests_total{code="200",handler="/api/v1/query"} 120
prometheus_http_requests_total{code="400",handler="/api/v1/query"} 2
prometheus_http_requests_total{code="200",handler="/api/v1/query_range"} 5
prometheus_http_requests_total{code="200",handler="/metrics"} 9
prometheus_http_request_duration_seconds_count{handler="/api/v1/query"} 999
"""


def test_prometheus_queries_counts_only_query_handlers() -> None:
    assert figures.prometheus_queries(PROMETHEUS_METRICS) == 127


APISERVER_METRICS = """\
apiserver_request_total{code="200",component="apiserver",dry_run="",group="keda.sh",resource="scaledobjects",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 10
apiserver_request_total{code="429",component="apiserver",dry_run="",group="keda.sh",resource="scaledobjects",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="scale",verb="GET",version="v1"} 7
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="LIST",version="v1"} 1
apiserver_request_duration_seconds_count{group="",resource="pods",verb="LIST"} 50
"""


def test_request_counts_sum_over_codes_per_verb_and_resource() -> None:
    counts = request_counts(APISERVER_METRICS)
    assert counts == {
        ("PATCH", "keda.sh", "scaledobjects", "status"): 12,
        ("GET", "apps", "deployments", "scale"): 7,
        ("LIST", "", "pods", ""): 1,
    }


def test_request_summary_per_minute_with_writes_apart() -> None:
    before = {("PATCH", "keda.sh", "scaledobjects", "status"): 2, ("GET", "apps", "deployments", "scale"): 7}
    after = {("PATCH", "keda.sh", "scaledobjects", "status"): 32, ("GET", "apps", "deployments", "scale"): 17,
             ("LIST", "", "pods", ""): 0}
    delta = figures.request_delta(before, after)
    assert delta == {("PATCH", "keda.sh", "scaledobjects", "status"): 30, ("GET", "apps", "deployments", "scale"): 10}
    summary = figures.request_summary(delta, 30.0, WRITE_VERBS)
    assert summary["api_requests_per_minute"] == 80.0
    assert summary["api_writes_per_minute"] == 60.0
    assert list(summary["api_busiest_per_minute"]) == ["PATCH keda.sh/scaledobjects/status", "GET apps/deployments/scale"]


def test_ratios_against_flowkeeper() -> None:
    by_system = {
        "flowkeeper": {"idle": {"prometheus_queries_per_minute": 132.0, "api_writes_per_minute": 0.0,
                                "control_plane_cpu_seconds": {"kube-apiserver": 1.5}},
                       "reaction_seconds": {"p99": 5.0}},
        "keda-min0": {"idle": {"prometheus_queries_per_minute": 1980.0, "api_writes_per_minute": 300.0,
                               "control_plane_cpu_seconds": {"kube-apiserver": 15.0}},
                      "reaction_seconds": {"p99": 16.0}},
        "keda-min1": {"failed": "TimeoutError: ..."},
    }
    result = figures.ratios(by_system)
    assert set(result) == {"keda-min0", "keda-min1"}
    assert result["keda-min0"]["idle.prometheus_queries_per_minute"] == 15.0
    assert result["keda-min0"]["reaction_seconds.p99"] == 3.2
    assert result["keda-min0"]["idle.control_plane_cpu_seconds.kube-apiserver"] == 10.0
    assert result["keda-min0"]["idle.api_writes_per_minute"] is None  # a ratio to 0 says nothing
    assert all(v is None for v in result["keda-min1"].values())
    assert figures.ratios({"keda-min0": {}}) == {}


def test_scaled_object_is_the_flow_as_keda_writes_it() -> None:
    obj = scaled_object("ns", "flow-00001", "http://127.0.0.1:9090", 'sum(q{queue="ns-flow-00001"})',
                        per_replica=100, min_replicas=0, max_replicas=20, poll=5)
    assert obj["apiVersion"] == "keda.sh/v1alpha1" and obj["kind"] == "ScaledObject"
    assert obj["metadata"] == {"name": "flow-00001", "namespace": "ns"}
    spec = obj["spec"]
    assert spec["scaleTargetRef"] == {"name": "flow-00001"}
    assert (spec["pollingInterval"], spec["minReplicaCount"], spec["maxReplicaCount"]) == (5, 0, 20)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["threshold"] == "100"  # KEDA reads its metadata as strings
    assert "activationThreshold" not in trigger["metadata"]  # default 0: the idle depth 50 is active


def test_system_variants() -> None:
    assert system("flowkeeper", 200, 300) == System("flowkeeper")
    assert system("keda-min0", 200, 300) == System("keda-min0", min_replicas=0)
    assert system("keda-min1-raised", 200, 300) == System("keda-min1-raised", min_replicas=1, qps=200, burst=300)
    assert "default API limit (qps 20 / burst 30)" in system("keda-min0", 200, 300).label()
    assert "raised API limit (qps 200 / burst 300)" in system("keda-min0-raised", 200, 300).label()


def test_chart_series_and_table_skip_what_was_not_measured() -> None:
    doc = {"sizes": {
        "1000": {"systems": {"flowkeeper": {"idle": {"prometheus_queries_per_minute": 132.0, "seconds": 60.0,
                                                     "cpu_seconds_total": 3.0, "rss_mb_total": 150.0,
                                                     "control_plane_cpu_seconds": {"kube-apiserver": 2.0}},
                                            "reaction_seconds": {"p50": 3.0, "p99": 5.5}, "burst": {"seconds": 6.0, "flows": 100}},
                             "keda-min0": {"failed": "TimeoutError: 10 of 1000 HPAs had read their metric"}}},
        "100": {"systems": {"flowkeeper": {"idle": {"prometheus_queries_per_minute": 132.0, "seconds": 60.0,
                                                    "cpu_seconds_total": 1.0, "rss_mb_total": 100.0},
                                           "reaction_seconds": {"p50": 2.8, "p99": 5.4}}}}}}
    assert series(doc, "idle.prometheus_queries_per_minute") == {"flowkeeper": [(100, 132.0), (1000, 132.0)]}
    rows = table(doc).splitlines()
    assert rows[2].startswith("| 100 | flowkeeper | 132 |")
    assert "failed: TimeoutError" in rows[4]


def test_the_flow_watch_times_the_moment_every_flow_holds_for_good() -> None:
    """wait_all's time: the latest start of each flow's last run of satisfying states."""
    watch = FlowStatusWatch.__new__(FlowStatusWatch)  # no cluster: only the recorded events
    watch._lock = threading.Lock()
    watch.events = {
        "a": [(1.0, ("", "", "")), (2.0, ("1", "1", "0")), (5.0, ("1", "1", "1"))],
        "b": [(1.5, ("1", "1", "1")), (3.0, ("1", "3", "1")), (4.0, ("1", "1", "1"))],
    }
    assert watch._all_since(2, has_status) == 2.0
    assert watch._all_since(2, settled) == 5.0  # b settled at 1.5, left it at 3, back for good at 4
    assert watch._all_since(3, has_status) is None  # a flow not seen yet
    watch.events["b"].append((6.0, ("1", "2", "1")))
    assert watch._all_since(2, settled) is None  # b is not settled now
