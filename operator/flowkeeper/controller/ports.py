"""What the controller needs from the outside world, as typed ports. The loop, the executor and the
elector depend on these, not on the adapters that implement them (adapters/kubernetes.py,
adapters/prometheus), so each can be driven by another implementation in tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from flowkeeper.adapters.kubernetes import Listing
from flowkeeper.adapters.prometheus import FlowTarget, PassResult
from flowkeeper.domain.dead_letters import BatchResult, Cutoff, Review, Selection
from flowkeeper.domain.flow import ScaleTarget
from flowkeeper.domain.leadership import LeaseRecord


class ClusterGateway(Protocol):
    def list_objects(self, kind: str, namespaces: tuple[str, ...], keep: Callable[[dict[str, Any]], Any] | None = None) -> Listing:
        """kind: "flows", "redrives", or the plural of a scale target kind ("deployments", "statefulsets", "rollouts").
        keep: what to hold of each object, made as its page arrives (the listing holds these, not the bodies)."""

    def patch_flow_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None) -> dict[str, Any]:
        """Returns the object as stored; raises ConflictError when resource_version is not current."""

    def patch_redrive_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None) -> dict[str, Any]: ...

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


class DeadLetterBroker(Protocol):
    """One broker's dead letters (adapters/brokers/). Blocking calls: the controller runs them on its
    own worker threads, at most one at a time per dead-letter queue. `deadline` is time.monotonic().
    Nothing but `move` ever removes a message, and it removes only what it published first, with a
    confirm; a review reads without consuming (RabbitMQ: unacknowledged, returned on close)."""

    def review(self, dead_letters: str, *, limit: int, deadline: float) -> Review:
        """Depth, and the first `limit` dead letters (oldest first) summarised."""

    def begin(self, dead_letters: str, *, redrive_uid: str) -> Cutoff:
        """Takes the cutoff: what is in the dead letters now. Called again after a restart before the
        cutoff was recorded, it may return a new cutoff (never one earlier than a marker it left)."""

    def move(
        self,
        dead_letters: str,
        to: str,
        *,
        redrive_uid: str,
        cutoff: Cutoff,
        selection: Selection,
        batch: int,
        dry_run: bool,
        scan_limit: int,
        deadline: float,
    ) -> BatchResult:
        """Moves up to `batch` selected dead letters from before the cutoff to the queue (topic) `to`,
        each marked with `moved_headers`: publish with confirms, then remove (RabbitMQ: ack; Kafka:
        commit the group offset). Looks at no more than `scan_limit` messages. Raises CutoffLost."""

    def finish(self, dead_letters: str, *, redrive_uid: str, cutoff: Cutoff) -> None:
        """Cleans up what `begin` left (RabbitMQ: its marker). Idempotent."""

    def close(self) -> None: ...
