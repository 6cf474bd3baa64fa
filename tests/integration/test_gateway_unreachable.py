"""An API server that cannot be reached (a real TCP port nobody listens on) gives transient errors the
loop retries, never an exception that escapes and ends the operator's loop or its leader election."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from flowkeeper.adapters.kubernetes import KubernetesGateway
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


CALLS = {
    "list": lambda g: g.list_objects("flows", ()),
    "status": lambda g: g.patch_flow_status("shop", "orders", {"phase": "Running"}),
    "scale": lambda g: g.scale_deployment("shop", "orders", 3),
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
    reference = {"apiVersion": "flowkeeper.io/v1alpha1", "kind": "IntegrationFlow", "name": "orders", "namespace": "shop"}
    gateway.post_event(reference, "Normal", "Scaled", "replicas 1 -> 3")
    assert "event not posted" in caplog.text
