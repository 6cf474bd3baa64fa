"""pytest fixture: the real kube-state-metrics, started when a test first asks for it and scraped by
the session's Prometheus from then on (job `kube-state-metrics`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import LocalCluster
from tests.support.kube_state_metrics import JOB, KubeStateMetrics
from tests.support.prometheus import LocalPrometheus


@pytest.fixture(scope="session")
def kube_state_metrics(cluster: LocalCluster, prometheus: LocalPrometheus) -> Iterator[KubeStateMetrics]:
    with KubeStateMetrics(cluster) as ksm:
        prometheus.add_scrape_job(ksm.scrape_job())
        prometheus.wait_for(f'up{{job="{JOB}"}} == 1')
        yield ksm
        prometheus.remove_scrape_job(JOB)
