from flowkeeper.domain.conditions import get_condition, set_condition


def test_transition_time_moves_only_when_status_flips() -> None:
    first = set_condition([], "Ready", False, "TargetNotFound", "missing", generation=1, now=1000)
    same = set_condition(first, "Ready", False, "TargetNotFound", "missing", generation=1, now=2000)
    assert same == first
    flipped = set_condition(same, "Ready", True, "TargetFound", "ok", generation=1, now=3000)
    assert get_condition(flipped, "Ready")["lastTransitionTime"] == "1970-01-01T00:50:00Z"
    assert get_condition(flipped, "Ready")["status"] == "True"


def test_conditions_keep_a_stable_order_and_shape() -> None:
    conditions = set_condition([], "Paused", False, "NotPaused", "", generation=2, now=0)
    conditions = set_condition(conditions, "Ready", True, "TargetFound", "", generation=2, now=0)
    assert [c["type"] for c in conditions] == ["Ready", "Paused"]
    assert set(conditions[0]) == {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
    assert conditions[0]["observedGeneration"] == 2
