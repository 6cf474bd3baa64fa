"""A RabbitMQ dead-letter queue, reviewed and redriven over AMQP 0-9-1 (pika).

RabbitMQ cannot browse a queue. A review therefore consumes with manual acknowledgements and acks
nothing: when its connection closes (or the operator dies), the broker puts every message back where
it was, marked `redelivered`. A redrive's cutoff is a marker message it publishes at the tail of the
dead-letter queue when it starts: everything before the marker was there at the start. Each batch
reads from the head, publishes each selected message to the flow's queue with a publisher confirm,
and only then acks it in the dead-letter queue (at-least-once: a kill between the two leaves one
message in both). What is not selected is left unacknowledged and returns to its place.

One connection per call: calls for different queues run on different threads, and pika's
connections are not thread-safe. A dead-letter queue has no consumers of its own, so while a call
holds its messages nobody else is kept waiting.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from flowkeeper.domain.dead_letters import (
    CUTOFF_HEADER,
    BatchResult,
    BrokerAddress,
    Cutoff,
    CutoffLost,
    DeadLetter,
    Review,
    Selection,
    moved_headers,
)
from flowkeeper.domain.errors import ConfigurationError, TransientError

PREFETCH_MAX = 65535  # the most messages one call holds unacknowledged


def _unix(value: Any) -> float | None:
    if isinstance(value, datetime):
        return float(calendar.timegm(value.utctimetuple()))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def letter_of(properties: pika.BasicProperties) -> DeadLetter:
    """The facts of one dead letter: the convention's headers, else RabbitMQ's own x-death (its most
    recent entry first), else the message's timestamp."""
    headers = properties.headers or {}
    deaths = headers.get("x-death")
    death = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    at = _unix(death.get("time")) or _unix(properties.timestamp)
    return DeadLetter.from_headers(headers, broker_reason=death.get("reason"), at=at)


def _is_marker(properties: pika.BasicProperties, redrive_uid: str | None = None) -> bool:
    value = (properties.headers or {}).get(CUTOFF_HEADER)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value is not None and (redrive_uid is None or value == redrive_uid)


def _marker_of(properties: pika.BasicProperties) -> str:
    value = (properties.headers or {})[CUTOFF_HEADER]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _copy(properties: pika.BasicProperties, headers: dict[str, Any]) -> pika.BasicProperties:
    """The properties of a moved message: its own, with the new headers. user_id is left out (the
    broker refuses one that is not the publishing user's), expiration too (RabbitMQ drops it when it
    dead-letters; a redriven message must not expire on its way back)."""
    return pika.BasicProperties(
        content_type=properties.content_type,
        content_encoding=properties.content_encoding,
        headers=headers,
        delivery_mode=properties.delivery_mode or pika.DeliveryMode.Persistent,
        priority=properties.priority,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        message_id=properties.message_id,
        timestamp=properties.timestamp,
        type=properties.type,
        app_id=properties.app_id,
    )


