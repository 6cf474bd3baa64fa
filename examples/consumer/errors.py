"""The convention's error classes (docs/metrics-convention.md), and which class a failure belongs to.

- configuration: only a change of configuration fixes it (wrong credentials, a missing queue or
  virtual host, a missing permission, a setting that cannot be read). Flowkeeper pauses the flow.
- transient: likely to go away by itself (the broker restarts, a timeout): retried.
- data: the message itself is bad: dead-lettered.
- code: the consumer failed on a message in a way nobody planned for (a bug): dead-lettered.
"""

from __future__ import annotations

import enum
import json
import socket

import pika.exceptions


class ErrorClass(enum.StrEnum):
    CONFIGURATION = "configuration"
    DATA = "data"
    CODE = "code"
    TRANSIENT = "transient"


class ConfigurationError(Exception):
    """Only a change of configuration fixes this."""


class TransientError(Exception):
    """Worth retrying as it is: it is likely to go away by itself."""


class DataError(Exception):
    """The message is bad, whatever the consumer's configuration."""


# AMQP 0-9-1 reply codes a broker closes a connection or channel with that no retry can fix:
# 403 ACCESS_REFUSED (credentials, permissions), 404 NOT_FOUND (queue), 406 PRECONDITION_FAILED
# (a queue declared with other arguments), 530 NOT_ALLOWED (virtual host).
CONFIGURATION_REPLY_CODES = frozenset({403, 404, 406, 530})


def classify(error: BaseException) -> ErrorClass:
    """The class of a failure: raised by a check of a message, or by the broker client."""
    match error:
        case ConfigurationError() | pika.exceptions.ProbableAuthenticationError() | pika.exceptions.AuthenticationError():
            return ErrorClass.CONFIGURATION
        case pika.exceptions.ProbableAccessDeniedError() | pika.exceptions.UnroutableError():
            # A dead letter published to a queue that does not exist comes back unroutable.
            return ErrorClass.CONFIGURATION
        case pika.exceptions.ConnectionClosed() | pika.exceptions.ChannelClosed():
            return ErrorClass.CONFIGURATION if error.reply_code in CONFIGURATION_REPLY_CODES else ErrorClass.TRANSIENT
        case socket.gaierror():
            # A name that does not exist is a wrong address; a lookup that failed for now is not.
            return ErrorClass.CONFIGURATION if error.errno == socket.EAI_NONAME else ErrorClass.TRANSIENT
        case TransientError() | pika.exceptions.AMQPError() | OSError():
            # A connection refused or reset, a timeout: the broker restarts or is not there yet.
            return ErrorClass.TRANSIENT
        case DataError() | UnicodeDecodeError() | json.JSONDecodeError():  # the body itself is malformed
            return ErrorClass.DATA
        case _:
            return ErrorClass.CODE


def describe(error: BaseException) -> str:
    """A short reason for the logs and the dead letter's x-flowkeeper-error header."""
    text = str(error)
    if not text and error.args:
        return repr(error)  # pika's connection errors: an empty str(), their cause in args and repr()
    if isinstance(error, (ConfigurationError, TransientError, DataError)) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
