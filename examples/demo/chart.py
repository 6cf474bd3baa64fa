"""The demo's chart: backlog above, dead letters in the middle (on their own scale: a few hundred
next to a backlog of thousands), replicas (desired, ready) below, on one time axis, with the
stretches the flow was paused shaded red, those a redrive was moving dead letters shaded cyan, and
the story's marks drawn as vertical lines.

Drawn on a bare matplotlib Figure (the Agg canvas, no pyplot): no display needed, no global state.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from examples.demo.timeline import Timeline

PAUSE_COLOR = "tab:red"
REDRIVE_COLOR = "tab:cyan"


def write_chart(
    timeline: Timeline, path: Path, *, title: str = "Flowkeeper: backlog, dead letters and replicas", max_replicas: int | None = None
) -> Path:
    """Writes the chart as a PNG to `path` and returns it."""
    samples = timeline.samples
    t = [s.t for s in samples]
    figure = Figure(figsize=(10, 7.5), dpi=100, layout="constrained")
    backlog_axes, dead_axes, replica_axes = figure.subplots(3, 1, sharex=True, height_ratios=(3, 2, 2))
    figure.suptitle(title)

    # None (not read) becomes a gap in the line, not a drop to 0.
    def series(values: list[int | None]) -> list[float]:
        return [float("nan") if v is None else v for v in values]

    backlog_axes.plot(t, series([s.backlog for s in samples]), color="tab:blue", label="backlog")
    backlog_axes.set_ylabel("messages")
    backlog_axes.set_ylim(bottom=0)
    dead_axes.plot(t, series([s.dead_letters for s in samples]), color="tab:orange", label="dead letters")
    dead_axes.set_ylabel("dead letters")
    dead_axes.set_ylim(bottom=0)

    # Replicas change in steps: draw them as steps, held until the next sample.
    replica_axes.step(t, series([s.desired for s in samples]), where="post", color="tab:purple", linestyle="--", label="desired")
    replica_axes.step(t, series([s.ready for s in samples]), where="post", color="tab:green", label="ready")
    if max_replicas is not None:
        replica_axes.axhline(max_replicas, color="grey", linestyle=":", label=f"max ({max_replicas})")
    replica_axes.set_ylabel("replicas")
    replica_axes.set_xlabel("seconds")
    replica_axes.set_ylim(bottom=0)
    replica_axes.yaxis.get_major_locator().set_params(integer=True)

    every = (backlog_axes, dead_axes, replica_axes)
    end = t[-1] if t else 0.0
    for number, (paused, resumed) in enumerate(timeline.pauses()):
        for axes in every:
            axes.axvspan(paused, end if resumed is None else resumed, color=PAUSE_COLOR, alpha=0.12,
                         label="paused" if number == 0 and axes is backlog_axes else None)
    for number, (started, ended) in enumerate(timeline.redrives()):
        for axes in every:
            axes.axvspan(started, end if ended is None else ended, color=REDRIVE_COLOR, alpha=0.12,
                         label="redrive" if number == 0 and axes is dead_axes else None)
    for mark in timeline.marks:
        for axes in every:
            axes.axvline(mark.t, color="grey", linewidth=0.8)
        backlog_axes.annotate(mark.label, (mark.t, 1), xycoords=("data", "axes fraction"), rotation=90,
                              xytext=(3, -3), textcoords="offset points", va="top", fontsize=8, color="dimgrey")

    for axes in every:
        axes.grid(alpha=0.3)
        axes.legend(loc="upper right", fontsize=8)
    figure.savefig(path, format="png")
    return path
