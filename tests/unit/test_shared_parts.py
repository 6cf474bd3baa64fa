"""Equal parts of many flows' specs are one object (api/shared_parts.py), and sharing never changes
what a spec says."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, ValidationError

from flowkeeper.api.shared_parts import SharedParts
from flowkeeper.api.v1alpha1 import IntegrationFlowSpec
from flowkeeper.domain.flow import flow_from_body


def body(i: int, **scaling) -> dict:
    return {
        "metadata": {"name": f"flow-{i}", "namespace": "ns", "uid": f"u{i}", "generation": 1, "resourceVersion": "1"},
        "spec": {"scaleTargetRef": {"name": f"flow-{i}"}, "source": {"broker": "rabbitmq", "queue": f"q-{i}"},
                 "scaling": {"minReplicas": 1, "maxReplicas": 20, "pollInterval": "5s", **scaling}},
    }


def test_flows_from_one_template_share_their_equal_parts_and_keep_their_own() -> None:
    a, b = flow_from_body(body(1)).spec, flow_from_body(body(2)).spec
    assert a.scaling is b.scaling and a.health is b.health and a.scaling.scale_up is b.scaling.scale_up
    assert a.source is not b.source and (a.source.queue, b.source.queue) == ("q-1", "q-2")
    assert a.scale_target_ref.name == "flow-1" and b.scale_target_ref.name == "flow-2"
    other = flow_from_body(body(3, maxReplicas=7)).spec
    assert other.scaling is not a.scaling and other.scaling.max_replicas == 7 and a.scaling.max_replicas == 20


def test_a_spec_cannot_be_changed_through_any_flow() -> None:
    spec = flow_from_body(body(1)).spec
    with pytest.raises(ValidationError):
        spec.scaling.max_replicas = 1  # would change every flow sharing this part


class Inner(BaseModel):
    model_config = ConfigDict(frozen=True)
    value: float | int | bool | str | None


class Listed(BaseModel):
    model_config = ConfigDict(frozen=True)
    values: list[int]


class Outer(BaseModel):
    model_config = ConfigDict(frozen=True)
    inner: Inner
    listed: Listed | None = None


def test_values_that_compare_equal_but_differ_in_type_are_not_one_part() -> None:
    parts = SharedParts()
    one, true, one_float = (parts.share(Outer(inner=Inner(value=v))) for v in (1, True, 1.0))
    assert (type(one.inner.value), type(true.inner.value), type(one_float.inner.value)) == (int, bool, float)
    assert parts.share(Outer(inner=Inner(value=1))).inner is one.inner


def test_a_part_with_a_list_stays_its_own_and_its_equal_neighbours_are_still_shared() -> None:
    parts = SharedParts()
    first = parts.share(Outer(inner=Inner(value="x"), listed=Listed(values=[1])))
    second = parts.share(Outer(inner=Inner(value="x"), listed=Listed(values=[1])))
    assert first.listed is not second.listed and first.listed == second.listed
    assert first.inner is second.inner


def test_the_table_is_bounded_and_keeps_the_parts_met_again_and_again() -> None:
    parts = SharedParts(size=3)
    common = parts.share(Outer(inner=Inner(value="common"))).inner
    for i in range(50):
        parts.share(Outer(inner=Inner(value=f"own-{i}")))  # each flow's own part, never met again
        assert parts.share(Outer(inner=Inner(value="common"))).inner is common
        assert len(parts) <= 3


scaling_values = st.fixed_dictionaries({}, optional={
    "minReplicas": st.integers(0, 5),
    "maxReplicas": st.integers(5, 500),
    "pollInterval": st.sampled_from(["1s", "5s", "30s", "1m", "1h"]),
    "queueDepthPerReplica": st.integers(1, 10**9),
})


@settings(max_examples=200, deadline=None)
@given(st.lists(scaling_values, min_size=1, max_size=8))
def test_sharing_never_changes_what_a_spec_says(scalings: list[dict]) -> None:
    for i, scaling in enumerate(scalings):
        shared = flow_from_body(body(i, **scaling)).spec
        alone = IntegrationFlowSpec.model_validate(body(i, **scaling)["spec"])
        assert shared.model_dump() == alone.model_dump()
