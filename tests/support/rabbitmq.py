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
import os
import secrets
import shutil
import subprocess
import tempfile
import urllib.request
import weakref
from pathlib import Path

import pika
import pika.exceptions

from tests.support.processes import Process, free_port, wait_until

# The scripts themselves, not the Debian wrapper in /usr/sbin (see the module doc).
DEFAULT_SCRIPTS_DIR = Path("/usr/lib/rabbitmq/bin")
PLUGINS = ("rabbitmq_management", "rabbitmq_prometheus")
LOOPBACK = "127.0.0.1"
LOOPBACK_ERLANG = "{127,0,0,1}"


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


def _cleanup(processes: list[Process], workdir: Path) -> None:
    for process in processes:  # the broker first: epmd must outlive the node registered in it
        process.stop(timeout=30)
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
        self._finalizer = weakref.finalize(self, _cleanup, [self.broker, self.epmd], self.workdir)
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
        """Stops the broker (SIGTERM: a clean shutdown), then epmd. Data stays until close()."""
        self.broker.stop(timeout=30)
        self.epmd.stop()

    def close(self) -> None:
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
    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        if dead_letter_queue:
            channel.queue_declare(dead_letter_queue, durable=True)
            arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead_letter_queue}
        channel.queue_declare(queue, durable=True, arguments=arguments)
    finally:
        connection.close()


def publish(
    parameters: pika.ConnectionParameters,
    queue: str,
    count: int,
    *,
    body: bytes | None = None,
    channel: pika.adapters.blocking_connection.BlockingChannel | None = None,
) -> int:
    """Publishes `count` messages to `queue` and returns how many the broker confirmed: all of them,
    or an exception. Publisher confirms make the count exact, which the "no message lost" check needs.
    Pass an open, confirming `channel` (see `confirming_channel`) to publish in batches without
    reconnecting."""
    if channel is None:
        connection = pika.BlockingConnection(parameters)
        try:
            return publish(parameters, queue, count, body=body, channel=confirming_channel(connection))
        finally:
            connection.close()
    for number in range(count):
        channel.basic_publish("", queue, body if body is not None else b"message %d" % number, mandatory=True)
    return count


def confirming_channel(connection: pika.BlockingConnection) -> pika.adapters.blocking_connection.BlockingChannel:
    """A channel whose basic_publish returns once the broker has the message, and raises
    UnroutableError (mandatory, no such queue) or NackError otherwise."""
    channel = connection.channel()
    channel.confirm_delivery()
    return channel


def depth(parameters: pika.ConnectionParameters, queue: str) -> int:
    """Messages ready in `queue` (a passive declare: exact and immediate, unlike the statistics, which
    lag by up to collect_statistics_interval). Messages delivered and not yet acked are not counted."""
    connection = pika.BlockingConnection(parameters)
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def purge(parameters: pika.ConnectionParameters, queue: str) -> int:
    connection = pika.BlockingConnection(parameters)
    try:
        return connection.channel().queue_purge(queue).method.message_count
    finally:
        connection.close()
