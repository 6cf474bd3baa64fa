"""The leader-election rules: who may take the Lease, and when."""

import pytest
from hypothesis import given, strategies as st

from flowkeeper.domain.leadership import LeaseRecord, LeaseTiming, Move, Observation, claimed, next_move, released


def record(holder, renew="t1", duration=15, transitions=0, acquire="t0"):
    return LeaseRecord(holder=holder, renew_time=renew, duration_seconds=duration, transitions=transitions, acquire_time=acquire, version="7")


def test_no_lease_is_created():
    assert next_move(None, Observation(), "a", now=0) is Move.create


def test_the_holder_renews():
    lease = record("a")
    assert next_move(lease, Observation().seen(lease, 0), "a", now=1000) is Move.renew


def test_a_live_holder_is_waited_for_until_a_whole_duration_passes_without_a_renewal():
    lease = record("a", duration=15)
    seen = Observation().seen(lease, now=100)
    assert next_move(lease, seen, "b", now=114.9) is Move.wait
    assert next_move(lease, seen, "b", now=115) is Move.take_over


def test_every_renewal_restarts_the_standby_wait():
    seen = Observation().seen(record("a", renew="t1"), now=100)
    renewed = record("a", renew="t2")
    seen = seen.seen(renewed, now=110)
    assert next_move(renewed, seen, "b", now=124) is Move.wait
    assert next_move(renewed, seen, "b", now=125) is Move.take_over


def test_seeing_the_same_renewal_again_does_not_restart_the_wait():
    lease = record("a", renew="t1")
    seen = Observation().seen(lease, now=100).seen(lease, now=110)
    assert seen.changed_at == 100


def test_a_released_lease_is_taken_at_once():
    lease = record(None, duration=1)
    assert next_move(lease, Observation().seen(lease, now=5), "b", now=5) is Move.take_over
    assert next_move(record(""), Observation().seen(record(""), now=5), "b", now=5) is Move.take_over


def test_the_holders_clock_is_never_compared_with_ours():
    # A renewTime far in the past (skewed clock) does not make a live lease look expired.
    lease = record("a", renew="1970-01-01T00:00:00.000000Z")
    assert next_move(lease, Observation().seen(lease, now=10_000), "b", now=10_001) is Move.wait


def test_a_new_holder_counts_a_transition_and_a_new_acquire_time():
    spec = claimed(record("a", transitions=3), "b", 15)
    assert spec == {"holderIdentity": "b", "leaseDurationSeconds": 15, "leaseTransitions": 4, "acquireTime": None}


def test_renewing_keeps_the_acquire_time_and_transitions():
    spec = claimed(record("a", transitions=3, acquire="t0"), "a", 15)
    assert spec["leaseTransitions"] == 3 and spec["acquireTime"] == "t0"


def test_taking_a_released_lease_is_not_counted_twice():
    assert claimed(record(None, transitions=2), "b", 15)["leaseTransitions"] == 2
    assert claimed(None, "b", 15)["leaseTransitions"] == 0


def test_release_gives_the_lease_up():
    spec = released(record("a", transitions=2))
    assert spec["holderIdentity"] is None and spec["leaseDurationSeconds"] == 1 and spec["leaseTransitions"] == 2


def test_timing_for_a_duration_stops_the_leader_before_a_standby_may_start():
    timing = LeaseTiming.for_duration(15)
    assert (timing.retry, timing.renew_deadline, timing.duration) == (2.0, 10.0, 15)


def test_inconsistent_timing_is_refused():
    with pytest.raises(ValueError):
        LeaseTiming(duration=10, renew_deadline=12, retry=2)


@given(st.floats(min_value=2, max_value=300))
def test_any_duration_gives_a_consistent_timing(duration):
    timing = LeaseTiming.for_duration(duration)
    assert 0 < timing.retry < timing.renew_deadline < timing.duration


@given(
    renewals=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=20),  # milliseconds
    duration=st.integers(min_value=1, max_value=60),
)
def test_a_standby_never_takes_over_within_a_duration_of_a_renewal_it_saw(renewals, duration):
    seen, lease = Observation(), None
    for i, at in enumerate(sorted(renewals)):
        lease = record("a", renew=f"t{i}", duration=duration)
        seen = seen.seen(lease, at / 1000)
        last = at / 1000
    assert next_move(lease, seen, "b", now=last + duration - 0.001) is Move.wait
    assert next_move(lease, seen, "b", now=last + duration + 0.001) is Move.take_over
