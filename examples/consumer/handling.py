"""One message, from delivery to its end: the work, the check, then an ack, a dead letter, or back
to the queue. Nothing is acknowledged before it is done: a message either succeeded, or is in the
dead-letter queue (published with a confirm before the original is acked), or is back in the queue.

- data and code errors: dead-lettered with the convention's headers (x-flowkeeper-error-class,
  x-flowkeeper-error), the message's own headers kept (docs/dead-letters.md); without a dead-letter
  queue, rejected to the queue's dead-letter exchange.
- configuration and transient errors: put back in the queue (a retry may succeed once it is fixed).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from examples.consumer.errors import ErrorClass, classify, describe
from examples.consumer.metrics import ConventionMetrics
from examples.consumer.settings import Check
from flowkeeper.domain.dead_letters import ERROR_CLASS_HEADER, ERROR_HEADER, REASON_MAX

DEAD_LETTERED_CLASSES = frozenset({ErrorClass.DATA, ErrorClass.CODE})  # the message is bad: retrying will not help


class Outcome(enum.Enum):
    SUCCEEDED = "succeeded"  # acked
    DEAD_LETTERED = "dead-lettered"  # in the dead-letter queue (or rejected to its exchange)
    REQUEUED = "requeued"  # back in the queue, to be retried


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    error_class: ErrorClass | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Work:
    """What handling one message costs, before its check."""

    seconds: float = 0.0  # waiting, as for a target system's answer
    cpu_seconds: float = 0.0  # computing: CPU time of this thread

    def do(self) -> None:
        if self.cpu_seconds:
            burn_cpu(self.cpu_seconds)
        if self.seconds:
            time.sleep(self.seconds)


def burn_cpu(seconds: float) -> None:
    """Computes until this thread has used `seconds` of CPU (on a busy machine that takes longer)."""
    until = time.thread_time() + seconds
    value = 1
    while time.thread_time() < until:
        for _ in range(2000):  # some work between two clock reads
            value = (value * 48271) % 2147483647


class MessageHandler:
    """Handles messages on a channel. `work` may be replaced at any time; `check(body)` returns the
    reason a message is bad (a data error), or None, and may raise (classified by errors.classify).
    `on_result(body, headers, result)` is told every message's end."""

    def __init__(
        self,
        metrics: ConventionMetrics,
        *,
        work: Work = Work(),
        check: Check | None = None,
        dead_letter_queue: str | None = None,
        on_result: Callable[[bytes, dict, Result], None] | None = None,
    ) -> None:
        self.metrics = metrics
        self.work = work
        self.check = check
        self.dead_letter_queue = dead_letter_queue
        self.on_result = on_result

    def handle(self, channel: BlockingChannel, delivery_tag: int, properties: pika.BasicProperties | None, body: bytes) -> Result:
        """Raises only the broker's errors on the channel (it is closed then: the broker puts the
        message back itself)."""
        started = time.monotonic()
        headers = dict((properties.headers if properties else None) or {})
        try:
            self.work.do()
            reason = self.check(body) if self.check is not None else None
        except Exception as error:  # noqa: BLE001 - every failure is classified, none stops the consumer
            result = Result(Outcome.DEAD_LETTERED, classify(error), describe(error)[:REASON_MAX])
        else:
            result = Result(Outcome.SUCCEEDED) if reason is None else Result(Outcome.DEAD_LETTERED, ErrorClass.DATA, str(reason)[:REASON_MAX])

        if result.outcome is Outcome.SUCCEEDED:
            channel.basic_ack(delivery_tag)
            self.metrics.succeeded(time.monotonic() - started)
        elif result.error_class not in DEAD_LETTERED_CLASSES:
            result = Result(Outcome.REQUEUED, result.error_class, result.reason)
            channel.basic_nack(delivery_tag, requeue=True)
            self.metrics.failed_attempt(result.error_class)
        else:
            try:
                self._dead_letter(channel, delivery_tag, properties, headers, body, result)
            except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as error:
                # The dead-letter queue does not exist, or the broker refused the copy: the channel
                # is still open, so the original goes back to the queue.
                channel.basic_nack(delivery_tag, requeue=True)
                result = Result(Outcome.REQUEUED, classify(error), describe(error)[:REASON_MAX])
                self.metrics.failed_attempt(result.error_class)
            else:
                self.metrics.dead_lettered(result.error_class, time.monotonic() - started)
        if self.on_result is not None:
            self.on_result(body, headers, result)
        return result

    def _dead_letter(self, channel: BlockingChannel, delivery_tag: int, properties: pika.BasicProperties | None,
                     headers: dict, body: bytes, result: Result) -> None:
        if not self.dead_letter_queue:
            channel.basic_reject(delivery_tag, requeue=False)  # to the queue's dead-letter exchange
            return
        original = properties or pika.BasicProperties()
        copy = pika.BasicProperties(
            content_type=original.content_type, content_encoding=original.content_encoding,
            headers={**headers, ERROR_CLASS_HEADER: result.error_class.value, ERROR_HEADER: result.reason},
            delivery_mode=pika.DeliveryMode.Persistent, priority=original.priority,
            correlation_id=original.correlation_id, message_id=original.message_id,
            timestamp=int(time.time()),  # the dead letter's time (docs/dead-letters.md)
            type=original.type, app_id=original.app_id,
        )
        # mandatory: a dead-letter queue that does not exist returns the copy (UnroutableError)
        # instead of dropping it; the channel is in confirm mode, so this returns once it is stored.
        channel.basic_publish("", self.dead_letter_queue, body, copy, mandatory=True)
        channel.basic_ack(delivery_tag)
