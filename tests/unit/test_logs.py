"""Log lines (observability/logs.py): real records through real loggers, in both formats. The JSON
formatter is kopf's own; the plain one must carry the same fields."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flowkeeper.observability import logs

# What the loop logs for a scale (controller/loop.py).
SCALED = {"flow": "orders", "namespace": "shop", "pass_id": "3f2a", "stage": "scale", "replicas": 4,
          "reason": "backlog 620 > 4 x 100", "outcome": "applied"}  # fmt: skip


def emit(formatter: logging.Formatter, message: str, extra: dict[str, Any], *, exc: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.Logger("flowkeeper.controller.loop")  # not registered: no other handler sees it
    logger.addHandler(handler)
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception(message, extra=extra)
    else:
        logger.info(message, extra=extra)
    return stream.getvalue()


@contextlib.contextmanager
def restored_logging() -> Iterator[tuple[logging.Logger, logging.Logger]]:
    """The root and kopf.objects loggers, put back as they were afterwards."""
    root, objects = logging.getLogger(), logging.getLogger("kopf.objects")
    handlers, level, objects_level = root.handlers[:], root.level, objects.level
    try:
        yield root, objects
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        objects.setLevel(objects_level)


@functools.cache
def installed(log_format: str) -> logging.Formatter:
    """The formatter `flowkeeper run --log-format` installs (on kopf's handler)."""
    with restored_logging() as (root, _):
        logs.configure(log_format, verbose=False)
        return root.handlers[-1].formatter


def plain(message: str, extra: dict[str, Any], **kwargs: Any) -> str:
    return emit(installed("plain"), message, extra, **kwargs)


def as_json(message: str, extra: dict[str, Any]) -> dict[str, Any]:
    return json.loads(emit(installed("json"), message, extra))


_FIELD = re.compile(r' (\w+)=("(?:[^"\\]|\\.)*"|[^\s"]+)')


def parse(line: str, after: str) -> dict[str, str]:
    """The key=value fields of a plain line, after its message; quoted values unquoted."""
    head, _, rest = line.rstrip("\n").partition(f" {after}")
    assert head and _, line
    return {key: json.loads(value) if value.startswith('"') else value for key, value in _FIELD.findall(rest)}


def test_plain_line_carries_the_fields_of_a_scale() -> None:
    line = plain("scaled", SCALED)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO flowkeeper\.controller\.loop scaled .*\n", line), line
    assert line.endswith(' scaled flow=shop/orders pass_id=3f2a stage=scale replicas=4 reason="backlog 620 > 4 x 100" outcome=applied\n')


def test_json_line_is_kopfs_with_every_field() -> None:
    record = as_json("scaled", SCALED)
    assert record["message"] == "scaled" and record["severity"] == "info" and "timestamp" in record
    assert {k: record[k] for k in SCALED} == SCALED


def test_a_line_without_fields_is_the_message() -> None:
    assert plain("controller loop running", {}).endswith(" INFO flowkeeper.controller.loop controller loop running\n")


def test_the_object_kopf_logs_about_is_named_in_both_formats() -> None:
    ref = {"apiVersion": "flowkeeper.io/v1alpha1", "kind": "IntegrationFlow", "name": "orders", "uid": "u", "namespace": "shop"}
    assert plain("Handler succeeded.", {"k8s_ref": ref, "k8s_skip": True}).endswith(" Handler succeeded. k8s=shop/orders\n")
    assert as_json("Handler succeeded.", {"k8s_ref": ref, "k8s_skip": True})["k8s"] == ref


def test_a_traceback_follows_the_fields() -> None:
    first, *rest = plain("pass failed", {"stage": "pass", "outcome": "error", "flows": 3}, exc=True).splitlines()
    assert first.endswith(" ERROR flowkeeper.controller.loop pass failed stage=pass outcome=error flows=3")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "RuntimeError: boom"


names = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True).filter(lambda n: n not in logs._NOT_FIELDS and n not in ("flow", "namespace"))
values = st.one_of(
    st.text(max_size=30),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.lists(st.text(max_size=5), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(extra=st.dictionaries(names, values, max_size=6))
def test_plain_lines_carry_the_fields_of_the_json_lines(extra: dict[str, Any]) -> None:
    message = "pass done"
    line = plain(message, extra)
    assert line.count("\n") == 1, line  # one line, whatever the values hold
    fields = parse(line, message)
    record = as_json(message, extra)
    in_json = {k: v for k, v in record.items() if k not in ("message", "timestamp", "severity")}
    assert list(fields) == list(extra) and set(in_json) == set(extra)
    for key, value in in_json.items():
        # Strings as they are, everything else as JSON: the same value the JSON line holds.
        assert (fields[key] if isinstance(value, str) else json.loads(fields[key])) == value, (key, line)


def test_plain_is_ours_and_json_is_kopfs() -> None:
    assert type(installed("plain")) is logs.PlainFormatter
    assert type(installed("json")).__module__.startswith("kopf.")


def test_configure_sets_levels() -> None:
    with restored_logging() as (root, objects):
        logs.configure("plain", verbose=False)
        assert (root.level, objects.level) == (logging.INFO, logging.WARNING)
        objects.setLevel(logging.NOTSET)
        logs.configure("plain", verbose=True)
        assert (root.level, objects.level) == (logging.DEBUG, logging.NOTSET)
