"""Optional OpenTelemetry tracing (flowkeeper.observability.tracing): spans, nesting, attributes and
errors through the SDK's in-memory exporter; the no-op path when no endpoint is set; and the real
OTLP/HTTP exporter posting to a receiver served by the test."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from flowkeeper.observability import tracing
from tests.support.otlp import OtlpReceiver, spans_posted


@pytest.fixture(autouse=True)
def clean_tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No OTEL_* variable of the machine running the tests leaks in; tracing is off after each test."""
    for name in [*tracing.ENDPOINT_VARIABLES, *tracing.PROTOCOL_VARIABLES, "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"]:
        monkeypatch.delenv(name, raising=False)
    tracing.shutdown()
    yield
    tracing.shutdown()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    tracing.configure_with_exporter(exporter)
    assert tracing.enabled()
    return exporter


def by_name(exporter: InMemorySpanExporter) -> dict[str, list]:
    found: dict[str, list] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def test_pass_span_carries_its_attributes_and_the_service_name(spans: InMemorySpanExporter) -> None:
    with tracing.pass_span("abc123", flows=7) as span:
        assert span is not None and span.is_recording()
    (recorded,) = spans.get_finished_spans()
    assert recorded.name == "flowkeeper.pass"
    assert dict(recorded.attributes) == {"flowkeeper.pass_id": "abc123", "flowkeeper.flows": 7}
    assert recorded.resource.attributes["service.name"] == "flowkeeper"
    assert recorded.status.status_code == StatusCode.UNSET
    assert recorded.parent is None


def test_action_spans_inside_a_pass_are_its_children(spans: InMemorySpanExporter) -> None:
    with tracing.pass_span("p1", flows=2):
        for action in tracing.ACTIONS:
            with tracing.action_span(action, "shop", "orders"):
                pass
    with tracing.action_span("scale", "shop", "outside"):  # no pass around it: a root span
        pass

    found = by_name(spans)
    (parent,) = found["flowkeeper.pass"]
    for action in tracing.ACTIONS:
        (child,) = [s for s in found[f"flowkeeper.{action}"] if s.attributes["flowkeeper.flow"] == "orders"]
        assert child.parent is not None and child.parent.span_id == parent.context.span_id
        assert child.context.trace_id == parent.context.trace_id
        assert dict(child.attributes) == {"k8s.namespace.name": "shop", "flowkeeper.flow": "orders"}
    (outside,) = [s for s in found["flowkeeper.scale"] if s.attributes["flowkeeper.flow"] == "outside"]
    assert outside.parent is None and outside.context.trace_id != parent.context.trace_id


def test_actions_run_in_worker_threads_stay_children_of_the_pass(spans: InMemorySpanExporter) -> None:
    """The controller loop writes through asyncio.to_thread; the span context goes along."""

    def write(flow: str) -> None:
        with tracing.action_span("status", "shop", flow):
            pass

    async def run_pass() -> None:
        with tracing.pass_span("p2", flows=2):
            await asyncio.to_thread(write, "a")
            await asyncio.to_thread(write, "b")

    asyncio.run(run_pass())
    found = by_name(spans)
    (parent,) = found["flowkeeper.pass"]
    assert sorted(s.attributes["flowkeeper.flow"] for s in found["flowkeeper.status"]) == ["a", "b"]
    assert all(s.parent.span_id == parent.context.span_id for s in found["flowkeeper.status"])


def test_an_exception_marks_the_action_span_error_and_propagates(spans: InMemorySpanExporter) -> None:
    class Conflict(RuntimeError):
        pass

    with pytest.raises(Conflict, match="409"):
        with tracing.pass_span("p3", flows=1):
            with tracing.action_span("scale", "shop", "orders"):
                raise Conflict("409 conflict on deployment orders")

    found = by_name(spans)
    (scale,) = found["flowkeeper.scale"]
    assert scale.status.status_code == StatusCode.ERROR
    assert "409" in (scale.status.description or "")
    (event,) = [e for e in scale.events if e.name == "exception"]
    assert event.attributes["exception.type"].endswith("Conflict")
    assert "409" in event.attributes["exception.message"]


