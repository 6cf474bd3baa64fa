"""What the operator knows about one flow and its scale target, as plain immutable values.

The controller builds these from watch events and write responses; the planner (domain/planner.py)
turns them, with the signals of a pass, into the status to record and the action to take.

Flows are keyed by UID, not namespace/name: a flow deleted and created again under the same name is
a new flow, and nothing the operator remembered of the old one (scaling history, retries, claims)
carries over.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from flowkeeper.api.shared_parts import SharedParts
from flowkeeper.api.v1alpha1 import GROUP, IntegrationFlowSpec, ScaleTargetKind

# The field manager of every write Flowkeeper makes: managedFields then tell its writes from others'.
FIELD_MANAGER = "flowkeeper"
# The equal parts of the specs parsed: one object for the scaling rules thousands of flows share.
SHARED_PARTS = SharedParts()
# The annotations a record keeps: the operator reads only its own. Others can be large (kubectl's
# last-applied-configuration is a copy of the whole manifest) and change for reasons of no concern
# here (Argo CD's tracking).
OWN_ANNOTATIONS = f"{GROUP}/"


@dataclass(frozen=True)
class FlowRecord:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: IntegrationFlowSpec | None  # None when the stored spec does not parse (should not pass the CRD)
    spec_error: str | None
    status: dict[str, Any]  # as on the API server, camelCase
    annotations: dict[str, str]  # only Flowkeeper's own (OWN_ANNOTATIONS)
    resource_version: str = ""
    created: str = ""  # metadata.creationTimestamp (RFC 3339): the oldest claim on a target wins

    @property
    def key(self) -> str:
        return self.uid

    @property
    def path(self) -> str:
        """namespace/name, for people and logs."""
        return f"{self.namespace}/{self.name}"

    @functools.cached_property  # asked several times per flow per pass; a record never changes
    def target_key(self) -> str | None:
        """kind/namespace/name of the scale target (a Deployment and a StatefulSet may share a name),
        None when the spec does not parse."""
        if self.spec is None:
            return None
        return target_key(self.spec.scale_target_ref.kind, self.namespace, self.spec.scale_target_ref.name)

    @property
    def claim(self) -> dict[str, str] | None:
        """status.scaleTarget as the planner keeps it: which target this flow claims, and since when.
        A claim of another target than the spec names now is none (the spec was changed)."""
        if self.spec is None:
            return None
        ref = self.spec.scale_target_ref
        recorded = self.status.get("scaleTarget") or {}
        if recorded.get("kind") == ref.kind and recorded.get("name") == ref.name and recorded.get("since"):
            return {"kind": ref.kind, "name": ref.name, "since": str(recorded["since"])}
        return None

    @functools.cached_property
    def claim_since(self) -> str:
        """When this flow's claim on its current target began (RFC 3339): its claim as recorded; the
        flow's creation when none was ever recorded (it names the target it was created with); "~"
        (after every time) when it was re-pointed and the new claim is not recorded yet."""
        claim = self.claim
        if claim is not None:
            return claim["since"]
        return "~" if self.status.get("scaleTarget") else (self.created or "~")

    @property
    def target_text(self) -> str:
        """The scale target for people, e.g. "StatefulSet shop/order-consumer"."""
        ref = self.spec.scale_target_ref if self.spec is not None else None
        return "its scale target" if ref is None else f"{ref.kind} {self.namespace}/{ref.name}"

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


def target_key(kind: str, namespace: str, name: str) -> str:
    return f"{kind}/{namespace}/{name}"


@dataclass(frozen=True)
class ScaleTarget:
    """Where a workload's /scale subresource is: the same URL shape for every kind."""

    group: str
    version: str
    plural: str
    namespace: str
    name: str


@dataclass(frozen=True)
class TargetRecord:
    """A scale target as the watch last showed it: a Deployment, a StatefulSet or an Argo Rollout."""

    target_kind: ScaleTargetKind
    namespace: str
    name: str
    spec_replicas: int
    replicas: int  # pods that exist, ready or not
    ready_replicas: int
    template_hash: str  # changes when a fix is deployed (new image, env, config)
    uid: str = ""
    resource_version: str = ""
    replicas_manager: str | None = None  # the field manager that last set spec.replicas (managedFields)
    replicas_managed_at: str = ""  # when it did (RFC 3339, second resolution)

    @property
    def kind(self) -> str:
        return self.target_kind.kind

    @property
    def key(self) -> str:
        return target_key(self.kind, self.namespace, self.name)

    @property
    def path(self) -> str:
        """kind namespace/name, for people."""
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def scale_target(self) -> ScaleTarget:
        k = self.target_kind
        return ScaleTarget(k.group, k.version, k.plural, self.namespace, self.name)

    @property
    def reference(self) -> dict[str, str]:
        return {"apiVersion": self.target_kind.api_version, "kind": self.kind, "name": self.name, "namespace": self.namespace, "uid": self.uid}


