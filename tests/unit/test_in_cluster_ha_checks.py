"""The checks of the in-cluster HA test on Prometheus range queries: which pods' write counters moved
at each step, across restarts (a gap, or a counter that fell); which steps had two lasting leaders."""

from __future__ import annotations

from tests.support.operator_release import concurrent_leaders, writes_by_step


def series(pod: str, *points: tuple[float, float]) -> dict:
    return {"metric": {"pod": pod}, "values": [[t, str(v)] for t, v in points]}


def test_a_counter_that_moves_is_a_write_at_that_step() -> None:
    assert writes_by_step([series("a", (1, 3), (2, 3), (3, 4), (4, 6))]) == {3.0: {"a"}, 4.0: {"a"}}


def test_two_pods_writing_in_one_step_are_both_seen() -> None:
    found = writes_by_step([series("a", (1, 1), (2, 2)), series("b", (1, 0), (2, 1))])
    assert found == {2.0: {"a", "b"}}


def test_a_restarted_container_counts_from_zero() -> None:
    # after a gap (target down while the container restarted) the same value is all new writes
    assert writes_by_step([series("a", (1, 3), (9, 3))]) == {9.0: {"a"}}
    # a counter below its last value is a new process too
    assert writes_by_step([series("a", (1, 5), (2, 2), (3, 2))]) == {2.0: {"a"}}
    # a new process that has not written yet is no write
    assert writes_by_step([series("a", (1, 5), (9, 0))]) == {}


def test_a_handover_whose_old_series_ends_is_not_two_leaders() -> None:
    old = series("a", (1, 1), (2, 1), (3, 1))  # its last 1 lasted until marked stale
    new = series("b", (3, 1), (4, 1), (5, 1), (6, 1))
    assert concurrent_leaders([old, new]) == []


def test_two_replicas_claiming_on_and_on_are_two_leaders() -> None:
    a = series("a", *[(t, 1) for t in range(1, 8)])
    b = series("b", *[(t, 1) for t in range(4, 8)])
    assert concurrent_leaders([a, b]) == [(4.0, {"a", "b"}), (5.0, {"a", "b"})]
