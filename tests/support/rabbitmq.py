"""A real RabbitMQ broker (the Debian package, 3.10) for the tests and the demo, with
rabbitmq_management and rabbitmq_prometheus, everything on 127.0.0.1 and free ports:

    with LocalRabbitMQ() as broker:
        declare_queue(broker.parameters, "orders", dead_letter_queue="orders.dlq")
        publish(broker.parameters, "orders", 500)
        depth(broker.parameters, "orders")                    # 500
        LocalPrometheus(targets=[broker.prometheus_scrape_target])  # serves rabbitmq_queue_messages_ready

Each instance is a node of its own: its own folder (mnesia, logs, config, enabled_plugins, Erlang
cookie), node name, AMQP, distribution, epmd, management and Prometheus ports. So several brokers
(parallel test sessions, the demo next to `make test`) never meet, and none touches /etc/rabbitmq or
/var/lib/rabbitmq.

How it runs, and why:
- The scripts in /usr/lib/rabbitmq/bin are called directly. The Debian wrapper /usr/sbin/rabbitmq-server
  switches to the `rabbitmq` user when started as root, and that user cannot enter our private temp
  folder; the scripts themselves run as whoever calls them, root or not.
- epmd is started by us, in front of the broker, on its own port. Left to Erlang, epmd is spawned
  as a daemon in a session of its own: it would escape the broker's process group and outlive it.
  Started as a processes.Process it dies with the test run like every other program.
- Prometheus serves per-object metrics on its default path (`prometheus.return_per_object_metrics`):
  the default /metrics aggregates queues away, and with this setting a plain scrape target (no
  metrics_path) gives `rabbitmq_queue_messages_ready{vhost, queue}`, what the operator reads.
- `collect_statistics_interval = 1000`: queue figures are at most a second old (default: 5 s).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable
from pathlib import Path

import pika

from tests.support.processes import Process, free_port, wait_until

# The scripts themselves, not the Debian wrapper in /usr/sbin (see the module doc).
DEFAULT_SCRIPTS_DIR = Path("/usr/lib/rabbitmq/bin")
PLUGINS = ("rabbitmq_management", "rabbitmq_prometheus")
LOOPBACK = "127.0.0.1"
LOOPBACK_ERLANG = "{127,0,0,1}"
# Persistent, like the orders of a real flow: they survive a restart of the broker (stop(), start()).
PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)


def scripts_dir() -> Path:
    """Where rabbitmq-server and the CLI tools are: FLOWKEEPER_RABBITMQ_BIN, else the Debian place."""
    folder = Path(os.environ.get("FLOWKEEPER_RABBITMQ_BIN", DEFAULT_SCRIPTS_DIR))
    if not os.access(folder / "rabbitmq-server", os.X_OK):
        raise FileNotFoundError(
            f"rabbitmq-server not found in {folder}: install the Debian package `rabbitmq-server` "
            "(scripts/setup.sh does), or point FLOWKEEPER_RABBITMQ_BIN at the folder of its scripts"
        )
    return folder


def _find_epmd() -> str:
    found = shutil.which("epmd")
    if found is None:
        raise FileNotFoundError("epmd not found: it comes with the Debian package `erlang-base`")
    return found


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat): with the pid, an identity
    that a recycled pid cannot fake. None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # the name may hold spaces and parentheses


def _process_tree(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        started = _start_time(pid)
        if started is not None:
            tree.add((pid, started))
            todo.extend(children.get(pid, ()))
    return tree


def _stop_with_descendants(process: Process, *, graceful: bool) -> None:
    """Stops the process group, then whatever the program started outside it. Erlang's port helpers
    (erl_child_setup, inet_gethost, the disk monitor's shell) run in sessions of their own: they leave
    by themselves once the VM is gone, but not always at once, and "stopped" must mean gone."""
    if process.popen is None:
        return
    tree = _process_tree(process.popen.pid)
    if not graceful and process.running:
        os.killpg(process.popen.pid, signal.SIGKILL)
    process.stop(timeout=30)
    deadline = time.monotonic() + 5
    while (alive := {(pid, t) for pid, t in tree if _start_time(pid) == t}) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid, _ in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _cleanup(broker: Process, epmd: Process, workdir: Path) -> None:
    # The data goes away with the folder: no need for a clean shutdown, which takes about 6 s (5 of
    # them waiting inside the stop of the `rabbit` application, whatever the broker holds).
    _stop_with_descendants(broker, graceful=False)
    epmd.stop()  # after the broker: epmd must outlive the node registered in it
    shutil.rmtree(workdir, ignore_errors=True)


class LocalRabbitMQ:
    """One broker node in a temp folder; `start()` blocks until AMQP and Prometheus answer."""

    def __init__(self, *, name: str | None = None) -> None:
        self.scripts = scripts_dir()
        self.node_name = f"{name or 'flowkeeper-' + secrets.token_hex(4)}@localhost"
        self.amqp_port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.management_port, self.prometheus_port = free_port(), free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="flowkeeper-rabbitmq-"))
        self._write_files()
        self.epmd = Process("epmd", [_find_epmd(), "-port", str(self.epmd_port), "-address", LOOPBACK], self.workdir, self.env)
        # Logs go to stdout ("-"), so the process log is what wait_until shows when start-up fails.
        self.broker = Process("rabbitmq", [str(self.scripts / "rabbitmq-server")], self.workdir, self.env)
        # Backstops for a run that dies before close(): at exit, or when this object goes away.
        self._finalizer = weakref.finalize(self, _cleanup, self.broker, self.epmd, self.workdir)
        atexit.register(self._finalizer)

    def _write_files(self) -> None:
        (self.workdir / "home").mkdir()
        cookie = self.workdir / "home" / ".erlang.cookie"  # Erlang reads $HOME/.erlang.cookie
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)  # Erlang refuses a cookie others can read
        (self.workdir / "enabled_plugins").write_text(f"[{','.join(PLUGINS)}].\n")
        (self.workdir / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq/rabbitmq-env.conf
        (self.workdir / "rabbitmq.conf").write_text(
            "\n".join([
                f"listeners.tcp.default = {LOOPBACK}:{self.amqp_port}",
                f"management.tcp.ip = {LOOPBACK}",
                f"management.tcp.port = {self.management_port}",
                f"prometheus.tcp.ip = {LOOPBACK}",
                f"prometheus.tcp.port = {self.prometheus_port}",
                "prometheus.return_per_object_metrics = true",
                "collect_statistics_interval = 1000",
                "",
            ])
        )

    @property
    def env(self) -> dict[str, str]:
        """The environment of the broker, also right for its CLI tools (see `ctl`)."""
        work = self.workdir
        # The node's own distribution listener, and the one each CLI call starts, on loopback only.
        loopback_dist = f"-kernel inet_dist_use_interface {LOOPBACK_ERLANG}"
        return {
            "HOME": str(work / "home"),
            "RABBITMQ_CONF_ENV_FILE": str(work / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(work / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(work / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(work / "mnesia"),
            "RABBITMQ_LOG_BASE": str(work / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_PID_FILE": str(work / "rabbitmq.pid"),
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": loopback_dist,
            "RABBITMQ_CTL_ERL_ARGS": loopback_dist,
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": LOOPBACK,
        }

    # --- addresses

    @property
    def parameters(self) -> pika.ConnectionParameters:
        return pika.ConnectionParameters(
            host=LOOPBACK, port=self.amqp_port, credentials=pika.PlainCredentials("guest", "guest"),
            connection_attempts=1, blocked_connection_timeout=30,
        )

    @property
    def url(self) -> str:
        """The AMQP URL (guest may log in from loopback only, which is where everything runs)."""
        return f"amqp://guest:guest@{LOOPBACK}:{self.amqp_port}/%2F"

    @property
    def management_url(self) -> str:
        return f"http://{LOOPBACK}:{self.management_port}"

    def queue_stats(self, queue: str) -> dict:
        """The management API's view of `queue` (vhost /): `messages` (ready and unacked) and
        `message_stats`, the broker's cumulative counts (publish, ack, ...), which outlive the
        channels that made them. Both lag by up to collect_statistics_interval (1 s here)."""
        request = urllib.request.Request(f"{self.management_url}/api/queues/%2F/{urllib.parse.quote(queue, safe='')}",
                                         headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    @property
    def prometheus_scrape_target(self) -> str:
        """host:port, as a Prometheus static target."""
        return f"{LOOPBACK}:{self.prometheus_port}"

    prometheus_metrics_path = "/metrics"  # per-object, see the module doc

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.prometheus_scrape_target}{self.prometheus_metrics_path}"

    # --- lifecycle

    def start(self, timeout: float = 120) -> LocalRabbitMQ:
        try:
            if not self.epmd.running:
                self.epmd.start()
            if not self.broker.running:
                self.broker.start()
            wait_until(self._ready, timeout, "rabbitmq", self.broker)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        # Plugins start before the AMQP listener, but check both: the test needs both.
        pika.BlockingConnection(self.parameters).close()
        with urllib.request.urlopen(self.prometheus_url, timeout=5) as response:
            return response.status == 200

    @property
    def running(self) -> bool:
        return self.broker.running

    def stop(self) -> None:
        """A clean shutdown (SIGTERM; about 6 s), then epmd; nothing of it left running. The data
        stays: start() again brings the same node back with its durable queues and messages."""
        _stop_with_descendants(self.broker, graceful=True)
        self.epmd.stop()

    def close(self) -> None:
        """Stops everything at once (SIGKILL: the data goes too) and removes the folder."""
        self._finalizer()

    def __enter__(self) -> LocalRabbitMQ:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ctl(self, *args: str, tool: str = "rabbitmqctl", timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Runs a CLI tool against this node, e.g. ctl("list_queues") or ctl("ping", tool="rabbitmq-diagnostics").
        Each call starts an Erlang VM (about a second of CPU): for diagnostics, not for polling."""
        return subprocess.run(
            [str(self.scripts / tool), "-q", *args], env={**os.environ, **self.env},
            capture_output=True, text=True, timeout=timeout, check=True,
        )


# ------------------------------------------------------------------------ queues, through AMQP (pika)


def declare_queue(parameters: pika.ConnectionParameters, queue: str, *, dead_letter_queue: str | None = None) -> None:
    """A durable queue; with `dead_letter_queue`, messages rejected without requeue go there (through
    the default exchange, whose routing key is the queue name)."""
    arguments = None
    with pika.BlockingConnection(parameters) as connection:
        channel = connection.channel()
        if dead_letter_queue:
            channel.queue_declare(dead_letter_queue, durable=True)
            arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead_letter_queue}
        channel.queue_declare(queue, durable=True, arguments=arguments)


