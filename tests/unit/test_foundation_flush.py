"""Outputs are acknowledged before the source record is: a broker that drops them is an error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.context import Context
from pipeline.errors import BrokerUnavailable
from pipeline.events import Outcome, OutcomeKind, utcnow
from pipeline.metrics import Metrics


class _Publisher:
    """Test seam for ``Context.publisher``: acks, or fails, every record it is given."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.sent: list[tuple[str, str | None]] = []
        self.lost: str | None = None  # the broker never lost what it acknowledged here

    async def enqueue(self, topic: str, key: str | None, value: bytes) -> asyncio.Future[Any]:
        self.sent.append((topic, key))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail:
            fut.set_exception(ConnectionError("broker went away"))
        else:
            fut.set_result(None)
        return fut


def _outcome() -> Outcome:
    return Outcome(message_id="m", outcome=OutcomeKind.routed, stage="t", decided_at=utcnow())


@pytest.mark.parametrize("fail", [False, True])
async def test_flush_waits_for_every_ack_and_reports_losses(fail: bool) -> None:
    ctx = Context(settings=Settings(topic_prefix="u."), metrics=Metrics(), app=None)
    pub = _Publisher(fail)
    ctx.publisher = pub  # type: ignore[assignment]
    await ctx.send("outcomes", "m", _outcome())
    await ctx.send("u.replies", "c", _outcome())
    assert pub.sent == [("u.outcomes", "m"), ("u.replies", "c")]
    if fail:
        with pytest.raises(BrokerUnavailable, match="2 output records not acknowledged"):
            await ctx.flush()
    else:
        await ctx.flush()
    assert ctx.pending == []
    await ctx.flush()  # nothing pending: no-op
