"""The operator's own configuration, from `flowkeeper run` options and FLOWKEEPER_* variables."""

from __future__ import annotations

from dataclasses import dataclass

from flowkeeper.domain.ownership import FIRST_HOLD_OFF

from flowkeeper.api.v1alpha1 import BUILT_IN_TARGET_KINDS, ROLLOUT, ScaleTargetKind
from flowkeeper.domain.selector import EVERYTHING, LabelSelector


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    selector: LabelSelector = EVERYTHING  # the flows this replica serves (--selector)
    prometheus_url: str | None = None  # None: no metrics; flows are only checked for readiness
    prometheus_bearer_token_file: str | None = None
    prometheus_ca_file: str | None = None
    prometheus_timeout: float = 5.0  # seconds for one query's whole answer
    prometheus_pass_timeout: float | None = None  # seconds for a whole signals pass; None: 3x the query timeout
    # Prometheus servers flows may name in spec.metrics.server, besides prometheus_url.
    allowed_prometheus_servers: tuple[str, ...] = ()
    allow_metrics_overrides: bool = False  # whether flows may run their own PromQL (spec.metrics.<signal>)
    rate_window: str = "1m"  # window of rate() in the presets' PromQL
    metrics_port: int | None = 8080  # the operator's own /metrics; None disables it
    request_timeout: float = 30.0  # seconds for every Kubernetes API call
    # A pass of the loop that takes longer than this is stuck, not slow: the liveness probe fails.
    loop_stall_seconds: float = 180.0
    conflict_hold_off: float = FIRST_HOLD_OFF  # seconds without replica writes after another writer changed them
    # Sized for one replica serving 10,000 flows: a backlog step on 1,000 of them is 1,000 scale writes.
    write_concurrency: int = 64  # flows written at once
    write_qps: float = 200.0  # client-side limit of API writes per second (client-go's QPS)
    write_burst: int = 400  # writes allowed at once above it (client-go's burst)
    # Watch Argo Rollouts too: only when asked, since a watch on a resource without its CRD fails.
    watch_rollouts: bool = False
    # Dead letters (spec.source.connection): how often each flow's are reviewed, how many a review
    # reads, and the brokers flows may name (empty: any).
    dead_letter_review_interval: float = 60.0
    dead_letter_review_limit: int = 10_000
    allowed_brokers: tuple[str, ...] = ()
    # Leader election over a Lease (None: no election, this replica always acts)
    lease: LeaseConfig | None = None

    @property
    def target_kinds(self) -> tuple[ScaleTargetKind, ...]:
        """The scale target kinds the operator watches and lists."""
        return (*BUILT_IN_TARGET_KINDS, ROLLOUT) if self.watch_rollouts else BUILT_IN_TARGET_KINDS


@dataclass(frozen=True)
class LeaseConfig:
    name: str = "flowkeeper"
    namespace: str = "default"
    identity: str = ""
    duration: float = 15.0  # seconds a standby waits after the last renewal it saw
