"""Decimal numbers of the spec as Kubernetes writes them: resource.Quantity ("0.1", "50m", 2), per the
API conventions (no floats in a spec: they do not round-trip between languages).

In Python a quantity is a float (what the domain computes with); it is written back as a string, so
`to_wire()` and the CRD's defaults carry strings.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

from kubernetes.utils import parse_quantity
from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema

# resource.Quantity's text, as controller-gen writes it into CRDs.
QUANTITY_PATTERN = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"

# The JSON-schema key that carries a quantity's bounds to the CRD generator (api/crd.py), which turns
# it into CEL rules whose messages name the field's full path.
BOUNDS_KEY = "x-flowkeeper-quantity-bounds"


def to_float(value: int | str) -> float:
    """2 -> 2.0, "0.1" -> 0.1, "50m" -> 0.05. Raises ValueError for what the CRD pattern refuses."""
    # bool is an int to Python, not to the API server.
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"a quantity is an integer or a string such as \"0.1\" or \"50m\", not {value!r}")
    if isinstance(value, str) and not re.fullmatch(QUANTITY_PATTERN, value):
        raise ValueError(f"not a quantity: {value!r} (expected e.g. \"0.1\", \"50m\", \"2\")")
    number = float(parse_quantity(value))
    if not math.isfinite(number):
        raise ValueError(f"not a finite quantity: {value!r}")
    return number


def to_text(number: float) -> str:
    """The quantity's text: 2.0 -> "2", 0.1 -> "0.1"; repr() is the shortest text that reads back as
    the same float, and its exponent form (1e-05) is valid Quantity text too."""
    if number.is_integer() and abs(number) <= 2**53:  # integers a float holds exactly
        return str(int(number))
    return repr(number)


@dataclass(frozen=True)
class QuantityWithin:
    """Inclusive bounds of a quantity field. The model refuses values outside them, and the CRD gets
    the same bounds as CEL rules (quantity comparisons), so the API server refuses them at apply time."""

    minimum: str
    maximum: str

    def check(self, value: Any) -> float:
        number = to_float(value)
        if number < to_float(self.minimum):
            raise ValueError(f"must be at least {self.minimum}")
        if number > to_float(self.maximum):
            raise ValueError(f"must be at most {self.maximum}")
        return number

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            self.check,
            json_schema_input_schema=core_schema.union_schema([core_schema.int_schema(), core_schema.str_schema()]),
            serialization=core_schema.plain_serializer_function_ser_schema(to_text, return_schema=core_schema.str_schema()),
        )

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        # The shape controller-gen gives resource.Quantity (an int-or-string with the Quantity pattern).
        return {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
            BOUNDS_KEY: {"minimum": self.minimum, "maximum": self.maximum},
        }


def quantity_within(minimum: str, maximum: str) -> Any:
    """A quantity field type bounded to [minimum, maximum], a float in Python."""
    return Annotated[float, QuantityWithin(minimum, maximum)]
