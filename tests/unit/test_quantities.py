"""Decimals of the spec are resource.Quantity (api/quantities.py): read as the API server reads them,
written back as strings. The same bounds at `kubectl apply` time: tests/integration/test_api_schema.py."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.utils import parse_quantity
from pydantic import ValidationError

from flowkeeper.api.quantities import QUANTITY_PATTERN, to_float, to_text
from flowkeeper.api.v1alpha1 import HealthSpec, ScalingSpec

# Every quantity field: wire name -> (model, python name, minimum, maximum, default as written in the CRD).
FIELDS = {
    "tolerance": (ScalingSpec, "tolerance", 0, 1, "0.1"),
    "errorRatio": (HealthSpec, "error_ratio", 0, 1, "0.01"),
    "throughputDeviation": (HealthSpec, "throughput_deviation", 0, 10, "0.3"),
    "latencyFactor": (HealthSpec, "latency_factor", 1, 1000, "2"),
}

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(finite)
def test_a_float_written_as_text_reads_back_the_same(number: float) -> None:
    text = to_text(number)
    assert re.fullmatch(QUANTITY_PATTERN, text), text  # the API server's pattern takes it
    assert to_float(text) == number
    assert parse_quantity(text) == Decimal(repr(number))  # exact: the text is the float's own digits


@given(st.integers(-(2**53), 2**53))
def test_integers_read_as_themselves_and_print_without_a_point(number: int) -> None:
    assert to_float(number) == number and to_float(str(number)) == number
    assert to_text(float(number)) == str(number)


@pytest.mark.parametrize(("text", "number"), [("0.05", 0.05), ("50m", 0.05), ("1", 1.0), (1, 1.0), (".5", 0.5), ("1e-3", 0.001), ("2k", 2000.0), ("1Ki", 1024.0)])
def test_quantities_as_kubernetes_writes_them(text: str | int, number: float) -> None:
    assert to_float(text) == pytest.approx(number)


@pytest.mark.parametrize("value", ["abc", "", "0.1.2", "1 m", "m", 0.5, True, None, [1]])
def test_what_is_not_a_quantity_is_refused(value: object) -> None:
    # A float too: the CRD takes an integer or a string only, so the model does the same.
    with pytest.raises(ValueError):
        to_float(value)


@pytest.mark.parametrize("wire", FIELDS)
def test_defaults_are_strings_on_the_wire_and_floats_in_python(wire: str) -> None:
    model, name, _, _, default = FIELDS[wire]
    assert getattr(model(), name) == float(default)
    assert model().to_wire()[wire] == default


@given(data=st.data(), wire=st.sampled_from(sorted(FIELDS)))
def test_bounds_hold_at_the_extremes_and_inside(data: st.DataObject, wire: str) -> None:
    model, name, low, high, _ = FIELDS[wire]
    inside = data.draw(st.floats(low, high))
    parsed = model.model_validate({wire: to_text(inside)})
    assert getattr(parsed, name) == inside
    assert model.model_validate({wire: parsed.to_wire()[wire]}) == parsed  # what to_wire() writes reads back
    for edge in (low, high):
        assert getattr(model.model_validate({wire: edge}), name) == edge
    outside = data.draw(st.floats(high, 1e12, exclude_min=True) | st.floats(-1e12, low, exclude_max=True))
    with pytest.raises(ValidationError, match="must be at (least|most)"):
        model.model_validate({wire: to_text(outside)})


def test_milli_units_meet_the_bounds_exactly() -> None:
    assert ScalingSpec.model_validate({"tolerance": "1000m"}).tolerance == 1.0
    with pytest.raises(ValidationError, match="must be at most 1"):
        ScalingSpec.model_validate({"tolerance": "1001m"})
