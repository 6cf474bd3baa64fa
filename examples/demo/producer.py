"""The demo's producer: a burst of orders, faster than one consumer handles, published to a queue.

In the demo it runs as a thread next to the loop that samples; by hand, against any broker:

    python -m examples.demo.producer --url amqp://guest:guest@127.0.0.1:5672/%2F --queue orders --count 3000
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable

import pika

from examples.demo.orders import order
from tests.support.rabbitmq import Publisher

TICK = 0.1  # seconds between the batches of a paced burst


class Producer(threading.Thread):
    """Publishes `count` orders, at `rate` messages/s (None: as fast as the broker takes them): the
    bodies `body(first)` .. `body(first + count - 1)`, so that several producers in one story send
    different orders. `published` counts committed messages only, so it is exact at any moment."""

    def __init__(
        self,
        parameters: pika.ConnectionParameters,
        queue: str,
        count: int,
        *,
        rate: float | None = None,
        first: int = 0,
        body: Callable[[int], bytes] = order,
    ) -> None:
        super().__init__(name=f"producer-{queue}", daemon=True)
        self.parameters, self.queue, self.count, self.rate = parameters, queue, count, rate
        self.first, self.body = first, body
        self.error: BaseException | None = None
        self._publisher: Publisher | None = None
        self._stopping = threading.Event()

    @property
    def published(self) -> int:
        return self._publisher.published if self._publisher else 0

    def run(self) -> None:
        try:
            with Publisher(self.parameters, self.queue) as self._publisher:
                per_tick = self.count if self.rate is None else max(1, round(self.rate * TICK))
                next_tick = time.monotonic()
                while self.published < self.count and not self._stopping.is_set():
                    self._publisher.send(min(per_tick, self.count - self.published), lambda n: self.body(self.first + n))
                    # Paced against the clock, not by sleeping TICK each time: the sends' own time
                    # would make the rate drift.
                    next_tick += TICK
                    self._stopping.wait(max(0.0, next_tick - time.monotonic()))
        except BaseException as error:  # noqa: BLE001 - kept for the demo to report; the thread ends
            self.error = error

    def stop(self) -> None:
        self._stopping.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.demo.producer", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="AMQP URL of the broker")
    parser.add_argument("--queue", default="orders", help="an existing queue")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--rate", type=float, help="messages per second (default: as fast as possible)")
    args = parser.parse_args(argv)
    producer = Producer(pika.URLParameters(args.url), args.queue, args.count, rate=args.rate)
    started = time.monotonic()
    producer.start()
    producer.join()
    if producer.error is not None:
        print(f"failed after {producer.published} messages: {producer.error!r}", file=sys.stderr)
        return 1
    print(f"published {producer.published} messages to {args.queue} in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
