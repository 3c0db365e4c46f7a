"""Delivery with retries: exponential backoff with full jitter, Retry-After, rate limits.

``Deliverer`` makes up to ``settings.delivery_max_attempts`` attempts. Before each one it
takes a token from the transport's bucket (``ratelimit``). A transient failure (5xx,
429, 408, connection error, SMTP 4xx) waits ``uniform(0, min(backoff_max, backoff *
2**(attempt-1)))`` — "full jitter" — or the server's ``Retry-After`` when that is longer,
then tries again; a permanent failure (other 4xx, SMTP 5xx, missing address or
credentials) stops at once. A ``Retry-After`` longer than ``delivery_backoff_max_s``
is not slept through inside the worker: the delivery fails now (the lead's agent
dead-letters it, to be replayed later) rather than stall the partition.

The result is always a ``DeliveryReceipt`` (delivered | failed); the caller turns a
failed one into a DLQ record and a ``delivery_failed`` CaseEvent, and keeps the
delivered-ids table that makes delivery idempotent. Only ``DeliveryError`` is handled
here: anything else is a bug or bad input and propagates to the agent's DLQ path.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from email.message import EmailMessage

import aiohttp

from pipeline.config import Settings
from pipeline.errors import DeliveryError
from pipeline.events import DeliveryReceipt, Reply, SubRequest, utcnow
from pipeline.notify.channels import reply_parts, resolve_target, send_email, send_reply
from pipeline.notify.ratelimit import Clock, RateLimiter, Sleep

__all__ = ["Deliverer", "backoff_delay", "retry_delay"]

log = logging.getLogger(__name__)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter delay after failed attempt number ``attempt`` (1-based)."""
    ceiling = min(cap, base * (2 ** (attempt - 1)))
    return rng.uniform(0.0, ceiling)


def retry_delay(
    error: DeliveryError, attempt: int, settings: Settings, rng: random.Random
) -> float | None:
    """Seconds to wait before the next attempt, or None when retrying is pointless."""
    if not error.transient or attempt >= settings.delivery_max_attempts:
        return None
    delay = backoff_delay(
        attempt, settings.delivery_backoff_s, settings.delivery_backoff_max_s, rng
    )
    if error.retry_after is not None:
        if error.retry_after > settings.delivery_backoff_max_s:
            return None
        delay = max(delay, error.retry_after)
    return delay


class Deliverer:
    """Delivers replies in their channels and external e-mails over SMTP, with retries."""

    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        *,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
        limiter: RateLimiter | None = None,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.session = session
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._now = now
        self.limiter = limiter or RateLimiter(
            settings.delivery_rate_limits, clock=clock, sleep=sleep
        )

    async def deliver_reply(
        self,
        reply: Reply,
        *,
        sent_parts: Collection[str] = (),
        on_part: Callable[[str], Awaitable[None]] | None = None,
    ) -> DeliveryReceipt:
        """Send ``reply`` in its channel; a delivered or failed receipt keyed by reply id.

        A text over the platform's limit goes out in parts, in order, with ids
        ``<reply_id>#<n>``: parts named in ``sent_parts`` are not sent again, and ``on_part``
        is awaited after each part is accepted (before the next part), so a replay after a
        crash resumes where the sending stopped. The first part that fails ends the delivery
        (failed receipt).
        """
        try:
            target = resolve_target(reply, self.settings)
        except DeliveryError as exc:
            return self._receipt(reply.reply_id, reply.channel.value, 0, exc)
        parts = reply_parts(reply, target.transport)
        if len(parts) == 1:
            return await self._run(
                reply.reply_id,
                reply.channel.value,
                target.transport,
                lambda: send_reply(self.session, self.settings, reply, target=target),
            )

        def attempt(text: str) -> Callable[[], Awaitable[str]]:
            return lambda: send_reply(self.session, self.settings, reply, target=target, text=text)

        attempts = 0
        for n, text in enumerate(parts, start=1):
            part_id = f"{reply.reply_id}#{n}"
            if part_id in sent_parts:
                continue
            receipt = await self._run(part_id, reply.channel.value, target.transport, attempt(text))
            attempts += receipt.attempts
            if receipt.status != "delivered":
                error = f"part {n} of {len(parts)}: {receipt.error}"
                return receipt.model_copy(
                    update={"delivery_id": reply.reply_id, "attempts": attempts, "error": error}
                )
            if on_part is not None:
                await on_part(part_id)
        return self._receipt(reply.reply_id, reply.channel.value, attempts, None)

    async def deliver_external(
        self, sub_request: SubRequest, email_message: EmailMessage
    ) -> DeliveryReceipt:
        """Send the composed e-mail of an external/broadcast sub-request over SMTP."""
        return await self._run(
            sub_request.sub_request_id,
            "email",
            "email",
            lambda: send_email(self.settings, email_message),
        )

    async def _run(
        self,
        delivery_id: str,
        channel: str,
        transport: str,
        attempt_once: Callable[[], Awaitable[str]],
    ) -> DeliveryReceipt:
        attempt = 0
        while True:
            attempt += 1
            await self.limiter.acquire(transport)
            try:
                provider_id = await attempt_once()
            except DeliveryError as exc:
                delay = retry_delay(exc, attempt, self.settings, self._rng)
                log.warning(
                    "delivery %s via %s attempt %d/%d failed (%s): %s",
                    delivery_id,
                    transport,
                    attempt,
                    self.settings.delivery_max_attempts,
                    "transient" if exc.transient else "permanent",
                    exc,
                )
                if delay is None:
                    return self._receipt(delivery_id, channel, attempt, exc)
                await self._sleep(delay)
                continue
            # DEBUG: the receipt on ``deliveries`` is the record of every delivery; a line
            # per reply cost ~7 % of notify's CPU (bench/notify_stage_cpu.py).
            log.debug(
                "delivery %s via %s delivered in %d attempt(s), provider id %s",
                delivery_id,
                transport,
                attempt,
                provider_id or "-",
            )
            return self._receipt(delivery_id, channel, attempt, None)

    def _receipt(
        self, delivery_id: str, channel: str, attempts: int, error: DeliveryError | None
    ) -> DeliveryReceipt:
        detail = None
        if error is not None:
            kind = "transient" if error.transient else "permanent"
            detail = f"{kind}: {error}"[:2000]
        return DeliveryReceipt(
            delivery_id=delivery_id,
            channel=channel,
            status="delivered" if error is None else "failed",
            attempts=attempts,
            error=detail,
            at=self._now(),
        )
