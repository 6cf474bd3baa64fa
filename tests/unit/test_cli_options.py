"""`flowkeeper run` options reach the operator's configuration (kopf is not started)."""

from __future__ import annotations

import kopf
import pytest
from click.testing import CliRunner

from flowkeeper.cli import main
from flowkeeper.config import OperatorConfig


def run(monkeypatch: pytest.MonkeyPatch, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, OperatorConfig | None]:
    seen: dict[str, OperatorConfig] = {}
    monkeypatch.setattr(kopf, "configure", lambda **_: None)
    monkeypatch.setattr(kopf, "run", lambda memo, **_: seen.setdefault("config", memo.config))
    result = CliRunner().invoke(main, ["run", "--standalone", *args], env=env or {})
    return result.exit_code, result.output, seen.get("config")


def test_tenant_safety_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, config = run(monkeypatch, "--prometheus-url=http://p:9090")
    assert config.allowed_prometheus_servers == () and config.allow_metrics_overrides is False
    assert config.prometheus_pass_timeout is None


def test_allowed_servers_and_overrides_from_options_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, config = run(monkeypatch, "--allowed-prometheus-server=https://a:9090", "--allowed-prometheus-server=http://b/p", "--allow-metrics-overrides")
    assert config.allowed_prometheus_servers == ("https://a:9090", "http://b/p") and config.allow_metrics_overrides
    env = {"FLOWKEEPER_ALLOWED_PROMETHEUS_SERVERS": "https://a:9090, http://b/p", "FLOWKEEPER_ALLOW_METRICS_OVERRIDES": "true"}
    _, _, config = run(monkeypatch, "--prometheus-pass-timeout=9", env=env)
    assert config.allowed_prometheus_servers == ("https://a:9090", "http://b/p") and config.allow_metrics_overrides
    assert config.prometheus_pass_timeout == 9.0


def test_a_server_that_is_not_a_base_url_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    code, output, config = run(monkeypatch, "--allowed-prometheus-server=prometheus:9090")
    assert code == 2 and "--allowed-prometheus-server" in output and config is None


def test_the_loop_stall_limit_from_option_or_environment_and_its_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(monkeypatch)[2].loop_stall_seconds == 180.0
    assert run(monkeypatch, "--loop-stall-seconds=20")[2].loop_stall_seconds == 20.0
    assert run(monkeypatch, env={"FLOWKEEPER_LOOP_STALL_SECONDS": "30"})[2].loop_stall_seconds == 30.0
    code, output, config = run(monkeypatch, "--loop-stall-seconds=1")
    assert code == 2 and "--loop-stall-seconds" in output and config is None


def test_kopf_is_given_an_identity_so_it_never_looks_up_a_user_the_image_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: in the image (user 65532, no passwd entry) kopf's own getpass.getuser() raised
    # KeyError at start, and the pod crash-looped.
    seen: dict[str, object] = {}
    monkeypatch.setattr(kopf, "run", lambda **kwargs: seen.update(kwargs))
    CliRunner().invoke(main, ["run", "--identity=replica-a"], env={})
    assert seen["identity"] == "replica-a"
    CliRunner().invoke(main, ["run", "--standalone"], env={})
    assert seen["identity"]
