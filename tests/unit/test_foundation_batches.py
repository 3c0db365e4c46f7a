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

import pytest
from faust.types import Message

from pipeline.faust_app import RouterApp
from pipeline.stage import READY_YIELDS, take_batches

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


class SlowStream(Stream):
    """A stream whose records take more turns of the loop to come out than ``take_batches``
    lets pass before it sets up a timed wait: the timed wait still takes them."""

    async def events(self) -> AsyncIterator[str]:
        async for event in super().events():
            for _ in range(READY_YIELDS + 2):
                await asyncio.sleep(0)
            yield event


async def test_records_slower_to_come_out_are_still_one_batch() -> None:
    stream = SlowStream()
    stream.put("a", "b", "c", "d")
    batches = take_batches(stream, 3, HOUR, idle=HOUR)  # only max_ closes a batch here
    assert await next_batch(batches) == ["a", "b", "c"]
    stream.put(None)
    assert await next_batch(batches) == ["d"]
    await batches.aclose()


async def test_a_faust_streams_buffered_records_are_one_batch_without_a_timed_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Faust's own stream (its Cython iterator) with records in its buffer: each comes out
    # within READY_YIELDS turns of the loop, so no timed wait is set up for any of them.
    app = RouterApp("batches-test", broker="kafka://127.0.0.1:9", store="memory://")
    app.finalize()
    app.flow_control.resume()
    topic = app.topic("t", key_type=bytes, value_type=bytes, value_serializer="raw")
    stream = app.stream(topic)
    for offset in range(7):
        message = Message(
            topic="t",
            partition=0,
            offset=offset,
            timestamp=0.0,
            timestamp_type=0,
            headers=None,
            key=b"k",
            value=f"v{offset}".encode(),
            checksum=b"",
            serialized_key_size=0,
            serialized_value_size=0,
            generation_id=app.consumer_generation_id,  # else the stream drops it
        )
        await stream.channel.put(await stream.channel.decode(message))
    timed_waits: list[float | None] = []
    real_wait = asyncio.wait

    async def counted_wait(fs: Any, timeout: float | None = None) -> Any:
        timed_waits.append(timeout)
        return await real_wait(fs, timeout=timeout)

    monkeypatch.setattr("pipeline.stage.asyncio.wait", counted_wait)
    batches = take_batches(stream, 5, HOUR)
    first = await next_batch(batches)
    assert [e.value for e in first] == [b"v0", b"v1", b"v2", b"v3", b"v4"]
    assert timed_waits == []
    stream.ack = _no_consumer_ack  # type: ignore[method-assign]
    second = await next_batch(batches)  # v5, v6, then the stream is quiet: one timed wait
    assert [e.value for e in second] == [b"v5", b"v6"]
    assert len(timed_waits) == 1
    await batches.aclose()
    await stream.stop()
    # the stream made the app's consumer, never started: close its thread's own loop
    app.consumer._thread.thread_loop.close()  # type: ignore[attr-defined]


async def _no_consumer_ack(event: Any) -> bool:
    return True  # the app's consumer is never started here
