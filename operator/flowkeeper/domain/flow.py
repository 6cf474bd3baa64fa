"""What the operator knows about one flow and its consumer Deployment, as plain immutable values.

The controller builds these from watch events; the planner (domain/planner.py) turns them, with the
signals of a pass, into the status to record and the action to take.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from flowkeeper.api.v1alpha1 import IntegrationFlowSpec


@dataclass(frozen=True)
class FlowRecord:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: IntegrationFlowSpec | None  # None when the stored spec does not parse (should not pass the CRD)
    spec_error: str | None
    status: dict[str, Any]  # as on the API server, camelCase
    annotations: dict[str, str]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def reference(self) -> dict[str, str]:
        """The object reference Events are attached to."""
        return {
            "apiVersion": "flowkeeper.io/v1alpha1",
            "kind": "IntegrationFlow",
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
        }


@dataclass(frozen=True)
class DeploymentRecord:
    namespace: str
    name: str
    spec_replicas: int
    replicas: int  # pods that exist, ready or not
    ready_replicas: int
    template_hash: str  # changes when a fix is deployed (new image, env, config)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def template_hash(template: dict[str, Any] | None) -> str:
    return hashlib.sha256(json.dumps(template or {}, sort_keys=True).encode()).hexdigest()[:16]


def flow_from_body(body: dict[str, Any]) -> FlowRecord:
    metadata = body.get("metadata", {})
    spec: IntegrationFlowSpec | None
    try:
        spec = IntegrationFlowSpec.model_validate(body.get("spec") or {})
        error = None
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        spec, error = None, str(exc)
    return FlowRecord(
        namespace=metadata.get("namespace", ""),
        name=metadata.get("name", ""),
        uid=metadata.get("uid", ""),
        generation=int(metadata.get("generation") or 0),
        spec=spec,
        spec_error=error,
        status=dict(body.get("status") or {}),
        annotations=dict(metadata.get("annotations") or {}),
    )


def deployment_from_body(body: dict[str, Any]) -> DeploymentRecord:
    metadata, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status") or {}
    return DeploymentRecord(
        namespace=metadata.get("namespace", ""),
        name=metadata.get("name", ""),
        spec_replicas=int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1),
        replicas=int(status.get("replicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        template_hash=template_hash(spec.get("template")),
    )
