"""The consumer's settings, read as a Kubernetes pod is given them: environment variables (literal,
or `valueFrom.secretKeyRef` / `configMapKeyRef`), or files mounted from a Secret or ConfigMap.
Every setting `CONSUMER_X` may be given as `CONSUMER_X_FILE` instead, the path of a file that
holds the value (one trailing newline is dropped); giving both is an error.

Two groups, because they fail differently:
- ReportingSettings say how the consumer reports (the `integration` label, /metrics' address, the
  retry backoff). Without them nothing can be reported: a wrong one stops the program (exit 2).
- ConsumerSettings say what it consumes and how. A wrong one is a configuration error the consumer
  reports on /metrics (`flowkeeper_errors_total{class="configuration"}`) while it retries with
  backoff, reading them again at every attempt: a rewritten mounted file takes effect at the next
  attempt; a changed environment variable needs a new pod (a rollout).

See examples/consumer/README.md for the list.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from examples.consumer.errors import ConfigurationError

PREFIX = "CONSUMER_"
FILE_SUFFIX = "_FILE"
MAX_PORT = 65535
MAX_PREFETCH = 65535  # basic.qos' prefetch-count is a 16-bit number; 0 would mean "no limit"

Check = Callable[[bytes], "str | None"]  # a body -> the reason it is bad (a data error), or None

_REQUIRED = object()


class _Reader:
    """Values of one environment, each read once, every error naming the variable to fix."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def text(self, name: str, default: object = _REQUIRED) -> str | None:
        variable, file_variable = PREFIX + name, PREFIX + name + FILE_SUFFIX
        # An empty variable counts as not set, as an empty value would be no use anyway.
        inline, path = self.environ.get(variable) or None, self.environ.get(file_variable) or None
        if inline is not None and path is not None:
            raise ConfigurationError(f"{variable} and {file_variable} are both set: set one")
        if path is not None:
            try:
                value = Path(path).read_bytes().decode()  # bytes: no newline translation, the value as written
            except (OSError, UnicodeDecodeError) as error:
                raise ConfigurationError(f"{file_variable}: cannot read {path}: {error}") from None
            value = value.removesuffix("\n").removesuffix("\r")
        else:
            value = inline
        if value is None or value == "":
            if default is _REQUIRED:
                raise ConfigurationError(f"{variable} (or {file_variable}) is not set")
            return default  # type: ignore[return-value]
        return value

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value = self.text(name, None)
        if value is None:
            return default
        try:
            number = int(value.strip())
        except ValueError:
            raise ConfigurationError(f"{PREFIX}{name}: {value!r} is not a whole number") from None
        if not minimum <= number <= maximum:
            raise ConfigurationError(f"{PREFIX}{name}: {number} is not within [{minimum}, {maximum}]")
        return number

    def seconds(self, name: str, default: float) -> float:
        value = self.text(name, None)
        if value is None:
            return default
        try:
            number = float(value.strip())
        except ValueError:
            raise ConfigurationError(f"{PREFIX}{name}: {value!r} is not a number of seconds") from None
        if not math.isfinite(number) or number < 0:
            raise ConfigurationError(f"{PREFIX}{name}: {value!r} is not a number of seconds >= 0")
        return number


@dataclass(frozen=True)
class ReportingSettings:
    integration: str  # the `integration` label of every series
    namespace: str | None = None  # a `namespace` label, for a Prometheus that does not discover pods
    metrics_address: str = "0.0.0.0"  # in a pod /metrics must answer on the pod's address
    metrics_port: int = 8000
    backoff_initial: float = 1.0
    # At most 15 s between two attempts: a configuration error is counted at least 4 times in the
    # 1-minute rate window Flowkeeper reads it with.
    backoff_max: float = 15.0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> ReportingSettings:
        read = _Reader(environ)
        initial = read.seconds("BACKOFF_INITIAL_SECONDS", cls.backoff_initial)
        maximum = read.seconds("BACKOFF_MAX_SECONDS", cls.backoff_max)
        if maximum < initial:
            raise ConfigurationError(f"{PREFIX}BACKOFF_MAX_SECONDS ({maximum:g}) is below {PREFIX}BACKOFF_INITIAL_SECONDS ({initial:g})")
        return cls(
            integration=read.text("INTEGRATION"),  # type: ignore[arg-type]
            namespace=read.text("METRICS_NAMESPACE", None),
            metrics_address=read.text("METRICS_ADDRESS", cls.metrics_address),  # type: ignore[arg-type]
            metrics_port=read.integer("METRICS_PORT", cls.metrics_port, 1, MAX_PORT),
            backoff_initial=initial,
            backoff_max=maximum,
        )


@dataclass(frozen=True)
class ConsumerSettings:
    host: str
    queue: str
    username: str
    password: str = field(repr=False)
    port: int = 5672
    vhost: str = "/"
    dead_letter_queue: str | None = None  # None: failed messages are rejected to the queue's dead-letter exchange
    prefetch: int = 10
    seconds_per_message: float = 0.0  # waiting per message, as for a target system's answer
    cpu_seconds_per_message: float = 0.0  # CPU burned per message
    check: str | None = None  # "module:function", a Check

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> ConsumerSettings:
        read = _Reader(environ)
        return cls(
            host=read.text("BROKER_HOST"),  # type: ignore[arg-type]
            port=read.integer("BROKER_PORT", cls.port, 1, MAX_PORT),
            vhost=read.text("BROKER_VHOST", cls.vhost),  # type: ignore[arg-type]
            username=read.text("BROKER_USERNAME"),  # type: ignore[arg-type]
            password=read.text("BROKER_PASSWORD"),  # type: ignore[arg-type]
            queue=read.text("QUEUE"),  # type: ignore[arg-type]
            dead_letter_queue=read.text("DEAD_LETTER_QUEUE", None),
            prefetch=read.integer("PREFETCH", cls.prefetch, 1, MAX_PREFETCH),
            seconds_per_message=read.seconds("SECONDS_PER_MESSAGE", cls.seconds_per_message),
            cpu_seconds_per_message=read.seconds("CPU_SECONDS_PER_MESSAGE", cls.cpu_seconds_per_message),
            check=read.text("CHECK", None),
        )


def load_check(reference: str) -> Check:
    """The function `module:function` names (e.g. examples.demo.orders:release_1_1)."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"{PREFIX}CHECK: {reference!r} is not of the form module:function")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigurationError(f"{PREFIX}CHECK: cannot load {reference!r}: {error}") from None
    if not callable(found):
        raise ConfigurationError(f"{PREFIX}CHECK: {reference!r} is not a function")
    return found
