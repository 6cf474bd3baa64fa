"""kopf wiring only: settings, watch events into the store, the shared loop started and stopped.
No scaling or health logic lives here (see domain/ and controller/).

The watch handlers are coroutines: kopf runs them on the event loop, the one thread that touches
the store (a plain `def` would run in kopf's thread pool, racing the loop over the store's state).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf

from flowkeeper.adapters.kubernetes import LIST_PAGE, KubernetesGateway, load_client_config
from flowkeeper.adapters.prometheus import PrometheusSignals
from flowkeeper.api import redrive as redrive_api
from flowkeeper.api import v1alpha1 as api
from flowkeeper.config import OperatorConfig
from flowkeeper.controller.dead_letters import DeadLetterController
from flowkeeper.controller.leadership import LeaderElector
from flowkeeper.controller.loop import FlowController
from flowkeeper.controller.store import ClusterStore
from flowkeeper.domain.leadership import LeaseTiming
from flowkeeper.observability import metrics, tracing

log = logging.getLogger("flowkeeper")

IDLE_WORKER_SECONDS = 0.2  # how long kopf keeps an object's worker waiting for its next event


def _own_pod() -> dict[str, str] | None:
    """The operator's own Pod (the chart sets POD_NAME and POD_NAMESPACE): operator-wide Events go there."""
    name, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
    if not name or not namespace:
        return None
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": namespace, "uid": os.environ.get("POD_UID", "")}


def apply_kopf_settings(settings: kopf.OperatorSettings) -> None:
    """kopf's settings as Flowkeeper runs it."""
    # Our own annotation prefix instead of kopf.zalando.org (kopf writes none for event handlers).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=api.GROUP)
    # Events for what Flowkeeper does to flows are posted explicitly; kopf's own handler chatter is noise.
    settings.posting.level = logging.WARNING
    # Watches are restarted every 10 minutes so a silently dropped connection cannot go unnoticed.
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # kopf's own LIST before each watch in pages, as the store's LISTs: ten thousand flows and their
    # Deployments are never one response held in memory at once.
    settings.watching.chunk_size = LIST_PAGE
    # kopf runs a worker task per object that has events, kept for idle_timeout after its last one: a
    # LIST of 10,000 flows and their Deployments (at startup, after each broken watch) is 20,000 workers
    # alive at once. The handlers only hand the body to the store, so a worker can end at once.
    settings.queueing.idle_timeout = IDLE_WORKER_SECONDS
    # No scanning of CRDs and Namespaces: Flowkeeper's resources and namespaces are fixed, and
    # least-privilege RBAC grants neither (namespaced installs get no cluster-wide verbs at all).
    settings.scanning.disabled = True


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    apply_kopf_settings(settings)

    config: OperatorConfig = getattr(memo, "config", None) or OperatorConfig()
    if config.metrics_port:
        metrics.serve(config.metrics_port)
    tracing.configure()  # on only when OTEL_EXPORTER_OTLP_ENDPOINT is set; logs which (docs/observability.md)
    store = ClusterStore(selector=config.selector)
    # Writers, the signals pass's Secret reads, the elector, LISTs and the dead-letter workers at once.
    gateway = KubernetesGateway(load_client_config(connections=config.write_concurrency + 8), request_timeout=config.request_timeout)
    signals = None
    if config.prometheus_url:
        signals = PrometheusSignals.from_config(
            config, secret_reader=lambda namespace, ref: gateway.read_secret_key(namespace, ref.name, ref.key)
        )
    leader = None
    memo.stopped = asyncio.Event()
    memo.tasks = []
    if config.lease is not None:
        lease = config.lease
        leader = LeaderElector(gateway, lease.namespace, lease.name, lease.identity, LeaseTiming.for_duration(lease.duration))
        memo.tasks.append(asyncio.create_task(leader.run(memo.stopped), name="flowkeeper-leader"))
        log.info("waiting for the lease", extra={"stage": "leader", "lease": f"{lease.namespace}/{lease.name}", "identity": lease.identity})
    controller = FlowController(
        store, gateway, signals, namespaces=config.namespaces, leader=leader, operator_ref=_own_pod(),
        conflict_hold_off=config.conflict_hold_off, write_concurrency=config.write_concurrency,
        write_qps=config.write_qps, write_burst=config.write_burst,
        target_kinds=config.target_kinds, settle_heap=True,
    )
    dead_letters = DeadLetterController(
        store, gateway, controller.leader, controller.recorder, signals=signals, namespaces=config.namespaces,
        review_interval=config.dead_letter_review_interval, review_limit=config.dead_letter_review_limit,
        scan_limit=config.dead_letter_review_limit,
        allowed_brokers=config.allowed_brokers,
    )
    memo.store = store
    memo.leader = leader
    memo.lease_duration = config.lease.duration if config.lease else 0.0
    memo.request_timeout = config.request_timeout
    memo.loop_stall_seconds = config.loop_stall_seconds
    memo.controller = controller
    memo.signals = signals
    memo.tasks.append(asyncio.create_task(controller.run_forever(memo.stopped), name="flowkeeper-loop"))
    memo.tasks.append(asyncio.create_task(dead_letters.run_forever(memo.stopped), name="flowkeeper-dead-letters"))


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    # The loop and the elector see the flag and finish: the elector hands the lease back on its way out.
    memo.stopped.set()
    _, pending = await asyncio.wait(memo.tasks, timeout=10)
    for task in pending:
        task.cancel()
    tracing.shutdown()
    if memo.signals is not None:
        memo.signals.close()


