"""Bounds of the IntegrationFlow spec as the operator parses it (api/v1alpha1.py): a value the CRD would
refuse but that slipped past an older CRD is refused by the model, and the flow is reported InvalidSpec
instead of reaching the planner or the loop. The same bounds at `kubectl apply` time:
tests/integration/test_api_schema.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from flowkeeper.api.crd import custom_resource_definition
from flowkeeper.api.durations import DURATION_PATTERN, to_seconds
from flowkeeper.api.v1alpha1 import DEPLOYMENT, IntegrationFlowSpec
from flowkeeper.controller.store import ClusterStore
from flowkeeper.domain.flow import flow_from_body
from flowkeeper.domain.planner import Inputs, plan
from tests.unit.test_store import deployment, flow

HOUR = 3600.0
# (section, field) -> (minimum, maximum) in seconds, as users are told in docs/scaling.md and docs/health.md.
DURATIONS = {
    ("scaling", "pollInterval"): (1, HOUR),
    ("scaling", "idleAfter"): (0, 24 * HOUR),
    ("scaling", "drainWithin"): (1, 24 * HOUR),
    ("scaling", "scaleUp.stabilizationWindow"): (0, HOUR),
    ("scaling", "scaleDown.stabilizationWindow"): (0, HOUR),
    ("health", "heartbeatWindow"): (1, 24 * HOUR),
    ("health", "notReadyGrace"): (1, 24 * HOUR),
    ("health", "queueGrowthWindow"): (5, 168 * HOUR),
    ("health", "baselineWindow"): (5, 168 * HOUR),
}
COUNTS = {
    ("scaling", "queueDepthPerReplica"): (1, 10**9),
    ("scaling", "activationQueueDepth"): (0, 10**9),
    ("scaling", "fallback.replicas"): (0, 10_000),
    ("scaling", "maxReplicas"): (1, 10_000),
    ("scaling", "scaleUp.maxReplicasPerStep"): (1, 10_000),
    ("scaling", "cpuUtilization"): (1, 100),
}


def spec_with(section: str, dotted: str, value: Any, **section_fields: Any) -> dict:
    """A minimal valid spec (wire form) with one field set; maxReplicas at its highest so that only
    the field under test can break a rule."""
    body = {
        "scaleTargetRef": {"name": "d"},
        "source": {"broker": "rabbitmq", "queue": "q"},
        "scaling": {"maxReplicas": 10_000},
        "health": {},
    }
    body[section].update(section_fields)
    node = body[section]
    *parents, leaf = dotted.split(".")
    for parent in parents:
        node = node.setdefault(parent, {})
    node[leaf] = value
    return body


def refusal(body: dict) -> str | None:
    """The field path pydantic names when it refuses the spec, None when it accepts it."""
    try:
        IntegrationFlowSpec.model_validate(body)
    except ValidationError as exc:
        return ".".join(str(part) for part in exc.errors()[0]["loc"])
    return None


# Durations as users could write them, extremes included: 0s, 0ms, a millionth of a second, 1e9h.
units = st.sampled_from(["ms", "s", "m", "h"])
numbers = st.one_of(
    st.sampled_from(["0", "1", "5", "59", "60", "999", "1000", "3600", "86400", "1000000000"]),
    st.integers(0, 10**12).map(str),
    st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)).map(lambda t: f"{t[0]}.{t[1]:06d}"),
)
durations = st.lists(st.tuples(numbers, units), min_size=1, max_size=3).map(lambda parts: "".join(n + u for n, u in parts))


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from(sorted(DURATIONS)), text=durations)
def test_a_duration_is_accepted_exactly_within_its_bounds(field: tuple[str, str], text: str) -> None:
    low, high = DURATIONS[field]
    refused = refusal(spec_with(*field, text))
    if len(text) <= 32 and low <= to_seconds(text) <= high:  # and no longer than the schema allows
        assert refused is None, (field, text)
    else:
        assert refused == f"{field[0]}.{field[1]}", (field, text, refused)


@pytest.mark.parametrize("field", sorted(DURATIONS))
def test_duration_bounds_are_inclusive(field: tuple[str, str]) -> None:
    low, high = DURATIONS[field]
    assert refusal(spec_with(*field, f"{low * 1000:.0f}ms")) is None
    assert refusal(spec_with(*field, f"{high:.0f}s")) is None
    assert refusal(spec_with(*field, f"{high * 1000 + 1:.0f}ms")) == ".".join(field)
    if low > 0:
        assert refusal(spec_with(*field, f"{low * 1000 - 1:.0f}ms")) == ".".join(field)


@pytest.mark.parametrize("text", ["-1s", "1e9h", "soon", "5d", ""])
def test_malformed_durations_are_refused(text: str) -> None:
    assert refusal(spec_with("scaling", "pollInterval", text)) == "scaling.pollInterval"


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(sorted(COUNTS)), value=st.integers(-(2**70), 2**70) | st.sampled_from([-1, 0, 1, 10**9, 10**9 + 1]))
def test_a_count_is_accepted_exactly_within_its_bounds(field: tuple[str, str], value: int) -> None:
    low, high = COUNTS[field]
    refused = refusal(spec_with(*field, value))
    assert (refused is None) == (low <= value <= high), (field, value, refused)


@pytest.mark.parametrize("value", [-0.01, 1.01, float("inf"), float("nan")])
def test_tolerance_is_a_fraction(value: float) -> None:
    assert refusal(spec_with("scaling", "tolerance", value)) == "scaling.tolerance"


def test_fallback_replicas_at_most_max_replicas() -> None:
    assert refusal(spec_with("scaling", "fallback.replicas", 10, maxReplicas=10)) is None
    with pytest.raises(ValidationError, match="spec.scaling.fallback.replicas must be less than or equal to spec.scaling.maxReplicas"):
        IntegrationFlowSpec.model_validate(spec_with("scaling", "fallback.replicas", 11, maxReplicas=10))


def test_cross_field_rules_of_the_crd_hold_in_the_model_too() -> None:
    with pytest.raises(ValidationError, match="spec.scaling.minReplicas must be less than or equal to spec.scaling.maxReplicas"):
        IntegrationFlowSpec.model_validate(spec_with("scaling", "minReplicas", 5, maxReplicas=2))
    body = spec_with("scaling", "maxReplicas", 3)
    body["source"] = {"broker": "kafka", "topic": "t"}
    with pytest.raises(ValidationError, match="spec.source.consumerGroup is required when broker is kafka"):
        IntegrationFlowSpec.model_validate(body)


def test_defaults_are_within_the_bounds() -> None:
    # pydantic does not validate defaults: round-trip them through validation.
    defaults = IntegrationFlowSpec.model_validate(spec_with("scaling", "maxReplicas", 10)).to_wire()
    assert IntegrationFlowSpec.model_validate(defaults).to_wire() == defaults


def _walk(node: Any, path: str = "spec"):
    if isinstance(node, dict):
        yield path, node
        for name, sub in node.get("properties", {}).items():
            yield from _walk(sub, f"{path}.{name}")


def test_every_duration_and_number_of_the_spec_has_an_upper_bound() -> None:
    spec = custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    seen = 0
    for path, node in _walk(spec):
        if node.get("pattern") == DURATION_PATTERN:
            messages = [rule["message"] for rule in node.get("x-kubernetes-validations", [])]
            assert any(m.startswith(f"{path} must be at most ") for m in messages), path
            seen += 1
        elif node.get("type") in ("integer", "number"):
            assert "maximum" in node, path
    assert seen == len(DURATIONS)


# ---------------------------------------------------------------------- a spec past an older CRD


@pytest.mark.parametrize("poll", ["0s", "0ms", "1000000000h"])
def test_a_spec_past_an_older_crd_is_invalid_not_a_crash(poll: str) -> None:
    body = flow(poll=poll)
    record = flow_from_body(copy.deepcopy(body))
    assert record.spec is None and "scaling.pollInterval" in (record.spec_error or "")
    result = plan(Inputs(flow=record, target=None), now=1000.0)
    (ready,) = [c for c in result.status["conditions"] if c["type"] == "Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "pollInterval" in ready["message"]
    # The loop's schedule (which divides by the poll interval) still works for the flow.
    store = ClusterStore(lambda: 1000.0)
    store.flow_event("ADDED", body)
    store.target_event(DEPLOYMENT, "ADDED", deployment())
    assert [f.name for f in store.take_due(1000.0)] == ["f"]
    assert store.seconds_until_next(1000.0) is not None
