"""An API server that cannot be reached (a real TCP port nobody listens on) gives transient errors the
loop retries, never an exception that escapes and ends the operator's loop or its leader election."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from flowkeeper.adapters.kubernetes import KubernetesGateway
from flowkeeper.controller.events import EventRecorder
from flowkeeper.domain.flow import ScaleTarget
from flowkeeper.domain.errors import ErrorClass, FlowkeeperError
from flowkeeper.observability import metrics
from tests.support.processes import free_port


@pytest.fixture
def gateway() -> KubernetesGateway:
    configuration = k8s.Configuration()
    configuration.host = f"https://127.0.0.1:{free_port()}"  # closed: connection refused
    configuration.verify_ssl = False
    configuration.retries = 0
    return KubernetesGateway(k8s.ApiClient(configuration))


REFERENCE = {"apiVersion": "flowkeeper.io/v1alpha1", "kind": "IntegrationFlow", "name": "orders", "namespace": "shop", "uid": "u"}
CALLS = {
    "list": lambda g: g.list_objects("flows", ()),
    "status": lambda g: g.patch_flow_status("shop", "orders", {"phase": "Running"}, "7"),
    "scale": lambda g: g.scale(ScaleTarget("apps", "v1", "statefulsets", "shop", "orders"), 3, None),
    "event": lambda g: g.create_event(EventRecorder(g, "test")._body(REFERENCE, "Normal", "Scaled", "replicas 1 -> 3")),
    "event repeat": lambda g: g.patch_event("shop", "orders.1", {"count": 2}),
    "secret": lambda g: g.read_secret_key("shop", "token", "token"),
    "read lease": lambda g: g.read_lease("flowkeeper-system", "flowkeeper"),
    "write lease": lambda g: g.write_lease("flowkeeper-system", "flowkeeper", {"holderIdentity": "a"}, None),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_every_call_turns_an_unreachable_api_server_into_a_transient_error(gateway, call) -> None:
    before = metrics.API_ERRORS.labels(error_class="transient", reason="KubernetesUnreachable")._value.get()
    with pytest.raises(FlowkeeperError) as raised:
        call(gateway)
    assert raised.value.error_class is ErrorClass.transient
    assert raised.value.reason == "KubernetesUnreachable"
    assert "unreachable" in str(raised.value)
    assert metrics.API_ERRORS.labels(error_class="transient", reason="KubernetesUnreachable")._value.get() == before + 1


def test_an_event_that_cannot_be_posted_is_only_logged(gateway, caplog) -> None:
    import asyncio

    assert asyncio.run(EventRecorder(gateway, "test").record(REFERENCE, "Normal", "Scaled", "replicas 1 -> 3")) is False
    assert "event not posted" in caplog.text


@pytest.fixture
def silent_server():
    """A real TCP server that accepts connections and never answers: a half-open API server."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_every_call_times_out_on_an_api_server_that_never_answers(silent_server, call) -> None:
    # Regression: calls had no request timeout; a half-open connection hung the pass (or the elector).
    import time

    configuration = k8s.Configuration()
    configuration.host = f"http://127.0.0.1:{silent_server}"
    configuration.retries = 0
    gateway = KubernetesGateway(k8s.ApiClient(configuration), request_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(FlowkeeperError) as raised:
        call(gateway)
    assert time.monotonic() - started < 5
    assert raised.value.error_class is ErrorClass.transient