def test_a_handled_error_leaves_the_pass_span_ok(spans: InMemorySpanExporter) -> None:
    with tracing.pass_span("p4", flows=1):
        try:
            with tracing.action_span("event", "shop", "orders"):
                raise ValueError("event not posted")
        except ValueError:
            pass
    found = by_name(spans)
    assert found["flowkeeper.event"][0].status.status_code == StatusCode.ERROR
    assert found["flowkeeper.pass"][0].status.status_code == StatusCode.UNSET


def test_configure_accepts_an_exporter_directly() -> None:
    exporter = InMemorySpanExporter()
    assert tracing.configure("flowkeeper-test", exporter=exporter) is True
    with tracing.pass_span("p5", flows=0):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.resource.attributes["service.name"] == "flowkeeper-test"


def test_without_an_endpoint_configure_is_off_and_spans_are_no_ops(spans: InMemorySpanExporter) -> None:
    # Tracing was on (the fixture); configure() from an environment without an endpoint turns it off.
    assert tracing.configure() is False
    assert not tracing.enabled()
    with tracing.pass_span("p6", flows=3) as span:
        assert span is None
        with tracing.action_span("scale", "shop", "orders"):
            pass
    with pytest.raises(KeyError):  # errors pass through untouched
        with tracing.action_span("status", "shop", "orders"):
            raise KeyError("x")
    tracing.shutdown()  # harmless when off
    assert spans.get_finished_spans() == ()


def test_sdk_disabled_wins_over_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.configure() is False


def test_an_endpoint_without_the_packages_is_off_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    # None in sys.modules makes `import` fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace.export", None)
    assert tracing.configure() is False
    with tracing.pass_span("p7", flows=1) as span:
        assert span is None


def test_off_costs_no_opentelemetry_import() -> None:
    code = (
        "import sys\n"
        "from flowkeeper.observability import tracing\n"
        "assert tracing.configure() is False\n"
        "with tracing.pass_span('p', 1), tracing.action_span('scale', 'ns', 'f'):\n"
        "    pass\n"
        "tracing.shutdown()\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "[]"


def test_grpc_protocol_without_its_exporter_falls_back_to_http(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    exporter = tracing._otlp_exporter()
    assert ".http." in type(exporter).__module__
    exporter.shutdown()


# --- the real OTLP/HTTP exporter, end to end


def test_otlp_http_export_reaches_a_real_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        assert tracing.configure() is True
        with tracing.pass_span("e2e-pass", flows=1):
            with tracing.action_span("scale", "shop", "orders"):
                pass
        tracing.shutdown()  # flushes the batch
        assert receiver.received.wait(10), "no OTLP request arrived"

        paths = [path for path, _, _ in receiver.requests]
        assert "/v1/traces" in paths, paths
        assert all(ctype == "application/x-protobuf" for _, ctype, _ in receiver.requests)
        posted = spans_posted(receiver)
        names = {span.name for _, span in posted}
        assert {"flowkeeper.pass", "flowkeeper.scale"} <= names
        (service, pass_span), = [(s, span) for s, span in posted if span.name == "flowkeeper.pass"]
        assert service == "flowkeeper"
        attributes = {a.key: a.value for a in pass_span.attributes}
        assert attributes["flowkeeper.pass_id"].string_value == "e2e-pass"
        assert attributes["flowkeeper.flows"].int_value == 1
        (_, scale_span), = [(s, span) for s, span in posted if span.name == "flowkeeper.scale"]
        assert scale_span.parent_span_id == pass_span.span_id


def test_traces_endpoint_variable_is_used_as_the_full_url(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{receiver.url}/custom/traces")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "flowkeeper-staging")
        assert tracing.configure() is True
        with tracing.pass_span("e2e-2", flows=0):
            pass
        tracing.shutdown()
        assert receiver.received.wait(10), "no OTLP request arrived"
        assert [path for path, _, _ in receiver.requests] == ["/custom/traces"]
        request = ExportTraceServiceRequest()
        request.ParseFromString(receiver.requests[0][2])
        service = {a.key: a.value.string_value for a in request.resource_spans[0].resource.attributes}["service.name"]
        assert service == "flowkeeper-staging"
