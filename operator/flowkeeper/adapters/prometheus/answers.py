"""Prometheus answers -> one flow's signals, and every failure classified."""

from __future__ import annotations

import http.client
import json
import math
import re
import socket
import ssl
from collections.abc import Mapping
from typing import Any

from flowkeeper.adapters.prometheus.convention import PERCENT_OVERRIDES
from flowkeeper.adapters.prometheus.queries import Query, Read
from flowkeeper.domain.errors import ErrorClass
from flowkeeper.domain.signals import OVERRIDE_FIELDS, FlowSignals, SignalsFailure


class QueryProblem(Exception):
    """A query that gave no usable answer, already classified."""

    def __init__(self, kind: str, message: str, *, connection: bool = False) -> None:
        super().__init__(message)
        self.kind = kind  # one of the constants below
        self.message = message
        # The server cannot be reached at all (refused, reset, no such host, TLS refused): the other
        # queries of the pass would fail the same way, so they are not sent.
        self.connection = connection

    UNAVAILABLE = "unavailable"  # connection refused or reset, 5xx, 429: Prometheus cannot answer now
    TIMEOUT = "timeout"  # no whole answer before the query's deadline (ours, or Prometheus' own timeout)
    NOT_ASKED = "not_asked"  # the pass reached its deadline before this query was sent
    INVALID = "invalid"  # Prometheus refused the query itself (400 bad_data, 422 execution, many series)
    UNAUTHORIZED = "unauthorized"  # 401, 403
    FAILED = "failed"  # anything else (404 from a wrong address, not Prometheus's JSON, ...)


# Failures of the connection itself, not of one query. http.client.RemoteDisconnected is a
# ConnectionResetError; ssl.SSLError covers a certificate that does not verify.
_CONNECTION_ERRORS = (ConnectionError, socket.gaierror, ssl.SSLError)


def classify(exc: BaseException) -> QueryProblem:
    """A transport failure of one query, as a problem. Without a traceback: a problem answers every
    flow of the pass and may be kept for later passes, and a traceback would hold the pass's frames."""
    if isinstance(exc, QueryProblem):
        return exc.with_traceback(None)
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return QueryProblem(QueryProblem.TIMEOUT, f"Prometheus did not answer in time: {_short(exc)}")
    if isinstance(exc, _CONNECTION_ERRORS):
        return QueryProblem(QueryProblem.UNAVAILABLE, f"Prometheus not reachable: {_short(exc)}", connection=True)
    if isinstance(exc, (http.client.HTTPException, OSError)):
        # An answer cut off mid-way, a malformed status line: this query's problem, not the server's.
        return QueryProblem(QueryProblem.UNAVAILABLE, f"Prometheus answer broken off: {_short(exc)}")
    return QueryProblem(QueryProblem.FAILED, f"Prometheus query failed: {_short(exc)}")


# Execution errors that come from Prometheus' limits (--query.max-samples, remote read limits), not from
# the query text.
_RESOURCE_LIMIT = re.compile(r"too many samples|would load too many|limit exceeded|exceeded the limit|resource exhausted|out of memory", re.I)


