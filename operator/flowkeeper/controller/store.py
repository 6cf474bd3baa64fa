"""The operator's in-memory view of the cluster, fed by watch events (no API reads in a pass).

It also schedules: each flow is due every pollInterval, and at once when its spec, its status
written by someone else, or its consumer Deployment changes.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from typing import Any

from flowkeeper.api.durations import to_seconds
from flowkeeper.domain.flow import DeploymentRecord, FlowRecord, deployment_from_body, flow_from_body


class ClusterStore:
    def __init__(self, clock) -> None:
        self._clock = clock
        self.flows: dict[str, FlowRecord] = {}
        self.deployments: dict[str, DeploymentRecord] = {}
        self._due: dict[str, float] = {}  # flow key -> next time it is due
        self._heap: list[tuple[float, str]] = []
        self.wakeup = asyncio.Event()
        self.seeded = False  # no pass runs before the first LIST is in

    # -- seeded once by a LIST, then fed by watch events
    def seed(self, flows: list[dict[str, Any]], deployments: list[dict[str, Any]]) -> None:
        """Fills in what the watches have not delivered yet, so the first pass sees every Deployment:
        without it a restarted operator would take a flow's Deployment for missing. Objects the
        watches already delivered are newer and kept."""
        for body in deployments:
            record = deployment_from_body(body)
            self.deployments.setdefault(record.key, record)
        for body in flows:
            record = flow_from_body(body)
            if record.key not in self.flows:
                self.flows[record.key] = record
                self.mark_due(record.key)
        self.seeded = True

    # -- fed by watch events
    def flow_event(self, event_type: str, body: dict[str, Any]) -> None:
        record = flow_from_body(body)
        if event_type == "DELETED":
            self.flows.pop(record.key, None)
            self._due.pop(record.key, None)
            return
        previous = self.flows.get(record.key)
        self.flows[record.key] = record
        if previous is None or previous.generation != record.generation or previous.annotations != record.annotations:
            self.mark_due(record.key)

    def deployment_event(self, event_type: str, body: dict[str, Any]) -> None:
        record = deployment_from_body(body)
        previous = self.deployments.get(record.key)
        if event_type == "DELETED":
            self.deployments.pop(record.key, None)
        else:
            self.deployments[record.key] = record
        if previous != record or event_type == "DELETED":
            for flow in self.flows_of_deployment(record.namespace, record.name):
                self.mark_due(flow.key)

    def flows_of_deployment(self, namespace: str, name: str) -> list[FlowRecord]:
        return [
            f
            for f in self.flows.values()
            if f.namespace == namespace and f.spec is not None and f.spec.consumer.deployment == name
        ]

    def deployment_of(self, flow: FlowRecord) -> DeploymentRecord | None:
        if flow.spec is None:
            return None
        return self.deployments.get(f"{flow.namespace}/{flow.spec.consumer.deployment}")

    # -- scheduling
    def mark_due(self, key: str, at: float | None = None) -> None:
        when = self._clock() if at is None else at
        if self._due.get(key, float("inf")) <= when:
            return
        self._due[key] = when
        heapq.heappush(self._heap, (when, key))
        self.wakeup.set()

    def reschedule(self, key: str, at: float) -> None:
        """Moves a flow's next pass to `at`, later or earlier (mark_due only ever brings it forward)."""
        if key in self.flows:
            self._due[key] = at
            heapq.heappush(self._heap, (at, key))

    def take_due(self, now: float) -> list[FlowRecord]:
        """Flows whose time has come; each is scheduled again after its own poll interval."""
        due: list[FlowRecord] = []
        while self._heap and self._heap[0][0] <= now:
            when, key = heapq.heappop(self._heap)
            if self._due.get(key) != when or key not in self.flows:
                continue  # superseded by an earlier mark, or the flow is gone
            del self._due[key]
            due.append(self.flows[key])
        for flow in due:
            interval = to_seconds(flow.spec.scaling.poll_interval) if flow.spec else 60.0
            # Next due on the interval's grid, not `now + interval`: flows that share an interval then
            # fall due together and one batched Prometheus pass serves them all.
            self.mark_due(flow.key, (math.floor(now / interval) + 1) * interval)
        return due

    def seconds_until_next(self, now: float) -> float | None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return max(0.0, self._heap[0][0] - now) if self._heap else None
