"""Scheduling and the startup seed of the in-memory store."""

from __future__ import annotations

import json

from flowkeeper.adapters.kubernetes import Listing
from flowkeeper.api.v1alpha1 import DEPLOYMENT, STATEFULSET
from flowkeeper.controller.store import ClusterStore, ListedFlow
from flowkeeper.domain.flow import OWN_ANNOTATIONS, TargetRecord, target_from_body
from flowkeeper.domain.pause import RESUME_ANNOTATION


def flow(name: str = "f", generation: int = 1, deployment: str = "d", poll: str = "10s", *, uid: str | None = None,
         version: int = 1, created: str = "2026-01-01T00:00:00Z", namespace: str = "ns", kind: str = "Deployment") -> dict:
    return {
        "metadata": {"namespace": namespace, "name": name, "uid": uid or f"uid-{namespace}-{name}", "generation": generation,
                     "resourceVersion": str(version), "creationTimestamp": created},
        "spec": {
            "scaleTargetRef": {"kind": kind, "name": deployment},
            "source": {"broker": "rabbitmq", "queue": "q"},
            "scaling": {"pollInterval": poll},
        },
    }


def deployment(name: str = "d", replicas: int = 1, ready: int = 1, image: str = "a", *, version: int = 1,
               manager: str | None = None, uid: str | None = None) -> dict:
    managed = [{"manager": manager, "operation": "Update", "fieldsV1": {"f:spec": {"f:replicas": {}}}}] if manager else []
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": uid or f"uid-d-{name}", "resourceVersion": str(version),
                     "managedFields": managed},
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
    store.target_event(DEPLOYMENT, "ADDED", deployment())
    assert [f.name for f in store.take_due(clock.now + 1)] == ["f"]
    store.target_event(DEPLOYMENT, "MODIFIED", deployment(image="b", version=2))  # a new pod template: a fix deployed
    assert [f.name for f in store.take_due(clock.now + 1)] == ["f"]
    store.target_event(DEPLOYMENT, "DELETED", deployment(image="b", version=3))
    assert store.target_of(store.flows["uid-ns-f"]) is None
    assert [f.name for f in store.take_due(clock.now + 1)] == ["f"]


def test_seed_keeps_what_the_watch_already_delivered() -> None:
    clock = Clock()
    store = ClusterStore(clock)
    store.target_event(DEPLOYMENT, "ADDED", deployment(replicas=3, ready=3))
    store.seed(Listing([flow()]), {DEPLOYMENT: Listing([deployment(replicas=1), deployment(name="d2")])})
    assert store.targets["Deployment/ns/d"].replicas == 3
    assert "Deployment/ns/d2" in store.targets and store.seeded
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
    store.retry_at("uid-ns-f", 1025.0)
    assert store.take_due(1015.0) == []
    assert [f.name for f in store.take_due(1025.0)] == ["f"]


def test_a_retry_is_not_brought_forward_by_events() -> None:
    # Regression: a backoff was undone by the next event or grid slot (rescheduling only moved earlier).
    clock = Clock()
    store = ClusterStore(clock)
    store.flow_event("ADDED", flow())
    store.take_due(clock.now)
    store.retry_at("uid-ns-f", 1040.0)
    store.target_event(DEPLOYMENT, "ADDED", deployment())  # would make the flow due at once
    store.flow_event("MODIFIED", flow(generation=2, version=2))
    assert store.take_due(1039.0) == []
    assert [f.generation for f in store.take_due(1040.0)] == [2]


def test_a_flow_deleted_while_the_startup_list_was_in_flight_does_not_come_back() -> None:
    # Regression: the LIST's copy of a flow the watch had already seen deleted came back as a ghost.
    clock = Clock()
    store = ClusterStore(clock)
    store.flow_event("ADDED", flow())
    store.flow_event("DELETED", flow())
    store.target_event(DEPLOYMENT, "ADDED", deployment())
    store.target_event(DEPLOYMENT, "DELETED", deployment())
    store.seed(Listing([flow()]), {DEPLOYMENT: Listing([deployment()])})
    assert store.flows == {} and store.targets == {}
    assert store.take_due(clock.now + 100) == []


