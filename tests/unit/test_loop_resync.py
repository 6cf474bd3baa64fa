"""The resync LIST every RESYNC_SECONDS runs beside the passes: a slow LIST holds up no flow, and
what it finds is applied when it is in."""

from __future__ import annotations

import asyncio
import threading

from flowkeeper.adapters.kubernetes import Listing
from flowkeeper.controller.loop import RESYNC_SECONDS, FlowController
from flowkeeper.controller.store import ClusterStore
from tests.unit.test_executor import MemoryApi
from tests.unit.test_store import Clock, deployment, flow


LATER = "1000000"  # the later LIST's version: past every write of the test


class SlowResync(MemoryApi):
    """The first LIST answers at once with flows a and b; later LISTs wait for `release` and no longer
    hold b (deleted while a watch was down)."""

    def __init__(self) -> None:
        super().__init__(poll="1s")
        self.release = threading.Event()
        self.lists = 0

    def list_objects(self, kind, namespaces, keep=None):  # bodies: the store takes them as they are
        if kind == "flows":
            self.lists += 1
            if self.lists == 1:
                return Listing([flow("a", deployment="a", poll="1s"), flow("b", deployment="b", poll="1s")], {None: "10"})
            self.release.wait(10)
            return Listing([flow("a", deployment="a", poll="1s")], {None: LATER})
        return Listing([deployment("a"), deployment("b")], {None: LATER if self.lists > 1 else "10"})

    def patch_flow_status(self, namespace, name, status, resource_version):
        self.version += 1
        body = flow(name, deployment=name, poll="1s", version=self.version)
        body["status"] = status
        return body


def test_passes_go_on_while_a_resync_lists_and_the_listing_is_applied_when_it_is_in() -> None:
    api, clock = SlowResync(), Clock()
    controller = FlowController(ClusterStore(clock), api, monotonic=clock)

    async def scenario() -> tuple[int, set[str], set[str]]:
        stopped = asyncio.Event()
        loop = asyncio.create_task(controller.run_forever(stopped))
        await asyncio.sleep(0.3)
        clock.now += RESYNC_SECONDS  # the next iteration starts the resync's LIST, which hangs
        passes_before = controller.passes
        for _ in range(30):
            clock.now += 1.0  # both flows due every second
            controller.store.wakeup.set()
            await asyncio.sleep(0.1)
        passes_while_listing = controller.passes - passes_before
        flows_while_listing = {f.name for f in controller.store.flows.values()}
        api.release.set()
        for _ in range(30):
            if {f.name for f in controller.store.flows.values()} == {"a"}:
                break
            clock.now += 1.0
            controller.store.wakeup.set()
            await asyncio.sleep(0.1)
        flows_after = {f.name for f in controller.store.flows.values()}
        stopped.set()
        await asyncio.wait_for(loop, 10)
        return passes_while_listing, flows_while_listing, flows_after

    passes_while_listing, flows_while_listing, flows_after = asyncio.run(scenario())
    assert api.lists == 2
    assert passes_while_listing >= 5  # the loop did not wait for the LIST
    assert flows_while_listing == {"a", "b"}
    assert flows_after == {"a"}  # b, gone from the newer LIST, dropped when it came in


def test_a_resync_still_listing_when_the_loop_stops_does_not_hold_it() -> None:
    api, clock = SlowResync(), Clock()
    controller = FlowController(ClusterStore(clock), api, monotonic=clock)

    async def scenario() -> None:
        stopped = asyncio.Event()
        loop = asyncio.create_task(controller.run_forever(stopped))
        await asyncio.sleep(0.3)
        clock.now += RESYNC_SECONDS
        controller.store.wakeup.set()
        await asyncio.sleep(0.3)
        stopped.set()
        controller.store.wakeup.set()
        await asyncio.wait_for(loop, 8)

    try:
        asyncio.run(scenario())
    finally:
        api.release.set()
    assert api.lists == 2
