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
from typing import Any, cast

import aiohttp
import orjson

from pipeline.context import Context
from pipeline.errors import DeliveryError
from pipeline.events import (
    CaseEvent,
    CaseEventType,
    DeliveryReceipt,
    Reply,
    SubRequest,
    derive_id,
    utcnow,
)
from pipeline.notify.compose import compose_external
from pipeline.notify.delivery import Deliverer
from pipeline.notify.ratelimit import RateLimiter, rate_share
from pipeline.stage import RawRecord, dead_letter_for, decode_record

log = logging.getLogger(__name__)

STAGE = "notify"
MAX_REMEMBERED = 500


SWEEP_INTERVAL_S = 600.0


def _delivered(table: Any, key: str) -> list[str]:
    raw = table.get(key)
    if not raw:
        return []
    data = orjson.loads(raw)
    # {"at": epoch s, "ids": [...]}; a bare list is the format before timestamps were kept
    return list(data["ids"]) if isinstance(data, dict) else list(data)


def _remember(table: Any, key: str, delivery_id: str, now: float | None = None) -> None:
    ids = _delivered(table, key)
    ids.append(delivery_id)
    at = time.time() if now is None else now
    table[key] = orjson.dumps({"at": at, "ids": ids[-MAX_REMEMBERED:]}).decode()


async def sweep_delivered(table: Any, cutoff_s: float) -> int:
    """Forget the delivered ids of keys not written since ``cutoff_s`` (epoch seconds).

    They guard against sending twice when records are replayed, which happens within
    minutes of a delivery; a key idle for the case retention period is only memory.
    """
    removed = 0
    for n, key in enumerate(list(table.keys())):
        if n % 100 == 0:
            await asyncio.sleep(0)  # a long sweep must not stall the agents
        raw = table.get(key)
        if raw is None:
            continue
        data = orjson.loads(raw) if raw else None
        if not data or (isinstance(data, dict) and float(data.get("at", 0)) < cutoff_s):
            del table[key]
            removed += 1
    return removed


def install(ctx: Context) -> None:
    """Register the delivery agents."""
    app = ctx.app
    s = ctx.settings
    delivered_replies = ctx.table("delivered-replies")
    delivered_external = ctx.table("delivered-external")
    holder: dict[str, Deliverer] = {}
    limiter = RateLimiter(s.delivery_rate_limits)
    inputs = {s.topic("replies"), s.topic("external")}

    async def deliverer() -> Deliverer:
        if "d" not in holder:
            holder["d"] = Deliverer(s, aiohttp.ClientSession(), limiter=limiter)
        return holder["d"]

    async def take_share(sender: Any, assigned: Any, *args: Any, **kwargs: Any) -> None:
        # The platforms' limits are per deployment: each worker sends its share of them.
        limiter.set_share(rate_share(assigned, inputs, s.partitions))
        log.info("delivery rate limits at %.0f%% of the configured ones", limiter.share * 100)

    async def finish(
        record: RawRecord,
        receipt: DeliveryReceipt,
        case_id: str | None,
        key: str,
        table: Any,
        message_id: str | None,
    ) -> None:
        ctx.metrics.deliveries.labels(channel=receipt.channel, status=receipt.status).inc()
        await ctx.send("deliveries", receipt.delivery_id, receipt)
        if receipt.status == "delivered":
            _remember(table, key, receipt.delivery_id)
        elif receipt.status == "failed":
            err = DeliveryError(receipt.error or "delivery failed")
            await ctx.dead_letter(dead_letter_for(STAGE, record, err, message_id))
        if case_id is not None and receipt.status != "skipped_duplicate":
            typ = (
                CaseEventType.reply_sent
                if receipt.status == "delivered"
                else CaseEventType.delivery_failed
            )
            ctx.metrics.case_events.labels(type=typ.value).inc()
            await ctx.send(
                "case-events",
                case_id,
                CaseEvent(
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
                ),
            )

    def skipped(delivery_id: str, channel: str) -> DeliveryReceipt:
        return DeliveryReceipt(
            delivery_id=delivery_id,
            channel=channel,
            status="skipped_duplicate",
            attempts=0,
            at=utcnow(),
        )

    async def replies_agent(stream: Any) -> None:
        async for event in stream.events():
            record = RawRecord.from_event(event)
            try:
                reply = decode_record(Reply, record)
                key = reply.customer_id
                done = _delivered(delivered_replies, key)
                if reply.reply_id in done:
                    receipt = skipped(reply.reply_id, reply.channel.value)
                else:
                    receipt = await (await deliverer()).deliver_reply(
                        reply,
                        sent_parts=done,
                        on_part=functools.partial(_remember, delivered_replies, key),
                    )
                await finish(
                    record, receipt, reply.case_id, key, delivered_replies, reply.message_id
                )
            except Exception as exc:  # noqa: BLE001 — DLQ and keep consuming
                await ctx.dead_letter(dead_letter_for(STAGE, record, exc))
            await ctx.flush()

    async def external_agent(stream: Any) -> None:
        async for event in stream.events():
            record = RawRecord.from_event(event)
            try:
                sub = decode_record(SubRequest, record)
                key = sub.case_id
                if sub.sub_request_id in _delivered(delivered_external, key):
                    receipt = skipped(sub.sub_request_id, "email")
                else:
                    mail = compose_external(sub, s)
                    receipt = await (await deliverer()).deliver_external(sub, mail)
                await finish(record, receipt, sub.case_id, key, delivered_external, sub.message_id)
            except Exception as exc:  # noqa: BLE001 — DLQ and keep consuming
                await ctx.dead_letter(dead_letter_for(STAGE, record, exc))
            await ctx.flush()

    app.agent(ctx.topic("replies"), name="notify-replies")(replies_agent)
    app.agent(ctx.topic("external"), name="notify-external")(external_agent)

    async def close_session(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        if "d" in holder:
            await holder["d"].session.close()

    app.on_before_shutdown.connect(cast(Any, close_session))
    app.on_partitions_assigned.connect(cast(Any, take_share))

    async def sweep() -> None:
        cutoff = time.time() - s.case_retention_days * 86_400
        removed = await sweep_delivered(delivered_replies, cutoff)
        removed += await sweep_delivered(delivered_external, cutoff)
        if removed:
            log.info("delivery sweep forgot %d idle keys", removed)

    app.timer(SWEEP_INTERVAL_S)(sweep)  # faust types it too narrowly