def test_a_flow_recreated_under_the_same_name_is_a_new_flow() -> None:
    clock = Clock()
    store = ClusterStore(clock)
    store.flow_event("ADDED", flow(uid="old"))
    store.flow_event("DELETED", flow(uid="old"))
    store.flow_event("ADDED", flow(uid="new"))
    assert list(store.flows) == ["new"]
    assert [d.path for d in store.deleted] == ["ns/f"] and store.deleted[0].uid == "old"


def test_a_watch_event_older_than_our_write_is_ignored() -> None:
    clock = Clock()
    store = ClusterStore(clock)
    store.flow_event("ADDED", flow(version=5))
    written = flow(version=7)
    written["status"] = {"phase": "Paused", "pause": {"replicasBefore": 3}}
    store.status_written("uid-ns-f", written)
    store.flow_event("MODIFIED", flow(version=6))  # lagging watch: status not there yet
    assert store.flows["uid-ns-f"].status["pause"] == {"replicasBefore": 3}


def test_a_write_response_never_brings_back_a_deleted_flow() -> None:
    clock = Clock()
    store = ClusterStore(clock)
    store.flow_event("ADDED", flow())
    store.flow_event("DELETED", flow())
    store.status_written("uid-ns-f", flow(version=9))
    assert store.flows == {}


def test_the_oldest_claim_owns_a_scale_target() -> None:
    clock = Clock()
    store = ClusterStore(clock)
    store.flow_event("ADDED", flow("young", created="2026-02-01T00:00:00Z"))
    store.flow_event("ADDED", flow("old", created="2026-01-01T00:00:00Z"))
    store.flow_event("ADDED", flow("elsewhere", deployment="other"))
    young = store.flows["uid-ns-young"]
    assert store.owner_of(young).name == "old"
    assert store.owner_of(store.flows["uid-ns-elsewhere"]).name == "elsewhere"
    store.take_due(clock.now)
    store.flow_event("DELETED", flow("old", created="2026-01-01T00:00:00Z"))
    assert store.owner_of(young).name == "young"
    assert [f.name for f in store.take_due(clock.now + 1)] == ["young"]  # told at once it owns it now


def test_the_store_refuses_changes_from_another_thread() -> None:
    # Regression: plain `def` handlers ran in kopf's thread pool and changed the store mid-pass.
    import threading

    store = ClusterStore(Clock())
    store.flow_event("ADDED", flow())
    errors: list[Exception] = []

    def from_a_worker() -> None:
        try:
            store.flow_event("ADDED", flow("other"))
        except RuntimeError as exc:
            errors.append(exc)

    worker = threading.Thread(target=from_a_worker)
    worker.start()
    worker.join()
    assert errors and "other" not in {f.name for f in store.flows.values()}


def test_a_zero_poll_interval_that_slipped_past_the_schema_does_not_stop_scheduling() -> None:
    clock = Clock()
    store = ClusterStore(clock)
    body = flow()
    body["spec"]["scaling"]["pollInterval"] = "0s"
    store.flow_event("ADDED", body)
    due = store.take_due(clock.now)  # divided by zero before
    assert [f.name for f in due] == ["f"] or store.flows["uid-ns-f"].spec is None
    assert store.seconds_until_next(clock.now) is not None


def test_the_handlers_that_feed_the_store_are_coroutines() -> None:
    # kopf runs plain functions in a thread pool; coroutines run on the loop that owns the store.
    import inspect

    from flowkeeper.handlers import operator as handlers

    import kopf

    assert inspect.iscoroutinefunction(handlers.flow_changed)
    watched = {h.selector.any_name: h.fn for h in kopf.get_default_registry()._watching.get_all_handlers()}
    # Deployments and StatefulSets always; Rollouts only with --watch-rollouts (their CRD may be missing).
    assert {"integrationflows", "deployments", "statefulsets"} <= watched.keys() and "rollouts" not in watched
    assert all(inspect.iscoroutinefunction(fn) for fn in watched.values())


