"""The audit tells missing outcomes, harmless repeated records (replays) and conflicts apart."""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.bus import Record
from pipeline.codec import encode
from pipeline.events import Channel, Event, InboundMessage, Outcome, OutcomeKind
from pipeline.runtime import audit_records

AT = datetime(2026, 1, 1, tzinfo=UTC)


def _record(event: Event, offset: int) -> Record:
    return Record("t", 0, offset, None, encode(event), int(AT.timestamp() * 1000))


def _inbound(mid: str) -> InboundMessage:
    return InboundMessage(
        message_id=mid,
        customer_id=f"c-{mid}",
        channel=Channel.webchat,
        channel_message_id=mid,
        text="где мой заказ?",
        received_at=AT,
    )


def _outcome(mid: str, kind: OutcomeKind, case_id: str | None = None) -> Outcome:
    return Outcome(message_id=mid, outcome=kind, case_id=case_id, stage="route", decided_at=AT)


def test_replayed_records_are_counted_apart_from_conflicts_and_gaps() -> None:
    inbound = [_record(_inbound(m), n) for n, m in enumerate(["a", "b", "c", "d"])]
    outcomes = [
        _outcome("a", OutcomeKind.routed, "case-a"),
        _outcome("a", OutcomeKind.routed, "case-a"),  # a replay: same id, same decision
        _outcome("b", OutcomeKind.routed, "case-b"),
        _outcome("b", OutcomeKind.duplicate),  # a conflict: one id, two decisions
        _outcome("c", OutcomeKind.auto_resolved),
    ]
    report = audit_records(inbound, [_record(o, n) for n, o in enumerate(outcomes)])
    assert report.inbound == 4
    assert report.outcomes == 3
    assert report.outcome_records == 5
    assert report.missing == ["d"]
    assert report.duplicated == ["a"]
    assert report.conflicting == ["b"]
    assert not report.ok


def test_replays_alone_keep_the_audit_clean() -> None:
    inbound = [_record(_inbound("a"), 0)]
    outcomes = [_record(_outcome("a", OutcomeKind.routed, "case-a"), n) for n in range(3)]
    report = audit_records(inbound, outcomes)
    assert report.ok
    assert report.duplicated == ["a"]
    assert report.conflicting == []
