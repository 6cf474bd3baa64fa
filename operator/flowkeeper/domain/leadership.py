"""Who may act: leader election over a coordination.k8s.io Lease, the rules without the I/O.

Why a Lease and not kopf peering: kopf peering is priority-based; replicas of one Deployment share a
priority, and kopf then freezes all of them. A Lease elects exactly one of equals, like
kube-controller-manager does, and the standbys keep their watches warm for a fast takeover.

Clock skew between replicas is harmless: a standby never compares the holder's timestamps with its
own clock. It notes, on its own monotonic clock, when it last saw the lease change, and takes over
only after a whole lease duration has passed without a change.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class LeaseRecord:
    """The parts of a Lease that matter; `version` is the resourceVersion used for optimistic writes."""

    holder: str | None
    renew_time: str | None  # RFC 3339 micro time as the API returns it, only compared for change
    duration_seconds: int
    acquire_time: str | None = None
    transitions: int = 0
    version: str | None = None


@dataclass(frozen=True)
class LeaseTiming:
    """A holder renews every `retry` seconds and stops acting when it could not renew for
    `renew_deadline`, which is shorter than the `duration` a standby waits: the old leader has
    stopped before anyone else may start."""

    duration: float = 15.0
    renew_deadline: float = 10.0
    retry: float = 2.0

    @classmethod
    def for_duration(cls, duration: float) -> LeaseTiming:
        return cls(duration=duration, renew_deadline=duration * 2 / 3, retry=max(0.5, duration * 2 / 15))

    def __post_init__(self) -> None:
        if not 0 < self.retry < self.renew_deadline < self.duration:
            raise ValueError("lease timing needs 0 < retry < renew_deadline < duration")


class Move(str, Enum):
    create = "create"  # no Lease yet
    renew = "renew"  # we hold it
    take_over = "take_over"  # free, released, or expired
    wait = "wait"  # somebody else holds it and is alive


@dataclass(frozen=True)
class Observation:
    """What a replica remembers of the Lease between tries: the last record and when (local
    monotonic seconds) it last changed."""

    record: LeaseRecord | None = None
    changed_at: float = 0.0

    def seen(self, record: LeaseRecord | None, now: float) -> Observation:
        if self.record is not None and record is not None and _same_term(self.record, record):
            return self
        return Observation(record, now)


def _same_term(a: LeaseRecord, b: LeaseRecord) -> bool:
    return a.holder == b.holder and a.renew_time == b.renew_time


def next_move(record: LeaseRecord | None, observation: Observation, identity: str, now: float) -> Move:
    if record is None:
        return Move.create
    if record.holder == identity:
        return Move.renew
    if not record.holder:
        return Move.take_over  # released by a leader that shut down cleanly
    expired = now - observation.changed_at >= max(record.duration_seconds, 1)
    return Move.take_over if expired else Move.wait


def claimed(record: LeaseRecord | None, identity: str, duration: float) -> dict:
    """The Lease spec we write to hold the lease; a new holder counts one more transition and gets a
    new acquireTime (None: the writer stamps it now)."""
    previous = record.holder if record else None
    transitions = (record.transitions if record else 0) + (1 if previous not in (None, "", identity) else 0)
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(duration)),
        "leaseTransitions": transitions,
        "acquireTime": record.acquire_time if record and previous == identity else None,
    }


def released(record: LeaseRecord) -> dict:
    """What a leader that shuts down cleanly writes, so a standby need not wait out the duration."""
    return {
        "holderIdentity": None,
        "leaseDurationSeconds": 1,
        "leaseTransitions": record.transitions,
        "acquireTime": record.acquire_time,
    }
