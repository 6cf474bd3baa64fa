"""pytest fixtures: one real Prometheus and one controllable exporter per test session.

Tests share them, so each test uses label values of its own (see `unique`) and the `fresh_exporter`
fixture, which empties the exporter before and after the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.exporter import MetricsExporter
from tests.support.prometheus import LocalPrometheus


@pytest.fixture(scope="session")
def exporter() -> Iterator[MetricsExporter]:
    with MetricsExporter() as running:
        yield running


@pytest.fixture(scope="session")
def prometheus(exporter: MetricsExporter) -> Iterator[LocalPrometheus]:
    local = LocalPrometheus(targets=[exporter.target])
    local.check_config()  # promtool's message beats a crash log when the config is wrong
    with local.start() as running:
        running.wait_for('up{job="exporter"} == 1')
        yield running


@pytest.fixture
def fresh_exporter(exporter: MetricsExporter) -> Iterator[MetricsExporter]:
    exporter.clear()
    yield exporter
    exporter.clear()


@pytest.fixture
def unique() -> str:
    """A short prefix for this test's label values: series of earlier tests stay in Prometheus for a
    while (rate windows look back), so tests must never share names."""
    return f"t{uuid.uuid4().hex[:6]}"
