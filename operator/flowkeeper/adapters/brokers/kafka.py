"""Kafka's dead letters: a dead-letter topic (all its partitions), read and redriven with kafka-python.

- A review reads without a consumer group (manual assignment and seeks): nothing is committed, and
  no group's lag changes.
- The cutoff of a redrive is the end offset of each partition when it began (`cutoff_token`).
- Its progress lives in the broker: the committed offsets of the consumer group
  `flowkeeper-redrive.<redrive UID>`, so a restarted operator goes on where the last commit left.
  A batch produces the selected records to the flow's topic (acks from all in-sync replicas), waits
  for every ack (flush), and only then commits the offsets past what it examined: at least once.
  A crash between the flush and the commit moves that batch again (its copies are duplicates, each
  marked by `moved_headers`), never loses one.
- Nothing is ever deleted from the dead-letter topic: Kafka does not remove single records. A moved
  record stays there, behind the group's committed offset; retention removes it in time. So a later
  redrive of the same topic, with a group of its own, starts from the beginning again and moves such
  a record a second time (a copy that came back marked is never moved again: `Selection`).
- `remaining` counts offsets not yet examined before the cutoff, selected or not: an upper bound.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kafka_errors
from kafka.structs import OffsetAndMetadata

from flowkeeper.domain.dead_letters import (
    ATTEMPT_HEADER,
    REDRIVE_HEADER,
    BatchResult,
    BrokerAddress,
    Cutoff,
    CutoffLost,
    DeadLetter,
    Review,
    Selection,
    moved_headers,
    review_of,
)
from flowkeeper.domain.errors import ConfigurationError, TransientError

GROUP_PREFIX = "flowkeeper-redrive."
POLL_MS = 500  # one poll's longest wait: a deadline is checked at least this often
MAX_POLL_RECORDS = 500


def group_of(redrive_uid: str) -> str:
    """The consumer group that holds a redrive's progress."""
    return GROUP_PREFIX + redrive_uid


def cutoff_token(offsets: Mapping[int, int]) -> str:
    """The cutoff as JSON, partitions in numeric order, compact: {"0":12,"1":7}."""
    return json.dumps({str(p): int(offsets[p]) for p in sorted(offsets)}, separators=(",", ":"))


