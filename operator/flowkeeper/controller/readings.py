"""The last signals read for each flow, and when a pass may plan with them instead of asking
Prometheus again.

A flow made due by a watch event (its Deployment's status moved, an annotation was set) is planned
again at once, but its signals were read less than one poll interval ago: asking again would run
every preset query over every flow's series for a handful of flows. The reading is reused only while
nothing it was judged against has changed: the flow's generation (its queries), and the target's
replicas, ready replicas and pod template (the CPU and drain targets scale those counts; a new
template is a new configuration). A flow due on its own interval is always read afresh.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowkeeper.api.durations import to_seconds
from flowkeeper.domain.flow import FlowRecord, TargetRecord
from flowkeeper.domain.signals import FlowSignals


@dataclass(frozen=True, slots=True)
class Reading:
    signals: FlowSignals
    read_at: float  # monotonic
    generation: int
    replicas: int
    ready_replicas: int
    template_hash: str

    @classmethod
    def of(cls, signals: FlowSignals, flow: FlowRecord, target: TargetRecord, read_at: float) -> Reading:
        return cls(signals, read_at, flow.generation, target.spec_replicas, target.ready_replicas, target.template_hash)

    def still_serves(self, flow: FlowRecord, target: TargetRecord | None, now: float) -> bool:
        if target is None or flow.spec is None:
            return False
        return (
            now - self.read_at < to_seconds(flow.spec.scaling.poll_interval)
            and self.generation == flow.generation
            and self.replicas == target.spec_replicas
            and self.ready_replicas == target.ready_replicas
            and self.template_hash == target.template_hash
        )
