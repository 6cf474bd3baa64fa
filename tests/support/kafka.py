"""A real Apache Kafka broker (KRaft, one node that is broker and controller at once) for the tests,
from its release jars on Maven Central, run by the JDK of the machine, everything on 127.0.0.1 and
free ports:

    with LocalKafka() as kafka:
        create_topic(kafka.bootstrap, "orders.dlq", partitions=3)
        produce(kafka.bootstrap, "orders.dlq", [Record(b"k", b"v", {"x-flowkeeper-error-class": "data"})])
        depth(kafka.bootstrap, "orders.dlq")     # 1

How it runs, and why:
- The jars come from `tests/support/kafka/pom.xml` (the broker, `org.apache.kafka:kafka_2.13`, and the
  SLF4J binding its distribution adds), copied once by Maven into a cache folder outside the
  repository keyed by version: `${FLOWKEEPER_CACHE:-${XDG_CACHE_HOME:-~/.cache}/flowkeeper}/kafka-<version>/`.
  `FLOWKEEPER_KAFKA_VERSION` picks another served version. Later runs need no network.
- Each instance has its own folder (config, log dirs, log) and ports: a PLAINTEXT listener, a
  SASL_PLAINTEXT listener with the PLAIN mechanism and one user (`sasl_username`/`sasl_password`), and
  the controller listener; all bound to and advertised on 127.0.0.1.
- The storage is formatted with a fresh random cluster id (KRaft refuses to start unformatted).
- Start-up is kept short: a small heap, the serial collector, the C1 compiler only, one partition for
  the internal topics, no initial rebalance delay. Topics are never created by a client's request
  (`auto.create.topics.enable=false`), so a missing topic is an error a test can see.
- `-XX:-UsePerfData`: the JVM's /tmp/hsperfdata file would stay behind after a SIGKILL.
"""

from __future__ import annotations

import atexit
import base64
import os
import shutil
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from tests.support.cache import cache_root
from tests.support.processes import Process, free_port, wait_until

DEFAULT_VERSION = "4.1.2"
LOOPBACK = "127.0.0.1"
HERE = Path(__file__).resolve().parent / "kafka"
POM = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.properties"
JVM_OPTIONS = (
    "-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData",
    "-Djava.awt.headless=true", "-Dlog4j2.disable.jmx=true",
)


def version() -> str:
    return os.environ.get("FLOWKEEPER_KAFKA_VERSION", DEFAULT_VERSION)


