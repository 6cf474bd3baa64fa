"""The operator's in-memory view of the cluster, fed by watch events and by the responses of its own
writes (no API reads in a pass).

One thread touches it: the event loop's. The kopf handlers that feed it are coroutines (a plain
`def` handler would run in kopf's thread pool and change the dictionaries while a pass iterates
them), and `check_thread` makes a violation fail loudly instead of corrupting state.

Flows are keyed by UID. A flow deleted while the startup LIST was in flight must not come back from
that LIST as a ghost: deleted UIDs are remembered (tombstones). A watch event older than what a
write response already stored is ignored, by resourceVersion.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from collections.abc import Callable, Mapping
from typing import Any

from flowkeeper.adapters.kubernetes import Listing
from flowkeeper.api.durations import to_seconds
from flowkeeper.controller.schedule import DueQueue
from flowkeeper.domain import ownership
from flowkeeper.api.v1alpha1 import ScaleTargetKind
from flowkeeper.domain.redrive import RedriveRecord, redrive_from_body, route_of
from flowkeeper.domain.selector import EVERYTHING, LabelSelector
from flowkeeper.domain.flow import FIELD_MANAGER, FlowRecord, TargetRecord, flow_from_body, newer, target_from_body, uid_of

TOMBSTONES = 10_000  # deleted UIDs remembered; they only matter while an older LIST may be applied
DELETED_KEPT = 1_000  # deleted flows waiting to be reported by the leader


class _Tombstones:
    def __init__(self, size: int = TOMBSTONES) -> None:
        self._uids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, uid: str) -> None:
        self._uids[uid] = None
        self._uids.move_to_end(uid)
        while len(self._uids) > self._size:
            self._uids.popitem(last=False)

    def __contains__(self, uid: str) -> bool:
        return uid in self._uids


@dataclass(frozen=True)
class ListedFlow:
    """What a listing keeps of one flow (ClusterStore.listed_flow, made in the listing's thread)."""

    uid: str
    record: FlowRecord | None  # None: another shard's flow, not even parsed


class ClusterStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic, selector: LabelSelector = EVERYTHING) -> None:
        self._clock = clock
        # The flows this replica serves (--selector): the others are not kept, and a flow relabelled
        # away is released (another shard takes it), never taken for deleted.
        self.selector = selector
        self.flows: dict[str, FlowRecord] = {}  # by UID
        self.targets: dict[str, TargetRecord] = {}  # by kind/namespace/name
        self._by_target: dict[str, set[str]] = {}  # scale target kind/namespace/name -> flow UIDs
        self._gone_flows = _Tombstones()
        self._gone_targets = _Tombstones()
        self.schedule = DueQueue()
        self.wakeup = asyncio.Event()
        self.seeded = False  # the startup LIST is in (the loop seeds before its first pass)
        self._thread: int | None = None
        self.deleted: list[FlowRecord] = []  # flows deleted since the loop last looked (drained by it)
        # Dead letters (controller/dead_letters.py): redrives by UID, and each flow's last review as
        # the flow's status.deadLetters, written by the executor with the flow's next plan.
        self.redrives: dict[str, RedriveRecord] = {}
        self.redrives_seeded = False
        self._gone_redrives = _Tombstones()
        self.deleted_redrives: list[RedriveRecord] = []  # drained by the dead-letter controller
        self.reviews: dict[str, dict[str, Any]] = {}  # flow UID -> status.deadLetters
        # The flows with dead letters to reach (domain/redrive.route_of), kept as flows come and go:
        # the dead-letter controller looks at these every second, not at every flow.
        self.dead_letter_flows: dict[str, None] = {}  # flow UIDs, in the order they came
        self.redrive_wakeup = asyncio.Event()

    def check_thread(self) -> None:
        """Every mutation runs on one thread: the first one that touched the store."""
        ident = threading.get_ident()
        if self._thread is None:
            self._thread = ident
        elif self._thread != ident:
            raise RuntimeError("the store was changed from a thread other than the event loop's")

    # -- seeded by a LIST at startup, resynced by a LIST now and then, fed by watch events in between
    def seed(self, flows: Listing, targets: Mapping[ScaleTargetKind, Listing]) -> None:
        """The startup LIST: fills in what the watches have not delivered yet, so the first pass sees
        every scale target (a restarted operator would otherwise take a flow's target for missing)."""
        self.resync(flows, targets)
        self.seeded = True

    def listed_flow(self, body: dict[str, Any]) -> ListedFlow:
        """What a listing keeps of a flow (the gateway's `keep`): pure, so it runs in the listing's
        thread, page by page, and the bodies of ten thousand flows are never held at once."""
        return ListedFlow(uid_of(body), flow_from_body(body) if self._serves(body) else None)

    def resync(self, flows: Listing, targets: Mapping[ScaleTargetKind, Listing]) -> None:
        """Applies a fresh LIST. Objects the watches already delivered are newer and kept; objects they
        saw deleted stay deleted; and what the store holds at a version the list has seen, but the list
        does not hold, was deleted while a watch was down (kopf's re-list sends no DELETED for it).
        Items are bodies, or what the listing kept of them: listed_flow and target_from_body."""
        self.check_thread()
        for kind, listing in targets.items():
            listed = set()
            for item in listing.items:
                record = item if isinstance(item, TargetRecord) else target_from_body(item, kind)
                listed.add(record.key)
                known = self.targets.get(record.key)
                if record.uid not in self._gone_targets and (known is None or known.uid != record.uid):
                    self.targets[record.key] = record  # new, or re-created under the same name
                    self._wake_claimants(record.key)
            for key, record in list(self.targets.items()):
                if record.target_kind == kind and key not in listed and _listed_after(record.namespace, record.resource_version, listing.versions):
                    self.target_gone(key)
        listed_flows = set()
        for item in flows.items:
            listed_flow = item if isinstance(item, ListedFlow) else self.listed_flow(item)
            uid, record = listed_flow.uid, listed_flow.record
            listed_flows.add(uid)
            if record is None:
                self.flow_released(uid)  # another shard's flow
            elif uid not in self._gone_flows and uid not in self.flows:
                self._put_flow(record)
                self.mark_due(uid)
        for uid, record in list(self.flows.items()):
            if uid not in listed_flows and _listed_after(record.namespace, record.resource_version, flows.versions):
                self.flow_gone(uid)

    def flow_gone(self, uid: str) -> None:
        """The flow was deleted (a DELETED event, a LIST without it, a 404 on a write)."""
        self._gone_flows.add(uid)
        removed = self._drop_flow(uid)
        if removed is not None:
            self.deleted.append(removed)
            del self.deleted[:-DELETED_KEPT]
            self.wakeup.set()

    def flow_released(self, uid: str) -> None:
        """The flow no longer matches this replica's selector: forgotten here, not deleted (no
        tombstone, no deletion report), so it comes back if its labels match again."""
        self._drop_flow(uid)

    def _serves(self, body: dict[str, Any]) -> bool:
        return self.selector.matches((body.get("metadata") or {}).get("labels"))

    def target_gone(self, key: str) -> None:
        """The scale target was deleted (a LIST without it, a 404 on its /scale)."""
        record = self.targets.pop(key, None)
        if record is not None:
            self._gone_targets.add(record.uid)
            self._wake_claimants(key)

    # -- fed by watch events
    def flow_event(self, event_type: str, body: dict[str, Any]) -> None:
        self.check_thread()
        uid = uid_of(body)
        if event_type != "DELETED" and not self._serves(body):
            self.flow_released(uid)  # another shard's flow: not even parsed
            return
        previous = self.flows.get(uid)
        record = flow_from_body(body, previous)
        if event_type == "DELETED":
            self.flow_gone(record.uid)
            return
        if record.uid in self._gone_flows:
            return
        if previous is not None and not newer(record.resource_version, previous.resource_version):
            return  # older than what a write response already told us
        self._put_flow(record)
        # Status-only updates (our own writes coming back) do not make a flow due.
        if previous is None or previous.generation != record.generation or previous.annotations != record.annotations:
            self.mark_due(record.uid)

    def redrive_event(self, event_type: str, body: dict[str, Any]) -> None:
        self.check_thread()
        record = redrive_from_body(body)
        if event_type == "DELETED":
            self._gone_redrives.add(record.uid)
            gone = self.redrives.pop(record.uid, None)
            self.deleted_redrives.append(gone or record)
            del self.deleted_redrives[:-DELETED_KEPT]
        elif record.uid not in self._gone_redrives:
            previous = self.redrives.get(record.uid)
            if previous is not None and not newer(record.resource_version, previous.resource_version):
                return
            self.redrives[record.uid] = record
        self.redrive_wakeup.set()

    def seed_redrives(self, listing: Listing) -> None:
        """The startup LIST of redrives: until it is in, no cutoff marker may be taken for an orphan."""
        self.check_thread()
        for body in listing.items:
            uid = (body.get("metadata") or {}).get("uid", "")
            if uid not in self.redrives and uid not in self._gone_redrives:
                self.redrives[uid] = redrive_from_body(body)
        self.redrives_seeded = True

    def redrive_written(self, uid: str, body: dict[str, Any]) -> None:
        self.check_thread()
        if uid in self.redrives:
            record = redrive_from_body(body)
            if newer(record.resource_version, self.redrives[uid].resource_version):
                self.redrives[uid] = record

    def redrives_of(self, flow: FlowRecord) -> list[RedriveRecord]:
        return [r for r in self.redrives.values() if r.namespace == flow.namespace and r.spec is not None and r.spec.flow_ref.name == flow.name]

    def target_event(self, kind: ScaleTargetKind, event_type: str, body: dict[str, Any]) -> None:
        self.check_thread()
        record = target_from_body(body, kind)
        previous = self.targets.get(record.key)
        if event_type == "DELETED":
            self._gone_targets.add(record.uid)
            if previous is not None and previous.uid in (record.uid, ""):
                del self.targets[record.key]
        else:
            if record.uid in self._gone_targets:
                return
            if previous is not None and previous.uid == record.uid and not newer(record.resource_version, previous.resource_version):
                return
            self.targets[record.key] = record
        if previous != record or event_type == "DELETED":
            for uid in self._by_target.get(record.key, ()):
                self.mark_due(uid)

    # -- fed by the executor with what the API server answered
    def status_written(self, uid: str, body: dict[str, Any]) -> None:
        self.check_thread()
        if uid not in self.flows:
            return  # deleted meanwhile: never brought back by our own write
        record = flow_from_body(body, self.flows[uid])
        if newer(record.resource_version, self.flows[uid].resource_version):
            self._put_flow(record)

    def scale_written(self, key: str, replicas: int, resource_version: str) -> None:
        self.check_thread()
        current = self.targets.get(key)
        if current is not None and newer(resource_version, current.resource_version):
            self.targets[key] = replace(current, spec_replicas=replicas, resource_version=resource_version, replicas_manager=FIELD_MANAGER)

    # -- lookups
    def target_of(self, flow: FlowRecord) -> TargetRecord | None:
        return None if flow.target_key is None else self.targets.get(flow.target_key)

    def owner_of(self, flow: FlowRecord) -> FlowRecord | None:
        """The flow that owns this flow's scale target (the oldest claim), possibly itself."""
        if flow.target_key is None:
            return None
        claimants = self._by_target.get(flow.target_key, ())
        if len(claimants) == 1:  # the usual case, asked for every flow of every pass
            return self.flows[next(iter(claimants))]
        return ownership.owner(self.flows[uid] for uid in claimants)

    def flows_of_target(self, key: str) -> list[FlowRecord]:
        return [self.flows[uid] for uid in self._by_target.get(key, ())]

    # -- scheduling (monotonic clock)
    def mark_due(self, uid: str, at: float | None = None) -> None:
        if uid not in self.flows:
            return  # gone: never scheduled again
        self.schedule.mark_due(uid, self._clock() if at is None else at)
        self.wakeup.set()

    def postpone(self, uid: str, at: float) -> None:
        """Due at `at`, later or earlier; a change of the flow or its target still makes it due at once."""
        if uid in self.flows:
            self.schedule.postpone(uid, at)

    def retry_at(self, uid: str, at: float) -> None:
        if uid in self.flows:
            self.schedule.retry_at(uid, at)

    def take_due(self, now: float) -> list[FlowRecord]:
        uids = self.schedule.take_due(now, self._interval_of)
        return [self.flows[uid] for uid in uids if uid in self.flows]

    @property
    def due_by_event(self) -> frozenset[str]:
        """Of the flows the last take_due returned, those a watch event (or a write retry) made due
        before their interval came round."""
        return self.schedule.by_event

    def seconds_until_next(self, now: float) -> float | None:
        return self.schedule.seconds_until_next(now)

    def _interval_of(self, uid: str) -> float:
        flow = self.flows.get(uid)
        return to_seconds(flow.spec.scaling.poll_interval) if flow is not None and flow.spec is not None else 60.0

    # -- index upkeep
    def _put_flow(self, record: FlowRecord) -> None:
        previous = self.flows.get(record.uid)
        if previous is not None and previous.target_key != record.target_key:
            self._unindex(previous)
            self._wake_claimants(previous.target_key)  # its old target may have a new owner now
        self.flows[record.uid] = record
        if route_of(record) is None:
            self.dead_letter_flows.pop(record.uid, None)
        else:
            self.dead_letter_flows[record.uid] = None
        if record.target_key is not None:
            self._by_target.setdefault(record.target_key, set()).add(record.uid)

    def _drop_flow(self, uid: str) -> FlowRecord | None:
        record = self.flows.pop(uid, None)
        self.dead_letter_flows.pop(uid, None)
        self.schedule.forget(uid)
        self.reviews.pop(uid, None)
        if record is not None:
            self._unindex(record)
            self._wake_claimants(record.target_key)
        return record

    def _unindex(self, record: FlowRecord) -> None:
        if record.target_key is None:
            return
        uids = self._by_target.get(record.target_key)
        if uids is not None:
            uids.discard(record.uid)
            if not uids:
                del self._by_target[record.target_key]

    def _wake_claimants(self, key: str | None) -> None:
        for uid in self._by_target.get(key or "", ()):
            self.mark_due(uid)


def _listed_after(namespace: str, resource_version: str, versions: dict[str | None, str]) -> bool:
    """Whether a LIST of the object's namespace was made at or after its version (integers, as etcd
    revisions are; anything else is never taken for a deletion)."""
    listed = versions.get(None) or versions.get(namespace)
    try:
        return listed is not None and int(resource_version) <= int(listed)
    except ValueError:
        return False
