"""Dead letters as the review and the redrive see them: the headers of the metrics convention, one
message's facts (never its body), a review's summary, and which messages a redrive may move.

Pure: the broker adapters (adapters/brokers/) read messages into `DeadLetter`s, everything else here
decides from those values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Headers of the metrics convention (docs/metrics-convention.md). Consumers set the first two when
# they dead-letter a message; Flowkeeper sets the others on what it moves.
ERROR_CLASS_HEADER = "x-flowkeeper-error-class"  # configuration | data | code | transient
ERROR_HEADER = "x-flowkeeper-error"  # a short reason, e.g. "missing field customerId"
REDRIVE_HEADER = "x-flowkeeper-redrive"  # UID of the DeadLetterRedrive that moved the message
ATTEMPT_HEADER = "x-flowkeeper-redrive-attempt"  # how many times Flowkeeper moved it
CUTOFF_HEADER = "x-flowkeeper-cutoff"  # RabbitMQ only: the marker a redrive leaves at its cutoff

UNCLASSIFIED = "unclassified"  # the class of a dead letter without ERROR_CLASS_HEADER, or with one not below
CLASSES = frozenset({"configuration", "data", "code", "transient"})  # the convention's classes
REASON_MAX = 200  # a reason is cut to this many characters in the status
SAMPLES = 3  # sample reasons kept in a review
TOP_REASONS = 10  # reasons shown in a review's status, the most frequent first


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).strip()
    return text[:REASON_MAX] if text else None


def _int(value: Any) -> int:
    try:
        number = int(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError, AttributeError):
        return 0
    return max(0, number)


@dataclass(frozen=True)
class DeadLetter:
    """What is known of one dead letter, from its headers."""

    error_class: str  # UNCLASSIFIED when the consumer did not say
    reason: str | None  # the consumer's reason, else the broker's (RabbitMQ x-death: rejected, expired...)
    dead_lettered_at: float | None  # Unix seconds, when known
    redriven_by: str | None  # the redrive that moved it before (REDRIVE_HEADER), if any
    attempts: int = 0

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any] | None, *, broker_reason: str | None = None, at: float | None = None) -> DeadLetter:
        headers = headers or {}
        # Any other value is unclassified: a consumer writing free text there must not grow the status.
        error_class = (_text(headers.get(ERROR_CLASS_HEADER)) or UNCLASSIFIED).lower()
        error_class = error_class if error_class in CLASSES else UNCLASSIFIED
        return cls(
            error_class=error_class,
            reason=_text(headers.get(ERROR_HEADER)) or _text(broker_reason),
            dead_lettered_at=at,
            redriven_by=_text(headers.get(REDRIVE_HEADER)),
            attempts=_int(headers.get(ATTEMPT_HEADER)),
        )


def moved_headers(headers: Mapping[str, Any] | None, redrive_uid: str) -> dict[str, Any]:
    """The headers of a message moved by a redrive: its own, plus the mark that recognises it when
    it comes back to the dead-letter queue."""
    marked = dict(headers or {})
    marked[REDRIVE_HEADER] = redrive_uid
    marked[ATTEMPT_HEADER] = _int(marked.get(ATTEMPT_HEADER)) + 1
    return marked


@dataclass(frozen=True)
class Selection:
    """Which dead letters a redrive moves: of the classes and reasons named (empty: any), never one
    Flowkeeper moved before (a message that failed again after a redrive waits for people)."""

    classes: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()

    def takes(self, letter: DeadLetter) -> bool:
        if letter.redriven_by is not None:
            return False
        if self.classes and letter.error_class not in self.classes:
            return False
        return not self.reasons or (letter.reason is not None and letter.reason in self.reasons)


@dataclass
class Review:
    """What a review found in a dead-letter queue, without consuming it. `examined` may be less than
    `depth`: a review reads at most a bounded number of messages, oldest first."""

    depth: int = 0
    examined: int = 0
    by_class: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    oldest: float | None = None
    newest: float | None = None  # of the messages examined
    redriven: Counter[str] = field(default_factory=Counter)  # by redrive UID: moved once and back again
    markers: set[str] = field(default_factory=set)  # RabbitMQ: redrives whose cutoff marker was seen

    def add(self, letter: DeadLetter) -> None:
        self.examined += 1
        self.by_class[letter.error_class] += 1
        reason = letter.reason or "(none)"
        self.by_reason[reason] += 1
        if letter.reason and letter.reason not in self.samples and len(self.samples) < SAMPLES:
            self.samples.append(letter.reason)
        if letter.dead_lettered_at is not None:
            at = letter.dead_lettered_at
            self.oldest = at if self.oldest is None else min(self.oldest, at)
            self.newest = at if self.newest is None else max(self.newest, at)
        if letter.redriven_by is not None:
            self.redriven[letter.redriven_by] += 1

    @property
    def complete(self) -> bool:
        return self.examined >= self.depth


def review_of(letters: Iterable[DeadLetter], depth: int) -> Review:
    review = Review(depth=depth)
    for letter in letters:
        review.add(letter)
    return review


# ------------------------------------------------------------------------------ talking to a broker


@dataclass(frozen=True)
class BrokerAddress:
    """How to reach a flow's broker itself (not its metrics), with credentials already read."""

    broker: str  # "rabbitmq" | "kafka"
    address: str  # amqp(s)://host:port for RabbitMQ; host:port[,host:port...] for Kafka
    vhost: str = "/"  # RabbitMQ only
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # never log credentials
        return f"BrokerAddress({self.broker}, {self.address!r})"


@dataclass(frozen=True)
class Cutoff:
    """Where a redrive stops: what was in the dead-letter queue when it started. `token` is the
    adapter's own (RabbitMQ: the UID on the marker it left at the tail; Kafka: the end offset of each
    partition, as JSON), kept in the redrive's status so a restarted operator stops at the same place."""

    token: str
    depth: int  # dead letters when it was taken


@dataclass(frozen=True)
class BatchResult:
    """What one batch of a redrive did, and what the broker shows now."""

    moved: int  # published to the flow's queue (confirmed), then removed from the dead letters
    remaining: int  # selected dead letters before the cutoff not moved yet (Kafka: not read yet, an upper bound)
    refailed: int  # messages this redrive moved that are back among the dead letters (as far as seen)
    reached_cutoff: bool  # nothing selected is left before the cutoff
    would_move: int = 0  # dry run: selected dead letters before the cutoff


class CutoffLost(Exception):
    """The marker of a redrive's cutoff is gone (the dead-letter queue was purged or edited): moving
    on could take messages that came after the start, so the redrive stops."""
