"""Optional OpenTelemetry tracing of the controller loop: one span per pass, a child span per action.

Tracing is on only when both hold:
- the standard OTLP endpoint variable is set: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (the full URL,
  e.g. http://collector:4318/v1/traces) or OTEL_EXPORTER_OTLP_ENDPOINT (the base URL, /v1/traces is
  appended); and
- the OpenTelemetry packages are installed (`pip install 'flowkeeper[otel]'`).

Otherwise every function here is a cheap no-op: nothing from opentelemetry is imported, the context
managers yield None, and nothing fails.

    tracing.configure()                                    # once at startup; True when tracing is on
    with tracing.pass_span(pass_id, flows=len(due)):
        with tracing.action_span("scale", namespace, flow):
            ...                                            # an exception marks the span ERROR, re-raised
    tracing.shutdown()                                     # flushes what is buffered

The module keeps its own TracerProvider instead of installing the process-global one (which
OpenTelemetry lets a process set only once), so `configure` can be called again, e.g. by tests. Spans
still nest through OpenTelemetry's context (contextvars), which `asyncio.to_thread` carries along.
"""

from __future__ import annotations

import contextlib
import logging
import os
from contextlib import AbstractContextManager
from typing import Any

log = logging.getLogger("flowkeeper.tracing")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
ACTIONS = ("scale", "status", "event", "read_signals")
TRACER_NAME = "flowkeeper"

_NOOP: AbstractContextManager[None] = contextlib.nullcontext()  # reusable: its enter and exit do nothing
_provider: Any = None  # opentelemetry.sdk.trace.TracerProvider while tracing is on
_tracer: Any = None  # opentelemetry.trace.Tracer while tracing is on


def endpoint_configured() -> bool:
    """Whether the environment asks for traces (an OTLP endpoint set, and the SDK not disabled)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(os.environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def enabled() -> bool:
    """Whether spans are being recorded."""
    return _tracer is not None


def configure(service_name: str = "flowkeeper", exporter: Any = None) -> bool:
    """Sets tracing up from the environment; returns True when tracing is on.

    With `exporter` (any opentelemetry SpanExporter), spans go to it synchronously whatever the
    environment says (see configure_with_exporter). Without it, tracing needs an OTLP endpoint in the
    environment and the opentelemetry packages; spans are batched and sent by the OTLP exporter that
    OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL names (grpc when its exporter is installed, else HTTP with
    protobuf). Calling it again replaces the earlier setup (flushing it first)."""
    if exporter is not None:
        configure_with_exporter(exporter, service_name)
        return True
    shutdown()
    if not endpoint_configured():
        return False
    try:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        span_exporter = _otlp_exporter()
    except ImportError as exc:
        log.warning(
            "OTLP endpoint set but OpenTelemetry is not installed: tracing off (pip install 'flowkeeper[otel]')",
            extra={"stage": "startup", "reason": str(exc), "outcome": "disabled"},
        )
        return False
    _install(BatchSpanProcessor(span_exporter), service_name)
    log.info(
        "tracing on",
        extra={"stage": "startup", "outcome": "enabled", "protocol": "grpc" if ".grpc." in type(span_exporter).__module__ else "http/protobuf"},
    )
    return True


def configure_with_exporter(exporter: Any, service_name: str = "flowkeeper") -> None:
    """Sends spans to `exporter` as each one ends (SimpleSpanProcessor): for tests, e.g. with the
    SDK's InMemorySpanExporter. Needs the opentelemetry SDK."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    shutdown()
    _install(SimpleSpanProcessor(exporter), service_name)


def pass_span(pass_id: str, flows: int) -> AbstractContextManager[Any]:
    """The span of one pass over the due flows ("flowkeeper.pass"); actions inside it are its children."""
    if _tracer is None:
        return _NOOP
    return _span("flowkeeper.pass", {"flowkeeper.pass_id": pass_id, "flowkeeper.flows": flows})


def action_span(action: str, namespace: str, flow: str) -> AbstractContextManager[Any]:
    """The span of one action on a flow ("flowkeeper.<action>", action one of ACTIONS). An exception
    leaving the block is recorded on the span, sets its status to ERROR, and propagates."""
    if _tracer is None:
        return _NOOP
    return _span(f"flowkeeper.{action}", {"k8s.namespace.name": namespace, "flowkeeper.flow": flow})


def shutdown() -> None:
    """Flushes the spans not sent yet and turns tracing off (until the next configure)."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    if provider is None:
        return
    try:
        provider.force_flush()
        provider.shutdown()
    except Exception:  # noqa: BLE001 - an unreachable collector must not break the operator's exit
        log.warning("traces not flushed", exc_info=True, extra={"stage": "shutdown", "outcome": "dropped"})


def _span(name: str, attributes: dict[str, Any]) -> AbstractContextManager[Any]:
    return _tracer.start_as_current_span(name, attributes=attributes, record_exception=True, set_status_on_exception=True)


def _install(processor: Any, service_name: str) -> None:
    global _provider, _tracer
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES; OTEL_SERVICE_NAME wins over the default name.
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or service_name})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(processor)
    _provider = provider
    _tracer = provider.get_tracer(TRACER_NAME)


def _protocol() -> str:
    for name in PROTOCOL_VARIABLES:
        value = os.environ.get(name, "").strip().lower()
        if value:
            return value
    return "http/protobuf"


def _otlp_exporter() -> Any:
    """The OTLP span exporter for the configured protocol. It reads the endpoint, headers, timeout,
    compression and certificates from the standard OTEL_EXPORTER_OTLP_* variables itself."""
    protocol = _protocol()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError:
            log.warning(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc but opentelemetry-exporter-otlp-proto-grpc is not installed: "
                "sending OTLP over HTTP (protobuf) instead",
                extra={"stage": "startup", "reason": "GrpcExporterMissing", "outcome": "http"},
            )
        else:
            return GrpcExporter()
    elif protocol != "http/protobuf":
        log.warning(
            "OTLP protocol %r not supported: sending OTLP over HTTP (protobuf)",
            protocol,
            extra={"stage": "startup", "reason": "UnsupportedProtocol", "outcome": "http"},
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()
