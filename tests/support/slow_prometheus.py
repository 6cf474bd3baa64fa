"""A Prometheus that is slow on purpose: an HTTP server on 127.0.0.1 that answers /api/v1/query by
asking a real Prometheus, then holds chosen answers back or trickles them out a byte at a time, and
can insist on an Authorization header. What the adapter sees is Prometheus' own answer, late.

    with SlowPrometheus(prometheus.url) as slow:
        slow.slow_down("container_cpu_usage_seconds_total", trickle=2.0)   # a byte every 2 s
        slow.slow_down("", delay=0.5)                                      # every query 0.5 s late
        slow.authorization = "Bearer t0ken"                                # else 401
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class _Rule:
    contains: str
    delay: float = 0.0  # seconds before the answer
    trickle: float | None = None  # seconds between bytes of the body


@dataclass
class Asked:
    query: str
    params: dict[str, str]
    authorization: str | None
    at: float = field(default_factory=time.monotonic)


class SlowPrometheus:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.rules: list[_Rule] = []
        self.authorization: str | None = None  # required header value; None: any
        self.asked: list[Asked] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="slow-prometheus", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def slow_down(self, contains: str, *, delay: float = 0.0, trickle: float | None = None) -> None:
        """Queries whose PromQL contains `contains` ("" for all) answer `delay` seconds late and, with
        `trickle`, one byte every `trickle` seconds."""
        self.rules.append(_Rule(contains, delay, trickle))

    def __enter__(self) -> SlowPrometheus:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _rule(self, query: str) -> _Rule | None:
        return next((rule for rule in self.rules if rule.contains in query), None)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Prometheus

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = self.rfile.read(length).decode()
                self._answer(form)

            def do_GET(self) -> None:
                self._answer(urllib.parse.urlsplit(self.path).query)

            def _answer(self, form: str) -> None:
                params = dict(urllib.parse.parse_qsl(form))
                authorization = self.headers.get("Authorization")
                with outer._lock:
                    outer.asked.append(Asked(params.get("query", ""), params, authorization))
                if outer.authorization is not None and authorization != outer.authorization:
                    self._send(401, b"Unauthorized", None)
                    return
                status, body = self._forward(form)
                rule = outer._rule(params.get("query", ""))
                if rule is not None and rule.delay:
                    time.sleep(rule.delay)
                self._send(status, body, rule.trickle if rule else None)

            def _forward(self, form: str) -> tuple[int, bytes]:
                request = urllib.request.Request(f"{outer.upstream}/api/v1/query", data=form.encode(), method="POST")
                request.add_header("Content-Type", "application/x-www-form-urlencoded")
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        return response.status, response.read()
                except urllib.error.HTTPError as error:
                    return error.code, error.read()

            def _send(self, status: int, body: bytes, trickle: float | None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if trickle is None:
                        self.wfile.write(body)
                        return
                    for i in range(len(body)):
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                        time.sleep(trickle)
                except OSError:  # the client stopped listening: exactly what a deadline does
                    self.close_connection = True

        return Handler
