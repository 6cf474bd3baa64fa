"""The executor's order of writes, optimistic concurrency and retries, against an in-memory API that
answers like the real one (resourceVersions, 409 on a stale version, 422 on a refused body)."""

from __future__ import annotations

import asyncio
from typing import Any

from flowkeeper.controller.events import EventRecorder
from flowkeeper.controller.executor import PARKED_SECONDS, Executor
from flowkeeper.controller.leadership import AlwaysLeader
from flowkeeper.api.v1alpha1 import DEPLOYMENT
from flowkeeper.controller.store import ClusterStore
from flowkeeper.domain.errors import ConflictError, RejectedError
from flowkeeper.domain.planner import Event, Plan
from tests.unit.test_store import Clock, deployment, flow


class MemoryApi:
    """Objects with resourceVersions; every write is recorded in order."""

    def __init__(self, poll: str = "10s") -> None:
        self.poll = poll
        self.version = 10
        self.flow_version = "1"
        self.deployment_version = "1"
        self.writes: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.patched_events: list[dict[str, Any]] = []
        self.refuse_status = False

    def _next(self) -> str:
        self.version += 1
        return str(self.version)

    def patch_flow_status(self, namespace, name, status, resource_version):
        if resource_version not in (None, self.flow_version):
            raise ConflictError("changed", reason="Conflict")
        if self.refuse_status:
            raise RejectedError("refused", reason="Invalid")
        self.writes.append(f"status:{sorted(status)}")
        self.flow_version = self._next()
        body = flow(version=int(self.flow_version), poll=self.poll)
        body["status"] = status
        return body

    def scale(self, target, replicas, resource_version):
        if resource_version not in (None, self.deployment_version):
            raise ConflictError("changed", reason="Conflict")
        self.writes.append(f"scale:{replicas}")
        self.scaled = target
        self.deployment_version = self._next()
        return replicas, self.deployment_version

    def create_event(self, event):
        self.events.append(event)
        return f"e{len(self.events)}"

    def patch_event(self, namespace, name, patch):
        self.patched_events.append({"name": name, **patch})


def setup():
    clock = Clock()
    store = ClusterStore(clock)
    store.flow_event("ADDED", flow())
    store.target_event(DEPLOYMENT, "ADDED", deployment(replicas=4))
    api = MemoryApi()
    recorder = EventRecorder(api, instance="test", clock=clock)
    return clock, store, api, Executor(api, store, recorder, AlwaysLeader(), clock=clock)


def apply(executor: Executor, store: ClusterStore, plan: Plan):
    record = store.flows["uid-ns-f"]
    return asyncio.run(executor.apply(record, store.target_of(record), plan, "p"))


PAUSE = Plan(status={"phase": "Paused", "pause": {"reason": "ConsumerConfigurationError", "replicasBefore": 4}}, scale_to=0,
             events=(Event("Warning", "ConsumerConfigurationError", "paused"),), status_first=True)


def test_a_pause_writes_its_record_then_scales_then_tells() -> None:
    _, store, api, executor = setup()
    assert apply(executor, store, PAUSE).applied
    assert api.writes == ["status:['pause', 'phase']", "scale:0"]
    assert [e["reason"] for e in api.events] == ["ConsumerConfigurationError"]
    # Written through: the next plan sees the pause and the new count even before the watch says so.
    assert store.flows["uid-ns-f"].status["pause"]["replicasBefore"] == 4
    assert store.targets["Deployment/ns/d"].spec_replicas == 0 and store.targets["Deployment/ns/d"].replicas_manager == "flowkeeper"
    # Through the Deployment's /scale subresource.
    assert (api.scaled.group, api.scaled.version, api.scaled.plural, api.scaled.namespace, api.scaled.name) == ("apps", "v1", "deployments", "ns", "d")


def test_a_stale_flow_is_planned_again_and_nothing_is_scaled_without_the_record() -> None:
    clock, store, api, executor = setup()
    api.flow_version = "5"  # someone changed the flow after the plan was made
    outcome = apply(executor, store, PAUSE)
    assert not outcome.applied and isinstance(outcome.error, ConflictError)
    assert api.writes == [] and api.events == []
    assert store.seconds_until_next(clock.now) == 0  # re-planned at once


def test_a_refused_status_is_not_retried_at_once() -> None:
    # Regression: a 422 was retried forever.
    clock, store, api, executor = setup()
    api.refuse_status = True
    store.take_due(clock.now)
    outcome = apply(executor, store, Plan(status={"phase": "Running"}))
    assert isinstance(outcome.error, RejectedError)
    assert store.seconds_until_next(clock.now) >= PARKED_SECONDS - 1
    store.flow_event("MODIFIED", flow(generation=2, version=3))  # a fixed spec is looked at at once
    assert store.seconds_until_next(clock.now) == 0


