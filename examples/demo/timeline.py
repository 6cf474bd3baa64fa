"""What the demo saw over time: the samples its loop records, which the live view prints and the chart
draws, and the summary figures computed from them. Pure data: no I/O besides `write_json`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PAUSED = "Paused"
REDRIVING = ("Running", "Verifying")  # a DeadLetterRedrive's phases while it moves or watches


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the timeline started
    backlog: int | None  # messages waiting in the flow's queue; None: could not be read
    dead_letters: int | None  # messages in its dead-letter queue
    desired: int | None  # the flow's status.desiredReplicas
    ready: int | None  # the Deployment's ready replicas (the consumers running)
    phase: str | None = None  # the flow's status.phase
    severity: str | None = None  # the flow's status.severity
    redrive: str | None = None  # the phase of the demo's DeadLetterRedrive; None: none applied yet


@dataclass(frozen=True)
class Mark:
    """A moment the story points at: "burst published", "configuration error deployed", ..."""

    t: float
    label: str


@dataclass
class Timeline:
    clock: Callable[[], float] = time.monotonic
    samples: list[Sample] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def now(self) -> float:
        return self.clock() - self.started

    def record(
        self,
        *,
        backlog: int | None,
        dead_letters: int | None,
        desired: int | None,
        ready: int | None,
        phase: str | None = None,
        severity: str | None = None,
        redrive: str | None = None,
    ) -> Sample:
        sample = Sample(self.now(), backlog, dead_letters, desired, ready, phase, severity, redrive)
        self.samples.append(sample)
        return sample

    def mark(self, label: str) -> Mark:
        mark = Mark(self.now(), label)
        self.marks.append(mark)
        return mark

    def pauses(self) -> list[tuple[float, float | None]]:
        """(paused at, resumed at) for each stretch in phase Paused; resumed at is None while it lasts."""
        return self._spans(lambda sample: sample.phase == PAUSED)

    def redrives(self) -> list[tuple[float, float | None]]:
        """(started, ended) for each stretch a redrive was moving dead letters or watching for
        re-failures; ended is None while it lasts."""
        return self._spans(lambda sample: sample.redrive in REDRIVING)

    def _spans(self, inside: Callable[[Sample], bool]) -> list[tuple[float, float | None]]:
        spans: list[tuple[float, float | None]] = []
        since: float | None = None
        for sample in self.samples:
            if inside(sample) and since is None:
                since = sample.t
            elif not inside(sample) and since is not None:
                spans.append((since, sample.t))
                since = None
        if since is not None:
            spans.append((since, None))
        return spans

    def write_json(self, path: Path) -> None:
        """The raw samples and marks, to keep next to the chart (a CI artefact, a bug report)."""
        data = {"samples": [asdict(s) for s in self.samples], "marks": [asdict(m) for m in self.marks]}
        path.write_text(json.dumps(data, indent=1))


def summarize(
    timeline: Timeline,
    *,
    published: int,
    consumed: int,
    dead_lettered: int,
    queued: int | None = None,
    start: float | None = None,
) -> dict[str, Any]:
    """The demo's figures. Times are seconds from `start` (default: the first sample with a backlog,
    i.e. when the burst arrived); a figure that did not happen (no scale-up, never drained) is None.

    - time_to_first_scale_up_s: until desired replicas first rose above what they were at the start;
    - time_to_drain_s: until the queue was first empty after its peak;
    - lost: published - consumed - dead-lettered - still queued (only with `queued`): must be 0.
      `dead_lettered` is what the dead-letter queue holds at the end: an order redriven from there
      and then handled counts as consumed, not twice.
    """
    samples = timeline.samples
    summary: dict[str, Any] = {
        "time_to_first_scale_up_s": None,
        "time_to_drain_s": None,
        "peak_backlog": max((s.backlog for s in samples if s.backlog is not None), default=None),
        "peak_desired_replicas": max((s.desired for s in samples if s.desired is not None), default=None),
        "peak_ready_replicas": max((s.ready for s in samples if s.ready is not None), default=None),
        "published": published,
        "consumed": consumed,
        "dead_lettered": dead_lettered,
    }
    if queued is not None:
        summary["queued"] = queued
        summary["lost"] = published - consumed - dead_lettered - queued
    if start is None:
        start = next((s.t for s in samples if s.backlog), None)
    if start is None:
        return summary

    initial = next((s.desired for s in samples if s.desired is not None), None)
    if initial is not None:
        scaled = next((s.t for s in samples if s.desired is not None and s.desired > initial), None)
        # An operator quicker than the first sample of the backlog has scaled "at once".
        summary["time_to_first_scale_up_s"] = None if scaled is None else round(max(0.0, scaled - start), 3)

    peak = summary["peak_backlog"]
    peak_at = next(s.t for s in samples if s.backlog == peak) if peak else None
    if peak_at is not None:
        drained = next((s.t for s in samples if s.t > peak_at and s.backlog == 0), None)
        summary["time_to_drain_s"] = None if drained is None else round(drained - start, 3)
    return summary
