import pytest

from flowkeeper.api.durations import to_seconds


@pytest.mark.parametrize(("text", "seconds"), [("15s", 15), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1.5m", 90)])
def test_durations(text: str, seconds: float) -> None:
    assert to_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5d", "-1s", "m5"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        to_seconds(text)
