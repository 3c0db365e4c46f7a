"""The one error policy (skip / dead-letter / stop per failure kind) and the retention sweep."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from pydantic import BaseModel

from pipeline import stage
from pipeline.config import Settings
from pipeline.context import Context
from pipeline.errors import BrokerUnavailable, DecodeError, DeliveryError
from pipeline.events import Channel, DeadLetter, Event, InboundMessage, Outcome, utcnow
from pipeline.metrics import Metrics
from pipeline.stage import Action, ErrorPolicy, RawRecord, decode_record, sweep_table

if TYPE_CHECKING:
    from tests.plugins.tables import StoredTable

MakeTable = Callable[..., "StoredTable"]
Unreadable = Callable[[Metrics, str], float]


class RecordingContext(Context):
    """A Context whose outputs are kept in a list instead of produced."""

    def __init__(self, policy: ErrorPolicy | None = None) -> None:
        super().__init__(settings=Settings(topic_prefix="u."), metrics=Metrics(), app=None)
        self.errors = policy or ErrorPolicy()
        self.out: list[tuple[str, str | None, Event]] = []

    async def send(self, name: str, key: str | None, event: Event) -> None:
        self.out.append((name, key, event))


def _record(offset: int, value: bytes) -> RawRecord:
    return RawRecord("u.inbound", 2, offset, b"cust-1", value)


def _message() -> InboundMessage:
    return InboundMessage(
        message_id="msg-1",
        channel=Channel.webchat,
        channel_message_id="1",
        customer_id="cust-1",
        text="где мой заказ",
        received_at=utcnow(),
    )


@pytest.mark.parametrize(
    ("exc", "action"),
    [
        (DecodeError("bad"), Action.dead_letter),
        (ValueError("bug"), Action.dead_letter),
        (DeliveryError("smtp 550", transient=False), Action.dead_letter),
        (BrokerUnavailable("not acknowledged"), Action.stop),
        (asyncio.CancelledError(), Action.stop),
        (KeyboardInterrupt(), Action.stop),
    ],
)
def test_default_policy(exc: BaseException, action: Action) -> None:
    assert ErrorPolicy().decide(exc) is action


def test_a_deployment_can_skip_a_kind_but_never_swallow_a_stop() -> None:
    policy = ErrorPolicy(skip_on=(DeliveryError, BrokerUnavailable))
    assert policy.decide(DeliveryError("x")) is Action.skip
    assert policy.decide(BrokerUnavailable("x")) is Action.stop  # stop rules come first
    assert policy.decide(ValueError("x")) is Action.dead_letter


async def test_undecodable_record_is_dead_lettered_with_where_it_came_from() -> None:
    ctx = RecordingContext()
    record = _record(7, b"\xff not json")
    async with ctx.guard("classify", record):
        decode_record(InboundMessage, record)
    [(name, _, dl)] = ctx.out
    assert name == "dlq" and isinstance(dl, DeadLetter)
    assert (dl.stage, dl.topic, dl.partition, dl.offset) == ("classify", "u.inbound", 2, 7)
    assert dl.error_type == "DecodeError"


async def test_a_decoded_message_that_fails_also_gets_its_rejected_outcome() -> None:
    ctx = RecordingContext()
    async with ctx.guard("route", _record(8, b"{}"), _message()):
        raise ValueError("rule blew up")
    assert [name for name, _, _ in ctx.out] == ["dlq", "outcomes"]
    outcome = ctx.out[1][2]
    assert isinstance(outcome, Outcome)
    assert (outcome.message_id, outcome.outcome.value) == ("msg-1", "rejected")
    assert "ValueError: rule blew up" in (outcome.reason or "")


async def test_stop_reraises_and_skip_sends_nothing() -> None:
    ctx = RecordingContext(ErrorPolicy(skip_on=(DeliveryError,)))
    with pytest.raises(BrokerUnavailable):
        async with ctx.guard("notify", _record(9, b"{}")):
            raise BrokerUnavailable("gone")
    async with ctx.guard("notify", _record(10, b"{}")):
        raise DeliveryError("ignored here")
    assert ctx.out == []


async def test_a_failed_batch_still_puts_every_record_somewhere() -> None:
    ctx = RecordingContext()
    good = _record(1, _message().model_dump_json().encode())
    bad = _record(2, b"not json")
    async with ctx.guard_batch("classify", [good, bad], lambda r: decode_record(InboundMessage, r)):
        raise RuntimeError("model crashed")
    assert [(name, getattr(ev, "offset", None)) for name, _, ev in ctx.out] == [
        ("dlq", 1),
        ("outcomes", None),
        ("dlq", 2),
    ]


async def test_sweep_table_forgets_rewrites_and_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {f"k{i}": "old" if i % 2 else "new" for i in range(250)}
    table["rewrite"] = "old,new"
    yields = 0
    real_sleep = asyncio.sleep

    async def counting_sleep(delay: float) -> None:
        nonlocal yields
        yields += 1
        table.pop("k2", None)  # an agent deletes a key while the sweep is paused
        await real_sleep(delay)

    monkeypatch.setattr(stage.asyncio, "sleep", counting_sleep)

    def keep(key: str, raw: str) -> str | None:
        if key == "rewrite":
            return "new"
        return None if raw == "old" else raw

    removed = await sweep_table(table, keep)
    assert removed == 125
    assert yields == 3  # every SWEEP_CHUNK keys: the agents are not stalled
    assert table["rewrite"] == "new" and "k2" not in table
    assert set(table.values()) == {"new"} and len(table) == 125


class Entry(BaseModel):
    text: str
    stale: bool = False


async def test_sweep_table_forgets_what_it_cannot_read_logs_no_value_and_counts(
    caplog: pytest.LogCaptureFixture, stored_table: MakeTable, unreadable: Unreadable
) -> None:
    """A value ``keep`` cannot read (not JSON, another shape) is forgotten, named by table and
    key without its text (it may be a customer's), counted; the other keys are swept as usual.
    A sweep's exception would run in a Faust timer, which kills the worker."""
    metrics = Metrics()
    table = stored_table(
        "dedup",
        {
            "bad-json": '{"text": "мой паспорт 4510',
            "stale": '{"text": "a", "stale": true}',
            "bad-shape": '["мой паспорт 4510"]',
            "ok": '{"text": "b"}',
        },
    )

    def keep(_: str, raw: str) -> str | None:
        return None if Entry.model_validate_json(raw).stale else raw

    with caplog.at_level("WARNING", logger="pipeline.stage"):
        assert await sweep_table(table, keep, metrics) == 3
    assert table == {"ok": '{"text": "b"}'}
    for key in ("bad-json", "bad-shape"):
        assert f"dedup value of {key} is unreadable" in caplog.text
    assert "паспорт" not in caplog.text  # pydantic's own message would quote the input
    assert unreadable(metrics, "dedup") == 2


async def test_only_unreadable_values_are_forgiven_programming_errors_surface(
    unreadable: Unreadable,
) -> None:
    def buggy(_: str, raw: str) -> str | None:
        return {"a": raw}["b"]  # a bug, not a stored value's fault

    table = {"k": "{}"}
    with pytest.raises(KeyError):
        await sweep_table(table, buggy)
    assert table == {"k": "{}"}
    metrics = Metrics()
    assert (
        stage.read_stored(
            InboundMessage.model_validate_json, "{}", table="t", key="k", metrics=metrics
        )
        is None
    )
    assert stage.read_stored(int, "7", table="t", key="k") == 7
    with pytest.raises(ValueError, match="invalid literal"):  # not one of stage.UNREADABLE
        stage.read_stored(int, "x", table="t", key="k", metrics=metrics)
    assert unreadable(metrics, "t") == 1
