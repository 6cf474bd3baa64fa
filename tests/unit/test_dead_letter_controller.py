"""The dead-letter controller's own rules, with an in-memory API and broker that answer like the real
ones: a standby touches no broker, one call at a time per dead-letter queue, a cutoff missed now and
then is not lost, a failed status write is not followed by a broker step, and quiet reviews write nothing."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from flowkeeper.controller.dead_letters import DeadLetterController
from flowkeeper.controller.events import EventRecorder
from flowkeeper.controller.store import ClusterStore
from flowkeeper.adapters.kubernetes import Listing
from flowkeeper.domain.dead_letters import BatchResult, Cutoff, CutoffLost, Review
from flowkeeper.domain.errors import ConflictError
from flowkeeper.domain.redrive import redrive_from_body


class Leader:
    def __init__(self, leading: bool = True) -> None:
        self.leading = leading

    def is_leading(self) -> bool:
        return self.leading


class Api:
    def __init__(self) -> None:
        self.version = 100
        self.status_writes: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.conflict = False
        self.status: dict[str, Any] = {}  # the redrive's status as stored

    def list_objects(self, kind, namespaces, keep=None):  # bodies: the store takes them as they are
        return Listing()

    def patch_redrive_status(self, namespace, name, status, resource_version):
        if self.conflict:
            raise ConflictError("changed", reason="Conflict")
        self.version += 1
        self.status_writes.append(status)
        return {"metadata": {"name": name, "namespace": namespace, "uid": "r1", "generation": 1, "resourceVersion": str(self.version)},
                "spec": {"flowRef": {"name": "orders"}, "classes": ["transient"], "interval": "0s"}, "status": self.merged(status)}

    def merged(self, patch):
        self.status = {**self.status, **{k: v for k, v in patch.items() if v is not None}}
        return self.status

    def read_secret_key(self, namespace, name, key):
        return "secret"

    def create_event(self, event):
        self.events.append(event)
        return f"e{len(self.events)}"

    def patch_event(self, namespace, name, patch):
        pass


class Broker:
    """Records every call; `cutoff_seen` False makes move raise CutoffLost."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.active = 0
        self.most_at_once = 0
        self.cutoff_seen = True
        self.depth = 5
        self.lock = threading.Lock()

    def _enter(self, name: str) -> None:
        with self.lock:
            self.calls.append(name)
            self.active += 1
            self.most_at_once = max(self.most_at_once, self.active)
        time.sleep(0.05)
        with self.lock:
            self.active -= 1

    def review(self, dead_letters, *, limit, deadline):
        self._enter("review")
        return Review(depth=self.depth, examined=self.depth)

    def begin(self, dead_letters, *, redrive_uid):
        self._enter("begin")
        return Cutoff(redrive_uid, self.depth)

    def move(self, dead_letters, to, **kwargs):
        self._enter("move")
        if not self.cutoff_seen:
            raise CutoffLost("marker not seen")
        return BatchResult(moved=1, remaining=4, refailed=0, reached_cutoff=False)

    def finish(self, dead_letters, *, redrive_uid, cutoff):
        self._enter("finish")

    def close(self) -> None:
        pass


FLOW = {
    "metadata": {"name": "orders", "namespace": "shop", "uid": "f1", "generation": 1, "resourceVersion": "1"},
    "spec": {"scaleTargetRef": {"name": "orders"},
             "source": {"broker": "rabbitmq", "queue": "orders", "deadLetterQueue": "orders.dlq", "connection": {"address": "amqp://mq:5672"}}},
}


def redrive(status: dict | None = None) -> dict:
    return {"metadata": {"name": "r", "namespace": "shop", "uid": "r1", "generation": 1, "resourceVersion": "5"},
            "spec": {"flowRef": {"name": "orders"}, "classes": ["transient"], "interval": "0s"}, "status": status or {}}


class Signals:
    def error_rate(self, flow, classes, window):
        return 0.0, None


