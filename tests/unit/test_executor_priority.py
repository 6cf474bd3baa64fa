"""Urgent writes first: with few write slots and many flows to write at once, every scale (and a new
flow's first status) is written before the routine status writes and Events of the others."""

from __future__ import annotations

import asyncio
import threading
import time

from flowkeeper.api.v1alpha1 import DEPLOYMENT
from flowkeeper.controller.events import EventRecorder
from flowkeeper.controller.executor import Executor
from flowkeeper.controller.leadership import AlwaysLeader
from flowkeeper.controller.store import ClusterStore
from flowkeeper.domain.planner import Event, Plan
from tests.unit.test_store import Clock, deployment, flow

FLOWS = 20
SLOTS = 2
# Writes that may begin before an urgent one: those under way when it asked for a slot, and those
# running beside it once it has one.
AHEAD = 2 * SLOTS - 1


class SlowApi:
    """Each write takes a moment on its thread, as on a loaded API server; writes are recorded in the
    order they land."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.started: list[str] = []  # the order writes began in, on the writers' threads
        self._lock = threading.Lock()
        self.version = 100

    def _land(self, what: str) -> str:
        with self._lock:
            self.started.append(what)
        time.sleep(0.01)
        with self._lock:
            self.writes.append(what)
            self.version += 1
            return str(self.version)

    def scale(self, target, replicas, resource_version):
        return replicas, self._land(f"scale:{target.name}")

    def patch_flow_status(self, namespace, name, status, resource_version):
        version = self._land(f"status:{name}")
        body = flow(name, deployment=f"d-{name}", version=int(version))
        body["status"] = status
        return body

    def create_event(self, event):
        self._land(f"event:{event['involvedObject']['name']}")
        return "e"

    def patch_event(self, namespace, name, patch):
        self._land("event-patch")


def executor_with(flows: dict[str, dict]) -> tuple[ClusterStore, SlowApi, Executor]:
    """flows: name -> the status it has now ({} for a new flow)."""
    clock = Clock()
    store = ClusterStore(clock)
    for name, status in flows.items():
        body = flow(name, deployment=f"d-{name}")
        body["status"] = status
        store.flow_event("ADDED", body)
        store.target_event(DEPLOYMENT, "ADDED", deployment(f"d-{name}", replicas=1))
    api = SlowApi()
    recorder = EventRecorder(api, instance="test", clock=clock, threads=SLOTS)
    return store, api, Executor(api, store, recorder, AlwaysLeader(), concurrency=SLOTS, qps=1e6, burst=10**6, clock=clock)


def apply_all(store: ClusterStore, executor: Executor, plans: dict[str, Plan]) -> None:
    async def run() -> None:
        writes = []
        for name, plan in plans.items():
            record = store.flows[f"uid-ns-{name}"]
            writes.append(asyncio.create_task(executor.apply(record, store.target_of(record), plan, "p")))
        outcomes = await asyncio.gather(*writes)
        assert all(o.applied for o in outcomes)

    asyncio.run(run())


ESTABLISHED = {"observedGeneration": 1, "phase": "Running"}


def test_a_burst_scales_every_flow_before_writing_their_statuses_and_events() -> None:
    names = [f"f{i}" for i in range(FLOWS)]
    store, api, executor = executor_with({name: dict(ESTABLISHED) for name in names})
    scale_up = Plan(status={**ESTABLISHED, "desiredReplicas": 3}, scale_to=3, events=(Event("Normal", "ScaledUp", "1 -> 3"),))
    apply_all(store, executor, {name: scale_up for name in names})

    kinds = [w.split(":")[0] for w in api.started]
    assert sorted(api.writes) == sorted([f"scale:d-{n}" for n in names] + [f"status:{n}" for n in names] + [f"event:{n}" for n in names])
    # Once the last scale has its slot, the others may begin beside it.
    assert kinds[: FLOWS - SLOTS + 1] == ["scale"] * (FLOWS - SLOTS + 1), api.started
    # Within a flow the order stays: its scale, then its status, then its Event.
    for name in names:
        assert api.writes.index(f"scale:d-{name}") < api.writes.index(f"status:{name}") < api.writes.index(f"event:{name}")


def test_scales_go_before_routine_writes_that_were_waiting_already() -> None:
    routine = [f"old{i}" for i in range(FLOWS)]
    bursting = [f"f{i}" for i in range(FLOWS)]
    store, api, executor = executor_with({name: dict(ESTABLISHED) for name in routine + bursting})
    plans = {name: Plan(status={**ESTABLISHED, "phase": "Degraded"}) for name in routine}  # handed over first
    plans |= {name: Plan(status=dict(ESTABLISHED), scale_to=3) for name in bursting}
    apply_all(store, executor, plans)

    scales_began = [i for i, what in enumerate(api.started) if what.startswith("scale:")]
    # Behind only the routine writes already under way when the burst came, and those that began
    # beside its last scales; waiting in arrival order, they would all have gone first.
    assert max(scales_began) < FLOWS + 2 * SLOTS, api.started


def test_a_new_flows_first_status_goes_before_routine_updates_of_others() -> None:
    routine = [f"old{i}" for i in range(FLOWS)]
    store, api, executor = executor_with({**{name: dict(ESTABLISHED) for name in routine}, "new": {}})
    plans = {name: Plan(status={**ESTABLISHED, "phase": "Degraded"}) for name in routine}
    plans["new"] = Plan(status=dict(ESTABLISHED))  # handed over last
    apply_all(store, executor, plans)

    assert api.started.index("status:new") <= AHEAD, api.started


def test_a_pause_record_is_as_urgent_as_the_scale_it_precedes() -> None:
    routine = [f"old{i}" for i in range(FLOWS)]
    store, api, executor = executor_with({**{name: dict(ESTABLISHED) for name in routine}, "paused": dict(ESTABLISHED)})
    plans = {name: Plan(status={**ESTABLISHED, "phase": "Degraded"}) for name in routine}
    plans["paused"] = Plan(status={**ESTABLISHED, "phase": "Paused", "pause": {"replicasBefore": 1}}, scale_to=0, status_first=True)
    apply_all(store, executor, plans)

    record, scale = api.started.index("status:paused"), api.started.index("scale:d-paused")
    assert api.writes.index("status:paused") < api.writes.index("scale:d-paused")
    assert record <= AHEAD, api.started
    # Its scale asks for a slot once the record has landed.
    assert record < scale <= record + AHEAD + 1, api.started