# A pass that takes longer than this is stuck, not slow (10 000 flows take seconds; every Prometheus
# query has its own timeout): the liveness probe fails and the kubelet restarts the replica.
# --loop-stall-seconds sets it (memo.loop_stall_seconds); this is the default.
LOOP_STALL_SECONDS = OperatorConfig.loop_stall_seconds


@kopf.on.probe(id="loop")
async def loop_alive(memo: kopf.Memo, **_: Any) -> float:
    """Part of `--liveness`, a coroutine so that it reads the loop's state on the loop's own thread:
    fails (HTTP 500) when the shared loop or the elector died or stopped coming round, which kopf's
    own probe, alive as long as kopf is, would not notice."""
    for task in memo.tasks:
        if task.done() and not memo.stopped.is_set():
            raise kopf.PermanentError(f"{task.get_name()} ended: {task.exception() if not task.cancelled() else 'cancelled'}")
    age = memo.controller.seconds_since_iteration()
    if age > getattr(memo, "loop_stall_seconds", LOOP_STALL_SECONDS):
        raise kopf.PermanentError(f"the controller loop has not come round for {age:.0f}s")
    if memo.leader is not None:
        # Every lease call times out after request_timeout; an elector silent for much longer is stuck.
        limit = 2 * memo.lease_duration + 2 * memo.request_timeout
        silent = memo.leader.seconds_since_attempt()
        if silent > limit:
            raise kopf.PermanentError(f"the leader elector has not tried the lease for {silent:.0f}s")
    return round(age, 1)


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def flow_changed(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    # The initial listing comes with type None: those objects are simply there, as if added.
    memo.store.flow_event(event.get("type") or "ADDED", event["object"])


@kopf.on.event(api.GROUP, api.VERSION, redrive_api.PLURAL)
async def redrive_changed(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    memo.store.redrive_event(event.get("type") or "ADDED", event["object"])


def watch_targets(kind: api.ScaleTargetKind) -> None:
    """Registers the watch of one scale target kind, feeding the store. Called at import for the
    built-in kinds, and by `flowkeeper run --watch-rollouts` for Argo Rollouts: a watch on a resource
    whose CRD is missing must not be started."""

    @kopf.on.event(kind.group, kind.version, kind.plural, id=f"{kind.plural}-changed")
    async def target_changed(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
        memo.store.target_event(kind, event.get("type") or "ADDED", event["object"])


for _kind in api.BUILT_IN_TARGET_KINDS:
    watch_targets(_kind)
