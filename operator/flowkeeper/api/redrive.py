"""The DeadLetterRedrive API, version v1alpha1: moves a flow's dead letters back to its queue in
controlled batches, after the cause was fixed (docs/dead-letters.md). Like the IntegrationFlow, these
models are the source of `crds/` (`make crds`) and of `kubectl explain deadletterredrive`.

A redrive is a one-shot job: its spec cannot change once created (a CEL transition rule); to change
a running redrive, delete it (it stops after its batch) and create another.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints

from flowkeeper.api.durations import duration_within
from flowkeeper.api.quantities import quantity_within
from flowkeeper.api.v1alpha1 import GROUP, K8S_NAME_PATTERN, VERSION, ApiModel, Condition, SecretKeyRef, cel

KIND = "DeadLetterRedrive"
PLURAL = "deadletterredrives"
SINGULAR = "deadletterredrive"
SHORT_NAMES = ["dlr", "redrive"]


class FlowRef(ApiModel):
    name: str = Field(
        description="Name of the IntegrationFlow, in the same namespace, whose dead letters are moved back to its queue.",
        min_length=1,
        max_length=253,
        pattern=K8S_NAME_PATTERN,
    )


class ErrorClassName(str, Enum):
    configuration = "configuration"
    data = "data"
    code = "code"
    transient = "transient"
    unclassified = "unclassified"


class Credentials(ApiModel):
    """Broker credentials for this redrive instead of the flow's (spec.source.connection)."""

    username_secret: SecretKeyRef = Field(description="The user name.")
    password_secret: SecretKeyRef = Field(description="The password.")


class DeadLetterRedriveSpec(ApiModel):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self == oldSelf", "spec is immutable: delete this DeadLetterRedrive and create another"),
    ]})

    flow_ref: FlowRef = Field(description="The flow whose dead letters are redriven.")
    batch_size: int = Field(default=100, ge=1, le=10_000, description="Dead letters moved per batch.")
    interval: duration_within("0s", "1h") = Field(default="5s", description="Pause between two batches.")
    max_messages: int | None = Field(default=None, ge=1, le=1_000_000_000, description="Move at most this many in all. Unset: every selected dead letter.")
    classes: list[ErrorClassName] = Field(
        default_factory=list,
        max_length=5,
        description="Only dead letters of these error classes (x-flowkeeper-error-class; unclassified: without one). Empty: every class.",
    )
    reasons: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=20, description="Only dead letters with one of these reasons, exactly. Empty: any reason."
    )
    max_refailure_ratio: quantity_within("0", "1") = Field(
        default="0.1",
        description="Stop when more than this share of the moved messages came back to the dead letters (0.1 = 10 %).",
    )
    cause_window: duration_within("1m", "24h") = Field(
        default="5m",
        description="The redrive starts only when the flow's consumers counted no error of the selected classes "
        "(flowkeeper_errors_total) for this long: the cause is fixed.",
    )
    verify_for: duration_within("0s", "24h") = Field(
        default="1m", description="After the last batch, how long re-failures are still watched before the redrive Succeeded."
    )
    max_replicas: int | None = Field(
        default=None, ge=1, le=10_000,
        description="While the redrive moves messages, the flow scales up to at most this many replicas (more that it already has are left alone).",
    )
    dry_run: bool = Field(default=False, description="Count what would be moved (status.wouldMove) and move nothing.")
    credentials: Credentials | None = Field(default=None, description="Broker credentials instead of the flow's.")


class Phase(str, Enum):
    pending = "Pending"
    blocked = "Blocked"
    running = "Running"
    verifying = "Verifying"
    succeeded = "Succeeded"
    stopped = "Stopped"
    failed = "Failed"


class RedriveCutoff(ApiModel):
    """What was in the dead letters when the redrive started: only those are moved."""

    token: str = Field(max_length=65536, description="The broker adapter's mark of the cutoff (RabbitMQ: a marker message; Kafka: end offsets).")
    depth: int = Field(ge=0, description="Dead letters at the start.")
    at: str = Field(description="When the cutoff was taken.", json_schema_extra={"format": "date-time"})
    route: str | None = Field(default=None, max_length=4096, description="The broker, dead letters and queue it started on; a changed flow stops it (FlowChanged).")


class DeadLetterRedriveStatus(ApiModel):
    observed_generation: int | None = Field(default=None, description="The .metadata.generation acted on.")
    phase: Phase | None = Field(default=None, description="Pending, Blocked, Running, Verifying, Succeeded, Stopped or Failed.")
    moved: int = Field(default=0, ge=0, description="Dead letters moved back to the flow's queue.")
    refailed: int = Field(default=0, ge=0, description="Moved messages that came back to the dead letters.")
    remaining: int | None = Field(default=None, ge=0, description="Selected dead letters from before the start still to move (Kafka: still to read).")
    would_move: int | None = Field(default=None, ge=0, description="Dry run: dead letters that would be moved.")
    cutoff: RedriveCutoff | None = Field(default=None, description="Set when the redrive started.")
    started_at: str | None = Field(default=None, description="When moving began.", json_schema_extra={"format": "date-time"})
    finished_at: str | None = Field(default=None, description="When the redrive ended.", json_schema_extra={"format": "date-time"})
    verify_until: str | None = Field(default=None, description="Re-failures are watched until then.", json_schema_extra={"format": "date-time"})
    message: str = Field(default="", description="What the redrive is doing or why it is not, for people.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Progressing (moving or verifying) and Complete.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class DeadLetterRedrive(ApiModel):
    """Moves an IntegrationFlow's dead letters back to its queue in controlled batches, once the cause
    is fixed, and stops by itself when too many fail again."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["flowkeeper.io/v1alpha1"] = Field(default=f"{GROUP}/{VERSION}", description="flowkeeper.io/v1alpha1")
    kind: Literal["DeadLetterRedrive"] = Field(default=KIND, description="DeadLetterRedrive")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: DeadLetterRedriveSpec
    status: DeadLetterRedriveStatus = Field(default_factory=DeadLetterRedriveStatus)
