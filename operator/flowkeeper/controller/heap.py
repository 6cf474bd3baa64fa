"""The cyclic garbage collector and a store of thousands of flows.

10,000 flows are a few million objects that live for hours. Python's full collection scans them all
whenever enough new objects have survived, which each pass's fresh readings and records did every
other pass: 0.6 s of CPU each time, about as much as the rest of an idle pass. What survived a full
collection is moved out of the collector's reach (gc.freeze), so the next full collection scans only
what is new. Refcounting still frees frozen objects that are dropped; only garbage cycles among them
(made after the young generations' collection that precedes each freeze) wait for the next listing,
when everything is collected once and frozen again.
"""

from __future__ import annotations

import gc


class LongLivedHeap:
    def __init__(self) -> None:
        self._full_collections = _full_collections()

    def settle(self) -> None:
        """After a listing: collects all that is garbage now, then freezes every object still alive."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._full_collections = _full_collections()

    def after_pass(self) -> None:
        """Freezes what survived the full collections since the last call, if any ran."""
        done = _full_collections()
        if done != self._full_collections:
            self._full_collections = done
            gc.collect(1)  # the pass's own garbage cycles first (cheap: the young generations only)
            gc.freeze()


def _full_collections() -> int:
    return gc.get_stats()[-1]["collections"]
