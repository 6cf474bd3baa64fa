"""A metrics exporter the tests drive: the series it serves (Prometheus text format) are whatever the
test last set. Prometheus scrapes it like any consumer, rabbitmq_prometheus, kafka_exporter, cAdvisor
or kube-state-metrics, so the adapter under test reads real Prometheus answers.

    with MetricsExporter() as exporter:
        exporter.set("rabbitmq_queue_messages_ready", {"vhost": "/", "queue": "orders"}, 42)
        exporter.set_rate("flowkeeper_messages_processed_total", {"integration": "x"}, per_second=5)
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Labels = tuple[tuple[str, str], ...]


@dataclass
class _Series:
    value: float
    per_second: float = 0.0  # grows by this much per second since `since` (counters, growing queues)
    since: float = 0.0

    def now(self) -> float:
        return self.value + self.per_second * (time.monotonic() - self.since)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class MetricsExporter:
    """A threaded HTTP server on 127.0.0.1 and a free port, serving /metrics from a mutable registry."""

    def __init__(self) -> None:
        self._series: dict[str, dict[Labels, _Series]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- the registry

    def set(self, name: str, labels: dict[str, str], value: float) -> None:
        """A series with a fixed value (a gauge, or a counter the test moves by hand)."""
        self._put(name, labels, _Series(float(value)))

    def set_rate(self, name: str, labels: dict[str, str], per_second: float, start: float = 0.0) -> None:
        """A series that grows by `per_second` from `start`: a counter with a known rate(), or a
        backlog that keeps growing."""
        self._put(name, labels, _Series(float(start), float(per_second), time.monotonic()))

    def remove(self, name: str, labels: dict[str, str]) -> None:
        with self._lock:
            self._series.get(name, {}).pop(self._key(labels), None)

    def clear(self) -> None:
        with self._lock:
            self._series.clear()

    def render(self) -> str:
        with self._lock:
            snapshot = {name: dict(series) for name, series in self._series.items()}
        lines = []
        for name, series in snapshot.items():
            for labels, one in series.items():
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.append(f"{name}{{{text}}} {_format_value(one.now())}" if labels else f"{name} {_format_value(one.now())}")
        return "\n".join(lines) + "\n"

    def _put(self, name: str, labels: dict[str, str], series: _Series) -> None:
        with self._lock:
            self._series.setdefault(name, {})[self._key(labels)] = series

    @staticmethod
    def _key(labels: dict[str, str]) -> Labels:
        return tuple(sorted((str(k), str(v)) for k, v in labels.items()))

    # --- the server

    @property
    def target(self) -> str:
        """host:port, as a Prometheus static target."""
        if self._server is None:
            raise RuntimeError("the exporter is not started")
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.target}/metrics"

    def start(self) -> MetricsExporter:
        if self._server is not None:
            return self
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # one line per scrape would drown the test output
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-exporter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> MetricsExporter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
