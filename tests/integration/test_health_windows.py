"""The long default windows (queue growing for 10 minutes, 1-hour baselines) without waiting an hour:
a TSDB is backfilled with `promtool tsdb create-blocks-from openmetrics` at real recent timestamps,
a real Prometheus serves it, and the operator's own queries and health rules read it with the
default spec.health."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from flowkeeper.adapters.prometheus import FlowTarget, PrometheusSignals
from flowkeeper.api.v1alpha1 import IntegrationFlowSpec
from flowkeeper.domain.health import assess
from tests.support.prometheus import LocalPrometheus, find_tool

pytestmark = pytest.mark.prometheus

STEP = 15  # seconds between backfilled samples, a common scrape interval
HISTORY = 65 * 60


def series_lines(name: str, labels: str, value_at, now: float) -> list[str]:
    start = now - HISTORY
    return [f"{name}{{{labels}}} {value_at(t - start, now - t):.6f} {t:.3f}" for t in (start + i * STEP for i in range(HISTORY // STEP + 1))]


def backfill(now: float, path: Path) -> None:
    def counter(rate_before: float, rate_after: float, switch_ago: float):
        # A counter whose rate changes `switch_ago` seconds before now.
        return lambda elapsed, ago: rate_before * elapsed if ago >= switch_ago else (
            rate_before * (HISTORY - switch_ago) + rate_after * (elapsed - (HISTORY - switch_ago))
        )

    lines: list[str] = []
    # A queue flat at 100, then growing for the last 12 minutes; another one flat all along.
    lines += series_lines("rabbitmq_queue_messages_ready", 'vhost="/",queue="growing"',
                          lambda elapsed, ago: 100 + max(0.0, 12 * 60 - ago) * 0.5, now)
    lines += series_lines("rabbitmq_queue_messages_ready", 'vhost="/",queue="flat"', lambda e, a: 100, now)
    # An integration at 10 msg/s and 0.1 s per message for an hour, then 2 msg/s at 0.5 s for 3 minutes.
    lines += series_lines("flowkeeper_messages_processed_total", 'namespace="shop",integration="slow",status="success"', counter(10, 2, 180), now)
    lines += series_lines("flowkeeper_processing_seconds_count", 'namespace="shop",integration="slow"', counter(10, 2, 180), now)
    lines += series_lines("flowkeeper_processing_seconds_sum", 'namespace="shop",integration="slow"', counter(1.0, 1.0, 180), now)
    lines += series_lines("flowkeeper_last_success_timestamp_seconds", 'namespace="shop",integration="slow"', lambda e, a: now - a, now)
    path.write_text("\n".join(lines) + "\n# EOF\n")


def flow(name: str, queue: str) -> FlowTarget:
    spec = IntegrationFlowSpec.model_validate(
        {"scaleTargetRef": {"name": name}, "source": {"broker": "rabbitmq", "queue": queue, "integration": name}}
    )
    return FlowTarget(f"shop/{name}", "shop", name, spec)


def test_default_windows_read_from_backfilled_history(tmp_path: Path) -> None:
    now = time.time() - 2
    data = tmp_path / "data"
    backfill(now, tmp_path / "history.om")
    subprocess.run([find_tool("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(tmp_path / "history.om"), str(data)],
                   check=True, capture_output=True, text=True)
    flows = [flow("growing", "growing"), flow("flat", "flat"), flow("slow", "slow")]
    with LocalPrometheus([], data_dir=data) as prometheus:
        reader = PrometheusSignals(prometheus.url)  # the default rate window, 1m
        try:
            result = reader.collect(flows)
        finally:
            reader.close()
    assert result.failures == {}
    growing, flat, slow = (result.signals[f.key] for f in flows)

    assert growing.queue_growing_seconds is not None and growing.queue_growing_seconds >= 600
    assert flat.queue_growing_seconds == 0
    assert slow.throughput == pytest.approx(2.0, rel=0.1)
    assert slow.throughput_baseline == pytest.approx(9.6, rel=0.1)
    assert slow.latency_seconds == pytest.approx(0.5, rel=0.1)
    assert slow.latency_baseline == pytest.approx(0.1, rel=0.35)

    defaults = flows[0].spec.health  # queueGrowthWindow 10m, baselineWindow 1h
    assert defaults.queue_growth_window == "10m" and defaults.baseline_window == "1h"
    judged_growing = assess(defaults, growing, ready_replicas=1, desired_replicas=1, scaling_limited=False, now=now)
    assert "QueueGrowing" in judged_growing.reason
    judged_flat = assess(defaults, flat, ready_replicas=1, desired_replicas=1, scaling_limited=False, now=now)
    assert judged_flat.healthy
    backlog = slow.__class__(**{**slow.__dict__, "queue_depth": 500.0})  # work waits, so throughput counts
    judged_slow = assess(defaults, backlog, ready_replicas=1, desired_replicas=1, scaling_limited=False, now=now)
    assert {"ThroughputOffBaseline", "LatencyHigh"} <= {finding.signal for finding in judged_slow.findings}
