"""The batched signals pass: every flow's signals, per server, in one pass."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flowkeeper.adapters.prometheus.answers import _UNREACHABLE, QueryProblem, assemble, classify, index_result
from flowkeeper.adapters.prometheus.queries import FlowTarget, Presets, Query, Read, flow_reads, promql_duration, queries_of
from flowkeeper.adapters.prometheus.servers import (
    _SECRET_REASONS,
    QueryClient,
    SecretReader,
    ServerSettings,
    _default_client,
    _SecretProblem,
)
from flowkeeper.api.v1alpha1 import PrometheusServer, SecretKeyRef
from flowkeeper.domain.errors import ErrorClass, FlowkeeperError
from flowkeeper.domain.signals import FlowSignals, SignalsFailure

log = logging.getLogger("flowkeeper.prometheus")


@dataclass
class PassResult:
    signals: dict[str, FlowSignals]  # per key, for flows whose pass worked (single signals may be None)
    failures: dict[str, SignalsFailure]  # per key, when nothing could be read for that flow
    # (reasons: PrometheusUnavailable, PrometheusUnauthorized, PrometheusQueryFailed, SecretNotFound, ...)
    queries: int  # Prometheus HTTP queries made in this pass
    seconds: float



SECRET_CACHE_SECONDS = 60.0  # how long a Secret read for a flow's own server is reused
IDLE_CLIENT_SECONDS = 600.0  # a flow's own server unused this long has its HTTP session closed


def _close(client: QueryClient) -> None:
    getattr(client, "close", lambda: None)()



class PrometheusSignals:
    """The batched signals pass. `collect()` is synchronous (the operator runs it in a thread) and one
    pass runs at a time; it never raises."""

    def __init__(
        self,
        url: str,
        *,
        headers: dict | None = None,
        ca_file: str | None = None,
        timeout: float = 5.0,
        rate_window: str = "1m",
        clock: Callable[[], float] = time.time,
        secret_reader: SecretReader | None = None,
        client_factory: Callable[[ServerSettings, float], QueryClient] = _default_client,
    ) -> None:
        self.default_server = ServerSettings(url=url, headers=tuple(sorted((headers or {}).items())), verify=ca_file or True)
        self.timeout = timeout
        self.presets = Presets(rate_window)
        self.clock = clock
        self.secret_reader = secret_reader
        self._client_factory = client_factory
        self._clients: dict[ServerSettings, QueryClient] = {}
        self._client_used: dict[ServerSettings, float] = {}
        self._secrets: dict[tuple[str, str, str], tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._ca_dir: str | None = None
        self._finalizer: weakref.finalize | None = None

    def close(self) -> None:
        """Closes the HTTP sessions and removes the CA files written for flows' own servers."""
        for client in self._clients.values():
            _close(client)
        self._clients.clear()
        self._client_used.clear()
        if self._finalizer is not None:
            self._finalizer()

    def collect(self, flows: Sequence[FlowTarget]) -> PassResult:
        started = time.monotonic()
        with self._lock:
            now = self.clock()
            result = PassResult(signals={}, failures={}, queries=0, seconds=0.0)
            groups: dict[ServerSettings, list[FlowTarget]] = {}
            for flow in flows:
                try:
                    groups.setdefault(self._server_of(flow), []).append(flow)
                except _SecretProblem as problem:
                    result.failures[flow.key] = problem.failure
                except Exception as exc:  # noqa: BLE001 - e.g. the CA file cannot be written
                    result.failures[flow.key] = SignalsFailure(ErrorClass.transient, "PrometheusClientError", str(exc))
            for settings, members in groups.items():
                try:
                    self._collect_group(settings, members, now, result)
                except Exception as exc:  # noqa: BLE001 - a bug here must cost one pass, not the operator's loop
                    log.exception("signals pass failed", extra={"server": settings.url})
                    for flow in members:
                        if flow.key not in result.signals:
                            result.failures.setdefault(flow.key, SignalsFailure(ErrorClass.transient, "PrometheusClientError", str(exc)))
            self._forget_idle_clients()
            self._forget_expired_secrets()
        result.seconds = time.monotonic() - started
        log.debug(
            "signals pass",
            extra={"flows": len(flows), "failed": len(result.failures), "queries": result.queries, "seconds": round(result.seconds, 3)},
        )
        return result

    # --- one server

    def _collect_group(self, settings: ServerSettings, flows: list[FlowTarget], now: float, result: PassResult) -> None:
        reads: dict[str, list[Read]] = {}
        for flow in flows:
            try:
                reads[flow.key] = flow_reads(flow, self.presets)
            except Exception as exc:  # noqa: BLE001 - a spec the CRD should have refused must not stop the pass
                result.failures[flow.key] = SignalsFailure(ErrorClass.configuration, "InvalidSpec", f"cannot build its queries: {exc}")
        answers, asked = self._ask(settings, queries_of(reads.values()), now)
        result.queries += asked
        failed: dict[str, int] = {}
        for key, flow_reads_ in reads.items():
            outcome = assemble(flow_reads_, answers, now, from_flow_server=settings.from_flow)
            if isinstance(outcome, SignalsFailure):
                result.failures[key] = outcome
                failed[outcome.reason] = failed.get(outcome.reason, 0) + 1
            else:
                result.signals[key] = outcome
        for reason, count in failed.items():  # one line per cause, not one per flow: an outage hits them all
            log.warning("signals of %d flows not read: %s", count, reason, extra={"server": settings.url, "reason": reason})

    def _ask(self, settings: ServerSettings, queries: list[Query], now: float) -> tuple[dict[Query, Any], int]:
        """Runs the queries; each answer is a result or a QueryProblem. Once the server cannot be
        reached, the remaining queries are not sent: each would wait for the same timeout."""
        client = self._client(settings)
        params = {"time": f"{now:.3f}", "timeout": promql_duration(self.timeout)}  # one instant per pass
        answers: dict[Query, Any] = {}
        asked = 0
        unreachable: QueryProblem | None = None
        for query in queries:
            if unreachable is not None:
                answers[query] = unreachable
                continue
            if query.requires is not None and isinstance(answers.get(query.requires), QueryProblem):
                answers[query] = None  # its base failed and says why; nothing more to learn here
                continue
            asked += 1
            try:
                result = client.custom_query(query.promql, params=params)
                # A batched answer is indexed once here, then looked up by every flow that reads it.
                answers[query] = result if query.is_override else index_result(result, query.by)
            except Exception as exc:  # noqa: BLE001 - every failure is classified, none escapes the pass
                problem = classify(exc)
                answers[query] = problem
                if isinstance(exc, _UNREACHABLE):
                    unreachable = problem
                if not query.is_override:
                    log.warning("query %s failed: %s", query.kind, problem.message, extra={"server": settings.url})
        return answers, asked

    def _client(self, settings: ServerSettings) -> QueryClient:
        if settings not in self._clients:
            self._clients[settings] = self._client_factory(settings, self.timeout)
        self._client_used[settings] = time.monotonic()
        return self._clients[settings]

    def _forget_idle_clients(self) -> None:
        # A server no flow has used for a while (spec changed, flow deleted) should not keep a session
        # open. Not "unused in this pass": a pass may serve only the flows that are due.
        idle_since = time.monotonic() - IDLE_CLIENT_SECONDS
        for settings in [s for s, used in self._client_used.items() if used < idle_since and s != self.default_server]:
            del self._client_used[settings]
            _close(self._clients.pop(settings))

    def _forget_expired_secrets(self) -> None:
        if self._secrets:
            now = time.monotonic()
            self._secrets = {key: entry for key, entry in self._secrets.items() if entry[0] > now}

    # --- a flow's own server

    def _server_of(self, flow: FlowTarget) -> ServerSettings:
        server: PrometheusServer | None = flow.spec.metrics.server
        if server is None:
            return self.default_server
        headers: dict[str, str] = {}
        auth = None
        verify: str | bool = True
        if server.bearer_token_secret is not None:
            headers["Authorization"] = f"Bearer {self._secret(flow, server.bearer_token_secret).strip()}"
        if server.basic_auth_secret is not None:
            auth = (
                self._secret(flow, SecretKeyRef(name=server.basic_auth_secret, key="username")),
                self._secret(flow, SecretKeyRef(name=server.basic_auth_secret, key="password")),
            )
        if server.ca_secret is not None:
            verify = self._ca_file(self._secret(flow, server.ca_secret))
        return ServerSettings(server.address, tuple(sorted(headers.items())), auth, verify, from_flow=True)

    def _secret(self, flow: FlowTarget, ref: SecretKeyRef) -> str:
        where = f"Secret {flow.namespace}/{ref.name} key {ref.key!r}"
        if self.secret_reader is None:
            raise _SecretProblem(SignalsFailure(ErrorClass.transient, "SecretsUnavailable", f"{where}: the operator reads no Secrets"))
        cache_key = (flow.namespace, ref.name, ref.key)
        cached = self._secrets.get(cache_key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            value = self.secret_reader(flow.namespace, ref)
            # Cached for a while: a GET per flow and pass would throttle the API server at scale.
            self._secrets[cache_key] = (time.monotonic() + SECRET_CACHE_SECONDS, value)
            return value
        except FlowkeeperError as exc:
            if exc.error_class == ErrorClass.configuration:
                # NotFound / Forbidden / a missing key: the flow points at a Secret it cannot use.
                reason = exc.reason if exc.reason.startswith("Secret") else _SECRET_REASONS.get(exc.reason, "SecretNotFound")
                raise _SecretProblem(SignalsFailure(ErrorClass.configuration, reason, f"{where}: {exc}")) from exc
            raise _SecretProblem(SignalsFailure(exc.error_class, exc.reason, f"{where}: {exc}")) from exc
        except LookupError as exc:
            raise _SecretProblem(SignalsFailure(ErrorClass.configuration, "SecretNotFound", f"{where}: not found")) from exc
        except Exception as exc:  # noqa: BLE001 - an API hiccup is not the flow's fault
            raise _SecretProblem(SignalsFailure(ErrorClass.transient, "SecretUnreadable", f"{where}: {exc}")) from exc

    def _ca_file(self, pem: str) -> str:
        """requests verifies against a file: each distinct CA is written once, removed on close()."""
        if self._ca_dir is None:
            self._ca_dir = tempfile.mkdtemp(prefix="flowkeeper-ca-")
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._ca_dir, True)
        path = f"{self._ca_dir}/{hashlib.sha256(pem.encode()).hexdigest()[:16]}.pem"
        try:
            with open(path, "x") as out:
                out.write(pem)
        except FileExistsError:
            pass
        return path

