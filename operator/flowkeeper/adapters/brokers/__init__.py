"""The brokers themselves (not their metrics): a flow's dead letters, reviewed and redriven.

Each adapter implements the DeadLetterBroker port (controller/ports.py): `rabbitmq` over AMQP 0-9-1,
`kafka` over the Kafka protocol. `connect()` picks one for a flow's broker.
"""

from __future__ import annotations

from flowkeeper.domain.dead_letters import BrokerAddress


def connect(address: BrokerAddress, *, timeout: float = 10.0):
    """The adapter for `address.broker` (imported on first use: a RabbitMQ-only install never loads
    the Kafka client)."""
    if address.broker == "rabbitmq":
        from flowkeeper.adapters.brokers.rabbitmq import RabbitMQDeadLetters

        return RabbitMQDeadLetters(address, timeout=timeout)
    if address.broker == "kafka":
        from flowkeeper.adapters.brokers.kafka import KafkaDeadLetters

        return KafkaDeadLetters(address, timeout=timeout)
    raise ValueError(f"no dead-letter adapter for broker {address.broker!r}")
