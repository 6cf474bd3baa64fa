"""Leader election for replicas of the operator: exactly one acts, the others keep their caches warm.

The rules live in domain/leadership.py; this runs them against the Lease through the gateway.
`is_leading()` is what the controller asks before every pass and every write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from flowkeeper.domain.errors import FlowkeeperError
from flowkeeper.domain.leadership import LeaseTiming, Move, Observation, claimed, next_move, released
from flowkeeper.observability import metrics

log = logging.getLogger("flowkeeper.leadership")


class AlwaysLeader:
    """One replica, or tests: no election, always act."""

    identity = "standalone"

    def __init__(self) -> None:
        metrics.LEADER.set(1)

    def is_leading(self) -> bool:
        return True

    def leading_until(self) -> float:
        return float("inf")

    def seconds_since_attempt(self) -> float:
        return 0.0


class LeaderElector:
    def __init__(
        self,
        gateway,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gateway = gateway
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self.clock = clock
        self.observation = Observation()
        self.renewed_at: float | None = None  # local time of our last successful write while leading
        self.changed = asyncio.Event()  # set on every gain or loss, so the loop wakes at once
        self.last_attempt = clock()  # when run() last tried the lease: the liveness probe watches it
        metrics.LEADER.set(0)

    def seconds_since_attempt(self) -> float:
        return self.clock() - self.last_attempt

    def is_leading(self) -> bool:
        # Stop acting as soon as renewals have failed for renew_deadline: a standby waits a whole
        # lease duration (longer) before it takes over, so two replicas never act at once.
        return self.renewed_at is not None and self.clock() - self.renewed_at < self.timing.renew_deadline

    def leading_until(self) -> float:
        """When this replica stops acting unless it renews meanwhile (on `clock`, the monotonic clock):
        a long call started now must be done by then."""
        return -float("inf") if self.renewed_at is None else self.renewed_at + self.timing.renew_deadline

    async def run(self, stopped: asyncio.Event) -> None:
        while not stopped.is_set():
            self.last_attempt = self.clock()
            was_leading = self.is_leading()
            try:
                await self.try_once()
            except FlowkeeperError as exc:
                log.warning("lease not updated", extra={"stage": "leader", "reason": exc.reason, "outcome": "retry"})
            except Exception:  # noqa: BLE001 - a dead elector would leave this replica a standby for good
                log.exception("lease not updated", extra={"stage": "leader", "outcome": "retry"})
            self._report(was_leading)
            try:
                await asyncio.wait_for(stopped.wait(), timeout=self.timing.retry)
            except asyncio.TimeoutError:
                pass
        await self.release()

    async def try_once(self) -> Move:
        record = await asyncio.to_thread(self.gateway.read_lease, self.namespace, self.name)
        now = self.clock()
        self.observation = self.observation.seen(record, now)
        move = next_move(record, self.observation, self.identity, now)
        if move is Move.wait:
            self.renewed_at = None
            return move
        spec = claimed(record, self.identity, self.timing.duration)
        version = record.version if record else None
        await asyncio.to_thread(self.gateway.write_lease, self.namespace, self.name, spec, version)
        self.renewed_at = now
        return move

    async def release(self) -> None:
        """A clean shutdown hands the lease back, so a standby takes over within one retry period."""
        if not self.is_leading():
            return
        self.renewed_at = None
        self._report(True)
        try:
            record = await asyncio.to_thread(self.gateway.read_lease, self.namespace, self.name)
            if record is not None and record.holder == self.identity:
                await asyncio.to_thread(self.gateway.write_lease, self.namespace, self.name, released(record), record.version)
                log.info("lease released", extra={"stage": "leader", "outcome": "released"})
        except FlowkeeperError as exc:
            log.warning("lease not released", extra={"stage": "leader", "reason": exc.reason, "outcome": "expires"})

    def _report(self, was_leading: bool) -> None:
        leading = self.is_leading()
        if leading == was_leading:
            return
        metrics.LEADER.set(1 if leading else 0)
        holder = self.observation.record.holder if self.observation.record else None
        log.info(
            "became the leader" if leading else "not the leader any more",
            extra={"stage": "leader", "outcome": "leading" if leading else "standby", "lease": f"{self.namespace}/{self.name}", "holder": holder or ""},
        )
        self.changed.set()
