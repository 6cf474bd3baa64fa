"""A DeadLetterRedrive's rules, pure: from its status and what is known of its flow, the next status
and the one broker step to take (docs/dead-letters.md).

    Pending/Blocked --fixed, not paused--> (cutoff taken) Running --cutoff or maxMessages--> Verifying --> Succeeded
                         Running/Verifying --refailed > maxRefailureRatio x moved--> Stopped
                         the cutoff marker gone --> Failed

Before it starts, a redrive waits (Blocked) while its flow is paused or while the consumers still
count errors of the selected classes (the cause is not fixed: "resubmitting without fixing will
refill the DLQ"). Once started, only a pause holds it; the broker is the truth about what was moved
(the counts here may lag by one batch after a kill, never by messages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from flowkeeper.api.durations import to_seconds
from flowkeeper.api.redrive import DeadLetterRedriveSpec, Phase
from flowkeeper.domain.conditions import parse_rfc3339, rfc3339, set_condition
from flowkeeper.domain.dead_letters import BatchResult, Cutoff, Selection
from flowkeeper.domain.flow import FlowRecord, identity, parse_spec

PROGRESSING = "Progressing"
COMPLETE = "Complete"
TERMINAL = frozenset({Phase.succeeded.value, Phase.stopped.value, Phase.failed.value})
CHECKED_CLASSES = ("configuration", "data", "code")  # what "the cause" means when no class is named
BLOCKED_RETRY = 15.0  # seconds: a blocked redrive looks again this often (and on any change of its flow)
VERIFY_EVERY = 5.0  # seconds between two looks at the dead letters while verifying


class Action(str, Enum):
    none = "none"
    begin = "begin"  # take the cutoff
    move = "move"  # one batch
    finish = "finish"  # remove what begin left (after the status that ends the redrive is written)
    verify = "verify"  # count re-failures behind the cutoff, moving nothing


@dataclass(frozen=True)
class RedriveRecord:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: DeadLetterRedriveSpec | None
    spec_error: str | None
    status: dict[str, Any]
    resource_version: str = ""

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or Phase.pending.value)

    @property
    def cutoff(self) -> Cutoff | None:
        recorded = self.status.get("cutoff")
        if not recorded or "token" not in recorded:
            return None
        return Cutoff(token=str(recorded["token"]), depth=int(recorded.get("depth") or 0))

    @property
    def reference(self) -> dict[str, str]:
        return {"apiVersion": "flowkeeper.io/v1alpha1", "kind": "DeadLetterRedrive", "name": self.name, "namespace": self.namespace, "uid": self.uid}

    @property
    def holds_marker(self) -> bool:
        """A cutoff marker of this redrive in the dead letters is still needed."""
        return self.cutoff is not None and self.phase in (Phase.running.value, Phase.blocked.value, Phase.verifying.value)


def redrive_from_body(body: dict[str, Any]) -> RedriveRecord:
    spec, error = parse_spec(DeadLetterRedriveSpec, body)
    return RedriveRecord(**identity(body), spec=spec, spec_error=error)


@dataclass(frozen=True)
class Route:
    """Where a flow's dead letters are and where a redrive moves them."""

    broker: str
    address: str
    vhost: str
    dead_letters: str
    queue: str

    @property
    def text(self) -> str:
        """As status.cutoff.route records it: a redrive goes on only along the route it started on."""
        vhost = f" vhost {self.vhost}" if self.broker == "rabbitmq" else ""
        return f"{self.broker} {self.address}{vhost}: {self.dead_letters} -> {self.queue}"


def route_of(flow: FlowRecord) -> Route | None:
    """The flow's dead letters and queue (topic) on its broker; None when it has no dead letters to reach."""
    if flow.spec is None or flow.spec.source.connection is None:
        return None
    source = flow.spec.source
    address = source.connection.address
    if source.broker == "rabbitmq" and source.dead_letter_queue and source.queue:
        return Route("rabbitmq", address, source.vhost, source.dead_letter_queue, source.queue)
    if source.broker == "kafka" and source.dead_letter_topic and source.topic:
        return Route("kafka", address, "", source.dead_letter_topic, source.topic)
    return None


