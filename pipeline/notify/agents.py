"""Notify stage agents: replies → the customer's channel; external sub-requests → e-mail.

Effectively-once delivery (invariant 3): reply and sub-request ids are deterministic, and a
delivered-ids table (keyed like the stream: customer for replies, case for external
sub-requests) drops ids already delivered, so a replay or restart sends nothing twice.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import aiohttp
import orjson
from pydantic import BaseModel, TypeAdapter

from pipeline.config import Settings
from pipeline.context import Context
from pipeline.errors import DeliveryError
from pipeline.events import (
    CaseEvent,
    CaseEvents,
    CaseEventType,
    DeliveryReceipt,
    Reply,
    SubRequest,
    derive_id,
    utcnow,
)
from pipeline.metrics import Metrics
from pipeline.notify.compose import compose_external
from pipeline.notify.delivery import Deliverer
from pipeline.notify.ratelimit import RateLimiter, rate_share
from pipeline.stage import RawRecord, dead_letter_for, decode_record, sweep_table, take_batches

log = logging.getLogger(__name__)

STAGE = "notify"
MAX_REMEMBERED = 500
#: Keys whose deliveries a batch runs at the same time.
MAX_CONCURRENT = 16
#: At most this long collecting a batch (it closes earlier when the stream goes quiet,
#: ``stage.take_batches``): the batch is for one ack wait, not for vectorized work as in
#: classify, and a reply should not wait for it.
BATCH_WITHIN_S = 0.01


SWEEP_INTERVAL_S = 600.0


def _delivered(table: Any, key: str) -> list[str]:
    raw = table.get(key)
    if not raw:
        return []
    data = orjson.loads(raw)
    # {"at": epoch s, "ids": [...]}; a bare list is the format before timestamps were kept
    return list(data["ids"]) if isinstance(data, dict) else list(data)


def _marked(ids: list[str], now: float | None = None) -> str:
    """The table value of a key whose delivered ids are ``ids`` (the last ones kept)."""
    at = time.time() if now is None else now
    return orjson.dumps({"at": at, "ids": ids[-MAX_REMEMBERED:]}).decode()


class _Marked(BaseModel):
    """What the sweep reads of a delivered-ids value: when the key was last written."""

    at: float = 0.0


#: A delivered-ids value: ``{"at": epoch s, "ids": [...]}``, or a bare list (the format
#: before timestamps were kept; its age is unknown, so the sweep keeps it).
_MARKS: TypeAdapter[_Marked | list[str]] = TypeAdapter(_Marked | list[str])


async def sweep_delivered(table: Any, cutoff_s: float, metrics: Metrics | None = None) -> int:
    """Forget the delivered ids of keys not written since ``cutoff_s`` (epoch seconds), and
    unreadable values (``stage.sweep_table``).

    They guard against sending twice when records are replayed, which happens within
    minutes of a delivery; a key idle for the case retention period is only memory.
    """

    def kept(_: str, raw: str) -> str | None:
        data = _MARKS.validate_json(raw) if raw else None
        stale = not data or (isinstance(data, _Marked) and data.at < cutoff_s)
        return None if stale else raw

    return await sweep_table(table, kept, metrics)


@dataclass(frozen=True)
class Item:
    """One record to deliver, whatever its input: a reply or an external sub-request."""

    delivery_id: str
    channel: str
    key: str  # the stream's key: customer for replies, case for sub-requests
    case_id: str | None
    message_id: str | None


#: Marks a delivery id of the item's key delivered, durably (``DeliveryLoop.remember``).
Mark = Callable[[str], Awaitable[None]]


class Outbound(Protocol):
    """One delivery input: how to read its records and deliver one of them."""

    name: str
    topic: str
    table: Any

    def read(self, record: RawRecord) -> tuple[Item, Any]: ...

    async def deliver(self, event: Any, done: list[str], mark: Mark) -> DeliveryReceipt:
        """Deliver ``event``; ``mark`` (awaited) each part a long reply went out in."""
        ...


class DeliveryLoop:
    """The notify agent for one input: decode, skip what was delivered, deliver, record.

    Effectively-once: ids are deterministic, and the delivered-ids table (keyed like the
    stream) drops any id already delivered, so a replay or restart sends nothing twice.
    Each mark is acknowledged by the broker before anything else of its key proceeds
    (``remember``), so a new owner of the key knows of every delivery but one: a crash
    between the platform's answer and the mark's ack still sends that one again.
    """

    def __init__(self, ctx: Context, outbound: Outbound) -> None:
        self.ctx = ctx
        self.outbound = outbound

    async def run(self, stream: Any) -> None:
        """The agent loop: batches, outputs durable before the batch is acknowledged (one
        ack wait per batch instead of one per record)."""
        s = self.ctx.settings
        within = min(s.classify_batch_within_s, BATCH_WITHIN_S)
        self.ctx.own_outputs(fresh=True)
        async for events in take_batches(stream, s.classify_batch_size, within):
            await self.handle_batch([RawRecord.from_event(e) for e in events])
            await self.ctx.flush()

    async def handle_batch(self, records: list[RawRecord]) -> None:
        """Each key's records in order, different keys' deliveries at the same time (at most
        ``MAX_CONCURRENT`` keys): a delivery mostly waits for a platform or an SMTP server."""
        by_key: dict[bytes | None, list[RawRecord]] = {}
        for record in records:
            by_key.setdefault(record.key, []).append(record)
        slots = asyncio.Semaphore(MAX_CONCURRENT)
        # Set when a record's failure stops the agent (the error policy's ``stop``, re-raised
        # by ``guard``: the broker does not acknowledge a mark). No delivery starts after it:
        # each would reach the customer with no mark to show for it and go out again after
        # the restart (a broker outage sent a whole batch twice). What is left of the batch
        # is not acknowledged, and is read again.
        stopping = asyncio.Event()

        async def in_order(group: list[RawRecord]) -> None:
            async with slots:
                for record in group:
                    if stopping.is_set():
                        return
                    try:
                        async with self.ctx.guard(STAGE, record):
                            await self.handle(record)
                    except BaseException:
                        stopping.set()
                        raise

        results = await asyncio.gather(*map(in_order, by_key.values()), return_exceptions=True)
        # The deliveries under way when one failed finish first (at most one per slot).
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def handle(self, record: RawRecord) -> None:
        """Deliver one record (or skip it as a duplicate) and report the receipt."""
        item, event = self.outbound.read(record)
        done = _delivered(self.outbound.table, item.key)
        if item.delivery_id in done:
            receipt = DeliveryReceipt(
                delivery_id=item.delivery_id,
                channel=item.channel,
                status="skipped_duplicate",
                attempts=0,
                at=utcnow(),
            )
        else:
            # The key's ids as its table value holds them, each mark added: the value is read
            # and parsed once per record, not again per mark (up to MAX_REMEMBERED ids).
            marked = list(done)
            mark = functools.partial(self.remember, item.key, marked)
            receipt = await self.outbound.deliver(event, done, mark)
            if receipt.status == "delivered":
                await self.remember(item.key, marked, receipt.delivery_id)
        await self.finish(record, item, receipt)

    async def remember(self, key: str, ids: list[str], delivery_id: str) -> None:
        """Mark ``delivery_id`` delivered (added to ``ids``, the key's delivered ids) and wait
        until the mark is durable.

        Not through a plain table write (``table[key] = ...``, whose changelog record is
        acknowledged only at the end of the agent's batch): a worker killed before that
        left the next owner without the mark, which sent the reply again (issue 11). One
        ack wait per delivery; the key's deliveries are sequential anyway, different keys'
        wait at the same time.
        """
        ids.append(delivery_id)
        await self.ctx.set_durably(self.outbound.table, key, _marked(ids))

    async def finish(self, record: RawRecord, item: Item, receipt: DeliveryReceipt) -> None:
        """Receipt to ``deliveries``; DLQ a failure; the case event (a delivery is already
        remembered)."""
        ctx = self.ctx
        ctx.metrics.deliveries.labels(channel=receipt.channel, status=receipt.status).inc()
        await ctx.send("deliveries", receipt.delivery_id, receipt)
        if receipt.status == "failed":
            err = DeliveryError(receipt.error or "delivery failed")
            await ctx.dead_letter(dead_letter_for(STAGE, record, err, item.message_id))
        if item.case_id is not None and receipt.status != "skipped_duplicate":
            event = _delivery_event(item.case_id, item.message_id, receipt)
            ctx.metrics.case_events.labels(type=event.type.value).inc()
            batch = CaseEvents(case_id=item.case_id, events=[event])  # the topic's one shape
            await ctx.send("case-events", item.case_id, batch)


def _delivery_event(case_id: str, message_id: str | None, receipt: DeliveryReceipt) -> CaseEvent:
    typ = (
        CaseEventType.reply_sent if receipt.status == "delivered" else CaseEventType.delivery_failed
    )
    return CaseEvent(
        event_id=derive_id("ce", typ.value, receipt.delivery_id),
        case_id=case_id,
        type=typ,
        message_id=message_id,
        detail={
            "delivery_id": receipt.delivery_id,
            "channel": receipt.channel,
            "attempts": receipt.attempts,
            "error": receipt.error,
            "by": STAGE,
        },
        at=utcnow(),
    )


class Senders:
    """The platform/SMTP deliverer, created on first use (inside the event loop), with the
    worker's share of the platforms' rate limits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limiter = RateLimiter(settings.delivery_rate_limits)
        self._deliverer: Deliverer | None = None

    def get(self) -> Deliverer:
        """The deliverer (its HTTP session is opened on first use)."""
        if self._deliverer is None:
            self._deliverer = Deliverer(
                self.settings, aiohttp.ClientSession(), limiter=self.limiter
            )
        return self._deliverer

    async def close(self, *args: Any, **kwargs: Any) -> None:
        """Signal handler: close the HTTP session at shutdown."""
        if self._deliverer is not None:
            await self._deliverer.session.close()

    async def take_share(self, sender: Any, assigned: Any, *args: Any, **kwargs: Any) -> None:
        """Signal handler: the platforms' limits are per deployment; each worker sends its
        share of them (by the input partitions it holds)."""
        s = self.settings
        inputs = {s.topic("replies"), s.topic("external")}
        self.limiter.set_share(rate_share(assigned, inputs, s.partitions))
        log.info("delivery rate limits at %.0f%% of the configured ones", self.limiter.share * 100)


@dataclass
class Replies:
    """``replies`` → the customer's channel (a long reply's parts are remembered one by one)."""

    senders: Senders
    table: Any
    name: str = "notify-replies"
    topic: str = "replies"

    def read(self, record: RawRecord) -> tuple[Item, Reply]:
        reply = decode_record(Reply, record)
        r = reply
        return Item(r.reply_id, r.channel.value, r.customer_id, r.case_id, r.message_id), reply

    async def deliver(self, event: Any, done: list[str], mark: Mark) -> DeliveryReceipt:
        reply: Reply = event
        return await self.senders.get().deliver_reply(reply, sent_parts=done, on_part=mark)


@dataclass
class External:
    """``external`` sub-requests → e-mail to the department or the store's director."""

    senders: Senders
    table: Any
    name: str = "notify-external"
    topic: str = "external"

    def read(self, record: RawRecord) -> tuple[Item, SubRequest]:
        sub = decode_record(SubRequest, record)
        return Item(sub.sub_request_id, "email", sub.case_id, sub.case_id, sub.message_id), sub

    async def deliver(self, event: Any, done: list[str], mark: Mark) -> DeliveryReceipt:
        sub: SubRequest = event
        mail = compose_external(sub, self.senders.settings)
        return await self.senders.get().deliver_external(sub, mail)


def install(ctx: Context) -> list[DeliveryLoop]:
    """Register the delivery agents (one loop per input), the signals and the sweep."""
    app = ctx.app
    senders = Senders(ctx.settings)
    inputs: list[Outbound] = [
        Replies(senders, ctx.table("delivered-replies")),
        External(senders, ctx.table("delivered-external")),
    ]
    loops = [DeliveryLoop(ctx, o) for o in inputs]
    for loop in loops:
        app.agent(ctx.topic(loop.outbound.topic), name=loop.outbound.name)(loop.run)
    app.on_before_shutdown.connect(cast(Any, senders.close))
    app.on_partitions_assigned.connect(cast(Any, senders.take_share))

    async def sweep() -> None:
        cutoff = time.time() - ctx.settings.case_retention_days * 86_400
        removed = 0
        for o in inputs:
            removed += await sweep_delivered(o.table, cutoff, ctx.metrics)
        if removed:
            log.info("delivery sweep forgot %d idle keys", removed)

    app.timer(SWEEP_INTERVAL_S)(sweep)
    return loops
