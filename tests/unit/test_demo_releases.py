"""The demo's consumer releases are the consumer's CONSUMER_CHECK: each names a check the consumer can
load (examples/consumer/settings.load_check), and the one the story means. And the demo, whose
consumers are real pods, needs root for the real node: without it, it says so and starts nothing."""

from __future__ import annotations

import pytest

from examples.consumer.settings import load_check
from examples.demo import orders
from examples.demo.run import RELEASE_CHECKS, Demo

WITH_TIME = orders.order(1)  # one order in 4 has a delivery time: number 1 does


@pytest.mark.parametrize(("version", "release"), [("1.0", orders.release_1_0), ("1.1", orders.release_1_1), ("1.2", orders.release_1_2)])
def test_each_release_loads_as_the_consumer_loads_it(version: str, release: orders.Release) -> None:
    assert load_check(Demo.release_check(version)) is release


def test_only_release_1_1_has_the_data_bug() -> None:
    assert b"T09:30" in WITH_TIME
    verdicts = {version: load_check(Demo.release_check(version))(WITH_TIME) for version in RELEASE_CHECKS}
    assert verdicts == {"1.0": None, "1.1": orders.INVALID_DATE, "1.2": None}


def test_the_demo_stops_and_says_why_when_not_root(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from examples.demo import run

    monkeypatch.setattr(run.os, "geteuid", lambda: 1000)
    assert run.main([]) == 2  # before anything is started
    assert "needs root" in capsys.readouterr().err
