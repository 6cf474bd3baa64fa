"""The loop schedules on the monotonic clock: a step of the wall clock neither stops passes nor runs
windows early."""

from __future__ import annotations

import asyncio

from flowkeeper.adapters.kubernetes import Listing
import time

from flowkeeper.controller.loop import FlowController
from flowkeeper.controller.store import ClusterStore
from tests.unit.test_executor import MemoryApi
from tests.unit.test_store import deployment, flow


class ListingApi(MemoryApi):
    def __init__(self) -> None:
        super().__init__(poll="1s")

    def list_objects(self, kind, namespaces, keep=None):  # bodies: the store takes them as they are
        return Listing([flow(poll="1s")] if kind == "flows" else [deployment()])


def test_a_wall_clock_step_back_of_an_hour_does_not_stop_the_passes() -> None:
    # Regression: scheduling on the wall clock stopped every pass for an hour after an NTP step back.
    wall = {"offset": 0.0}

    def wall_clock() -> float:
        return time.time() + wall["offset"]

    controller = FlowController(ClusterStore(), ListingApi(), wall_clock=wall_clock)

    async def scenario() -> None:
        stopped = asyncio.Event()
        loop = asyncio.create_task(controller.run_forever(stopped))
        await asyncio.sleep(1.2)
        wall["offset"] = -3600.0
        passes = controller.passes
        await asyncio.sleep(3.2)
        stopped.set()
        await asyncio.wait_for(loop, 5)
        assert controller.passes >= passes + 2

    asyncio.run(scenario())


class StandbyLeader:
    def __init__(self) -> None:
        self.changed = asyncio.Event()

    def is_leading(self) -> bool:
        return False


def test_a_standby_does_not_come_round_more_than_its_heartbeat() -> None:
    # Regression: a standby's wait was derived from flows that were due and never taken: a busy loop.
    controller = FlowController(ClusterStore(), ListingApi(), leader=StandbyLeader())
    spins = {"n": 0}
    original = controller._forget_plans

    def counting() -> None:
        spins["n"] += 1
        original()

    controller._forget_plans = counting

    async def scenario() -> None:
        stopped = asyncio.Event()
        loop = asyncio.create_task(controller.run_forever(stopped))
        await asyncio.sleep(2.0)
        stopped.set()
        await asyncio.wait_for(loop, 5)

    asyncio.run(scenario())
    assert 1 <= spins["n"] <= 2 and controller.passes == 0