def controller(*, leading: bool = True, review_interval: float = 0.0, allowed: tuple[str, ...] = ("mq:5672",)):
    store = ClusterStore()
    store.flow_event("ADDED", FLOW)
    store.redrives_seeded = True
    api, broker = Api(), Broker()
    leader = Leader(leading)
    recorder = EventRecorder(api, instance="test")
    dlc = DeadLetterController(store, api, leader, recorder, signals=Signals(), review_interval=review_interval,
                               allowed_brokers=allowed, connect=lambda address: broker)
    return store, api, broker, leader, dlc


async def ticks(dlc: DeadLetterController, n: int, pause: float = 0.12) -> None:
    for _ in range(n):
        dlc.tick()
        await asyncio.sleep(pause)
    if dlc.tasks:
        await asyncio.wait(list(dlc.tasks), timeout=5)


def test_a_standby_touches_no_broker_and_writes_nothing() -> None:
    async def run() -> tuple[Broker, Api]:
        store, api, broker, leader, dlc = controller(leading=False)
        store.redrive_event("ADDED", redrive())
        stopped = asyncio.Event()
        task = asyncio.create_task(dlc.run_forever(stopped))
        await asyncio.sleep(1.5)
        stopped.set()
        await task
        return broker, api

    broker, api = asyncio.run(run())
    assert broker.calls == [] and api.status_writes == []


def test_one_call_at_a_time_per_dead_letter_queue() -> None:
    async def run() -> Broker:
        store, api, broker, leader, dlc = controller()
        store.redrive_event("ADDED", redrive())
        # Until a review, a begin and a move have all run (a loaded machine takes more ticks).
        for _ in range(300):
            await ticks(dlc, 1, pause=0.1)
            if {"review", "begin", "move"} <= set(broker.calls):
                break
        return broker

    broker = asyncio.run(run())
    assert {"review", "begin", "move"} <= set(broker.calls)
    assert broker.most_at_once == 1, "a review and a redrive of one queue never overlap"


def test_a_cutoff_missed_twice_is_not_lost_but_three_times_is() -> None:
    async def run() -> list[str]:
        store, api, broker, leader, dlc = controller(review_interval=3600)
        api.status = {"phase": "Running", "cutoff": {"token": "r1", "depth": 5, "at": "2026-12-01T00:00:00Z"}}
        store.redrive_event("ADDED", redrive(api.status))
        broker.cutoff_seen = False
        phases = []
        for _ in range(3):
            dlc._next_step.clear()  # the 15 s between retries, skipped
            await ticks(dlc, 1)
            phases.append(store.redrives["r1"].phase)
        return phases, {c["reason"] for w in api.status_writes for c in w.get("conditions") or []}

    phases, reasons = asyncio.run(run())
    assert phases == ["Running", "Running", "Failed"] and {"CutoffNotSeen", "CutoffLost"} <= reasons


def test_a_status_write_that_conflicts_is_not_followed_by_a_broker_step() -> None:
    async def run() -> Broker:
        store, api, broker, leader, dlc = controller(review_interval=3600)
        store.redrive_event("ADDED", redrive())
        api.conflict = True
        await ticks(dlc, 3)
        return broker

    broker = asyncio.run(run())
    assert "begin" not in broker.calls and "move" not in broker.calls


def test_a_review_that_finds_the_same_leaves_the_status_alone() -> None:
    async def run():
        store, api, broker, leader, dlc = controller()
        await ticks(dlc, 1)
        first = store.reviews["f1"]
        await asyncio.sleep(1.1)  # a later second: reviewedAt would differ
        await ticks(dlc, 1)
        same = store.reviews["f1"]
        broker.depth = 7
        await ticks(dlc, 1)
        return first, same, store.reviews["f1"], broker

    first, same, changed, broker = asyncio.run(run())
    assert broker.calls.count("review") == 3
    assert same is first and changed["depth"] == 7


