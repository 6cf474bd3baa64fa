"""The Argo CD health check (examples/argocd/health.lua), run by a real Lua 5.1 runtime as Argo CD's
gopher-lua would run it, over status fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from lupa import lua51

SCRIPT = (Path(__file__).resolve().parents[2] / "examples" / "argocd" / "health.lua").read_text()


def health(obj: dict) -> tuple[str, str]:
    lua = lua51.LuaRuntime()
    lua.globals().obj = _to_lua(lua, obj)  # Argo CD hands the object over as Lua tables
    result = lua.execute(SCRIPT)
    return result["status"], result["message"]


def _to_lua(lua, value):
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])  # 1-based, as ipairs expects
    return value


def flow(generation: int = 2, observed: int | None = 2, **conditions: tuple[str, str]) -> dict:
    status: dict = {"phase": "Running", "severity": "None"}
    if observed is not None:
        status["observedGeneration"] = observed
    status["conditions"] = [
        {"type": t, "status": s, "reason": r, "message": "details"} for t, (s, r) in conditions.items()
    ]
    return {"metadata": {"generation": generation}, "status": status}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"metadata": {"generation": 1}}, "Progressing"),
        (flow(observed=1, Ready=("True", "TargetFound")), "Progressing"),
        (flow(Ready=("True", "TargetFound"), Healthy=("True", "Healthy")), "Healthy"),
        (flow(Ready=("False", "Paused"), Paused=("True", "ConsumerConfigurationError")), "Suspended"),
        (flow(Ready=("False", "TargetNotFound"), Paused=("False", "NotPaused")), "Degraded"),
        (flow(Ready=("True", "TargetFound"), Healthy=("False", "ErrorRatioHigh")), "Degraded"),
        (flow(Ready=("True", "TargetFound"), Healthy=("Unknown", "SignalsUnknown")), "Healthy"),
    ],
)
def test_health_status(obj: dict, expected: str) -> None:
    status, message = health(obj)
    assert status == expected
    assert message


def test_degraded_message_names_the_reason() -> None:
    _, message = health(flow(Ready=("True", "TargetFound"), Healthy=("False", "DeadLetters")))
    assert "DeadLetters" in message
