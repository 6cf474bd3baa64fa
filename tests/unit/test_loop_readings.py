"""A pass made by watch events plans its flows on their last reading when nothing the reading was
judged against has changed: no Prometheus read for it. What did change is read afresh."""

from __future__ import annotations

import asyncio

from flowkeeper.api.v1alpha1 import DEPLOYMENT
from flowkeeper.controller.loop import EVENT_DEBOUNCE_SECONDS, FlowController
from flowkeeper.controller.store import ClusterStore
from tests.unit.test_loop_debounce import FLOWS, CountingSignals, Flows
from tests.unit.test_store import deployment


async def _settled(controller: FlowController, signals: CountingSignals) -> None:
    while not signals.reads or controller.writing:
        await asyncio.sleep(0.01)
    await asyncio.sleep(3 * EVENT_DEBOUNCE_SECONDS)


def test_events_that_change_nothing_the_signals_were_judged_on_reuse_the_reading() -> None:
    signals = CountingSignals()
    controller = FlowController(ClusterStore(), Flows(), signals)

    async def scenario() -> None:
        stopped = asyncio.Event()
        loop = asyncio.create_task(controller.run_forever(stopped))
        await _settled(controller, signals)
        reads, passes = list(signals.reads), controller.passes
        assert reads == [FLOWS]
        # A new resourceVersion of every Deployment, same counts and template (e.g. a label set).
        for i in range(FLOWS):
            controller.store.target_event(DEPLOYMENT, "MODIFIED", deployment(f"d{i}", version=200 + i))
        await _settled(controller, signals)
        assert controller.passes > passes  # the flows were planned again...
        assert signals.reads == reads  # ...on their last reading: Prometheus was not asked
        # Two consumers become ready and one Deployment gets a new template: those three are read.
        controller.store.target_event(DEPLOYMENT, "MODIFIED", deployment("d0", ready=0, version=300))
        controller.store.target_event(DEPLOYMENT, "MODIFIED", deployment("d1", replicas=1, ready=0, version=301))
        controller.store.target_event(DEPLOYMENT, "MODIFIED", deployment("d2", image="b", version=302))
        controller.store.target_event(DEPLOYMENT, "MODIFIED", deployment("d3", version=303))
        await _settled(controller, signals)
        assert signals.reads == [*reads, 3]
        stopped.set()
        await asyncio.wait_for(loop, 10)

    asyncio.run(scenario())


def test_a_standby_forgets_its_readings() -> None:
    signals = CountingSignals()
    controller = FlowController(ClusterStore(), Flows(), signals)

    async def scenario() -> None:
        stopped = asyncio.Event()
        loop = asyncio.create_task(controller.run_forever(stopped))
        await _settled(controller, signals)
        assert len(controller.readings) == FLOWS
        controller._forget_plans()
        assert controller.readings == {}
        stopped.set()
        await asyncio.wait_for(loop, 10)

    asyncio.run(scenario())