def test_dead_letters_known_to_be_empty_are_not_read() -> None:
    async def run() -> Broker:
        store, api, broker, leader, dlc = controller()
        broker.depth = 0
        await ticks(dlc, 1)
        store.flow_event("MODIFIED", {**FLOW, "metadata": {**FLOW["metadata"], "resourceVersion": "2"}, "status": {"signals": {"deadLetterDepth": 0}}})
        await ticks(dlc, 3)
        return broker

    assert asyncio.run(run()).calls == ["review"]


def test_a_broker_that_is_not_allowed_is_never_connected_to() -> None:
    async def run():
        store, api, broker, leader, dlc = controller(allowed=())
        store.redrive_event("ADDED", redrive())
        await ticks(dlc, 3)
        return store, broker

    store, broker = asyncio.run(run())
    assert broker.calls == []
    assert store.reviews["f1"]["error"].startswith("BrokerNotAllowed")
    assert store.redrives["r1"].phase == "Blocked" and "--allowed-broker" in store.redrives["r1"].status["message"]


def test_a_batch_whose_status_write_failed_is_counted_by_the_next_write() -> None:
    async def run():
        store, api, broker, leader, dlc = controller(review_interval=3600)
        api.status = {"phase": "Running", "cutoff": {"token": "r1", "depth": 5, "at": "2026-12-01T00:00:00Z",
                                                     "route": "rabbitmq amqp://mq:5672 vhost /: orders.dlq -> orders"}}
        store.redrive_event("ADDED", redrive(api.status))
        real = api.patch_redrive_status
        failures = iter([ConflictError("changed", reason="Conflict")])

        def flaky(*args):
            error = next(failures, None)
            if error is not None:
                raise error
            return real(*args)

        api.patch_redrive_status = flaky
        await ticks(dlc, 1)  # a batch moved, its write conflicted
        dlc._next_step.clear()
        await ticks(dlc, 1)  # the pending count written first
        return store, broker

    store, broker = asyncio.run(run())
    assert broker.calls.count("move") == 1 and store.redrives["r1"].status["moved"] == 1


def test_a_quorum_queue_is_not_read_again_after_it_was_recognised() -> None:
    from flowkeeper.domain.errors import ConfigurationError

    async def run():
        store, api, broker, leader, dlc = controller()

        def quorum(*args, **kwargs):
            broker.calls.append("review")
            raise ConfigurationError("orders.dlq is a quorum queue", reason="QuorumQueueNotSupported")

        broker.review = quorum
        for _ in range(4):
            await ticks(dlc, 1)
        return store, broker

    store, broker = asyncio.run(run())
    assert broker.calls == ["review"] and store.reviews["f1"]["error"].startswith("QuorumQueueNotSupported")


def test_the_marker_goes_before_the_status_says_the_redrive_ended() -> None:
    async def run():
        store, api, broker, leader, dlc = controller(review_interval=3600)
        api.status = {"phase": "Verifying", "moved": 5, "refailed": 0, "verifyUntil": "2000-01-01T00:00:00Z",
                      "cutoff": {"token": "r1", "depth": 5, "at": "2026-12-01T00:00:00Z", "route": "rabbitmq amqp://mq:5672 vhost /: orders.dlq -> orders"}}
        store.redrive_event("ADDED", redrive(api.status))
        order: list[str] = []
        finish, patch = broker.finish, api.patch_redrive_status
        broker.finish = lambda *a, **k: (order.append("finish"), finish(*a, **k))[1]
        api.patch_redrive_status = lambda *a: (order.append(f"status:{a[2].get('phase')}"), patch(*a))[1]
        await ticks(dlc, 1)
        return order, store, broker

    order, store, broker = asyncio.run(run())
    assert "move" in broker.calls, "one last look for re-failures"
    assert order == ["finish", "status:Succeeded"] and store.redrives["r1"].phase == "Succeeded"