def test_a_deployment_and_a_statefulset_of_one_name_are_two_targets() -> None:
    clock = Clock()
    store = ClusterStore(clock)
    store.flow_event("ADDED", flow("on-deployment"))
    store.flow_event("ADDED", flow("on-statefulset", kind="StatefulSet"))
    store.seed(Listing([]), {DEPLOYMENT: Listing([deployment(replicas=2)]), STATEFULSET: Listing([deployment(replicas=5, uid="uid-sts")])})
    by_flow = {f.name: store.target_of(f) for f in store.flows.values()}
    assert (by_flow["on-deployment"].kind, by_flow["on-deployment"].spec_replicas) == ("Deployment", 2)
    assert (by_flow["on-statefulset"].kind, by_flow["on-statefulset"].spec_replicas) == ("StatefulSet", 5)
    # Neither flow claims the other's target: both own theirs.
    assert all(store.owner_of(f) is f for f in store.flows.values())
    store.target_event(STATEFULSET, "DELETED", deployment(uid="uid-sts"))
    assert store.target_of(store.flows["uid-ns-on-statefulset"]) is None
    assert store.target_of(store.flows["uid-ns-on-deployment"]) is not None


def test_a_resync_drops_what_was_deleted_while_a_watch_was_down() -> None:
    # Regression: kopf re-lists after a broken watch without a DELETED for what went away meanwhile;
    # the ghost kept its claim and scaled from a stale spec.
    clock = Clock()
    store = ClusterStore(clock)
    store.flow_event("ADDED", flow("gone", version=5))
    store.flow_event("ADDED", flow("kept", version=6))
    store.flow_event("ADDED", flow("young", version=30))  # created after the list was made
    store.target_event(DEPLOYMENT, "ADDED", deployment("gone", version=7))
    store.resync(Listing([flow("kept", version=6)], {None: "20"}), {DEPLOYMENT: Listing([], {None: "20"})})
    assert sorted(f.name for f in store.flows.values()) == ["kept", "young"]
    assert store.targets == {}
    assert [f.name for f in store.deleted] == ["gone"]
    store.flow_event("MODIFIED", flow("gone", version=8))  # a late event cannot bring it back
    assert "uid-ns-gone" not in store.flows


def test_a_resync_never_drops_on_versions_it_cannot_compare() -> None:
    store = ClusterStore(Clock())
    store.flow_event("ADDED", flow("f", version=5))
    store.resync(Listing([], {None: "opaque"}), {DEPLOYMENT: Listing([], {None: "opaque"})})
    assert list(store.flows) == ["uid-ns-f"]


def test_a_postponed_flow_is_due_at_once_when_it_changes() -> None:
    # Regression: a refused status parked a flow for an hour even after its spec was fixed.
    clock = Clock()
    store = ClusterStore(clock)
    store.flow_event("ADDED", flow())
    store.take_due(clock.now)
    store.postpone("uid-ns-f", clock.now + 3600)
    assert store.take_due(clock.now + 10) == []
    store.flow_event("MODIFIED", flow(generation=2, version=2))
    assert [f.generation for f in store.take_due(clock.now)] == [2]


def test_a_status_write_coming_back_does_not_parse_the_spec_again() -> None:
    store = ClusterStore(Clock())
    store.flow_event("ADDED", flow(version=1))
    first = store.flows["uid-ns-f"].spec
    store.flow_event("MODIFIED", {**flow(version=2), "status": {"phase": "Running"}})
    assert store.flows["uid-ns-f"].spec is first  # same generation: the same parsed spec

    changed = flow(version=3, generation=2, poll="30s")
    store.flow_event("MODIFIED", changed)
    assert store.flows["uid-ns-f"].spec is not first
    assert store.flows["uid-ns-f"].spec.scaling.poll_interval == "30s"


