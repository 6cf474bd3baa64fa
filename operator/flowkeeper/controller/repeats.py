"""Plans that repeat: most passes find an idle flow exactly as the last one did, and planning it again
would give the same plan. The planner says when a plan cannot change with time (Plan.repeatable);
then the flow is planned again only when one of its inputs changes, and meanwhile only its memory
moves on (planner.repeated), as if it had been planned.

Inputs are compared by identity where the store replaces an object on every change (the flow and its
target are frozen records, a new watch event or write is a new record) and by value where each pass
builds them anew (the signals, whenever they were read).
"""

from __future__ import annotations

from dataclasses import dataclass

from flowkeeper.domain.planner import Inputs
from flowkeeper.domain.scaling import Steady, too_old


@dataclass(frozen=True, slots=True)
class Repeat:
    inputs: Inputs  # what the repeatable plan was made from
    steady: Steady

    def serves(self, inputs: Inputs, now: float) -> bool:
        """Whether planning `inputs` at wall time `now` would give the plan made from `self.inputs`
        again. The signals' age is an input too: a reading grown stale (a slow pass) is planned."""
        last = self.inputs
        return (
            inputs.flow is last.flow
            and inputs.target is last.target
            and inputs.owner is last.owner
            and inputs.dead_letters is last.dead_letters
            and inputs.replicas_cap == last.replicas_cap
            and inputs.outage == last.outage
            and inputs.fresh_signals  # a reused reading is no new observation: planned as such
            and inputs.failure is None
            and inputs.signals is not None
            and last.signals is not None
            and inputs.signals.reads_like(last.signals)
            and inputs.flow.spec is not None
            and not too_old(inputs.flow.spec.scaling, now - inputs.signals.observed_at)
        )
