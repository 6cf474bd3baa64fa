"""After each listing the operator's long-lived objects leave the cyclic collector's reach, and the
garbage cycles of the time before are collected first."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from flowkeeper.controller.heap import LongLivedHeap
from flowkeeper.controller.loop import RESYNC_SECONDS, FlowController
from flowkeeper.controller.store import ClusterStore
from tests.unit.test_loop_debounce import FLOWS, Flows
from tests.unit.test_store import Clock


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


@pytest.fixture(autouse=True)
def _unfrozen():
    yield
    gc.enable()
    gc.unfreeze()  # the other tests' garbage must stay collectable


def test_a_settled_heap_keeps_the_living_out_of_collections_and_collects_the_dead_first() -> None:
    dead = Node()
    dead_ref = weakref.ref(dead)
    del dead
    alive = [Node() for _ in range(10)]
    LongLivedHeap().settle()
    assert dead_ref() is None  # collected before the freeze, not frozen with the living
    assert gc.get_freeze_count() >= len(alive)
    assert not any(o is alive[0] for o in gc.get_objects())  # frozen: in no generation a collection scans


def test_what_survived_a_full_collection_is_frozen_after_the_pass_and_nothing_when_none_ran() -> None:
    gc.disable()  # only the test's own full collection runs
    heap = LongLivedHeap()
    heap.after_pass()
    assert gc.get_freeze_count() == 0  # no full collection since: nothing to freeze
    survivor = Node()
    gc.collect()  # a full collection, as the collector's own thresholds start them
    heap.after_pass()
    assert gc.get_freeze_count() > 0 and not any(o is survivor for o in gc.get_objects())


def test_the_operators_loop_settles_after_its_first_listing_and_each_resync_and_tests_loops_do_not() -> None:
    clock = Clock()

    def seeded(settle: bool) -> FlowController:
        controller = FlowController(ClusterStore(clock), Flows(), monotonic=clock, settle_heap=settle)
        asyncio.run(controller._seed(asyncio.Event()))
        assert len(controller.store.flows) == FLOWS
        return controller

    seeded(False)
    assert gc.get_freeze_count() == 0
    controller = seeded(True)
    assert gc.get_freeze_count() > 0
    gc.unfreeze()
    clock.now += RESYNC_SECONDS

    async def resync() -> None:
        await controller._resync_now_and_then()  # the LIST starts
        await controller._resync_listing
        await controller._resync_now_and_then()  # and is applied

    asyncio.run(resync())
    assert gc.get_freeze_count() > 0
