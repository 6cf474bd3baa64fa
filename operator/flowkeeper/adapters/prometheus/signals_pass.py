"""The batched signals pass: every flow's signals, one batch per Prometheus server, within deadlines."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from flowkeeper.adapters.prometheus.answers import QueryProblem, assemble, classify, looked_up, single_value
from flowkeeper.adapters.prometheus.client import HttpQueryClient, QueryClient, close_client
from flowkeeper.adapters.prometheus.queries import (
    FlowTarget,
    Presets,
    Query,
    Read,
    ReadsCache,
    error_rate_promql,
    overrides_of,
    queries_of,
)
from flowkeeper.adapters.prometheus.slow_asks import Asked, SlowAsks
from flowkeeper.adapters.prometheus.servers import (
    AllowedServers,
    FlowServers,
    FlowProblem,
    SecretReader,
    ServerSettings,
    TokenFile,
    redact,
    settings_for,
)
from flowkeeper.config import OperatorConfig
from flowkeeper.domain.errors import ErrorClass
from flowkeeper.domain.signals import OVERRIDE_FIELDS, FlowSignals, SignalsFailure
from flowkeeper.observability import metrics

log = logging.getLogger("flowkeeper.prometheus")

NO_CONSUMER_SERIES = "the consumers report no flowkeeper_messages_processed_total"
IDLE_CLIENT_SECONDS = 600.0  # a flow's own server unused this long has its HTTP connection closed
PASS_TIMEOUT_FACTOR = 3  # a pass's deadline, in query timeouts, unless set
# A warning that holds (Prometheus down: every pass, and the read back-off makes many small ones) is
# logged once per this many seconds, with how often it held meanwhile: an outage at 1,000 flows
# logged 3,229 lines a minute.
REPEAT_LOG_SECONDS = 60.0
TIMED_OUT_KEEPS = 8  # a slow signal timing out again and again is asked at least every 8 keep times (4 min)


@dataclass
class PassResult:
    signals: dict[str, FlowSignals]  # per key, for flows whose pass worked (single signals may be None)
    failures: dict[str, SignalsFailure]  # per key, when nothing could be read for that flow
    # (reasons: PrometheusUnavailable, PrometheusTimeout, PrometheusUnauthorized, SecretNotFound,
    # MetricsServerNotAllowed, ...)
    queries: int  # Prometheus HTTP queries made in this pass
    seconds: float


@dataclass(frozen=True)
class Kept:
    """A slow signal's answer (or time-out), served until `until` (monotonic)."""

    until: float
    answer: Any
    timeouts: int = 0  # time-outs in a row, when `answer` is one

    def serves_meanwhile(self, now: float, keep_for: float) -> bool:
        """An answer serves one more keep time while its next ask is on its way (a time-out never)."""
        return not self.timeouts and now < self.until + keep_for

    def forget_at(self, keep_for: float) -> float:
        """When it leaves memory: an answer once it can serve no more; a time-out a while later, so
        that the next one counts as one more in a row."""
        return self.until + (TIMED_OUT_KEEPS if self.timeouts else 1) * keep_for


