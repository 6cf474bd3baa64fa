"""Status conditions in the metav1.Condition shape, updated by type.

lastTransitionTime moves only when a condition's status flips, so rewriting an unchanged condition
yields an identical list, and the caller can skip the API write.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

READY = "Ready"
HEALTHY = "Healthy"
METRICS_AVAILABLE = "MetricsAvailable"
PAUSED = "Paused"
SCALING_LIMITED = "ScalingLimited"
SCALING_CONFLICT = "ScalingConflict"

# The order conditions are listed in, so the same set always serialises the same way.
ORDER = (READY, HEALTHY, METRICS_AVAILABLE, PAUSED, SCALING_LIMITED, SCALING_CONFLICT)
# Conditions whose True is the bad news.
TRUE_IS_BAD = frozenset({PAUSED, SCALING_LIMITED, SCALING_CONFLICT})


def rfc3339(unix_seconds: float) -> str:
    return dt.datetime.fromtimestamp(int(unix_seconds), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    wire_status = "Unknown" if status is None else ("True" if status else "False")
    previous = next((c for c in conditions if c.get("type") == type_), None)
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
    others = [c for c in conditions if c.get("type") != type_]
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted([*others, condition], key=lambda c: rank.get(c.get("type", ""), len(ORDER)))


def get_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)
