"""`pipeline tasks` on the real broker: it reads a department's task topic like a department
system and answers with the same TaskUpdate records (plain UTF-8 JSON, no headers, keyed by
case id); the running router takes them like any other department's answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from pipeline import bus
from pipeline.cli import main
from pipeline.codec import decode, encode
from pipeline.config import Settings, get_settings
from pipeline.events import (
    CaseEvent,
    Outcome,
    Priority,
    SubRequest,
    SubRequestKind,
    TaskNotice,
    TaskStatus,
    TaskUpdate,
    derive_id,
    utcnow,
)
from pipeline.runtime import departments
from pipeline.tasks_cli import Board, answer, send_updates, watch
from pipeline.topics import task_topic

if TYPE_CHECKING:
    from tests.plugins.stack import Deliveries, Telegram
    from tests.plugins.topics import Records
    from tests.plugins.waiting import WaitUntil

pytestmark = pytest.mark.integration

DEPT = "loyalty-it"
Cli = Callable[..., tuple[int, str]]


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[[Settings], Cli]]:
    """``cli(settings)(*argv) -> (exit code, stdout)``: the real command on these settings."""

    def on(settings: Settings) -> Cli:
        def run(*argv: str) -> tuple[int, str]:
            monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers or "")
            monkeypatch.setenv("PIPELINE_TOPIC_PREFIX", settings.topic_prefix)
            get_settings.cache_clear()
            capsys.readouterr()
            code = main(list(argv))
            return code, capsys.readouterr().out

        return run

    yield on
    get_settings.cache_clear()


def _sub(n: int, minutes_ago: int) -> SubRequest:
    now = utcnow()
    return SubRequest(
        sub_request_id=derive_id("sr", uuid.uuid4().hex, str(n)),
        case_id=derive_id("case", uuid.uuid4().hex),
        message_id=f"msg_{n}",
        customer_id=f"cust_{n}",
        kind=SubRequestKind.internal,
        department=DEPT,
        intent="loyalty_bonus",
        category="LOYALTY",
        text=f"не списались бонусы ({n})",
        full_text=f"На кассе не списались бонусы с карты ({n})",
        priority=Priority(score=40, level="P3"),
        language="ru",
        sla_due_at=now + timedelta(hours=4),
        created_at=now - timedelta(minutes=minutes_ago),
    )


Raw = tuple[bytes, bytes, list[tuple[str, bytes]]]


async def _raw_updates(settings: Settings, expected: int) -> list[Raw]:
    """Every record of task-updates as (key, value, headers): until ``expected`` and quiet."""
    out: list[Raw] = []
    loop = asyncio.get_running_loop()
    async with bus.reader(settings, settings.topic("task-updates")) as consumer:
        deadline = loop.time() + 60
        last_new = loop.time()
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                for m in msgs:
                    out.append((m.key, m.value, list(m.headers)))
                    last_new = loop.time()
            if len(out) >= expected and loop.time() - last_new > 2.5:
                break
    return out


def test_list_ack_resolve_reject_as_a_department_system(
    kafka: Settings, cli: Callable[[Settings], Cli]
) -> None:
    asyncio.run(bus.ensure_topics(kafka, departments=departments(kafka)))
    newer, older, done = _sub(1, minutes_ago=5), _sub(2, minutes_ago=50), _sub(3, minutes_ago=9)
    notice = TaskNotice(
        notice_id=derive_id("ntc", newer.sub_request_id),
        type="customer_message",
        case_id=newer.case_id,
        sub_request_id=newer.sub_request_id,
        department=DEPT,
        text="Клиент написал ещё раз: бонусы так и не пришли",
        at=utcnow(),
    )
    records = [(s.case_id, s) for s in (newer, older, done)] + [(notice.case_id, notice)]
    asyncio.run(bus.publish(kafka, task_topic(kafka, DEPT), records))
    run = cli(kafka)

    code, out = run("rules", "current", "--departments", "--json")
    assert code == 0
    listed_departments = {d["name"]: d for d in map(json.loads, out.splitlines())}
    assert listed_departments[DEPT]["task_topic"] == task_topic(kafka, DEPT)
    assert listed_departments["store-directors"]["kind"] == "external"
    assert {d for d, v in listed_departments.items() if v["task_topic"]} == set(departments(kafka))

    code, out = run("tasks", "resolve", done.sub_request_id, "--text", "Уже сделано")
    assert code == 0, out
    code, out = run("tasks", "list", "--department", DEPT, "--json")
    assert code == 0
    listed = json.loads(out)["tasks"]
    assert [t["sub_request_id"] for t in listed] == [older.sub_request_id, newer.sub_request_id]
    assert listed[0]["sla_due_at"] == older.sla_due_at.isoformat()  # type: ignore[union-attr]
    assert listed[1]["notices"][0]["type"] == "customer_message"

    code, out = run("tasks", "ack", older.sub_request_id[:12])
    assert code == 0 and "acknowledged" in out
    code, out = run(
        "tasks", "resolve", older.sub_request_id, "--text", "Бонусы начислены вручную.", "--json"
    )
    assert code == 0
    assert json.loads(out)["status"] == "resolved"
    code, _ = run("tasks", "reject", newer.sub_request_id, "--reason", "Это вопрос магазина")
    assert code == 0
    code, _ = run("tasks", "resolve", newer.sub_request_id, "--text", "поздно")
    assert code == 1  # already rejected: nothing is sent
    code, out = run("tasks", "list", "--department", DEPT)
    assert code == 0 and f"{DEPT}: 0 open" in out
    code, out = run("tasks", "show", older.sub_request_id)
    assert "status      resolved" in out and "Бонусы начислены вручную." in out

    got = asyncio.run(_raw_updates(kafka, expected=4))
    assert len(got) == 4, "one record per command that succeeded, none for the refused one"
    updates = []
    for key, value, headers in got:
        assert headers == []  # nothing but the JSON value: any language can produce it
        doc = json.loads(value.decode("utf-8"))
        update = decode(TaskUpdate, value)
        assert set(doc) == set(TaskUpdate.model_fields)
        assert key == update.case_id.encode("utf-8")
        assert update.source == "department"
        updates.append(update)
    # keyed by case: one case's answers stay in order, different cases' may interleave
    assert sorted(
        (u.sub_request_id, u.status.value, u.resolution or "") for u in updates
    ) == sorted(
        [
            (done.sub_request_id, "resolved", "Уже сделано"),
            (older.sub_request_id, "acknowledged", ""),
            (older.sub_request_id, "resolved", "Бонусы начислены вручную."),
            (newer.sub_request_id, "rejected", "Это вопрос магазина"),
        ]
    )
    older_updates = [u.status.value for u in updates if u.sub_request_id == older.sub_request_id]
    assert older_updates == ["acknowledged", "resolved"]


def test_watch_lists_then_follows_new_sub_requests_and_answers(
    kafka: Settings, wait_until: WaitUntil
) -> None:
    asyncio.run(bus.ensure_topics(kafka, departments=[DEPT]))
    first, second = _sub(1, minutes_ago=30), _sub(2, minutes_ago=0)
    lines: list[str] = []

    async def scenario() -> None:
        await bus.publish(kafka, task_topic(kafka, DEPT), [(first.case_id, first)])
        watching = asyncio.create_task(watch(kafka, DEPT, lines.append, as_json=True))
        try:
            await wait_until(lambda: lines, timeout_s=60, what="the open list")
            await bus.publish(kafka, task_topic(kafka, DEPT), [(second.case_id, second)])
            await wait_until(lambda: len(lines) >= 2, timeout_s=60, what="the new sub-request")
            view = Board()
            view.take(task_topic(kafka, DEPT), encode(first), {task_topic(kafka, DEPT)})
            update = answer(view.find(first.sub_request_id), TaskStatus.acknowledged, text=None,
                            author="it")  # fmt: skip
            await send_updates(kafka, [update])
            await wait_until(lambda: len(lines) >= 3, timeout_s=60, what="the answer")
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching

    asyncio.run(scenario())
    events = [json.loads(line) for line in lines]
    assert [(e["event"], e["sub_request_id"], e["status"]) for e in events[:3]] == [
        ("open", first.sub_request_id, "open"),
        ("changed", second.sub_request_id, "open"),
        ("changed", first.sub_request_id, "acknowledged"),
    ]


def test_the_router_takes_an_answer_given_with_pipeline_tasks(
    stack: Settings,
    records: Records,
    deliveries: Deliveries,
    telegram: Telegram,
    cli: Callable[[Settings], Cli],
) -> None:
    chat = 9_100_000 + int(uuid.uuid4().int % 100_000)
    status, _ = telegram(stack, chat, 1, "На кассе не списались бонусы с карты лояльности.")
    assert status == 200
    mid = derive_id("msg", "telegram", f"{chat}:1")
    outcome = asyncio.run(
        records.first(stack, stack.topic("outcomes"), Outcome, lambda o: o.message_id == mid)
    )
    assert outcome.outcome.value == "routed" and outcome.departments == [DEPT], outcome
    sub = asyncio.run(
        records.first(stack, task_topic(stack, DEPT), SubRequest, lambda s: s.message_id == mid)
    )
    run = cli(stack)
    code, out = run("tasks", "list", "--department", DEPT, "--json")
    assert code == 0 and sub.sub_request_id in out
    code, _ = run("tasks", "resolve", sub.sub_request_id, "--text", "Бонусы начислены, проверьте.")
    assert code == 0
    resolved = asyncio.run(
        records.first(
            stack,
            stack.topic("case-events"),
            CaseEvent,
            lambda e: e.case_id == sub.case_id and e.type.value == "sub_request_resolved",
        )
    )
    assert resolved.sub_request_id == sub.sub_request_id
    answer = asyncio.run(
        deliveries.first(
            lambda i: (
                i.channel == "telegram" and i.to == str(chat) and "Бонусы начислены" in i.text
            ),
            "the department's answer to the customer",
        )
    )
    assert "проверьте" in answer.text
