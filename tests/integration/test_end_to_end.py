"""The demo's story as a test: a real RabbitMQ backlog drained by consumers Flowkeeper scales, and a
configuration error that pauses the flow with the backlog kept, then a fix that resumes it."""

from __future__ import annotations

import pytest

from examples.demo.run import Demo, Settings

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus, pytest.mark.rabbitmq]

DRAIN_BOUND_S = 90  # 3000 orders, 8 consumers at 20/s: about 20 s of work, plus scaling and the pause


def test_backlog_drains_no_message_is_lost_and_a_pause_keeps_the_backlog(cluster, namespace, tmp_path) -> None:
    settings = Settings(burst=3000, rate_per_replica=20, dead_letter_fraction=0.01, out=tmp_path, drain_timeout=DRAIN_BOUND_S)
    with Demo(settings, cluster=cluster, namespace=namespace) as demo:
        summary = demo.run()
        chart = demo.write_outputs(summary)
        samples = demo.timeline.samples
        max_replicas = demo.max_replicas

    assert summary["lost"] == 0, summary
    assert summary["published"] == summary["consumed"] + summary["dead_lettered"] + summary["queued"]
    assert summary["queued"] == 0
    assert summary["dead_lettered"] > 0  # the dead-letter queue got the rejected orders
    assert summary["time_to_first_scale_up_s"] is not None and summary["time_to_first_scale_up_s"] < 15
    assert summary["peak_desired_replicas"] == max_replicas
    assert all((s.desired or 0) <= max_replicas and (s.ready or 0) <= max_replicas for s in samples)

    paused = [s for s in samples if s.phase == "Paused"]
    assert len(paused) >= 5, "the pause was observed"
    backlogs = [s.backlog for s in paused if s.backlog is not None]
    assert backlogs == sorted(backlogs), "while paused the backlog only waits (or grows), never drains"
    assert all(s.ready == 0 for s in paused[1:])  # consumers stopped
    assert samples[-1].backlog == 0 and samples[-1].phase != "Paused"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
