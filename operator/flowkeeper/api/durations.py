"""Durations as users write them in manifests ("15s", "5m", "1h30m"), the way Kubernetes and KEDA do."""

from __future__ import annotations

import functools
import re
from typing import Annotated

from pydantic import Field

# Go-style durations restricted to the units that make sense for polling and windows.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]


@functools.lru_cache(maxsize=1024)  # a handful of distinct texts, parsed for every flow in every pass
def to_seconds(duration: str) -> float:
    """'1h30m' -> 5400.0. Raises ValueError for text the CRD pattern would have refused."""
    if not re.fullmatch(DURATION_PATTERN, duration):
        raise ValueError(f"not a duration: {duration!r} (expected e.g. 15s, 5m, 1h30m)")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(duration))
