"""The consumer program: `python -m examples.consumer`, configured by CONSUMER_* environment
variables or mounted files (examples/consumer/settings.py, README.md). It serves /metrics from the
start, consumes until SIGTERM (or SIGINT), then stops consuming, puts the messages it holds back in
the queue, and exits 0."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping

import pika
from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

from examples.consumer.errors import ConfigurationError
from examples.consumer.handling import MessageHandler, Work
from examples.consumer.loop import Backoff, ConsumeLoop, Session
from examples.consumer.metrics import ConventionMetrics
from examples.consumer.settings import ConsumerSettings, ReportingSettings, load_check

log = logging.getLogger("examples.consumer")

EXIT_SETTINGS = 2  # the reporting settings are wrong: nothing could be reported


def session_from(environ: Mapping[str, str], metrics: ConventionMetrics) -> Session:
    """A session from the settings as they are now (a mounted file may have changed since the last)."""
    settings = ConsumerSettings.from_environment(environ)
    check = load_check(settings.check) if settings.check else None
    parameters = pika.ConnectionParameters(
        host=settings.host, port=settings.port, virtual_host=settings.vhost,
        credentials=pika.PlainCredentials(settings.username, settings.password),
        connection_attempts=1,  # the loop retries, counting every failure
        socket_timeout=10, blocked_connection_timeout=60,
    )
    work = Work(seconds=settings.seconds_per_message, cpu_seconds=settings.cpu_seconds_per_message)
    handler = MessageHandler(metrics, work=work, check=check, dead_letter_queue=settings.dead_letter_queue)
    return Session(parameters, settings.queue, handler, prefetch=settings.prefetch)


def main(environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # The loop logs every failure once, with its class; pika would add its own lines and tracebacks.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    try:
        reporting = ReportingSettings.from_environment(environ)
    except ConfigurationError as error:
        log.error("cannot start: %s", error)
        return EXIT_SETTINGS
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, resident memory: the pod's own view
    metrics = ConventionMetrics(reporting.integration, reporting.namespace, registry)
    server, server_thread = start_http_server(reporting.metrics_port, addr=reporting.metrics_address, registry=registry)
    log.info("serving /metrics on %s:%d", reporting.metrics_address, reporting.metrics_port)

    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        log.info("%s: finishing the message in hand, then stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    loop = ConsumeLoop(lambda: session_from(environ, metrics), metrics, stopping,
                       Backoff(reporting.backoff_initial, reporting.backoff_max), idle_wakeup=0.5,
                       name=reporting.integration)
    loop.run()
    server.shutdown()
    server_thread.join(timeout=5)
    log.info("stopped")
    return 0
