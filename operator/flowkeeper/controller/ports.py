"""What the controller needs from the outside world, as typed ports. The loop, the executor and the
elector depend on these, not on the adapters that implement them (adapters/kubernetes.py,
adapters/prometheus), so each can be driven by another implementation in tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from flowkeeper.adapters.kubernetes import Listing
from flowkeeper.adapters.prometheus import FlowTarget, PassResult
from flowkeeper.domain.flow import ScaleTarget
from flowkeeper.domain.leadership import LeaseRecord


class ClusterGateway(Protocol):
    def list_objects(self, kind: str, namespaces: tuple[str, ...]) -> Listing:
        """kind: "flows", or the plural of a scale target kind ("deployments", "statefulsets", "rollouts")."""

    def patch_flow_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None) -> dict[str, Any]:
        """Returns the object as stored; raises ConflictError when resource_version is not current."""

    def scale(self, target: ScaleTarget, replicas: int, resource_version: str | None) -> tuple[int, str]:
        """Returns (spec.replicas, resourceVersion) as stored."""

    def create_event(self, event: dict[str, Any]) -> str:
        """Returns the new Event's name."""

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> None: ...

    def read_secret_key(self, namespace: str, name: str, key: str) -> str: ...

    def read_lease(self, namespace: str, name: str) -> LeaseRecord | None: ...

    def write_lease(self, namespace: str, name: str, spec: dict[str, Any], version: str | None) -> None: ...


class SignalSource(Protocol):
    def collect(self, flows: Sequence[FlowTarget]) -> PassResult: ...

    def close(self) -> None: ...


class Leader(Protocol):
    def is_leading(self) -> bool: ...