def read_answer(status: int, body: bytes) -> dict[str, Any]:
    """The `data` of a /api/v1/query answer ({resultType, result}), or the QueryProblem it is."""
    error_type, error, data = "", "", None
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            error_type, error, data = str(parsed.get("errorType", "")), str(parsed.get("error", "")), parsed.get("data")
    except ValueError:
        parsed = None
    if status == 200 and isinstance(data, dict) and parsed.get("status") == "success":
        return data
    text = f"HTTP {status}" + (f" {error_type}: {error}" if error else "")
    if error_type in ("timeout", "canceled"):  # Prometheus' own `timeout=` parameter ran out
        raise QueryProblem(QueryProblem.TIMEOUT, f"Prometheus gave up on the query: {text}")
    if status == 422 and error_type == "execution" and _RESOURCE_LIMIT.search(error):
        # Prometheus' own limits (too many samples, series, a query that ran out of its resources) say
        # nothing about the query being wrong: the same query answers when the server is less loaded.
        raise QueryProblem(QueryProblem.UNAVAILABLE, f"Prometheus hit a resource limit: {text}")
    if status in (400, 422) and error_type in ("bad_data", "execution"):
        raise QueryProblem(QueryProblem.INVALID, error or text)
    if status in (401, 403):
        raise QueryProblem(QueryProblem.UNAUTHORIZED, f"Prometheus refused the credentials: {text}")
    if status >= 500 or status in (408, 429):
        raise QueryProblem(QueryProblem.UNAVAILABLE, f"Prometheus unavailable: {text}")
    if status == 200:
        raise QueryProblem(QueryProblem.FAILED, "Prometheus query failed: the answer is not Prometheus' JSON")
    raise QueryProblem(QueryProblem.FAILED, f"Prometheus query failed: {text}")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def index_result(data: Mapping[str, Any], by: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """Series of a batched query by their label values. NaN and missing values are left out: absent
    means unknown, and FlowSignals turns it into None."""
    indexed: dict[tuple[str, ...], float] = {}
    for series in data.get("result") or ():
        value = _number((series.get("value") or (None, None))[1])
        if value is not None:
            labels = series.get("metric", {})
            indexed[tuple(labels.get(name, "") for name in by)] = value
    return indexed


def looked_up(query: Query, data: Mapping[str, Any]) -> Any:
    """An answer as the flows look it up: a flow's own one-number query as it came, a batched one
    indexed once by its labels."""
    return data if query.one_number else index_result(data, query.by)


def single_value(data: Mapping[str, Any]) -> float | None:
    """The one number a flow's own query must return; no series -> None; several -> its mistake."""
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return _number(result[1])  # [time, "value"]
    if kind != "vector":
        raise QueryProblem(QueryProblem.INVALID, f"the query returned a {kind}, it must return one number (a scalar or one series)")
    series = list(result or ())
    if len(series) > 1:
        raise QueryProblem(
            QueryProblem.INVALID, f"the query returned {len(series)} series, it must return one number (wrap it in sum(...))"
        )
    return _number(series[0].get("value", (None, None))[1]) if series else None


# ------------------------------------------------------------------------------- answers -> signals

_UNAVAILABLE_REASONS = {
    QueryProblem.UNAVAILABLE: "PrometheusUnavailable",
    QueryProblem.TIMEOUT: "PrometheusTimeout",
    QueryProblem.NOT_ASKED: "PrometheusPassTimeout",
    QueryProblem.UNAUTHORIZED: "PrometheusUnauthorized",
    QueryProblem.FAILED: "PrometheusQueryFailed",
    QueryProblem.INVALID: "PrometheusQueryFailed",  # a preset refused: our bug, not the flow's
}

# Prometheus could not answer (as opposed to refusing the query, or not being Prometheus at all).
_NO_ANSWER = frozenset({QueryProblem.UNAVAILABLE, QueryProblem.TIMEOUT, QueryProblem.NOT_ASKED})

_DERIVED_WORDS = {"queue_growing_seconds": "queue growth", "throughput_baseline": "baseline", "latency_baseline": "baseline"}


def _words(signal: str, own: bool) -> str:
    return OVERRIDE_FIELDS[signal] if own else signal.replace("_", " ")


def describe(read: Read) -> str:
    """The signal in the words of the spec: a user reads the field they wrote, never our names."""
    own = read.query.one_number  # a flow's own query, or one derived from it
    if read.base is not None:
        return f"the {_DERIVED_WORDS.get(read.signal, 'value')} of {_words(read.base, own)}"
    return _words(read.signal, own)


def assemble(reads: list[Read], answers: Mapping[Query, Any], now: float, *, from_flow_server: bool = False) -> FlowSignals | SignalsFailure:
    """One flow's signals from the pass's answers (per query: a batched answer indexed by
    index_result, a flow's own query's data, a QueryProblem, or None when skipped because its base
    failed). The flow fails only when none of its queries got an answer. Otherwise an unanswered
    signal is None and named in `unread`; only the flow's own query text can be `invalid_queries`:
    a derived query (baseline, growth) that fails leaves that signal unknown, never the flow paused."""
    values: dict[str, float | None] = {}
    invalid: dict[str, str] = {}
    unread: dict[str, str] = {}
    problems: list[QueryProblem] = []
    backlog_unanswered: str | None = None
    unanswered: set[str] = set()
    for read in reads:
        answer = answers.get(read.query)
        # A problem is looked at, never raised here: one problem object answers every flow of the pass,
        # and each raise of it would add to its traceback (keeping this frame alive).
        problem = answer if isinstance(answer, QueryProblem) else None
        if problem is None and answer is None:  # not asked: its base has no answer, and says why
            base = _words(read.base, read.query.one_number) if read.base else "its query"
            unread[read.signal] = f"{describe(read)} not computed: {base} has no value"
            if read.base in unanswered:
                unanswered.add(read.signal)
            continue
        if problem is None and not read.query.one_number:
            values[read.signal] = answer.get(read.key)
            continue
        if problem is None:
            try:
                value = single_value(answer)
                own_percent = read.base is None and read.signal in PERCENT_OVERRIDES
                values[read.signal] = value / 100 if own_percent and value is not None else value
                continue
            except QueryProblem as raised:  # this flow's own, fresh each time
                problem = raised
        if read.base is None and read.query.one_number and problem.kind == QueryProblem.INVALID:
            invalid[read.signal] = problem.message
            continue
        unread[read.signal] = f"{describe(read)}: {problem.message}"
        # On the operator's own server, its trouble; a flow's own server or query is the flow's news.
        if problem.kind in _NO_ANSWER and not from_flow_server and not read.query.one_number:
            unanswered.add(read.signal)
        if read.base is None:
            problems.append(problem)
            if read.signal == "queue_depth":
                backlog_unanswered = _UNAVAILABLE_REASONS[problem.kind]
    if problems and not values and not invalid:
        return _failure(problems[0], from_flow_server)
    for read in reads:
        if read.base is not None and values.get(read.base) is None:
            values.pop(read.signal, None)  # a kept answer (signals_pass) must not outlive its base's value
    return FlowSignals(
        observed_at=now, invalid_queries=invalid, unread=unread, backlog_unanswered=backlog_unanswered, unanswered=frozenset(unanswered), **values
    )


def _failure(problem: QueryProblem, from_flow_server: bool) -> SignalsFailure:
    # Refused credentials are the flow's configuration only when the flow chose them; for the
    # operator's own Prometheus it is the operator's problem, and pausing every flow would be wrong.
    configuration = problem.kind == QueryProblem.UNAUTHORIZED and from_flow_server
    return SignalsFailure(
        ErrorClass.configuration if configuration else ErrorClass.transient,
        _UNAVAILABLE_REASONS[problem.kind],
        problem.message,
    )
