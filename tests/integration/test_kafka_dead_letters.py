"""Kafka's dead letters against a real broker (tests/support/kafka.py): review without consuming,
redrive from a cutoff in batches with its progress in a consumer group, at least once across a crash.
Every count is read back from the broker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from flowkeeper.adapters.brokers.kafka import KafkaDeadLetters, group_of
from flowkeeper.domain.dead_letters import (
    ATTEMPT_HEADER,
    ERROR_CLASS_HEADER,
    ERROR_HEADER,
    REDRIVE_HEADER,
    BatchResult,
    BrokerAddress,
    Cutoff,
    CutoffLost,
    Selection,
)
from flowkeeper.domain.errors import ConfigurationError, TransientError
from tests.support.kafka import LocalKafka, Record, committed, create_topic, depth, end_offsets, produce, read_all
from tests.support.processes import free_port

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
ANY = Selection()


@pytest.fixture(scope="session")
def kafka() -> Iterator[LocalKafka]:
    with LocalKafka() as running:
        yield running


@pytest.fixture
def topics(kafka: LocalKafka) -> tuple[str, str]:
    """A fresh dead-letter topic and flow topic, three partitions each."""
    name = f"orders-{uuid.uuid4().hex[:8]}"
    create_topic(kafka.bootstrap, f"{name}.dlq", partitions=3)
    create_topic(kafka.bootstrap, name, partitions=3)
    return f"{name}.dlq", name


@pytest.fixture
def adapter(kafka: LocalKafka) -> Iterator[KafkaDeadLetters]:
    broker = KafkaDeadLetters(BrokerAddress("kafka", kafka.bootstrap), timeout=10)
    yield broker
    broker.close()


def letters(count: int, *, error_class: str | None = "data", reason: str | None = "missing field", tag: str = "m", **extra: str) -> list[Record]:
    headers = {**({ERROR_CLASS_HEADER: error_class} if error_class else {}), **({ERROR_HEADER: reason} if reason else {}), **extra}
    return [Record(f"key-{tag}{n}".encode(), f"{tag}{n}".encode(), headers) for n in range(count)]


def soon(seconds: float = 30) -> float:
    return time.monotonic() + seconds


def move(adapter: KafkaDeadLetters, topics: tuple[str, str], uid: str, cutoff: Cutoff, *, selection: Selection = ANY,
         batch: int = 10, dry_run: bool = False, scan_limit: int = 1000) -> BatchResult:
    return adapter.move(*topics, redrive_uid=uid, cutoff=cutoff, selection=selection, batch=batch, dry_run=dry_run,
                        scan_limit=scan_limit, deadline=soon())


def redrive(adapter: KafkaDeadLetters, topics: tuple[str, str], uid: str, cutoff: Cutoff, **options: object) -> list[BatchResult]:
    """Batches until the cutoff is reached, as the controller runs them."""
    results = [move(adapter, topics, uid, cutoff, **options)]  # type: ignore[arg-type]
    while not results[-1].reached_cutoff:
        assert len(results) < 100, results[-3:]
        results.append(move(adapter, topics, uid, cutoff, **options))  # type: ignore[arg-type]
    return results


def values(kafka: LocalKafka, topic: str) -> Counter[bytes]:
    return Counter(value for _, _, _, value, _ in read_all(kafka.bootstrap, topic))


def groups(kafka: LocalKafka) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        return {group["group_id"] for group in admin.list_groups()}
    finally:
        admin.close()


# ------------------------------------------------------------------------------------- the broker


def test_the_broker_starts_fast_and_stops_leaving_nothing() -> None:
    started = time.monotonic()
    broker = LocalKafka().start()
    try:
        startup = time.monotonic() - started
        assert broker.broker.popen is not None
        pid = broker.broker.popen.pid
        ports = [broker.port, broker.sasl_port, broker.controller_port]
        for port in ports:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
        print(f"kafka started in {startup:.1f}s (storage format included)")
        assert startup < 60
    finally:
        broker.close()
    assert not Path(f"/proc/{pid}").exists()
    assert not broker.workdir.exists()
    for port in ports:
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_first_start_takes_other_ports_when_one_was_taken_meanwhile() -> None:
    broker = LocalKafka()
    taken = broker.controller_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            broker.start()
            assert broker.controller_port != taken
            create_topic(broker.bootstrap, "works", partitions=1)
        finally:
            broker.close()


def test_the_broker_keeps_its_data_across_a_stop() -> None:
    broker = LocalKafka().start()
    try:
        create_topic(broker.bootstrap, "kept", partitions=1)
        produce(broker.bootstrap, "kept", letters(5))
        broker.stop()
        assert not broker.running
        broker.start()
        assert depth(broker.bootstrap, "kept") == 5
    finally:
        broker.close()


# ------------------------------------------------------------------------------------- review


def test_a_review_reads_without_consuming(kafka: LocalKafka, adapter: KafkaDeadLetters, topics: tuple[str, str]) -> None:
    dead_letters, _ = topics
    produce(kafka.bootstrap, dead_letters, letters(12, error_class="data", reason="missing field", tag="d"))
    produce(kafka.bootstrap, dead_letters, letters(5, error_class="configuration", reason="bad credentials", tag="c"))
    produce(kafka.bootstrap, dead_letters, letters(3, error_class=None, reason=None, tag="u"))
    # The flow's own consumers have a group with a lag: a review must not change it.
    app = KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=f"app-{dead_letters}", enable_auto_commit=False)
    app.commit({TopicPartition(dead_letters, p): OffsetAndMetadata(1, "", -1) for p in range(3)})
    app.close()
    before_offsets, before_groups = end_offsets(kafka.bootstrap, dead_letters), groups(kafka)

    first = adapter.review(dead_letters, limit=100, deadline=soon())
    second = KafkaDeadLetters(BrokerAddress("kafka", kafka.bootstrap)).review(dead_letters, limit=100, deadline=soon())

    assert first == second
    assert (first.depth, first.examined, first.complete) == (20, 20, True)
    assert first.by_class == {"data": 12, "configuration": 5, "unclassified": 3}
    assert first.by_reason == {"missing field": 12, "bad credentials": 5, "(none)": 3}
    assert set(first.samples) == {"missing field", "bad credentials"}
    assert first.oldest is not None and first.newest is not None
    assert abs(first.newest - time.time()) < 120 and first.oldest <= first.newest
    assert end_offsets(kafka.bootstrap, dead_letters) == before_offsets
    assert committed(kafka.bootstrap, f"app-{dead_letters}", dead_letters) == {0: 1, 1: 1, 2: 1}
    assert groups(kafka) == before_groups  # a review made no group


def test_a_review_of_a_large_topic_is_bounded_and_oldest_first(kafka: LocalKafka, adapter: KafkaDeadLetters, topics: tuple[str, str]) -> None:
    dead_letters, _ = topics
    produce(kafka.bootstrap, dead_letters, letters(100, error_class="code", reason="oldest", tag="o"))
    time.sleep(0.05)  # later timestamps for the rest
    produce(kafka.bootstrap, dead_letters, letters(19_900, error_class="data", reason="newer", tag="n"))

    started = time.monotonic()
    review = adapter.review(dead_letters, limit=100, deadline=soon())
    elapsed = time.monotonic() - started

    assert (review.depth, review.examined, review.complete) == (20_000, 100, False)
    assert review.by_class == {"code": 100}  # the oldest 100, whichever partition they are in
    assert elapsed < 5, f"review of 100 took {elapsed:.1f}s"

    # A deadline already past: the depth, and nothing read.
    late = adapter.review(dead_letters, limit=100, deadline=time.monotonic())
    assert (late.depth, late.examined) == (20_000, 0)


def test_a_review_of_an_empty_topic(adapter: KafkaDeadLetters, topics: tuple[str, str]) -> None:
    review = adapter.review(topics[0], limit=100, deadline=soon())
    assert (review.depth, review.examined, review.complete, review.oldest) == (0, 0, True, None)


# ------------------------------------------------------------------------------------- redrive


def test_a_redrive_moves_what_was_there_at_begin_in_batches(kafka: LocalKafka, adapter: KafkaDeadLetters, topics: tuple[str, str]) -> None:
    dead_letters, flow = topics
    produce(kafka.bootstrap, dead_letters, letters(25, tag="before"))
    uid = str(uuid.uuid4())
    cutoff = adapter.begin(dead_letters, redrive_uid=uid)
    assert cutoff.depth == 25
    assert json.loads(cutoff.token) == {str(p): end for p, (_, end) in end_offsets(kafka.bootstrap, dead_letters).items()}
    produce(kafka.bootstrap, dead_letters, letters(10, tag="after"))  # came after the start

    results = redrive(adapter, topics, uid, cutoff, batch=10)

    assert [r.moved for r in results] == [10, 10, 5]
    assert results[-1].remaining == 0 and results[-1].refailed == 0
    assert [r.remaining for r in results][:2] == [15, 5]
    moved = read_all(kafka.bootstrap, flow)
    assert Counter(value for *_, value, _ in moved) == Counter(f"before{n}".encode() for n in range(25))
    for _, _, key, value, headers in moved:
        assert key == b"key-" + value
        assert headers[REDRIVE_HEADER] == uid.encode() and headers[ATTEMPT_HEADER] == b"1"
        assert headers[ERROR_CLASS_HEADER] == b"data" and headers[ERROR_HEADER] == b"missing field"
    # The group's offsets stand at the cutoff: the later ten are not behind them.
    cut = {int(p): offset for p, offset in json.loads(cutoff.token).items()}
    assert committed(kafka.bootstrap, group_of(uid), dead_letters) == {p: offset or None for p, offset in cut.items()}
    # Once at the cutoff, a batch moves nothing more.
    assert move(adapter, topics, uid, cutoff) == BatchResult(moved=0, remaining=0, refailed=0, reached_cutoff=True)
    assert depth(kafka.bootstrap, flow) == 25
    assert depth(kafka.bootstrap, dead_letters) == 35  # Kafka deletes nothing: moved records stay behind the group

    adapter.finish(dead_letters, redrive_uid=uid, cutoff=cutoff)
    adapter.finish(dead_letters, redrive_uid=uid, cutoff=cutoff)  # idempotent
    assert group_of(uid) not in groups(kafka)


def test_a_redrive_selects_by_class_and_reason_and_never_moves_a_marked_message(
    kafka: LocalKafka, adapter: KafkaDeadLetters, topics: tuple[str, str],
) -> None:
    dead_letters, flow = topics
    produce(kafka.bootstrap, dead_letters, [
        *letters(5, error_class="data", reason="missing field", tag="take"),
        *letters(4, error_class="data", reason="bad date", tag="otherreason"),
        *letters(3, error_class="code", reason="missing field", tag="otherclass"),
        # Moved by an earlier redrive and failed again: waits for people, never moved again.
        *letters(2, error_class="data", reason="missing field", tag="marked", **{REDRIVE_HEADER: "earlier", ATTEMPT_HEADER: "1"}),
        # Moved twice by hand before, unmarked: moved, and its attempt counter goes on.
        *letters(1, error_class="data", reason="missing field", tag="again", **{ATTEMPT_HEADER: "2"}),
    ])
    uid = str(uuid.uuid4())
    cutoff = adapter.begin(dead_letters, redrive_uid=uid)
    selection = Selection(classes=frozenset({"data"}), reasons=frozenset({"missing field"}))

    results = redrive(adapter, topics, uid, cutoff, selection=selection, batch=4)

    assert sum(r.moved for r in results) == 6 and all(r.moved <= 4 for r in results)
    moved = {value: headers for *_, value, headers in read_all(kafka.bootstrap, flow)}
    assert set(moved) == {*(f"take{n}".encode() for n in range(5)), b"again0"}
    assert moved[b"again0"][ATTEMPT_HEADER] == b"3" and moved[b"take0"][ATTEMPT_HEADER] == b"1"
    assert all(headers[REDRIVE_HEADER] == uid.encode() for headers in moved.values())


def test_a_batch_stops_at_the_scan_limit(kafka: LocalKafka, adapter: KafkaDeadLetters, topics: tuple[str, str]) -> None:
    dead_letters, flow = topics
    produce(kafka.bootstrap, dead_letters, letters(30, error_class="code", tag="skip"))
    uid = str(uuid.uuid4())
    cutoff = adapter.begin(dead_letters, redrive_uid=uid)
    data = Selection(classes=frozenset({"data"}))

    first = move(adapter, topics, uid, cutoff, selection=data, scan_limit=7)
    assert (first.moved, first.remaining, first.reached_cutoff) == (0, 23, False)  # skipped ones are committed too
    results = redrive(adapter, topics, uid, cutoff, selection=data, scan_limit=7)
    assert len(results) == 4 and sum(r.moved for r in results) == 0
    assert depth(kafka.bootstrap, flow) == 0


def test_a_dry_run_moves_and_commits_nothing(kafka: LocalKafka, adapter: KafkaDeadLetters, topics: tuple[str, str]) -> None:
    dead_letters, flow = topics
    produce(kafka.bootstrap, dead_letters, [*letters(8, error_class="data", tag="d"), *letters(4, error_class="code", tag="c")])
    uid = str(uuid.uuid4())
    cutoff = adapter.begin(dead_letters, redrive_uid=uid)

    dry = move(adapter, topics, uid, cutoff, selection=Selection(classes=frozenset({"data"})), batch=2, dry_run=True)

    assert (dry.moved, dry.would_move, dry.remaining, dry.reached_cutoff) == (0, 8, 12, True)
    assert depth(kafka.bootstrap, flow) == 0
    assert set(committed(kafka.bootstrap, group_of(uid), dead_letters).values()) == {None}
    # Bounded by the scan limit: then it did not see everything, and says so.
    partial = move(adapter, topics, uid, cutoff, dry_run=True, scan_limit=5)
    assert (partial.would_move, partial.reached_cutoff) == (5, False)
    # The real thing afterwards still finds all of them.
    assert sum(r.moved for r in redrive(adapter, topics, uid, cutoff, selection=Selection(classes=frozenset({"data"})))) == 8


def test_refailed_counts_moved_messages_back_in_the_dead_letters(kafka: LocalKafka, adapter: KafkaDeadLetters, topics: tuple[str, str]) -> None:
    dead_letters, flow = topics
    produce(kafka.bootstrap, dead_letters, letters(10, tag="m"))
    uid = str(uuid.uuid4())
    cutoff = adapter.begin(dead_letters, redrive_uid=uid)
    assert sum(r.moved for r in redrive(adapter, topics, uid, cutoff, batch=5)) == 10

    # The flow's consumer fails three of them again: back to the dead letters with their headers.
    again = [Record(key, value, headers) for _, _, key, value, headers in read_all(kafka.bootstrap, flow)[:3]]
    produce(kafka.bootstrap, dead_letters, again)
    produce(kafka.bootstrap, dead_letters, letters(4, tag="fresh"))  # new dead letters, not this redrive's

    result = move(adapter, topics, uid, cutoff)
    assert (result.moved, result.refailed, result.reached_cutoff) == (0, 3, True)
    review = adapter.review(dead_letters, limit=100, deadline=soon())
    assert review.redriven == {uid: 3}
    # A second redrive does not take them: they carry the first one's mark. (It does take the
    # originals again: Kafka deletes nothing, so they are still in the topic, unmarked.)
    second = str(uuid.uuid4())
    later = adapter.begin(dead_letters, redrive_uid=second)
    assert sum(r.moved for r in redrive(adapter, topics, second, later)) == 10 + 4  # the originals and the fresh ones
    by_second = [headers for *_, headers in read_all(kafka.bootstrap, flow) if headers[REDRIVE_HEADER] == second.encode()]
    assert len(by_second) == 14 and {headers[ATTEMPT_HEADER] for headers in by_second} == {b"1"}  # no copy moved twice


def test_progress_survives_a_new_adapter(kafka: LocalKafka, topics: tuple[str, str]) -> None:
    dead_letters, flow = topics
    produce(kafka.bootstrap, dead_letters, letters(30, tag="m"))
    uid = str(uuid.uuid4())
    first = KafkaDeadLetters(BrokerAddress("kafka", kafka.bootstrap))
    cutoff = first.begin(dead_letters, redrive_uid=uid)
    assert move(first, topics, uid, cutoff, batch=12).moved == 12
    first.close()

    restarted = KafkaDeadLetters(BrokerAddress("kafka", kafka.bootstrap))
    try:
        results = redrive(restarted, topics, uid, Cutoff(cutoff.token, cutoff.depth), batch=12)
    finally:
        restarted.close()
    assert [r.moved for r in results] == [12, 6]
    assert values(kafka, flow) == Counter(f"m{n}".encode() for n in range(30))  # each exactly once


CRASHING_MOVE = textwrap.dedent("""
    import json, os, signal, sys, time
    import kafka
    from flowkeeper.adapters.brokers.kafka import KafkaDeadLetters
    from flowkeeper.domain.dead_letters import BrokerAddress, Cutoff, Selection

    bootstrap, dead_letters, flow, uid, token = sys.argv[1:6]

    def crash(self, *args, **kwargs):  # the commit after the flush: the process dies instead
        os.kill(os.getpid(), signal.SIGKILL)

    kafka.KafkaConsumer.commit = crash
    adapter = KafkaDeadLetters(BrokerAddress("kafka", bootstrap))
    adapter.move(dead_letters, flow, redrive_uid=uid, cutoff=Cutoff(token, 0), selection=Selection(), batch=10,
                 dry_run=False, scan_limit=1000, deadline=time.monotonic() + 30)
    sys.exit("not killed")