def jars(kafka_version: str | None = None) -> Path:
    """The folder of the broker's jars, resolved by Maven on first use (about 10 s from Central)."""
    kafka_version = kafka_version or version()
    folder = cache_root() / f"kafka-{kafka_version}" / "lib"
    if (folder / ".complete").exists():
        return folder
    mvn = shutil.which("mvn")
    if mvn is None:
        raise FileNotFoundError("mvn not found: the Kafka broker's jars are resolved by Maven (Debian package `maven`)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Copied into a folder of its own, then renamed: a run killed halfway, or a second session
    # resolving at the same time, never leaves a half-filled folder that looks complete.
    staging = Path(tempfile.mkdtemp(prefix="lib-", dir=folder.parent))
    try:
        result = subprocess.run(
            [mvn, "-B", "-q", "-f", str(POM), f"-Dkafka.version={kafka_version}",
             "dependency:copy-dependencies", f"-DoutputDirectory={staging}"],
            capture_output=True, text=True, timeout=600,
        )
        if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            raise RuntimeError(f"resolving Kafka {kafka_version} with Maven failed:\n{result.stdout[-4000:]}{result.stderr[-2000:]}")
        (staging / ".complete").touch()
        try:
            staging.rename(folder)
        except OSError:  # another session got there first
            if not (folder / ".complete").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not found or not os.access(found, os.X_OK):
        raise FileNotFoundError("java not found: the Kafka broker needs a JDK >= 17 (Debian package `openjdk-17-jre-headless`)")
    return found


def _cluster_id(random_bytes=lambda: uuid.uuid4().bytes) -> str:
    """What `kafka-storage.sh random-uuid` prints: 16 random bytes, URL-safe base64 without padding.

    Like Kafka's own Uuid.randomUuid, an id that starts with "-" is drawn again: the storage tool's
    argument parser would take it for an option (one in 64 ids; it failed a CI run).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes()).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _cleanup(broker: Process, workdir: Path) -> None:
    broker.kill()  # the data goes away with the folder: no need for a controlled shutdown
    shutil.rmtree(workdir, ignore_errors=True)


class LocalKafka:
    """One KRaft broker+controller in a temp folder; `start()` blocks until a metadata request succeeds."""

    sasl_username = "flowkeeper"
    sasl_password = "flowkeeper-secret"

    def __init__(self, *, partitions: int = 3) -> None:
        self.lib = jars()
        self.java = java()
        self.partitions = partitions
        self.port, self.sasl_port, self.controller_port = free_port(), free_port(), free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="flowkeeper-kafka-"))
        self.config = self.workdir / "server.properties"
        self._write_config()
        self._served = False  # True once it answered: from then on its ports are its own
        classpath = ["-cp", str(self.lib / "*")]
        options = [*JVM_OPTIONS, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", f"-Dkafka.logs.dir={self.workdir / 'logs'}"]
        self._java = [self.java, *options, *classpath]
        self.broker = Process("kafka", [*self._java, "kafka.Kafka", str(self.config)], self.workdir)
        # Backstops for a run that dies before close(): at exit, or when this object goes away.
        self._finalizer = weakref.finalize(self, _cleanup, self.broker, self.workdir)
        atexit.register(self._finalizer)

    def _write_config(self) -> None:
        user = f'user_{self.sasl_username}="{self.sasl_password}"'
        jaas = f'org.apache.kafka.common.security.plain.PlainLoginModule required {user};'
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{LOOPBACK}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{LOOPBACK}:{self.port},SASL_PLAINTEXT://{LOOPBACK}:{self.sasl_port},"
                         f"CONTROLLER://{LOOPBACK}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self.port},SASL_PLAINTEXT://{LOOPBACK}:{self.sasl_port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas,
            "log.dirs": str(self.workdir / "data"),
            "num.partitions": str(self.partitions),
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "log.flush.interval.messages": str(2**62),  # the page cache is enough for tests
        }
        self.config.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))

    # --- addresses

    @property
    def bootstrap(self) -> str:
        """host:port of the PLAINTEXT listener (no authentication)."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        """host:port of the SASL_PLAINTEXT listener (PLAIN, `sasl_username`/`sasl_password`)."""
        return f"{LOOPBACK}:{self.sasl_port}"

    # --- lifecycle

    def _format(self) -> None:
        if (self.workdir / "data" / "meta.properties").exists():
            return
        result = subprocess.run(
            [*self._java, "kafka.tools.StorageTool", "format", f"--cluster-id={_cluster_id()}", "-c", str(self.config)],
            capture_output=True, text=True, timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"formatting the Kafka storage failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")

    def start(self, timeout: float = 90, *, attempts: int = 3) -> LocalKafka:
        for attempt in range(1, attempts + 1):
            logged = self.broker.log_path.stat().st_size if self.broker.log_path.exists() else 0
            try:
                self._format()
                if not self.broker.running:
                    self.broker.start()
                wait_until(self._ready, timeout, "kafka", self.broker)
                self._served = True
                return self
            except RuntimeError:
                self.stop()
                # A free port is only free until someone takes it: between free_port() and the
                # JVM's bind, any outgoing connection on the machine may get it as its local port.
                # A first start can take other ports (its data is new); a restart keeps its own.
                if self._served or attempt == attempts or b"Address already in use" not in self._log_since(logged):
                    raise
                self.port, self.sasl_port, self.controller_port = free_port(), free_port(), free_port()
                self._write_config()
                shutil.rmtree(self.workdir / "data", ignore_errors=True)
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _log_since(self, offset: int) -> bytes:
        try:
            with open(self.broker.log_path, "rb") as log:
                log.seek(offset)
                return log.read()
        except FileNotFoundError:  # the storage format failed: the broker never ran
            return b""

    def _ready(self) -> bool:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000, bootstrap_timeout_ms=3000)
        try:
            return bool(admin.describe_cluster()["brokers"])
        finally:
            admin.close()

    @property
    def running(self) -> bool:
        return self.broker.running

    def stop(self) -> None:
        """Stops the JVM (SIGTERM, SIGKILL after 20 s); the data stays: start() brings the same broker
        back, with its topics, messages and committed offsets, on the same ports."""
        self.broker.stop(timeout=20)

    def close(self) -> None:
        """Stops everything at once (SIGKILL: the data goes too) and removes the folder."""
        self._finalizer()

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# -------------------------------------------------------------------- topics, through kafka-python


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, str | bytes] = field(default_factory=dict)
    partition: int | None = None


def create_topic(bootstrap: str, topic: str, *, partitions: int = 3) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, records: Iterable[Record]) -> int:
    """Sends the records (acks from the broker, all flushed) and returns how many."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=256 * 1024)
    try:
        futures = [
            producer.send(
                topic, key=record.key, value=record.value, partition=record.partition,
                headers=[(name, value.encode() if isinstance(value, str) else value) for name, value in record.headers.items()],
            )
            for record in records
        ]
        producer.flush(timeout=60)
        for future in futures:
            future.get(timeout=1)  # raises if the broker refused one
        return len(futures)
    finally:
        producer.close(timeout=10)


def end_offsets(bootstrap: str, topic: str) -> dict[int, tuple[int, int]]:
    """partition -> (beginning offset, end offset)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        begins, ends = consumer.beginning_offsets(partitions), consumer.end_offsets(partitions)
        return {tp.partition: (begins[tp], ends[tp]) for tp in partitions}
    finally:
        consumer.close(autocommit=False)


def depth(bootstrap: str, topic: str) -> int:
    """Records in `topic`, all partitions: end minus beginning offsets."""
    return sum(end - begin for begin, end in end_offsets(bootstrap, topic).values())


def read_all(bootstrap: str, topic: str, *, timeout: float = 30) -> list[tuple[int, int, bytes | None, bytes | None, dict[str, bytes]]]:
    """Every record of `topic`: (partition, offset, key, value, headers), read without a group."""
    bounds = end_offsets(bootstrap, topic)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in bounds]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, bounds[tp.partition][0])
        wanted = sum(end - begin for begin, end in bounds.values())
        records: list[tuple[int, int, bytes | None, bytes | None, dict[str, bytes]]] = []
        deadline = time.monotonic() + timeout
        while len(records) < wanted and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend((r.partition, r.offset, r.key, r.value, dict(r.headers or ())) for r in batch)
        if len(records) < wanted:
            raise TimeoutError(f"read {len(records)} of {wanted} records of {topic} within {timeout:.0f}s")
        return sorted(records)
    finally:
        consumer.close(autocommit=False)


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    """partition -> the group's committed offset (None: nothing committed)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: consumer.committed(tp) for tp in partitions}
    finally:
        consumer.close(autocommit=False)
