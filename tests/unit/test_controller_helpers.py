import asyncio

from flowkeeper.adapters.kubernetes import Listing

from hypothesis import given, settings
from hypothesis import strategies as st
import random

from flowkeeper.controller.executor import retry_delay, status_patch
from flowkeeper.controller.loop import FlowController
from flowkeeper.controller.store import ClusterStore
from tests.unit.test_store import deployment, flow


def test_status_patch_sends_changes_and_nulls_for_removed_keys() -> None:
    current = {"phase": "Paused", "pause": {"reason": "TargetNotFound"}, "replicas": 2}
    desired = {"phase": "Running", "replicas": 2}
    assert status_patch(desired, current) == {"phase": "Running", "pause": None}


def test_retry_delay_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    first = [retry_delay(1, rng) for _ in range(50)]
    assert all(1.0 <= d <= 3.0 for d in first) and len(set(first)) > 40
    assert all(8.0 <= retry_delay(4, rng) <= 24.0 for _ in range(20))
    assert all(retry_delay(30, rng) <= 180.0 for _ in range(20))
    assert retry_delay(0, rng) == 0.0


def test_failed_reads_back_off_with_jitter_and_recover() -> None:
    from flowkeeper.adapters.prometheus import PassResult
    from flowkeeper.controller.loop import FlowController
    from flowkeeper.controller.store import ClusterStore
    from flowkeeper.domain.errors import ErrorClass
    from flowkeeper.domain.signals import SignalsFailure
    from tests.unit.test_store import flow

    store = ClusterStore(lambda: 1000.0)
    store.flow_event("ADDED", flow(poll="10s"))
    controller = FlowController(store, gateway=None)
    down = PassResult(signals={}, failures={"uid-ns-f": SignalsFailure(ErrorClass.transient, "PrometheusUnavailable", "refused")}, queries=1, seconds=0)
    waits = []
    for _ in range(4):
        controller._back_off_failed_reads(down, 1000.0)
        waits.append(store.seconds_until_next(1000.0))
    assert 10 <= waits[0] <= 15 and 20 <= waits[1] <= 30 and 40 <= waits[2] <= 60 and 40 <= waits[3] <= 60
    controller._back_off_failed_reads(PassResult(signals={}, failures={}, queries=1, seconds=0), 1000.0)
    assert controller.read_failures == {}


class BrokenGateway:
    """Lists one flow and its Deployment, then fails every write with an error nobody expects."""

    def __init__(self) -> None:
        self.writes = 0

    def list_objects(self, kind, namespaces, keep=None):  # bodies: the store takes them as they are
        return Listing([flow(poll="1s")] if kind == "flows" else [deployment()])

    def patch_flow_status(self, *args):
        self.writes += 1
        raise RuntimeError("a bug in a client library")

    def create_event(self, event):
        return "e"


def test_a_pass_that_fails_unexpectedly_does_not_end_the_loop(caplog) -> None:
    gateway = BrokenGateway()
    controller = FlowController(ClusterStore(), gateway)

    async def run_for_a_while() -> None:
        stopped = asyncio.Event()
        loop = asyncio.create_task(controller.run_forever(stopped))
        await asyncio.sleep(4.5)  # the first retry comes 1-3 s after the failure
        stopped.set()
        await asyncio.wait_for(loop, 5)  # ends because it was told to, not because of the error

    asyncio.run(run_for_a_while())
    assert gateway.writes >= 2, "the loop stopped after the first failed pass"
    assert "a bug in a client library" in caplog.text


def test_status_patch_removes_nested_keys_that_went_away() -> None:
    # Regression: a merge patch merges nested objects, so signals.cpuUtilization (or a pause record's
    # resumeRequest) that went away stayed on the API server and every pass rewrote the status.
    current = {"signals": {"queueDepth": 5, "cpuUtilization": 0.4}, "pause": {"reason": "A", "resumeRequest": "1"}}
    desired = {"signals": {"queueDepth": 5}, "pause": {"reason": "B"}}
    assert status_patch(desired, current) == {"signals": {"cpuUtilization": None}, "pause": {"reason": "B", "resumeRequest": None}}


_LEAF = st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2))
_TREE = st.recursive(_LEAF, lambda children: st.dictionaries(st.sampled_from("abcd"), children, max_size=3), max_leaves=8)
_STATUSES = st.dictionaries(st.sampled_from("wxyz"), _TREE, max_size=4)


def _merge(target, patch):
    """RFC 7386, as the API server applies a merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


@settings(deadline=None)
@given(current=_STATUSES, desired=_STATUSES)
def test_status_patch_applied_as_a_merge_patch_gives_the_desired_status(current, desired) -> None:
    assert _merge(current, status_patch(desired, current)) == desired


def test_the_startup_list_lists_every_watched_target_kind() -> None:
    from flowkeeper.api.v1alpha1 import DEPLOYMENT, ROLLOUT, STATEFULSET

    class ListingGateway:
        def __init__(self) -> None:
            self.listed: list[str] = []

        def list_objects(self, kind, namespaces, keep=None):  # bodies: the store takes them as they are
            self.listed.append(kind)
            return Listing([flow(kind="StatefulSet")] if kind == "flows" else [deployment()] if kind == "statefulsets" else [])

    for kinds, expected in (((DEPLOYMENT, STATEFULSET), ["flows", "deployments", "statefulsets"]),
                            ((DEPLOYMENT, STATEFULSET, ROLLOUT), ["flows", "deployments", "statefulsets", "rollouts"])):
        gateway, store = ListingGateway(), ClusterStore()
        asyncio.run(FlowController(store, gateway, target_kinds=kinds)._seed(asyncio.Event()))
        assert gateway.listed == expected
        assert store.target_of(next(iter(store.flows.values()))).kind == "StatefulSet"  # LIST items carry no kind: the loop gives it


def test_a_flow_awaiting_its_target_is_planned_again_when_the_grace_ends() -> None:
    """Its poll interval (an hour here) would leave it Pending long after the grace: the plan says when."""
    from flowkeeper.domain.planner import TARGET_GRACE_SECONDS
    from tests.unit.test_planner_pause import CREATED, CREATED_AT

    now = CREATED_AT + 10
    store = ClusterStore(lambda: now)
    store.flow_event("ADDED", flow(poll="1h", created=CREATED))
    controller = FlowController(store, gateway=None, wall_clock=lambda: now, monotonic=lambda: now)
    (due,) = store.take_due(now)
    assert store.seconds_until_next(now) == 3600 - now % 3600  # its own interval's grid
    assert controller._plan(due, None, None, None, False, now, now).status["phase"] == "Pending"
    assert store.seconds_until_next(now) == TARGET_GRACE_SECONDS - 10