def template_hash(template: dict[str, Any] | None) -> str:
    return hashlib.sha256(json.dumps(template or {}, sort_keys=True).encode()).hexdigest()[:16]


def uid_of(body: dict[str, Any]) -> str:
    """The key of a custom object in the store: its UID (namespace/name for a body that has none)."""
    metadata = body.get("metadata") or {}
    return str(metadata.get("uid") or "") or f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"


def identity(body: dict[str, Any]) -> dict[str, Any]:
    """namespace, name, uid, generation, status and resource_version of a custom object as a watch
    event or a write response carries it (the fields every record of ours starts with)."""
    metadata = body.get("metadata", {})
    return {
        "namespace": metadata.get("namespace", ""),
        "name": metadata.get("name", ""),
        "uid": uid_of(body),
        "generation": int(metadata.get("generation") or 0),
        "status": dict(body.get("status") or {}),
        "resource_version": str(metadata.get("resourceVersion") or ""),
    }


def parse_spec(model: Any, body: dict[str, Any]) -> tuple[Any, str | None]:
    """(the spec, None), or (None, why) when the stored spec does not parse (it should not pass the CRD)."""
    try:
        return SHARED_PARTS.share(model.model_validate(body.get("spec") or {})), None
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        return None, str(exc)


def flow_from_body(body: dict[str, Any], previous: FlowRecord | None = None) -> FlowRecord:
    """The flow in `body`. The spec of `previous` is reused when it is the same object at the same
    generation (the API server bumps it on every spec change): status writes coming back by the
    thousand are not parsed again."""
    metadata = body.get("metadata", {})
    generation = int(metadata.get("generation") or 0)
    if previous is not None and generation > 0 and previous.generation == generation and previous.uid == uid_of(body):
        spec, error = previous.spec, previous.spec_error
    else:
        spec, error = parse_spec(IntegrationFlowSpec, body)
    return FlowRecord(
        **identity(body),
        spec=spec,
        spec_error=error,
        annotations={k: v for k, v in (metadata.get("annotations") or {}).items() if k.startswith(OWN_ANNOTATIONS)},
        created=str(metadata.get("creationTimestamp") or ""),
    )


def replicas_manager(managed_fields: list[dict[str, Any]] | None) -> tuple[str | None, str]:
    """Who last set spec.replicas, and when: the managedFields entry that owns it (writes through /scale
    are recorded on the parent with subresource "scale", under the same field path)."""
    for entry in managed_fields or ():
        spec = (entry.get("fieldsV1") or {}).get("f:spec") or {}
        if "f:replicas" in spec:
            return str(entry.get("manager") or ""), str(entry.get("time") or "")
    return None, ""


def target_from_body(body: dict[str, Any], kind: ScaleTargetKind) -> TargetRecord:
    """A scale target from a watch event or a LIST item; `kind` is given because LIST items carry none."""
    metadata, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status") or {}
    manager, managed_at = replicas_manager(metadata.get("managedFields"))
    return TargetRecord(
        target_kind=kind,
        namespace=metadata.get("namespace", ""),
        name=metadata.get("name", ""),
        spec_replicas=int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1),
        replicas=int(status.get("replicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        template_hash=template_hash(spec.get("template")),
        uid=str(metadata.get("uid") or ""),
        resource_version=str(metadata.get("resourceVersion") or ""),
        replicas_manager=manager,
        replicas_managed_at=managed_at,
    )


def newer(candidate: str, current: str) -> bool:
    """Whether resourceVersion `candidate` is not older than `current`. The API server's versions are
    etcd revisions, integers that grow (comparable since Kubernetes 1.33); anything else counts as newer
    so that the watch is never ignored."""
    try:
        return int(candidate) >= int(current)
    except ValueError:
        return True
