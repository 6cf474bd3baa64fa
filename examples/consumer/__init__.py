"""A small real consumer of one integration flow: takes messages from RabbitMQ (pika, manual acks,
a prefetch), exports the Flowkeeper metrics convention, classifies its failures into the
convention's classes, dead-letters bad messages with the convention's headers, and reports a wrong
configuration (credentials, a missing queue, an invalid setting) as configuration errors while it
retries. Run it as `python -m examples.consumer`; examples/consumer/README.md lists its settings.

    settings.py   CONSUMER_* variables and mounted files
    errors.py     the error classes, and the class of a failure
    metrics.py    the convention's series
    handling.py   one message: work, check, ack / dead letter / back to the queue
    loop.py       connect, consume, back off and retry
    main.py       the program: /metrics, signals, the loop
"""
