"""Which flows an event made due, as opposed to their own interval: only those may be planned again on
their last reading of signals (controller/readings.py)."""

from __future__ import annotations

from flowkeeper.controller.schedule import DueQueue


def interval(_: str) -> float:
    return 10.0


def test_a_flow_due_on_its_interval_is_not_due_by_event() -> None:
    queue = DueQueue()
    queue.postpone("a", 100.0)
    assert queue.take_due(100.0, interval) == ["a"]
    assert queue.by_event == frozenset()
    assert queue.take_due(110.0, interval) == ["a"]  # on the grid again
    assert queue.by_event == frozenset()


def test_an_event_brings_a_flow_forward_and_says_so_once() -> None:
    queue = DueQueue()
    queue.postpone("a", 110.0)
    queue.postpone("b", 110.0)
    queue.mark_due("a", 103.0)
    assert queue.take_due(103.0, interval) == ["a"]
    assert queue.by_event == frozenset({"a"})
    assert sorted(queue.take_due(110.0, interval)) == ["a", "b"]  # a's own interval: read afresh
    assert queue.by_event == frozenset()


def test_an_event_after_the_due_time_leaves_it_a_timed_pass() -> None:
    queue = DueQueue()
    queue.postpone("a", 100.0)
    queue.mark_due("a", 100.5)  # already due earlier: its interval came round, the reading is old
    assert queue.take_due(101.0, interval) == ["a"]
    assert queue.by_event == frozenset()


def test_a_postponed_read_is_read_afresh_and_a_write_retry_is_not() -> None:
    queue = DueQueue()
    queue.mark_due("a", 100.0)
    queue.postpone("a", 104.0)  # a failed read backs off: the next pass must ask Prometheus
    queue.retry_at("b", 104.0)  # a failed write retries: its reading is as good as it was
    assert sorted(queue.take_due(104.0, interval)) == ["a", "b"]
    assert queue.by_event == frozenset({"b"})


def test_a_forgotten_flow_is_not_remembered_as_woken() -> None:
    queue = DueQueue()
    queue.mark_due("a", 100.0)
    queue.forget("a")
    queue.postpone("a", 105.0)
    assert queue.take_due(105.0, interval) == ["a"]
    assert queue.by_event == frozenset()
