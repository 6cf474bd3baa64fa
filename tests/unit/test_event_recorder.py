"""Events aggregated the way client-go's recorder does: repeats counted, similar ones combined, a
flapping object rate-limited."""

from __future__ import annotations

import asyncio
import threading

from flowkeeper.controller import events as ev
from tests.unit.test_executor import MemoryApi
from tests.unit.test_store import Clock

REF = {"apiVersion": "flowkeeper.io/v1alpha1", "kind": "IntegrationFlow", "name": "f", "namespace": "ns", "uid": "u1"}


def record(recorder, message: str, reason: str = "Scaled", ref=REF) -> bool:
    return asyncio.run(recorder.record(ref, "Normal", reason, message))


def test_the_same_event_within_the_window_is_a_count() -> None:
    api, clock = MemoryApi(), Clock()
    recorder = ev.EventRecorder(api, "i", clock=clock)
    assert record(recorder, "replicas 1 -> 2") and record(recorder, "replicas 1 -> 2")
    assert len(api.events) == 1 and api.patched_events[0]["count"] == 2
    clock.now += ev.WINDOW_SECONDS + 1
    record(recorder, "replicas 1 -> 2")
    assert len(api.events) == 2  # a new Event after the window


def test_many_different_messages_of_one_reason_are_combined() -> None:
    api, clock = MemoryApi(), Clock()
    recorder = ev.EventRecorder(api, "i", clock=clock)
    for i in range(ev.AGGREGATE_AFTER + 5):
        record(recorder, f"replicas {i} -> {i + 1}")
        clock.now += 1
    assert len(api.events) == ev.AGGREGATE_AFTER + 1
    assert api.events[-1]["message"].startswith(ev.COMBINED)
    assert api.patched_events and all(p["message"].startswith(ev.COMBINED) for p in api.patched_events)


def test_a_flapping_object_is_rate_limited_and_others_are_not() -> None:
    api, clock = MemoryApi(), Clock()
    recorder = ev.EventRecorder(api, "i", clock=clock)
    sent = sum(record(recorder, f"m{i % 2}", reason=f"R{i}") for i in range(100))
    assert sent == ev.SPAM_BURST
    assert record(recorder, "other", ref={**REF, "uid": "u2", "name": "g"})
    clock.now += ev.SPAM_REFILL_SECONDS
    assert record(recorder, "after a while", reason="Later")


def test_what_the_recorder_remembers_stays_bounded() -> None:
    api, clock = MemoryApi(), Clock()
    recorder = ev.EventRecorder(api, "i", clock=clock)
    for i in range(500):
        record(recorder, f"replicas {i} -> {i + 1}")
        clock.now += 1
    assert len(recorder._messages[("u1", "Normal", "Scaled")]) <= ev.AGGREGATE_AFTER + 1


def test_a_repeat_of_an_event_that_is_gone_posts_a_new_one() -> None:
    from flowkeeper.domain.errors import ConfigurationError

    api, clock = MemoryApi(), Clock()
    recorder = ev.EventRecorder(api, "i", clock=clock)
    record(recorder, "paused")

    def gone(*args):
        raise ConfigurationError("not found", reason="NotFound")

    api.patch_event = gone
    assert record(recorder, "paused")
    assert len(api.events) == 2


def test_events_that_hang_do_not_hold_up_work_on_the_shared_default_pool() -> None:
    """The signals pass, the Lease and the LISTs run on asyncio's default pool (at most 32 threads);
    Events that hang (an API server struggling under a storm of them) stay on the recorder's own."""
    release = threading.Event()

    class Hanging(MemoryApi):
        def create_event(self, event):
            release.wait(10)
            return super().create_event(event)

    recorder = ev.EventRecorder(Hanging(), "i", clock=Clock())

    async def scenario() -> None:
        refs = [{**REF, "uid": f"u{i}", "name": f"f{i}"} for i in range(40)]
        posts = [asyncio.create_task(recorder.record(ref, "Warning", "NoReadyConsumers", "0 of 1 ready")) for ref in refs]
        await asyncio.sleep(0.1)
        try:
            assert await asyncio.wait_for(asyncio.to_thread(lambda: "answered"), timeout=2) == "answered"
        finally:
            release.set()
        assert all(await asyncio.gather(*posts))

    asyncio.run(scenario())
