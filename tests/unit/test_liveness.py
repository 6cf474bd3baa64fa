"""The liveness probe fails when the shared loop died or stopped coming round (kopf's own would not)."""

from __future__ import annotations

import asyncio
import time

import kopf
import pytest

from flowkeeper.controller.loop import FlowController
from flowkeeper.controller.store import ClusterStore
from flowkeeper.handlers.operator import LOOP_STALL_SECONDS, loop_alive


def probe_with(loop_body, *, stopped: bool = False, last_iteration_ago: float = 0.0, leader=None, stall_limit: float | None = None):
    """Runs the probe against a real loop task running `loop_body`, after it had its chance to run."""

    async def scenario():
        memo = kopf.Memo()
        memo.controller = FlowController(ClusterStore(), gateway=None)
        memo.controller.last_iteration = time.monotonic() - last_iteration_ago
        memo.stopped = asyncio.Event()
        memo.loop_task = asyncio.create_task(loop_body(), name="flowkeeper-loop")
        memo.tasks = [memo.loop_task]
        memo.leader = leader
        memo.lease_duration, memo.request_timeout = 15.0, 30.0
        if stall_limit is not None:
            memo.loop_stall_seconds = stall_limit
        await asyncio.sleep(0.01)
        if stopped:
            memo.stopped.set()
        try:
            return await loop_alive(memo=memo)
        finally:
            memo.loop_task.cancel()

    return asyncio.run(scenario())


async def running_forever() -> None:
    await asyncio.sleep(3600)


async def crashing() -> None:
    raise RuntimeError("boom")


def test_a_loop_that_comes_round_is_alive() -> None:
    assert probe_with(running_forever, last_iteration_ago=2.0) == pytest.approx(2.0, abs=0.5)


def test_a_stuck_loop_fails_the_probe() -> None:
    with pytest.raises(kopf.PermanentError, match="not come round"):
        probe_with(running_forever, last_iteration_ago=LOOP_STALL_SECONDS + 1)


def test_the_stall_limit_is_the_operators_setting() -> None:
    # --loop-stall-seconds=20: a loop silent for 25 s is stuck, one silent for 15 s is not.
    with pytest.raises(kopf.PermanentError, match="not come round for 25s"):
        probe_with(running_forever, last_iteration_ago=25.0, stall_limit=20.0)
    assert probe_with(running_forever, last_iteration_ago=15.0, stall_limit=20.0) == pytest.approx(15.0, abs=0.5)
    assert LOOP_STALL_SECONDS == 180.0  # the default


def test_a_dead_loop_fails_the_probe_with_its_error() -> None:
    with pytest.raises(kopf.PermanentError, match="boom"):
        probe_with(crashing)


def test_a_loop_that_ended_because_the_operator_stops_is_not_a_failure() -> None:
    async def finished() -> None:
        return None

    assert probe_with(finished, stopped=True) == pytest.approx(0.0, abs=0.5)


class SilentElector:
    """An elector whose lease call hangs: it has not tried the lease for a long time."""

    def __init__(self, silent_for: float) -> None:
        self.silent_for = silent_for

    def seconds_since_attempt(self) -> float:
        return self.silent_for


def test_a_stuck_elector_fails_the_probe() -> None:
    # Regression: a hung lease call kept a replica a standby forever, and liveness did not see it.
    assert probe_with(running_forever, leader=SilentElector(5.0)) == pytest.approx(0.0, abs=0.5)
    with pytest.raises(kopf.PermanentError, match="elector"):
        probe_with(running_forever, leader=SilentElector(2 * 15 + 2 * 30 + 1))


def test_every_handler_of_ours_is_a_coroutine() -> None:
    # kopf runs a plain `def` in its thread pool, beside the loop's state; ours all run on the loop.
    import inspect

    import flowkeeper.handlers.operator  # noqa: F401 - registers the handlers

    registry = kopf.get_default_registry()
    ours = [h for group in (registry._activities, registry._watching) for h in group.get_all_handlers()
            if h.fn.__module__.startswith("flowkeeper.")]
    assert {h.id for h in ours} >= {"configure", "stop", "loop"}
    assert all(inspect.iscoroutinefunction(h.fn) for h in ours), [h.id for h in ours if not inspect.iscoroutinefunction(h.fn)]
