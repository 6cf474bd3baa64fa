"""One flow's slow write never holds up the others' passes."""

from __future__ import annotations

import asyncio
import threading

from flowkeeper.adapters.kubernetes import Listing
from flowkeeper.controller.loop import FlowController
from flowkeeper.controller.store import ClusterStore
from tests.unit.test_executor import MemoryApi
from tests.unit.test_store import deployment, flow


class OneSlowFlow(MemoryApi):
    """Every status write of flow `slow` hangs until released; the other flow's go through."""

    def __init__(self) -> None:
        super().__init__(poll="1s")
        self.release = threading.Event()
        self.fast_writes = 0

    def list_objects(self, kind, namespaces, keep=None):  # bodies: the store takes them as they are
        if kind == "flows":
            return Listing([flow("slow", deployment="a", poll="1s"), flow("fast", deployment="b", poll="1s")])
        return Listing([deployment("a"), deployment("b")])

    def patch_flow_status(self, namespace, name, status, resource_version):
        if name == "slow":
            self.release.wait(10)
        else:
            self.fast_writes += 1
        body = flow(name, deployment="a" if name == "slow" else "b", poll="1s", version=self.version + 1)
        self.version += 1
        body["status"] = status
        return body


def test_a_hanging_write_of_one_flow_does_not_stop_the_others() -> None:
    # Regression: the loop waited for every write of a pass, so one slow write held up every flow.
    api = OneSlowFlow()
    controller = FlowController(ClusterStore(), api)

    async def scenario() -> None:
        stopped = asyncio.Event()
        loop = asyncio.create_task(controller.run_forever(stopped))
        await asyncio.sleep(3.5)
        passes_while_hanging = controller.passes
        assert "uid-ns-slow" in controller.writing  # still being written, not planned again
        api.release.set()
        stopped.set()
        await asyncio.wait_for(loop, 10)
        assert passes_while_hanging >= 3

    asyncio.run(scenario())
    assert api.fast_writes >= 1


class CountingSignals:
    def __init__(self) -> None:
        self.read: list[set[str]] = []

    def collect(self, targets):
        from flowkeeper.adapters.prometheus import PassResult
        from flowkeeper.domain.signals import FlowSignals

        self.read.append({t.name for t in targets})
        return PassResult({t.key: FlowSignals(observed_at=0.0, queue_depth=50.0) for t in targets}, {}, 1, 0.0)


def test_a_flow_being_written_is_not_read_for_either() -> None:
    """It is not planned until its write is done: asking Prometheus for it would be for nothing."""
    api = OneSlowFlow()
    signals = CountingSignals()
    controller = FlowController(ClusterStore(), api, signals)

    async def scenario() -> None:
        stopped = asyncio.Event()
        loop = asyncio.create_task(controller.run_forever(stopped))
        while "uid-ns-slow" not in controller.writing:
            await asyncio.sleep(0.01)
        reads_before = len(signals.read)
        await asyncio.sleep(2.5)  # passes every second; `slow` is due in each but still being written
        while_hanging = signals.read[reads_before:]
        api.release.set()
        while "uid-ns-slow" in controller.writing:
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.5)
        stopped.set()
        await asyncio.wait_for(loop, 10)
        assert len(while_hanging) >= 2 and all(read == {"fast"} for read in while_hanging), while_hanging
        assert "slow" in set().union(*signals.read[reads_before + len(while_hanging):])  # read again once written

    asyncio.run(scenario())
