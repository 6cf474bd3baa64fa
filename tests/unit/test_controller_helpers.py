import random

from flowkeeper.controller.loop import retry_delay, status_patch


def test_status_patch_sends_changes_and_nulls_for_removed_keys() -> None:
    current = {"phase": "Paused", "pause": {"reason": "TargetNotFound"}, "replicas": 2}
    desired = {"phase": "Running", "replicas": 2}
    assert status_patch(desired, current) == {"phase": "Running", "pause": None}


def test_retry_delay_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    first = [retry_delay(1, rng) for _ in range(50)]
    assert all(1.0 <= d <= 3.0 for d in first) and len(set(first)) > 40
    assert all(8.0 <= retry_delay(4, rng) <= 24.0 for _ in range(20))
    assert all(retry_delay(30, rng) <= 180.0 for _ in range(20))
    assert retry_delay(0, rng) == 0.0
