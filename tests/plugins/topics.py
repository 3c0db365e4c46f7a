"""Reading records back from the real topics: at least N, or all of them once the topic is quiet."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from pipeline import bus
from pipeline.codec import decode, decode_case_events
from pipeline.config import Settings
from pipeline.errors import DecodeError
from pipeline.events import CaseEvent, Event, Reply
from pipeline.notify.agents import MAX_CONCURRENT
from pipeline.notify.channels import message_text
from pipeline.outbox import OutboxItem
from tests.plugins.waiting import Batch, Patience, collect_until_quiet

E = TypeVar("E", bound=Event)

log = logging.getLogger(__name__)

#: The delivered-replies changelog's values by customer: (when each was made, its ids).
Marks = dict[str, list[tuple[float, list[str]]]]


async def _caught_up(consumer: AIOKafkaConsumer) -> bool:
    parts = list(consumer.assignment())
    ends = await consumer.end_offsets(parts)
    for tp in parts:
        if await consumer.position(tp) < ends[tp]:
            return False
    return True


def _decoded(model: type[E], raw: bytes | None) -> list[E]:
    """A record's events: ``case-events`` carries a transition's CaseEvents in one record."""
    if model is CaseEvent:
        return cast("list[E]", decode_case_events(raw))
    return [decode(model, raw)]


@dataclass(frozen=True)
class Records:
    """Reads a topic from the beginning and decodes the records that match a predicate."""

    patience: Patience

    async def _collect(
        self,
        settings: Settings,
        topic: str,
        model: type[E],
        predicate: Callable[[E], bool],
        enough: Callable[[list[E]], bool],
        settle_s: float,
        timeout_s: float,
    ) -> list[E]:
        undecodable: list[DecodeError] = []
        async with bus.reader(settings, topic) as consumer:

            async def fetch() -> Batch[E]:
                got = await consumer.getmany(timeout_ms=int(self.patience.poll_s * 1000))
                found: list[E] = []
                for msgs in got.values():
                    for m in msgs:
                        try:
                            events = _decoded(model, m.value)
                        except DecodeError as exc:  # another test's record, or a drifted model
                            undecodable.append(exc)
                            continue
                        found.extend(ev for ev in events if predicate(ev))
                # Only worth asking the broker when nothing came: a busy reader is not caught up.
                caught_up = not got and await _caught_up(consumer)
                return Batch(found, caught_up)

            loop = asyncio.get_running_loop()
            found = await collect_until_quiet(
                fetch, enough=enough, settle_s=settle_s, timeout_s=timeout_s, clock=loop.time
            )
        if not enough(found) and undecodable:
            # Say so: "nothing came" and "it came in a shape the test cannot read" differ.
            log.warning(
                "%s: %d records are not a %s (first: %s)",
                topic,
                len(undecodable),
                model.__name__,
                undecodable[0],
            )
        return found

    async def wait_for(
        self,
        settings: Settings,
        topic: str,
        model: type[E],
        predicate: Callable[[E], bool],
        count: int,
        timeout_s: float | None = None,
    ) -> list[E]:
        """The first ``count`` matching records (fewer at the deadline): AT LEAST, not exactly.

        For "exactly once" / "nothing twice" use ``settled``.
        """
        found = await self._collect(
            settings,
            topic,
            model,
            predicate,
            lambda seen: len(seen) >= count,
            0.0,
            self.patience.timeout_s if timeout_s is None else timeout_s,
        )
        return found[:count]

    async def first(
        self, settings: Settings, topic: str, model: type[E], predicate: Callable[[E], bool]
    ) -> E:
        """The first matching record; AssertionError if none comes before the deadline."""
        found = await self.wait_for(settings, topic, model, predicate, 1)
        assert found, f"no matching {model.__name__} on {topic}"
        return found[0]

    async def settled(
        self,
        settings: Settings,
        topic: str,
        model: type[E],
        predicate: Callable[[E], bool],
        enough: int | Callable[[list[E]], bool],
        settle_s: float | None = None,
    ) -> list[E]:
        """EVERY matching record: read until ``enough`` are there and the topic stays quiet.

        ``enough`` is the expected count or a predicate over what was seen so far. Quiet means
        no new matching record for the settle period while the reader is at the end of every
        partition; a duplicate arriving after the expected ones is in the result.
        """
        done = (lambda seen: len(seen) >= enough) if isinstance(enough, int) else enough
        return await self._collect(
            settings,
            topic,
            model,
            predicate,
            done,
            self.patience.settle_s if settle_s is None else settle_s,
            self.patience.timeout_s,
        )

    async def replies_and_marks(
        self, settings: Settings, chats: set[str]
    ) -> tuple[list[Reply], Marks]:
        """Every Reply to these Telegram chats (each chat's at least), and every delivered mark
        (``delivered_marks``)."""
        replies = await self.settled(
            settings,
            settings.topic("replies"),
            Reply,
            lambda r: r.reply_to.get("chat_id") in chats,
            lambda seen: {r.reply_to.get("chat_id") for r in seen} >= chats,
        )
        return replies, await delivered_marks(settings)


@pytest.fixture(scope="session")
def records(patience: Patience) -> Records:
    """Reads records back from the real topics (``wait_for``, ``first``, ``settled``)."""
    return Records(patience)


def marked(reply: Reply, ids: list[str]) -> bool:
    """``ids`` holds the reply's delivery id, or one of its parts' (``<reply id>#<n>``)."""
    return any(d.split("#")[0] == reply.reply_id for d in ids)


async def delivered_marks(stack: Settings) -> Marks:
    """Every value on the delivered-replies changelog, by customer: (when it was made, the ids
    it holds). ``{"at": s, "ids": [...]}`` as ``notify.agents._marked`` writes it, a JSON
    string in the table's value encoding."""
    found: Marks = {}
    topic = f"{stack.app_id}-delivered-replies-changelog"
    async with bus.reader(stack, topic) as consumer:
        ends = await consumer.end_offsets(list(consumer.assignment()))

        async def behind() -> bool:
            return any([await consumer.position(tp) < end for tp, end in ends.items()])

        while await behind():
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                for m in batch:
                    if m.key is None or m.value is None:
                        continue
                    value = orjson.loads(m.value)
                    value = orjson.loads(value) if isinstance(value, str) else value
                    found.setdefault(m.key.decode(), []).append((value["at"], value["ids"]))
    return found


def assert_only_the_window_twice(
    delivered: Sequence[OutboxItem], replies: Sequence[Reply], marks: Marks, fault_at: float
) -> None:
    """Every reply delivered is marked in the end (which also shows that ``marks`` were read
    where the workers write them), and a reply went out twice only in the documented window
    (``DeliveryLoop``): the platform answered, then the worker died or the broker failed
    before the mark was acknowledged. So at most ``MAX_CONCURRENT`` replies (what a worker can
    be delivering at once), each twice, and none with a mark made before ``fault_at`` (a
    durable mark the worker did not honour is a bug)."""
    by_text = {(r.reply_to.get("chat_id"), message_text(r)): r for r in replies}
    for item in delivered:
        reply = by_text[(item.to, item.text)]
        assert any(marked(reply, held) for _, held in marks.get(reply.customer_id, [])), reply
    twice = {k: v for k, v in Counter((i.to, i.text) for i in delivered).items() if v > 1}
    assert len(twice) <= MAX_CONCURRENT and all(n == 2 for n in twice.values()), twice
    for chat, text in twice:
        reply = by_text[(chat, text)]
        before = [held for at, held in marks.get(reply.customer_id, []) if at < fault_at]
        assert not any(marked(reply, held) for held in before), (
            f"{reply.reply_id} was sent again although its mark was durable before the fault"
        )


#: ``only_the_window_twice(delivered, replies, marks, fault_at)``: see the function.
OnlyTheWindowTwice = Callable[[Sequence[OutboxItem], Sequence[Reply], Marks, float], None]


@pytest.fixture(scope="session")
def only_the_window_twice() -> OnlyTheWindowTwice:
    """``assert_only_the_window_twice``: replies sent twice only in the documented window."""
    return assert_only_the_window_twice
