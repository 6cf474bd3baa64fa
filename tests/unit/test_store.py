"""Scheduling and the startup seed of the in-memory store."""

from __future__ import annotations

from flowkeeper.controller.store import ClusterStore


def flow(name: str = "f", generation: int = 1, deployment: str = "d", poll: str = "10s") -> dict:
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": "u", "generation": generation},
        "spec": {
            "consumer": {"deployment": deployment},
            "source": {"broker": "rabbitmq", "queue": "q"},
            "scaling": {"pollInterval": poll},
        },
    }


def deployment(name: str = "d", replicas: int = 1, ready: int = 1, image: str = "a") -> dict:
    return {
        "metadata": {"namespace": "ns", "name": name},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"image": image}]}}},
        "status": {"replicas": replicas, "readyReplicas": ready},
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_new_flow_is_due_at_once_then_every_poll_interval() -> None:
    clock = Clock()
    store = ClusterStore(clock)
    store.flow_event("ADDED", flow())
    assert [f.name for f in store.take_due(clock.now)] == ["f"]
    assert store.take_due(clock.now + 9) == []
    assert store.seconds_until_next(clock.now) == 10
    assert [f.name for f in store.take_due(clock.now + 10)] == ["f"]


def test_flows_with_the_same_interval_fall_due_together() -> None:
    clock = Clock()
    store = ClusterStore(clock)
    store.flow_event("ADDED", flow("a"))
    store.take_due(1003.0)
    store.flow_event("ADDED", flow("b"))
    store.take_due(1007.0)
    assert store.take_due(1009.9) == []
    assert sorted(f.name for f in store.take_due(1010.0)) == ["a", "b"]


def test_status_only_updates_do_not_make_a_flow_due() -> None:
    clock = Clock()
    store = ClusterStore(clock)
    store.flow_event("ADDED", flow())
    store.take_due(clock.now)
    body = flow()
    body["status"] = {"phase": "Running"}
    store.flow_event("MODIFIED", body)  # our own status write coming back through the watch
    assert store.take_due(clock.now + 1) == []
    store.flow_event("MODIFIED", flow(generation=2))  # a spec change
    assert [f.generation for f in store.take_due(clock.now + 1)] == [2]


def test_deployment_changes_make_their_flow_due() -> None:
    clock = Clock()
    store = ClusterStore(clock)
    store.flow_event("ADDED", flow())
    store.flow_event("ADDED", flow(name="other", deployment="other"))
    store.take_due(clock.now)
    store.deployment_event("ADDED", deployment())
    assert [f.name for f in store.take_due(clock.now + 1)] == ["f"]
    store.deployment_event("MODIFIED", deployment(image="b"))  # a new pod template: a fix deployed
    assert [f.name for f in store.take_due(clock.now + 1)] == ["f"]
    store.deployment_event("DELETED", deployment(image="b"))
    assert store.deployment_of(store.flows["ns/f"]) is None
    assert [f.name for f in store.take_due(clock.now + 1)] == ["f"]


def test_seed_keeps_what_the_watch_already_delivered() -> None:
    clock = Clock()
    store = ClusterStore(clock)
    store.deployment_event("ADDED", deployment(replicas=3, ready=3))
    store.seed([flow()], [deployment(replicas=1), deployment(name="d2")])
    assert store.deployments["ns/d"].replicas == 3
    assert "ns/d2" in store.deployments and store.seeded
    assert [f.name for f in store.take_due(clock.now)] == ["f"]


def test_deleted_flow_is_never_due_again() -> None:
    clock = Clock()
    store = ClusterStore(clock)
    store.flow_event("ADDED", flow())
    store.flow_event("DELETED", flow())
    assert store.take_due(clock.now + 100) == []


def test_reschedule_can_push_a_flow_later() -> None:
    clock = Clock()
    store = ClusterStore(clock)
    store.flow_event("ADDED", flow())
    store.take_due(clock.now)  # next due on the grid: 1010
    store.reschedule("ns/f", 1025.0)
    assert store.take_due(1015.0) == []
    assert [f.name for f in store.take_due(1025.0)] == ["f"]