class PrometheusSignals:
    """The batched signals pass. `collect()` is synchronous (the operator runs it in a thread) and one
    pass runs at a time; it never raises.

    Tenant safety: a flow may name its own Prometheus (spec.metrics.server) only when it is the
    operator's own or one of `allowed_servers`, and may run its own PromQL (spec.metrics.<signal>)
    only with `allow_overrides`: both are checked before any Secret is read or request sent."""

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        bearer_token_file: str | None = None,
        ca_file: str | None = None,
        timeout: float = 5.0,
        pass_timeout: float | None = None,
        rate_window: str = "1m",
        allowed_servers: Sequence[str] = (),
        allow_overrides: bool = False,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        keep_answers: bool = True,
        secret_reader: SecretReader | None = None,
        client_factory: Callable[[ServerSettings], QueryClient] = HttpQueryClient,
    ) -> None:
        self._default_base = settings_for(url, headers, verify=ca_file or True)
        self.default_server = self._default_base
        self._token_file = TokenFile(bearer_token_file) if bearer_token_file else None
        self.timeout = timeout
        self.pass_timeout = pass_timeout or PASS_TIMEOUT_FACTOR * timeout
        self.presets = Presets(rate_window)
        self._reads = ReadsCache(self.presets)
        self.allowed = AllowedServers(url, allowed_servers)
        self.allow_overrides = allow_overrides
        self.clock = clock
        self.monotonic = monotonic  # how old a kept answer is
        self.keep_answers = keep_answers  # False: every query asked every pass (Query.keep_for ignored)
        # (server, query) -> Kept: the answers of slow-moving signals, kept for reuse (a time-out too).
        self._kept: dict[tuple[ServerSettings, Query], Kept] = {}
        self._flow_servers = FlowServers(secret_reader)
        self._client_factory = client_factory
        self._slow_asks = SlowAsks(client_factory, monotonic=monotonic)
        self._clients: dict[ServerSettings, QueryClient] = {}
        self._client_used: dict[ServerSettings, float] = {}
        self._lock = threading.Lock()
        self._warned: dict[tuple[str, ...], tuple[float, int]] = {}  # what -> (logged at, times since, not logged)

    @classmethod
    def from_config(cls, config: OperatorConfig, *, secret_reader: SecretReader | None = None) -> PrometheusSignals:
        """The pass as the operator's options (`flowkeeper run`) describe it."""
        assert config.prometheus_url is not None
        return cls(
            config.prometheus_url,
            bearer_token_file=config.prometheus_bearer_token_file,
            ca_file=config.prometheus_ca_file,
            timeout=config.prometheus_timeout,
            pass_timeout=config.prometheus_pass_timeout,
            rate_window=config.rate_window,
            allowed_servers=config.allowed_prometheus_servers,
            allow_overrides=config.allow_metrics_overrides,
            secret_reader=secret_reader,
        )

    def close(self) -> None:
        """Closes the HTTP connections and removes the CA files written for flows' own servers."""
        for client in self._clients.values():
            close_client(client)
        self._clients.clear()
        self._client_used.clear()
        self._flow_servers.close()

    def collect(self, flows: Sequence[FlowTarget]) -> PassResult:
        started = time.monotonic()
        with self._lock:
            now = self.clock()
            deadline = started + self.pass_timeout
            result = PassResult(signals={}, failures={}, queries=0, seconds=0.0)
            groups: dict[ServerSettings, list[FlowTarget]] = {}
            default = self._refresh_default_server()
            for asked in self._slow_asks.take_finished():  # slow queries answered since the last pass
                self._record_slow(asked)
            for flow in flows:
                try:
                    groups.setdefault(self._server_of(flow, default), []).append(flow)
                except FlowProblem as problem:
                    result.failures[flow.key] = problem.failure
                except Exception as exc:  # noqa: BLE001 - e.g. the CA file cannot be written
                    result.failures[flow.key] = SignalsFailure(ErrorClass.transient, "PrometheusClientError", str(exc))
            for settings, members in groups.items():
                try:
                    self._collect_group(settings, members, now, deadline, result)
                except Exception:  # noqa: BLE001 - a bug here must cost one pass, not the operator's loop
                    self._log(logging.ERROR, "signals pass failed: %s", traceback.format_exc(), server=settings.url)
                    for flow in members:
                        if flow.key not in result.signals:
                            result.failures.setdefault(flow.key, SignalsFailure(ErrorClass.transient, "PrometheusClientError", "the signals pass failed"))
            self._forget_idle_clients()
            self._forget_old_answers()
            self._flow_servers.forget_expired()
            self._redact_result(result)
        result.seconds = time.monotonic() - started
        log.debug(
            "signals pass",
            extra={"flows": len(flows), "failed": len(result.failures), "queries": result.queries, "seconds": round(result.seconds, 3)},
        )
        return result

    # --- which server, and may the flow use it

    def _refresh_default_server(self) -> ServerSettings | SignalsFailure:
        if self._token_file is None:
            return self.default_server
        try:
            token = self._token_file.token()
        except OSError as exc:
            return SignalsFailure(ErrorClass.transient, "PrometheusTokenUnreadable", str(exc))
        headers = {**dict(self._default_base.headers), "Authorization": f"Bearer {token}"}
        settings = replace(self._default_base, headers=tuple(sorted(headers.items())))
        if settings != self.default_server:
            # A rotated token: the connection made with the old one is closed now, not when idle.
            old = self._clients.pop(self.default_server, None)
            if old is not None:
                close_client(old)
            self._client_used.pop(self.default_server, None)
            self.default_server = settings
        return settings

    def _server_of(self, flow: FlowTarget, default: ServerSettings | SignalsFailure) -> ServerSettings:
        server = flow.spec.metrics.server
        if server is not None and not self.allowed.allows(server.address):
            raise FlowProblem(
                SignalsFailure(
                    ErrorClass.configuration,
                    "MetricsServerNotAllowed",
                    f"spec.metrics.server.address {server.address} is not a Prometheus server this operator may query: "
                    "its operator option --allowed-prometheus-server (FLOWKEEPER_ALLOWED_PROMETHEUS_SERVERS) must list it",
                )
            )
        overrides = overrides_of(flow.spec)
        if overrides and not self.allow_overrides:
            fields = ", ".join(OVERRIDE_FIELDS[signal] for signal in overrides)
            raise FlowProblem(
                SignalsFailure(
                    ErrorClass.configuration,
                    "MetricsOverridesNotAllowed",
                    f"{fields}: this operator runs no PromQL of flows; "
                    "it needs the option --allow-metrics-overrides (FLOWKEEPER_ALLOW_METRICS_OVERRIDES=true)",
                )
            )
        if server is not None:
            return self._flow_servers.settings_of(flow.namespace, server)
        if isinstance(default, SignalsFailure):
            raise FlowProblem(default)
        return default

    # --- one server

    def _collect_group(self, settings: ServerSettings, flows: list[FlowTarget], now: float, deadline: float, result: PassResult) -> None:
        reads: dict[str, list[Read]] = {}
        for flow in flows:
            try:
                reads[flow.key] = self._reads.reads(flow)
            except Exception as exc:  # noqa: BLE001 - a spec the CRD should have refused must not stop the pass
                result.failures[flow.key] = SignalsFailure(ErrorClass.configuration, "InvalidSpec", f"cannot build its queries: {exc}")
        answers, asked = self._ask(settings, queries_of(reads.values()), now, deadline)
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
            self._warn(("not read", settings.url, reason), "signals of %d flows not read: %s", count, reason, server=settings.url)

    def _ask(self, settings: ServerSettings, queries: list[Query], now: float, deadline: float) -> tuple[dict[Query, Any], int]:
        """Runs the queries; each answer is a result or a QueryProblem. Each query has until the
        earlier of its own timeout and the pass's deadline for its whole answer. A query that times
        out costs only itself; once the server cannot be connected to, the remaining queries are not
        sent (each would fail the same way); queries the pass's deadline leaves no time for are
        answered `not asked`, so that their flows say so. Slow signals' queries are asked in threads
        of their own (`_ask_slow`)."""
        client = self._client(settings)
        answers: dict[Query, Any] = {}
        asked = 0
        unreachable: QueryProblem | None = None
        not_asked = 0
        for query in queries:
            base = answers.get(query.requires) if query.requires is not None else None
            if query.requires is not None and isinstance(base, QueryProblem):
                answers[query] = None  # its base failed and says why; nothing more to learn here
                continue
            if unreachable is not None:
                answers[query] = unreachable
                continue
            kept = self._kept.get((settings, query))
            if kept is not None and self.monotonic() < kept.until:
                answers[query] = kept.answer  # a slow signal asked moments ago: not asked again
                continue
            promql = query.promql
            if query.promql_over_scalar is not None and isinstance(base, dict) and base.get("resultType") == "scalar":
                promql = query.promql_over_scalar
            slow = query.keep_for > 0 and self.keep_answers
            meanwhile = kept.answer if slow and kept is not None and kept.serves_meanwhile(self.monotonic(), query.keep_for) else None
            if meanwhile is not None and time.monotonic() >= deadline:
                answers[query] = meanwhile  # asked again by a pass with time left
                continue
            if time.monotonic() >= deadline:
                answers[query] = QueryProblem(QueryProblem.NOT_ASKED, f"not asked: the signals pass reached its deadline ({self.pass_timeout:g}s)")
                metrics.PROMETHEUS_QUERY_ERRORS.labels(kind=query.metric_kind, problem=QueryProblem.NOT_ASKED).inc()
                not_asked += 1
                continue
            if slow:
                in_thread = self._ask_slow(settings, query, promql, meanwhile, now, deadline)
                if in_thread is not None:
                    answers[query], sent = in_thread
                    asked += sent  # its failures are its own connection's, not the pass's
                    continue
                # The server has as many slow queries on their way as it may: asked here, as any query.
            asked += 1
            started = time.monotonic()
            whole_timeout = started + self.timeout <= deadline  # not cut short by the pass's deadline
            try:
                data = client.query(promql, at=now, deadline=min(started + self.timeout, deadline))
                answers[query] = looked_up(query, data)
                if slow:
                    self._kept[(settings, query)] = Kept(self.monotonic() + query.keep_for, answers[query])
            except Exception as exc:  # noqa: BLE001 - every failure is classified, none escapes the pass
                problem = classify(exc)
                answers[query] = problem
                if problem.kind == QueryProblem.TIMEOUT and whole_timeout and slow:
                    self._keep_timeout(settings, query, self.monotonic())
                self._count_failure(settings, query, problem)
                if problem.connection:
                    unreachable = problem
            finally:
                metrics.PROMETHEUS_QUERY_SECONDS.labels(kind=query.metric_kind).observe(time.monotonic() - started)
        if not_asked:
            self._warn(("not asked", settings.url), "%d queries not asked: the signals pass reached its deadline (%gs)", not_asked, self.pass_timeout, server=settings.url)
        return answers, asked

    def _ask_slow(self, settings: ServerSettings, query: Query, promql: str, meanwhile: Any, now: float, deadline: float) -> tuple[Any, int] | None:
        """A slow signal's answer for this pass, asked in a thread of its own (slow_asks.py) with the
        longer of the query timeout and its keep time: (answer, queries sent). Meanwhile its last
        answer serves one more keep time; without one, the pass waits as long as for any query, and
        the signal is unanswered until the ask ends. None: the server has no room for one more ask."""
        asked = self._slow_asks.running(settings, query)
        sent = 0
        if asked is None:
            asked = self._slow_asks.start(
                settings, query, promql, at=now, asked_at=self.monotonic(), deadline=time.monotonic() + max(self.timeout, query.keep_for)
            )
            if asked is None:
                return None
            sent = 1
            if meanwhile is None:
                asked.done.wait(max(0.0, min(self.timeout, deadline - time.monotonic())))
        if asked.done.is_set():
            self._slow_asks.take(asked)
            self._record_slow(asked)
            if not isinstance(asked.answer, QueryProblem) or meanwhile is None:
                return asked.answer, sent
        if meanwhile is not None:
            return meanwhile, sent
        waited = self.monotonic() - asked.asked_at
        return QueryProblem(QueryProblem.TIMEOUT, f"Prometheus has not answered yet (asked {waited:.0f}s ago)"), sent

    def _record_slow(self, asked: Asked) -> None:
        """A slow query's answer is kept for its keep time from when it was asked; a time-out waits out
        its back-off; any other failure is asked again on the next pass (the last answer, if any,
        serving meanwhile)."""
        query = asked.query
        metrics.PROMETHEUS_QUERY_SECONDS.labels(kind=query.metric_kind).observe(asked.seconds)
        if not isinstance(asked.answer, QueryProblem):
            self._kept[(asked.settings, query)] = Kept(asked.asked_at + query.keep_for, asked.answer)
            return
        if asked.answer.kind == QueryProblem.TIMEOUT:
            self._keep_timeout(asked.settings, query, asked.ended_at)
        self._count_failure(asked.settings, query, asked.answer)

    def _keep_timeout(self, settings: ServerSettings, query: Query, timed_out_at: float) -> None:
        """A slow signal too heavy to answer in its whole timeout (the growth subquery at 10,000 flows)
        waits out its keep time like an answer, doubled after each time-out in a row (at most
        TIMED_OUT_KEEPS keep times): asked every pass, it would load the server for nothing."""
        kept = self._kept.get((settings, query))
        in_row = (kept.timeouts if kept is not None else 0) + 1
        wait = query.keep_for * min(2 ** (in_row - 1), TIMED_OUT_KEEPS)
        self._kept[(settings, query)] = Kept(timed_out_at + wait, QueryProblem(QueryProblem.TIMEOUT, "Prometheus did not answer in time"), in_row)

    def _count_failure(self, settings: ServerSettings, query: Query, problem: QueryProblem) -> None:
        metrics.PROMETHEUS_QUERY_ERRORS.labels(kind=query.metric_kind, problem=problem.kind).inc()
        if not query.one_number:
            self._warn(("failed", settings.url, query.kind, problem.kind), "query %s failed: %s", query.kind, problem.message, server=settings.url)

    def _forget_old_answers(self) -> None:
        """Kept answers too old to serve (their flows may be gone, or their server) leave memory."""
        now = self.monotonic()
        for key in [k for k, kept in self._kept.items() if now >= kept.forget_at(k[1].keep_for)]:
            del self._kept[key]

    def _client(self, settings: ServerSettings) -> QueryClient:
        if settings not in self._clients:
            self._clients[settings] = self._client_factory(settings)
        self._client_used[settings] = time.monotonic()
        return self._clients[settings]

    def _forget_idle_clients(self) -> None:
        # A server no flow has used for a while (spec changed, flow deleted) should not keep a
        # connection open. Not "unused in this pass": a pass may serve only the flows that are due.
        idle_since = time.monotonic() - IDLE_CLIENT_SECONDS
        for settings in [s for s, used in self._client_used.items() if used < idle_since and s != self.default_server]:
            del self._client_used[settings]
            close_client(self._clients.pop(settings))

    # --- credentials stay out of logs and messages

    def _secrets(self) -> list[str]:
        values = self._flow_servers.secret_values()
        for settings in (self.default_server, *self._clients):
            values.extend(value.removeprefix("Bearer ") for _, value in settings.headers)
            if settings.auth is not None:
                values.extend(settings.auth)
        return values

    def _warn(self, what: tuple[str, ...], message: str, *args: Any, server: str) -> None:
        """A warning, unless the same one was logged less than REPEAT_LOG_SECONDS ago (then counted)."""
        now = self.monotonic()
        for key in [k for k, (at, _) in self._warned.items() if now - at >= 10 * REPEAT_LOG_SECONDS]:
            del self._warned[key]  # e.g. a flow's own server that is gone: bounded memory
        logged_at, unlogged = self._warned.get(what, (None, 0))
        if logged_at is not None and now - logged_at < REPEAT_LOG_SECONDS:
            self._warned[what] = (logged_at, unlogged + 1)
            return
        self._warned[what] = (now, 0)
        if unlogged:
            message, args = f"{message} (and %d times more in the %.0fs since it was last logged)", (*args, unlogged, now - logged_at)
        self._log(logging.WARNING, message, *args, server=server)

    def _log(self, level: int, message: str, *args: Any, server: str) -> None:
        secrets = self._secrets()
        log.log(level, message, *(redact(str(a), secrets) if isinstance(a, str) else a for a in args), extra={"server": redact(server, secrets)})

    def _redact_result(self, result: PassResult) -> None:
        secrets = self._secrets()
        for key, failure in result.failures.items():
            result.failures[key] = replace(failure, message=redact(failure.message, secrets))
        for key, signals in result.signals.items():
            if signals.unread or signals.invalid_queries:
                result.signals[key] = replace(
                    signals,
                    unread={k: redact(v, secrets) for k, v in signals.unread.items()},
                    invalid_queries={k: redact(v, secrets) for k, v in signals.invalid_queries.items()},
                )

    # --- one flow's error rate, for a redrive's "is the cause fixed?"

    def error_rate(self, flow: FlowTarget, classes: Sequence[str], window_s: float) -> tuple[float | None, str | None]:
        """Errors/s of `classes` that the flow's consumers counted over the window, from the flow's
        Prometheus; (None, why) when that cannot be told. Never raises."""
        integration = flow.spec.source.integration or flow.name
        promql = error_rate_promql(flow.namespace, integration, classes, window_s)
        try:
            # Under the pass's lock: a server's HTTP connection serves one request at a time.
            with self._lock:
                settings = self._server_of(flow, self._refresh_default_server())
                data = self._client(settings).query(promql, at=self.clock(), deadline=time.monotonic() + self.timeout)
            value = single_value(data)
        except FlowProblem as problem:
            return None, problem.failure.message
        except Exception as exc:  # noqa: BLE001 - classified, never raised
            return None, redact(classify(exc).message, self._secrets())
        return (value, None) if value is not None else (None, NO_CONSUMER_SERIES)