class RabbitMQDeadLetters:
    """The DeadLetterBroker port (controller/ports.py) for RabbitMQ."""

    def __init__(self, address: BrokerAddress, *, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout

    def _parameters(self) -> pika.URLParameters:
        parameters = pika.URLParameters(self.address.address)
        parameters.virtual_host = self.address.vhost
        if self.address.username is not None:
            parameters.credentials = pika.PlainCredentials(self.address.username, self.address.password or "")
        parameters.socket_timeout = self.timeout
        parameters.stack_timeout = self.timeout
        parameters.blocked_connection_timeout = self.timeout
        parameters.connection_attempts = 1
        parameters.heartbeat = 30
        return parameters

    @contextmanager
    def _channel(self) -> Iterator[BlockingChannel]:
        where = f"RabbitMQ {self.address.address} vhost {self.address.vhost!r}"
        try:
            parameters = self._parameters()
        except ValueError as exc:  # e.g. a port above 65535, which the CRD's pattern cannot refuse
            raise ConfigurationError(f"{where}: not a usable address ({exc})", reason="InvalidAddress") from exc
        try:
            connection = pika.BlockingConnection(parameters)
        except pika.exceptions.ProbableAuthenticationError as exc:
            raise ConfigurationError(f"{where}: the broker refused the credentials", reason="BrokerUnauthorized") from exc
        except pika.exceptions.ProbableAccessDeniedError as exc:
            raise ConfigurationError(f"{where}: access to the vhost refused", reason="BrokerForbidden") from exc
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise TransientError(f"{where}: cannot connect ({type(exc).__name__})", reason="BrokerUnavailable") from exc
        try:
            yield connection.channel()
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                raise ConfigurationError(f"{where}: {exc.reply_text}", reason="QueueNotFound") from exc
            if exc.reply_code == 403:
                raise ConfigurationError(f"{where}: {exc.reply_text}", reason="BrokerForbidden") from exc
            raise TransientError(f"{where}: {exc.reply_text}", reason="BrokerError") from exc
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise TransientError(f"{where}: {type(exc).__name__}: {exc}", reason="BrokerUnavailable") from exc
        finally:
            # Closing returns every message this call did not ack to its place in the queue.
            try:
                if connection.is_open:
                    connection.close()
            except (pika.exceptions.AMQPError, OSError):
                pass

    @staticmethod
    def _read(channel: BlockingChannel, queue: str, limit: int, deadline: float) -> Iterator[tuple[int, pika.BasicProperties, bytes]]:
        """The messages of `queue` from its head, unacknowledged, one basic.get at a time (no prefetch
        window: the broker sends no more than is asked, so only what the caller keeps is in memory),
        up to `limit` or the deadline, or until the queue has no more ready."""
        read = 0
        while read < min(limit, PREFETCH_MAX) and time.monotonic() < deadline:
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                return
            if "x-delivery-count" in (properties.headers or {}):
                # A quorum queue counts every return toward its x-delivery-limit and drops (or
                # dead-letters) a message at the limit: reading it this way could lose messages.
                raise ConfigurationError(
                    f"{queue} is a quorum queue: every review or batch would count toward its delivery limit; "
                    "Flowkeeper reviews and redrives classic dead-letter queues only",
                    reason="QuorumQueueNotSupported",
                )
            yield method.delivery_tag, properties, body
            read += 1

    # --- the port

    def depth(self, dead_letters: str) -> int:
        with self._channel() as channel:
            return channel.queue_declare(dead_letters, passive=True).method.message_count

    def review(self, dead_letters: str, *, limit: int, deadline: float) -> Review:
        with self._channel() as channel:
            depth = channel.queue_declare(dead_letters, passive=True).method.message_count
            review = Review(depth=depth)
            # What was there when it was counted: a letter arriving meanwhile waits for the next
            # review, never counted as examined beyond the depth.
            for _, properties, _ in self._read(channel, dead_letters, min(limit, depth), deadline):
                if _is_marker(properties):
                    review.depth -= 1
                    review.markers.add(_marker_of(properties))
                    continue
                review.add(letter_of(properties))
            return review

    def begin(self, dead_letters: str, *, redrive_uid: str) -> Cutoff:
        with self._channel() as channel:
            depth = channel.queue_declare(dead_letters, passive=True).method.message_count
            channel.confirm_delivery()
            marker = pika.BasicProperties(headers={CUTOFF_HEADER: redrive_uid}, delivery_mode=pika.DeliveryMode.Persistent)
            channel.basic_publish("", dead_letters, b"", marker, mandatory=True)
            return Cutoff(token=redrive_uid, depth=depth)

    def move(
        self,
        dead_letters: str,
        to: str,
        *,
        redrive_uid: str,
        cutoff: Cutoff,
        selection: Selection,
        batch: int,
        dry_run: bool,
        scan_limit: int,
        deadline: float,
    ) -> BatchResult:
        moved = remaining = refailed = 0
        before_cutoff = True
        held: list[tuple[int, pika.BasicProperties, bytes]] = []  # the batch: selected, before the cutoff
        with self._channel() as channel:
            channel.queue_declare(to, passive=True)  # a missing queue: refused before anything moves
            depth = channel.queue_declare(dead_letters, passive=True).method.message_count
            examined = 0
            for tag, properties, body in self._read(channel, dead_letters, scan_limit, deadline):
                examined += 1
                if _is_marker(properties, cutoff.token):
                    before_cutoff = False  # what follows came after the start
                    continue
                if _is_marker(properties):
                    continue  # another redrive's marker
                letter = letter_of(properties)
                if not before_cutoff:
                    refailed += letter.redriven_by == redrive_uid
                elif selection.takes(letter):
                    if dry_run or len(held) >= batch:
                        remaining += 1
                    else:
                        held.append((tag, properties, body))
                # Whatever is not moved stays unacknowledged: it returns to its place on close.
            if before_cutoff and examined >= depth and not dry_run:
                # The whole queue was read and the marker is not in it: nothing may move.
                raise CutoffLost(f"the marker of this redrive's cutoff is no longer in {dead_letters}")
            if before_cutoff and not held and not remaining and examined >= min(scan_limit, PREFETCH_MAX) and batch and not dry_run:
                raise ConfigurationError(
                    f"the first {examined} dead letters in {dead_letters} hold nothing this redrive selects, and its cutoff lies "
                    "beyond them: nothing can be moved; select them too, or raise --dead-letter-review-limit",
                    reason="ScanLimitReached",
                )
            if held:
                channel.confirm_delivery()
            for n, (tag, properties, body) in enumerate(held):
                if time.monotonic() >= deadline:
                    remaining += len(held) - n
                    break
                # Published with a confirm (basic_publish returns once the broker has it, raises if it
                # cannot route it), then acked here: never the other way round.
                try:
                    channel.basic_publish("", to, body, _copy(properties, moved_headers(properties.headers, redrive_uid)), mandatory=True)
                    channel.basic_ack(tag)
                except (pika.exceptions.AMQPError, OSError):
                    if not moved:
                        raise
                    remaining += len(held) - n  # what was moved before the failure is counted; this one was not acked
                    break
                moved += 1
        return BatchResult(
            moved=moved,
            remaining=remaining,
            refailed=refailed,
            reached_cutoff=not before_cutoff and remaining == 0,
            would_move=remaining if dry_run else 0,
        )

    def finish(self, dead_letters: str, *, redrive_uid: str, cutoff: Cutoff) -> None:
        with self._channel() as channel:
            for tag, properties, _ in self._read(channel, dead_letters, PREFETCH_MAX, time.monotonic() + self.timeout):
                if _is_marker(properties, redrive_uid):
                    channel.basic_ack(tag)

    def close(self) -> None:
        """Nothing is kept open between calls."""
