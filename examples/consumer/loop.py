"""Consuming until asked to stop: connect, check that the queues exist, consume with manual acks and
a prefetch, hand each message to a MessageHandler. A failure (a connection refused, a login refused,
a missing queue, a message put back because of its configuration) is counted by class on /metrics
and retried after a backoff with a new session, whose settings are read again; so a fixed
configuration is picked up by the next attempt."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pika
import pika.exceptions

from examples.consumer.errors import classify, describe
from examples.consumer.handling import MessageHandler, Outcome, Result
from examples.consumer.metrics import ConventionMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    """What one connection consumes, and how."""

    parameters: pika.ConnectionParameters
    queue: str
    handler: MessageHandler
    prefetch: int = 1


class Backoff:
    """Delays between attempts: `initial`, doubling up to `maximum`; back to `initial` after a success."""

    def __init__(self, initial: float, maximum: float) -> None:
        if not 0 <= initial <= maximum:
            raise ValueError("a backoff needs 0 <= initial <= maximum")
        self.initial, self.maximum = initial, maximum
        self._next = initial

    def next(self) -> float:
        delay, self._next = self._next, min(self.maximum, max(self._next * 2, self.initial))
        return delay

    def reset(self) -> None:
        self._next = self.initial


class _PutBack(Exception):
    """A message went back to the queue: retry later, with a new session (already counted)."""

    def __init__(self, result: Result) -> None:
        super().__init__(f"{result.error_class}: {result.reason}")
        self.result = result


class ConsumeLoop:
    """Runs sessions made by `session()` until `stopping` is set. `idle_wakeup`: how often an idle
    consumer looks at `stopping`."""

    def __init__(self, session: Callable[[], Session], metrics: ConventionMetrics, stopping: threading.Event,
                 backoff: Backoff, *, idle_wakeup: float = 0.2, name: str = "consumer") -> None:
        self.session, self.metrics, self.stopping, self.backoff = session, metrics, stopping, backoff
        self.idle_wakeup, self.name = idle_wakeup, name

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._consume(self.session())
                return  # asked to stop
            except _PutBack as put_back:
                what = f"a message went back to the queue ({put_back})"
            except Exception as error:  # noqa: BLE001 - classified and counted; the loop goes on
                error_class = classify(error)
                self.metrics.failed_attempt(error_class)
                what = f"{error_class} error: {describe(error)}"
            delay = self.backoff.next()
            log.warning("%s: %s; retrying in %.1fs", self.name, what, delay)
            self.stopping.wait(delay)

    def _consume(self, session: Session) -> None:
        with pika.BlockingConnection(session.parameters) as connection:
            channel = connection.channel()
            # Checked, never declared: a queue made here by a typo would be consumed, empty, while
            # the real backlog grows.
            channel.queue_declare(session.queue, passive=True)
            dead_letter_queue = session.handler.dead_letter_queue
            if dead_letter_queue:
                channel.queue_declare(dead_letter_queue, passive=True)
                channel.confirm_delivery()  # a dead letter is stored before its original is acked
            channel.basic_qos(prefetch_count=session.prefetch)
            log.info("%s: consuming %s (prefetch %d)", self.name, session.queue, session.prefetch)
            for method, properties, body in channel.consume(session.queue, inactivity_timeout=self.idle_wakeup):
                if self.stopping.is_set():
                    break
                if method is None:
                    continue
                result = session.handler.handle(channel, method.delivery_tag, properties, body)
                if result.outcome is Outcome.REQUEUED:
                    raise _PutBack(result)  # closing the connection puts the prefetched messages back too
                if result.outcome is Outcome.SUCCEEDED:
                    self.backoff.reset()
            if not self.stopping.is_set():
                # The broker ended the subscription (the queue was deleted, or moved to another
                # node): the next session finds out which.
                raise pika.exceptions.ConsumerCancelled(f"the broker cancelled the consumer of {session.queue}")
            # Delivered and not handled yet (the prefetch): back to the queue.
            with contextlib.suppress(pika.exceptions.AMQPError):
                channel.cancel()
            log.info("%s: stopped consuming %s", self.name, session.queue)
