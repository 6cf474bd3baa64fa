"""Adapters to the brokers a flow reads from, for its dead letters (controller.ports.DeadLetterBroker)."""
