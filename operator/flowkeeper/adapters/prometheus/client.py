"""Prometheus' instant-query API over HTTP, with a deadline for the WHOLE answer.

A socket timeout bounds one read, not an answer: a server (or a proxy) that trickles a byte every
two seconds never trips it. So each query gets a watchdog that shuts the socket down at the deadline,
which ends any read blocked on it, and the body is read in pieces with the deadline checked between
them. The `timeout=` sent to Prometheus is below the client's, so Prometheus gives up (and says so)
before the client does.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import threading
import time
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

from flowkeeper.adapters.prometheus.answers import read_answer
from flowkeeper.adapters.prometheus.promql import promql_duration
from flowkeeper.adapters.prometheus.servers import ServerSettings

_CHUNK = 65536


class QueryClient(Protocol):
    def query(self, promql: str, *, at: float, deadline: float) -> dict[str, Any]:
        """The answer's `data` ({resultType, result}) of `promql` evaluated at unix time `at`; raises
        a QueryProblem, or a transport error (OSError, http.client.HTTPException), by `deadline`
        (time.monotonic())."""
        ...

    def close(self) -> None: ...


def close_client(client: QueryClient) -> None:
    getattr(client, "close", lambda: None)()  # test doubles may have none


def server_timeout(budget: float) -> float:
    """The `timeout=` parameter for a query the client waits `budget` seconds for: a margin below it,
    so that Prometheus' own "query timed out" arrives before the client stops listening."""
    return budget - min(1.0, budget * 0.2)


class _Watchdog:
    """Shuts the socket down when the deadline passes: a blocked read returns at once."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self.fired = False
        self._sock = sock
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed

    def cancel(self) -> None:
        self._timer.cancel()


class HttpQueryClient:
    """One kept-alive HTTP(S) connection to one Prometheus; one query at a time (a pass is sequential)."""

    def __init__(self, settings: ServerSettings) -> None:
        parts = urlsplit(settings.url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname or "", parts.port
        self._path = parts.path.rstrip("/") + "/api/v1/query"
        self._context: ssl.SSLContext | None = None
        if self._https:
            self._context = ssl.create_default_context(cafile=settings.verify if isinstance(settings.verify, str) else None)
            if settings.verify is False:
                self._context.check_hostname = False
                self._context.verify_mode = ssl.CERT_NONE
        self._headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json", "User-Agent": "flowkeeper"}
        self._headers.update(dict(settings.headers))
        if settings.auth is not None:
            user, password = settings.auth
            self._headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._connection: http.client.HTTPConnection | None = None

    def query(self, promql: str, *, at: float, deadline: float) -> dict[str, Any]:
        reused = self._connection is not None
        try:
            return self._query(promql, at, deadline)
        except ConnectionError:  # refused, reset, or closed by the server (RemoteDisconnected)
            self._drop()
            if not reused or time.monotonic() >= deadline:
                raise
            # A kept-alive connection the server had closed while idle: one try on a fresh one.
            return self._query(promql, at, deadline)

    def close(self) -> None:
        self._drop()

    def _query(self, promql: str, at: float, deadline: float) -> dict[str, Any]:
        budget = deadline - time.monotonic()
        if budget <= 0:
            raise TimeoutError("no time left for the query")
        body = urlencode({"query": promql, "time": f"{at:.3f}", "timeout": promql_duration(max(server_timeout(budget), 0.001))})
        try:
            connection = self._connect(budget)
            assert connection.sock is not None
            connection.sock.settimeout(budget)
            watchdog = _Watchdog(connection.sock, budget)
            try:
                connection.request("POST", self._path, body, self._headers)
                response = connection.getresponse()
                chunks = []
                while chunk := response.read1(_CHUNK):
                    chunks.append(chunk)
                    if time.monotonic() >= deadline:
                        watchdog.fired = True
                        break
                # Read to its end: closing the response frees the connection for the next query.
                response.close()
            except (OSError, http.client.HTTPException):
                if watchdog.fired:
                    raise TimeoutError(f"no whole answer within {budget:.3g}s") from None
                raise
            finally:
                watchdog.cancel()
            if watchdog.fired:  # cut off at the deadline: what was read is not the whole answer
                raise TimeoutError(f"no whole answer within {budget:.3g}s")
        except BaseException:
            self._drop()  # a connection in an unknown state is never reused
            raise
        if response.will_close:
            self._drop()
        return read_answer(response.status, b"".join(chunks))

    def _connect(self, budget: float) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._https:
                connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=budget, context=self._context
                )
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=budget)
            connection.connect()
            self._connection = connection
        return self._connection

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