def test_a_repeated_event_is_counted_not_posted_again() -> None:
    clock, store, api, executor = setup()
    plan = Plan(status={}, events=(Event("Warning", "NoBacklogSignal", "no queueDepth series"),))
    for _ in range(5):
        apply(executor, store, plan)
        clock.now += 30
    assert len(api.events) == 1 and [p["count"] for p in api.patched_events] == [2, 3, 4, 5]


def test_repeated_conflicts_back_off() -> None:
    # A lagging watch must not turn 409s into a hot loop of reads and writes.
    clock, store, api, executor = setup()
    api.flow_version = "5"
    waits = []
    for _ in range(4):
        store.take_due(clock.now)
        apply(executor, store, PAUSE)
        waits.append(store.seconds_until_next(clock.now))
    assert waits[0] == 0 and all(w > 0 for w in waits[1:]) and waits[3] > waits[1]
    assert api.writes == []


def test_a_write_to_a_flow_that_is_gone_forgets_it() -> None:
    from flowkeeper.domain.errors import ConfigurationError

    clock, store, api, executor = setup()

    def gone(*args):
        raise ConfigurationError("not found", reason="NotFound")

    api.patch_flow_status = gone
    apply(executor, store, Plan(status={"phase": "Running"}))
    assert store.flows == {} and [f.name for f in store.deleted] == ["f"]


def test_writes_are_spread_by_the_client_side_rate_limit() -> None:
    from flowkeeper.controller.executor import TokenBucket

    async def take_all() -> float:
        bucket = TokenBucket(qps=20, burst=5)
        started = asyncio.get_running_loop().time()
        for _ in range(15):  # 5 at once, then 10 at 20 per second
            await bucket.take()
        return asyncio.get_running_loop().time() - started

    assert 0.4 <= asyncio.run(take_all()) < 1.5


def test_a_plan_that_changes_nothing_has_no_work_and_clears_old_retries() -> None:
    _, store, api, executor = setup()
    record = store.flows["uid-ns-f"]
    target = store.target_of(record)
    executor.failures[record.uid] = 3
    executor.conflicts[record.uid] = 2

    assert not executor.has_work(record, target, Plan(status=dict(record.status), scale_to=4))  # already at 4
    assert record.uid not in executor.failures and record.uid not in executor.conflicts
    assert api.writes == []


def test_a_plan_with_a_write_or_an_event_has_work() -> None:
    _, store, _, executor = setup()
    record = store.flows["uid-ns-f"]
    target = store.target_of(record)
    executor.failures[record.uid] = 1
    assert executor.has_work(record, target, Plan(status={"phase": "Running"}))
    assert executor.has_work(record, target, Plan(status=dict(record.status), scale_to=5))
    assert executor.has_work(record, target, Plan(status=dict(record.status), events=(Event("Normal", "Scaled", "x"),)))
    assert executor.failures[record.uid] == 1  # a flow with work keeps its retry count


class LeadsFor:
    """The leader for its first `checks` looks, then not."""

    def __init__(self, checks: int) -> None:
        self.checks = checks

    def is_leading(self) -> bool:
        self.checks -= 1
        return self.checks >= 0


def test_a_replica_that_loses_the_lead_between_a_pause_record_and_its_scale_writes_no_more() -> None:
    clock, store, api, _ = setup()
    executor = Executor(api, store, EventRecorder(api, instance="test", clock=clock), LeadsFor(1), clock=clock)
    assert [f.name for f in store.take_due(clock.now)] == ["f"]  # taken for this pass
    outcome = apply(executor, store, PAUSE)
    assert (outcome.applied, outcome.stage) == (False, "scale")
    assert [w.split(":")[0] for w in api.writes] == ["status"]  # the record landed; no scale, no Event
    assert api.events == []
    assert [f.name for f in store.take_due(clock.now)] == ["f"]  # the next leader plans it


def test_a_replica_that_loses_the_lead_before_the_events_leaves_them() -> None:
    clock, store, api, _ = setup()
    executor = Executor(api, store, EventRecorder(api, instance="test", clock=clock), LeadsFor(2), clock=clock)
    outcome = apply(executor, store, PAUSE)
    assert (outcome.applied, outcome.stage) == (False, "event")
    assert [w.split(":")[0] for w in api.writes] == ["status", "scale"] and api.events == []
