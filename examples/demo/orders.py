"""The demo's orders, and the consumer releases that check them: which orders a release rejects
into the dead-letter queue, and why. Pure functions of the body, so the story's figures are exact.

- Every release rejects an order without a customerId ("customerId missing"): a bad order from the
  ERP, as bad after any fix (the demo's first dead letters, half a percent of the orders).
- Release 1.1 has a data bug: it parses deliveryDate as a plain date, so an order with a delivery
  time ("2025-07-01T14:30") is rejected ("invalid deliveryDate"). Release 1.2 is the fix.
- A few orders carry a date that does not exist ("2025-02-30"): every release rejects them with the
  same reason as the bug's victims. A redrive after the fix moves them too; they fail again and stay.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable

WITH_TIME_EVERY = 4  # one order in 4 has a delivery time
CUSTOMER_MISSING = "customerId missing"
INVALID_DATE = "invalid deliveryDate"

Release = Callable[[bytes], "str | None"]  # a body -> the reason it is dead-lettered, or None


def order(number: int, *, without_customer_every: int = 0, impossible_date_every: int = 0) -> bytes:
    """The body of the n-th order: something an ERP could send. `without_customer_every`: every n-th
    order lacks its customerId; `impossible_date_every`: every n-th has a date that does not exist."""
    day = 1 + number % 28
    date = f"2025-07-{day:02d}"
    if number % WITH_TIME_EVERY == 1:
        date += f"T{8 + number % 10:02d}:30"
    if impossible_date_every and number % impossible_date_every == 0:
        date = "2025-02-30"
    customer = None if without_customer_every and number % without_customer_every == without_customer_every - 1 else f"C-{number % 997:04d}"
    return json.dumps({
        "order": f"SO-{number:06d}", "lines": 1 + number % 5, "warehouse": "WH-1", "customerId": customer, "deliveryDate": date,
    }).encode()


def _check(body: bytes, parse_date: Callable[[str], object]) -> str | None:
    order = json.loads(body)
    if not order.get("customerId"):
        return CUSTOMER_MISSING
    try:
        parse_date(order["deliveryDate"])
    except ValueError:
        return INVALID_DATE
    return None


def release_1_0(body: bytes) -> str | None:
    """The consumer as it ran for months: dates with or without a time."""
    return _check(body, datetime.datetime.fromisoformat)


def release_1_1(body: bytes) -> str | None:
    """The data bug: a refactoring parses deliveryDate with date.fromisoformat, which refuses a time."""
    return _check(body, datetime.date.fromisoformat)


release_1_2 = release_1_0  # the fix: back to parsing date and time


def still_bad(body: bytes) -> bool:
    """Bad whatever the release: the orders that must stay in the dead-letter queue."""
    return release_1_2(body) is not None