def test_a_verifying_redrive_killed_after_removing_its_marker_still_succeeds() -> None:
    async def run():
        store, api, broker, leader, dlc = controller(review_interval=3600)
        api.status = {"phase": "Verifying", "moved": 5, "refailed": 0, "verifyUntil": "2000-01-01T00:00:00Z",
                      "cutoff": {"token": "r1", "depth": 5, "at": "2026-12-01T00:00:00Z", "route": "rabbitmq amqp://mq:5672 vhost /: orders.dlq -> orders"}}
        store.redrive_event("ADDED", redrive(api.status))
        broker.cutoff_seen = False  # the marker was removed just before the kill
        await ticks(dlc, 1)
        return store

    assert asyncio.run(run()).redrives["r1"].phase == "Succeeded"


def test_verifying_ends_on_the_monotonic_clock_whatever_the_wall_clock_does() -> None:
    store, api, broker, leader, dlc = controller(review_interval=3600)
    mono = [1000.0]
    wall = [1_800_000_000.0]
    dlc.monotonic, dlc.wall_clock = (lambda: mono[0]), (lambda: wall[0])
    record = redrive_from_body(redrive({"phase": "Verifying", "verifyUntil": "2027-01-15T08:00:30Z"}))  # 30 s after `wall`
    assert not dlc._verify_time_up(record)
    wall[0] -= 3600  # the wall clock steps back an hour: verifyFor (1m default) does not stretch
    mono[0] += 31
    assert dlc._verify_time_up(record)


def _flow(uid: str, version: str, *, dead_letters: str | None) -> dict:
    """A flow whose generation follows its version: each change here is a change of its spec."""
    source = {"broker": "rabbitmq", "queue": uid, "connection": {"address": "amqp://mq:5672"}}
    if dead_letters:
        source["deadLetterQueue"] = dead_letters
    return {"metadata": {"name": uid, "namespace": "shop", "uid": uid, "generation": int(version), "resourceVersion": version},
            "spec": {"scaleTargetRef": {"name": uid}, "source": source}}


def test_the_store_knows_which_flows_have_dead_letters_to_reach_as_they_come_change_and_go() -> None:
    store = ClusterStore()
    store.flow_event("ADDED", _flow("a", "1", dead_letters="a.dlq"))
    store.flow_event("ADDED", _flow("b", "1", dead_letters=None))
    store.flow_event("ADDED", _flow("c", "1", dead_letters="c.dlq"))
    assert list(store.dead_letter_flows) == ["a", "c"]
    store.flow_event("MODIFIED", _flow("a", "2", dead_letters=None))  # its dead-letter queue taken out of the spec
    store.flow_event("MODIFIED", _flow("b", "2", dead_letters="b.dlq"))
    assert sorted(store.dead_letter_flows) == ["b", "c"]
    store.flow_event("DELETED", _flow("c", "3", dead_letters="c.dlq"))
    assert list(store.dead_letter_flows) == ["b"]
    store.resync(Listing(items=[_flow("b", "2", dead_letters="b.dlq")], versions={None: "10"}), {})
    assert list(store.dead_letter_flows) == ["b"]


def test_a_flow_that_loses_its_dead_letter_queue_loses_its_review_and_others_are_not_read() -> None:
    async def run():
        store, api, broker, leader, dlc = controller()
        store.flow_event("ADDED", _flow("plain", "1", dead_letters=None))
        await ticks(dlc, 1)
        reviewed = dict(store.reviews)
        store.flow_event("MODIFIED", {**FLOW, "metadata": {**FLOW["metadata"], "resourceVersion": "2", "generation": 2},
                                      "spec": {**FLOW["spec"], "source": {k: v for k, v in FLOW["spec"]["source"].items() if k != "deadLetterQueue"}}})
        await ticks(dlc, 2)
        return reviewed, store.reviews, broker

    reviewed, after, broker = asyncio.run(run())
    assert list(reviewed) == ["f1"]  # the flow without dead letters is never reviewed
    assert after == {} and broker.calls == ["review"]
