"""The ports tests/support/processes.py hands to the servers the tests start."""

from __future__ import annotations

import socket

from hypothesis import given
from hypothesis import strategies as st

from tests.support import processes
from tests.support.processes import free_port, port_slice


@given(st.integers(12000, 65535), st.data())
def test_slices_stay_below_the_ephemeral_range_and_workers_never_share_one(low, data) -> None:
    own = (low - 10000) // 1000 - 1  # workers gw0 .. gw(own - 1) have a slice each
    i, j = data.draw(st.lists(st.integers(0, own - 1), min_size=2, max_size=2, unique=True)) if own >= 2 else (0, 0)
    named = [port_slice(f"gw{i}", low), port_slice(f"gw{j}", low), port_slice("", low)]
    for ports in named:
        assert len(ports) == 1000 and ports.start >= 10000 and ports.stop <= low
    if own >= 2:
        assert not set(named[0]) & set(named[1])
    assert not (set(named[0]) | set(named[1])) & set(named[2])


@given(st.integers(0, 10**6), st.integers(12000, 65535))
def test_any_worker_gets_a_slice_below_the_ephemeral_range(n, low) -> None:
    ports = port_slice(f"gw{n}", low)
    assert len(ports) == 1000 and ports.start >= 10000 and ports.stop <= low and ports != port_slice("", low)


def test_no_room_below_the_ephemeral_range_gives_no_slice() -> None:
    assert not port_slice("gw0", 1024) and not port_slice("", 11999)


def test_a_port_held_by_someone_is_skipped(monkeypatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    ports = port_slice("gw3", processes._ephemeral_low())
    monkeypatch.setattr(processes, "_next_port", ports.start)
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports.start))
        given_out = free_port()
    assert given_out != ports.start and given_out in ports
    with socket.socket() as s:
        s.bind(("127.0.0.1", given_out))  # it really is free