def parse_cutoff(token: str) -> dict[int, int]:
    """The offsets of a cutoff token. A token that is not one (an edited status) loses the cutoff:
    the redrive stops rather than guess where to."""
    try:
        loaded = json.loads(token)
        offsets = {int(p): o for p, o in loaded.items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise CutoffLost(f"unreadable Kafka cutoff {token[:80]!r}") from error
    if not offsets or any(p < 0 or type(o) is not int or o < 0 for p, o in offsets.items()):
        raise CutoffLost(f"unreadable Kafka cutoff {token[:80]!r}")
    return offsets


def _headers(record: Any) -> dict[str, bytes]:
    # Kafka headers are a list of (str, bytes) and may repeat a name: the last one wins, as a
    # consumer reading them into a map would see it. from_headers decodes bytes itself.
    return {name: value for name, value in record.headers or ()}


def _marked(record: Any, redrive_uid: str) -> list[tuple[str, bytes]]:
    """The record's headers (repeated names kept) with the redrive's mark and attempt replaced."""
    marked = moved_headers(_headers(record), redrive_uid)
    kept = [(name, value) for name, value in record.headers or () if name not in (REDRIVE_HEADER, ATTEMPT_HEADER)]
    return [*kept, *((name, str(marked[name]).encode()) for name in (REDRIVE_HEADER, ATTEMPT_HEADER))]


def _seconds(record: Any) -> float | None:
    return record.timestamp / 1000 if record.timestamp is not None and record.timestamp >= 0 else None


class KafkaDeadLetters:
    """The DeadLetterBroker of one Kafka cluster. Clients are made on first use and kept; after a
    transient failure they are dropped and made anew by the next call."""

    def __init__(self, address: BrokerAddress, *, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        self._reader: KafkaConsumer | None = None  # no group: reads commit nothing
        self._producer: KafkaProducer | None = None
        self._groups: dict[str, KafkaConsumer] = {}  # redrive UID -> a consumer that commits for its group

    # --- clients

    def _config(self) -> dict[str, Any]:
        ms = int(self.timeout * 1000)
        config: dict[str, Any] = {
            "bootstrap_servers": self.address.address.split(","),
            "client_id": "flowkeeper",
            "request_timeout_ms": max(ms, 1000),
            "bootstrap_timeout_ms": ms,
            "reconnect_backoff_max_ms": 1000,  # a broker back after an outage is seen within a second
        }
        if self.address.username is not None:
            config.update(
                security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                sasl_plain_username=self.address.username, sasl_plain_password=self.address.password or "",
            )
        return config

    def _consumer(self, group: str | None = None) -> KafkaConsumer:
        return KafkaConsumer(
            **self._config(), group_id=group, enable_auto_commit=False, allow_auto_create_topics=False,
            auto_offset_reset="earliest", max_poll_records=MAX_POLL_RECORDS, fetch_max_wait_ms=POLL_MS - 100,
        )

    @property
    def reader(self) -> KafkaConsumer:
        if self._reader is None:
            self._reader = self._consumer()
        return self._reader

    def _group(self, redrive_uid: str) -> KafkaConsumer:
        # Manual assignment with a group id: the group is only where offsets are committed; it never
        # has members, so nothing rebalances and any instance may commit for it.
        if redrive_uid not in self._groups:
            self._groups[redrive_uid] = self._consumer(group_of(redrive_uid))
        return self._groups[redrive_uid]

    @property
    def producer(self) -> KafkaProducer:
        if self._producer is None:
            config = self._config()
            # Idempotent, acked by all in-sync replicas; a send is given up (and the batch not
            # committed) after one request timeout and the linger.
            linger_ms = 5
            self._producer = KafkaProducer(
                **config, acks="all", enable_idempotence=True, allow_auto_create_topics=False, linger_ms=linger_ms,
                max_block_ms=config["request_timeout_ms"], delivery_timeout_ms=config["request_timeout_ms"] + linger_ms,
            )
        return self._producer

    def close(self) -> None:
        clients = [self._reader, self._producer, *self._groups.values()]
        self._reader, self._producer, self._groups = None, None, {}
        for client in clients:
            with contextlib.suppress(Exception):  # closing is best effort: the connection may be dead
                if isinstance(client, KafkaProducer):
                    client.close(timeout=2)
                elif client is not None:
                    client.close(autocommit=False)

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Kafka's errors as the controller's classes; the message names the address, never credentials."""
        where = f"Kafka at {self.address.address}"
        try:
            yield
        except (ConfigurationError, TransientError, CutoffLost):
            raise
        except kafka_errors.SaslAuthenticationFailedError as error:  # seen once connected, e.g. by a producer
            self.close()
            raise ConfigurationError(f"{where} refused the credentials while {doing}", reason="BrokerAuthenticationFailed") from error
        except kafka_errors.AuthorizationError as error:
            raise ConfigurationError(f"{where} denied {doing}: {type(error).__name__}", reason="BrokerAccessDenied") from error
        except (kafka_errors.KafkaError, OSError) as error:
            self.close()  # a client may be stuck on a dead connection: start afresh next time
            # kafka-python retries a refused login like a refused connection until its bootstrap
            # times out, so the two look alike here: say so rather than guess.
            hint = " (or it refused the credentials)" if self.address.username is not None else ""
            raise TransientError(
                f"{where} unreachable or failing{hint} while {doing}: {type(error).__name__}", reason="BrokerUnreachable",
            ) from error

    # --- offsets

    def _partitions(self, topic: str, *, reason: str) -> list[TopicPartition]:
        self.reader.bootstrap(timeout_ms=int(self.timeout * 1000))
        found = self.reader.partitions_for_topic(topic)
        if not found:
            what = "dead-letter topic" if reason == "DeadLetterTopicNotFound" else "topic"
            raise ConfigurationError(f"Kafka at {self.address.address} has no {what} {topic!r}", reason=reason)
        return [TopicPartition(topic, p) for p in sorted(found)]

    def _bounds(self, partitions: list[TopicPartition]) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        ms = int(self.timeout * 1000)
        return self.reader.beginning_offsets(partitions, timeout_ms=ms), self.reader.end_offsets(partitions, timeout_ms=ms)

    def _scan(
        self, consumer: KafkaConsumer, ranges: Mapping[TopicPartition, tuple[int, int]], deadline: float,
        progress: dict[TopicPartition, int],
    ) -> Iterator[Any]:
        """Yields the records of each partition with start <= offset < stop, in offset order within a
        partition, until all are read or the deadline passes. `progress[tp]` is kept just past the last
        record yielded, or at the stop once the partition is read through (control records and
        compacted offsets hold no record, so offsets may skip)."""
        pending = {}
        for tp, (start, stop) in ranges.items():
            progress[tp] = start
            if start < stop:
                pending[tp] = stop
        if not pending:
            return
        consumer.assign(list(pending))
        consumer.resume(*pending)  # a partition paused by an earlier scan stays paused otherwise
        for tp in pending:
            consumer.seek(tp, progress[tp])
        while pending and (left := deadline - time.monotonic()) > 0:
            batches = consumer.poll(timeout_ms=max(1, int(min(left * 1000, POLL_MS))))
            for tp, records in batches.items():
                stop = pending.get(tp)
                for record in records if stop is not None else ():
                    if record.offset >= stop:
                        break
                    if record.offset >= progress[tp]:
                        # Before the yield: a caller that stops after this record has examined it.
                        progress[tp] = record.offset + 1
                        yield record
            # Every record fetched so far was yielded: the consumer's position is where we are.
            for tp, stop in list(pending.items()):
                position = consumer.position(tp, timeout_ms=max(1, int(left * 1000)))
                if position is not None:
                    progress[tp] = max(progress[tp], min(position, stop))
                if progress[tp] >= stop:
                    del pending[tp]
                    consumer.pause(tp)

    # --- the port

    def review(self, dead_letters: str, *, limit: int, deadline: float) -> Review:
        with self._errors(f"reviewing {dead_letters!r}"):
            partitions = self._partitions(dead_letters, reason="DeadLetterTopicNotFound")
            begins, ends = self._bounds(partitions)
            depth = sum(ends[tp] - begins[tp] for tp in partitions)
            # The oldest `limit` of all partitions are among the first `limit` of each.
            ranges = {tp: (begins[tp], min(ends[tp], begins[tp] + limit)) for tp in partitions}
            # Only the headers' facts are kept, never the bodies, and only the oldest `limit` of them.
            oldest = heapq.nsmallest(limit, (
                (r.timestamp if r.timestamp is not None else 0, r.partition, r.offset, DeadLetter.from_headers(_headers(r), at=_seconds(r)))
                for r in (self._scan(self.reader, ranges, deadline, {}) if limit > 0 else ())
            ), key=lambda item: item[:3])
            return review_of((letter for *_, letter in oldest), depth)

    def begin(self, dead_letters: str, *, redrive_uid: str) -> Cutoff:
        with self._errors(f"taking the cutoff of {dead_letters!r}"):
            partitions = self._partitions(dead_letters, reason="DeadLetterTopicNotFound")
            begins, ends = self._bounds(partitions)
            token = cutoff_token({tp.partition: ends[tp] for tp in partitions})
            return Cutoff(token=token, depth=sum(ends[tp] - begins[tp] for tp in partitions))

    def move(
        self, dead_letters: str, to: str, *, redrive_uid: str, cutoff: Cutoff, selection: Selection,
        batch: int, dry_run: bool, scan_limit: int, deadline: float,
    ) -> BatchResult:
        if dry_run and not cutoff.token:
            cutoff = self.begin(dead_letters, redrive_uid=redrive_uid)  # a dry run counts what is there now
        with self._errors(f"redriving {dead_letters!r} to {to!r}"):
            stops = parse_cutoff(cutoff.token)
            partitions = {tp.partition: tp for tp in self._partitions(dead_letters, reason="DeadLetterTopicNotFound")}
            self._partitions(to, reason="TopicNotFound")
            if not stops.keys() <= partitions.keys():
                raise CutoffLost(f"partitions {sorted(stops.keys() - partitions.keys())} of {dead_letters!r} are gone")
            # Partitions added after the cutoff hold only later records: they are not part of it.
            cut = {partitions[p]: stop for p, stop in stops.items()}
            begins, ends = self._bounds(list(cut))
            if any(ends[tp] < stop for tp, stop in cut.items()):
                # Offsets only grow: a smaller end means the topic was deleted and made again.
                raise CutoffLost(f"{dead_letters!r} was recreated after the redrive began: its offsets are not the cutoff's")
            group = self._group(redrive_uid)
            ms = int(self.timeout * 1000)
            starts = {}
            for tp in cut:
                committed = group.committed(tp, timeout_ms=ms)
                starts[tp] = max(committed if committed is not None else 0, begins[tp])

            if batch <= 0 and not dry_run:
                # Nothing to move (a redrive that is verifying): only count what came back.
                return BatchResult(
                    moved=0, remaining=sum(max(0, stop - starts[tp]) for tp, stop in cut.items()),
                    refailed=self._refailed(cut, redrive_uid, scan_limit, deadline),
                    reached_cutoff=all(starts[tp] >= stop for tp, stop in cut.items()),
                )
            progress: dict[TopicPartition, int] = {}
            examined = selected = 0
            sends = []
            ranges = {tp: (starts[tp], stop) for tp, stop in cut.items()}
            for record in self._scan(group, ranges, deadline, progress):
                examined += 1
                if selection.takes(DeadLetter.from_headers(_headers(record), at=_seconds(record))):
                    selected += 1
                    if not dry_run:
                        sends.append(self.producer.send(to, key=record.key, value=record.value, headers=_marked(record, redrive_uid)))
                if examined >= scan_limit or (not dry_run and selected >= batch):
                    break

            if dry_run:
                return BatchResult(
                    moved=0, remaining=sum(stop - starts[tp] for tp, stop in cut.items()),
                    refailed=self._refailed(cut, redrive_uid, scan_limit, deadline),
                    reached_cutoff=all(progress.get(tp, starts[tp]) >= stop for tp, stop in cut.items()),
                    would_move=selected,
                )
            # Commit only what every ack covers: a failed flush or send commits nothing (the
            # records sent go again in the next batch: at least once). The flush gets the timeout even
            # past the deadline: records sent and abandoned would only be sent twice.
            if sends:
                self.producer.flush(timeout=self.timeout)
                for sent in sends:
                    sent.get(timeout=0)  # raises the send's error, or KafkaTimeoutError if not acked
            advanced = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in progress.items() if offset > starts[tp]}
            if advanced:
                group.commit(advanced, timeout_ms=ms)
            positions = {tp: max(starts[tp], progress.get(tp, starts[tp])) for tp in cut}
            return BatchResult(
                moved=len(sends),
                remaining=sum(max(0, stop - positions[tp]) for tp, stop in cut.items()),
                refailed=self._refailed(cut, redrive_uid, scan_limit, deadline),
                reached_cutoff=all(positions[tp] >= stop for tp, stop in cut.items()),
            )

    def _refailed(self, cut: Mapping[TopicPartition, int], redrive_uid: str, scan_limit: int, deadline: float) -> int:
        """Records after the cutoff marked by this redrive: its moved records that failed again. Reads
        at most `scan_limit` of them from the cutoff on: a count as far as seen."""
        _, ends = self._bounds(list(cut))
        ranges = {tp: (stop, ends[tp]) for tp, stop in cut.items()}
        count = 0
        for seen, record in enumerate(self._scan(self.reader, ranges, deadline, {}), start=1):
            count += _headers(record).get(REDRIVE_HEADER) == redrive_uid.encode()
            if seen >= scan_limit:
                break
        return count

    def finish(self, dead_letters: str, *, redrive_uid: str, cutoff: Cutoff) -> None:
        """Deletes the redrive's consumer group (its committed offsets): nothing else is left."""
        with self._errors(f"finishing the redrive of {dead_letters!r}"):
            group = self._groups.pop(redrive_uid, None)
            if group is not None:
                group.close(autocommit=False)
            admin = KafkaAdminClient(**self._config())
            try:
                admin.delete_groups([group_of(redrive_uid)])  # a missing group is reported, not raised
            finally:
                admin.close()
