"""The slow signals' queries (queue growth, baselines), each asked in a thread of its own.

At 10,000 flows the growth subquery takes Prometheus longer than the query timeout: asked inside the
pass, it cost each pass that asked it the whole timeout and never answered. Asked here, it has a
longer timeout of its own (signals_pass.py decides how long, and when the pass waits for it), and the
pass goes on with the last answer meanwhile.

An ask's thread touches only its own connection (made for it, closed after it) and its `Asked`; the
pass's thread takes the finished ones and records them. At most `per_server` asks run at once per
server, so a server that answers slowly cannot pile up threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flowkeeper.adapters.prometheus.answers import classify, looked_up
from flowkeeper.adapters.prometheus.client import QueryClient, close_client
from flowkeeper.adapters.prometheus.queries import Query
from flowkeeper.adapters.prometheus.servers import ServerSettings

MAX_PER_SERVER = 4


@dataclass
class Asked:
    """One slow query on its way: its answer (the indexed result, or a QueryProblem) once `done`."""

    settings: ServerSettings
    query: Query
    asked_at: float  # on the pass's monotonic clock: how old the answer is
    deadline: float  # time.monotonic(), as the client takes it
    done: threading.Event = field(default_factory=threading.Event)
    answer: Any = None
    seconds: float = 0.0
    ended_at: float = 0.0  # on the pass's clock: a time-out's back-off counts from here


class SlowAsks:
    def __init__(
        self, client_factory: Callable[[ServerSettings], QueryClient], per_server: int = MAX_PER_SERVER, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._client_factory = client_factory
        self._monotonic = monotonic  # the pass's clock, only read here
        self._per_server = per_server
        self._asked: dict[tuple[ServerSettings, Query], Asked] = {}

    def running(self, settings: ServerSettings, query: Query) -> Asked | None:
        """The ask of this query that has not been taken yet (it may be done)."""
        return self._asked.get((settings, query))

    def start(self, settings: ServerSettings, query: Query, promql: str, *, at: float, asked_at: float, deadline: float) -> Asked | None:
        """Asks `promql` (the query's text for this pass) in a new thread; None when the server
        already has `per_server` asks that were not taken."""
        if sum(1 for s, _ in self._asked if s == settings) >= self._per_server:
            return None
        asked = Asked(settings, query, asked_at, deadline)
        self._asked[(settings, query)] = asked
        # A daemon: an operator that stops does not wait for a query Prometheus is still working on.
        threading.Thread(target=self._ask, args=(asked, promql, at), name=f"slow-query-{query.kind}", daemon=True).start()
        return asked

    def take(self, asked: Asked) -> None:
        """Hands out one finished ask (the pass records it itself)."""
        if self._asked.get((asked.settings, asked.query)) is asked:
            del self._asked[(asked.settings, asked.query)]

    def take_finished(self) -> list[Asked]:
        """The asks that are done, each handed out once."""
        finished = [asked for asked in self._asked.values() if asked.done.is_set()]
        for asked in finished:
            del self._asked[(asked.settings, asked.query)]
        return finished

    def _ask(self, asked: Asked, promql: str, at: float) -> None:
        """Every way out sets `done`: an ask left undone would hold its query and its server's room
        for good."""
        started = time.monotonic()
        client: QueryClient | None = None
        try:
            client = self._client_factory(asked.settings)  # may fail too (a CA file gone)
            data = client.query(promql, at=at, deadline=asked.deadline)
            asked.answer = looked_up(asked.query, data)
        except Exception as exc:  # noqa: BLE001 - classified like any query's failure, never raised
            asked.answer = classify(exc)
        finally:
            try:
                if client is not None:
                    close_client(client)
            except Exception:  # noqa: BLE001 - its answer is in; a connection that fails to close is dropped
                pass
            asked.seconds = time.monotonic() - started
            asked.ended_at = self._monotonic()
            asked.done.set()
