"""A repeatable plan (Plan.repeatable) is one the same inputs give again at any later time, and the
memory `repeated` moves on behaves, for every later input, like the memory of planning every pass
(hypothesis, pure). The loop relies on both to skip planning idle flows (controller/repeats.py)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowkeeper.api.v1alpha1 import DEPLOYMENT
from flowkeeper.domain.flow import flow_from_body, target_from_body
from flowkeeper.domain.planner import FlowMemory, Inputs, Plan, _comparable, plan, repeated
from flowkeeper.domain.signals import FlowSignals
from tests.unit.test_store import deployment, flow

START = 1_000_000.0
POLL = 30.0
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def flow_bodies(draw: st.DrawFn) -> dict:
    body = flow(poll="30s")
    max_replicas = draw(st.integers(1, 8))
    body["spec"]["scaling"].update(
        minReplicas=draw(st.integers(0, max_replicas)),
        maxReplicas=max_replicas,
        queueDepthPerReplica=draw(st.sampled_from([1, 10, 100])),
        activationQueueDepth=draw(st.sampled_from([0, 5])),
        idleAfter=draw(st.sampled_from(["0s", "1m", "10m"])),
        scaleUp={"stabilizationWindow": draw(st.sampled_from(["0s", "1m", "5m"]))},
        scaleDown={"stabilizationWindow": draw(st.sampled_from(["0s", "2m", "5m", "15m"]))},
    )
    if draw(st.booleans()):
        body["spec"]["scaling"]["drainWithin"] = "2m"
    body["spec"]["health"] = {"heartbeatWindow": draw(st.sampled_from(["1m", "10m"])), "notReadyGrace": "2m"}
    body["status"] = {}
    return body


depths = st.sampled_from([0.0, 1.0, 3.0, 50.0, 250.0, 5_000.0, 1e12]) | st.floats(0, 1e6)
optional_rates = st.none() | st.sampled_from([0.0, 0.5, 20.0]) | st.floats(0, 1e6)


@st.composite
def readings(draw: st.DrawFn) -> dict:
    """Signal values, the same each pass: extremes, zero, unknown (None), NaN and negatives too."""
    return {
        "queue_depth": draw(depths | st.sampled_from([None, float("nan"), -1.0, 1e300])),
        "throughput": draw(optional_rates | st.just(float("nan"))),
        "error_ratio": draw(st.none() | st.sampled_from([0.0, 0.5])),
        "cpu_utilization": draw(st.none() | st.sampled_from([0.1, 0.9, 5.0])),
        "last_success_timestamp": draw(st.sampled_from([None] * 6 + [START - 5.0, START - 3600.0])),
        "dead_letter_depth": draw(st.none() | st.sampled_from([0.0, 7.0])),
    }


@dataclass
class Flow:
    """One flow planned pass after pass; each plan's status and scale land as the API server would."""

    body: dict
    replicas: int
    ready: int
    memory: FlowMemory = FlowMemory()

    def inputs(self, now: float, values: dict, memory: FlowMemory | None = None) -> Inputs:
        target = target_from_body(deployment(replicas=self.replicas, ready=self.ready), DEPLOYMENT)
        return Inputs(
            flow=flow_from_body(self.body), target=target, signals=FlowSignals(observed_at=now, **values),
            metrics_enabled=True, memory=self.memory if memory is None else memory, monotonic=now,
        )

    def land(self, made: Plan) -> None:
        self.memory = made.memory
        self.body = {**self.body, "status": made.status}
        if made.scale_to is not None:
            self.replicas = self.ready = made.scale_to  # the new consumers get ready


def settle(f: Flow, values: dict, passes: int = 40) -> tuple[Plan, float] | None:
    """Plans the same values until a plan is repeatable and writes nothing; None if none gets there."""
    now = START
    for _ in range(passes):
        made = plan(f.inputs(now, values), now=now)
        quiet = made.repeatable is not None and made.scale_to is None and not made.events
        if quiet and not made.status_changed(f.body["status"]):
            f.land(made)
            return made, now
        f.land(made)
        now += POLL
    return None


def outcome(made: Plan) -> tuple:
    return _comparable(made.status), made.scale_to, made.events, made.repeatable


@PROPERTY
@given(flow_bodies(), st.integers(0, 8), st.integers(0, 8), readings(), st.integers(1, 80), readings(), st.integers(0, 40))
def test_a_repeatable_plan_repeats_and_its_memory_moves_on_like_planning_every_pass(
    body, replicas, ready, values, quiet_passes, later_values, later_passes
) -> None:
    f = Flow(body, replicas, min(ready, replicas))
    settled = settle(f, values)
    if settled is None:
        return
    first, now = settled
    planned, skipped = f.memory, f.memory
    # The same inputs, pass after pass: planning gives the same plan every time (written nothing)...
    for _ in range(quiet_passes):
        now += POLL
        made = plan(f.inputs(now, values, planned), now=now)
        assert outcome(made) == outcome(first)
        planned = made.memory
        skipped = repeated(skipped, first.repeatable, now)
    # ...and whatever comes next is planned the same from either memory, pass after pass.
    for _ in range(later_passes + 1):
        now += POLL
        from_planned = plan(f.inputs(now, later_values, planned), now=now)
        from_skipped = plan(f.inputs(now, later_values, skipped), now=now)
        assert outcome(from_planned) == outcome(from_skipped)
        f.land(from_planned)
        planned, skipped = from_planned.memory, from_skipped.memory


def test_a_flow_at_rest_is_repeatable() -> None:
    f = Flow(flow(poll="30s") | {"status": {}}, replicas=1, ready=1)
    settled = settle(f, {"queue_depth": 50.0, "throughput": 0.0})
    assert settled is not None and settled[0].repeatable is not None


def test_what_the_clock_can_still_change_is_not_repeatable() -> None:
    # Work waits and the last success ages: HeartbeatLost may come with time alone.
    f = Flow(flow(poll="30s") | {"status": {}}, replicas=1, ready=1)
    assert settle(f, {"queue_depth": 50.0, "last_success_timestamp": START - 5.0}) is None
    # No consumer ready while work waits: the not-ready grace runs.
    f = Flow(flow(poll="30s") | {"status": {}}, replicas=1, ready=0)
    assert settle(f, {"queue_depth": 50.0}) is None


def test_a_scale_down_window_still_holds_after_skipped_passes() -> None:
    """Steady at 3 for an hour of skipped passes, then the backlog goes: the scale-down window of 5
    minutes still counts from the last skipped pass, as it would from the last planned one."""
    body = flow(poll="30s") | {"status": {}}
    body["spec"]["scaling"].update(minReplicas=1, maxReplicas=10, queueDepthPerReplica=100, scaleDown={"stabilizationWindow": "5m"})
    f = Flow(body, replicas=3, ready=3)
    settled = settle(f, {"queue_depth": 300.0})
    assert settled is not None
    first, now = settled
    memory = f.memory
    for _ in range(120):
        now += POLL
        memory = repeated(memory, first.repeatable, now)
    down_at = None
    for i in range(1, 20):
        made = plan(f.inputs(now + i * POLL, {"queue_depth": 0.0}, memory), now=now + i * POLL)
        f.land(made)
        memory = made.memory
        if made.scale_to is not None:
            down_at = i * POLL
            break
    assert down_at is not None and down_at >= 300.0
