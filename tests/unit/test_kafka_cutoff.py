"""The pure parts of the Kafka dead-letter adapter: the cutoff token and the marks on a moved record."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowkeeper.adapters.brokers.kafka import _marked, cutoff_token, group_of, parse_cutoff
from flowkeeper.domain.dead_letters import ATTEMPT_HEADER, REDRIVE_HEADER, CutoffLost

offsets = st.dictionaries(st.integers(0, 10_000), st.integers(0, 2**62), min_size=1, max_size=64)


@given(offsets)
def test_a_token_gives_back_its_offsets(cut: dict[int, int]) -> None:
    assert parse_cutoff(cutoff_token(cut)) == cut


@given(offsets)
def test_a_token_is_compact_json_in_partition_order(cut: dict[int, int]) -> None:
    token = cutoff_token(cut)
    assert " " not in token
    assert [int(p) for p in json.loads(token)] == sorted(cut)


def test_a_token_reads_as_the_status_shows_it() -> None:
    assert cutoff_token({10: 3, 2: 7, 0: 0}) == '{"0":0,"2":7,"10":3}'


@pytest.mark.parametrize("token", ["", "not json", "[]", "{}", '{"a":1}', '{"0":-1}', '{"-1":3}', '{"0":1.5}', '{"0":"3"}', "null", '{"0":true}'])
def test_a_token_that_is_not_one_loses_the_cutoff(token: str) -> None:
    with pytest.raises(CutoffLost):
        parse_cutoff(token)


def _record(*headers: tuple[str, bytes]) -> SimpleNamespace:
    return SimpleNamespace(headers=list(headers))


def test_a_moved_record_keeps_its_headers_and_gets_the_mark() -> None:
    record = _record(("trace", b"a"), ("trace", b"b"), ("x-flowkeeper-error-class", b"data"))
    assert _marked(record, "uid-1") == [
        ("trace", b"a"), ("trace", b"b"), ("x-flowkeeper-error-class", b"data"),
        (REDRIVE_HEADER, b"uid-1"), (ATTEMPT_HEADER, b"1"),
    ]


@given(st.integers(0, 1000))
def test_the_attempt_counter_goes_on_and_the_mark_is_replaced(attempts: int) -> None:
    record = _record((ATTEMPT_HEADER, str(attempts).encode()), (REDRIVE_HEADER, b"old"))
    assert _marked(record, "new") == [(REDRIVE_HEADER, b"new"), (ATTEMPT_HEADER, str(attempts + 1).encode())]


def test_a_record_without_headers_is_marked() -> None:
    assert _marked(SimpleNamespace(headers=None), "u") == [(REDRIVE_HEADER, b"u"), (ATTEMPT_HEADER, b"1")]


def test_the_group_names_the_redrive() -> None:
    assert group_of("1234-abcd") == "flowkeeper-redrive.1234-abcd"
