"""Prometheus answers -> one flow's signals, and every failure classified."""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException

from flowkeeper.adapters.prometheus.queries import Query, Read
from flowkeeper.domain.errors import ErrorClass
from flowkeeper.domain.signals import FlowSignals, SignalsFailure


class QueryProblem(Exception):
    """A query that gave no usable answer, already classified."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # one of the constants below
        self.message = message

    UNAVAILABLE = "unavailable"  # connection refused, timeout, 5xx, 429: Prometheus cannot answer now
    INVALID = "invalid"  # Prometheus refused the query itself (400 bad_data, 422 execution, many series)
    UNAUTHORIZED = "unauthorized"  # 401, 403
    FAILED = "failed"  # anything else (404 from a wrong address, not Prometheus's JSON, ...)


# Transport failures: refused, reset, timed out, or the answer cut off mid-way.
_UNREACHABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
_STATUS_MESSAGE = re.compile(r"HTTP Status Code (\d+) \((.*)\)\Z", re.S)


def classify(exc: Exception) -> QueryProblem:
    """prometheus-api-client raises requests' exceptions for transport errors, and for any non-200 a
    PrometheusApiClientException whose only payload is the text 'HTTP Status Code <n> (<body repr>)':
    the status and Prometheus's errorType are read back from that text."""
    if isinstance(exc, QueryProblem):
        return exc
    if isinstance(exc, _UNREACHABLE):
        return QueryProblem(QueryProblem.UNAVAILABLE, f"Prometheus not reachable: {_short(exc)}")
    if isinstance(exc, PrometheusApiClientException):
        match = _STATUS_MESSAGE.match(str(exc))
        if match:
            status = int(match.group(1))
            error_type, error = _error_body(match.group(2))
            text = f"HTTP {status}" + (f" {error_type}: {error}" if error else "")
            if status >= 500 or status in (408, 429):
                return QueryProblem(QueryProblem.UNAVAILABLE, f"Prometheus unavailable: {text}")
            if status in (400, 422) and error_type in ("bad_data", "execution"):
                return QueryProblem(QueryProblem.INVALID, error or text)
            if status in (401, 403):
                return QueryProblem(QueryProblem.UNAUTHORIZED, f"Prometheus refused the credentials: {text}")
            return QueryProblem(QueryProblem.FAILED, f"Prometheus query failed: {text}")
    # requests.JSONDecodeError, KeyError on a body that is not Prometheus's, ...
    return QueryProblem(QueryProblem.FAILED, f"Prometheus query failed: {_short(exc)}")


def _error_body(body_repr: str) -> tuple[str, str]:
    try:
        body = json.loads(ast.literal_eval(body_repr))
        return str(body.get("errorType", "")), str(body.get("error", ""))
    except (ValueError, SyntaxError, TypeError, AttributeError):
        return "", ""


def _short(exc: Exception) -> str:
    # requests nests the urllib3 cause in long reprs; the last part names what happened.
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def index_result(result: Any, by: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """Series of a batched query by their label values. NaN and missing values are left out: absent
    means unknown, and FlowSignals turns it into None."""
    indexed: dict[tuple[str, ...], float] = {}
    for series in result or ():
        value = _number(series.get("value", (None, None))[1])
        if value is not None:
            labels = series.get("metric", {})
            indexed[tuple(labels.get(name, "") for name in by)] = value
    return indexed


def single_value(result: Any) -> float | None:
    """The one number a flow's own query must return; no series -> None; several -> its mistake."""
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        return _number(result[1])  # a scalar: [time, "value"]
    series = list(result or ())
    if len(series) > 1:
        raise QueryProblem(
            QueryProblem.INVALID, f"the query returned {len(series)} series, it must return one number (wrap it in sum(...))"
        )
    return _number(series[0].get("value", (None, None))[1]) if series else None



_UNAVAILABLE_REASONS = {
    QueryProblem.UNAVAILABLE: "PrometheusUnavailable",
    QueryProblem.UNAUTHORIZED: "PrometheusUnauthorized",
    QueryProblem.FAILED: "PrometheusQueryFailed",
    QueryProblem.INVALID: "PrometheusQueryFailed",  # a preset refused: our bug, not the flow's
}


def assemble(reads: list[Read], answers: Mapping[Query, Any], now: float, *, from_flow_server: bool = False) -> FlowSignals | SignalsFailure:
    """One flow's signals from the pass's answers (per query: a batched answer indexed by
    index_result, a flow's own raw result, a QueryProblem, or None when skipped). The flow fails only
    when none of its queries got an answer; otherwise unanswered signals are None, and its own refused
    queries are invalid_queries."""
    values: dict[str, float | None] = {}
    invalid: dict[str, str] = {}
    problems: list[QueryProblem] = []
    for read in reads:
        answer = answers.get(read.query)
        try:
            if isinstance(answer, QueryProblem):
                raise answer
            if answer is None and read.query.requires is not None:
                continue  # skipped: its base override failed
            values[read.signal] = single_value(answer) if read.query.is_override else answer.get(read.key)
        except QueryProblem as problem:
            if read.query.is_override and problem.kind == QueryProblem.INVALID:
                invalid[read.signal] = problem.message
            else:
                problems.append(problem)
    if problems and not values and not invalid:
        return _failure(problems[0], from_flow_server)
    return FlowSignals(observed_at=now, invalid_queries=invalid, **values)


def _failure(problem: QueryProblem, from_flow_server: bool) -> SignalsFailure:
    # Refused credentials are the flow's configuration only when the flow chose them; for the
    # operator's own Prometheus it is the operator's problem, and pausing every flow would be wrong.
    configuration = problem.kind == QueryProblem.UNAUTHORIZED and from_flow_server
    return SignalsFailure(
        ErrorClass.configuration if configuration else ErrorClass.transient,
        _UNAVAILABLE_REASONS[problem.kind],
        problem.message,
    )
