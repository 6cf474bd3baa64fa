"""Checks (CONSUMER_CHECK) for the real consumer in the tests: pure functions of the body, except
`record`, which writes down what went through."""

from __future__ import annotations

import os

RECORD_FILE = "CONSUMER_TEST_RECORD_FILE"  # where `record` appends the bodies it lets through
BAD_PREFIX = b"bad"


def record(body: bytes) -> str | None:
    """A body starting with b"bad" is a data error; any other is appended, one a line, to the file
    named by CONSUMER_TEST_RECORD_FILE (before its ack: a body there was handled)."""
    if body.startswith(BAD_PREFIX):
        return "bad body"
    with open(os.environ[RECORD_FILE], "ab") as out:
        out.write(body + b"\n")
    return None