class Publisher:
    """An AMQP connection that publishes persistent messages to one queue, in transactions: a
    committed batch is on the broker, so `published` is exact (the "no message lost" check needs it),
    at about 5 000 messages/s here where one confirm per message manages 600."""

    def __init__(self, parameters: pika.ConnectionParameters, queue: str, *, batch: int = 500) -> None:
        self.queue, self.batch, self.published = queue, batch, 0
        self._connection = pika.BlockingConnection(parameters)
        try:
            self._channel = self._connection.channel()
            # A message to a missing queue would vanish without an error (the default exchange drops
            # what it cannot route), and the count would lie: refuse a missing queue up front.
            self._channel.queue_declare(queue, passive=True)
            self._channel.tx_select()
        except BaseException:
            self._connection.close()
            raise

    def send(self, count: int, body: Callable[[int], bytes] | None = None) -> int:
        """Publishes `count` messages (body(n) for the n-th of this publisher, from 0) and returns
        `count` once all are committed."""
        make_body = body or (lambda number: b"message %d" % number)
        for offset in range(0, count, self.batch):
            size = min(self.batch, count - offset)
            for number in range(self.published, self.published + size):
                self._channel.basic_publish("", self.queue, make_body(number), PERSISTENT)
            self._channel.tx_commit()
            self.published += size
        return count

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish(parameters: pika.ConnectionParameters, queue: str, count: int, body: Callable[[int], bytes] | None = None) -> int:
    """Publishes `count` persistent messages to the existing `queue`, as fast as the broker takes them."""
    with Publisher(parameters, queue) as publisher:
        return publisher.send(count, body)


def depth(parameters: pika.ConnectionParameters, queue: str) -> int:
    """Messages ready in `queue` (a passive declare: exact and immediate, unlike the statistics, which
    lag by up to collect_statistics_interval). Messages delivered and not yet acked are not counted."""
    with pika.BlockingConnection(parameters) as connection:
        return connection.channel().queue_declare(queue, passive=True).method.message_count


def purge(parameters: pika.ConnectionParameters, queue: str) -> int:
    """Empties `queue`; returns how many messages it dropped."""
    with pika.BlockingConnection(parameters) as connection:
        return connection.channel().queue_purge(queue).method.message_count
