"""Pure arithmetic of the side-by-side bench (bench.peers.run): percentiles, per-minute rates, the
counters read from Prometheus's and the API server's own /metrics, and KEDA-to-Flowkeeper ratios."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

QUERY_HANDLER_PREFIX = "/api/v1/query"  # /api/v1/query, /api/v1/query_range, /api/v1/query_exemplars
_HANDLER = re.compile(r'handler="([^"]*)"')


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of the values; None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def per_minute(count: float, seconds: float) -> float:
    return round(count * 60 / seconds, 1)


def prometheus_queries(metrics_text: str) -> int:
    """Query requests a Prometheus has answered, from prometheus_http_requests_total in its own
    /metrics: every handler under /api/v1/query (instant, range and exemplar queries)."""
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith("prometheus_http_requests_total{"):
            continue
        handler = _HANDLER.search(line)
        if handler and handler.group(1).startswith(QUERY_HANDLER_PREFIX):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def request_delta(before: Mapping[tuple, int], after: Mapping[tuple, int]) -> dict[tuple, int]:
    """after - before per key, keys that did not move left out."""
    delta = {key: after[key] - before.get(key, 0) for key in after}
    return {key: count for key, count in delta.items() if count}


def request_summary(delta: Mapping[tuple[str, str, str, str], int], seconds: float, write_verbs: Iterable[str], top: int = 8) -> dict:
    """All requests and the writes per minute of a (verb, group, resource, subresource) delta, and
    the busiest keys as 'VERB group/resource/subresource'."""
    writes = set(write_verbs)
    busiest = sorted(delta.items(), key=lambda item: -item[1])[:top]
    return {
        "api_requests_per_minute": per_minute(sum(delta.values()), seconds),
        "api_writes_per_minute": per_minute(sum(c for (verb, *_), c in delta.items() if verb in writes), seconds),
        "api_busiest_per_minute": {
            f"{verb} {'/'.join(p for p in (group or 'core', resource, sub) if p)}": per_minute(c, seconds)
            for (verb, group, resource, sub), c in busiest
        },
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator rounded to 2 significant-ish places; None when either is missing or
    the denominator is 0 (a ratio to nothing says nothing)."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    value = numerator / denominator
    return round(value, 1) if abs(value) >= 10 else round(value, 2)


def lookup(figures: Mapping, path: str):
    """figures['a']['b'] for path 'a.b'; None when a step is missing."""
    value = figures
    for step in path.split("."):
        if not isinstance(value, Mapping) or step not in value:
            return None
        value = value[step]
    return value


# API requests: ratios of the API server's totals (the same baseline in both); the net figures are
# left out, as Flowkeeper's idle net is 0 give or take the baseline's noise.
RATIO_FIGURES = (
    "idle.prometheus_queries_per_minute",
    "idle.api_requests_per_minute",
    "idle.api_writes_per_minute",
    "idle.control_plane_cpu_seconds.kube-apiserver",
    "idle.cpu_seconds_total",
    "idle.rss_mb_total",
    "reaction_seconds.p50",
    "reaction_seconds.p99",
    "burst.seconds",
)


def ratios(by_system: Mapping[str, Mapping], reference: str = "flowkeeper") -> dict[str, dict[str, float | None]]:
    """For every system but the reference: its figure / the reference's, per RATIO_FIGURES."""
    ref = by_system.get(reference)
    if ref is None:
        return {}
    return {
        name: {path: ratio(lookup(figures, path), lookup(ref, path)) for path in RATIO_FIGURES}
        for name, figures in by_system.items() if name != reference
    }
