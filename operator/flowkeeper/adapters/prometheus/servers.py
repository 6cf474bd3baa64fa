"""How to reach a Prometheus: its settings, its HTTP client, and the flows' own credentials."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import requests
from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from flowkeeper.api.v1alpha1 import SecretKeyRef
from flowkeeper.domain.signals import SignalsFailure

SecretReader = Callable[[str, SecretKeyRef], str]


@dataclass(frozen=True)
class ServerSettings:
    """How to reach one Prometheus. Flows whose settings are equal share one batch."""

    url: str
    headers: tuple[tuple[str, str], ...] = ()
    auth: tuple[str, str] | None = None
    verify: str | bool = True  # a CA bundle path, or default verification
    from_flow: bool = False  # credentials came from the flow's Secrets: a refusal is the flow's problem

    def __repr__(self) -> str:  # never log credentials
        return f"ServerSettings({self.url!r})"


class QueryClient(Protocol):
    def custom_query(self, query: str, params: dict | None = None) -> Any: ...


def _default_client(settings: ServerSettings, timeout: float) -> QueryClient:
    session = requests.Session()
    session.verify = settings.verify
    # No retries inside a pass: a failed query is retried by the next pass, and the fallback logic
    # needs to hear about failures quickly. 5xx come back as responses, classified above.
    return PrometheusConnect(
        url=settings.url.rstrip("/"),
        headers=dict(settings.headers) or None,
        auth=settings.auth,
        session=session,
        timeout=timeout,
        retry=Retry(total=0, raise_on_status=False),
    )


# The Kubernetes adapter's reasons, said of a Secret.
_SECRET_REASONS = {"NotFound": "SecretNotFound", "Forbidden": "SecretForbidden"}


class _SecretProblem(Exception):
    def __init__(self, failure: SignalsFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure

