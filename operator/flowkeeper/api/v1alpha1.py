"""The IntegrationFlow API, version v1alpha1.

These pydantic models are the single source of truth: `crds/` is generated from them
(`flowkeeper crd`, `make crds`) and a test fails when the two drift. Every field carries a
description, because that text is what `kubectl explain integrationflow.spec...` shows users.
Validation users must see at `kubectl apply` time lives here too, as schema bounds and CEL rules
(`x-kubernetes-validations`), so bad input is refused before it reaches the operator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, StringConstraints, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import CoreSchema

from flowkeeper.api.durations import duration_within
from flowkeeper.api.quantities import quantity_within

GROUP = "flowkeeper.io"
VERSION = "v1alpha1"
KIND = "IntegrationFlow"
PLURAL = "integrationflows"
SINGULAR = "integrationflow"
SHORT_NAMES = ["iflow", "iflows"]

# Kubernetes object names (DNS-1123 subdomain) as used for workloads and Secrets.
K8S_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


# Sane upper bound of counts the user writes (backlog targets, thresholds): far above any real queue,
# far below what overflows a float or an int64.
MAX_COUNT = 1_000_000_000


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry; the message names the field the user must fix."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


@dataclass(frozen=True)
class Rule:
    """A rule across fields of one object: `rule` is CEL for the API server, `holds` the same check
    for the model, so a spec that slipped past an older CRD is still refused when parsed."""

    rule: str
    holds: Callable[[Any], bool]
    message: str  # names the field the user must fix
    field_path: str | None = None


class ApiModel(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields refused, `rules` across fields
    checked by the model and emitted as CEL rules."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        # Specs are values: never changed once parsed, so equal parts of many flows' specs are one
        # object in memory (domain/flow.py, shared_parts).
        frozen=True,
    )
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _rules_hold(self) -> ApiModel:
        for rule in self.rules:
            if not rule.holds(self):
                raise ValueError(rule.message)
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        json_schema = handler(schema)
        if cls.rules:
            target = handler.resolve_ref_schema(json_schema)
            target["x-kubernetes-validations"] = [cel(r.rule, r.message, r.field_path) for r in cls.rules]
        return json_schema

    def to_wire(self) -> dict[str, Any]:
        """The object as it is written to the API server (camelCase, unset optionals left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def nested(model: type[ApiModel], description: str) -> Any:
    """A sub-object that is always present: the API server fills in its defaults when it is omitted.
    The default is written out in full because CEL rules are checked against defaults as they stand."""
    return Field(default_factory=model, description=description, json_schema_extra={"default": model().to_wire()})


# --------------------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class ScaleTargetKind:
    """A kind of workload Flowkeeper can scale: one with a /scale subresource."""

    api_version: str  # as written in spec.scaleTargetRef.apiVersion
    kind: str
    plural: str  # the resource name in API paths and RBAC rules

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


DEPLOYMENT = ScaleTargetKind("apps/v1", "Deployment", "deployments")
STATEFULSET = ScaleTargetKind("apps/v1", "StatefulSet", "statefulsets")
ROLLOUT = ScaleTargetKind("argoproj.io/v1alpha1", "Rollout", "rollouts")
SCALE_TARGET_KINDS = (DEPLOYMENT, STATEFULSET, ROLLOUT)
BUILT_IN_TARGET_KINDS = (DEPLOYMENT, STATEFULSET)  # always watched; Rollouts need their CRD (--watch-rollouts)


def scale_target_kind(api_version: str, kind: str) -> ScaleTargetKind | None:
    return next((k for k in SCALE_TARGET_KINDS if (k.api_version, k.kind) == (api_version, kind)), None)


def _kinds_text() -> str:
    by_version: dict[str, list[str]] = {}
    for k in SCALE_TARGET_KINDS:
        by_version.setdefault(k.api_version, []).append(k.kind)
    return " or ".join(f"{' or '.join(kinds)} ({version})" for version, kinds in by_version.items())


class ScaleTargetRef(ApiModel):
    """The workload that takes messages from the queue, like the HPA's and KEDA's scaleTargetRef.
    Flowkeeper changes only its replica count, through the /scale subresource, and never its template."""

    rules = (
        Rule(
            " || ".join(f"(self.apiVersion == '{k.api_version}' && self.kind == '{k.kind}')" for k in SCALE_TARGET_KINDS),
            lambda s: scale_target_kind(s.api_version, s.kind) is not None,
            f"spec.scaleTargetRef must be a {_kinds_text()}",
            ".kind",
        ),
    )

    api_version: str = Field(default=DEPLOYMENT.api_version, max_length=253, description="API version of the workload: apps/v1, or argoproj.io/v1alpha1 for a Rollout.")
    kind: str = Field(default=DEPLOYMENT.kind, max_length=63, description="Kind of the workload: Deployment, StatefulSet or Rollout.")
    name: str = Field(
        description="Name of the workload, in the same namespace as the IntegrationFlow.",
        min_length=1,
        max_length=253,
        pattern=K8S_NAME_PATTERN,
    )


class Broker(str, Enum):
    rabbitmq = "rabbitmq"
    kafka = "kafka"
    prometheus = "prometheus"


class Source(ApiModel):
    """Where the flow's messages wait. The broker decides which Prometheus metrics are read: RabbitMQ
    (rabbitmq_prometheus), Kafka (kafka_exporter), or the consumers' own metrics (the Flowkeeper
    metrics convention, keyed by the `integration` label)."""

    rules = (
        Rule(
            "self.broker != 'rabbitmq' || has(self.queue)",
            lambda s: s.broker != "rabbitmq" or s.queue is not None,
            "spec.source.queue is required when broker is rabbitmq",
            ".queue",
        ),
        Rule(
            "self.broker != 'kafka' || has(self.topic)",
            lambda s: s.broker != "kafka" or s.topic is not None,
            "spec.source.topic is required when broker is kafka",
            ".topic",
        ),
        Rule(
            "!has(self.connection) || self.broker != 'rabbitmq' || self.connection.address.startsWith('amqp')",
            lambda s: s.connection is None or s.broker != "rabbitmq" or s.connection.address.startswith("amqp"),
            "spec.source.connection.address must be an amqp:// or amqps:// URL when broker is rabbitmq",
            ".connection",
        ),
        Rule(
            "!has(self.connection) || self.broker != 'kafka' || !self.connection.address.startsWith('amqp')",
            lambda s: s.connection is None or s.broker != "kafka" or not s.connection.address.startswith("amqp"),
            "spec.source.connection.address must be host:port[,host:port] when broker is kafka",
            ".connection",
        ),
        Rule(
            "!has(self.connection) || self.broker != 'prometheus'",
            lambda s: s.connection is None or s.broker != "prometheus",
            "spec.source.connection needs broker rabbitmq or kafka: Flowkeeper reviews dead letters on those brokers only",
            ".connection",
        ),
        Rule(
            "self.broker != 'kafka' || has(self.consumerGroup)",
            lambda s: s.broker != "kafka" or s.consumer_group is not None,
            "spec.source.consumerGroup is required when broker is kafka",
            ".consumerGroup",
        ),
    )

    broker: Broker = Field(
        description="Kind of source: rabbitmq, kafka, or prometheus (signals come from the consumers' "
        "own metrics, see docs/metrics-convention.md)."
    )
    vhost: str = Field(default="/", max_length=255, description="RabbitMQ virtual host of the queue.")
    queue: str | None = Field(
        default=None, min_length=1, max_length=255, description="RabbitMQ queue the consumers read. Required for rabbitmq."
    )
    dead_letter_queue: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="RabbitMQ queue that receives rejected messages. Any message in it marks the flow P3 "
        "(data problem: scaling will not help).",
    )
    topic: str | None = Field(
        default=None, min_length=1, max_length=255, description="Kafka topic the consumers read. Required for kafka."
    )
    consumer_group: str | None = Field(
        default=None, min_length=1, max_length=255, description="Kafka consumer group of the consumers. Required for kafka."
    )
    dead_letter_topic: str | None = Field(
        default=None, min_length=1, max_length=255, description="Kafka topic that receives rejected messages."
    )
    integration: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Value of the `integration` label on the consumers' own metrics (metrics convention). "
        "Defaults to the IntegrationFlow's name.",
    )
    connection: BrokerConnection | None = Field(
        default=None,
        description="How Flowkeeper itself reaches the broker, to review the dead letters (spec.source."
        "deadLetterQueue or deadLetterTopic) and to redrive them (DeadLetterRedrive). Without it, dead "
        "letters are only counted, from Prometheus.",
    )
    metric_labels: dict[str, Annotated[str, StringConstraints(max_length=1024)]] | None = Field(
        default=None,
        max_length=10,
        description="Exact label matchers added to this flow's broker queries (RabbitMQ queue depth, Kafka "
        "lag and dead-letter topic), for a Prometheus that scrapes several brokers with the same queue or "
        "topic names, e.g. {instance: rabbitmq-prod:15692} or {cluster: prod}. Flows with equal labels share "
        "one query.",
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.all(k, k.matches('^[a-zA-Z_][a-zA-Z0-9_]*$'))",
                    "spec.source.metricLabels keys must be Prometheus label names: a letter or _, then letters, digits or _",
                )
            ]
        },
    )


class SecretKeyRef(ApiModel):
    """A key of a Secret in the IntegrationFlow's namespace."""

    name: str = Field(description="Name of the Secret.", min_length=1, max_length=253, pattern=K8S_NAME_PATTERN)
    key: str = Field(description="Key inside the Secret.", min_length=1, max_length=253)


class BrokerConnection(ApiModel):
    """The broker's own address (not its metrics) and the credentials Flowkeeper uses there. The
    operator reads the Secrets with GET only (no list or watch)."""

    address: str = Field(
        description="RabbitMQ: an AMQP URL without credentials, amqp://host:5672 or amqps://host:5671 "
        "(the vhost is spec.source.vhost). Kafka: bootstrap servers, host:9092[,host2:9092].",
        min_length=1,
        max_length=2048,
        pattern=r"^(amqps?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?|[A-Za-z0-9.-]+:[0-9]{1,5}(,[A-Za-z0-9.-]+:[0-9]{1,5})*)$",
    )
    username_secret: SecretKeyRef | None = Field(default=None, description="The user name (RabbitMQ user, Kafka SASL PLAIN user).")
    password_secret: SecretKeyRef | None = Field(default=None, description="The password.")


class BasicAuth(ApiModel):
    """HTTP basic auth credentials, each from a key of a Secret."""

    username_secret: SecretKeyRef = Field(description="The user name.")
    password_secret: SecretKeyRef = Field(description="The password.")


class PrometheusServer(ApiModel):
    """A Prometheus to read this flow's signals from, instead of the operator's default one. Flows with
    their own server are queried in their own pass."""

    address: str = Field(
        description="Base URL of the Prometheus HTTP API, e.g. https://prometheus.monitoring:9090.",
        min_length=1,
        max_length=2048,
        pattern=r"^https?://",
    )
    bearer_token_secret: SecretKeyRef | None = Field(default=None, description="Bearer token for the requests.")
    basic_auth: BasicAuth | None = Field(default=None, description="HTTP basic auth for the requests.")
    ca_secret: SecretKeyRef | None = Field(default=None, description="CA certificate (PEM) to verify the server's TLS certificate.")


class MetricsOverrides(ApiModel):
    """PromQL that replaces a preset signal for this flow. Each query must return one number. Every
    override costs one query per pass for this flow, while presets are batched across all flows."""

    server: PrometheusServer | None = Field(default=None, description="Read this flow from another Prometheus.")
    queue_depth: str | None = Field(default=None, max_length=4096, description="Messages waiting to be consumed.")
    dead_letter_depth: str | None = Field(default=None, max_length=4096, description="Messages in the dead-letter queue.")
    throughput: str | None = Field(default=None, max_length=4096, description="Messages processed per second by all consumers.")
    error_ratio: str | None = Field(default=None, max_length=4096, description="Failed / processed messages, 0..1.")
    configuration_errors: str | None = Field(
        default=None,
        max_length=4096,
        description="Rate of configuration errors the consumers report (wrong endpoint, expired credentials). "
        "Above zero, the flow is paused or alerted per onConfigurationError.",
    )
    latency_seconds: str | None = Field(default=None, max_length=4096, description="Processing latency per message, seconds.")
    last_success_timestamp: str | None = Field(
        default=None, max_length=4096, description="Unix time of the last successfully processed message."
    )
    cpu_utilization: str | None = Field(
        default=None, max_length=4096, description="Consumer CPU use in percent of requests (70 = 70 %)."
    )