def selection_of(spec: DeadLetterRedriveSpec) -> Selection:
    return Selection(frozenset(str(c) for c in spec.classes), frozenset(spec.reasons))


def checked_classes(spec: DeadLetterRedriveSpec) -> tuple[str, ...]:
    """The error classes whose count must be 0 before the redrive starts: those it selects, or every
    class a fix is deployed for when it selects none (or unclassified ones)."""
    named = [str(c) for c in spec.classes if str(c) != "unclassified"]
    return tuple(sorted(named)) if named and len(named) == len(spec.classes) else CHECKED_CLASSES


@dataclass(frozen=True)
class Situation:
    """What the controller knows when it decides."""

    flow: FlowRecord | None
    cause_rate: float | None = None  # errors/s of checked_classes over spec.causeWindow; None: unknown
    cause_problem: str | None = None  # why it is unknown
    now: float = 0.0  # wall clock, for the timestamps people read


@dataclass(frozen=True)
class Step:
    status: dict[str, Any]
    action: Action = Action.none
    events: tuple[tuple[str, str, str], ...] = ()  # (type, reason, message): one per phase change
    retry_in: float | None = None  # look again after this many seconds (None: when something changes)


@dataclass
class _Draft:
    record: RedriveRecord
    now: float
    status: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = {**self.record.status, "observedGeneration": self.record.generation}
        self.status.setdefault("moved", 0)
        self.status.setdefault("refailed", 0)

    def to(self, phase: Phase, reason: str, message: str, *, action: Action = Action.none, retry_in: float | None = None) -> Step:
        before = self.record.phase if self.record.status.get("phase") else None
        self.status["phase"] = phase.value
        self.status["message"] = message
        generation = self.record.generation
        conditions = list(self.status.get("conditions") or [])
        progressing = phase in (Phase.running, Phase.verifying)
        conditions = set_condition(conditions, PROGRESSING, progressing, reason, message, generation=generation, now=self.now)
        if phase.value in TERMINAL:
            conditions = set_condition(conditions, COMPLETE, phase == Phase.succeeded, reason, message, generation=generation, now=self.now)
            self.status.setdefault("finishedAt", rfc3339(self.now))
        self.status["conditions"] = conditions
        events: tuple[tuple[str, str, str], ...] = ()
        if before != phase.value:
            kind = "Warning" if phase in (Phase.blocked, Phase.stopped, Phase.failed) else "Normal"
            events = ((kind, reason, f"{phase.value}: {message}"),)
        return Step(self.status, action, events, retry_in)


def decide(record: RedriveRecord, situation: Situation, *, mono_due: bool = True) -> Step:
    """The next step of a redrive that is not busy with the broker. `mono_due`: the batch interval
    since the last batch has passed (the controller keeps that on the monotonic clock)."""
    draft = _Draft(record, situation.now)
    phase = record.phase
    if phase in TERMINAL:
        return Step(record.status)
    if record.spec is None:
        return draft.to(Phase.failed, "InvalidSpec", f"the spec cannot be read: {record.spec_error}")
    spec = record.spec
    flow = situation.flow
    # A dry run moves nothing: it may look before the cause is fixed.
    recorded = (record.status.get("cutoff") or {}).get("route")
    route = route_of(flow) if flow is not None else None
    if recorded and route is not None and route.text != recorded:
        message = (f"the flow's dead letters or queue changed since the start ({recorded}; now {route.text}): stopped so that "
                   f"nothing is moved along another route; a marker with header x-flowkeeper-cutoff may be left in the old queue")
        return draft.to(Phase.failed, "FlowChanged", message)
    blocked = _blocked(spec, flow, situation, started=record.cutoff is not None or spec.dry_run)
    if blocked is not None:
        reason, message = blocked
        return draft.to(Phase.blocked, reason, message, retry_in=BLOCKED_RETRY)
    if phase == Phase.verifying.value:
        # Also once the time is up: one last look, then after_verify ends it.
        return draft.to(Phase.verifying, "Verifying", _progress(draft.status, "watching for re-failures"), action=Action.verify, retry_in=VERIFY_EVERY)
    if spec.dry_run:
        return draft.to(Phase.running, "DryRun", "counting what would be moved", action=Action.move)
    if record.cutoff is None:
        return draft.to(Phase.running, "Starting", "taking the cutoff", action=Action.begin)
    if not mono_due:
        return draft.to(Phase.running, "Moving", _progress(draft.status, "between batches"), retry_in=to_seconds(spec.interval))
    return draft.to(Phase.running, "Moving", _progress(draft.status, "moving a batch"), action=Action.move)


