"""`pipeline tasks` core: a department's board from its task topic and task-updates, and the
TaskUpdate it answers with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from pipeline.codec import encode
from pipeline.errors import InvalidInput
from pipeline.events import (
    Priority,
    SubRequest,
    SubRequestKind,
    TaskNotice,
    TaskStatus,
    TaskUpdate,
)
from pipeline.tasks_cli import Board, answer, format_list, format_show

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
TASKS = "care.tasks.loyalty-it"
UPDATES = "care.task-updates"


def sub(n: int, **update: Any) -> SubRequest:
    base: dict[str, Any] = {
        "sub_request_id": f"sr_{n:024d}",
        "case_id": f"case_{n}",
        "message_id": f"msg_{n}",
        "customer_id": f"cust_{n}",
        "kind": SubRequestKind.internal,
        "department": "loyalty-it",
        "intent": "loyalty_bonus",
        "category": "LOYALTY",
        "text": f"не списались бонусы с карты ({n})",
        "full_text": f"В магазине несвежие огурцы, и не списались бонусы с карты ({n})",
        "priority": Priority(score=50, level="P2"),
        "language": "ru",
        "sla_due_at": T0 + timedelta(hours=n),
        "created_at": T0 + timedelta(minutes=n),
    }
    return SubRequest(**(base | update))


def upd(s: SubRequest, status: TaskStatus, minutes: int, uid: str = "") -> TaskUpdate:
    return TaskUpdate(
        update_id=uid or f"upd_{s.sub_request_id}_{status.value}_{minutes}",
        sub_request_id=s.sub_request_id,
        case_id=s.case_id,
        status=status,
        resolution="готово" if status == TaskStatus.resolved else None,
        author="it",
        at=T0 + timedelta(minutes=minutes),
    )


def board_of(*records: tuple[str, bytes | None]) -> Board:
    board = Board()
    for topic, value in records:
        board.take(topic, value, {TASKS})
    return board


def test_open_sub_requests_come_oldest_first_and_answered_ones_leave() -> None:
    a, b, c = sub(3), sub(1), sub(2)
    board = board_of(
        (TASKS, encode(a)),
        (TASKS, encode(b)),
        (TASKS, encode(c)),
        (UPDATES, encode(upd(c, TaskStatus.acknowledged, 10))),
        (UPDATES, encode(upd(a, TaskStatus.resolved, 20))),
    )
    open_ = board.open_tasks("loyalty-it")
    assert [v.sub.sub_request_id for v in open_] == [b.sub_request_id, c.sub_request_id]
    assert [v.status for v in open_] == ["open", "acknowledged"]
    assert board.tasks[a.sub_request_id].status == "resolved"
    assert board.open_tasks("orders") == []


def test_the_newest_answer_wins_and_repeats_count_once() -> None:
    s = sub(1)
    ack = upd(s, TaskStatus.acknowledged, 5)
    board = board_of(
        (UPDATES, encode(upd(s, TaskStatus.in_progress, 30))),  # before its sub-request
        (TASKS, encode(s)),
        (UPDATES, encode(ack)),
        (UPDATES, encode(ack)),
    )
    view = board.tasks[s.sub_request_id]
    assert view.status == "in_progress"
    assert len(view.updates) == 2


def test_a_closed_notice_closes_and_other_notices_stay_with_the_task() -> None:
    s = sub(1)

    def notice(kind: str) -> TaskNotice:
        return TaskNotice(
            notice_id=f"n_{kind}",
            type=kind,  # type: ignore[arg-type]
            case_id=s.case_id,
            sub_request_id=s.sub_request_id,
            department="loyalty-it",
            text="клиент написал ещё раз",
            at=T0,
        )

    board = board_of((TASKS, encode(s)), (TASKS, encode(notice("customer_message"))))
    assert board.tasks[s.sub_request_id].is_open
    assert len(board.tasks[s.sub_request_id].notices) == 1
    board.take(TASKS, encode(notice("closed")), {TASKS})
    assert board.tasks[s.sub_request_id].status == "closed"
    assert board.open_tasks() == []


def test_records_it_cannot_read_are_skipped() -> None:
    board = board_of(
        (TASKS, b"{not json"), (TASKS, None), (UPDATES, b"[]"), (TASKS, encode(sub(1)))
    )
    assert len(board.tasks) == 1


def test_find_by_id_or_unique_prefix() -> None:
    board = board_of((TASKS, encode(sub(1))), (TASKS, encode(sub(20))))
    full = sub(20).sub_request_id
    assert board.find(full).sub.sub_request_id == full
    assert board.find(full[:-1]).sub.sub_request_id == full
    with pytest.raises(InvalidInput, match="matches 2"):
        board.find("sr_000000")
    with pytest.raises(InvalidInput, match="at least"):
        board.find("sr_")
    with pytest.raises(InvalidInput, match="no sub-request"):
        board.find("sr_999999")


def test_answer_is_the_task_update_a_department_system_sends() -> None:
    view = board_of((TASKS, encode(sub(1)))).tasks[sub(1).sub_request_id]
    update = answer(view, TaskStatus.resolved, text=" Бонусы начислены. ", author="ivan@it", at=T0)
    assert update.case_id == view.sub.case_id
    assert update.sub_request_id == view.sub.sub_request_id
    assert update.source == "department"
    assert update.resolution == "Бонусы начислены."
    # The same answer twice is one answer; a different one is another.
    again = answer(view, TaskStatus.resolved, text="Бонусы начислены.", author="x", at=T0)
    assert again.update_id == update.update_id
    other = answer(view, TaskStatus.resolved, text="Другое", author="x", at=T0)
    assert other.update_id != update.update_id
    # On the wire: plain UTF-8 JSON, the schema's fields only.
    wire = orjson.loads(encode(update))
    assert set(wire) == set(TaskUpdate.model_fields)
    assert wire["status"] == "resolved"


def test_answer_refuses_what_a_department_cannot_send() -> None:
    s = sub(1)
    board = board_of((TASKS, encode(s)))
    view = board.tasks[s.sub_request_id]
    with pytest.raises(InvalidInput, match="needs the text"):
        answer(view, TaskStatus.resolved, text="  ", author="x")
    with pytest.raises(InvalidInput, match="needs the text"):
        answer(view, TaskStatus.rejected, text=None, author="x")
    assert answer(view, TaskStatus.acknowledged, text=None, author="x").resolution is None
    board.take(UPDATES, encode(upd(s, TaskStatus.rejected, 3)), {TASKS})
    with pytest.raises(InvalidInput, match="already rejected"):
        answer(view, TaskStatus.resolved, text="поздно", author="x")


def test_list_and_show_name_the_due_times() -> None:
    s = sub(2)
    board = board_of((TASKS, encode(s)), (UPDATES, encode(upd(s, TaskStatus.acknowledged, 4))))
    now = T0 + timedelta(hours=3)
    lines = format_list("loyalty-it", board.open_tasks(), now)
    assert lines[0].startswith("loyalty-it: 1 open")
    assert s.sub_request_id in lines[1] and "OVERDUE" in lines[1]
    assert "не списались бонусы" in lines[2]
    shown = "\n".join(format_show(board.tasks[s.sub_request_id], T0))
    assert "acknowledged by it" in shown and "(in 2h00m)" in shown
    assert s.full_text in shown
