"""--selector: Kubernetes label selectors parsed and matched like the API server does (pure; the
integration test tests/integration/test_shards.py compares with the real API server)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from flowkeeper.domain.selector import EVERYTHING, SelectorError, parse

KEYS = ["shard", "team", "example.com/tier"]
VALUES = ["a", "b", "gold", ""]
labels_st = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES))


@st.composite
def requirements(draw):
    key = draw(st.sampled_from(KEYS))
    op = draw(st.sampled_from(["exists", "!exists", "=", "==", "!=", "in", "notin"]))
    values = draw(st.lists(st.sampled_from(VALUES[:3]), min_size=1, max_size=3))
    if op == "exists":
        return key, lambda labels: key in labels
    if op == "!exists":
        return f"!{key}", lambda labels: key not in labels
    if op in ("=", "=="):
        value = values[0]
        return f"{key}{op}{value}", lambda labels: labels.get(key) == value
    if op == "!=":
        value = values[0]
        return f"{key} != {value}", lambda labels: labels.get(key) != value
    if op == "in":
        return f"{key} in ({', '.join(values)})", lambda labels: key in labels and labels[key] in values
    return f"{key} notin ({','.join(values)})", lambda labels: key not in labels or labels[key] not in values


@given(st.lists(requirements(), min_size=1, max_size=4), labels_st)
def test_a_selector_matches_exactly_when_every_requirement_does(reqs, labels) -> None:
    text = ",".join(r[0] for r in reqs)
    assert parse(text).matches(labels) == all(check(labels) for _, check in reqs)


@given(labels_st)
def test_an_empty_selector_selects_everything(labels) -> None:
    assert parse("") is EVERYTHING and parse("   ").matches(labels)
    assert EVERYTHING.matches(None)


@pytest.mark.parametrize("text", ["a in ()", "=a", "a b", "a in (x", "!", "a>1", "a=b,,c", "a=b c", "-a=b", "a=" + "x" * 64])
def test_what_the_api_server_refuses_is_refused_naming_the_requirement(text) -> None:
    with pytest.raises(SelectorError) as refused:
        parse(text)
    assert str(refused.value)


def test_the_message_names_the_bad_requirement() -> None:
    with pytest.raises(SelectorError, match="'team b'"):
        parse("shard=a,team b")