class StepRules(ApiModel):
    """How fast replicas may change in one direction."""

    stabilization_window: duration_within("0s", "1h") = Field(
        default="0s",
        description="A change in this direction happens only if every recommendation within this window "
        "agreed with it (like the HPA's behavior.*.stabilizationWindowSeconds).",
    )
    max_replicas_per_step: int | None = Field(
        default=None, ge=1, le=10000, description="At most this many replicas added or removed per pass. Unset: no limit."
    )
    max_percent_per_step: int | None = Field(
        default=None, ge=1, le=1000, description="At most this percentage of the current replicas per pass. Unset: no limit."
    )


class ScaleDownRules(StepRules):
    """How fast replicas may go down; by default only after the recommendation stayed lower for 5m."""

    stabilization_window: duration_within("0s", "1h") = Field(
        default="5m",
        description="Replicas go down only to the highest recommendation seen within this window.",
    )


class Fallback(ApiModel):
    """What to do while the flow's metrics cannot be read. Missing metrics never scale a flow down."""

    after_failures: int = Field(default=3, ge=1, le=1000, description="Failed passes in a row before the fallback applies.")
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=10000,
        description="Replicas while metrics are missing, after afterFailures passes; never fewer than the "
        "current count, at most maxReplicas. Unset: keep the current count.",
    )


class ScalingSpec(ApiModel):
    """How many consumers the flow gets. Every target below gives a replica count; the largest wins,
    clamped to [minReplicas, maxReplicas] and to partitions."""

    rules = (
        Rule(
            "self.minReplicas <= self.maxReplicas",
            lambda s: s.min_replicas <= s.max_replicas,
            "spec.scaling.minReplicas must be less than or equal to spec.scaling.maxReplicas",
            ".minReplicas",
        ),
        Rule(
            "!has(self.fallback.replicas) || self.fallback.replicas <= self.maxReplicas",
            lambda s: s.fallback.replicas is None or s.fallback.replicas <= s.max_replicas,
            "spec.scaling.fallback.replicas must be less than or equal to spec.scaling.maxReplicas",
            ".fallback.replicas",
        ),
    )

    min_replicas: int = Field(
        default=1,
        ge=0,
        le=10000,
        description="Fewest consumers. 0 lets an idle flow scale to zero after idleAfter; the first message "
        "above activationQueueDepth brings one back.",
    )
    max_replicas: int = Field(default=10, ge=1, le=10000, description="Most consumers.")
    partitions: int | None = Field(
        default=None,
        ge=1,
        le=100000,
        description="Ordered consumption (Kafka partitions, single-active-consumer queues): never more "
        "consumers than this.",
    )
    queue_depth_per_replica: int = Field(
        default=100, ge=1, le=MAX_COUNT, description="Backlog one consumer should carry: replicas = ceil(queueDepth / this)."
    )
    activation_queue_depth: int = Field(
        default=0, ge=0, le=MAX_COUNT, description="From zero replicas, scale to one only when the backlog is above this."
    )
    drain_within: duration_within("1s", "24h") | None = Field(
        default=None,
        description="Optional: enough consumers to drain the backlog within this time, from the measured "
        "throughput per consumer.",
    )
    cpu_utilization: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="Optional: target CPU use of the consumers, percent of their requests (HPA formula).",
    )
    tolerance: quantity_within("0", "1") = Field(
        default="0.1",
        validate_default=True,
        description="Ratios within this distance of 1.0 do not change replicas (like the HPA's 10 %). A quantity: \"0.1\" or \"100m\".",
    )
    poll_interval: duration_within("1s", "1h") = Field(default="15s", description="How often the flow's signals are read and decided on.")
    idle_after: duration_within("0s", "24h") = Field(
        default="5m", description="With minReplicas 0: how long the queue must stay empty before going to zero."
    )
    scale_up: StepRules = nested(StepRules, "Limits for adding consumers. Default: at once.")
    scale_down: ScaleDownRules = nested(ScaleDownRules, "Limits for removing consumers. Default: after 5m of lower load.")
    fallback: Fallback = nested(Fallback, "Behaviour while metrics are missing.")


# Windows over Prometheus' history (growth, baselines) are looked at in steps of at least 1s, each slope
# over the operator's rate window (--rate-window): a shorter window holds too few samples to mean anything.
MIN_SIGNAL_WINDOW = "5s"


class HealthSpec(ApiModel):
    """Thresholds of the flow's health signals. The defaults are the ones integration teams alert on."""

    heartbeat_window: duration_within("1s", "24h") = Field(
        default="5m", description="Unhealthy when no message was processed within this window while work waits."
    )
    not_ready_grace: duration_within("1s", "24h") = Field(
        default="1m",
        description="How long the flow may have no ready consumers while work waits before it counts as down "
        "(pods starting, a rollout, activation from zero).",
    )
    error_ratio: quantity_within("0", "1") = Field(
        default="0.01", validate_default=True, description="Unhealthy above this fraction of failed messages. A quantity: \"0.01\" or \"10m\"."
    )
    throughput_deviation: quantity_within("0", "10") = Field(
        default="0.3",
        validate_default=True,
        description="Unhealthy when throughput is more than this fraction away from its baseline. A quantity: \"0.3\" or \"300m\".",
    )
    latency_factor: quantity_within("1", "1000") = Field(
        default="2", validate_default=True, description="Unhealthy when latency is above this multiple of its baseline. A quantity: \"2\" or \"1.5\"."
    )
    queue_growth_window: duration_within(MIN_SIGNAL_WINDOW, "168h") = Field(default="10m", description="Unhealthy when the backlog grew for this long straight.")
    cpu_utilization: int = Field(default=80, ge=1, le=1000, description="Unhealthy when consumer CPU stays above this percent of requests.")
    memory_utilization: int = Field(default=85, ge=1, le=1000, description="Unhealthy when consumer memory stays above this percent of limits.")
    baseline_window: duration_within(MIN_SIGNAL_WINDOW, "168h") = Field(default="1h", description="Trailing window over which throughput and latency baselines are computed.")


class OnConfigurationError(str, Enum):
    pause = "Pause"
    alert = "Alert"


