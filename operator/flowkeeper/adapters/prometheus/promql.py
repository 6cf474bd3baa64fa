"""PromQL text: durations, label matchers, and a flow's own query made safe to embed in another.
Pure: strings in, strings out."""

from __future__ import annotations

import re

# Prometheus' label-name syntax (the CRD checks spec.source.metricLabels against the same).
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

Labels = tuple[tuple[str, str], ...]  # (name, value) pairs, sorted: hashable, one spelling per set


def promql_duration(seconds: float) -> str:
    """3600 -> '1h', 90 -> '90s', 1.5 -> '1500ms': the shortest PromQL spelling, so equal windows
    written differently ('60m', '1h') make one query."""
    millis = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"


def string_literal(value: str) -> str:
    """A double-quoted PromQL string that means exactly `value`. Backslash and quote are escaped;
    control characters are written as \\xNN, because a raw newline ends a PromQL string with an error."""
    out = []
    for char in value:
        if char in '\\"':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        elif 0xD800 <= ord(char) <= 0xDFFF:
            raise ValueError(f"label value {value!r} is not valid UTF-8")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def matchers(labels: Labels) -> str:
    """`name="value", ...` exact matchers; names are checked, values escaped."""
    for name, _ in labels:
        if not LABEL_NAME.match(name):
            raise ValueError(f"spec.source.metricLabels: {name!r} is not a Prometheus label name")
    return ", ".join(f"{name}={string_literal(value)}" for name, value in labels)


def selector(metric: str, labels: Labels) -> str:
    """`metric{matchers}`, or the bare name when there are none (as the docs show the presets)."""
    return f"{metric}{{{matchers(labels)}}}" if labels else metric


def as_labels(mapping: dict[str, str] | None) -> Labels:
    return tuple(sorted((mapping or {}).items()))


def _string_end(text: str, start: int) -> int:
    """Index just past the string literal that opens at `start` ("...", '...' with backslash escapes,
    `...` raw); len(text) when it is not closed (Prometheus will say so about the user's own query)."""
    quote, i = text[start], start + 1
    while i < len(text):
        if text[i] == "\\" and quote != "`":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    return len(text)


def strip_comments(promql: str) -> str:
    """PromQL without its `#` comments (to the end of the line); a `#` inside a string literal is
    part of the string, e.g. `{path="/a#b"}`."""
    out: list[str] = []
    i = 0
    while i < len(promql):
        char = promql[i]
        if char in "\"'`":
            end = _string_end(promql, i)
            out.append(promql[i:end])
            i = end
        elif char == "#":
            newline = promql.find("\n", i)
            i = len(promql) if newline < 0 else newline
        else:
            out.append(char)
            i += 1
    return "".join(out)


def embeddable(promql: str) -> str:
    """A flow's own query as an operand of a bigger expression: without comments (one would swallow
    the closing parenthesis) and on its own lines (a comment the stripping missed still ends there)."""
    return "\n" + strip_comments(promql).strip() + "\n"


def as_vector(promql: str) -> str:
    """An instant vector from a query that answered a scalar: subqueries and comparisons need one."""
    return f"vector({promql})"
