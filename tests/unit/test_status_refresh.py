"""A busy flow's status is not rewritten on every pass: live numbers are restated at most every
STATUS_REFRESH_SECONDS, while news (a condition's status or reason, a new generation, a signal that
appears, reaches zero or doubles) is written at once (pure)."""

from __future__ import annotations

import math

from hypothesis import given, strategies as st

from flowkeeper.api.v1alpha1 import DEPLOYMENT
from flowkeeper.domain.flow import flow_from_body, target_from_body
from flowkeeper.domain.planner import STATUS_REFRESH_SECONDS, FlowMemory, Inputs, moved_meaningfully, plan
from flowkeeper.domain.signals import FlowSignals
from tests.unit.test_store import deployment, flow

START = 1_000_000.0
POLL = 5.0


class Flow:
    """One flow planned pass after pass, each plan's status stored as the API server would."""

    def __init__(self) -> None:
        self.body = flow(poll="5s")
        self.body["status"] = {}
        self.memory = FlowMemory()
        self.writes: list[float] = []

    def pass_at(self, now: float, **values) -> dict:
        signals = FlowSignals(observed_at=now, **{"queue_depth": 50.0, "throughput": 20.0, **values})
        made = plan(
            Inputs(flow=flow_from_body(self.body), target=target_from_body(deployment(replicas=1, ready=1), DEPLOYMENT),
                   signals=signals, metrics_enabled=True, memory=self.memory, monotonic=now),
            now=now,
        )
        self.memory = made.memory
        if made.status_changed(self.body["status"]):
            self.writes.append(now)
            self.body = {**self.body, "status": made.status}
        return made.status


def condition(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_small_moves_of_a_busy_flow_are_written_at_most_once_a_minute() -> None:
    f = Flow()
    passes = 60  # five minutes at 5 s
    for i in range(passes):
        # The backlog and the rate wobble by up to 40 % every pass: always changed, never doubled.
        f.pass_at(START + i * POLL, queue_depth=50.0 + (i % 5) * 5, throughput=20.0 + (i % 7))
    minutes = passes * POLL / STATUS_REFRESH_SECONDS
    assert len(f.writes) <= 1 + math.ceil(minutes)
    assert len(f.writes) >= minutes  # the status still follows, once a minute
    gaps = [b - a for a, b in zip(f.writes, f.writes[1:])]
    assert all(gap >= STATUS_REFRESH_SECONDS for gap in gaps)


def test_an_idle_flow_is_never_rewritten() -> None:
    f = Flow()
    for i in range(100):
        f.pass_at(START + i * POLL)
    assert f.writes == [START]


def test_a_doubled_backlog_is_written_at_once_between_refreshes() -> None:
    f = Flow()
    f.pass_at(START)
    status = f.pass_at(START + POLL, queue_depth=100.0)
    assert f.writes == [START, START + POLL]
    assert status["signals"]["queueDepth"] == 100.0


def test_a_backlog_that_empties_is_written_at_once() -> None:
    f = Flow()
    f.pass_at(START)
    status = f.pass_at(START + POLL, queue_depth=0.0, throughput=0.0)
    assert status["signals"]["queueDepth"] == 0.0 and f.writes[-1] == START + POLL


def test_a_condition_that_turns_is_written_at_once_and_its_live_message_waits_for_the_refresh() -> None:
    f = Flow()
    f.pass_at(START, error_ratio=0.0)
    turned = f.pass_at(START + POLL, error_ratio=0.5)
    assert (condition(turned, "Healthy")["status"], condition(turned, "Healthy")["reason"]) == ("False", "ErrorRatioHigh")
    assert f.writes[-1] == START + POLL
    message = condition(turned, "Healthy")["message"]

    same_news = f.pass_at(START + 2 * POLL, error_ratio=0.6)  # same reason, another number
    assert condition(same_news, "Healthy")["message"] == message

    refreshed = f.pass_at(START + POLL + STATUS_REFRESH_SECONDS, error_ratio=0.6)
    assert condition(refreshed, "Healthy")["message"] != message
    assert "60.0%" in condition(refreshed, "Healthy")["message"]


def test_a_new_generation_is_written_at_once() -> None:
    f = Flow()
    f.pass_at(START)
    f.body = {**f.body, "metadata": {**f.body["metadata"], "generation": 2}}
    status = f.pass_at(START + POLL)
    assert status["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in status["conditions"])
    assert f.writes[-1] == START + POLL


readings = st.floats(min_value=0.0, max_value=1e12, allow_nan=False)


@given(st.dictionaries(st.sampled_from(["queueDepth", "throughput", "errorRatio"]), readings))
def test_the_same_values_never_moved(values) -> None:
    assert not moved_meaningfully(values, dict(values))


@given(readings.filter(lambda v: v > 0))
def test_reaching_or_leaving_zero_always_moved(value) -> None:
    assert moved_meaningfully({"queueDepth": 0.0}, {"queueDepth": value})
    assert moved_meaningfully({"queueDepth": value}, {"queueDepth": 0})


@given(st.floats(min_value=1e-9, max_value=1e9), st.floats(min_value=1.0, max_value=1.99))
def test_less_than_double_is_not_a_move_either_way(value, factor) -> None:
    assert not moved_meaningfully({"q": value}, {"q": value * factor})
    assert not moved_meaningfully({"q": value * factor}, {"q": value})


@given(st.floats(min_value=1e-9, max_value=1e9), st.floats(min_value=2.01, max_value=1e6))
def test_double_or_more_is_a_move_either_way(value, factor) -> None:
    assert moved_meaningfully({"q": value}, {"q": value * factor})
    assert moved_meaningfully({"q": value * factor}, {"q": value})


def test_a_signal_that_appears_or_goes_moved() -> None:
    assert moved_meaningfully({"queueDepth": 5}, {"queueDepth": 5, "cpuUtilization": 40.0})
    assert moved_meaningfully({"queueDepth": 5, "cpuUtilization": 40.0}, {"queueDepth": 5})


def test_a_value_that_is_not_a_number_counts_only_when_it_changed_and_the_rest_still_does() -> None:
    assert not moved_meaningfully({"note": "x", "queueDepth": 5}, {"note": "x", "queueDepth": 6})
    assert moved_meaningfully({"note": "x", "queueDepth": 5}, {"note": "y", "queueDepth": 5})
    assert moved_meaningfully({"note": "x", "queueDepth": 5}, {"note": "x", "queueDepth": 50})