class IntegrationFlowSpec(ApiModel):
    """Desired state of an integration flow: what it joins, who owns it, where its messages wait, and how
    it is scaled and judged."""

    description: str | None = Field(default=None, max_length=1024, description="What the flow does, for people.")
    owner: str | None = Field(default=None, max_length=253, description="Team that answers for the flow.")
    source_system: str | None = Field(default=None, max_length=253, description="System the messages come from.")
    target_system: str | None = Field(default=None, max_length=253, description="System the messages are delivered to.")
    runbook_url: str | None = Field(
        default=None,
        alias="runbookURL",  # Kubernetes spells acronyms in capitals; the generator would write runbookUrl
        max_length=2048,
        pattern=r"^https?://",
        description="Runbook for this flow; linked from Events and conditions.",
    )
    scale_target_ref: ScaleTargetRef = Field(description="The consumer workload to scale: a Deployment, a StatefulSet or an Argo Rollout.")
    source: Source = Field(description="Where the flow's messages wait.")
    metrics: MetricsOverrides = nested(MetricsOverrides, "Optional PromQL overrides per signal.")
    scaling: ScalingSpec = nested(ScalingSpec, "How many consumers the flow gets.")
    health: HealthSpec = nested(HealthSpec, "Thresholds of the health signals.")
    on_configuration_error: OnConfigurationError = Field(
        default=OnConfigurationError.pause,
        description="Pause: consumers go to 0 and the backlog waits safely in the queue until the cause is "
        "fixed. Alert: keep consuming, only report.",
    )
    paused: bool = Field(default=False, description="Pause the flow by hand (consumers to 0), declared in Git.")


# ------------------------------------------------------------------------------------------- status


class Phase(str, Enum):
    pending = "Pending"
    running = "Running"
    scaling = "Scaling"
    degraded = "Degraded"
    paused = "Paused"
    down = "Down"


class Severity(str, Enum):
    none = "None"
    p4 = "P4"
    p3 = "P3"
    p2 = "P2"
    p1 = "P1"


