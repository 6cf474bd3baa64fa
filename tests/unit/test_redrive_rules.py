"""A DeadLetterRedrive's rules (domain/redrive.py) and the dead letters' values (domain/dead_letters.py):
pure, so every phase and every count is checked here, extremes included."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flowkeeper.domain.dead_letters import (
    ATTEMPT_HEADER,
    ERROR_CLASS_HEADER,
    ERROR_HEADER,
    REASON_MAX,
    REDRIVE_HEADER,
    UNCLASSIFIED,
    BatchResult,
    Cutoff,
    DeadLetter,
    Selection,
    moved_headers,
    review_of,
)
from flowkeeper.domain.flow import flow_from_body
from flowkeeper.domain.redrive import (
    Action,
    Situation,
    after_batch,
    after_begin,
    after_failure,
    after_verify,
    checked_classes,
    decide,
    redrive_from_body,
    replicas_cap,
    Route,
    route_of,
)

NOW = 1_800_000_000.0
ROUTE = Route("rabbitmq", "amqp://rabbitmq:5672", "/", "orders.dlq", "orders")


FLOW_BODY = {"metadata": {"name": "orders", "namespace": "shop", "uid": "f1", "generation": 1},
             "spec": {"scaleTargetRef": {"name": "orders"},
                      "source": {"broker": "rabbitmq", "queue": "orders", "deadLetterQueue": "orders.dlq",
                                 "connection": {"address": "amqp://rabbitmq:5672"}}}}


def flow(*, paused: bool = False, connection: bool = True, dead_letters: bool = True):
    source = {"broker": "rabbitmq", "queue": "orders"}
    if dead_letters:
        source["deadLetterQueue"] = "orders.dlq"
    if connection:
        source["connection"] = {"address": "amqp://rabbitmq:5672"}
    status = {"pause": {"reason": "ConsumerConfigurationError", "since": "2026-12-01T00:00:00Z"}} if paused else {}
    return flow_from_body({"metadata": {"name": "orders", "namespace": "shop", "uid": "f1", "generation": 1},
                           "spec": {"scaleTargetRef": {"name": "orders"}, "source": source}, "status": status})


def redrive(status: dict | None = None, **spec):
    return redrive_from_body({"metadata": {"name": "r", "namespace": "shop", "uid": "r1", "generation": 1},
                              "spec": {"flowRef": {"name": "orders"}, **spec}, "status": status or {}})


def reasons(step) -> set[str]:
    return {c["reason"] for c in step.status["conditions"]}


# ------------------------------------------------------------------------------------- before the start


def test_a_redrive_waits_while_its_flow_is_paused_missing_or_unreachable() -> None:
    assert reasons(decide(redrive(), Situation(flow(paused=True), cause_rate=0.0, now=NOW))) == {"FlowPaused"}
    assert reasons(decide(redrive(), Situation(None, cause_rate=0.0, now=NOW))) == {"FlowNotFound"}
    assert reasons(decide(redrive(), Situation(flow(connection=False), cause_rate=0.0, now=NOW))) == {"NoBrokerConnection"}
    assert reasons(decide(redrive(), Situation(flow(dead_letters=False), cause_rate=0.0, now=NOW))) == {"NoDeadLetterQueue"}
    for blocked in (decide(redrive(), Situation(flow(paused=True), cause_rate=0.0, now=NOW)),):
        assert blocked.status["phase"] == "Blocked" and blocked.action == Action.none and blocked.retry_in


def test_a_redrive_starts_only_when_the_cause_is_known_to_be_fixed() -> None:
    firing = decide(redrive(), Situation(flow(), cause_rate=0.2, now=NOW))
    assert reasons(firing) == {"CauseStillFiring"} and "fix the cause first" in firing.status["message"]
    unknown = decide(redrive(), Situation(flow(), cause_rate=None, cause_problem="Prometheus down", now=NOW))
    assert reasons(unknown) == {"CauseUnknown"} and "Prometheus down" in unknown.status["message"]
    fixed = decide(redrive(), Situation(flow(), cause_rate=0.0, now=NOW))
    assert fixed.action == Action.begin and fixed.status["phase"] == "Running"


def test_the_cause_checked_is_the_selected_classes_else_every_fixable_one() -> None:
    assert checked_classes(redrive(classes=["data"]).spec) == ("data",)
    assert checked_classes(redrive(classes=["code", "data"]).spec) == ("code", "data")
    assert checked_classes(redrive().spec) == ("configuration", "data", "code")
    assert checked_classes(redrive(classes=["data", "unclassified"]).spec) == ("configuration", "data", "code")


def test_a_phase_change_is_one_event_and_a_repeat_is_none() -> None:
    first = decide(redrive(), Situation(flow(paused=True), cause_rate=0.0, now=NOW))
    assert [e[1] for e in first.events] == ["FlowPaused"] and first.events[0][0] == "Warning"
    again = decide(redrive(first.status), Situation(flow(paused=True), cause_rate=0.0, now=NOW + 15))
    assert again.events == ()
    conditions = {c["type"]: c for c in again.status["conditions"]}
    assert conditions["Progressing"]["status"] == "False" and conditions["Progressing"]["observedGeneration"] == 1


def test_a_dry_run_counts_and_moves_nothing() -> None:
    step = decide(redrive(dryRun=True), Situation(flow(), cause_rate=0.0, now=NOW))
    assert step.action == Action.move
    done = after_batch(redrive(step.status, dryRun=True), BatchResult(0, 0, 0, False, would_move=42), NOW)
    assert done.status["phase"] == "Succeeded" and done.status["wouldMove"] == 42 and done.status["moved"] == 0


# ------------------------------------------------------------------------------------- running


def running(moved: int = 0, refailed: int = 0, **spec):
    started = after_begin(redrive(**spec), Cutoff("r1", 100), ROUTE, NOW)
    status = {**started.status, "moved": moved, "refailed": refailed}
    return redrive(status, **spec)


def test_after_the_cutoff_only_a_pause_holds_it_not_the_cause() -> None:
    record = running(10)
    assert record.cutoff == Cutoff("r1", 100)
    assert decide(record, Situation(flow(), cause_rate=5.0, now=NOW)).action == Action.move
    held = decide(record, Situation(flow(paused=True), now=NOW))
    assert reasons(held) == {"FlowPaused"} and held.status["cutoff"]["token"] == "r1", "the cutoff is kept"
    assert decide(redrive(held.status), Situation(flow(), now=NOW)).action == Action.move
    between = decide(record, Situation(flow(), now=NOW), mono_due=False)
    assert between.action == Action.none and between.retry_in == 5.0


def test_batches_add_up_and_the_cutoff_ends_the_moving() -> None:
    step = after_batch(running(), BatchResult(moved=40, remaining=60, refailed=0, reached_cutoff=False), NOW)
    assert (step.status["phase"], step.status["moved"], step.status["remaining"]) == ("Running", 40, 60)
    done = after_batch(redrive(step.status), BatchResult(moved=60, remaining=0, refailed=3, reached_cutoff=True), NOW)
    assert done.status["phase"] == "Verifying" and done.action == Action.none and done.status["moved"] == 100
    assert done.status["refailed"] == 3 and done.status["verifyUntil"]


def test_max_messages_ends_the_moving_too() -> None:
    step = after_batch(running(maxMessages=50), BatchResult(moved=50, remaining=50, refailed=0, reached_cutoff=False), NOW)
    assert step.status["phase"] == "Verifying"


def test_too_many_refailures_stop_it_and_clean_up() -> None:
    step = after_batch(running(), BatchResult(moved=10, remaining=90, refailed=2, reached_cutoff=False), NOW)
    assert step.status["phase"] == "Stopped" and reasons(step) >= {"RefailureRatioExceeded"} and step.action == Action.finish
    assert "2 of 10" in step.status["message"] and step.status["finishedAt"]
    assert step.events[0][0] == "Warning"
    at_limit = after_batch(running(), BatchResult(moved=10, remaining=90, refailed=1, reached_cutoff=False), NOW)
    assert at_limit.status["phase"] == "Running", "10 % is not more than 10 %"


def test_verifying_stops_on_late_refailures_or_succeeds_when_the_time_is_up() -> None:
    verifying = after_batch(running(verifyFor="1m"), BatchResult(moved=20, remaining=0, refailed=0, reached_cutoff=True), NOW)
    record = redrive(verifying.status, verifyFor="1m")
    assert decide(record, Situation(flow(), now=NOW + 5)).action == Action.verify
    assert after_verify(record, 1, NOW + 10).status["phase"] == "Verifying"
    assert after_verify(record, 3, NOW + 10).status["phase"] == "Stopped"
    done = after_verify(record, 2, NOW + 61)
    assert done.status["phase"] == "Succeeded" and done.status["refailed"] == 2 and done.action == Action.finish
    assert {c["type"]: c["status"] for c in done.status["conditions"]} == {"Progressing": "False", "Complete": "True"}


def test_counts_never_go_backwards() -> None:
    record = running(moved=20, refailed=2)
    assert after_verify(record, 0, NOW).status["refailed"] == 2
    assert after_batch(record, BatchResult(0, 0, 1, True), NOW).status["refailed"] == 2


def test_a_lost_cutoff_fails_and_broker_trouble_blocks_or_retries() -> None:
    lost = after_failure(running(), "CutoffLost", "marker gone", lost_cutoff=True, configuration=False, now=NOW)
    assert lost.status["phase"] == "Failed"
    denied = after_failure(running(), "BrokerUnauthorized", "refused", lost_cutoff=False, configuration=True, now=NOW)
    assert denied.status["phase"] == "Blocked" and reasons(denied) == {"BrokerUnauthorized"}
    down = after_failure(running(), "BrokerUnavailable", "down", lost_cutoff=False, configuration=False, now=NOW)
    assert down.status["phase"] == "Running" and down.retry_in


def test_terminal_phases_stay() -> None:
    for phase in ("Succeeded", "Stopped", "Failed"):
        step = decide(redrive({"phase": phase}), Situation(flow(), cause_rate=0.0, now=NOW))
        assert step.action == Action.none and step.status == {"phase": phase} and not step.events


def test_a_running_redrive_caps_its_flows_replicas() -> None:
    capped = running(maxReplicas=3)
    assert replicas_cap([capped, running(maxReplicas=5), running()]) == 3
    assert replicas_cap([redrive({"phase": "Succeeded"}, maxReplicas=2)]) is None


@settings(max_examples=300)
@given(
    moved=st.integers(min_value=0, max_value=10**9),
    refailed=st.integers(min_value=0, max_value=10**9),
    batch=st.integers(min_value=0, max_value=10**6),
    ratio=st.sampled_from(["0", "0.1", "1", "500m"]),
)
def test_any_counts_give_a_valid_phase_and_never_a_negative(moved, refailed, batch, ratio) -> None:
    record = running(moved=moved, refailed=refailed, maxRefailureRatio=ratio)
    step = after_batch(record, BatchResult(moved=batch, remaining=0, refailed=refailed, reached_cutoff=False), NOW)
    assert step.status["phase"] in ("Running", "Stopped", "Verifying")
    assert step.status["moved"] == moved + batch >= 0 and step.status["refailed"] >= refailed
    if step.status["phase"] == "Stopped":
        assert step.status["refailed"] > float(record.spec.max_refailure_ratio) * step.status["moved"]


# ------------------------------------------------------------------------------------- dead letters


def test_a_dead_letter_reads_the_conventions_headers_and_falls_back_to_the_brokers() -> None:
    letter = DeadLetter.from_headers({ERROR_CLASS_HEADER: b"Data", ERROR_HEADER: "bad date"}, broker_reason="rejected", at=5.0)
    assert (letter.error_class, letter.reason, letter.dead_lettered_at, letter.redriven_by) == ("data", "bad date", 5.0, None)
    plain = DeadLetter.from_headers(None, broker_reason="expired")
    assert (plain.error_class, plain.reason) == (UNCLASSIFIED, "expired")
    assert len(DeadLetter.from_headers({ERROR_HEADER: "x" * 10_000}).reason) == REASON_MAX


def test_moved_headers_mark_and_count_attempts() -> None:
    once = moved_headers({ERROR_HEADER: "bad"}, "r1")
    assert once[REDRIVE_HEADER] == "r1" and once[ATTEMPT_HEADER] == 1 and once[ERROR_HEADER] == "bad"
    assert moved_headers(once, "r2")[ATTEMPT_HEADER] == 2
    assert moved_headers({ATTEMPT_HEADER: "garbage"}, "r")[ATTEMPT_HEADER] == 1
    assert moved_headers({ATTEMPT_HEADER: -7}, "r")[ATTEMPT_HEADER] == 1


def test_a_selection_never_takes_what_was_moved_before() -> None:
    taken = DeadLetter("data", "bad date", None, None)
    again = DeadLetter("data", "bad date", None, "r0", 1)
    assert Selection().takes(taken) and not Selection().takes(again)
    assert Selection(frozenset({"data"}), frozenset({"bad date"})).takes(taken)
    assert not Selection(frozenset({"code"})).takes(taken)
    assert not Selection(reasons=frozenset({"other"})).takes(taken)
    assert not Selection(reasons=frozenset({"x"})).takes(DeadLetter("data", None, None, None))


@given(st.lists(st.tuples(st.sampled_from(["data", "code", UNCLASSIFIED]), st.one_of(st.none(), st.text(max_size=5)),
                          st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
                          st.one_of(st.none(), st.sampled_from(["r1", "r2"]))), max_size=50))
def test_a_review_counts_every_letter_once(letters) -> None:
    review = review_of((DeadLetter(c, r, at, by) for c, r, at, by in letters), depth=len(letters) + 3)
    assert review.examined == len(letters) == sum(review.by_class.values()) == sum(review.by_reason.values())
    assert not review.complete and len(review.samples) <= 3
    times = [at for _, _, at, _ in letters if at is not None]
    assert (review.oldest, review.newest) == ((min(times), max(times)) if times else (None, None))
    assert sum(review.redriven.values()) == sum(1 for *_, by in letters if by)


def test_a_dry_run_may_look_before_the_fix() -> None:
    step = decide(redrive(dryRun=True), Situation(flow(), cause_rate=3.0, now=NOW))
    assert step.action == Action.move and step.status["phase"] == "Running"
    assert reasons(decide(redrive(dryRun=True), Situation(flow(paused=True), now=NOW))) == {"FlowPaused"}


def test_a_broker_is_allowed_only_when_every_host_of_its_address_is_listed() -> None:
    from flowkeeper.controller.dead_letters import broker_allowed

    allowed = frozenset({"rabbitmq.messaging:5672", "kafka-0:9092", "kafka-1:9092"})
    assert broker_allowed("amqp://RabbitMQ.messaging:5672", allowed)
    assert broker_allowed("amqps://rabbitmq.messaging:5672/", allowed)
    assert broker_allowed("kafka-0:9092,kafka-1:9092", allowed)
    assert not broker_allowed("kafka-0:9092,evil:9092", allowed)
    assert not broker_allowed("amqp://rabbitmq.messaging:5673", allowed)
    assert not broker_allowed("amqp://internal-admin:15672", allowed)


def test_a_review_becomes_the_flows_status_dead_letters() -> None:
    from collections import Counter

    from flowkeeper.controller.dead_letters import review_status
    from flowkeeper.domain.dead_letters import Review

    review = Review(depth=30, examined=12, by_class=Counter(data=10, code=2), by_reason=Counter({f"r{i}": 12 - i for i in range(12)}),
                    samples=["r0"], oldest=NOW - 60, newest=NOW, redriven=Counter(x=2, y=1))
    status = review_status(review, NOW)
    assert status["byClass"] == {"code": 2, "data": 10} and len(status["byReason"]) == 10
    assert status["byReason"][0] == {"reason": "r0", "count": 12} and status["redriven"] == 3
    assert status["oldest"] < status["newest"] == status["reviewedAt"]
    assert "oldest" not in review_status(Review(depth=0), NOW)


def test_a_redrive_goes_on_only_along_the_route_it_started_on() -> None:
    record = running(10)
    assert record.status["cutoff"]["route"] == route_of(flow()).text == "rabbitmq amqp://rabbitmq:5672 vhost /: orders.dlq -> orders"
    moved_queue = flow_from_body({**FLOW_BODY, "spec": {**FLOW_BODY["spec"], "source": {**FLOW_BODY["spec"]["source"], "deadLetterQueue": "other.dlq"}}})
    step = decide(record, Situation(moved_queue, now=NOW))
    assert step.status["phase"] == "Failed" and reasons(step) >= {"FlowChanged"} and "other.dlq" in step.status["message"]
    assert decide(record, Situation(flow(), now=NOW)).action == Action.move


def test_free_text_in_the_class_header_is_unclassified() -> None:
    letter = DeadLetter.from_headers({ERROR_CLASS_HEADER: "java.lang.NullPointerException at line 12"})
    assert letter.error_class == UNCLASSIFIED


@given(desired=st.integers(0, 10_000), current=st.integers(0, 10_000), cap=st.one_of(st.none(), st.integers(1, 10_000)))
def test_a_redrives_cap_limits_scaling_up_and_never_scales_down(desired, current, cap) -> None:
    from flowkeeper.domain.planner import _capped

    capped = _capped(desired, current, cap)
    if desired <= current or cap is None:
        assert capped == desired, "a scale-down or no cap: the planner's own decision"
    else:
        assert current <= capped <= desired and (capped <= cap or capped == current)


def test_a_verifying_redrive_whose_time_is_up_takes_one_last_look() -> None:
    verifying = after_batch(running(verifyFor="1m"), BatchResult(moved=20, remaining=0, refailed=1, reached_cutoff=True), NOW)
    record = redrive(verifying.status, verifyFor="1m")
    assert decide(record, Situation(flow(), now=NOW + 3600)).action == Action.verify
    done = after_verify(record, 3, NOW + 3600)
    assert done.status["phase"] == "Stopped", "re-failures seen in the last look still count"
