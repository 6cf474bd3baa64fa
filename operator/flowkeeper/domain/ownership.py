"""Who may write a scale target's replicas (pure, no I/O; the clock is an argument).

Two rules keep Flowkeeper from fighting:
- one flow per scale target: the oldest claim wins (status.scaleTarget.since, the flow's creation for
  the target it was created with, then namespace/name, then UID, so every replica of the operator picks
  the same owner); the others are told who owns it and never write;
- another writer of spec.replicas (kubectl scale, an HPA, a KEDA ScaledObject, Argo CD self-heal) is
  detected from the target's managedFields and reported, not reverted at once: Flowkeeper holds off,
  then corrects once; a writer that changes the count again doubles the hold-off, up to a cap. So a
  controller that keeps writing gets at most a handful of corrections an hour, never a tug of war.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flowkeeper.domain.flow import FIELD_MANAGER, TargetRecord, FlowRecord

FIRST_HOLD_OFF = 300.0  # seconds without writes after a foreign write is first seen
MAX_HOLD_OFF = 3600.0


def owner(claims: Iterable[FlowRecord]) -> FlowRecord | None:
    """The flow that owns a target, among all flows that name it: the oldest claim (a flow re-pointed
    at a target by mistake does not take it from its owner, however old the flow)."""
    return min(claims, key=lambda f: (f.claim_since, f.namespace, f.name, f.uid), default=None)


@dataclass(frozen=True)
class ConflictMemory:
    """Per flow, in the operator's memory: the hold-off after foreign writes."""

    hold_until: float | None = None  # monotonic seconds; no replica writes before then
    hold_off: float = 0.0  # the current hold-off length; doubles while the foreign writer persists
    manager: str | None = None  # who wrote last


@dataclass(frozen=True)
class ConflictVerdict:
    holding: bool  # write no replicas this pass
    manager: str | None  # the foreign writer, when one is being reported
    memory: ConflictMemory


def foreign_write(flow: FlowRecord, target: TargetRecord) -> str | None:
    """The field manager that changed spec.replicas away from what Flowkeeper last decided, or None.

    After every pass spec.replicas equals status.desiredReplicas (Flowkeeper wrote it, or it already
    was). A difference set by a manager other than Flowkeeper is somebody else's write. Read from the
    status, so it holds across restarts. While paused (desiredReplicas 0) only a write made after the
    pause began counts: until Flowkeeper's own scale to 0 lands (or if it crashed before it), the count
    is still the one the Deployment's creator or last writer left."""
    desired = flow.status.get("desiredReplicas")
    manager = target.replicas_manager
    if not isinstance(desired, int) or target.spec_replicas == desired or manager in (None, FIELD_MANAGER):
        return None
    pause = flow.status.get("pause")
    if pause and desired == 0 and not (target.replicas_managed_at and target.replicas_managed_at > str(pause.get("since") or "")):
        return None
    return manager


def judge(flow: FlowRecord, target: TargetRecord, memory: ConflictMemory, now: float, first_hold_off: float = FIRST_HOLD_OFF) -> ConflictVerdict:
    manager = foreign_write(flow, target)
    if manager is not None:
        if memory.hold_until is not None and now < memory.hold_until:
            # Changed again while we hold off: keep holding (the count is theirs for now).
            return ConflictVerdict(True, manager, memory)
        hold_off = min(MAX_HOLD_OFF, memory.hold_off * 2) if memory.hold_off else first_hold_off
        return ConflictVerdict(True, manager, ConflictMemory(now + hold_off, hold_off, manager))
    if memory.hold_until is not None and now < memory.hold_until:
        return ConflictVerdict(True, memory.manager, memory)
    # Hold-off over: correct once. The doubled length is kept for a while in case they write again.
    return ConflictVerdict(False, None, ConflictMemory(None, memory.hold_off, None))