class ConditionStatus(str, Enum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(ApiModel):
    """A condition in the standard metav1.Condition shape."""

    type: str = Field(description="Condition type: Ready, Healthy, MetricsAvailable, Paused, ScalingLimited, ScalingConflict.", max_length=316)
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        description="One CamelCase word for machines.", min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
    )
    message: str = Field(default="", max_length=32768, description="What happened, for people.")
    last_transition_time: str = Field(description="When status last changed.", json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(default=None, ge=0, description="The .metadata.generation the condition was set from.")


class Signals(ApiModel):
    """The flow's signals as last recorded: rewritten when a value appears or goes, reaches or leaves
    zero, or moves by a factor of two, else at most once a minute (the live values are the operator's
    flowkeeper_flow_* metrics). A signal that could not be read is left out."""

    queue_depth: float | None = Field(default=None, description="Messages waiting.")
    dead_letter_depth: float | None = Field(default=None, description="Messages in the dead-letter queue.")
    throughput: float | None = Field(default=None, description="Messages processed per second.")
    error_ratio: float | None = Field(default=None, description="Failed / processed messages.")
    latency_seconds: float | None = Field(default=None, description="Processing latency per message.")
    cpu_utilization: float | None = Field(default=None, description="Consumer CPU use, percent of requests.")
    memory_utilization: float | None = Field(default=None, description="Consumer memory use, percent of limits.")
    observed_at: str | None = Field(default=None, description="When the signals were read.", json_schema_extra={"format": "date-time"})


class PauseState(ApiModel):
    """Why and since when the flow is paused, and what to restore on resume."""

    reason: str = Field(description="Why the flow is paused: Manual, TargetNotFound, InvalidQuery, SecretNotFound, SecretKeyNotFound, SecretForbidden, ConsumerConfigurationError.")
    since: str = Field(description="When the pause began.", json_schema_extra={"format": "date-time"})
    replicas_before: int | None = Field(
        default=None, ge=0, description="Replicas the consumers had before the pause; restored on resume. Unset when never known."
    )
    message: str = Field(default="", description="Details for people.")
    template_hash: str | None = Field(default=None, description="Hash of the consumer pod template at pause time; a change resumes.")
    spec_generation: int | None = Field(default=None, description="The flow's generation at pause time; a spec change resumes.")
    resume_request: str | None = Field(
        default=None,
        max_length=253,
        description="Value of the flowkeeper.io/resume annotation at pause time; a new value resumes.",
    )


class TargetClaim(ApiModel):
    """The scale target this flow claims, and since when: of several flows naming one target, the
    oldest claim scales it."""

    kind: str = Field(description="Kind of the scale target.", max_length=63)
    name: str = Field(description="Name of the scale target.", max_length=253)
    since: str = Field(description="When this flow began to claim it.", json_schema_extra={"format": "date-time"})


class ReasonCount(ApiModel):
    reason: str = Field(description="The consumer's reason (x-flowkeeper-error), else the broker's (x-death).", max_length=256)
    count: int = Field(ge=0, description="Dead letters with this reason, among those examined.")


class DeadLetterReview(ApiModel):
    """What the dead letters are, read from the broker without consuming them (docs/dead-letters.md)."""

    depth: int = Field(ge=0, description="Dead letters in the queue (topic) when reviewed.")
    examined: int = Field(ge=0, description="Dead letters read for the counts below, oldest first (a review reads a bounded number).")
    oldest: str | None = Field(default=None, description="When the oldest dead letter examined was dead-lettered.", json_schema_extra={"format": "date-time"})
    newest: str | None = Field(default=None, description="When the newest dead letter examined was dead-lettered.", json_schema_extra={"format": "date-time"})
    by_class: dict[str, int] = Field(default_factory=dict, description="Counts by error class (x-flowkeeper-error-class; unclassified when missing).")
    by_reason: list[ReasonCount] = Field(default_factory=list, description="Counts by reason, most frequent first (the first 10).")
    samples: list[str] = Field(default_factory=list, description="A few reasons, as written by the consumers.")
    redriven: int = Field(default=0, ge=0, description="Dead letters a DeadLetterRedrive moved before that failed again; never redriven automatically.")
    reviewed_at: str | None = Field(default=None, description="When these counts were found (a review that finds the same rewrites nothing).", json_schema_extra={"format": "date-time"})
    error: str | None = Field(default=None, description="Why the last review failed, if it did (the counts are from the one before).")


class IntegrationFlowStatus(ApiModel):
    """Observed state of the flow, written by Flowkeeper only when a value changes."""

    observed_generation: int | None = Field(default=None, description="The .metadata.generation last acted on.")
    phase: Phase | None = Field(default=None, description="Pending, Running, Scaling, Degraded, Paused or Down.")
    severity: Severity | None = Field(default=None, description="None, P4 (cosmetic), P3 (dead letters), P2 (degraded), P1 (down).")
    replicas: int | None = Field(default=None, description="Replicas the scale target has, ready or not.")
    ready_replicas: int | None = Field(default=None, description="Ready consumer replicas.")
    desired_replicas: int | None = Field(default=None, description="Replicas Flowkeeper decided on.")
    last_scale_time: str | None = Field(default=None, description="When Flowkeeper last changed replicas.", json_schema_extra={"format": "date-time"})
    last_scale_reason: str | None = Field(default=None, description="Why, e.g. 'backlog 620 > 4 replicas x 100'.")
    signals: Signals | None = Field(default=None, description="The signals as last recorded; small moves are restated once a minute.")
    scale_target: TargetClaim | None = Field(default=None, description="The scale target this flow claims, and since when.")
    pause: PauseState | None = Field(default=None, description="Set while the flow is paused.")
    dead_letters: DeadLetterReview | None = Field(default=None, description="The last review of the dead letters, when spec.source.connection is set.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Healthy, MetricsAvailable, Paused, ScalingLimited, ScalingConflict.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class IntegrationFlow(ApiModel):
    """An integration flow: a consumer workload that takes messages from a queue and delivers them to a
    target system. Flowkeeper scales the consumers, pauses the flow on configuration errors, and records
    its health."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["flowkeeper.io/v1alpha1"] = Field(default=f"{GROUP}/{VERSION}", description="flowkeeper.io/v1alpha1")
    kind: Literal["IntegrationFlow"] = Field(default=KIND, description="IntegrationFlow")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: IntegrationFlowSpec
    status: IntegrationFlowStatus = Field(default_factory=IntegrationFlowStatus)