def _blocked(spec: DeadLetterRedriveSpec, flow: FlowRecord | None, situation: Situation, *, started: bool) -> tuple[str, str] | None:
    name = spec.flow_ref.name
    if flow is None:
        return "FlowNotFound", f"IntegrationFlow {name} not found in this namespace"
    if flow.spec is None:
        return "FlowInvalid", f"IntegrationFlow {name} has a spec that cannot be read"
    source = flow.spec.source
    if not (source.dead_letter_queue or source.dead_letter_topic):
        return "NoDeadLetterQueue", f"IntegrationFlow {name} names no spec.source.deadLetterQueue or deadLetterTopic"
    if source.connection is None:
        return "NoBrokerConnection", f"IntegrationFlow {name} has no spec.source.connection: Flowkeeper cannot reach its broker"
    if flow.status.get("pause"):
        reason = (flow.status.get("pause") or {}).get("reason", "")
        return "FlowPaused", f"IntegrationFlow {name} is paused ({reason}): fix its configuration first; the redrive waits"
    if started:
        return None  # the cause was checked before the start; re-failures are the guard from here on
    classes = ", ".join(checked_classes(spec))
    window = spec.cause_window
    if situation.cause_rate is None:
        why = f": {situation.cause_problem}" if situation.cause_problem else ""
        return "CauseUnknown", f"cannot tell whether the consumers still count {classes} errors (last {window}){why}; the redrive waits"
    if situation.cause_rate > 0:
        # No live rate in the text: a message that changes every look would rewrite the status every look.
        return "CauseStillFiring", (
            f"the consumers still count {classes} errors (within the last {window}): "
            "fix the cause first, redriving now would refill the dead letters"
        )
    return None


def _progress(status: dict[str, Any], doing: str) -> str:
    remaining = status.get("remaining")
    left = f", {remaining} remaining" if remaining is not None else ""
    return f"{status.get('moved', 0)} moved, {status.get('refailed', 0)} re-failed{left}: {doing}"


def _too_many_refailed(spec: DeadLetterRedriveSpec, moved: int, refailed: int) -> bool:
    return moved > 0 and refailed > float(spec.max_refailure_ratio) * moved


def after_begin(record: RedriveRecord, cutoff: Cutoff, route: Route, now: float) -> Step:
    draft = _Draft(record, now)
    draft.status["cutoff"] = {"token": cutoff.token, "depth": cutoff.depth, "at": rfc3339(now), "route": route.text}
    draft.status["startedAt"] = rfc3339(now)
    draft.status["remaining"] = cutoff.depth
    return draft.to(Phase.running, "Moving", f"started: {cutoff.depth} dead letters before the cutoff", retry_in=0.0)