def test_a_flow_relabelled_out_of_the_shard_is_released_not_deleted_and_comes_back() -> None:
    from flowkeeper.domain.selector import parse

    store = ClusterStore(Clock(), selector=parse("shard=a"))
    mine = {**flow(version=1), "metadata": {**flow(version=1)["metadata"], "labels": {"shard": "a"}}}
    store.flow_event("ADDED", mine)
    assert "uid-ns-f" in store.flows

    moved = {**flow(version=2), "metadata": {**flow(version=2)["metadata"], "labels": {"shard": "b"}}}
    store.flow_event("MODIFIED", moved)
    assert "uid-ns-f" not in store.flows and store.deleted == []

    back = {**flow(version=3), "metadata": {**flow(version=3)["metadata"], "labels": {"shard": "a"}}}
    store.flow_event("MODIFIED", back)
    assert "uid-ns-f" in store.flows  # no tombstone kept it out

    store.resync(Listing([{**moved, "metadata": {**moved["metadata"], "resourceVersion": "4"}}]), {})  # a LIST after a watch gap
    assert "uid-ns-f" not in store.flows and store.deleted == []


def test_another_shards_flows_are_not_kept() -> None:
    from flowkeeper.domain.selector import parse

    store = ClusterStore(Clock(), selector=parse("shard=a"))
    store.seed(Listing([flow("x"), {**flow("y"), "metadata": {**flow("y")["metadata"], "labels": {"shard": "a"}}}]), {})
    assert [f.name for f in store.flows.values()] == ["y"]


def test_a_listing_of_what_was_kept_of_each_object_seeds_the_store_as_its_bodies_do() -> None:
    from flowkeeper.domain import selector

    bodies = [flow("x"), {**flow("y"), "metadata": {**flow("y")["metadata"], "labels": {"shard": "a"}}}]
    targets = [deployment(replicas=3)]
    from_bodies = ClusterStore(Clock(), selector=selector.parse("shard=a"))
    from_kept = ClusterStore(Clock(), selector=selector.parse("shard=a"))
    from_bodies.seed(Listing(bodies), {DEPLOYMENT: Listing(targets)})
    kept = [from_kept.listed_flow(body) for body in bodies]
    from_kept.seed(Listing(kept), {DEPLOYMENT: Listing([target_from_body(t, DEPLOYMENT) for t in targets])})

    assert all(isinstance(item, ListedFlow) for item in kept) and [k.record is None for k in kept] == [True, False]
    assert from_kept.flows == from_bodies.flows and list(from_kept.flows) == ["uid-ns-y"]
    assert from_kept.targets == from_bodies.targets and isinstance(from_kept.targets["Deployment/ns/d"], TargetRecord)


def test_a_record_keeps_only_flowkeepers_own_annotations() -> None:
    """kubectl's last-applied-configuration is a copy of the whole manifest: ten thousand of them are
    memory the operator never reads, and a change of someone else's annotation plans nothing."""
    clock = Clock()
    store = ClusterStore(clock)
    body = flow()
    body["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(flow()),
        RESUME_ANNOTATION: "2026-01-01T00:00:00Z",
    }
    store.flow_event("ADDED", body)
    (record,) = store.take_due(clock.now)
    assert record.annotations == {RESUME_ANNOTATION: "2026-01-01T00:00:00Z"}
    assert RESUME_ANNOTATION.startswith(OWN_ANNOTATIONS)

    body["metadata"]["annotations"]["argocd.argoproj.io/tracking-id"] = "app:flowkeeper.io/IntegrationFlow:ns/f"
    body["metadata"]["resourceVersion"] = "2"
    store.flow_event("MODIFIED", body)
    assert store.take_due(clock.now + 1) == []
    del body["metadata"]["annotations"][RESUME_ANNOTATION]
    body["metadata"]["resourceVersion"] = "3"
    store.flow_event("MODIFIED", body)
    assert [f.annotations for f in store.take_due(clock.now + 1)] == [{}]
