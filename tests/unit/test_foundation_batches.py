"""``stage.take_batches``: a batch starts with its first record and closes when the stream
goes quiet, not at the end of a fixed window (Faust's ``take_events`` held a lone message
for the whole window at every batched hop); acknowledgements only after the loop body.

The stream is a stand-in with Faust's surface the function uses: ``events()``,
``enable_acks`` and ``ack``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from pipeline.stage import take_batches

#: Only a guard against a hang: the window below is an hour, the batch must come before.
HANG_S = 60.0
HOUR = 3600.0


class Stream:
    """Records put in ``queue`` (None ends the stream); ``acked`` in order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.enable_acks = True
        self.acked: list[str] = []

    async def events(self) -> AsyncIterator[str]:
        while (event := await self.queue.get()) is not None:
            yield event

    async def ack(self, event: str) -> bool:
        self.acked.append(event)
        return True

    def put(self, *events: str | None) -> None:
        for event in events:
            self.queue.put_nowait(event)


async def next_batch(batches: AsyncGenerator[list[Any], None]) -> list[Any]:
    return await asyncio.wait_for(batches.__anext__(), HANG_S)


async def test_a_lone_record_is_a_batch_at_once_whatever_the_window() -> None:
    stream = Stream()
    batches = take_batches(stream, 256, HOUR)
    stream.put("m1")
    assert await next_batch(batches) == ["m1"]
    stream.put("m2")  # after a quiet spell: a batch of its own, again without the window
    assert await next_batch(batches) == ["m2"]
    await batches.aclose()


async def test_records_already_there_are_one_batch_up_to_max() -> None:
    stream = Stream()
    stream.put("a", "b", "c", "d", "e")
    batches = take_batches(stream, 3, HOUR)
    assert await next_batch(batches) == ["a", "b", "c"]
    assert await next_batch(batches) == ["d", "e"]
    await batches.aclose()


async def test_a_batch_is_acknowledged_when_the_next_is_asked_for() -> None:
    stream = Stream()
    stream.put("a", "b")
    batches = take_batches(stream, 256, HOUR)
    assert await next_batch(batches) == ["a", "b"]
    assert stream.enable_acks is False  # Faust's own per-record acks are off
    assert stream.acked == []  # the loop body (outputs, flush) runs before any ack
    stream.put("c", None)
    assert await next_batch(batches) == ["c"]
    assert stream.acked == ["a", "b"]  # "c" is not: its body has not finished
    assert [b async for b in batches] == []
    assert stream.acked == ["a", "b", "c"]
    assert stream.enable_acks is True


async def test_a_batch_whose_body_failed_is_not_acknowledged() -> None:
    # Faust's take_events acknowledged its buffer in a ``finally`` when the loop died.
    stream = Stream()
    stream.put("a", "b", "c")
    batches = take_batches(stream, 2, HOUR)
    assert await next_batch(batches) == ["a", "b"]
    await batches.aclose()  # the agent's loop raised
    assert stream.acked == []
    assert stream.enable_acks is True
