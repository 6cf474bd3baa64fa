"""Kubernetes label selectors (`kubectl get -l` syntax), matched in the operator: `--selector` makes
one replica set serve only the flows whose labels match, so a very large install runs several shards.

kopf watches a resource whole (no server-side selector), so every shard sees every flow's events and
keeps only its own. The grammar is the API server's for label selectors: requirements separated by
commas, each `key`, `!key`, `key=value`, `key==value`, `key!=value`, `key in (a,b)` or
`key notin (a,b)`. `!=` and `notin` also match objects without the key, as on the API server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?"
_KEY = rf"(?:{_PREFIX}/)?{_NAME}"
_VALUE = rf"(?:{_NAME})?"  # label values may be empty

_EXISTS = re.compile(rf"\s*(?P<neg>!?)\s*(?P<key>{_KEY})\s*")
_EQUALITY = re.compile(rf"\s*(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})\s*")
_SET = re.compile(rf"\s*(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)\s*")


class SelectorError(ValueError):
    """A selector the API server would refuse; the message names the requirement."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # exists, !exists, =, !=, in, notin
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # != and notin


@dataclass(frozen=True)
class LabelSelector:
    text: str
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


EVERYTHING = LabelSelector("", ())


def parse(text: str) -> LabelSelector:
    """The selector in `text`; an empty one selects everything. Raises SelectorError."""
    if not text.strip():
        return EVERYTHING
    return LabelSelector(text.strip(), tuple(_requirement(part) for part in _split(text)))


def _split(text: str) -> list[str]:
    """Requirements are separated by commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _requirement(part: str) -> Requirement:
    if m := _SET.fullmatch(part):
        if not m["values"].strip():
            raise SelectorError(f"{part.strip()!r}: {m['op']} needs at least one value")
        values = [v.strip() for v in m["values"].split(",")]
        bad = [v for v in values if not re.fullmatch(_VALUE, v)]
        if bad:
            raise SelectorError(f"{part.strip()!r}: not label values: {', '.join(repr(v) for v in bad)}")
        return Requirement(m["key"], m["op"], frozenset(values))
    if m := _EQUALITY.fullmatch(part):
        return Requirement(m["key"], "!=" if m["op"] == "!=" else "=", frozenset({m["value"]}))
    if m := _EXISTS.fullmatch(part):
        return Requirement(m["key"], "!exists" if m["neg"] else "exists")
    raise SelectorError(
        f"{part.strip() or '(empty)'!r} is not a label selector requirement "
        "(key, !key, key=value, key!=value, key in (a,b), key notin (a,b))"
    )
