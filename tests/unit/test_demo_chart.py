"""The demo's recorder, summary, chart and live view, on a synthetic story whose figures are known."""

from __future__ import annotations

import io
from pathlib import Path

from examples.demo.chart import write_chart
from examples.demo.timeline import Timeline, summarize
from examples.demo.view import LiveView, format_summary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def story() -> Timeline:
    """One sample a second: idle at 1 replica; a burst of 600 at t=2; the operator asks for 4 at
    t=5 (3 s after the burst), they are ready at t=7; the backlog peaks at t=6 and is empty at t=12;
    a pause from t=14 to t=17."""
    clock = FakeClock()
    timeline = Timeline(clock=clock)
    backlog = [0, 0, 300, 500, 580, 600, 600, 450, 300, 160, 60, 10, 0, 0, 0, 0, 0, 0, 0]
    desired = [1, 1, 1, 1, 1, 4, 4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 4, 4]
    ready = [1, 1, 1, 1, 1, 1, 3, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 2, 4]
    for second, (b, d, r) in enumerate(zip(backlog, desired, ready, strict=True)):
        clock.now = 100.0 + second
        if second == 2:
            timeline.mark("burst of 600 orders")
        phase = "Paused" if 14 <= second < 17 else ("Scaling" if d != r else "Running")
        timeline.record(backlog=b, dead_letters=second // 3, desired=d, ready=r, phase=phase, severity="None")
    return timeline


def test_the_summary_tells_the_story() -> None:
    summary = summarize(story(), published=600, consumed=590, dead_lettered=6, queued=4)
    assert summary == {
        "time_to_first_scale_up_s": 3.0,
        "time_to_drain_s": 10.0,
        "peak_backlog": 600,
        "peak_desired_replicas": 4,
        "peak_ready_replicas": 4,
        "published": 600,
        "consumed": 590,
        "dead_lettered": 6,
        "queued": 4,
        "lost": 0,
    }


def test_the_summary_says_none_for_what_did_not_happen() -> None:
    timeline = Timeline(clock=FakeClock())
    timeline.record(backlog=0, dead_letters=0, desired=1, ready=1)
    summary = summarize(timeline, published=0, consumed=0, dead_lettered=0)
    assert summary["time_to_first_scale_up_s"] is None and summary["time_to_drain_s"] is None
    assert "lost" not in summary  # unknown without the queue's depth


def test_pauses_are_found_from_the_phase() -> None:
    timeline = story()
    assert timeline.pauses() == [(14.0, 17.0)]
    timeline.record(backlog=0, dead_letters=0, desired=0, ready=0, phase="Paused")
    assert timeline.pauses()[-1] == (timeline.samples[-1].t, None)


def test_the_chart_is_a_png(tmp_path: Path) -> None:
    path = write_chart(story(), tmp_path / "demo.png", max_replicas=20)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # the IHDR chunk
    assert (width, height) == (1000, 750)
    assert len(data) > 20_000  # drawn, not an empty canvas


def test_the_chart_copes_with_gaps_and_an_empty_timeline(tmp_path: Path) -> None:
    timeline = Timeline(clock=FakeClock())
    write_chart(timeline, tmp_path / "empty.png")
    timeline.record(backlog=None, dead_letters=None, desired=None, ready=None)  # nothing could be read
    assert write_chart(timeline, tmp_path / "gaps.png").read_bytes()[:8] == PNG_SIGNATURE


def redrive_story() -> Timeline:
    """After the story: 30 dead letters; a redrive applied at t=20, blocked until t=22, moving from
    t=22, verifying from t=24, succeeded at t=26, leaving 2 dead letters."""
    timeline = story()
    clock = timeline.clock
    dead = [30, 30, 30, 20, 10, 2, 2, 2, 2]
    phases = [None, "Blocked", "Blocked", "Running", "Running", "Verifying", "Verifying", "Succeeded", "Succeeded"]
    for n, (d, phase) in enumerate(zip(dead, phases, strict=True)):
        clock.now = 119.0 + n
        timeline.record(backlog=0, dead_letters=d, desired=1, ready=1, phase="Degraded", severity="P3", redrive=phase)
    return timeline


def test_the_redrive_is_found_from_its_phase() -> None:
    assert story().redrives() == []
    timeline = redrive_story()
    assert timeline.redrives() == [(22.0, 26.0)]  # Running and Verifying; not Blocked, not Succeeded
    assert timeline.pauses() == [(14.0, 17.0)]


def test_the_chart_draws_the_redrive(tmp_path: Path) -> None:
    assert write_chart(redrive_story(), tmp_path / "redrive.png").read_bytes()[:8] == PNG_SIGNATURE


def test_the_view_shows_the_redrive_phase_once_there_is_one() -> None:
    out = io.StringIO()
    view = LiveView(out, every=1.0)
    for sample in redrive_story().samples[-9:]:
        view.update(sample)
    lines = out.getvalue().splitlines()[1:]
    assert not lines[0].endswith("Blocked") and "redrive" not in lines[0]
    assert lines[1].endswith("redrive Blocked") and lines[3].endswith("redrive Running")


def test_the_view_prints_lines_when_not_on_a_terminal() -> None:
    out = io.StringIO()
    view = LiveView(out, every=5.0)
    for sample in story().samples:
        view.update(sample)
    view.event("configuration error deployed")
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:4] == ["time", "backlog", "dead", "desired"]
    assert len(lines) == 1 + 4 + 1  # the header, t = 0, 5, 10, 15, the event
    assert "\x1b" not in out.getvalue()  # no colours in a log file
    assert lines[3].split()[:6] == ["10.0s", "60", "3", "4", "4", "Running"]
    assert "90%" in lines[3]  # 540 of the peak backlog of 600 drained


def test_the_summary_reads_as_text() -> None:
    summary = summarize(story(), published=600, consumed=590, dead_lettered=6)
    summary |= {"dead_lettered_by_reason": {"invalid deliveryDate": 104, "customerId missing": 54}, "redrive_phase": "Succeeded"}
    text = format_summary(summary)
    assert "time to first scale up" in text and "3.0 s" in text and "published" in text
    assert "dead lettered by reason" in text and "invalid deliveryDate 104, customerId missing 54" in text
    assert text.splitlines()[-1].split() == ["redrive", "phase", "Succeeded"]
