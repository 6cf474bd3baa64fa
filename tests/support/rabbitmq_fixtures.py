"""pytest fixtures: a real RabbitMQ broker per test module that asks for one, and fresh queues on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.rabbitmq import LocalRabbitMQ, declare_queue


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalRabbitMQ]:
    """A broker of the module's own (started on first use, stopped after the module's last test)."""
    with LocalRabbitMQ() as running:
        yield running


@pytest.fixture
def queue(broker: LocalRabbitMQ) -> str:
    """A fresh queue with its dead-letter queue `<name>.dlq`."""
    name = f"q-{uuid.uuid4().hex[:8]}"
    declare_queue(broker.parameters, name, dead_letter_queue=f"{name}.dlq")
    return name
