"""The demo's live terminal view: one status line, rewritten in place on a terminal (plain ANSI, no
curses), and the story's events printed above it. Piped to a file or CI log, it prints a plain line
every few seconds instead.

      time  backlog   dead  desired  ready  phase     severity  drained
     42.0s      620      3        6      4  Scaling   None      [######--------------]  31%

Once a DeadLetterRedrive is applied, its phase ends the line ("redrive Running").
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from examples.demo.timeline import Sample

HEADER = f"{'time':>7}  {'backlog':>7}  {'dead':>5}  {'desired':>7}  {'ready':>5}  {'phase':<8}  {'severity':<8}  drained"
BAR_WIDTH = 20

_RESET = "\x1b[0m"
_CLEAR_LINE = "\r\x1b[2K"
_COLORS = {  # phases and severities, by how worried the viewer should be
    "Running": "\x1b[32m", "None": "\x1b[32m",
    "Scaling": "\x1b[36m", "Pending": "\x1b[2m", "P4": "\x1b[2m",
    "Degraded": "\x1b[33m", "P3": "\x1b[33m",
    "Paused": "\x1b[31m", "Down": "\x1b[31m", "P2": "\x1b[31m", "P1": "\x1b[1;31m",
}


def _number(value: int | None, width: int) -> str:
    return f"{'-' if value is None else value:>{width}}"


def _word(value: str | None, width: int, color: bool) -> str:
    text = f"{value or '-':<{width}}"
    code = _COLORS.get(value or "") if color else None
    return f"{code}{text}{_RESET}" if code else text


def progress_bar(fraction: float | None) -> str:
    if fraction is None:
        return ""
    done = round(max(0.0, min(1.0, fraction)) * BAR_WIDTH)
    return f"[{'#' * done}{'-' * (BAR_WIDTH - done)}] {fraction:4.0%}"


def format_sample(sample: Sample, *, drained: float | None = None, color: bool = False) -> str:
    """One line of the table; `drained` is the share of the peak backlog gone (0..1)."""
    return "  ".join([
        f"{sample.t:>6.1f}s",
        _number(sample.backlog, 7),
        _number(sample.dead_letters, 5),
        _number(sample.desired, 7),
        _number(sample.ready, 5),
        _word(sample.phase, 8, color),
        _word(sample.severity, 8, color),
        progress_bar(drained),
        f"redrive {sample.redrive}" if sample.redrive else "",
    ]).rstrip()


def format_summary(summary: dict[str, Any]) -> str:
    """The summary of timeline.summarize, one figure per line."""
    def value(key: str) -> str:
        v = summary.get(key)
        if v is None:
            return "-"
        if isinstance(v, dict):  # counts by class or reason: "data 320, ..."
            return ", ".join(f"{k} {n}" for k, n in v.items()) or "-"
        return f"{v:.1f} s" if key.endswith("_s") else str(v)

    width = max(len(key) for key in summary)
    return "\n".join(f"  {key.removesuffix('_s').replace('_', ' '):<{width}}  {value(key)}" for key in summary)


class LiveView:
    """Shows samples as they come. On a terminal the status line is rewritten in place; elsewhere a
    line is printed at most every `every` seconds of the timeline."""

    def __init__(self, stream: TextIO = sys.stdout, *, every: float = 5.0, color: bool | None = None) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.color = self.live if color is None else color
        self.every = every
        self._peak_backlog = 0
        self._last_printed: float | None = None
        self._status = ""  # the line on screen, to put back after an event
        self.stream.write(HEADER + "\n")

    def update(self, sample: Sample) -> None:
        if sample.backlog:
            self._peak_backlog = max(self._peak_backlog, sample.backlog)
        drained = None
        if self._peak_backlog and sample.backlog is not None:
            drained = 1 - sample.backlog / self._peak_backlog
        self._status = format_sample(sample, drained=drained, color=self.color)
        if self.live:
            self.stream.write(_CLEAR_LINE + self._status)
        elif self._last_printed is None or sample.t - self._last_printed >= self.every:
            self.stream.write(self._status + "\n")
            self._last_printed = sample.t
        self.stream.flush()

    def event(self, text: str) -> None:
        """A line of the story ("burst of 3000 orders published"), above the status line."""
        if self.live:
            self.stream.write(f"{_CLEAR_LINE}{text}\n{self._status}")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