""")


def test_a_process_killed_between_flush_and_commit_loses_nothing(kafka: LocalKafka, adapter: KafkaDeadLetters, topics: tuple[str, str]) -> None:
    dead_letters, flow = topics
    produce(kafka.bootstrap, dead_letters, letters(25, tag="m"))
    uid = str(uuid.uuid4())
    cutoff = adapter.begin(dead_letters, redrive_uid=uid)

    child = subprocess.run(
        [sys.executable, "-c", CRASHING_MOVE, kafka.bootstrap, dead_letters, flow, uid, cutoff.token],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert depth(kafka.bootstrap, flow) == 10  # flushed: on the broker before the crash
    assert set(committed(kafka.bootstrap, group_of(uid), dead_letters).values()) == {None}  # never committed

    results = redrive(adapter, topics, uid, cutoff, batch=10)  # the operator, restarted

    assert sum(r.moved for r in results) == 25
    moved = values(kafka, flow)
    assert set(moved) == {f"m{n}".encode() for n in range(25)}  # nothing lost
    duplicates = sum(count - 1 for count in moved.values())
    assert duplicates == 10 and max(moved.values()) == 2  # at most the one batch, once


# ------------------------------------------------------------------------------------- errors


def test_a_missing_topic_is_a_configuration_error(adapter: KafkaDeadLetters, topics: tuple[str, str]) -> None:
    dead_letters, flow = topics
    with pytest.raises(ConfigurationError) as missing_dlt:
        adapter.review("no-such-topic", limit=10, deadline=soon())
    assert missing_dlt.value.reason == "DeadLetterTopicNotFound"
    cutoff = adapter.begin(dead_letters, redrive_uid="u")
    with pytest.raises(ConfigurationError) as missing_flow:
        adapter.move(dead_letters, "no-such-flow", redrive_uid="u", cutoff=cutoff, selection=ANY, batch=1,
                     dry_run=False, scan_limit=10, deadline=soon())
    assert missing_flow.value.reason == "TopicNotFound"


def test_an_unreachable_broker_is_transient_and_bounded() -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    broker = KafkaDeadLetters(BrokerAddress("kafka", address, username="someone", password="s3cr3t-value"), timeout=2)
    started = time.monotonic()
    with pytest.raises(TransientError) as error:
        broker.review("orders.dlq", limit=10, deadline=soon())
    assert time.monotonic() - started < 10
    assert address in str(error.value) and "s3cr3t" not in str(error.value) and "someone" not in str(error.value)
    broker.close()


def test_sasl_plain_with_the_right_credentials_and_the_wrong_ones(kafka: LocalKafka, topics: tuple[str, str]) -> None:
    dead_letters, _ = topics
    produce(kafka.bootstrap, dead_letters, letters(3))
    right = KafkaDeadLetters(BrokerAddress("kafka", kafka.sasl_bootstrap, username=kafka.sasl_username, password=kafka.sasl_password))
    try:
        assert right.review(dead_letters, limit=10, deadline=soon()).examined == 3
    finally:
        right.close()
    wrong = KafkaDeadLetters(BrokerAddress("kafka", kafka.sasl_bootstrap, username=kafka.sasl_username, password="not-it"), timeout=2)
    with pytest.raises((TransientError, ConfigurationError)) as error:
        wrong.review(dead_letters, limit=10, deadline=soon())
    assert kafka.sasl_bootstrap in str(error.value) and "not-it" not in str(error.value)
    wrong.close()


def test_a_broker_that_stops_midway_is_transient_and_the_adapter_recovers(topics: tuple[str, str]) -> None:
    broker = LocalKafka().start()
    try:
        create_topic(broker.bootstrap, "dlq", partitions=1)
        produce(broker.bootstrap, "dlq", letters(4))
        adapter = KafkaDeadLetters(BrokerAddress("kafka", broker.bootstrap), timeout=2)
        assert adapter.review("dlq", limit=10, deadline=soon()).examined == 4
        broker.stop()
        with pytest.raises(TransientError):
            adapter.review("dlq", limit=10, deadline=soon())
        broker.start()
        assert adapter.review("dlq", limit=10, deadline=soon()).examined == 4
        adapter.close()
    finally:
        broker.close()


def test_a_recreated_topic_loses_the_cutoff(kafka: LocalKafka, adapter: KafkaDeadLetters, topics: tuple[str, str]) -> None:
    dead_letters, _ = topics
    produce(kafka.bootstrap, dead_letters, letters(9))
    cutoff = adapter.begin(dead_letters, redrive_uid="u")
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        admin.delete_topics([dead_letters])
        deadline = soon()
        while time.monotonic() < deadline:
            try:
                create_topic(kafka.bootstrap, dead_letters, partitions=3)
                break
            except Exception:  # noqa: BLE001 - the deletion is still under way
                time.sleep(0.2)
    finally:
        admin.close()
    fresh = KafkaDeadLetters(BrokerAddress("kafka", kafka.bootstrap))  # no cached metadata of the old topic
    try:
        with pytest.raises(CutoffLost):
            move(fresh, topics, "u", cutoff)
        with pytest.raises(CutoffLost):
            move(fresh, topics, "u", Cutoff("not json", 0))
    finally:
        fresh.close()


# ------------------------------------------------------------------------------------- through the operator


@pytest.mark.cluster
def test_the_operator_reviews_a_kafka_dead_letter_topic_and_dry_runs_a_redrive(kafka, topics, cluster, namespace, run_operator) -> None:
    dlt, topic = topics
    produce(kafka.bootstrap, dlt, letters(4, reason="bad currency", tag="a") + letters(2, error_class="code", reason="NPE", tag="b"))
    cluster.kubectl("create", "deployment", "payments", "-n", namespace, "--image=example/consumer:1", "--replicas=1")
    flow = {"apiVersion": "flowkeeper.io/v1alpha1", "kind": "IntegrationFlow", "metadata": {"name": "payments"},
            "spec": {"scaleTargetRef": {"name": "payments"},
                     "source": {"broker": "kafka", "topic": topic, "consumerGroup": "payments", "deadLetterTopic": dlt,
                                "connection": {"address": kafka.bootstrap}}}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(flow))
    run_operator("-n", namespace, "--dead-letter-review-interval=5", *(f"--allowed-broker={host}" for host in kafka.bootstrap.split(",")))

    def status(kind: str, name: str) -> dict:
        return json.loads(cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout).get("status") or {}

    deadline = time.monotonic() + 60
    while not (status("iflow", "payments").get("deadLetters") or {}).get("examined") and time.monotonic() < deadline:
        time.sleep(1)
    review = status("iflow", "payments")["deadLetters"]
    assert (review["depth"], review["byClass"]) == (6, {"code": 2, "data": 4}), review
    assert {r["reason"]: r["count"] for r in review["byReason"]} == {"bad currency": 4, "NPE": 2}

    dry = {"apiVersion": "flowkeeper.io/v1alpha1", "kind": "DeadLetterRedrive", "metadata": {"name": "look"},
           "spec": {"flowRef": {"name": "payments"}, "classes": ["data"], "dryRun": True}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(dry))
    deadline = time.monotonic() + 60
    while status("dlr", "look").get("phase") != "Succeeded" and time.monotonic() < deadline:
        time.sleep(1)
    looked = status("dlr", "look")
    assert (looked.get("phase"), looked.get("wouldMove"), looked.get("moved")) == ("Succeeded", 4, 0), looked
    assert depth(kafka.bootstrap, topic) == 0, "a dry run moves nothing"
