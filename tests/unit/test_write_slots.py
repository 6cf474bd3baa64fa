"""Write slots: never more holders than slots, urgent waiters before routine ones, arrival order
within each kind, and a cancelled waiter loses no slot."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from flowkeeper.controller.write_slots import PrioritySlots


async def _holder(slots: PrioritySlots, name: str, urgent: bool, order: list[str], release: asyncio.Event) -> None:
    async with slots.slot(urgent=urgent):
        order.append(name)
        await release.wait()


def test_urgent_waiters_go_before_routine_ones_and_each_kind_in_arrival_order() -> None:
    async def run() -> list[str]:
        slots, order, release = PrioritySlots(1), [], asyncio.Event()
        first = asyncio.create_task(_holder(slots, "holder", False, order, release))
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(_holder(slots, name, name.startswith("u"), order, release)) for name in ("r1", "u1", "r2", "u2")]
        await asyncio.sleep(0)
        assert order == ["holder"]  # one slot: the others wait
        release.set()
        await asyncio.gather(first, *waiters)
        return order

    assert asyncio.run(run()) == ["holder", "u1", "u2", "r1", "r2"]


def test_a_cancelled_waiter_loses_no_slot() -> None:
    async def run() -> list[str]:
        slots, order, release = PrioritySlots(1), [], asyncio.Event()
        holder = asyncio.create_task(_holder(slots, "holder", False, order, release))
        await asyncio.sleep(0)
        cancelled = asyncio.create_task(_holder(slots, "cancelled", True, order, release))
        later = asyncio.create_task(_holder(slots, "later", False, order, release))
        await asyncio.sleep(0)
        cancelled.cancel()
        release.set()
        await asyncio.gather(holder, later)
        assert cancelled.cancelled()
        assert slots.free == 1
        return order

    assert asyncio.run(run()) == ["holder", "later"]


def test_a_waiter_cancelled_just_as_it_is_handed_the_slot_passes_it_on() -> None:
    async def run() -> list[str]:
        slots, order, release = PrioritySlots(1), [], asyncio.Event()
        release.set()
        async with slots.slot(urgent=False):
            handed = asyncio.create_task(_holder(slots, "handed", True, order, release))
            after = asyncio.create_task(_holder(slots, "after", False, order, release))
            await asyncio.sleep(0)
        handed.cancel()  # the slot was handed to it on release, but it never ran
        await asyncio.wait_for(after, timeout=5)  # a lost slot would leave it waiting for ever
        await asyncio.gather(handed, return_exceptions=True)
        assert slots.free == 1
        return order

    assert asyncio.run(run()) == ["after"]


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=4),
    callers=st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=3), st.integers(min_value=0, max_value=3)), min_size=1, max_size=30),
)
def test_never_more_holders_than_slots_and_every_caller_served(size, callers) -> None:
    """callers: (urgent, event-loop turns before asking, turns holding the slot). (The order is the
    deterministic tests' business: a slot is handed over on release, its taker runs a turn later.)"""

    async def run() -> None:
        slots = PrioritySlots(size)
        holding: set[int] = set()
        served: list[int] = []

        async def caller(i: int, urgent: bool, before: int, hold: int) -> None:
            for _ in range(before):
                await asyncio.sleep(0)
            async with slots.slot(urgent=urgent):
                holding.add(i)
                assert len(holding) <= size
                served.append(i)
                for _ in range(hold):
                    await asyncio.sleep(0)
                holding.discard(i)

        await asyncio.gather(*(caller(i, *c) for i, c in enumerate(callers)))
        assert sorted(served) == list(range(len(callers)))
        assert slots.free == size

    asyncio.run(run())
