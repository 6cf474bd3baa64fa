"""Status conditions in the metav1.Condition shape, updated by type.

lastTransitionTime moves only when a condition's status flips, so rewriting an unchanged condition
yields an identical list, and the caller can skip the API write.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

READY = "Ready"
HEALTHY = "Healthy"
METRICS_AVAILABLE = "MetricsAvailable"
PAUSED = "Paused"
SCALING_LIMITED = "ScalingLimited"
SCALING_CONFLICT = "ScalingConflict"

# The order conditions are listed in, so the same set always serialises the same way.
ORDER = (READY, HEALTHY, METRICS_AVAILABLE, PAUSED, SCALING_LIMITED, SCALING_CONFLICT)
_RANK = {name: i for i, name in enumerate(ORDER)}
# Conditions whose True is the bad news.
TRUE_IS_BAD = frozenset({PAUSED, SCALING_LIMITED, SCALING_CONFLICT})


def rfc3339(unix_seconds: float) -> str:
    return _rfc3339_of_second(int(unix_seconds))


@functools.lru_cache(maxsize=8)  # a pass over thousands of flows stamps the same few seconds
def _rfc3339_of_second(second: int) -> str:
    return dt.datetime.fromtimestamp(second, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> float | None:
    """Unix seconds of an RFC 3339 time as conditions carry it; None when absent or malformed."""
    try:
        return dt.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        return None


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: float,
) -> list[dict[str, Any]]:
    """Returns a new list with the condition of `type_` set; the others are left as they are."""
    by_type = {c.get("type", ""): c for c in conditions}
    by_type[type_] = make_condition(by_type.get(type_), type_, status, reason, message, generation=generation, now=now)
    return ordered(by_type.values())


def make_condition(
    previous: dict[str, Any] | None,
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: float,
) -> dict[str, Any]:
    """The condition of `type_`, following `previous` (its lastTransitionTime stays while the status does)."""
    wire_status = "Unknown" if status is None else ("True" if status else "False")
    since = previous["lastTransitionTime"] if previous and previous.get("status") == wire_status else rfc3339(now)
    condition = {
        "type": type_,
        "status": wire_status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def ordered(conditions) -> list[dict[str, Any]]:
    """The conditions in ORDER, so the same set always serialises the same way."""
    return sorted(conditions, key=lambda c: _RANK.get(c.get("type", ""), len(ORDER)))


def get_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)
