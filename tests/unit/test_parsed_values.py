"""``stage.ParsedValues``: a table's value is parsed once while the table holds that very
object, and parsed again as soon as anything else (a restore, a sweep, a copy) replaced it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace

from pipeline.classify import dedup
from pipeline.classify.agents import ClassifyAgent, dedup_states
from pipeline.events import Channel, InboundMessage, derive_id
from pipeline.metrics import Metrics
from pipeline.stage import ParsedValues

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def counting() -> tuple[ParsedValues[str], list[str | None]]:
    parsed: list[str | None] = []

    def parse(key: str, raw: str | None) -> str:
        parsed.append(raw)
        return f"{key}={raw}"

    return ParsedValues(parse, size=2), parsed


def test_a_value_is_parsed_once_while_the_table_holds_that_object() -> None:
    values, parsed = counting()
    raw = "".join(["{", "}"])  # built at run time: not an interned constant
    assert values.get("a", raw) == values.get("a", raw) == "a={}"
    assert parsed == ["{}"]
    equal = "".join(["{", "}"])
    assert equal == raw and equal is not raw
    assert values.get("a", equal) == "a={}"  # an equal value is another object: parsed again
    assert parsed == ["{}", "{}"]
    assert values.get("a", None) == "a=None"  # deleted
    assert values.get("a", None) == "a=None"
    assert parsed == ["{}", "{}", None]


def test_a_written_value_is_known_and_the_least_recent_key_goes_first() -> None:
    values, parsed = counting()
    raw_a, raw_b, raw_c = (str(n) * 3 for n in range(3))
    values.put("a", raw_a, "written a")
    values.put("b", raw_b, "written b")
    assert values.get("a", raw_a) == "written a"  # a is now the most recent
    values.put("c", raw_c, "written c")  # size 2: b goes
    assert values.get("a", raw_a) == "written a" and values.get("c", raw_c) == "written c"
    assert parsed == []
    assert values.get("b", raw_b) == "b=111"
    assert parsed == [raw_b]


def _message(n: int, text: str) -> InboundMessage:
    return InboundMessage(
        message_id=derive_id("msg", "webchat", str(n)),
        channel=Channel.webchat,
        channel_message_id=str(n),
        customer_id="c",
        text=text,
        received_at=NOW,
    )


def test_the_dedup_state_read_is_the_tables_not_the_last_one_written(
    unreadable: Callable[[Metrics, str], float],
) -> None:
    """A customer's state replaced under the agent (a restore of an older changelog, a
    sweep) is what the next message is checked against."""
    metrics = Metrics()
    agent = SimpleNamespace(
        dedup_table={},
        dedup_states=dedup_states(metrics),
        dedup_cfg=dedup.DedupConfig(),
        ctx=SimpleNamespace(metrics=metrics),
    )
    remember = ClassifyAgent.remember
    [first], _ = remember(agent, [_message(1, "Где мой заказ 123?")], NOW)  # type: ignore[arg-type]
    assert not first.is_duplicate
    [again], recent = remember(agent, [_message(2, "Где мой заказ 123?")], NOW)  # type: ignore[arg-type]
    assert again.is_duplicate and recent == {"c": 1}
    agent.dedup_table["c"] = dedup.CustomerDedupState().model_dump_json()  # restored: empty
    [after], recent = remember(agent, [_message(3, "Где мой заказ 123?")], NOW)  # type: ignore[arg-type]
    assert not after.is_duplicate and recent == {"c": 0}
    agent.dedup_table["c"] = "not json"  # unreadable: counted, then a fresh state
    [fresh], _ = remember(agent, [_message(4, "Где мой заказ 123?")], NOW)  # type: ignore[arg-type]
    assert not fresh.is_duplicate
    assert unreadable(metrics, "dedup") == 1
