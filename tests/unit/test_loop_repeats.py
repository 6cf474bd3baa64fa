"""The loop plans a flow again only when one of its inputs changed since a repeatable plan
(controller/repeats.py): an idle flow costs no planning, and every change is still planned."""

from __future__ import annotations

import asyncio

import pytest

from flowkeeper.adapters.prometheus import PassResult
from flowkeeper.api.v1alpha1 import DEPLOYMENT
from flowkeeper.controller import loop as loop_module
from flowkeeper.controller.loop import FlowController
from flowkeeper.controller.store import ClusterStore
from flowkeeper.domain.errors import TransientError
from flowkeeper.domain.signals import FlowSignals
from tests.unit.test_executor import MemoryApi
from tests.unit.test_store import Clock, deployment, flow


class Signals:
    """Every flow's backlog, as the test sets it; read afresh each pass."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.depth = 50.0
        self.age = 0.0  # how old each reading is when the pass gets it

    def collect(self, targets):
        at = self.clock.now - self.age
        return PassResult({t.key: FlowSignals(observed_at=at, queue_depth=self.depth) for t in targets}, {}, 1, 0.0)


class Gateway(MemoryApi):
    def __init__(self) -> None:
        super().__init__(poll="5s")
        self.failing = False

    def patch_flow_status(self, namespace, name, status, resource_version):
        if self.failing:
            raise TransientError("the API server did not answer", reason="Timeout")
        return super().patch_flow_status(namespace, name, status, None)


@pytest.fixture
def world(monkeypatch):
    clock = Clock()
    store = ClusterStore(clock)
    store.flow_event("ADDED", flow(poll="5s"))
    store.target_event(DEPLOYMENT, "ADDED", deployment(replicas=1, ready=1))
    gateway, signals = Gateway(), Signals(clock)
    controller = FlowController(store, gateway, signals, wall_clock=clock, monotonic=clock)
    planned: list[float] = []
    real_plan = loop_module.plan

    def counting(inputs, *, now):
        planned.append(now)
        return real_plan(inputs, now=now)

    monkeypatch.setattr(loop_module, "plan", counting)

    async def passes(n: int) -> None:
        for _ in range(n):
            clock.now += 5.0
            await controller.run_pass(list(store.flows.values()))
            await controller.finish_writes(5.0)

    return controller, store, gateway, signals, planned, lambda n=1: asyncio.run(passes(n))


def test_an_idle_flow_is_planned_until_its_plan_repeats_then_not_again(world) -> None:
    controller, _, gateway, _, planned, run = world
    run(3)  # the first status is written; then the flow is at rest
    writes, settled = list(gateway.writes), len(planned)
    assert controller.repeats, "a flow at rest has a repeatable plan"
    run(20)
    assert len(planned) == settled  # twenty passes, not one planned
    assert gateway.writes == writes


def test_a_new_backlog_is_planned_and_scaled(world) -> None:
    controller, _, gateway, signals, planned, run = world
    run(3)
    settled = len(planned)
    signals.depth = 450.0
    run(1)
    assert len(planned) == settled + 1
    assert "scale:5" in gateway.writes


def test_a_changed_deployment_is_planned_again(world) -> None:
    controller, store, gateway, _, planned, run = world
    run(3)
    settled = len(planned)
    store.target_event(DEPLOYMENT, "MODIFIED", deployment(replicas=1, ready=0, version=50))
    run(1)
    assert len(planned) == settled + 1
    assert store.flows["uid-ns-f"].status["readyReplicas"] == 0


def test_a_plan_whose_write_failed_is_planned_again_on_the_next_pass(world) -> None:
    controller, store, gateway, signals, planned, run = world
    run(3)
    gateway.failing = True
    signals.depth = 0.0  # a status write (the signals reach zero), which fails
    run(1)
    assert "uid-ns-f" not in controller.repeats
    before = len(planned)
    gateway.failing = False
    store.mark_due("uid-ns-f")
    run(1)
    assert len(planned) == before + 1
    assert store.flows["uid-ns-f"].status["signals"]["queueDepth"] == 0.0


def test_a_standby_forgets_its_repeatable_plans(world) -> None:
    controller, *_, run = world
    run(3)
    controller._forget_plans()
    assert controller.repeats == {}


def test_a_deleted_flow_leaves_no_repeatable_plan(world) -> None:
    controller, store, *_, run = world
    run(3)
    store.flow_gone("uid-ns-f")
    run(1)
    assert controller.repeats == {}


def test_a_reading_grown_stale_is_planned_not_repeated(world) -> None:
    """A slow pass can hand the planner signals older than three poll intervals: planning holds and
    counts the failure (towards the fallback); repeating the last plan would not."""
    controller, store, gateway, signals, planned, run = world
    run(3)
    settled = len(planned)
    signals.age = 16.0  # poll 5 s: stale after 15 s
    run(1)
    assert len(planned) == settled + 1
    assert controller.memory["uid-ns-f"].scaling.metrics_failures == 1
