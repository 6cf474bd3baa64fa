"""The classes of trouble a flow can be in. Each class has its own response (docs/health.md):
transient -> retry and hold; configuration -> pause; data / code -> degraded, no scaling;
capacity -> scale out, and at the limit ScalingLimited."""

from __future__ import annotations

from enum import Enum


class ErrorClass(str, Enum):
    transient = "transient"
    configuration = "configuration"
    data = "data"
    code = "code"
    capacity = "capacity"


class FlowkeeperError(Exception):
    """An error that already knows its class, raised by adapters so the reconciler can respond to it."""

    error_class: ErrorClass = ErrorClass.transient

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or type(self).__name__


class TransientError(FlowkeeperError):
    error_class = ErrorClass.transient


class ConfigurationError(FlowkeeperError):
    error_class = ErrorClass.configuration


class ConflictError(TransientError):
    """The object changed since it was read (HTTP 409): plan again from what is there now."""


class RejectedError(FlowkeeperError):
    """The API server refused the body itself (HTTP 400/422): sending it again cannot succeed."""

    error_class = ErrorClass.configuration