def after_batch(record: RedriveRecord, result: BatchResult, now: float) -> Step:
    assert record.spec is not None
    spec = record.spec
    draft = _Draft(record, now)
    if spec.dry_run:
        draft.status["wouldMove"] = result.would_move
        return draft.to(Phase.succeeded, "DryRun", f"dry run: {result.would_move} dead letters would be moved")
    moved = int(draft.status.get("moved") or 0) + result.moved
    refailed = max(int(draft.status.get("refailed") or 0), result.refailed)
    draft.status.update(moved=moved, refailed=refailed, remaining=result.remaining)
    if _too_many_refailed(spec, moved, refailed):
        return _stopped(draft, spec, moved, refailed)
    done = result.reached_cutoff or (spec.max_messages is not None and moved >= spec.max_messages)
    if done:
        draft.status["verifyUntil"] = rfc3339(now + to_seconds(spec.verify_for))
        why = "every selected dead letter from before the start moved" if result.reached_cutoff else f"maxMessages {spec.max_messages} moved"
        # The marker stays while verifying: re-failures are counted behind it.
        return draft.to(Phase.verifying, "Verifying", f"{why}; watching for re-failures until {draft.status['verifyUntil']}", retry_in=VERIFY_EVERY)
    return draft.to(Phase.running, "Moving", _progress(draft.status, "between batches"), retry_in=to_seconds(spec.interval))


def after_verify(record: RedriveRecord, refailed_now: int, now: float, *, time_up: bool | None = None) -> Step:
    """`time_up`: verifyFor has passed, as the caller measures it (the controller: on the monotonic
    clock); None: from status.verifyUntil and `now`."""
    assert record.spec is not None
    spec = record.spec
    draft = _Draft(record, now)
    moved = int(draft.status.get("moved") or 0)
    refailed = max(int(draft.status.get("refailed") or 0), refailed_now)
    draft.status["refailed"] = refailed
    if _too_many_refailed(spec, moved, refailed):
        return _stopped(draft, spec, moved, refailed)
    if time_up is None:
        until = parse_rfc3339(draft.status.get("verifyUntil"))
        time_up = until is None or now >= until
    if time_up:
        message = f"{moved} moved, {refailed} re-failed (left in the dead letters, not redriven again)"
        return draft.to(Phase.succeeded, "Succeeded", message, action=Action.finish)
    return draft.to(Phase.verifying, "Verifying", _progress(draft.status, f"watching for re-failures until {draft.status['verifyUntil']}"), retry_in=VERIFY_EVERY)


def _stopped(draft: _Draft, spec: DeadLetterRedriveSpec, moved: int, refailed: int) -> Step:
    limit = float(spec.max_refailure_ratio)
    message = (
        f"{refailed} of {moved} moved messages failed again ({refailed / moved:.0%} > maxRefailureRatio {limit:.0%}): "
        "stopped; the rest stays in the dead letters"
    )
    return draft.to(Phase.stopped, "RefailureRatioExceeded", message, action=Action.finish)


def after_failure(record: RedriveRecord, reason: str, message: str, *, lost_cutoff: bool, configuration: bool, now: float) -> Step:
    """A broker step failed: a lost cutoff ends the redrive; a configuration problem (credentials,
    a missing queue) blocks it until fixed; anything else is retried."""
    draft = _Draft(record, now)
    if lost_cutoff:
        return draft.to(Phase.failed, "CutoffLost", f"{message}: stopped so that nothing after the start is moved", action=Action.finish)
    if configuration:
        return draft.to(Phase.blocked, reason, message, retry_in=BLOCKED_RETRY)
    phase = Phase(record.phase) if record.phase not in TERMINAL else Phase.running
    return draft.to(phase, reason, f"{message}; retrying", retry_in=BLOCKED_RETRY)


def replicas_cap(redrives: list[RedriveRecord]) -> int | None:
    """The lowest spec.maxReplicas of the flow's redrives that are moving messages now."""
    caps = [r.spec.max_replicas for r in redrives if r.spec is not None and r.spec.max_replicas and r.phase == Phase.running.value]
    return min(caps) if caps else None
