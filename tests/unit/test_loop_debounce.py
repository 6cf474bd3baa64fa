"""Watch events that arrive together make one pass (one Prometheus read), not one pass each."""

from __future__ import annotations

import asyncio

from flowkeeper.adapters.kubernetes import Listing
from flowkeeper.adapters.prometheus import PassResult
from flowkeeper.api.v1alpha1 import DEPLOYMENT
from flowkeeper.controller.loop import EVENT_DEBOUNCE_SECONDS, FlowController
from flowkeeper.controller.store import ClusterStore
from flowkeeper.domain.signals import FlowSignals
from tests.unit.test_executor import MemoryApi
from tests.unit.test_store import deployment, flow

FLOWS = 20


class Flows(MemoryApi):
    def list_objects(self, kind, namespaces, keep=None):  # bodies: the store takes them as they are
        if kind == "flows":
            return Listing([flow(f"f{i}", deployment=f"d{i}", poll="1h") for i in range(FLOWS)])
        return Listing([deployment(f"d{i}") for i in range(FLOWS)])

    def patch_flow_status(self, namespace, name, status, resource_version):
        self.version += 1
        body = flow(name, deployment=name.replace("f", "d"), poll="1h", version=self.version)
        body["status"] = status
        return body


class CountingSignals:
    def __init__(self) -> None:
        self.reads: list[int] = []

    def collect(self, targets):
        self.reads.append(len(targets))
        return PassResult({t.key: FlowSignals(observed_at=0.0, queue_depth=50.0) for t in targets}, {}, 1, 0.0)


def test_a_burst_of_deployment_events_is_one_pass() -> None:
    signals = CountingSignals()
    controller = FlowController(ClusterStore(), Flows(), signals)

    async def scenario() -> None:
        stopped = asyncio.Event()
        loop = asyncio.create_task(controller.run_forever(stopped))
        while not signals.reads:  # the first pass over every flow
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        first = len(signals.reads)
        # A rollout: every Deployment's readyReplicas moves, a few milliseconds apart.
        for i in range(FLOWS):
            controller.store.target_event(DEPLOYMENT, "MODIFIED", deployment(f"d{i}", replicas=2, ready=1, version=100 + i))
            await asyncio.sleep(EVENT_DEBOUNCE_SECONDS / (4 * FLOWS))
        await asyncio.sleep(3 * EVENT_DEBOUNCE_SECONDS)
        stopped.set()
        await asyncio.wait_for(loop, 10)
        assert signals.reads[first:] == [FLOWS]  # one read for all of them

    asyncio.run(scenario())
