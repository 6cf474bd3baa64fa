"""The real consumer's error classes (examples/consumer/errors.py): which failures only a change of
configuration fixes, which are retried, which are the message's own."""

from __future__ import annotations

import json
import socket

import pika.exceptions
import pytest
from hypothesis import given
from hypothesis import strategies as st

from examples.consumer.errors import (
    CONFIGURATION_REPLY_CODES, ConfigurationError, DataError, ErrorClass, TransientError, classify, describe,
)


def _json_error() -> json.JSONDecodeError:
    try:
        json.loads(b"not json")
    except json.JSONDecodeError as error:
        return error
    raise AssertionError("unreachable")


# The errors as pika raises them against RabbitMQ (seen with the broker of tests/support/rabbitmq.py).
CASES = [
    (pika.exceptions.ProbableAuthenticationError("ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused'"), "configuration"),
    (pika.exceptions.ProbableAccessDeniedError("ConnectionClosedByBroker: (530) 'NOT_ALLOWED - vhost nope not found'"), "configuration"),
    (pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - no queue 'orders' in vhost '/'"), "configuration"),
    (pika.exceptions.ChannelClosedByBroker(403, "ACCESS_REFUSED - access to queue 'orders' refused"), "configuration"),
    (pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange'"), "configuration"),
    (pika.exceptions.UnroutableError([]), "configuration"),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "configuration"),
    (ConfigurationError("CONSUMER_QUEUE is not set"), "configuration"),
    (pika.exceptions.AMQPConnectionError("ConnectionRefusedError(111, 'Connection refused')"), "transient"),
    (pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED - broker forced connection closure"), "transient"),
    (pika.exceptions.StreamLostError("Transport indicated EOF"), "transient"),
    (pika.exceptions.AMQPHeartbeatTimeout("No activity"), "transient"),
    (pika.exceptions.NackError([]), "transient"),
    (pika.exceptions.ConsumerCancelled(), "transient"),  # the next session finds out whether the queue is gone
    (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), "transient"),
    (ConnectionResetError(104, "Connection reset by peer"), "transient"),
    (TimeoutError(), "transient"),
    (TransientError("the target system answered 503"), "transient"),
    (DataError("customerId missing"), "data"),
    (_json_error(), "data"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "data"),
    (AttributeError("'list' object has no attribute 'get'"), "code"),
    (KeyError("deliveryDate"), "code"),
    (ZeroDivisionError("division by zero"), "code"),
]


@pytest.mark.parametrize(("error", "expected"), CASES, ids=[f"{type(e).__name__}-{c}" for e, c in CASES])
def test_the_class_of_a_failure(error: BaseException, expected: str) -> None:
    assert classify(error) == ErrorClass(expected)


@given(st.integers(min_value=200, max_value=599), st.text(max_size=40), st.booleans())
def test_a_broker_close_is_configuration_exactly_for_the_codes_no_retry_fixes(code: int, text: str, channel: bool) -> None:
    error = pika.exceptions.ChannelClosedByBroker(code, text) if channel else pika.exceptions.ConnectionClosedByBroker(code, text)
    expected = ErrorClass.CONFIGURATION if code in CONFIGURATION_REPLY_CODES else ErrorClass.TRANSIENT
    assert classify(error) == expected


@given(st.text(min_size=1, max_size=50))
def test_a_reason_names_the_failure(text: str) -> None:
    assert describe(DataError(text)) == text  # the consumer's own words, as written
    assert describe(ValueError(text)) == f"ValueError: {text}"
    assert describe(pika.exceptions.AMQPConnectionError(text)).startswith("AMQPConnectionError")


def test_every_class_is_one_of_the_conventions() -> None:
    from flowkeeper.domain.dead_letters import CLASSES

    assert {error_class.value for error_class in ErrorClass} == CLASSES
