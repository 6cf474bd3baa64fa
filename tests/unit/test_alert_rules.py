"""The Prometheus alerts shipped with the chart (charts/flowkeeper/files/alerts.yaml, docs/alerts.md).

promtool checks the rule file and runs the unit tests in tests/alerts/*.test.yaml; the checks here
keep the tests complete (every alert has a case where it fires with its labels asserted and one
where it stays silent, so a new alert without tests fails), and the rule file fit for the chart
(embedded verbatim: no Helm template syntax) and for the docs (every runbook_url anchor exists).
The recording rule that maps pods to their workload is tested by promtool too, recorded before the
alerts that read it, and holds the same join as the operator's own CPU and memory query.
Skipped only when promtool is not installed (Debian: the prometheus package).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowkeeper.adapters.prometheus import convention
from flowkeeper.adapters.prometheus.queries import POD_WORKLOAD, Presets
from flowkeeper.observability import metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "flowkeeper" / "files" / "alerts.yaml"
TESTS_DIR = ROOT / "tests" / "alerts"
TEST_FILES = sorted(TESTS_DIR.glob("*.test.yaml"))
DOCS = ROOT / "docs" / "alerts.md"
RUNBOOK_BASE = "https://github.com/flowkeeper/flowkeeper/blob/main/docs/alerts.md#"
PROMTOOL_TIMEOUT = 60


def _promtool() -> str | None:
    found = shutil.which("promtool")
    if found:
        return found
    fallback = Path("/usr/bin/promtool")
    return str(fallback) if fallback.is_file() else None


@pytest.fixture(scope="module")
def promtool() -> str:
    path = _promtool()
    if path is None:
        pytest.skip("promtool is not installed (Debian/Ubuntu: apt-get install prometheus); alert rules not tested")
    return path


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


@cache
def _rules() -> list[dict[str, Any]]:
    return [rule for group in _groups() for rule in group["rules"] if "alert" in rule]


@cache
def _groups() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]


def _recording_rules() -> dict[str, dict[str, Any]]:
    return {rule["record"]: rule for group in _groups() for rule in group["rules"] if "record" in rule}


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules()}


def _cases() -> list[tuple[str, str, dict[str, Any]]]:
    """(test file, test name, alert_rule_test entry) of every test file."""
    out = []
    for path in TEST_FILES:
        for test in yaml.safe_load(path.read_text(encoding="utf-8")).get("tests") or []:
            for case in test.get("alert_rule_test") or []:
                out.append((path.name, test.get("name", "?"), case))
    return out


# ------------------------------------------------------------------------------------- promtool


def test_promtool_check_rules(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT
    )
    assert result.returncode == 0, _output(result)


@pytest.fixture(scope="module")
def unit_test_runs(promtool: str) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """Every test file's promtool run, started at once (they take seconds each, and are independent).
    Each runs in its own file's folder, as `make test` users and CI would not: rule_files resolve
    relative to the test file either way."""
    runs = {
        path.name: subprocess.Popen(
            [promtool, "test", "rules", path.name],
            cwd=path.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in TEST_FILES
    }
    yield runs
    for run in runs.values():
        if run.poll() is None:
            run.kill()
            run.communicate()


def test_there_are_alert_tests() -> None:
    assert TEST_FILES, f"no *.test.yaml in {TESTS_DIR}"


@pytest.mark.parametrize("name", [path.name for path in TEST_FILES])
def test_promtool_test_rules(name: str, unit_test_runs: dict[str, subprocess.Popen[str]]) -> None:
    run = unit_test_runs[name]
    try:
        stdout, stderr = run.communicate(timeout=PROMTOOL_TIMEOUT)
    except subprocess.TimeoutExpired:
        run.kill()
        stdout, stderr = run.communicate()
        pytest.fail(f"promtool test rules {name} took over {PROMTOOL_TIMEOUT}s\n{stdout}\n{stderr}")
    assert run.returncode == 0, _output(subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr))


# ----------------------------------------------------------------------------- test completeness


def test_every_test_file_loads_the_chart_rule_file() -> None:
    for path in TEST_FILES:
        rule_files = yaml.safe_load(path.read_text(encoding="utf-8")).get("rule_files") or []
        resolved = [(path.parent / f).resolve() for f in rule_files]
        assert resolved == [RULES.resolve()], f"{path.name}: rule_files {rule_files} is not {RULES}"


def test_every_alert_fires_in_a_test_and_stays_silent_in_another() -> None:
    """A case fires when exp_alerts lists the alert with its labels (at least `severity`, so the
    labels are asserted, not left out); it stays silent with an explicit `exp_alerts: []`."""
    fires: dict[str, list[str]] = defaultdict(list)
    silent: dict[str, list[str]] = defaultdict(list)
    annotated: set[str] = set()
    unknown = []
    alerts = _alerts()
    for file, test, case in _cases():
        name = case.get("alertname")
        where = f"{file}: {test} @ {case.get('eval_time')}"
        if name not in alerts:
            # promtool passes `exp_alerts: []` for an alert that does not exist: a typo would hide.
            unknown.append(f"{where}: {name!r}")
            continue
        expected = case.get("exp_alerts")
        if expected == []:
            silent[name].append(where)
        elif expected:
            for alert in expected:
                labels = alert.get("exp_labels") or {}
                assert "severity" in labels, f"{where}: exp_labels of {name} do not assert its labels: {labels}"
                if alert.get("exp_annotations"):
                    annotated.add(name)
            fires[name].append(where)
    assert not unknown, f"alert tests name alerts that alerts.yaml does not define: {unknown}"
    missing = {
        name: [what for what, cases in (("firing", fires), ("silent (exp_alerts: [])", silent)) if not cases[name]]
        for name in alerts
    }
    missing = {name: gaps for name, gaps in missing.items() if gaps}
    assert not missing, f"alerts without a test case in tests/alerts/*.test.yaml: {missing}"
    assert set(alerts) <= annotated, f"alerts whose annotations no test asserts: {sorted(set(alerts) - annotated)}"


def _expr_tests() -> list[tuple[str, str, dict[str, Any]]]:
    """(test file, test name, promql_expr_test entry) of every test file."""
    out = []
    for path in TEST_FILES:
        for test in yaml.safe_load(path.read_text(encoding="utf-8")).get("tests") or []:
            for case in test.get("promql_expr_test") or []:
                out.append((path.name, test.get("name", "?"), case))
    return out


def test_every_recording_rule_is_tested_with_its_samples() -> None:
    """A promql_expr_test reads the recorded series itself and lists the samples it expects (promtool
    compares the whole set: a missing or an extra pod fails)."""
    tested = {
        name
        for _, _, case in _expr_tests()
        for name in _recording_rules()
        if case.get("expr", "").strip() == name and case.get("exp_samples")
    }
    untested = sorted(set(_recording_rules()) - tested)
    assert not untested, f"recording rules without a promql_expr_test of their own series: {untested}"


# ------------------------------------------------------------------------------ the rule file


def _reads(expr: str, name: str) -> bool:
    return re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", expr) is not None


def test_recorded_series_are_read_after_they_are_recorded() -> None:
    """Rules of a group are evaluated in order: a rule reading a recorded series of the same group
    placed before the record would read the previous evaluation's, and one of another group (its own
    schedule) could read it late. Every recorded series is read by some alert."""
    read = set()
    for group in _groups():
        recorded_before: set[str] = set()
        for rule in group["rules"]:
            for name in _recording_rules():
                if _reads(rule["expr"], name):
                    read.add(name)
                    who = rule.get("alert") or rule.get("record")
                    assert name in recorded_before, f"{who} reads {name} before (or outside) its group records it"
            if "record" in rule:
                recorded_before.add(rule["record"])
    assert read == set(_recording_rules()), f"recorded and never read: {sorted(set(_recording_rules()) - read)}"


def _squeezed(promql: str) -> str:
    """PromQL without the whitespace outside string literals (which does not change its meaning)."""
    parts = re.split(r'("(?:[^"\\]|\\.)*")', promql)
    return "".join(part if i % 2 else re.sub(r"\s+", "", part) for i, part in enumerate(parts))


POD_WORKLOAD_RECORD = "flowkeeper:pod_workload:owner"


def test_pods_are_joined_to_their_workload_like_the_operator_does() -> None:
    """The recorded pod -> workload mapping is the operator's join (queries.POD_WORKLOAD), and the
    CPU and memory alerts compute the operator's utilization (at the alerts' 5m rate) over it."""
    record = _recording_rules()[POD_WORKLOAD_RECORD]
    assert _squeezed(record["expr"]) == _squeezed(POD_WORKLOAD)
    presets = Presets("5m")
    alerts = _alerts()
    for alert, query in (
        ("FlowkeeperConsumerCpuHigh", presets.cpu_utilization()),
        ("FlowkeeperConsumerMemoryHigh", presets.memory_utilization()),
    ):
        assert query.by == ("namespace", "workload_kind", "workload")
        expected = _squeezed(query.promql.replace(POD_WORKLOAD, POD_WORKLOAD_RECORD))
        assert expected in _squeezed(alerts[alert]["expr"]), f"{alert} does not compute {query.kind} like the operator"
        assert _squeezed("and on (namespace, workload_kind, workload)") in _squeezed(alerts[alert]["expr"]), alert

# ------------------------------------------------------------------------------ the rule file


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in _rules()]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_every_alert_has_severity_and_annotations() -> None:
    for rule in _rules():
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, name
        annotations = rule.get("annotations") or {}
        assert {"summary", "description", "runbook_url"} <= set(annotations), f"{name}: {sorted(annotations)}"
        assert annotations["runbook_url"] == RUNBOOK_BASE + name.lower(), f"{name}: {annotations['runbook_url']}"


def _github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_runbook_urls_point_at_headings_of_the_docs() -> None:
    text = DOCS.read_text(encoding="utf-8")
    anchors = {_github_anchor(m.group(1)) for m in re.finditer(r"^#+\s+(.+)$", text, re.MULTILINE)}
    for rule in _rules():
        anchor = rule["annotations"]["runbook_url"].removeprefix(RUNBOOK_BASE)
        assert anchor in anchors, f"{rule['alert']}: docs/alerts.md has no heading for #{anchor}"
        assert f"`{rule['alert']}`" in text, f"{rule['alert']} is missing from the table in docs/alerts.md"


# Prometheus' alert templating only: the chart embeds the file with .Files.Get (no Helm rendering), and
# a Helm-looking `{{ .Values.x }}` here would be a Prometheus template error at evaluation time.
TEMPLATE = re.compile(r"\{\{(.*?)\}\}")
PROMETHEUS_TEMPLATE = re.compile(r" (\$labels\.\w+|\$value( \| (humanize|humanizePercentage|humanizeDuration))?|printf `[^`]*` \$value) ")


def test_no_helm_template_syntax() -> None:
    text = RULES.read_text(encoding="utf-8")
    for match in TEMPLATE.finditer(text):
        assert PROMETHEUS_TEMPLATE.fullmatch(match.group(1)), f"not a plain Prometheus template: {match.group(0)}"
    for helm in (".Values", ".Release", ".Chart", "include ", "{{-", "-}}"):
        assert helm not in text, helm


def _known_series() -> set[str]:
    """The operator's own series (its registry) and the convention the consumers export."""
    known = set()
    for family in metrics.REGISTRY.collect():
        if family.type == "counter":
            known.add(family.name + "_total")
        elif family.type == "histogram":
            known.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        else:
            known.add(family.name)
    seconds = convention.PROCESSING_SECONDS
    known.update(
        {
            convention.PROCESSED,
            convention.ERRORS,
            seconds + "_sum",
            seconds + "_count",
            seconds + "_bucket",
            convention.LAST_SUCCESS,
            convention.QUEUE_DEPTH,
            convention.DEAD_LETTER_DEPTH,
        }
    )
    return known


def test_alerts_read_only_series_flowkeeper_defines() -> None:
    known = _known_series()
    for rule in _rules():
        used = set(re.findall(r"\bflowkeeper_\w+", rule["expr"]))
        assert used <= known, f"{rule['alert']} reads series nobody exports: {sorted(used - known)}"
