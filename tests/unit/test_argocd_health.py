"""The Argo CD health check (examples/argocd/health.lua), run by a real Lua 5.1 runtime as Argo CD's
gopher-lua would run it, over status fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from lupa import lua51

from tests.unit.test_planner_pause import flow_with, run, signals
from tests.unit.test_store import deployment

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
        (flow(Ready=("False", "Paused"), Paused=("True", "Manual")), "Suspended"),
        (flow(Ready=("False", "Paused"), Paused=("True", "ConsumerConfigurationError")), "Degraded"),
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


# ------------------------------------------------------------------ status the planner really writes


def planned(body: dict, deploy: dict | None, sig=None) -> dict:
    """The flow as Argo CD sees it once the operator wrote the planner's status."""
    return {**body, "status": run(body, deploy, sig).status}


def test_manual_pause_is_suspended() -> None:
    status, message = health(planned(flow_with(paused=True), deployment(replicas=4, ready=4), signals()))
    assert status == "Suspended"
    assert message.startswith("Manual: paused by hand")


@pytest.mark.parametrize(
    ("deploy", "sig", "reason"),
    [
        (None, None, "TargetNotFound"),
        (deployment(replicas=4, ready=4), signals(configuration_errors=0.5), "ConsumerConfigurationError"),
    ],
    ids=["TargetNotFound", "ConsumerConfigurationError"],
)
def test_automatic_pause_is_degraded_with_its_reason(deploy: dict | None, sig, reason: str) -> None:
    obj = planned(flow_with(), deploy, sig)
    assert obj["status"]["pause"]["reason"] == reason and obj["status"]["severity"] == "P1"
    status, message = health(obj)
    assert status == "Degraded"
    assert message.startswith(f"P1 {reason}: paused: consumers stopped")
    assert obj["status"]["pause"]["message"] in message


def test_healthy_flow_is_healthy() -> None:
    obj = planned(flow_with(), deployment(replicas=1, ready=1), signals(queue_depth=50.0, error_ratio=0.0))
    assert obj["status"]["severity"] == "None"
    assert health(obj) == ("Healthy", "Phase Running")


def test_degraded_flow_is_degraded_with_the_worst_finding() -> None:
    obj = planned(flow_with(), deployment(replicas=1, ready=1), signals(queue_depth=50.0, error_ratio=0.05, dead_letter_depth=2.0))
    status, message = health(obj)
    assert status == "Degraded"
    assert message.startswith("P2 ErrorRatioHigh: error ratio 5.0% > 1.0%; 2 messages in the dead-letter queue")
