"""Fault injection for the crash tests: SIGKILL this process right after a given write.

FLOWKEEPER_CRASH_AFTER=<plan kind>:<stage>, e.g. `pause:status` kills the operator right after the
status write of a plan that starts a pause, before it scales to 0. Unset (always, outside tests),
nothing happens. The tests restart the operator and check that no write path lost state.
"""

from __future__ import annotations

import os
import signal

_POINT = os.environ.get("FLOWKEEPER_CRASH_AFTER", "")


def after_write(kind: str, stage: str) -> None:
    if _POINT and _POINT == f"{kind}:{stage}":
        os.kill(os.getpid(), signal.SIGKILL)
