"""Durations as users write them in manifests ("15s", "5m", "1h30m"), the way Kubernetes and KEDA do."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema

# Go-style durations restricted to the units that make sense for polling and windows.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]

# The JSON-schema key that carries a duration's bounds to the CRD generator (api/crd.py), which turns
# it into CEL rules whose messages name the field's full path.
BOUNDS_KEY = "x-flowkeeper-duration-bounds"


@functools.lru_cache(maxsize=1024)  # a handful of distinct texts, parsed for every flow in every pass
def to_seconds(duration: str) -> float:
    """'1h30m' -> 5400.0. Raises ValueError for text the CRD pattern would have refused."""
    if not re.fullmatch(DURATION_PATTERN, duration):
        raise ValueError(f"not a duration: {duration!r} (expected e.g. 15s, 5m, 1h30m)")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(duration))


@dataclass(frozen=True)
class Within:
    """Inclusive bounds of a duration field. The model refuses values outside them, and the CRD gets
    the same bounds as CEL rules, so the API server refuses them at `kubectl apply` time."""

    minimum: str
    maximum: str

    def __post_init__(self) -> None:
        if not 0 <= to_seconds(self.minimum) <= to_seconds(self.maximum):
            raise ValueError(f"empty bounds {self.minimum}..{self.maximum}")

    def check(self, value: str) -> str:
        seconds = to_seconds(value)
        if seconds < to_seconds(self.minimum):
            raise ValueError(f"must be at least {self.minimum}")
        if seconds > to_seconds(self.maximum):
            raise ValueError(f"must be at most {self.maximum}")
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        # After the pattern: only well-formed durations reach check().
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        json_schema = handler(schema)
        json_schema[BOUNDS_KEY] = {"minimum": self.minimum, "maximum": self.maximum}
        return json_schema


def duration_within(minimum: str, maximum: str) -> Any:
    """A duration field type bounded to [minimum, maximum]."""
    return Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32), Within(minimum, maximum)]
